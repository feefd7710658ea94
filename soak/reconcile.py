"""Accounting for every soak message exactly once: the emulator ledger, the poison queue and the host deliveries."""

from __future__ import annotations

import base64
import binascii
import collections
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from azure.core.exceptions import AzureError
from azure.storage.queue import QueueClient

from local.batch_emulator import BatchEmulator, JobState
from soak.config import (
    POISON_QUEUE_NAME,
)

HOST_MOVED = "(moved by host, no record)"
_TERMINATE_PATH = re.compile(r"/jobs/[A-Za-z0-9_-]{1,64}/terminate", re.ASCII)


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
                delivery = json.loads(line)
                counts[delivery["o"]] += 1
            except (ValueError, KeyError):
                continue
            if delivery.get("t"):
                counts["timed out (functionTimeout)"] += 1
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
