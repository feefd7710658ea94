"""A local queue-trigger host with the Azure Functions host's semantics (Core Tools cannot be installed here).

Each rule cites the Storage Queues extension (Azure/azure-sdk-for-net, sdk/storage/
Microsoft.Azure.WebJobs.Extensions.Storage.*) or the Python worker (azure-functions-python-worker 4.34.0); README.md
"Running it locally" lists what is modelled and what is not.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import enum
import logging
import math
import random
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import azure.functions as func
from azure.core.exceptions import AzureError, HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.functions.queue import QueueMessage as FunctionQueueMessage
from azure.storage.queue import QueueClient
from azure.storage.queue import QueueMessage as StorageQueueMessage

from local.functions import FunctionFolder, FunctionLoadError, resolve_settings
from local.invocations import ThreadPool, format_timeout, function_timeout, thread_pool_size
from shared.config.readers import POISON_SUFFIX, is_queue_name
from shared.config.settings import HOST_JSON, QueueOptions, StorageSettings
from shared.storage.queues import queue_client

log = logging.getLogger("local.queue_host")

Handler = Callable[[func.QueueMessage], None]

# QueueListener: messages are received hidden for 10 minutes, and the hide is renewed halfway while the function runs.
HIDE_SECONDS = 600.0
# QueuePollingIntervals.Minimum: the backoff between empty polls starts here and grows to maxPollingInterval.
MIN_POLLING_SECONDS = 0.1
RANDOMIZATION_FACTOR = 0.2
# A faulted listener takes the host down; the platform starts it again after a pause about this long.
RESTART_SECONDS = 2.0
# How often hides are renewed and function timeouts checked.
_WATCH_SECONDS = 0.05
# .NET's Convert.FromBase64String skips these; a message with them is still valid base64 to the host.
_BASE64_WHITESPACE = str.maketrans("", "", " \t\r\n")
# Receive errors the listener backs off from (QueueListener.ExecuteAsync); any other one faults it.
_BACKOFF_CODES = {404: {"QueueNotFound"}, 409: {"QueueBeingDeleted", "QueueDisabled"}}
_FROM_HOST_JSON = "host.json"


class Settlement(enum.StrEnum):
    """How the host settled one received message (the queue's view, not the product's outcome)."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    MOVED_TO_POISON = "moved_to_poison"
    RELEASED = "released"
    ABANDONED = "abandoned"


class ListenerFault(Exception):
    """A receive error the real listener does not back off from: it faults, and the host restarts."""


class _Unbindable(Exception):
    """The body cannot be bound to the function's string parameter (not UTF-8)."""


class _Undecodable(Exception):
    """The body is not base64 although host.json says it is: the queue client rejects it before any invocation."""


@dataclass(frozen=True)
class Invocation:
    """One finished delivery: how it was settled and what the log line says about it."""

    message_id: str
    dequeue_count: int
    outcome: Settlement
    invoked: bool
    duration: float
    error: str | None = None
    timed_out: bool = False
    queued: float = 0.0


class PollingDelay:
    """The host's randomized exponential backoff between polls: reset by a message, grown by an empty queue."""

    def __init__(self, minimum: float, maximum: float, rng: random.Random | None = None) -> None:
        self._maximum = max(maximum, 0.0)
        self._minimum = min(minimum, self._maximum)
        self._current = self._minimum
        self._exponent = 1
        self._rng = rng or random.Random()

    def next(self, found_messages: bool) -> float:
        """The wait before the next poll (RandomizedExponentialBackoffStrategy.GetNextDelay)."""
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


def host_poison_queue_name(queue_name: str) -> str | None:
    """`{queue}-poison`, or None when the host keeps no poison queue for this queue."""
    # QueueListenerFactory.CreatePoisonQueueReference: none for a queue that is already a poison queue, or when the
    # suffix would make an invalid name (longer than 63 characters).
    if queue_name.endswith(POISON_SUFFIX):
        return None
    candidate = queue_name + POISON_SUFFIX
    return candidate if is_queue_name(candidate) else None


def _backs_off(error: HttpResponseError) -> bool:
    """Whether the listener backs off from this receive error: 404 QueueNotFound, 409 being deleted/disabled, 5xx."""
    status = int(error.status_code or 0)
    code = str(getattr(error, "error_code", None) or "")
    return 500 <= status < 600 or code in _BACKOFF_CODES.get(status, set())


@dataclass(eq=False)
class _InFlight:
    """A received message the host owns until it settles it (deleted, released, poisoned or left hidden)."""

    message: StorageQueueMessage
    pop_receipt: str
    renew_at: float
    received: float
    lock: threading.Lock = field(default_factory=threading.Lock)
    deadline: float | None = None
    started: float | None = None
    settled: bool = False
    timing_out: bool = False

    @property
    def dequeue_count(self) -> int:
        """The delivery attempt the queue counted."""
        return int(self.message.dequeue_count or 1)


class QueueHost:
    """Pumps one trigger queue into a handler the way the Functions host's queue trigger and Python worker do."""

    def __init__(
        self,
        trigger: QueueClient,
        poison: QueueClient | None,
        options: QueueOptions,
        handler: Handler,
        *,
        hide_seconds: float = HIDE_SECONDS,
        min_polling_seconds: float = MIN_POLLING_SECONDS,
        drain_seconds: float | None = None,
        on_invocation: Callable[[Invocation], None] | None = None,
        function_name: str | None = None,
        threads: int | None = None,
        function_timeout_seconds: float | str | None = _FROM_HOST_JSON,
        release_on_stop: bool = False,
        restart_seconds: float = RESTART_SECONDS,
        host_json: Path = HOST_JSON,
        pool: ThreadPool | None = None,
    ) -> None:
        self.trigger = trigger
        self.poison = poison
        self.options = options
        self.handler = handler
        self.function_name = function_name or getattr(handler, "__qualname__", "handler")
        self.hide_seconds = hide_seconds
        self.min_polling_seconds = min_polling_seconds
        self.drain_seconds = drain_seconds
        self.on_invocation = on_invocation
        # The worker has one pool for every function of the app; a host given one shares it (and does not stop it).
        self._shared_pool = pool
        self.threads = pool.size if pool is not None else threads if threads is not None else thread_pool_size()
        self.function_timeout = (
            function_timeout(host_json) if isinstance(function_timeout_seconds, str) else function_timeout_seconds
        )
        self.release_on_stop = release_on_stop
        self.restart_seconds = restart_seconds
        self.peak_in_flight = 0
        self.peak_running = 0
        self.faults: list[ListenerFault] = []
        self._running = 0
        self._in_flight: dict[int, _InFlight] = {}
        self._condition = threading.Condition()
        self._stop = threading.Event()
        self._forced = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool: ThreadPool | None = None
        self._settler: ThreadPoolExecutor | None = None

    @classmethod
    def from_storage(
        cls,
        storage: StorageSettings,
        queue_name: str,
        options: QueueOptions,
        handler: Handler,
        **kwargs: Any,
    ) -> QueueHost:
        """A host for `queue_name` on this storage, with the poison queue the real host would use (if any)."""
        # No encode/decode policies: the host reads and moves the raw text and decodes it itself.
        pool = options.batch_size + options.new_batch_threshold + 2  # settlements, the poller, the renewer
        trigger = queue_client(storage, queue_name, "none", pool_size=pool)
        poison_name = host_poison_queue_name(queue_name)
        poison = None if poison_name is None else queue_client(storage, poison_name, "none", pool_size=pool)
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
    def poison_queue_name(self) -> str | None:
        """Where messages that fail maxDequeueCount times go (None: the host keeps no poison queue)."""
        return None if self.poison is None else self.poison.queue_name

    @property
    def in_flight(self) -> int:
        """How many received messages are not settled yet."""
        with self._condition:
            return len(self._in_flight)

    @property
    def running(self) -> int:
        """How many invocations are running on the worker's threads (timed-out ones included until they return)."""
        with self._condition:
            return self._running

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
        self._forced.clear()
        self._thread = threading.Thread(
            target=self.run, args=(self._stop,), name=f"host:{self.queue_name}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Stop receiving and wait for in-flight invocations (up to `timeout`, default drain_seconds: no bound)."""
        if timeout is not None:
            self.drain_seconds = timeout
        self._stop.set()
        thread, self._thread = self._thread, None
        while thread is not None and thread.is_alive():
            thread.join(0.2)

    def force_stop(self) -> None:
        """Stop waiting for in-flight invocations (a second Ctrl-C): their messages stay hidden or are released."""
        self._forced.set()
        self._stop.set()

    def __enter__(self) -> QueueHost:
        """Start."""
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Stop (wait for in-flight invocations)."""
        self.stop()

    def run(self, stop: threading.Event | None = None) -> None:
        """Poll until `stop` is set, then wait for in-flight invocations; a faulted listener is restarted."""
        stop = stop or self._stop
        self._pool = self._shared_pool or ThreadPool(self.threads, name=f"worker:{self.queue_name}")
        self._settler = ThreadPoolExecutor(max(self.max_in_flight, 1), thread_name_prefix=f"host:{self.queue_name}")
        halted = threading.Event()
        watcher = threading.Thread(target=self._watch_loop, args=(halted,), name="host:watch", daemon=True)
        watcher.start()
        timeout = "none" if self.function_timeout is None else format_timeout(self.function_timeout)
        log.info(
            "host listening on %s for %s (batchSize=%d newBatchThreshold=%d maxDequeueCount=%d visibilityTimeout=%gs"
            " maxPollingInterval=%gs messageEncoding=%s threads=%d functionTimeout=%s poison=%s)",
            self.queue_name,
            self.function_name,
            self.options.batch_size,
            self.options.new_batch_threshold,
            self.options.max_dequeue_count,
            self.options.visibility_timeout_seconds,
            self.options.max_polling_interval_seconds,
            self.options.message_encoding,
            self.threads,
            timeout,
            self.poison_queue_name or "none",
        )
        try:
            while not stop.is_set():
                try:
                    self._listen(stop)
                except ListenerFault as fault:
                    self.faults.append(fault)
                    log.error("%s; the Functions host restarts when its listener faults", fault)
                    self._wait_for_in_flight(None)
                    stop.wait(self.restart_seconds)
        finally:
            self._drain()
            halted.set()
            watcher.join(5)
            if self._shared_pool is None:
                self._pool.shutdown()
            self._settler.shutdown(wait=True)

    # ---- polling

    def _listen(self, stop: threading.Event) -> None:
        """QueueListener.ExecuteAsync in a loop: receive, dispatch, wait for room or back off."""
        delay = PollingDelay(self.min_polling_seconds, self.options.max_polling_interval_seconds)
        found_since_delay = False
        missing_logged = False
        while not stop.is_set():
            if not self._wait_for_room(stop):
                return
            try:
                messages = self._receive()
            except HttpResponseError as exc:
                if not _backs_off(exc):
                    raise ListenerFault(f"receive from {self.queue_name} failed: {_describe(exc)}") from exc
                if isinstance(exc, ResourceNotFoundError):
                    if not missing_logged:
                        log.warning("queue %s does not exist yet; polling until it does", self.queue_name)
                        missing_logged = True
                else:
                    log.warning("receive from %s failed, backing off: %s", self.queue_name, _describe(exc))
                messages = []
            except AzureError as exc:
                # No HTTP answer at all: the .NET client's RequestFailedException has status 0, which the listener
                # does not back off from.
                raise ListenerFault(f"receive from {self.queue_name} failed: {_describe(exc)}") from exc
            for message in messages:
                self._dispatch(message)
            if messages:
                found_since_delay = True
                continue  # after a batch: poll again once there is room (WaitForNewBatchThreshold)
            pause = delay.next(found_since_delay)
            found_since_delay = False
            stop.wait(pause)

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
        """Track the message, bind it, and hand the invocation to the worker's thread pool."""
        now = time.monotonic()
        entry = _InFlight(message, str(message.pop_receipt), now + self.hide_seconds / 2, now)
        with self._condition:
            self._in_flight[id(entry)] = entry
            self.peak_in_flight = max(self.peak_in_flight, len(self._in_flight))
        count = entry.dequeue_count
        if count > self.options.max_dequeue_count:
            # QueueProcessor.BeginProcessingMessageAsync: delivered more often than allowed (e.g. a crash
            # mid-invocation): poison without invoking.
            too_often = f"dequeue count {count} exceeds maxDequeueCount {self.options.max_dequeue_count}"
            self._settle_later(entry, None, too_often, last=True)
            return
        try:
            body = self._bind(str(message.content if message.content is not None else ""))
        except _Undecodable as exc:
            # The MessageDecodingFailed handler moves it to the poison queue before any invocation.
            self._settle_later(entry, None, str(exc), last=True)
            return
        except _Unbindable as exc:
            # A binding failure is a failed invocation: retried, then moved as it is.
            self._settle_later(entry, None, str(exc))
            return
        delivered = FunctionQueueMessage(
            id=message.id,
            body=body,
            dequeue_count=count,
            pop_receipt=entry.pop_receipt,
            insertion_time=message.inserted_on,
            expiration_time=message.expires_on,
            time_next_visible=message.next_visible_on,
        )
        if self.function_timeout is not None:
            # The host's timeout runs from the hand-over: time spent waiting for a worker thread counts.
            entry.deadline = now + self.function_timeout
        assert self._pool is not None
        self._pool.submit(lambda: self._invoke(entry, delivered))

    def _bind(self, raw: str) -> str:
        """The body as the host binds it to the function: a string, decoded as strict UTF-8."""
        if self.options.message_encoding != "base64":
            return raw
        try:
            data = base64.b64decode(raw.translate(_BASE64_WHITESPACE), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise _Undecodable(f"message is not valid base64 ({exc})") from exc
        try:
            # StorageQueueMessageToStringConverter: Body.ToValidUTF8String(), a UTF8Encoding that throws on bad bytes.
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _Unbindable(f"the body cannot be bound as a string: it is not UTF-8 ({exc.reason})") from exc

    # ---- invocations (on the worker's thread pool) and their settlement (on the host's threads)

    def _invoke(self, entry: _InFlight, delivered: FunctionQueueMessage) -> None:
        """Run the function unless the invocation already timed out while waiting for a thread."""
        with entry.lock:
            if entry.settled:
                return
            entry.started = time.monotonic()
        with self._condition:
            self._running += 1
            self.peak_running = max(self.peak_running, self._running)
        error: str | None = None
        try:
            self.handler(delivered)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            log.debug("invocation of message %s raised", entry.message.id, exc_info=True)
        finally:
            with self._condition:
                self._running -= 1
        self._settle_later(entry, entry.started, error)

    def _settle_later(self, entry: _InFlight, started: float | None, error: str | None, *, last: bool = False) -> None:
        """Settle on the host's threads (the worker only runs the function)."""
        settler = self._settler
        if settler is None:
            return
        with contextlib.suppress(RuntimeError):  # the host has stopped: the message was already left or released
            settler.submit(self._complete, entry, started, error, last)

    def _complete(
        self, entry: _InFlight, started: float | None, error: str | None, last: bool, *, timed_out: bool = False
    ) -> None:
        """QueueProcessor.CompleteProcessingMessageAsync: delete, release, move to poison or leave hidden."""
        if entry.timing_out and not timed_out:
            log.info("message_id=%s finished after its functionTimeout; the result is ignored", entry.message.id)
            return
        invoked = started is not None
        if error is None:
            invocation = self._settle(entry, Settlement.SUCCEEDED, None, self._delete, invoked)
        elif self.poison is None:
            # No poison queue: the failed message stays hidden (no release) so it cannot loop fast.
            invocation = self._settle(entry, Settlement.ABANDONED, error, lambda _: None, invoked)
        elif last or entry.dequeue_count >= self.options.max_dequeue_count:
            invocation = self._settle(entry, Settlement.MOVED_TO_POISON, error, self._move_to_poison, invoked)
        else:
            invocation = self._settle(entry, Settlement.FAILED, error, self._release_after_failure, invoked)
        if invocation is not None:
            self._report(invocation)

    def _time_out(self, entry: _InFlight) -> None:
        """The host's functionTimeout: the invocation fails (its thread cannot be stopped; its result is ignored)."""
        assert self.function_timeout is not None
        where = "running" if entry.started is not None else "still waiting for a thread"
        error = (
            f"FunctionTimeoutException: Timeout value of {format_timeout(self.function_timeout)} exceeded by"
            f" function {self.function_name} ({where})"
        )
        log.error("message_id=%s %s; in Azure the host restarts now", entry.message.id, error)
        with entry.lock:
            started = entry.started
        self._complete(entry, started, error, False, timed_out=True)

    def _settle(
        self,
        entry: _InFlight,
        outcome: Settlement,
        error: str | None,
        action: Callable[[_InFlight], None],
        invoked: bool,
    ) -> Invocation | None:
        """Apply the outcome's storage action once, unless the host already settled the message."""
        count = entry.dequeue_count
        with entry.lock:
            if entry.settled:
                log.info(
                    "message_id=%s dequeue_count=%d finished after the host had settled it (timed out or stopped)",
                    entry.message.id,
                    count,
                )
                return None
            entry.settled = True
            timed_out = entry.timing_out
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
                outcome = Settlement.ABANDONED
            finally:
                self._forget(entry)
        now = time.monotonic()
        queued = (entry.started if entry.started is not None else now) - entry.received
        return Invocation(entry.message.id, count, outcome, invoked, now - entry.received, error, timed_out, queued)

    def _forget(self, entry: _InFlight) -> None:
        """The message is settled: it no longer counts against newBatchThreshold."""
        with self._condition:
            self._in_flight.pop(id(entry), None)
            self._condition.notify_all()

    def _delete(self, entry: _InFlight) -> None:
        """Remove the finished message (already gone is fine)."""
        with contextlib.suppress(ResourceNotFoundError):
            self.trigger.delete_message(entry.message.id, entry.pop_receipt)

    def _release_after_failure(self, entry: _InFlight) -> None:
        """Let the failed message be delivered again after visibilityTimeout."""
        self._set_visibility(entry, self.options.visibility_timeout_seconds)

    def _move_to_poison(self, entry: _InFlight) -> None:
        """Copy the raw text, unchanged, to the poison queue (created on first need), then delete it."""
        assert self.poison is not None
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
            Settlement.ABANDONED: f" visible_again_in<={self.hide_seconds:g}s (left hidden)",
        }[invocation.outcome]
        log.info(
            "message_id=%s dequeue_count=%d outcome=%s invoked=%s duration_ms=%.0f queued_ms=%.0f%s%s",
            invocation.message_id,
            invocation.dequeue_count,
            invocation.outcome.value,
            str(invocation.invoked).lower(),
            invocation.duration * 1000,
            invocation.queued * 1000,
            detail,
            f" error={invocation.error}" if invocation.error else "",
        )
        if self.on_invocation is not None:
            try:
                self.on_invocation(invocation)
            except Exception:
                log.exception("on_invocation callback failed")

    # ---- keeping messages hidden, timing invocations out, and stopping

    def _watch_loop(self, halted: threading.Event) -> None:
        """Renew the hide of long invocations halfway through it, and fail invocations past functionTimeout."""
        while not halted.wait(_WATCH_SECONDS):
            now = time.monotonic()
            with self._condition:
                entries = list(self._in_flight.values())
            for entry in entries:
                if entry.deadline is not None and now >= entry.deadline and not entry.timing_out:
                    with entry.lock:
                        if entry.settled:
                            continue
                        entry.timing_out = True
                    if self._settler is not None:
                        with contextlib.suppress(RuntimeError):
                            self._settler.submit(self._time_out, entry)
                elif entry.renew_at <= now:
                    self._renew(entry)

    def _renew(self, entry: _InFlight) -> None:
        """Extend the hide of one message."""
        with entry.lock:
            if entry.settled:
                return
            try:
                self._set_visibility(entry, self.hide_seconds)
                entry.renew_at = time.monotonic() + self.hide_seconds / 2
            except AzureError as exc:
                log.warning("could not extend the hide of message %s: %s", entry.message.id, exc)

    def _wait_for_in_flight(self, seconds: float | None) -> None:
        """Wait until nothing is in flight, `seconds` pass, or force_stop() is called."""
        deadline = None if seconds is None else time.monotonic() + seconds
        with self._condition:
            while self._in_flight and not self._forced.is_set():
                remaining = 0.1 if deadline is None else min(0.1, deadline - time.monotonic())
                if remaining <= 0:
                    break
                self._condition.wait(remaining)

    def _drain(self) -> None:
        """QueueListener.StopAsync: wait for in-flight invocations; what is unfinished stays hidden (or is released)."""
        if self.in_flight:
            bound = "until they finish or time out" if self.drain_seconds is None else f"up to {self.drain_seconds:g}s"
            log.info("host stopping: waiting %s for %d invocation(s)", bound, self.in_flight)
        self._wait_for_in_flight(self.drain_seconds)
        with self._condition:
            unfinished = list(self._in_flight.values())
        for entry in unfinished:
            with entry.lock:
                if entry.settled:
                    continue
                entry.settled = True
                outcome = Settlement.ABANDONED
                if self.release_on_stop:
                    try:
                        self._set_visibility(entry, 0)
                        outcome = Settlement.RELEASED
                    except AzureError as exc:
                        log.error("message_id=%s could not be released: %s", entry.message.id, exc)
                self._forget(entry)
            now = time.monotonic()
            self._report(
                Invocation(
                    entry.message.id, entry.dequeue_count, outcome, entry.started is not None, now - entry.received
                )
            )
        what = "released to" if self.release_on_stop else "left hidden on"
        log.info("host stopped (%d unfinished message(s) %s %s)", len(unfinished), what, self.queue_name)


def _describe(error: AzureError) -> str:
    """Status, storage error code and the first line of the message."""
    status = getattr(error, "status_code", None)
    code = getattr(error, "error_code", None)
    first = str(error).splitlines()[0] if str(error) else type(error).__name__
    parts = [str(status) if status else type(error).__name__, str(code) if code else None, first]
    return " ".join(part for part in parts if part)


__all__ = [
    "HIDE_SECONDS",
    "MIN_POLLING_SECONDS",
    "Handler",
    "Invocation",
    "ListenerFault",
    "PollingDelay",
    "QueueHost",
    "Settlement",
    "host_poison_queue_name",
]
