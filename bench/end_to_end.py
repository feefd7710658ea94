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
import requests
from azure.core.pipeline.transport import RequestsTransport
from azure.functions.queue import QueueMessage
from azure.storage.queue import QueueClient
from requests.adapters import HTTPAdapter
from urllib3 import Retry

from bench import deployment
from bench.calls import function_environment
from bench.harness import Figure, WorkerLikeHandler, summarize_warnings
from bench.services import Services
from bench.worker import RemoteWorker
from local.azurite import Azurite
from local.queue_host import Invocation, QueueHost, Settlement
from shared.config.settings import QueueOptions
from shared.transport.sessions import pin_environment

LATENCY = 0.020
# In flight at once (batchSize + newBatchThreshold): 24 is host.json as deployed; the worker's threads stay as deployed.
CONCURRENCY = (1, 4, 16, 24, 32)
E2E_TARGET = 0.80
SEND_THREADS = 8
CEILING_BATCH = 32
STORAGE_POOL = 64
STORAGE_READ_TIMEOUT = 10
# A batch whose receive answer was lost stays hidden this long (the host's 10 minutes would end the run).
HIDE_SECONDS = 30.0

Handler = Callable[[func.QueueMessage], None]


def host_options(concurrency: int) -> QueueOptions:
    """host.json's queue options with the point's batchSize + newBatchThreshold = concurrency."""
    return deployment.point_queues(concurrency)


def app_settings(concurrency: int, threads: int) -> dict[str, str | None]:
    """The app settings of one point: its queue options (the function reads them too) and the worker's threads."""
    return dict(deployment.environment(concurrency, threads))


def storage_client(connection_string: str, name: str) -> QueueClient:
    """A client that reads and writes stored text, pooled for every host thread, failing fast on a stalled answer."""
    # local/queue_host.py's own clients keep requests' default pool of 10 connections, which churns with 24-32 threads,
    # and wait 60 s on an answer Azurite never sends (seen about once a run at concurrency 32): the .NET host has
    # neither limit, so the bench hands the host clients without them. Nor does it pay requests' scan of
    # os.environ for proxies on every call (a fifth of each receive/delete in the c4 profile): resolved once here.
    session = requests.Session()
    adapter = HTTPAdapter(
        pool_maxsize=STORAGE_POOL, max_retries=Retry(total=False, redirect=False, raise_on_status=False)
    )
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    transport = RequestsTransport(session=session, session_owner=False, read_timeout=STORAGE_READ_TIMEOUT)
    client = QueueClient.from_connection_string(connection_string, name, transport=transport)
    pin_environment(session, client.url)
    return client


def new_queue(connection_string: str, prefix: str) -> QueueClient:
    """A fresh queue whose messages are read and written as stored text."""
    client = storage_client(connection_string, f"{prefix}-{uuid.uuid4().hex[:12]}")
    client.create_queue()
    return client


def encode(text: str, encoding: str) -> str:
    """A message's stored text in host.json's messageEncoding."""
    return base64.b64encode(text.encode()).decode() if encoding == "base64" else text


def fill(queue: QueueClient, count: int) -> None:
    """Enqueue `count` terminate messages for fresh jobs, encoded as host.json says (untimed)."""
    prefix = uuid.uuid4().hex[:10]
    encoding = deployment.deployed_queues().message_encoding
    texts = [encode(f'{{"jobId": "e2e-{prefix}-{i:06d}", "reason": "bench"}}', encoding) for i in range(count)]
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


class Counter:
    """Counts settled deliveries, keeps the slowest, and wakes the waiter at the goal."""

    def __init__(self, goal: int) -> None:
        self.goal = goal
        self.succeeded = 0
        self.slowest = 0.0
        self.first_settled: float | None = None  # perf_counter() when the first delivery settled
        self.other: list[Invocation] = []
        self.done = threading.Event()
        self._lock = threading.Lock()

    def __call__(self, invocation: Invocation) -> None:
        """on_invocation callback."""
        with self._lock:
            if self.first_settled is None:
                self.first_settled = time.perf_counter()
            self.slowest = max(self.slowest, invocation.duration)
            if invocation.outcome is Settlement.SUCCEEDED:
                self.succeeded += 1
            else:
                self.other.append(invocation)
            if self.succeeded + len(self.other) >= self.goal:
                self.done.set()


@dataclass
class HostRun:
    """Messages/s of one host run and its slowest invocation (seconds, waiting for a worker thread included)."""

    rate: float
    slowest: float


def host_rate(connection_string: str, concurrency: int, count: int, handler: Handler) -> HostRun:
    """Messages/s of the local host settling `count` pre-filled messages through `handler`."""
    queue = new_queue(connection_string, f"e2e-c{concurrency}")
    try:
        fill(queue, count)
        counter = Counter(count)
        host = QueueHost(
            storage_client(connection_string, queue.queue_name),
            storage_client(connection_string, f"{queue.queue_name}-poison"),
            host_options(concurrency),
            handler,
            on_invocation=counter,
            hide_seconds=HIDE_SECONDS,
            # The worker's pool as deployed (the handler forwards to the worker process, sized the same).
            threads=deployment.deployed_threads(),
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
        return HostRun(count / seconds, counter.slowest)
    finally:
        queue.delete_queue()


@dataclass
class Point:
    """One sweep point: the host's rate through terminate_job.main, and the same host with a sleep-only function."""

    concurrency: int
    threads: int
    messages: int
    rate: float
    ideal: float
    slowest: float = 0.0
    in_worker: float = 0.0
    warnings: str = ""
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
    log: WorkerLikeHandler,
    *,
    per_point_seconds: float,
    ceiling_messages: int,
    minimum: int,
    concurrency: tuple[int, ...] = CONCURRENCY,
    null_from: int = 16,
) -> Sweep:
    """Each point at emulator latency 20 ms, on a fresh Azurite, right after a run of Azurite's ceiling there."""
    points: list[Point] = []
    ceilings: list[float] = []
    threads = deployment.deployed_threads()
    services.set_latency(LATENCY)
    try:
        for level in concurrency:
            # A fresh in-memory Azurite per point: late in a long sweep it has stalled deletes for a minute.
            with Azurite() as azurite:
                storage = azurite.connection_string
                ceilings.append(azurite_ceiling(storage, ceiling_messages))
                ideal = min(level, threads) / LATENCY
                count = max(minimum, math.ceil(min(ideal, statistics.median(ceilings)) * per_point_seconds))
                # A fresh worker per point, started with that point's app settings (its pool is sized from them).
                settings = app_settings(level, threads)
                with RemoteWorker({**function_environment(services, storage), **settings}) as worker:
                    worker(warm_message())  # runtime wired, token fetched, connection open: untimed
                    log.take_warnings()
                    run = host_rate(storage, level, count, worker)
                warnings = summarize_warnings(worker.warnings + log.take_warnings())
                timed = [end - start for start, end in worker.spans[1:]]  # the first is the warm-up call
                in_worker = statistics.median(timed) if timed else 0.0
                point = Point(level, worker.threads, count, run.rate, ideal, run.slowest, in_worker, warnings)
                if level >= null_from:
                    # The same host with a function that only sleeps the latency: what the host + Azurite allow.
                    sleeper_env = {"BENCH_SLEEP_SECONDS": str(LATENCY), **settings}
                    with RemoteWorker(sleeper_env, mode="sleep") as sleeper:
                        point.null_rate = host_rate(storage, level, count, sleeper).rate
                points.append(point)
    finally:
        services.set_latency(0.0)
        services.reset()
    return Sweep(points, ceilings)


def warm_message() -> func.QueueMessage:
    """A message for a fresh job, to warm a worker before the timing starts."""
    body = f'{{"jobId": "warm-{uuid.uuid4().hex[:16]}", "reason": "bench"}}'.encode()
    return QueueMessage(id=str(uuid.uuid4()), body=body, dequeue_count=1, pop_receipt="bench")


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
        # The host's own ceiling at this point: the same host, Azurite and settings with a function that only sleeps
        # the latency. It binds at low concurrency, where the real listener is serial (receive, invoke, delete, then
        # receive again at batchSize 1 / newBatchThreshold 0: QueueListener.WaitForNewBatchThreshold), so no
        # function could reach c / latency there.
        reference = min(point.ideal, ceiling, point.null_rate or math.inf)
        share = point.rate / reference
        options = host_options(point.concurrency)
        null = (
            f"; the same host with a {LATENCY * 1000:.0f} ms sleep as the function: {point.null_rate:.0f} msg/s"
            f" (ours = {point.rate / point.null_rate:.0%} of it; of min(ideal, Azurite ceiling) alone:"
            f" {point.rate / min(point.ideal, ceiling):.0%})"
            if point.null_rate
            else ""
        )
        made.append(
            Figure(
                f"end_to_end_c{point.concurrency}",
                share * 100,
                "%",
                f">= {E2E_TARGET:.0%} of min(ideal, ceiling, host)",
                share >= E2E_TARGET,
                f"{point.rate:.0f} msg/s vs ideal {point.ideal:.0f} (min({point.concurrency}, {point.threads}"
                f" threads) / 20 ms), ceiling {ceiling:.0f}; {deployment.describe(options, point.threads)},"
                f" {point.messages} msgs; terminate_job.main took"
                f" {point.in_worker * 1000:.1f} ms (median) in the worker, the slowest delivery"
                f" {point.slowest * 1000:.0f} ms{null}{point.warnings}",
                {
                    "concurrency": point.concurrency,
                    "worker_threads": point.threads,
                    "rate": point.rate,
                    "ideal": point.ideal,
                    "ceiling": ceiling,
                    "null_function_rate": point.null_rate,
                    "reference": reference,
                    "batch_size": options.batch_size,
                    "new_batch_threshold": options.new_batch_threshold,
                    "messages": point.messages,
                    "slowest_invocation_seconds": point.slowest,
                    "function_median_seconds": point.in_worker,
                    "warnings": point.warnings,
                },
            )
        )
    return made
