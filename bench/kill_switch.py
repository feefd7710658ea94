"""kill_switch_1000: one budget notification selecting 1,000 active jobs, from the POST to the last 202 at Batch."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from bench import deployment
from bench.calls import function_environment
from bench.ceilings import Ceiling, round_trip
from bench.end_to_end import HIDE_SECONDS, Counter, encode, new_queue, storage_client, warm_message
from bench.harness import Figure, WorkerLikeHandler, summarize_warnings
from bench.services import Services
from bench.worker import RemoteWorker
from local.azurite import Azurite
from local.queue_host import QueueHost

LATENCY = 0.020
TARGET = 0.80
PAYLOAD = Path(__file__).resolve().parent.parent / "tests" / "payloads" / "budget-test-action.json"
ALERT_URL = "http://127.0.0.1/api/alert_terminate"


def enqueue_threads() -> int:
    """The threads alert_terminate enqueues with (shared.storage.terminate_queue.ENQUEUE_THREADS)."""
    from shared.storage.terminate_queue import ENQUEUE_THREADS

    return ENQUEUE_THREADS


@dataclass(frozen=True)
class Pipeline:
    """One kill switch: seconds from the POST to its answer, to the first delivery and to the last 202."""

    jobs: int
    answered: float
    first_settled: float
    last_terminated: float
    status: int
    list_pages: int
    warnings: str

    @property
    def rate(self) -> float:
        """Jobs terminated per second, from the POST to the last 202."""
        return self.jobs / self.last_terminated


def ceiling(storage: str, jobs: int, threads: int) -> Ceiling:
    """The same number of messages sent with the alert's threads, then received and deleted as the host does."""
    options = deployment.deployed_queues()
    queue = new_queue(storage, "kill-ceiling")
    try:
        reason = "Budget 'test-budgetName' notification: spent 1111.32 USD, budget 10000 USD, threshold 8000.0"
        texts = [
            encode(json.dumps({"jobId": f"ceiling-{n:05d}", "reason": reason}), options.message_encoding)
            for n in range(jobs)
        ]
        in_flight = options.batch_size + options.new_batch_threshold
        return round_trip(queue, texts, threads, options.batch_size, in_flight)
    finally:
        queue.delete_queue()


def pipeline(services: Services, log: WorkerLikeHandler, storage: str, jobs: int) -> Pipeline:
    """POST the budget notification to alert_terminate in the worker; the local host drains the queue meanwhile."""
    prefix = f"kill-{uuid.uuid4().hex[:8]}"
    trigger = new_queue(storage, "kill")
    options = deployment.deployed_queues()
    env = {
        **function_environment(services, storage),
        "TERMINATE_QUEUE_NAME": trigger.queue_name,
        "ALERT_SELECT_JOB_ID_PREFIX": prefix,
        "ALERT_MAX_JOBS": str(jobs),
        deployment.THREAD_COUNT_SETTING: str(deployment.deployed_threads()),
    }
    try:
        with RemoteWorker(env) as worker:
            worker(warm_message())  # terminate_job wired, token fetched: the app has been running
            services.add_jobs(prefix, jobs)
            before, _ = services.ledger()
            pages_before = services.list_requests()
            log.take_warnings()
            counter = Counter(jobs)
            host = QueueHost(
                storage_client(storage, trigger.queue_name),
                storage_client(storage, f"{trigger.queue_name}-poison"),
                options,
                worker,
                on_invocation=counter,
                hide_seconds=HIDE_SECONDS,
                threads=deployment.deployed_threads(),  # the worker's pool as deployed
            )
            host.start()  # its first poll finds the queue empty; it polls again after 100 ms, backing off to 2 s
            try:
                posted, started = time.time(), time.perf_counter()
                status, body = worker.post(ALERT_URL, PAYLOAD.read_bytes())
                answered = time.perf_counter() - started
                if status != 202:
                    raise RuntimeError(f"alert_terminate answered {status}: {body[:300]!r}")
                finished = counter.done.wait(max(60.0, jobs / 5))
            finally:
                host.stop(timeout=10)
        count, last = services.ledger()
        if not finished or counter.other or count - before != jobs or last is None:
            raise RuntimeError(
                f"kill switch: {count - before}/{jobs} jobs terminated, {counter.succeeded} deliveries succeeded,"
                f" first failures {counter.other[:3]}"
            )
        first = (counter.first_settled or started) - started
        return Pipeline(
            jobs,
            answered,
            first,
            last + LATENCY - posted,  # the ledger notes the terminate; the emulator answers `latency` later
            status,
            services.list_requests() - pages_before,
            summarize_warnings(worker.warnings + log.take_warnings()),
        )
    finally:
        trigger.delete_queue()


def kill_switch(services: Services, log: WorkerLikeHandler, jobs: int) -> Figure:
    """kill_switch_{jobs}: the pipeline's rate in % of the same run's bare send-then-receive ceiling."""
    name = "kill_switch_1000"  # the same name at smoke sizes
    threads = enqueue_threads()
    services.set_latency(LATENCY)
    try:
        with Azurite() as azurite:
            bare = ceiling(azurite.connection_string, jobs, threads)
            run = pipeline(services, log, azurite.connection_string, jobs)
    finally:
        services.set_latency(0.0)
        services.reset()
    share = run.rate / bare.rate
    options = deployment.deployed_queues()
    workers = deployment.deployed_threads()
    return Figure(
        name,
        share * 100,
        "%",
        f">= {TARGET:.0%} of ceiling",
        share >= TARGET,
        f"{jobs} jobs in {run.last_terminated:.2f} s from the POST to the last 202 = {run.rate:.0f} jobs/s; ceiling"
        f" {bare.rate:.0f} msg/s (bare send {bare.send_seconds:.2f} s with {threads} threads, then receive+delete"
        f" {bare.receive_seconds:.2f} s with batchSize {options.batch_size} and"
        f" {options.batch_size + options.new_batch_threshold} threads); alert_terminate answered 202 after"
        f" {run.answered:.2f} s ({run.list_pages} Job - List page(s)), first settled after {run.first_settled:.2f} s;"
        f" emulator latency {LATENCY * 1000:.0f} ms, {deployment.THREAD_COUNT_SETTING} {workers}{run.warnings}",
        {
            "target_share": TARGET,
            "jobs": jobs,
            "seconds": run.last_terminated,
            "rate": run.rate,
            "ceiling_rate": bare.rate,
            "ceiling_send_seconds": bare.send_seconds,
            "ceiling_receive_seconds": bare.receive_seconds,
            "answered_seconds": run.answered,
            "first_settled_seconds": run.first_settled,
            "list_pages": run.list_pages,
            "enqueue_threads": threads,
            "worker_threads": workers,
        },
    )
