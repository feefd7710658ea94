"""local.queue_host over real Azurite: the Functions host's semantics, end to end."""

from __future__ import annotations

import base64
import json
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace

import azure.functions as func
import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.storage.queue import QueueClient

from local.batch_emulator import BatchEmulator, Fault
from local.functions import FunctionFolder
from local.queue_host import Invocation, PollingDelay, QueueHost, Settlement
from shared import wiring
from shared.producer import TerminateQueue
from shared.settings import MAX_DEQUEUE_ENV, PROJECT_ROOT, QueueOptions
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


def test_stop_lets_invocations_finish_and_hands_back_the_rest(queues: Queues) -> None:
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

    host = QueueHost.from_connection_string(queues.connection_string, queues.trigger, FAST, handler)
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
    assert outcomes == {
        "fast-1": Settlement.SUCCEEDED,
        "fast-2": Settlement.SUCCEEDED,
        "slow-1": Settlement.RELEASED,
        "slow-2": Settlement.RELEASED,
    }
    left = sorted(json.loads(m.content)["jobId"] for m in client.peek_messages(max_messages=32))
    assert left == ["slow-1", "slow-2"]  # visible again at once, nothing lost
    assert host.in_flight == 0


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
