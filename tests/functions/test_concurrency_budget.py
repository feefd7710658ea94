"""The concurrency budget (README "Concurrency budget"): a Batch outage over the local host and the worker's threads.

Every Batch call times out. The real RetryPolicy runs on a clock and sleep scaled by SCALE, and so do the HTTP timeout,
host.json's visibilityTimeout and functionTimeout: 1 real second stands for SCALE seconds in Azure. With one thread per
message the host holds, no invocation reaches functionTimeout and every message ends as a poison record; with the
worker's default pool on a 1-vCPU instance (5 threads) the later messages time out waiting for a thread.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

import pytest

from local.batch_emulator import BatchEmulator, Fault
from local.functions import FunctionFolder
from local.invocations import default_thread_count, function_timeout
from local.queue_host import Invocation, QueueHost, Settlement
from shared import wiring
from shared.batch.retry import RetryPolicy
from shared.config.settings import PROJECT_ROOT, Settings
from shared.storage.terminate_queue import TerminateQueue
from tests.conftest import Queues

pytestmark = pytest.mark.integration

# 1 real second = SCALE Azure seconds. Work that is not scaled (Azurite calls, the poison write, thread scheduling on a
# busy 2-core machine) is multiplied by SCALE too: at 50 a loaded machine's ~5 s of such overhead read as 387 s.
# At 20 an invocation has (300 - 155) / 20 = 7 real seconds of slack, and the test still runs in about a minute.
SCALE = 20.0


def scaled_clock() -> float:
    """Azure time: SCALE times faster than the wall clock."""
    return time.monotonic() * SCALE


def scaled_sleep(seconds: float) -> None:
    """Sleep Azure seconds."""
    time.sleep(seconds / SCALE)


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def outage(
    queues: Queues, batch: BatchEmulator, threads: int
) -> tuple[QueueHost, list[Invocation], Settings, list[str]]:
    """host.json's queue options and functionTimeout, scaled; every Batch call outlives the client's timeout."""
    settings = Settings.from_env()
    options = replace(settings.queues, visibility_timeout_seconds=settings.queues.visibility_timeout_seconds / SCALE)
    http_timeout = settings.http_timeout_seconds / SCALE
    wiring.install(
        wiring.Wiring(settings, sleep=scaled_sleep, clock=scaled_clock, http_timeout=http_timeout, policy=RetryPolicy())
    )
    batch.inject(Fault.status(503, "ServerBusy"), times=100_000)
    batch.latency = 2 * http_timeout  # the 503 never arrives in time: each attempt costs the full timeout
    count = settings.queues.batch_size + settings.queues.new_batch_threshold
    producer = TerminateQueue.connect(queues.trigger, connection_string=queues.connection_string)
    ids = [producer.enqueue_terminate(f"outage-{n}") for n in range(count)]
    for n in range(count):
        batch.add_job(f"outage-{n}")
    timeout = function_timeout()
    assert timeout is not None
    seen: list[Invocation] = []
    host = QueueHost.for_function(
        FunctionFolder.read(PROJECT_ROOT / "terminate_job"),
        settings.storage,
        options,
        threads=threads,
        function_timeout_seconds=timeout / SCALE,
        on_invocation=seen.append,
    )
    return host, seen, settings, ids


@pytest.mark.timeout(400)
@pytest.mark.usefixtures("function_env")
def test_one_thread_per_held_message_keeps_every_invocation_under_function_timeout(
    queues: Queues, batch: BatchEmulator
) -> None:
    settings = Settings.from_env()
    threads = settings.queues.batch_size + settings.queues.new_batch_threshold  # what the app settings give
    host, seen, settings, ids = outage(queues, batch, threads)
    deliveries = settings.max_dequeue_count * len(ids)

    with host:
        wait_until(lambda: len(seen) >= deliveries, timeout=300, what="every delivery of every message")

    assert not [i for i in seen if i.timed_out]
    budget = function_timeout()
    assert budget is not None
    longest = max(i.duration for i in seen) * SCALE
    assert longest < budget, f"an invocation took {longest:.0f} s (Azure time) of {budget:.0f} s"
    assert [i.outcome for i in seen].count(Settlement.MOVED_TO_POISON) == 0
    records = queues.poison_records()
    assert sorted(r["messageId"] for r in records) == sorted(ids)  # nothing lost, nothing twice
    assert {(r["error"]["code"], r["attempts"]) for r in records} == {
        ("ServiceUnavailable", settings.max_dequeue_count)
    }
    assert queues.enqueued() == []


@pytest.mark.timeout(400)
@pytest.mark.usefixtures("function_env")
def test_the_workers_default_pool_on_one_vcpu_lets_queued_invocations_time_out(
    queues: Queues, batch: BatchEmulator
) -> None:
    host, seen, _, ids = outage(queues, batch, default_thread_count(1))

    host.start()
    try:
        wait_until(
            lambda: len({i.message_id for i in seen if i.dequeue_count == 1}) == len(ids),
            timeout=150,
            what="the first delivery of every message",
        )
    finally:
        host.force_stop()
        host.stop()
        wait_until(lambda: host.running == 0, timeout=75, what="the timed-out invocations to return")

    first = [i for i in seen if i.dequeue_count == 1]
    timed_out = [i for i in first if i.timed_out]
    # 5 threads, ~144 s per invocation, 300 s functionTimeout: of the first batch of 16, two waves of 5 finish in
    # time and the other 6 time out, running or still waiting for a thread.
    assert len(timed_out) >= 6
    assert any(not i.invoked for i in timed_out)  # some never got a thread at all
