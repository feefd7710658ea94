"""A local queue-trigger host with the Azure Functions host's semantics (Core Tools cannot be installed here)."""

from __future__ import annotations

import base64
import binascii
import contextlib
import enum
import logging
import math
import queue
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import azure.functions as func
from azure.core.exceptions import AzureError, ResourceExistsError, ResourceNotFoundError
from azure.functions.queue import QueueMessage as FunctionQueueMessage
from azure.storage.queue import QueueClient
from azure.storage.queue import QueueMessage as StorageQueueMessage

from local.functions import FunctionFolder, FunctionLoadError, resolve_settings
from shared.settings import QueueOptions, StorageSettings
from shared.storage import queue_client

log = logging.getLogger("local.queue_host")

Handler = Callable[[func.QueueMessage], None]

# The Functions host hides a message for 10 minutes while its invocation runs and renews that halfway.
HIDE_SECONDS = 600.0
# The host's minimum polling interval; it backs off from here up to maxPollingInterval.
MIN_POLLING_SECONDS = 0.1
RANDOMIZATION_FACTOR = 0.2
DRAIN_SECONDS = 30.0
# .NET's Convert.FromBase64String skips these; a message with them is still valid base64 to the host.
_BASE64_WHITESPACE = str.maketrans("", "", " \t\r\n")


class Settlement(enum.StrEnum):
    """How the host settled one received message (not the product's outcome: the queue's view of it)."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    MOVED_TO_POISON = "moved_to_poison"
    RELEASED = "released"


@dataclass(frozen=True)
class Invocation:
    """One finished delivery: the outcome and what the log line says about it."""

    message_id: str
    dequeue_count: int
    outcome: Settlement
    invoked: bool
    duration: float
    error: str | None = None


class PollingDelay:
    """The host's randomized exponential backoff between polls: reset by a message, grown by an empty queue."""

    def __init__(self, minimum: float, maximum: float, rng: random.Random | None = None) -> None:
        self._maximum = max(maximum, 0.0)
        self._minimum = min(minimum, self._maximum)
        self._current = self._minimum
        self._exponent = 1
        self._rng = rng or random.Random()

    def next(self, found_messages: bool) -> float:
        """The wait before the next poll."""
        if found_messages:
            self._current, self._exponent = self._minimum, 1
        elif self._current != self._maximum:
            factor = self._rng.uniform(1 - RANDOMIZATION_FACTOR, 1 + RANDOMIZATION_FACTOR)
            interval = self._minimum + factor * 2 ** (self._exponent - 1) * self._minimum
            if interval < self._maximum:
                self._current = interval
                self._exponent += 1
            else:
                self._current = self._maximum
        return self._current


@dataclass(eq=False)
class _InFlight:
    """A received message the host owns until it settles it (deleted, released, poisoned or handed back)."""

    message: StorageQueueMessage
    pop_receipt: str
    renew_at: float
    lock: threading.Lock = field(default_factory=threading.Lock)
    invoked: bool = False
    settled: bool = False


class QueueHost:
    """Pumps one trigger queue into a handler the way the Functions host's queue trigger does."""

    def __init__(
        self,
        trigger: QueueClient,
        poison: QueueClient,
        options: QueueOptions,
        handler: Handler,
        *,
        hide_seconds: float = HIDE_SECONDS,
        min_polling_seconds: float = MIN_POLLING_SECONDS,
        drain_seconds: float = DRAIN_SECONDS,
        on_invocation: Callable[[Invocation], None] | None = None,
        function_name: str | None = None,
    ) -> None:
        self.trigger = trigger
        self.function_name = function_name or getattr(handler, "__qualname__", "handler")
        self.poison = poison
        self.options = options
        self.handler = handler
        self.hide_seconds = hide_seconds
        self.min_polling_seconds = min_polling_seconds
        self.drain_seconds = drain_seconds
        self.on_invocation = on_invocation
        self.peak_in_flight = 0
        self._in_flight: dict[int, _InFlight] = {}
        self._condition = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._work: queue.SimpleQueue[_InFlight | None] = queue.SimpleQueue()
        self._workers: list[threading.Thread] = []

    @classmethod
    def from_storage(
        cls,
        storage: StorageSettings,
        queue_name: str,
        options: QueueOptions,
        handler: Handler,
        *,
        poison_queue_name: str | None = None,
        **kwargs: Any,
    ) -> QueueHost:
        """A host for `queue_name` on this storage, moving poison messages to `{queue_name}-poison`."""
        # No encode/decode policies: the host reads and moves the raw text and decodes it itself.
        pool = options.batch_size + options.new_batch_threshold + 2  # invocations, the poller, the renewer
        trigger = queue_client(storage, queue_name, "none", pool_size=pool)
        poison = queue_client(storage, poison_queue_name or f"{queue_name}-poison", "none", pool_size=pool)
        return cls(trigger, poison, options, handler, **kwargs)

    @classmethod
    def from_connection_string(
        cls,
        connection_string: str,
        queue_name: str,
        options: QueueOptions,
        handler: Handler,
        **kwargs: Any,
    ) -> QueueHost:
        """A host for `queue_name` on the storage account of this connection string."""
        storage = StorageSettings(connection_string=connection_string)
        return cls.from_storage(storage, queue_name, options, handler, **kwargs)

    @classmethod
    def for_function(
        cls,
        function: FunctionFolder,
        storage: StorageSettings,
        options: QueueOptions,
        environ: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> QueueHost:
        """A host for a queueTrigger function: its binding's queueName (`%NAME%` resolved) into its entry point."""
        binding = function.binding("queueTrigger")
        if binding is None:
            raise FunctionLoadError(f"{function.name}: no queueTrigger binding")
        queue_name = resolve_settings(str(binding.get("queueName") or ""), environ).strip()
        if not queue_name:
            raise FunctionLoadError(f"{function.name}: queueName {binding.get('queueName')!r} resolves to nothing")
        handler = function.trigger_handler()
        return cls.from_storage(storage, queue_name, options, handler, function_name=function.name, **kwargs)

    @property
    def queue_name(self) -> str:
        """The trigger queue's name."""
        return self.trigger.queue_name

    @property
    def poison_queue_name(self) -> str:
        """Where messages that fail maxDequeueCount times go."""
        return self.poison.queue_name

    @property
    def in_flight(self) -> int:
        """How many received messages are not settled yet."""
        with self._condition:
            return len(self._in_flight)

    @property
    def max_in_flight(self) -> int:
        """The host's concurrency bound: batchSize + newBatchThreshold."""
        return self.options.batch_size + self.options.new_batch_threshold

    # ---- lifecycle

    def start(self) -> QueueHost:
        """Run the host on a background thread."""
        if self._thread is not None:
            raise RuntimeError("the host is already started")
        self._stop.clear()
        self._thread = threading.Thread(
            target=self.run, args=(self._stop,), name=f"host:{self.queue_name}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Stop receiving, wait up to `timeout` (default drain_seconds) for invocations, release the rest."""
        if timeout is not None:
            self.drain_seconds = timeout
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(self.drain_seconds + 30)

    def __enter__(self) -> QueueHost:
        """Start."""
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Stop (drain, then release what is unfinished)."""
        self.stop()

    def run(self, stop: threading.Event | None = None) -> None:
        """Poll until `stop` (default: the one stop() sets) is set, then drain: invocations finish or are released."""
        stop = stop or self._stop
        self._start_workers()
        renewer = threading.Thread(target=self._renew_loop, args=(stop,), name="host:renew", daemon=True)
        renewer.start()
        delay = PollingDelay(self.min_polling_seconds, self.options.max_polling_interval_seconds)
        missing_queue_logged = False
        log.info(
            "host listening on %s (batchSize=%d newBatchThreshold=%d maxDequeueCount=%d visibilityTimeout=%gs"
            " maxPollingInterval=%gs messageEncoding=%s)",
            self.queue_name,
            self.options.batch_size,
            self.options.new_batch_threshold,
            self.options.max_dequeue_count,
            self.options.visibility_timeout_seconds,
            self.options.max_polling_interval_seconds,
            self.options.message_encoding,
        )
        try:
            while not stop.is_set():
                if not self._wait_for_room(stop):
                    break
                try:
                    messages = self._receive()
                except ResourceNotFoundError:
                    if not missing_queue_logged:
                        log.warning("queue %s does not exist yet; polling until it does", self.queue_name)
                        missing_queue_logged = True
                    messages = []
                except AzureError as exc:
                    log.warning("could not receive from %s: %s", self.queue_name, exc)
                    messages = []
                for message in messages:
                    self._dispatch(message)
                # Like the WebJobs QueueListener: after a batch, poll again as soon as there is room (the
                # newBatchThreshold wait above); back off only while the queue is empty.
                pause = delay.next(bool(messages))
                if not messages:
                    stop.wait(pause)
        finally:
            self._drain()
            renewer.join(5)

    # ---- polling

    def _wait_for_room(self, stop: threading.Event) -> bool:
        """Block while more than newBatchThreshold messages are in flight; False once stopping."""
        with self._condition:
            while len(self._in_flight) > self.options.new_batch_threshold and not stop.is_set():
                self._condition.wait(0.1)
        return not stop.is_set()

    def _receive(self) -> list[StorageQueueMessage]:
        """One Get Messages call for up to batchSize messages, hidden while they are processed."""
        pages = self.trigger.receive_messages(
            messages_per_page=self.options.batch_size,
            max_messages=self.options.batch_size,
            visibility_timeout=max(1, math.ceil(self.hide_seconds)),
        ).by_page()
        return list(next(pages, []))

    def _dispatch(self, message: StorageQueueMessage) -> None:
        """Track the message as in flight and hand it to a worker."""
        entry = _InFlight(message, str(message.pop_receipt), time.monotonic() + self.hide_seconds / 2)
        with self._condition:
            self._in_flight[id(entry)] = entry
            self.peak_in_flight = max(self.peak_in_flight, len(self._in_flight))
        self._work.put(entry)

    # ---- invocations

    def _start_workers(self) -> None:
        # Daemon threads, not a ThreadPoolExecutor: a handler stuck past the drain must not block process exit.
        self._workers = [
            threading.Thread(target=self._work_loop, name=f"host:invoke-{n}", daemon=True)
            for n in range(max(self.max_in_flight, 1))
        ]
        for worker in self._workers:
            worker.start()

    def _work_loop(self) -> None:
        """Process messages until the stop sentinel; a host error never ends the worker."""
        while (entry := self._work.get()) is not None:
            try:
                invocation = self._process(entry)
            except Exception:
                log.exception("host failed on message %s", entry.message.id)
                invocation = None
            finally:
                with self._condition:
                    self._in_flight.pop(id(entry), None)
                    self._condition.notify_all()
            if invocation is not None:
                self._report(invocation)

    def _process(self, entry: _InFlight) -> Invocation | None:
        """Decode, invoke and settle one message; None when the host released it before it finished."""
        message = entry.message
        count = int(message.dequeue_count or 1)
        if entry.settled:
            return None
        raw = message.content if message.content is not None else ""
        try:
            body = self._decode(str(raw))
        except ValueError as exc:
            # The storage SDK fails to decode it before any invocation; the host moves it to poison as is.
            return self._settle_poison(entry, count, invoked=False, started=time.monotonic(), error=str(exc))
        if count > self.options.max_dequeue_count:
            # Delivered more often than allowed (e.g. a crash mid-invocation): poison without invoking.
            too_often = f"dequeue count {count} exceeds maxDequeueCount {self.options.max_dequeue_count}"
            return self._settle_poison(entry, count, invoked=False, started=time.monotonic(), error=too_often)
        delivered = FunctionQueueMessage(
            id=message.id,
            body=body,
            dequeue_count=count,
            pop_receipt=entry.pop_receipt,
            insertion_time=message.inserted_on,
            expiration_time=message.expires_on,
            time_next_visible=message.next_visible_on,
        )
        started = time.monotonic()
        entry.invoked = True
        error: str | None = None
        try:
            self.handler(delivered)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            log.debug("invocation of message %s raised", message.id, exc_info=True)
        if error is None:
            return self._settle(entry, count, Settlement.SUCCEEDED, started, None, self._delete)
        if count >= self.options.max_dequeue_count:
            return self._settle_poison(entry, count, invoked=True, started=started, error=error)
        return self._settle(entry, count, Settlement.FAILED, started, error, self._release_after_failure)

    def _decode(self, raw: str) -> bytes:
        """The message body as the host hands it to the function: base64-decoded or the text's UTF-8."""
        if self.options.message_encoding != "base64":
            return raw.encode("utf-8")
        try:
            return base64.b64decode(raw.translate(_BASE64_WHITESPACE), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"message is not valid base64 ({exc})") from exc

    def _settle_poison(
        self, entry: _InFlight, count: int, *, invoked: bool, started: float, error: str
    ) -> Invocation | None:
        """Settle by moving the message, unchanged, to the poison queue."""
        return self._settle(entry, count, Settlement.MOVED_TO_POISON, started, error, self._move_to_poison, invoked)

    def _settle(
        self,
        entry: _InFlight,
        count: int,
        outcome: Settlement,
        started: float,
        error: str | None,
        action: Callable[[_InFlight], None],
        invoked: bool = True,
    ) -> Invocation | None:
        """Apply the outcome's storage action once, unless the host already released the message."""
        with entry.lock:
            if entry.settled:
                log.info(
                    "message_id=%s dequeue_count=%d finished after the host released it; it will be delivered again",
                    entry.message.id,
                    count,
                )
                return None
            entry.settled = True
            try:
                action(entry)
            except AzureError as exc:
                # Like the host: the message stays hidden until its 10 minutes pass, then it is delivered again.
                log.error(
                    "message_id=%s dequeue_count=%d could not be settled as %s (delivered again after the hide): %s",
                    entry.message.id,
                    count,
                    outcome.value,
                    exc,
                )
                return None
        return Invocation(entry.message.id, count, outcome, invoked, time.monotonic() - started, error)

    def _delete(self, entry: _InFlight) -> None:
        """Remove the finished message (already gone is fine)."""
        with contextlib.suppress(ResourceNotFoundError):
            self.trigger.delete_message(entry.message.id, entry.pop_receipt)

    def _release_after_failure(self, entry: _InFlight) -> None:
        """Let the failed message be delivered again after visibilityTimeout."""
        self._set_visibility(entry, self.options.visibility_timeout_seconds)

    def _move_to_poison(self, entry: _InFlight) -> None:
        """Copy the raw text, unchanged, to the poison queue (created on first need), then delete it."""
        text = entry.message.content if entry.message.content is not None else ""
        try:
            self.poison.send_message(text)
        except ResourceNotFoundError:
            with contextlib.suppress(ResourceExistsError):
                self.poison.create_queue()
            self.poison.send_message(text)
        self._delete(entry)

    def _set_visibility(self, entry: _InFlight, seconds: float) -> None:
        """Make the message visible in `seconds`, keeping the new pop receipt for later calls."""
        updated = self.trigger.update_message(
            entry.message.id, pop_receipt=entry.pop_receipt, visibility_timeout=max(0, math.ceil(seconds))
        )
        entry.pop_receipt = str(updated.pop_receipt)

    def _report(self, invocation: Invocation) -> None:
        """Log the outcome line and tell the on_invocation callback."""
        detail = {
            Settlement.SUCCEEDED: "",
            Settlement.FAILED: f" visible_again_in={self.options.visibility_timeout_seconds:g}s",
            Settlement.MOVED_TO_POISON: f" poison_queue={self.poison_queue_name}",
            Settlement.RELEASED: " visible_again_in=0s",
        }[invocation.outcome]
        log.info(
            "message_id=%s dequeue_count=%d outcome=%s invoked=%s duration_ms=%.0f%s%s",
            invocation.message_id,
            invocation.dequeue_count,
            invocation.outcome.value,
            str(invocation.invoked).lower(),
            invocation.duration * 1000,
            detail,
            f" error={invocation.error}" if invocation.error else "",
        )
        if self.on_invocation is not None:
            try:
                self.on_invocation(invocation)
            except Exception:
                log.exception("on_invocation callback failed")

    # ---- keeping messages hidden, and handing them back on stop

    def _renew_loop(self, stop: threading.Event) -> None:
        """Extend the hide of long invocations halfway through it, as the host does."""
        interval = min(1.0, self.hide_seconds / 4)
        while not stop.wait(interval):
            now = time.monotonic()
            with self._condition:
                due = [entry for entry in self._in_flight.values() if entry.renew_at <= now]
            for entry in due:
                with entry.lock:
                    if entry.settled:
                        continue
                    try:
                        self._set_visibility(entry, self.hide_seconds)
                        entry.renew_at = time.monotonic() + self.hide_seconds / 2
                    except AzureError as exc:
                        log.warning("could not extend the hide of message %s: %s", entry.message.id, exc)

    def _drain(self) -> None:
        """Wait (bounded) for in-flight invocations; make the messages of unfinished ones visible again."""
        deadline = time.monotonic() + self.drain_seconds
        with self._condition:
            if self._in_flight:
                log.info(
                    "host stopping: waiting up to %gs for %d invocation(s)", self.drain_seconds, len(self._in_flight)
                )
            while self._in_flight and (remaining := deadline - time.monotonic()) > 0:
                self._condition.wait(remaining)
            unfinished = list(self._in_flight.values())
        for entry in unfinished:
            with entry.lock:
                if entry.settled:
                    continue
                entry.settled = True
                try:
                    self._set_visibility(entry, 0)
                except AzureError as exc:
                    log.error(
                        "message_id=%s could not be released (visible again after the hide): %s", entry.message.id, exc
                    )
                    continue
            count = int(entry.message.dequeue_count or 1)
            self._report(Invocation(entry.message.id, count, Settlement.RELEASED, entry.invoked, duration=0.0))
        for _ in self._workers:
            self._work.put(None)
        self._workers = []
        log.info("host stopped (%d message(s) handed back to %s)", len(unfinished), self.queue_name)


__all__ = ["HIDE_SECONDS", "Handler", "Invocation", "PollingDelay", "QueueHost", "Settlement"]
