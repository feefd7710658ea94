"""The confirm queue: checks of terminated jobs, each visible only after CONFIRM_AFTER_SECONDS."""

from __future__ import annotations

import contextlib

from azure.core.exceptions import AzureError, ResourceExistsError, ResourceNotFoundError
from azure.storage.queue import QueueClient

from shared.contract.confirm_check import ConfirmCheck
from shared.contract.errors import EnqueueFailed


class ConfirmQueue:
    """Puts checks on CONFIRM_QUEUE_NAME, each visible only after CONFIRM_AFTER_SECONDS."""

    def __init__(self, queue: QueueClient, delay_seconds: int) -> None:
        self._queue = queue
        self._delay = delay_seconds

    @property
    def queue_name(self) -> str:
        """The confirm queue's name."""
        return self._queue.queue_name

    def schedule(self, check: ConfirmCheck) -> None:
        """Send the check, or raise EnqueueFailed (the caller raises, so its own message is delivered again)."""
        text = check.to_json()
        # time_to_live=-1: a pending check must not expire while it waits (the queue's default is 7 days).
        options = {"visibility_timeout": self._delay, "time_to_live": -1}
        try:
            try:
                self._queue.send_message(text, **options)
            except ResourceNotFoundError:
                with contextlib.suppress(ResourceExistsError):  # another instance created it first
                    self._queue.create_queue()
                self._queue.send_message(text, **options)
        except AzureError as exc:
            raise EnqueueFailed(f"could not schedule a check on {self.queue_name}: {type(exc).__name__}") from exc
