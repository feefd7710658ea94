"""Queue trigger: terminate the Azure Batch job named in the message."""

from __future__ import annotations

import logging

import azure.functions as func

from shared import wiring
from shared.errors import ConfigurationError, EnqueueFailed, PoisonWriteFailed, RetryLater
from shared.outcome import Outcome
from shared.terminator import Delivery

log = logging.getLogger("batch_terminator")


def main(msg: func.QueueMessage) -> None:
    """Finish the message, or raise so the host delivers it again."""
    delivery = Delivery(body=msg.get_body(), message_id=msg.id, dequeue_count=msg.dequeue_count or 1)
    try:
        result = wiring.current().terminator().handle(delivery)
    except RetryLater as exc:
        log.warning("%s", exc)
        raise
    except PoisonWriteFailed as exc:
        log.error("terminate message_id=%s outcome=poison_write_failed: %s", msg.id, exc)
        raise
    except EnqueueFailed as exc:  # the confirmation check (docs/CONTRACT.md §5b) could not be scheduled
        log.error("terminate message_id=%s outcome=confirm_write_failed: %s", msg.id, exc)
        raise
    except ConfigurationError as exc:
        log.error("terminate message_id=%s outcome=configuration_error: %s", msg.id, exc)
        raise
    log.log(logging.ERROR if result.outcome is Outcome.POISONED else logging.INFO, "%s", result.describe())
