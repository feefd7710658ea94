"""Queue trigger: terminate the Azure Batch job named in the message."""

from __future__ import annotations

import azure.functions as func

from shared import wiring
from shared.contract.errors import ConfigurationError, EnqueueFailed, PoisonWriteFailed, RetryLater
from shared.services.terminate_job import Delivery


def main(msg: func.QueueMessage) -> None:
    """Finish the message, or raise so the host delivers it again."""
    delivery = Delivery(body=msg.get_body(), message_id=msg.id, dequeue_count=msg.dequeue_count or 1)
    objects = wiring.current()
    telemetry = objects.telemetry()
    try:
        result = objects.terminator().handle(delivery)
    except (RetryLater, PoisonWriteFailed, EnqueueFailed, ConfigurationError) as exc:
        telemetry.handed_back(exc, message_id=msg.id, attempt=delivery.dequeue_count)
        raise
    telemetry.finished(result)
