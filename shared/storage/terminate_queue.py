"""The one way to enqueue terminate requests: validated with the function's own rules, encoded to match."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from azure.core.credentials import TokenCredential
from azure.core.exceptions import AzureError, ResourceNotFoundError
from azure.storage.queue import QueueClient

from shared.config import catalog
from shared.config.settings import StorageSettings, queue_name_setting, queue_options, storage_from_env
from shared.contract.codec import format_http_date
from shared.contract.errors import EnqueueFailed, InvalidMessage
from shared.contract.terminate_request import TerminateRequest
from shared.storage.queues import queue_client

# Sends in flight at once for a batch of requests: a storage round trip is ~5-10 ms, so 16 keep one queue near
# its 2,000 messages/s target without a pool the size of the batch.
ENQUEUE_THREADS = 16

T = TypeVar("T")


@dataclass(frozen=True)
class Enqueued:
    """What enqueue_many sent: each request's message id in order (None: not sent), and the failure that stopped it."""

    message_ids: tuple[str | None, ...]
    failure: EnqueueFailed | None = None

    @property
    def count(self) -> int:
        """How many requests are on the queue."""
        return sum(message_id is not None for message_id in self.message_ids)

    def sent(self, items: Sequence[T]) -> list[T]:
        """The items (one per request, in the same order) whose request is on the queue."""
        return [item for item, message_id in zip(items, self.message_ids, strict=True) if message_id is not None]


def build_request(
    job_id: str,
    reason: str | None = None,
    *,
    force: bool = False,
    if_match: str | None = None,
    if_none_match: str | None = None,
    if_modified_since: datetime | str | None = None,
    if_unmodified_since: datetime | str | None = None,
    request_id: str | None = None,
    account: str | None = None,
    accounts: Collection[str] | None = None,
    incident: str | None = None,
) -> TerminateRequest:
    """A TerminateRequest checked by the same parser the function uses; raises InvalidMessage.

    `account` is an alias (absent: default). Given `accounts` (the app's aliases, e.g.
    settings.account_aliases(env)) it must be one of them; without, only its form is checked and the
    function refuses an alias it does not know.
    """
    document: dict[str, Any] = {"jobId": job_id, "reason": reason, "account": account, "force": force or None}
    document["ifMatch"] = if_match
    document["ifNoneMatch"] = if_none_match
    for key, value in (("ifModifiedSince", if_modified_since), ("ifUnmodifiedSince", if_unmodified_since)):
        document[key] = format_http_date(value) if isinstance(value, datetime) else value
    document["requestId"] = request_id
    document["incident"] = incident
    return TerminateRequest.parse(json.dumps({k: v for k, v in document.items() if v is not None}), accounts=accounts)


class TerminateQueue:
    """A trigger queue that accepts TerminateRequests; thread-safe, reuse one per process."""

    def __init__(self, queue: QueueClient) -> None:
        self._queue = queue

    @classmethod
    def connect(
        cls,
        queue_name: str,
        *,
        connection_string: str | None = None,
        account_url: str | None = None,
        credential: TokenCredential | None = None,
        message_encoding: str | None = None,
    ) -> TerminateQueue:
        """Open the queue by connection string, or by account URL + azure-identity credential.

        Messages go as plain JSON text (messageEncoding none, as this app's host.json has); pass
        message_encoding="base64" for a host configured for base64. The function reads either.
        """
        encoding = message_encoding or "none"
        if connection_string:
            storage = StorageSettings(connection_string=connection_string)
        elif account_url:
            storage = StorageSettings(queue_service_uri=account_url.rstrip("/"))
        else:
            raise ValueError("give connection_string, or account_url (with a credential or the default chain)")
        return cls(queue_client(storage, queue_name, encoding, credential=credential, pool_size=ENQUEUE_THREADS))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> TerminateQueue:
        """Open the app's trigger queue from the same settings the function reads."""
        env = os.environ if environ is None else environ
        name = queue_name_setting(env, catalog.TERMINATE_QUEUE_NAME)
        encoding = queue_options(env).message_encoding
        return cls(queue_client(storage_from_env(env), name, encoding, pool_size=ENQUEUE_THREADS))

    @property
    def queue_name(self) -> str:
        """The trigger queue's name."""
        return self._queue.queue_name

    @property
    def client(self) -> QueueClient:
        """The underlying queue client (encoding policies included)."""
        return self._queue

    def enqueue(self, request: TerminateRequest) -> str:
        """Send one request; return the queue message id."""
        text = json.dumps(request.to_message(), ensure_ascii=False, separators=(",", ":"))
        try:
            # Never expire: a request waiting out an outage must still be there afterwards (the default is 7 days).
            return str(self._queue.send_message(text, time_to_live=-1).id)
        except ResourceNotFoundError as exc:
            raise EnqueueFailed(f"queue {self.queue_name} does not exist") from exc
        except AzureError as exc:
            raise EnqueueFailed(f"could not enqueue to {self.queue_name}: {type(exc).__name__}") from exc

    def enqueue_many(
        self,
        requests: Sequence[TerminateRequest],
        *,
        threads: int = ENQUEUE_THREADS,
        on_sent: Callable[[int, str], None] | None = None,
    ) -> Enqueued:
        """Send every request, `threads` at a time; after a failure (or an interrupt) no further send starts."""
        stop = threading.Event()
        failures: list[EnqueueFailed] = []

        def send(index: int, request: TerminateRequest) -> str | None:
            if stop.is_set():
                return None
            try:
                message_id = self.enqueue(request)
            except EnqueueFailed as exc:
                stop.set()  # the queue is refusing: the rest would most likely fail the same way
                failures.append(exc)
                return None
            if on_sent is not None:
                on_sent(index, message_id)
            return message_id

        if not requests:
            return Enqueued(())
        with ThreadPoolExecutor(max(1, min(threads, len(requests))), thread_name_prefix="enqueue") as pool:
            try:
                message_ids = tuple(pool.map(send, range(len(requests)), requests))
            except BaseException:
                stop.set()  # Ctrl-C in an operator's CLI: finish the sends in flight, start no more
                raise
        return Enqueued(message_ids, failures[0] if failures else None)

    def enqueue_terminate(self, job_id: str, reason: str | None = None, **options: Any) -> str:
        """Validate and send one terminate request; raise InvalidMessage before touching the queue."""
        return self.enqueue(build_request(job_id, reason, **options))


__all__ = ["ENQUEUE_THREADS", "EnqueueFailed", "Enqueued", "InvalidMessage", "TerminateQueue", "build_request"]
