"""Accounting for every soak message exactly once: the emulator ledger, the poison queue and the host deliveries."""

from __future__ import annotations

import base64
import binascii
import collections
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from azure.core.exceptions import AzureError
from azure.storage.queue import QueueClient

from local.batch_emulator import BatchEmulator, JobState
from soak.config import (
    POISON_QUEUE_NAME,
)

if TYPE_CHECKING:
    from soak.kill_switch_reconcile import IncidentReport

HOST_MOVED = "(moved by host, no record)"
STUCK_CODE = "TerminationStuck"
# Kinds whose job the soak expects to be terminated (and then checked, docs/CONTRACT.md §5b).
TERMINATED_KINDS = frozenset({"active", "releasing", "stuck"})
_TERMINATE_PATH = re.compile(r"/jobs/[A-Za-z0-9_-]{1,64}/terminate", re.ASCII)


@dataclass(frozen=True)
class SentMessage:
    """One enqueued terminate message and what its job looked like at Batch beforehand."""

    job_id: str
    kind: str  # "active", "releasing", "stuck" (release task never ends), "completed" or "missing"
    message_id: str


@dataclass(frozen=True)
class AppRecord:
    """One finished-message record the app logged (docs/CONTRACT.md §8), as the soak's host wrote it down."""

    job_id: str | None
    message_id: str | None
    outcome: str
    code: str | None = None
    terminating_ms: float | None = None
    incident: str | None = None  # the incident a kill-switch message carried (docs/CONTRACT.md §3)

    @property
    def scheduled_a_check(self) -> bool:
        """Whether terminate_job put a check on the confirm queue before finishing (a 202, or 409 being terminated)."""
        return self.outcome == "terminated" or (self.outcome, self.code) == ("already_terminated", "JobBeingTerminated")


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
    # docs/CONTRACT.md §5b, per terminated job: confirmed, stuck (a TerminationStuck record), or never checked
    # because the redelivery of a message whose 202 was lost found the job completed already (409 JobCompleted).
    confirmed: int = 0
    stuck: int = 0
    unchecked: int = 0
    confirm_poisoned: collections.Counter[str] = field(default_factory=collections.Counter)
    terminating_ms: list[float] = field(default_factory=list)
    unexpected: collections.Counter[str] = field(default_factory=collections.Counter)
    faults: collections.Counter[str] = field(default_factory=collections.Counter)
    token_requests: int = 0
    token_failures: int = 0
    deliveries: collections.Counter[str] = field(default_factory=collections.Counter)
    events: list[str] = field(default_factory=list)
    enqueue_seconds: float = 0.0
    processing_seconds: float = 0.0
    wall_seconds: float = 0.0
    # The kill-switch phase (soak/kill_switch.py), when it ran.
    incidents: IncidentReport | None = None

    @property
    def accounted(self) -> int:
        """Messages that ended in exactly one of the three outcomes."""
        return self.terminated + self.already_done + sum(self.poisoned.values())

    @property
    def ok(self) -> bool:
        """Nothing lost, nothing counted twice, no terminate applied twice."""
        phase_ok = self.incidents is None or self.incidents.ok
        return not self.lost and not self.non_idempotent and self.accounted == self.sent and phase_ok

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
            ("confirmed", str(self.confirmed)),
            ("stuck", f"{self.stuck} ({STUCK_CODE} records)"),
            ("unchecked", f"{self.unchecked} (completed before a check was due: 409 JobCompleted)"),
        ]
        rows += [(f"  check poisoned {code}", str(count)) for code, count in sorted(self.confirm_poisoned.items())]
        rows += [
            ("lost", str(len(self.lost))),
            ("duplicates", f"{self.batch_duplicates} (idempotent 409 repeats at Batch)"),
            ("  non-idempotent", str(len(self.non_idempotent))),
            ("  duplicate poison records", str(self.duplicate_poison_records)),
            ("wall time", f"{self.wall_seconds:.1f} s (processing {self.processing_seconds:.1f} s)"),
        ]
        if self.incidents is not None:
            rows += self.incidents.rows()
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
        if self.terminating_ms:
            ordered = sorted(self.terminating_ms)
            lines.append(
                f"terminate request to completion (confirmed, Batch's times): {len(ordered)} jobs,"
                f" median {ordered[len(ordered) // 2]:.0f} ms, max {ordered[-1]:.0f} ms"
            )
        lines += [f"event: {event}" for event in self.events]
        if self.poisoned_after_terminating:
            lines.append(
                f"note: {self.poisoned_after_terminating} poison record(s) for jobs whose terminate had been applied"
                " (answer lost, retries exhausted)"
            )
        lines += [f"unexpected: {what} x{count}" for what, count in sorted(self.unexpected.items())]
        lines += [f"LOST: {item}" for item in self.lost[:20]]
        lines += [f"NON-IDEMPOTENT: {item}" for item in self.non_idempotent[:20]]
        if self.incidents is not None:
            lines += self.incidents.details()
        return "\n".join(lines)


def read_poison(connection_string: str, queue_name: str = POISON_QUEUE_NAME) -> list[dict[str, Any]]:
    """Every message on a poison queue as JSON: function records and messages the host moved unchanged."""
    queue = QueueClient.from_connection_string(connection_string, queue_name)
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


def read_records(log_dir: Path) -> list[AppRecord]:
    """The app's finished-message records over every host process (a killed one may end mid-line)."""
    found: list[AppRecord] = []
    for path in sorted(log_dir.glob("records-*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                item = json.loads(line)
                found.append(AppRecord(item["j"], item["m"], item["o"], item.get("c"), item.get("t"), item.get("i")))
            except (ValueError, KeyError, TypeError):
                continue
    return found


def is_check(document: dict[str, Any]) -> bool:
    """Whether a poison message is about a confirmation check (a record of one, or a check the host moved)."""
    original = document.get("originalMessage") if "error" in document else json.dumps(document)
    try:
        parsed = json.loads(str(original))
    except ValueError:
        return False
    return isinstance(parsed, dict) and "check" in parsed


def reconcile(
    sent: list[SentMessage],
    batch: BatchEmulator,
    poison: list[dict[str, Any]],
    left: int | None,
    report: Report,
    app_records: Sequence[AppRecord] = (),
) -> None:
    """Account for every message, and every terminated job's checks, exactly once (ledger, poison, app records)."""
    records: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    check_records: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)  # by job id
    moved: dict[str, int] = collections.Counter()
    for document in poison:
        if is_check(document) and isinstance(document.get("jobId"), str):
            check_records[document["jobId"]].append(document)
        elif "error" in document and "messageId" in document:
            records[str(document["messageId"])].append(document)
        elif isinstance(document.get("jobId"), str):
            moved[document["jobId"]] += 1
        else:
            report.unexpected["unreadable poison message"] += 1
    confirmed: dict[str, AppRecord] = {r.job_id: r for r in app_records if r.outcome == "confirmed" and r.job_id}
    checked = {r.job_id for r in app_records if r.scheduled_a_check}
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
        elif message.kind in TERMINATED_KINDS and applied == 1 and job is not None and job.state is _ended(message):
            report.terminated += 1
            _account_checks(
                message, confirmed.get(message.job_id), check_records.get(message.job_id, []), checked, report
            )
        elif message.kind == "completed" and not applied and job is not None and job.terminate_count >= 1:
            report.already_done += 1
        else:
            state = job.state.value if job is not None else "absent"
            report.lost.append(f"{message.message_id} job={message.job_id} kind={message.kind} state={state}")
    for request in batch.requests:
        if request.method == "POST" and not _TERMINATE_PATH.fullmatch(request.path):
            report.unexpected[f"terminate request to {request.path}"] += 1
    if left:
        report.unexpected[f"{left} message(s) still queued (terminate requests or checks)"] += 1


def _ended(message: SentMessage) -> JobState:
    """The state a terminated job ends in: a release task that never ends keeps it terminating."""
    return JobState.TERMINATING if message.kind == "stuck" else JobState.COMPLETED


def _account_checks(
    message: SentMessage,
    confirmed: AppRecord | None,
    check_records: list[dict[str, Any]],
    checked: set[str | None],
    report: Report,
) -> None:
    """The one end of a terminated job's checks: confirmed, stuck, a check's own record, or none needed."""
    codes = [str(r.get("error", {}).get("code")) for r in check_records if "error" in r]
    stuck = codes.count(STUCK_CODE)
    if confirmed is not None:
        report.confirmed += 1
        if confirmed.terminating_ms is not None:
            report.terminating_ms.append(confirmed.terminating_ms)
        if message.kind == "stuck":
            report.unexpected["a job whose release task never ends was confirmed"] += 1
        if stuck:
            report.unexpected["a job both confirmed and stuck"] += 1
    elif stuck:
        report.stuck += 1
        if message.kind != "stuck":
            report.unexpected[f"{message.kind} job recorded {STUCK_CODE}"] += 1
    elif check_records:
        code = codes[0] if codes else HOST_MOVED
        report.confirm_poisoned[code] += 1
        report.unexpected[f"a check of a {message.kind} job ended as {code}"] += 1
    elif message.job_id in checked:
        report.lost.append(f"{message.message_id} job={message.job_id} kind={message.kind}: its check never ended")
    elif message.kind == "stuck":
        report.lost.append(f"{message.message_id} job={message.job_id} kind=stuck: terminating but never checked")
    else:
        report.unchecked += 1


def count_faults(batch: BatchEmulator) -> collections.Counter[str]:
    """Faults the emulator played, by kind."""
    names = {"status:503 ServerBusy": "503 ServerBusy", "status:429 TooManyRequests": "429 Retry-After", "drop": "drop"}
    counts: collections.Counter[str] = collections.Counter()
    for request in batch.requests:
        if request.fault:
            counts[names.get(request.fault, "slow" if request.fault.startswith("delay") else request.fault)] += 1
    counts["terminate requests"] = sum(1 for r in batch.requests if r.method == "POST")
    return counts
