"""`./dev soak`: N terminate messages through Azurite, the local host and the faulty Batch emulator, then reconcile.

The orchestrator (this process) runs the Batch emulator and the managed-identity endpoint, enqueues one message per
job, and runs the local queue host in a child process (`--worker`) so it can be killed for real. Midway it restarts
Azurite (same port and location) and kills and restarts the host. At the end every message id must be accounted for
exactly once: terminated (the emulator's ledger shows the job completed), already done, or a poison record with a
code. Exit status 1 when any message is lost.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import collections
import json
import logging
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from azure.core.exceptions import AzureError
from azure.storage.queue import QueueClient

from local.azurite import Azurite
from local.batch_emulator import BatchEmulator, JobState
from local.host import Invocation, QueueHost
from local.identity import IdentityEndpoint
from shared import wiring
from shared.batch import RetryPolicy
from shared.producer import TerminateQueue
from shared.settings import PROJECT_ROOT, QueueOptions, Settings

log = logging.getLogger("local.soak")

QUEUE_NAME = "soak-terminate"
POISON_QUEUE_NAME = f"{QUEUE_NAME}-poison"
# Batch fault rates per terminate request (the emulator draws one per request).
FAULT_RATES = {"server_busy": 0.10, "throttle": 0.05, "drop": 0.02, "slow": 0.01}
TOKEN_FAILURE_RATE = 0.01
MISSING_SHARE = 0.03
COMPLETED_SHARE = 0.03
HOST_MOVED = "(moved by host, no record)"
_TERMINATE_PATH = re.compile(r"/jobs/[A-Za-z0-9_-]{1,64}/terminate", re.ASCII)


@dataclass(frozen=True)
class SoakConfig:
    """Knobs of one soak run."""

    messages: int = 10_000
    seed: int = 1
    http_timeout: float = 1.0
    slow_seconds: float = 1.25
    token_lifetime: int = 302
    max_dequeue_count: int = 5
    batch_size: int = 16
    new_batch_threshold: int = 8
    visibility_timeout: float = 1.0
    max_polling_interval: float = 0.5
    hide_seconds: float = 5.0
    azurite_restart_at: float = 0.35
    host_kill_at: float = 0.65
    timeout: float | None = None
    keep: bool = False

    @property
    def deadline_seconds(self) -> float:
        """How long processing may take before the remaining messages count as lost."""
        return self.timeout if self.timeout is not None else 120.0 + self.messages * 0.1

    def policy(self) -> RetryPolicy:
        """A retry policy scaled down so the soak finishes in minutes."""
        # credential_delay stays at MSAL's 5 s failure cache, or token retries would be futile.
        return RetryPolicy(
            max_attempts=4,
            base_delay=0.05,
            max_delay=0.4,
            retry_after_cap=5.0,
            budget_seconds=15.0,
            credential_delay=5.0,
        )

    def queue_options(self) -> QueueOptions:
        """The host's queue options for the soak."""
        return QueueOptions(
            max_dequeue_count=self.max_dequeue_count,
            message_encoding="base64",
            batch_size=self.batch_size,
            new_batch_threshold=self.new_batch_threshold,
            visibility_timeout_seconds=self.visibility_timeout,
            max_polling_interval_seconds=self.max_polling_interval,
        )


@dataclass(frozen=True)
class SentMessage:
    """One enqueued terminate message and what its job looked like at Batch beforehand."""

    job_id: str
    kind: str  # "active", "completed" or "missing"
    message_id: str


@dataclass
class Report:
    """The reconciliation of one run."""

    sent: int = 0
    terminated: int = 0
    already_done: int = 0
    poisoned: collections.Counter[str] = field(default_factory=collections.Counter)
    lost: list[str] = field(default_factory=list)
    batch_duplicates: int = 0
    non_idempotent: list[str] = field(default_factory=list)
    duplicate_poison_records: int = 0
    poisoned_after_terminating: int = 0
    unexpected: collections.Counter[str] = field(default_factory=collections.Counter)
    faults: collections.Counter[str] = field(default_factory=collections.Counter)
    token_requests: int = 0
    token_failures: int = 0
    deliveries: collections.Counter[str] = field(default_factory=collections.Counter)
    events: list[str] = field(default_factory=list)
    enqueue_seconds: float = 0.0
    processing_seconds: float = 0.0
    wall_seconds: float = 0.0

    @property
    def accounted(self) -> int:
        """Messages that ended in exactly one of the three outcomes."""
        return self.terminated + self.already_done + sum(self.poisoned.values())

    @property
    def ok(self) -> bool:
        """Nothing lost, nothing counted twice, no terminate applied twice."""
        return not self.lost and not self.non_idempotent and self.accounted == self.sent

    def table(self) -> str:
        """The soak's result table."""
        rows: list[tuple[str, str]] = [
            ("sent", str(self.sent)),
            ("terminated", str(self.terminated)),
            ("already done", str(self.already_done)),
            ("poisoned", str(sum(self.poisoned.values()))),
        ]
        rows += [(f"  {code}", str(count)) for code, count in sorted(self.poisoned.items())]
        rows += [
            ("lost", str(len(self.lost))),
            ("duplicates", f"{self.batch_duplicates} (idempotent 409 repeats at Batch)"),
            ("  non-idempotent", str(len(self.non_idempotent))),
            ("  duplicate poison records", str(self.duplicate_poison_records)),
            ("wall time", f"{self.wall_seconds:.1f} s (processing {self.processing_seconds:.1f} s)"),
        ]
        width = max(len(name) for name, _ in rows) + 2
        lines = [f"{name.ljust(width)}{value}" for name, value in rows]
        return "\n".join(lines)

    def details(self) -> str:
        """Faults injected, host deliveries, events and anything unexpected."""
        faults = ", ".join(f"{name} {count}" for name, count in sorted(self.faults.items())) or "none"
        deliveries = ", ".join(f"{name} {count}" for name, count in sorted(self.deliveries.items())) or "none"
        lines = [
            f"faults at Batch: {faults}",
            f"token endpoint: {self.token_requests} requests, {self.token_failures} failed (injected)",
            f"host deliveries: {deliveries}",
            f"enqueue: {self.enqueue_seconds:.1f} s",
        ]
        lines += [f"event: {event}" for event in self.events]
        if self.poisoned_after_terminating:
            lines.append(
                f"note: {self.poisoned_after_terminating} poison record(s) for jobs whose terminate had been applied"
                " (answer lost, retries exhausted)"
            )
        lines += [f"unexpected: {what} x{count}" for what, count in sorted(self.unexpected.items())]
        lines += [f"LOST: {item}" for item in self.lost[:20]]
        lines += [f"NON-IDEMPOTENT: {item}" for item in self.non_idempotent[:20]]
        return "\n".join(lines)


# --------------------------------------------------------------------------- the host child process


class HostProcess:
    """The local queue host running terminate_job.main in a child process."""

    def __init__(self, config_path: Path, log_dir: Path) -> None:
        """Remember where the worker's configuration and logs go."""
        self._config_path = config_path
        self._log_dir = log_dir
        self._process: subprocess.Popen[bytes] | None = None
        self._generation = 0

    def start(self) -> None:
        """Start a new host process."""
        self._generation += 1
        output = (self._log_dir / f"host-{self._generation}.out").open("wb")
        self._process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "local.soak",
                "--worker",
                str(self._config_path),
                "--generation",
                str(self._generation),
            ],
            cwd=PROJECT_ROOT,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        output.close()

    def kill(self) -> None:
        """SIGKILL the host: no drain, in-flight messages stay hidden until their hide expires."""
        if self._process is not None:
            self._process.kill()
            self._process.wait(10)
            self._process = None

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM the host so it drains, then wait for it."""
        process, self._process = self._process, None
        if process is None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)

    @property
    def alive(self) -> bool:
        """Whether the current host process is running."""
        return self._process is not None and self._process.poll() is None


def run_worker(config_path: Path, generation: int) -> int:
    """Child process: install the function with the soak's settings and pump the trigger queue until SIGTERM."""
    document = json.loads(config_path.read_text(encoding="utf-8"))
    os.environ.update(document["env"])
    log_dir = config_path.parent
    logging.basicConfig(
        level=logging.WARNING,
        filename=log_dir / f"host-{generation}.log",
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    config = SoakConfig(**document["config"])
    options = config.queue_options()
    settings = replace(Settings.from_env(), queues=options)
    wiring.install(wiring.Wiring(settings, http_timeout=config.http_timeout, policy=config.policy()))
    outcomes = (log_dir / f"deliveries-{generation}.jsonl").open("a", encoding="utf-8", buffering=1)
    lock = threading.Lock()

    def record(invocation: Invocation) -> None:
        """Append one delivery outcome (line-buffered, so a SIGKILL loses at most the line being written)."""
        line = json.dumps({"id": invocation.message_id, "n": invocation.dequeue_count, "o": invocation.outcome.value})
        with lock:
            outcomes.write(line + "\n")

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    host = QueueHost.from_connection_string(
        document["env"]["AzureWebJobsStorage"],
        settings.terminate_queue_name,
        options,
        hide_seconds=config.hide_seconds,
        min_polling_seconds=0.05,
        drain_seconds=10.0,
        on_invocation=record,
    )
    host.start()
    while not stop.wait(0.2):
        pass
    host.stop()
    outcomes.close()
    return 0


# --------------------------------------------------------------------------- the orchestrator


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


def plan_jobs(config: SoakConfig) -> list[tuple[str, str]]:
    """(job id, kind) for every message: mostly active jobs, some completed, some that do not exist."""
    rng = random.Random(config.seed)
    jobs: list[tuple[str, str]] = []
    for index in range(config.messages):
        draw = rng.random()
        kind = (
            "missing" if draw < MISSING_SHARE else "completed" if draw < MISSING_SHARE + COMPLETED_SHARE else "active"
        )
        jobs.append((f"soak-{config.seed}-{index:06d}", kind))
    return jobs


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


def read_poison(connection_string: str) -> list[dict[str, Any]]:
    """Every message on the poison queue as JSON: function records and messages the host moved unchanged."""
    queue = QueueClient.from_connection_string(connection_string, POISON_QUEUE_NAME)
    documents: list[dict[str, Any]] = []
    try:
        for message in queue.receive_messages(messages_per_page=32, visibility_timeout=600):
            text = str(message.content or "")
            try:
                documents.append(json.loads(base64.b64decode(text, validate=True)))
            except (binascii.Error, ValueError):
                documents.append({"unreadable": text[:200]})
    except AzureError:
        return documents
    return documents


def read_deliveries(log_dir: Path) -> collections.Counter[str]:
    """How the host settled deliveries, over every host process (a killed one may end mid-line)."""
    counts: collections.Counter[str] = collections.Counter()
    for path in sorted(log_dir.glob("deliveries-*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                counts[json.loads(line)["o"]] += 1
            except (ValueError, KeyError):
                continue
    return counts


def reconcile(
    sent: list[SentMessage], batch: BatchEmulator, poison: list[dict[str, Any]], left: int | None, report: Report
) -> None:
    """Account for every message exactly once from the emulator's ledger and the poison queue."""
    records: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    moved: dict[str, int] = collections.Counter()
    for document in poison:
        if "error" in document and "messageId" in document:
            records[str(document["messageId"])].append(document)
        elif isinstance(document.get("jobId"), str):
            moved[document["jobId"]] += 1
        else:
            report.unexpected["unreadable poison message"] += 1
    ledger: collections.Counter[str] = collections.Counter(t.job_id for t in batch.terminations)
    jobs = {job.id: job for job in batch.jobs()}
    known_ids = {message.message_id for message in sent}
    for message_id in set(records) - known_ids:
        report.unexpected[f"poison record for unknown message {message_id}"] += 1

    report.sent = len(sent)
    for message in sent:
        job = jobs.get(message.job_id)
        applied = ledger[message.job_id]
        if applied > 1:
            report.non_idempotent.append(f"{message.job_id}: terminated {applied} times")
        if message.kind == "completed" and applied:
            report.non_idempotent.append(f"{message.job_id}: completed job terminated again")
        if job is not None:
            report.batch_duplicates += max(job.terminate_count - 1, 0)
        mine = records.get(message.message_id, [])
        for record in mine:
            if record.get("jobId") != message.job_id:
                report.unexpected[f"poison record {message.message_id} names job {record.get('jobId')}"] += 1
        if mine:
            report.duplicate_poison_records += len(mine) - 1
            code = str(mine[0]["error"].get("code") or "(no code)")
            report.poisoned[code] += 1
            if applied:
                report.poisoned_after_terminating += 1
            if (message.kind, code) != ("missing", "JobNotFound"):
                report.unexpected[f"{message.kind} job poisoned with {code}"] += 1
        elif moved.get(message.job_id):
            report.poisoned[HOST_MOVED] += 1
            report.unexpected[f"{message.kind} job moved to poison by the host"] += 1
        elif message.kind == "active" and applied == 1 and job is not None and job.state is JobState.COMPLETED:
            report.terminated += 1
        elif message.kind == "completed" and not applied and job is not None and job.terminate_count >= 1:
            report.already_done += 1
        else:
            state = job.state.value if job is not None else "absent"
            report.lost.append(f"{message.message_id} job={message.job_id} kind={message.kind} state={state}")
    for request in batch.requests:
        if request.method == "POST" and not _TERMINATE_PATH.fullmatch(request.path):
            report.unexpected[f"terminate request to {request.path}"] += 1
    if left:
        report.unexpected[f"{left} message(s) still in the trigger queue"] += 1


def count_faults(batch: BatchEmulator) -> collections.Counter[str]:
    """Faults the emulator played, by kind."""
    names = {"status:503 ServerBusy": "503 ServerBusy", "status:429 TooManyRequests": "429 Retry-After", "drop": "drop"}
    counts: collections.Counter[str] = collections.Counter()
    for request in batch.requests:
        if request.fault:
            counts[names.get(request.fault, "slow" if request.fault.startswith("delay") else request.fault)] += 1
    counts["terminate requests"] = sum(1 for r in batch.requests if r.method == "POST")
    return counts


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
        for job_id, kind in jobs:
            if kind != "missing":
                batch.add_job(job_id, JobState.COMPLETED if kind == "completed" else JobState.ACTIVE)
        connection = azurite.connection_string
        trigger = QueueClient.from_connection_string(connection, QUEUE_NAME)
        trigger.create_queue()
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
        }
        (workdir / "worker.json").write_text(json.dumps({"env": env, "config": asdict(config)}), encoding="utf-8")
        batch.slow_seconds = config.slow_seconds
        batch.set_fault_rates(FAULT_RATES, seed=config.seed)
        chaos.start()
        processing = time.monotonic()
        host.start()
        left = drive(config, trigger, azurite, host, chaos, rng, report)
        report.processing_seconds = time.monotonic() - processing
        host.stop()
        chaos.stop()
        batch.set_fault_rates({})
        reconcile(sent, batch, read_poison(connection), left, report)
        report.faults = count_faults(batch)
        report.token_requests = len(identity.requests)
        report.token_failures = report.token_requests - identity.fetches
        report.deliveries = read_deliveries(workdir)
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
    azurite: Azurite,
    host: HostProcess,
    chaos: TokenChaos,
    rng: random.Random,
    report: Report,
) -> int | None:
    """Wait for the queue to empty, restarting Azurite and killing the host midway; the count left at the end."""
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
        if count == 0 and restarted and killed:
            return 0
        if not host.alive:
            report.events.append("host process exited on its own; restarted")
            host.start()
        if time.monotonic() - last_report > 10:
            last_report = time.monotonic()
            say(f"soak: {count} left")
    report.events.append(f"deadline of {config.deadline_seconds:.0f} s reached with {left} message(s) left")
    return left


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The soak's flags."""
    parser = argparse.ArgumentParser(prog="./dev soak", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=10_000, help="how many messages (default 10000)")
    parser.add_argument("--seed", type=int, default=1, help="seed for job kinds and fault draws (default 1)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds before unfinished messages count as lost")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (Azurite data, host logs)")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--generation", type=int, default=1, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run a soak (or, with --worker, be its host process) and print the table; 1 when anything is lost."""
    args = parse_args(argv)
    if args.worker is not None:
        return run_worker(args.worker, args.generation)
    if args.messages < 1:
        raise SystemExit("--messages must be at least 1")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    config = SoakConfig(messages=args.messages, seed=args.seed, timeout=args.timeout, keep=args.keep)
    report = run(config)
    say("")
    say(report.table())
    say("")
    say(report.details())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
