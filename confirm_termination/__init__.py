"""Queue trigger: check that a job the terminator had accepted really ended (docs/CONTRACT.md §5b)."""

from __future__ import annotations

import logging

import azure.functions as func

from shared import wiring
from shared.contract.errors import ConfigurationError, EnqueueFailed, PoisonWriteFailed, RetryLater
from shared.services.confirm_termination import Pending

log = logging.getLogger("batch_terminator")


def main(msg: func.QueueMessage) -> None:
    """Finish the check, or raise so the host delivers it again."""
    objects = wiring.current()
    telemetry = objects.telemetry()
    attempt = msg.dequeue_count or 1
    try:
        finished = objects.confirmer().handle(msg.get_body(), msg.id, attempt)
    except (RetryLater, PoisonWriteFailed, EnqueueFailed, ConfigurationError) as exc:
        telemetry.handed_back(exc, message_id=msg.id, attempt=attempt)
        raise
    if isinstance(finished, Pending):
        # The next check is scheduled: the chain ends later in exactly one record (confirmed or poisoned).
        log.info("%s", finished.describe())
        return
    telemetry.finished(finished)
