"""Queue trigger: run one incident command — plan, approve, cancel, retry or undo (docs/CONTRACT.md §10)."""

from __future__ import annotations

import logging

import azure.functions as func

from shared import wiring
from shared.contract.errors import ConfigurationError, EnqueueFailed, IncidentWriteFailed, RetryLater

log = logging.getLogger("batch_terminator.incidents")


def main(msg: func.QueueMessage) -> None:
    """Finish the command, or raise so the host delivers it again."""
    objects = wiring.current()
    telemetry = objects.telemetry()
    attempt = msg.dequeue_count or 1
    try:
        handled = objects.kill_switch().handle(msg.get_body(), msg.id, attempt)
    except (RetryLater, IncidentWriteFailed, EnqueueFailed, ConfigurationError) as exc:
        telemetry.handed_back(exc, message_id=msg.id, attempt=attempt)
        raise
    # The state changes logged their §8 records; this line says what the message itself came to.
    log.log(logging.INFO if handled.outcome == "changed" else logging.WARNING, "%s", handled.describe())
