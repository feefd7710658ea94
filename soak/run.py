"""The soak orchestrator: enqueue, process with faults, restart Azurite and kill the host midway, reconcile."""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

from azure.core.exceptions import AzureError
from azure.storage.queue import QueueClient

from local.azurite import Azurite
from local.batch_emulator import BatchEmulator, JobState
from local.identity import IdentityEndpoint
from shared.storage.terminate_queue import TerminateQueue
from soak.config import (
    COMPLETED_SHARE,
    CONFIRM_HOST_POISON_QUEUE_NAME,
    CONFIRM_QUEUE_NAME,
    FAULT_RATES,
    MISSING_SHARE,
    POISON_QUEUE_NAME,
    QUEUE_NAME,
    RELEASING_SHARE,
    STUCK_SHARE,
    TOKEN_FAILURE_RATE,
    SoakConfig,
)
from soak.reconcile import (
    Report,
    SentMessage,
    count_faults,
    read_deliveries,
    read_poison,
    read_records,
    reconcile,
)
from soak.worker import HostProcess

log = logging.getLogger("soak")


class TokenChaos:
    """Makes about TOKEN_FAILURE_RATE of token requests fail, at random times, plus a few forced failures."""

    def __init__(self, identity: IdentityEndpoint, rng: random.Random) -> None:
        """Watch this endpoint."""
        self._identity = identity
        self._rng = rng
        self._stop = threading.Event()
        self._seen = 0
        self._thread = threading.Thread(target=self._loop, name="soak:token-chaos", daemon=True)

    def start(self) -> None:
        """Start watching."""
        self._thread.start()

    def stop(self) -> None:
        """Stop watching."""
        self._stop.set()
        self._thread.join(5)

    def force(self) -> None:
        """Fail the next token request."""
        self._identity.fail_next(1)

    def _loop(self) -> None:
        """For each new token request, queue a failure with probability TOKEN_FAILURE_RATE."""
        while not self._stop.wait(0.1):
            count = len(self._identity.requests)
            for _ in range(count - self._seen):
                if self._rng.random() < TOKEN_FAILURE_RATE:
                    self._identity.fail_next(1)
            self._seen = count


# (kind, share) in draw order; the rest are plain active jobs.
KIND_SHARES = (
    ("missing", MISSING_SHARE),
    ("completed", COMPLETED_SHARE),
    ("stuck", STUCK_SHARE),
    ("releasing", RELEASING_SHARE),
)


def plan_jobs(config: SoakConfig) -> list[tuple[str, str]]:
    """(job id, kind) per message: mostly active, some held by a release task (a while, for good), done, missing."""
    rng = random.Random(config.seed)
    jobs: list[tuple[str, str]] = []
    for index in range(config.messages):
        draw = rng.random()
        kind = "active"
        for candidate, share in KIND_SHARES:
            if draw < share:
                kind = candidate
                break
            draw -= share
        jobs.append((f"soak-{config.seed}-{index:06d}", kind))
    return jobs


def add_jobs(batch: BatchEmulator, config: SoakConfig, jobs: list[tuple[str, str]]) -> None:
    """Create each planned job that exists, with its job release task's hold."""
    holds = {"stuck": math.inf, "releasing": config.release_seconds}
    for job_id, kind in jobs:
        if kind == "missing":
            continue
        state = JobState.COMPLETED if kind == "completed" else JobState.ACTIVE
        batch.add_job(job_id, state, job_release_seconds=holds.get(kind, 0.0))


def enqueue_all(connection_string: str, jobs: list[tuple[str, str]]) -> list[SentMessage]:
    """Enqueue one terminate message per job through the producer API, in parallel."""
    queue = TerminateQueue.connect(QUEUE_NAME, connection_string=connection_string, message_encoding="base64")

    def send(job: tuple[str, str]) -> SentMessage:
        """Enqueue one message."""
        job_id, kind = job
        return SentMessage(job_id, kind, queue.enqueue_terminate(job_id, f"soak {kind}"))

    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(send, jobs))


def remaining(trigger: QueueClient) -> int | None:
    """Messages still in the trigger queue (visible or hidden), or None while storage does not answer."""
    try:
        return int(trigger.get_queue_properties().approximate_message_count or 0)
    except AzureError:
        return None


def say(text: str) -> None:
    """Progress for the person at the terminal."""
    print(text, flush=True)


def run(config: SoakConfig) -> Report:
    """One soak run: set up, enqueue, process with faults and restarts, reconcile."""
    report = Report()
    began = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="batch-terminator-soak-"))
    rng = random.Random(config.seed)
    azurite = Azurite(location=workdir / "azurite")
    identity = IdentityEndpoint(lifetime=config.token_lifetime)
    batch = BatchEmulator(authorize=identity.is_valid, seed=config.seed)
    host = HostProcess(workdir / "worker.json", workdir)
    chaos = TokenChaos(identity, random.Random(config.seed + 1))
    try:
        azurite.start()
        identity.start()
        batch.start()
        jobs = plan_jobs(config)
        add_jobs(batch, config, jobs)
        connection = azurite.connection_string
        trigger = QueueClient.from_connection_string(connection, QUEUE_NAME)
        trigger.create_queue()
        checks = QueueClient.from_connection_string(connection, CONFIRM_QUEUE_NAME)
        checks.create_queue()
        say(f"soak: {config.messages} messages, seed {config.seed}, work dir {workdir}")
        started = time.monotonic()
        sent = enqueue_all(connection, jobs)
        report.enqueue_seconds = time.monotonic() - started
        say(f"soak: enqueued {len(sent)} in {report.enqueue_seconds:.1f} s")

        env = {
            **identity.environ(),
            "BATCH_ACCOUNT_URL": batch.url,
            "TERMINATE_QUEUE_NAME": QUEUE_NAME,
            "POISON_QUEUE_NAME": POISON_QUEUE_NAME,
            "AzureWebJobsStorage": connection,
            "AzureFunctionsJobHost__extensions__queues__maxDequeueCount": str(config.max_dequeue_count),
            "PYTHON_THREADPOOL_THREAD_COUNT": str(config.threads),
            "CONFIRM_QUEUE_NAME": CONFIRM_QUEUE_NAME,
            "CONFIRM_AFTER_SECONDS": str(config.confirm_after_seconds),
            "CONFIRM_MAX_CHECKS": str(config.confirm_max_checks),
            "CONFIRM_FORCE": "false",  # the stuck jobs must stay stuck: they become TerminationStuck records
        }
        (workdir / "worker.json").write_text(json.dumps({"env": env, "config": asdict(config)}), encoding="utf-8")
        batch.slow_seconds = config.slow_seconds
        batch.set_fault_rates(FAULT_RATES, seed=config.seed)
        chaos.start()
        processing = time.monotonic()
        host.start()
        left = drive(config, trigger, checks, azurite, host, chaos, rng, report)
        report.processing_seconds = time.monotonic() - processing
        host.stop()
        chaos.stop()
        batch.set_fault_rates({})
        poison = read_poison(connection) + read_poison(connection, CONFIRM_HOST_POISON_QUEUE_NAME)
        reconcile(sent, batch, poison, left, report, read_records(workdir))
        report.faults = count_faults(batch)
        report.token_requests = len(identity.requests)
        report.token_failures = report.token_requests - identity.fetches
        report.deliveries = read_deliveries(workdir)
        if config.incidents:
            from soak.kill_switch import run_phase

            report.incidents = run_phase(config, workdir, azurite, identity, say)
    finally:
        host.kill()
        batch.stop()
        identity.stop()
        azurite.stop()
        if not config.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    report.wall_seconds = time.monotonic() - began
    return report


def drive(
    config: SoakConfig,
    trigger: QueueClient,
    checks: QueueClient,
    azurite: Azurite,
    host: HostProcess,
    chaos: TokenChaos,
    rng: random.Random,
    report: Report,
) -> int | None:
    """Wait for both queues to empty, restarting Azurite and killing the host midway; the count left at the end."""
    total = config.messages
    deadline = time.monotonic() + config.deadline_seconds
    forced = sorted(rng.uniform(0.1, 0.9) for _ in range(3))
    restarted = killed = False
    last_report = time.monotonic()
    left: int | None = total
    while time.monotonic() < deadline:
        time.sleep(0.2)
        count = remaining(trigger)
        if count is None:
            continue
        left = count
        done = 1 - count / total if total else 1.0
        if forced and done >= forced[0]:
            forced.pop(0)
            chaos.force()
        if not restarted and done >= config.azurite_restart_at:
            restarted = True
            began = time.monotonic()
            azurite.stop()
            azurite.start()
            report.events.append(
                f"Azurite restarted at {done:.0%} processed ({count} left), down {time.monotonic() - began:.1f} s"
            )
            say(f"soak: {report.events[-1]}")
        elif not killed and done >= config.host_kill_at:
            killed = True
            host.kill()
            host.start()
            report.events.append(f"host killed (SIGKILL) and restarted at {done:.0%} processed ({count} left)")
            say(f"soak: {report.events[-1]}")
        pending = remaining(checks) if count == 0 else None
        left = count + (pending or 0)
        if count == 0 and pending == 0 and restarted and killed:
            return 0
        if not host.alive:
            report.events.append("host process exited on its own; restarted")
            host.start()
        if time.monotonic() - last_report > 10:
            last_report = time.monotonic()
            say(f"soak: {count} left" + (f", {pending} check(s) pending" if pending else ""))
    report.events.append(f"deadline of {config.deadline_seconds:.0f} s reached with {left} message(s) left")
    return left
