"""Poison records (docs/CONTRACT.md §6) and the writer that puts them on the poison queue."""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING

from azure.core.exceptions import AzureError, ResourceExistsError, ResourceNotFoundError
from azure.storage.queue import QueueClient

from shared.contract.errors import PoisonWriteFailed
from shared.telemetry import Telemetry

if TYPE_CHECKING:  # records are built by the services; writing one needs only its text
    from shared.contract.poison_record import PoisonRecord

log = logging.getLogger("batch_terminator.poison")


class PoisonWriter:
    """Sends poison records; creates the poison queue on first need."""

    def __init__(self, queue: QueueClient, *, telemetry: Telemetry | None = None) -> None:
        self._queue = queue
        self._telemetry = telemetry or Telemetry()

    def write(self, record: PoisonRecord) -> None:
        """Put the record on the queue, or raise PoisonWriteFailed."""
        text = record.to_json()
        # time_to_live=-1: a record waits for its operator; the queue's 7-day default would silently drop it.
        try:
            try:
                self._queue.send_message(text, time_to_live=-1)
            except ResourceNotFoundError:
                with contextlib.suppress(ResourceExistsError):  # another instance created it first
                    self._queue.create_queue()
                self._queue.send_message(text, time_to_live=-1)
        except AzureError as exc:
            raise PoisonWriteFailed(
                f"could not write poison record to {self._queue.queue_name}: {type(exc).__name__}"
            ) from exc
        self._telemetry.poison_written(record.error.code)
