"""local.queue_host over real Azurite: the Functions host's semantics, end to end."""

from __future__ import annotations

import base64
import json
import logging
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace

import azure.functions as func
import pytest
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.storage.queue import QueueClient

from local import queue_host
from local.batch_emulator import BatchEmulator, Fault
from local.functions import FunctionFolder
from local.invocations import ThreadPool
from local.queue_host import (
    Invocation,
    PollingDelay,
    QueueHost,
    Settlement,
    host_poison_queue_name,
)
from shared import wiring
from shared.config.settings import MAX_DEQUEUE_ENV, PROJECT_ROOT, QueueOptions
from shared.storage.terminate_queue import TerminateQueue
from tests.conftest import Queues

pytestmark = pytest.mark.integration

FAST = QueueOptions(
    max_dequeue_count=3,
    message_encoding="none",  # as host.json
    batch_size=4,
    new_batch_threshold=2,
    visibility_timeout_seconds=0,
    max_polling_interval_seconds=0.2,
)
BASE64 = replace(FAST, message_encoding="base64")


def raw_client(queues: Queues, name: str) -> QueueClient:
    """A client that reads and writes the queue's text exactly as stored."""
    return QueueClient.from_connection_string(queues.connection_string, name)


def raw_texts(queues: Queues, name: str) -> list[str]:
    """The stored text of every visible message (empty when the queue does not exist)."""
    try:
        return [m.content for m in raw_client(queues, name).peek_messages(max_messages=32)]
    except ResourceNotFoundError:
        return []


def b64(document: object) -> str:
    text = document if isinstance(document, str) else json.dumps(document)
    return base64.b64encode(text.encode()).decode()


def wait_for(predicate: Callable[[], bool], timeout: float = 8.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@contextmanager
def hosting(
    queues: Queues,
    handler: Callable[[func.QueueMessage], None],
    options: QueueOptions = FAST,
    **kwargs: object,
) -> Iterator[tuple[QueueHost, list[Invocation]]]:
    """A started host on the test's trigger queue, with every settled delivery recorded."""
    seen: list[Invocation] = []
    host = QueueHost.from_connection_string(
        queues.connection_string, queues.trigger, options, handler, on_invocation=seen.append, **kwargs
    )
    with host:
        yield host, seen


def terminate_job_main() -> Callable[[func.QueueMessage], None]:
    """terminate_job's entry point, loaded from its function.json as the host loads it."""
    return FunctionFolder.read(PROJECT_ROOT / "terminate_job").trigger_handler()


class Recorder:
    """A handler that records what it was given and can be told to fail."""

    def __init__(self, fail: Callable[[func.QueueMessage], bool] = lambda _: False) -> None:
        self.fail = fail
        self.calls: list[func.QueueMessage] = []
        self._lock = threading.Lock()

    def __call__(self, msg: func.QueueMessage) -> None:
        with self._lock:
            self.calls.append(msg)
        if self.fail(msg):
            raise RuntimeError(f"boom on delivery {msg.dequeue_count}")


def test_producer_messages_are_consumed_and_reach_the_emulator(
    function_env: dict[str, str], batch: BatchEmulator, queues: Queues
) -> None:
    jobs = ["render-1", "render-2", "render-3"]
    for job in jobs:
        batch.add_job(job)
    producer = TerminateQueue.connect(queues.trigger, connection_string=queues.connection_string)
    ids = {producer.enqueue_terminate(job, f"stop {job}") for job in jobs}

    with hosting(queues, terminate_job_main()) as (_, seen):
        wait_for(lambda: len(seen) == 3, what="three invocations")

    assert {t.job_id: t.reason for t in batch.terminations} == {job: f"stop {job}" for job in jobs}
    assert {i.message_id for i in seen} == ids
    assert all(i.outcome is Settlement.SUCCEEDED and i.dequeue_count == 1 and i.invoked for i in seen)
    assert raw_texts(queues, queues.trigger) == []
    assert queues.poison_records() == []


def test_failing_message_is_moved_to_poison_unchanged_after_max_dequeue_count(queues: Queues) -> None:
    text = b64({"jobId": "job-1", "reason": "r"})
    raw_client(queues, queues.trigger).send_message(text)
    handler = Recorder(fail=lambda _: True)

    with hosting(queues, handler, BASE64) as (_, seen):
        wait_for(lambda: any(i.outcome is Settlement.MOVED_TO_POISON for i in seen), what="the move to poison")

    assert [m.dequeue_count for m in handler.calls] == [1, 2, 3]
    assert all(m.get_body() == b'{"jobId": "job-1", "reason": "r"}' for m in handler.calls)
    assert [i.outcome for i in seen] == [Settlement.FAILED, Settlement.FAILED, Settlement.MOVED_TO_POISON]
    assert "RuntimeError: boom on delivery 3" in str(seen[-1].error)
    assert raw_texts(queues, queues.poison) == [text]
    assert raw_texts(queues, queues.trigger) == []


def test_batch_unavailable_forever_ends_in_the_functions_poison_record(
    monkeypatch: pytest.MonkeyPatch, function_env: dict[str, str], batch: BatchEmulator, queues: Queues
) -> None:
    # host.json and the function read the same maxDequeueCount: the last delivery writes the record and returns.
    monkeypatch.setenv(MAX_DEQUEUE_ENV, "2")
    wiring.install(wiring.Wiring(sleep=lambda _: None))
    batch.add_job("job-503")
    batch.inject(Fault.status(503, "ServerBusy"), times=100)
    TerminateQueue.connect(queues.trigger, connection_string=queues.connection_string).enqueue_terminate("job-503")

    with hosting(queues, terminate_job_main(), replace(FAST, max_dequeue_count=2)) as (_, seen):
        wait_for(lambda: len(seen) == 2, what="two deliveries")

    assert [(i.dequeue_count, i.outcome) for i in seen] == [(1, Settlement.FAILED), (2, Settlement.SUCCEEDED)]
    assert "RetryLater" in str(seen[0].error)
    [record] = queues.poison_records()
    assert (record["jobId"], record["error"]["code"], record["attempts"]) == ("job-503", "ServerBusy", 2)
    assert raw_texts(queues, queues.trigger) == []


def test_concurrency_is_bounded_by_batch_size_plus_new_batch_threshold(queues: Queues) -> None:
    options = replace(FAST, batch_size=2, new_batch_threshold=1)
    client = queues.client(queues.trigger)
    for n in range(9):
        client.send_message(json.dumps({"jobId": f"job-{n}"}))
    lock = threading.Lock()
    running = peak = 0

    def handler(msg: func.QueueMessage) -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.2)
        with lock:
            running -= 1

    with hosting(queues, handler, options) as (host, seen):
        wait_for(lambda: len(seen) == 9, what="nine invocations")

    assert 1 < peak <= options.batch_size + options.new_batch_threshold
    assert host.peak_in_flight <= options.batch_size + options.new_batch_threshold
    assert all(i.outcome is Settlement.SUCCEEDED for i in seen)
    assert raw_texts(queues, queues.trigger) == []


def test_message_that_is_not_base64_goes_to_poison_without_an_invocation(queues: Queues) -> None:
    raw_client(queues, queues.trigger).send_message("not base64 at all!")
    handler = Recorder()

    with hosting(queues, handler, BASE64) as (_, seen):
        wait_for(lambda: len(seen) == 1, what="the poison move")

    assert handler.calls == []
    assert (seen[0].outcome, seen[0].invoked) == (Settlement.MOVED_TO_POISON, False)
    assert "not valid base64" in str(seen[0].error)
    assert raw_texts(queues, queues.poison) == ["not base64 at all!"]
    assert raw_texts(queues, queues.trigger) == []


def test_message_encoding_none_hands_over_the_text_as_stored(queues: Queues) -> None:
    raw_client(queues, queues.trigger).send_message('{"jobId":"plain"}')
    handler = Recorder()

    with hosting(queues, handler, replace(FAST, message_encoding="none")) as (_, seen):
        wait_for(lambda: len(seen) == 1, what="one invocation")

    [msg] = handler.calls
    assert msg.get_body() == b'{"jobId":"plain"}'
    assert msg.id == seen[0].message_id
    assert msg.pop_receipt
    assert msg.insertion_time is not None
    assert msg.expiration_time is not None
    assert msg.time_next_visible is not None


def test_failed_message_is_delivered_again_after_the_visibility_timeout(queues: Queues) -> None:
    queues.client(queues.trigger).send_message('{"jobId":"retry-me"}')
    started: list[float] = []

    def handler(msg: func.QueueMessage) -> None:
        started.append(time.monotonic())
        if msg.dequeue_count == 1:
            raise RuntimeError("first delivery fails")

    with hosting(queues, handler, replace(FAST, visibility_timeout_seconds=1)) as (_, seen):
        wait_for(lambda: len(seen) == 2, what="the redelivery")

    assert [(i.dequeue_count, i.outcome) for i in seen] == [(1, Settlement.FAILED), (2, Settlement.SUCCEEDED)]
    assert started[1] - started[0] >= 0.9
    assert raw_texts(queues, queues.trigger) == []
    assert raw_texts(queues, queues.poison) == []


def test_stop_waits_for_in_flight_invocations(queues: Queues) -> None:
    queues.client(queues.trigger).send_message('{"jobId":"slow"}')
    handler = Recorder()

    def slow(msg: func.QueueMessage) -> None:
        handler(msg)
        time.sleep(1.0)

    host = QueueHost.from_connection_string(queues.connection_string, queues.trigger, FAST, slow)
    seen: list[Invocation] = []
    host.on_invocation = seen.append
    with host:
        wait_for(lambda: len(handler.calls) == 1, what="the invocation")
    # stop() (no bound, as QueueListener.StopAsync awaits every invocation) returned only after the function did.
    assert [(i.outcome, i.invoked) for i in seen] == [(Settlement.SUCCEEDED, True)]
    assert raw_texts(queues, queues.trigger) == []


@pytest.mark.parametrize("release_on_stop", [False, True])
def test_a_forced_stop_leaves_unfinished_messages_hidden_unless_released(queues: Queues, release_on_stop: bool) -> None:
    client = queues.client(queues.trigger)
    for body in ("fast-1", "fast-2", "slow-1", "slow-2"):
        client.send_message(json.dumps({"jobId": body}))
    release = threading.Event()
    started = Recorder()

    def handler(msg: func.QueueMessage) -> None:
        started(msg)
        if b"slow" in msg.get_body():
            release.wait(10)
        else:
            time.sleep(0.3)

    host = QueueHost.from_connection_string(
        queues.connection_string, queues.trigger, FAST, handler, hide_seconds=2.0, release_on_stop=release_on_stop
    )
    seen: list[Invocation] = []
    host.on_invocation = seen.append
    host.start()
    try:
        wait_for(lambda: len(started.calls) == 4, what="four invocations in flight")
        host.stop(timeout=1.5)
    finally:
        release.set()
    time.sleep(0.3)  # the slow handlers return now, after the host let go of their messages

    by_id = {i.message_id: i.outcome for i in seen}
    outcomes = {json.loads(m.get_body())["jobId"]: by_id.get(m.id) for m in started.calls}
    unfinished = Settlement.RELEASED if release_on_stop else Settlement.ABANDONED
    assert outcomes == {
        "fast-1": Settlement.SUCCEEDED,
        "fast-2": Settlement.SUCCEEDED,
        "slow-1": unfinished,
        "slow-2": unfinished,
    }
    assert host.in_flight == 0

    def visible() -> list[str]:
        return sorted(json.loads(m.content)["jobId"] for m in client.peek_messages(max_messages=32))

    if release_on_stop:
        assert visible() == ["slow-1", "slow-2"]  # visible again at once
    else:
        assert visible() == []  # hidden until the host's hide runs out, as after a real host stops
        wait_for(lambda: visible() == ["slow-1", "slow-2"], timeout=5, what="the hide to expire")


def test_message_delivered_more_than_max_dequeue_count_goes_to_poison_uninvoked(queues: Queues) -> None:
    text = b64({"jobId": "crashed"})
    client = raw_client(queues, queues.trigger)
    client.send_message(text)
    # A host that received it and died: the message comes back with dequeue_count 2 > maxDequeueCount 1.
    assert len(list(client.receive_messages(visibility_timeout=1))) == 1
    time.sleep(1.1)
    handler = Recorder()

    with hosting(queues, handler, replace(FAST, max_dequeue_count=1)) as (_, seen):
        wait_for(lambda: len(seen) == 1, what="the poison move")

    assert handler.calls == []
    assert (seen[0].dequeue_count, seen[0].outcome, seen[0].invoked) == (2, Settlement.MOVED_TO_POISON, False)
    assert raw_texts(queues, queues.poison) == [text]


def test_long_invocation_keeps_its_message_hidden(queues: Queues) -> None:
    queues.client(queues.trigger).send_message('{"jobId":"slow"}')
    handler = Recorder()

    def slow(msg: func.QueueMessage) -> None:
        handler(msg)
        time.sleep(2.2)

    # A 1 s hide renewed halfway stands in for the host's 10 minutes renewed every 5.
    with hosting(queues, slow, hide_seconds=1.0) as (_, seen):
        wait_for(lambda: len(seen) == 1, what="the invocation")
        time.sleep(0.5)

    assert [m.dequeue_count for m in handler.calls] == [1]
    assert seen[0].outcome is Settlement.SUCCEEDED
    assert raw_texts(queues, queues.trigger) == []


def test_host_waits_for_a_queue_that_does_not_exist_yet(queues: Queues) -> None:
    name = f"{queues.trigger}x"
    missing = Queues(queues.connection_string, name, f"{name}-poison")
    handler = Recorder()

    with hosting(missing, handler) as (_, seen):
        time.sleep(0.3)
        client = missing.client(name)
        client.create_queue()
        client.send_message('{"jobId":"late"}')
        wait_for(lambda: len(seen) == 1, what="the late message")

    assert seen[0].outcome is Settlement.SUCCEEDED


def test_polling_delay_backs_off_exponentially_to_the_maximum_and_resets_on_a_message() -> None:
    delay = PollingDelay(0.1, 2.0, random.Random(7))
    waits = [delay.next(found_messages=False) for _ in range(10)]

    assert all(0.1 < w <= 2.0 for w in waits)
    assert waits == sorted(waits)
    assert waits[0] == pytest.approx(0.2, rel=0.25)
    assert waits[-1] == 2.0
    assert delay.next(found_messages=True) == 0.1
    assert delay.next(found_messages=False) == pytest.approx(0.2, rel=0.25)
    assert PollingDelay(0.1, 0.05).next(found_messages=False) == 0.05


# ---- issue 11: the host as the real host is


def test_a_body_that_is_not_utf8_is_a_failed_invocation_then_moved_raw(queues: Queues) -> None:
    # The host binds the body as a string with a throwing UTF8Encoding (StorageQueueMessageToStringConverter).
    text = base64.b64encode(b'{"jobId": "caf\xe9"}').decode()
    raw_client(queues, queues.trigger).send_message(text)
    handler = Recorder()

    with hosting(queues, handler, BASE64) as (_, seen):
        wait_for(lambda: any(i.outcome is Settlement.MOVED_TO_POISON for i in seen), what="the poison move")

    assert handler.calls == []  # main never sees bytes it cannot bind
    assert [(i.dequeue_count, i.outcome, i.invoked) for i in seen] == [
        (1, Settlement.FAILED, False),
        (2, Settlement.FAILED, False),
        (3, Settlement.MOVED_TO_POISON, False),
    ]
    assert "not UTF-8" in str(seen[0].error)
    assert raw_texts(queues, queues.poison) == [text]


def test_the_body_is_bound_as_text(queues: Queues) -> None:
    raw_client(queues, queues.trigger).send_message(b64('{"jobId": "café"}'))
    handler = Recorder()

    with hosting(queues, handler, BASE64) as (_, seen):
        wait_for(lambda: len(seen) == 1, what="one invocation")

    assert handler.calls[0].get_body() == '{"jobId": "café"}'.encode()


def test_invocations_wait_for_one_of_the_workers_threads(queues: Queues) -> None:
    client = queues.client(queues.trigger)
    for n in range(6):
        client.send_message(json.dumps({"jobId": f"job-{n}"}))
    gate = threading.Event()
    handler = Recorder()

    def blocking(msg: func.QueueMessage) -> None:
        handler(msg)
        gate.wait(5)

    with hosting(queues, blocking, threads=2) as (host, seen):
        wait_for(lambda: host.in_flight == 4, what="a batch of four in flight")
        time.sleep(0.3)
        assert len(handler.calls) == 2  # two wait for a thread, as with a 2-thread worker pool
        gate.set()
        wait_for(lambda: len(seen) == 6, what="six invocations")

    assert host.peak_running == 2
    assert host.peak_in_flight >= 4
    assert all(i.outcome is Settlement.SUCCEEDED for i in seen)


def test_function_timeout_counts_from_the_hand_over_including_the_wait_for_a_thread(queues: Queues) -> None:
    client = queues.client(queues.trigger)
    for n in range(3):
        client.send_message(json.dumps({"jobId": f"job-{n}"}))
    handler = Recorder()

    def slow_first_time(msg: func.QueueMessage) -> None:
        handler(msg)
        if msg.dequeue_count == 1:
            time.sleep(0.8)

    # One thread, 1.2 s timeout: the first finishes in 0.8 s; the second starts at ~0.8 s and is timed out at 1.2 s
    # while running; the third is still waiting for the thread at 1.2 s. Each timed-out one is a failed delivery.
    with hosting(queues, slow_first_time, threads=1, function_timeout_seconds=1.2) as (_, seen):
        wait_for(lambda: sum(1 for i in seen if i.outcome is Settlement.SUCCEEDED) == 3, timeout=15, what="all done")

    first = sorted((i.outcome, i.timed_out, i.invoked) for i in seen if i.dequeue_count == 1)
    assert first == [
        (Settlement.FAILED, True, False),  # still waiting for the thread at its deadline
        (Settlement.FAILED, True, True),  # running at its deadline
        (Settlement.SUCCEEDED, False, True),
    ]
    waited = next(i for i in seen if i.timed_out and not i.invoked)
    assert "Timeout value of 1.2s exceeded by function" in str(waited.error)
    assert "still waiting for a thread" in str(waited.error)
    assert raw_texts(queues, queues.trigger) == []


def test_no_poison_queue_for_a_queue_that_already_ends_in_poison(queues: Queues) -> None:
    name = f"{queues.trigger}-poison"
    queues.client(name).create_queue()
    queues.client(name).send_message('{"jobId":"x"}')
    handler = Recorder(fail=lambda _: True)
    target = Queues(queues.connection_string, name, f"{name}-poison")

    with hosting(target, handler, replace(FAST, max_dequeue_count=1), hide_seconds=1.0) as (host, seen):
        assert host.poison_queue_name is None
        wait_for(lambda: len(seen) == 2, timeout=10, what="a second delivery after the hide expired")

    # Failed and past maxDequeueCount, yet never moved: the message stays hidden and comes back after its hide.
    assert [(i.dequeue_count, i.outcome, i.invoked) for i in seen] == [
        (1, Settlement.ABANDONED, True),
        (2, Settlement.ABANDONED, False),
    ]
    assert raw_texts(queues, f"{name}-poison") == []


@pytest.mark.parametrize(
    ("queue_name", "poison"),
    [
        ("batch-terminate", "batch-terminate-poison"),
        ("a" * 56, "a" * 56 + "-poison"),  # 63 characters: still valid
        ("a" * 57, None),  # 64 characters: no poison queue
        ("jobs-poison", None),
        ("abc", "abc-poison"),
    ],
)
def test_poison_queue_name_as_the_real_host_derives_it(queue_name: str, poison: str | None) -> None:
    assert host_poison_queue_name(queue_name) == poison


def test_a_receive_error_other_than_404_409_5xx_faults_the_listener(
    queues: Queues, caplog: pytest.LogCaptureFixture
) -> None:
    # A wrong account key: Azurite answers 403, which the real listener rethrows (the host restarts).
    bad_key = base64.b64encode(b"not the key").decode()
    connection = re.sub(r"AccountKey=[^;]+", f"AccountKey={bad_key}", queues.connection_string)
    caplog.set_level(logging.ERROR, logger="local.queue_host")

    with hosting(Queues(connection, queues.trigger, queues.poison), Recorder(), restart_seconds=0.1) as (host, _):
        wait_for(lambda: len(host.faults) >= 2, what="the listener to fault (and be restarted)")

    assert "403" in str(host.faults[0])
    assert any("faults" in message and "403" in message for message in caplog.messages)


def test_a_missing_queue_backs_off_without_faulting(queues: Queues) -> None:
    name = f"{queues.trigger}y"
    with hosting(Queues(queues.connection_string, name, f"{name}-poison"), Recorder()) as (host, _):
        time.sleep(0.5)
    assert host.faults == []


@pytest.mark.parametrize(
    ("status", "code", "backs_off"),
    [
        (404, "QueueNotFound", True),
        (404, "ResourceNotFound", False),
        (409, "QueueBeingDeleted", True),
        (409, "QueueDisabled", True),
        (409, "QueueAlreadyExists", False),
        (500, "InternalError", True),
        (503, "ServerBusy", True),
        (403, "AuthorizationFailure", False),
        (400, "InvalidQueryParameterValue", False),
    ],
)
def test_which_receive_errors_the_listener_backs_off_from(status: int, code: str, backs_off: bool) -> None:
    error = HttpResponseError(message=f"{status} {code}")
    error.status_code = status
    error.error_code = code  # type: ignore[attr-defined]
    assert queue_host._backs_off(error) is backs_off


def test_after_a_batch_the_first_empty_poll_waits_the_minimum(queues: Queues, monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[tuple[bool, float]] = []

    class Recording(PollingDelay):
        def next(self, found_messages: bool) -> float:
            wait = super().next(found_messages)
            asked.append((found_messages, wait))
            return wait

    monkeypatch.setattr(queue_host, "PollingDelay", Recording)
    queues.client(queues.trigger).send_message('{"jobId":"one"}')

    with hosting(queues, Recorder(), replace(FAST, max_polling_interval_seconds=1.0)) as (_, seen):
        wait_for(lambda: len(seen) == 1 and len(asked) >= 3, what="a few polls")

    # QueueListener: a message found since the last delay resets the backoff to QueuePollingIntervals.Minimum.
    first_after_batch = next(i for i, (found, _) in enumerate(asked) if found)
    assert asked[first_after_batch] == (True, queue_host.MIN_POLLING_SECONDS)
    assert asked[first_after_batch + 1][0] is False
    assert asked[first_after_batch + 1][1] > queue_host.MIN_POLLING_SECONDS


def test_two_queue_functions_share_the_workers_one_pool(queues: Queues) -> None:
    # dispatcher.py keeps one sync thread pool per worker process: every function's invocations wait for it.
    other = Queues(queues.connection_string, f"{queues.trigger}z", f"{queues.trigger}z-poison")
    other.client(other.trigger).create_queue()
    for target in (queues, other):
        for n in range(2):
            target.client(target.trigger).send_message(json.dumps({"jobId": f"job-{n}"}))
    gate = threading.Event()
    handler = Recorder()

    def blocking(msg: func.QueueMessage) -> None:
        handler(msg)
        gate.wait(5)

    pool = ThreadPool(1, name="shared")
    seen: list[Invocation] = []
    first = QueueHost.from_connection_string(queues.connection_string, queues.trigger, FAST, blocking, pool=pool)
    second = QueueHost.from_connection_string(other.connection_string, other.trigger, FAST, blocking, pool=pool)
    for host in (first, second):
        host.on_invocation = seen.append
    try:
        with first, second:
            wait_for(lambda: first.in_flight == 2 and second.in_flight == 2, what="both batches in flight")
            time.sleep(0.3)
            assert len(handler.calls) == 1  # one thread between the two functions
            gate.set()
            wait_for(lambda: len(seen) == 4, what="four invocations")
    finally:
        pool.shutdown()
    assert first.threads == second.threads == 1
