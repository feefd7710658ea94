"""Queue trigger: check that a job the terminator had accepted really ended (docs/CONTRACT.md §5b)."""

from __future__ import annotations

import logging

import azure.functions as func

from shared import wiring
from shared.confirmation import Pending
from shared.errors import ConfigurationError, EnqueueFailed, PoisonWriteFailed, RetryLater
from shared.outcome import Outcome

log = logging.getLogger("batch_terminator")


def main(msg: func.QueueMessage) -> None:
    """Finish the check, or raise so the host delivers it again."""
    try:
        finished = wiring.current().confirmer().handle(msg.get_body(), msg.id, msg.dequeue_count or 1)
    except RetryLater as exc:
        log.warning("%s", exc)
        raise
    except (PoisonWriteFailed, EnqueueFailed) as exc:
        log.error("confirm message_id=%s outcome=write_failed: %s", msg.id, exc)
        raise
    except ConfigurationError as exc:
        log.error("confirm message_id=%s outcome=configuration_error: %s", msg.id, exc)
        raise
    if isinstance(finished, Pending):
        log.info("%s", finished.describe())
        return
    log.log(logging.ERROR if finished.outcome is Outcome.POISONED else logging.INFO, "%s", finished.describe())
