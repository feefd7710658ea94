"""Figure 3: messages/s through Azurite and the local host against the ideal and against Azurite's own ceiling."""

from __future__ import annotations

import base64
import math
import statistics
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import azure.functions as func
from azure.storage.queue import QueueClient

import terminate_job
from bench.calls import function_app
from bench.harness import Figure, environment
from bench.services import Services
from local.host import Invocation, Outcome, QueueHost
from shared import runtime
from shared.settings import QueueOptions

LATENCY = 0.020
BATCH_SIZE = 16
NEW_BATCH_THRESHOLD = 8  # host.json's
CONCURRENCY = (1, 4, 16, 32)
E2E_TARGET = 0.80
SEND_THREADS = 8
CEILING_BATCH = 32
# The Functions host polls again as soon as a batch is dispatched and in-flight work is at or below
# newBatchThreshold (QueueListener.CreateSucceededResult waits only for that); its 100 ms minimum applies
# to backing off from an empty queue. local/host.py waits min_polling_seconds after every poll, so give it
# 1 ms: no pause after a batch, and an empty queue still backs off exponentially (to maxPollingInterval).
MIN_POLLING_SECONDS = 0.001

Handler = Callable[[func.QueueMessage], None]


def host_options(concurrency: int) -> QueueOptions:
    """batchSize 16 and host.json's newBatchThreshold 8, raised when the concurrency needs more in flight."""
    return QueueOptions(
        max_dequeue_count=5,
        message_encoding="base64",
        batch_size=BATCH_SIZE,
        new_batch_threshold=max(NEW_BATCH_THRESHOLD, concurrency - BATCH_SIZE),
        visibility_timeout_seconds=0,
        max_polling_interval_seconds=2,
    )


def app_settings(concurrency: int) -> dict[str, str | None]:
    """The app settings that give the function the same queue options as the host at this concurrency."""
    options = host_options(concurrency)
    prefix = "AzureFunctionsJobHost__extensions__queues__"
    return {
        f"{prefix}batchSize": str(options.batch_size),
        f"{prefix}newBatchThreshold": str(options.new_batch_threshold),
    }


class WorkerThreads:
    """The Python worker's thread pool (PYTHON_THREADPOOL_THREAD_COUNT): at most n invocations run at once."""

    def __init__(self, n: int, handler: Handler) -> None:
        self._slots = threading.BoundedSemaphore(n)
        self._handler = handler

    def __call__(self, message: func.QueueMessage) -> None:
        """Run the handler in one of the n slots."""
        with self._slots:
            self._handler(message)


def null_function(message: func.QueueMessage) -> None:
    """A function that only waits as long as the emulator does: the host's own ceiling at this latency."""
    time.sleep(LATENCY)


def new_queue(connection_string: str, prefix: str) -> QueueClient:
    """A fresh queue whose messages are read and written as stored text."""
    client = QueueClient.from_connection_string(connection_string, f"{prefix}-{uuid.uuid4().hex[:12]}")
    client.create_queue()
    return client


def fill(queue: QueueClient, count: int) -> None:
    """Enqueue `count` terminate messages for fresh jobs, base64-encoded as host.json says (untimed)."""
    prefix = uuid.uuid4().hex[:10]
    texts = [
        base64.b64encode(f'{{"jobId": "e2e-{prefix}-{i:06d}", "reason": "bench"}}'.encode()).decode()
        for i in range(count)
    ]
    with ThreadPoolExecutor(SEND_THREADS) as pool:
        list(pool.map(queue.send_message, texts))


def azurite_ceiling(connection_string: str, count: int) -> float:
    """Messages/s of a bare receive+delete loop on Azurite, one thread, nothing else in between."""
    queue = new_queue(connection_string, "ceiling")
    try:
        fill(queue, count)
        done = 0
        started = time.perf_counter()
        while done < count:
            pages = queue.receive_messages(
                messages_per_page=CEILING_BATCH, max_messages=CEILING_BATCH, visibility_timeout=600
            ).by_page()
            for message in next(pages, []):
                queue.delete_message(message.id, message.pop_receipt)
                done += 1
        return count / (time.perf_counter() - started)
    finally:
        queue.delete_queue()


class _Counter:
    """Counts settled deliveries and wakes the waiter at the goal."""

    def __init__(self, goal: int) -> None:
        self.goal = goal
        self.succeeded = 0
        self.other: list[Invocation] = []
        self.done = threading.Event()
        self._lock = threading.Lock()

    def __call__(self, invocation: Invocation) -> None:
        """on_invocation callback."""
        with self._lock:
            if invocation.outcome is Outcome.SUCCEEDED:
                self.succeeded += 1
            else:
                self.other.append(invocation)
            if self.succeeded + len(self.other) >= self.goal:
                self.done.set()


def host_rate(connection_string: str, concurrency: int, count: int, handler: Handler) -> float:
    """Messages/s of the local host settling `count` pre-filled messages through `handler`."""
    queue = new_queue(connection_string, f"e2e-c{concurrency}")
    try:
        fill(queue, count)
        counter = _Counter(count)
        host = QueueHost.from_connection_string(
            connection_string,
            queue.queue_name,
            host_options(concurrency),
            WorkerThreads(concurrency, handler),
            on_invocation=counter,
            min_polling_seconds=MIN_POLLING_SECONDS,
        )
        started = time.perf_counter()
        host.start()
        finished = counter.done.wait(max(60.0, count / 5))
        seconds = time.perf_counter() - started
        host.stop(timeout=10)
        if not finished or counter.other:
            raise RuntimeError(
                f"host at concurrency {concurrency}: {counter.succeeded}/{count} succeeded in {seconds:.1f}s;"
                f" first failures {counter.other[:3]}"
            )
        return count / seconds
    finally:
        queue.delete_queue()


@dataclass
class Point:
    """One sweep point: the host's rate through terminate_job.main, and the same host with a sleep-only function."""

    concurrency: int
    messages: int
    rate: float
    ideal: float
    null_rate: float | None = None


@dataclass
class Sweep:
    """All points, and Azurite's ceiling measured before each of them."""

    points: list[Point]
    ceilings: list[float]

    @property
    def ceiling(self) -> float:
        """Median of the ceiling runs (the machine is noisy; one run can be off by a third)."""
        return statistics.median(self.ceilings)


def sweep(
    services: Services,
    connection_string: str,
    *,
    per_point_seconds: float,
    ceiling_messages: int,
    minimum: int,
    concurrency: tuple[int, ...] = CONCURRENCY,
    null_from: int = BATCH_SIZE,
) -> Sweep:
    """Each point at emulator latency 20 ms, interleaved with runs of Azurite's ceiling (side by side)."""
    points: list[Point] = []
    ceilings: list[float] = []
    services.set_latency(LATENCY)
    try:
        with function_app(services, connection_string):
            host_rate(connection_string, 4, 8, terminate_job.main)  # warm: runtime wired, token fetched
            for level in concurrency:
                ceilings.append(azurite_ceiling(connection_string, ceiling_messages))
                ideal = level / LATENCY
                count = max(minimum, math.ceil(min(ideal, statistics.median(ceilings)) * per_point_seconds))
                with environment(app_settings(level)):
                    runtime.reset()  # the function sizes its Batch connection pool from these settings
                    rate = host_rate(connection_string, level, count, terminate_job.main)
                point = Point(level, count, rate, ideal)
                if level >= null_from:
                    # The same host with a function that only sleeps the latency: what the host + Azurite allow.
                    point.null_rate = host_rate(connection_string, level, count, null_function)
                points.append(point)
    finally:
        services.set_latency(0.0)
        services.reset()
    return Sweep(points, ceilings)


def figures(result: Sweep) -> list[Figure]:
    """Azurite's ceiling, then one figure per sweep point."""
    ceiling = result.ceiling
    made = [
        Figure(
            "azurite_ceiling",
            ceiling,
            "msg/s",
            "(reference)",
            None,
            f"bare receive({CEILING_BATCH}) + delete loop, one thread; median of runs"
            f" {', '.join(f'{c:.0f}' for c in result.ceilings)}, one before each sweep point",
            {"runs": result.ceilings},
        )
    ]
    for point in result.points:
        reference = min(point.ideal, ceiling)
        share = point.rate / reference
        options = host_options(point.concurrency)
        null = (
            f"; the same host with a {LATENCY * 1000:.0f} ms sleep as the function: {point.null_rate:.0f} msg/s"
            f" (ours = {point.rate / point.null_rate:.0%} of it)"
            if point.null_rate
            else ""
        )
        made.append(
            Figure(
                f"end_to_end_c{point.concurrency}",
                share * 100,
                "%",
                f">= {E2E_TARGET:.0%} of min(ideal, ceiling)",
                share >= E2E_TARGET,
                f"{point.rate:.0f} msg/s vs ideal {point.ideal:.0f} ({point.concurrency} / 20 ms), ceiling"
                f" {ceiling:.0f}; batchSize {options.batch_size}, newBatchThreshold {options.new_batch_threshold},"
                f" worker threads {point.concurrency}, {point.messages} msgs{null}",
                {
                    "concurrency": point.concurrency,
                    "rate": point.rate,
                    "ideal": point.ideal,
                    "ceiling": ceiling,
                    "null_function_rate": point.null_rate,
                    "batch_size": options.batch_size,
                    "new_batch_threshold": options.new_batch_threshold,
                    "messages": point.messages,
                },
            )
        )
    return made
