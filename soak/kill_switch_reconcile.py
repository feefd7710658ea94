"""Accounting for the kill-switch phase: every incident ends once, every job of an executed incident is accounted
for, and every undo puts back what the incident recorded as "before" (docs/CONTRACT.md §10)."""

from __future__ import annotations

import collections
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from local.batch_emulator import BatchEmulator, Fault, JobState
from local.batch_emulator.fleet import Pool as EmulatorPool
from local.batch_emulator.fleet import Schedule as EmulatorSchedule
from local.batch_emulator.fleet import parse_duration
from shared.contract.incident import Command, Incident, PoolBefore, State
from soak.config import KS_KILL_DELAY
from soak.reconcile import AppRecord

TERMINAL = frozenset({State.UNDONE, State.REFUSED, State.CANCELLED, State.FAILED})


@dataclass(frozen=True)
class PoolShape:
    """What an undo must put back: autoscale on/off, its formula and interval, the targets."""

    enable_auto_scale: bool
    formula: str | None
    interval_seconds: float | None
    dedicated: int
    low_priority: int

    @property
    def has_nodes(self) -> bool:
        """Whether the pool was meant to have nodes (a target, or a formula deciding them)."""
        return self.enable_auto_scale or self.dedicated + self.low_priority > 0

    def restored_by(self, now: PoolShape) -> bool:
        """Whether `now` is this shape as far as an undo restores it (autoscale: formula and interval;
        fixed: the targets)."""
        if self.enable_auto_scale:
            return (now.enable_auto_scale, now.formula, now.interval_seconds) == (
                True,
                self.formula,
                self.interval_seconds,
            )
        return (now.enable_auto_scale, now.dedicated, now.low_priority) == (False, self.dedicated, self.low_priority)

    def describe(self) -> str:
        """One short text for a report line."""
        if self.enable_auto_scale:
            targets = f"{self.dedicated}/{self.low_priority}"
            return f"autoscale {self.formula!r} every {self.interval_seconds}s (targets {targets})"
        return f"fixed {self.dedicated}/{self.low_priority}"


def shape_of(pool: EmulatorPool) -> PoolShape:
    """An emulator pool's shape."""
    interval = pool.auto_scale_evaluation_interval
    return PoolShape(
        pool.enable_auto_scale,
        pool.auto_scale_formula,
        interval.total_seconds() if interval is not None else None,
        pool.target_dedicated,
        pool.target_low_priority,
    )


def before_shape(before: PoolBefore) -> PoolShape:
    """A recorded "before" as a shape."""
    interval = parse_duration(before.auto_scale_evaluation_interval) if before.auto_scale_evaluation_interval else None
    return PoolShape(
        before.enable_auto_scale,
        before.auto_scale_formula,
        interval.total_seconds() if interval is not None else None,
        before.target_dedicated_nodes,
        before.target_low_priority_nodes,
    )


@dataclass(frozen=True)
class GroupPlan:
    """One incident's group of jobs, schedules and pools, and what the incident should do with them."""

    n: int
    group: str
    jobs: tuple[str, ...]  # what the incident should select
    untouched_jobs: tuple[str, ...]  # kept or unselected: never terminated
    schedules: tuple[str, ...]  # what it should disable
    pools: Mapping[str, PoolShape]  # every pool of the group, as created
    scaled: frozenset[str]  # the pools it should scale to zero
    skipped: Mapping[str, str]  # pool id -> the reason it should skip it
    kind: str = ""
    account: str = "default"
    expect: State = State.UNDONE
    then: Command | None = None


@dataclass
class PhaseLedger:
    """What the soak did during the phase, and what it saw between acting and undoing."""

    planned: dict[str, GroupPlan] = field(default_factory=dict)  # by incident id
    opened: collections.Counter[str] = field(default_factory=collections.Counter)
    duplicate_deliveries: int = 0
    sent: collections.Counter[str] = field(default_factory=collections.Counter)
    retries: collections.Counter[str] = field(default_factory=collections.Counter)
    undo_resends: collections.Counter[str] = field(default_factory=collections.Counter)
    kills: list[str] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    unexpected: collections.Counter[str] = field(default_factory=collections.Counter)
    after_acting: dict[str, list[EmulatorPool]] = field(default_factory=dict)
    schedules_after_acting: dict[str, list[EmulatorSchedule]] = field(default_factory=dict)
    acted: dict[str, Incident] = field(default_factory=dict)


@dataclass
class IncidentReport:
    """The reconciliation of the kill-switch phase."""

    incidents: int = 0
    opened: collections.Counter[str] = field(default_factory=collections.Counter)
    duplicate_deliveries: int = 0
    ends: collections.Counter[str] = field(default_factory=collections.Counter)
    failed_on_the_way: int = 0
    sent: collections.Counter[str] = field(default_factory=collections.Counter)
    jobs_selected: int = 0
    jobs_terminated: int = 0
    jobs_poisoned: collections.Counter[str] = field(default_factory=collections.Counter)
    messages: int = 0
    messages_without_incident: int = 0
    pools_to_restore: int = 0
    pools_scaled: int = 0
    pools_restored: int = 0
    pools_skipped: collections.Counter[str] = field(default_factory=collections.Counter)
    zero_before: int = 0
    schedules_to_restore: int = 0
    schedules_disabled: int = 0
    schedules_enabled: int = 0
    kills: list[str] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    faults: collections.Counter[str] = field(default_factory=collections.Counter)  # "operation fault" -> count
    problems: list[str] = field(default_factory=list)
    unexpected: collections.Counter[str] = field(default_factory=collections.Counter)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """Every incident ended, every job of an executed one is accounted for, every undo restored."""
        return not self.problems

    def rows(self) -> list[tuple[str, str]]:
        """The phase's rows of the soak's table."""
        opened = ", ".join(f"{count} {source}" for source, count in sorted(self.opened.items()))
        ends = [(f"  {state}", str(self.ends.get(state, 0))) for state in ("undone", "refused", "cancelled", "failed")]
        skipped = ", ".join(f"{reason} {count}" for reason, count in sorted(self.pools_skipped.items())) or "none"
        poisoned = sum(self.jobs_poisoned.values())
        return [
            ("kill switch", f"{self.incidents} incidents ({opened}; {self.duplicate_deliveries} delivered twice)"),
            *ends,
            ("  failed on the way", f"{self.failed_on_the_way} (retried {self.sent.get('retry', 0)})"),
            (
                "  commands",
                f"approve {self.sent.get('approve', 0)}, cancel {self.sent.get('cancel', 0)},"
                f" undo {self.sent.get('undo', 0)}",
            ),
            ("  jobs", f"{self.jobs_selected} selected: {self.jobs_terminated} terminated, {poisoned} poisoned"),
            ("  messages", f"{self.messages} records, {self.messages_without_incident} without the incident"),
            ("  pools scaled", f"{self.pools_scaled} of {self.pools_to_restore} (skipped: {skipped})"),
            ("  pools restored", f"{self.pools_restored}/{self.pools_to_restore}"),
            ("  zero before", str(self.zero_before)),
            ("  schedules", f"{self.schedules_disabled} disabled, {self.schedules_enabled} enabled again"),
            ("  schedules restored", f"{self.schedules_enabled}/{self.schedules_to_restore}"),
            ("  host kills", str(len(self.kills))),
            ("  incident problems", str(len(self.problems))),
            ("  kill switch time", f"{self.seconds:.1f} s"),
        ]

    def details(self) -> list[str]:
        """Kills, events, problems and anything unexpected in the phase."""
        lines = [f"kill switch event: {event}" for event in (*self.kills, *self.events)]
        by_operation: dict[str, list[str]] = collections.defaultdict(list)
        for key, count in sorted(self.faults.items()):
            operation, _, fault = key.partition(" ")
            by_operation[operation].append(f"{fault} {count}")
        lines += [f"kill switch faults: {op}: {', '.join(items)}" for op, items in sorted(by_operation.items())]
        lines += [f"kill switch poisoned job: {code} x{count}" for code, count in sorted(self.jobs_poisoned.items())]
        lines += [f"kill switch unexpected: {what} x{count}" for what, count in sorted(self.unexpected.items())]
        lines += [f"KILL SWITCH PROBLEM: {item}" for item in self.problems[:40]]
        return lines


def reconcile_incidents(
    ledger: PhaseLedger,
    final: Mapping[str, Incident],
    accounts: Mapping[str, BatchEmulator],
    poison: Sequence[dict[str, Any]],
    records: Sequence[AppRecord],
    left: int | None,
) -> IncidentReport:
    """Account for every incident, its jobs, schedules and pools."""
    report = IncidentReport(
        incidents=len(ledger.planned),
        opened=ledger.opened,
        duplicate_deliveries=ledger.duplicate_deliveries,
        sent=ledger.sent,
        kills=list(ledger.kills),
        events=list(ledger.events),
        unexpected=collections.Counter(ledger.unexpected),
    )
    ledgers = {alias: collections.Counter(t.job_id for t in batch.terminations) for alias, batch in accounts.items()}
    poisoned: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for document in poison:
        if isinstance(document.get("jobId"), str) and "error" in document:
            poisoned[document["jobId"]].append(document)
    by_job: dict[str, list[AppRecord]] = collections.defaultdict(list)
    for record in records:
        if record.job_id:
            by_job[record.job_id].append(record)
    for incident_id, plan in ledger.planned.items():
        incident = final.get(incident_id)
        if incident is None:
            report.problems.append(f"{incident_id} ({plan.kind} {plan.group}): not in the incident table")
            continue
        _incident(report, ledger, incident, plan, accounts[plan.account], ledgers[plan.account], poisoned, by_job)
    if left:
        report.problems.append(f"{left} message(s) still queued in the phase's queues")
    for batch in accounts.values():
        for request in batch.requests:
            if request.fault:
                report.faults[f"{request.operation} {_fault_name(request.fault)}"] += 1
    return report


def _fault_name(label: str) -> str:
    """A fault label as the table says it: 503 ServerBusy, drop, lost answer, slow answer, held (kill)."""
    if label.startswith("status:"):
        return label.removeprefix("status:")
    if label == "drop(applied)":
        return "lost-answer"
    if label.startswith("delay:"):
        return "held-for-kill" if label == Fault.delay(KS_KILL_DELAY, apply=True).label else "timeout"
    return label


def _incident(
    report: IncidentReport,
    ledger: PhaseLedger,
    incident: Incident,
    plan: GroupPlan,
    batch: BatchEmulator,
    terminations: collections.Counter[str],
    poisoned: Mapping[str, list[dict[str, Any]]],
    by_job: Mapping[str, list[AppRecord]],
) -> None:
    name = f"{incident.id} ({plan.kind} {plan.group})"
    state = incident.state
    report.ends[state.value] += 1
    history = [change.state for change in incident.history]
    if State.FAILED in history:
        report.failed_on_the_way += 1
    if state not in TERMINAL:
        error = f" error={incident.error.code}" if incident.error is not None else ""
        report.problems.append(f"{name}: ended {state.value}{error}, not in a terminal state")
    if state is not plan.expect:
        report.unexpected[f"a {plan.kind} incident ended {state.value}, not {plan.expect.value}"] += 1
    if state is State.REFUSED and (incident.error is None or incident.error.code != "TooManyJobs"):
        report.unexpected["a refused incident without TooManyJobs"] += 1
    for job_id in plan.untouched_jobs:
        _untouched_job(report, batch, terminations, job_id, f"{name}: kept or unselected job")
    if State.EXECUTED not in history:
        for job_id in plan.jobs:
            _untouched_job(report, batch, terminations, job_id, f"{name}: job of an incident that never acted")
        for pool_id, shape in plan.pools.items():
            pool = batch.pool(pool_id)
            if pool is None or shape_of(pool) != shape:
                report.problems.append(f"{name}: pool {pool_id} changed by an incident that never acted")
        for schedule_id in plan.schedules:
            schedule = batch.schedule(schedule_id)
            if schedule is None or schedule.state != "active":
                report.problems.append(f"{name}: schedule {schedule_id} changed by an incident that never acted")
        return
    _jobs(report, incident, plan, batch, terminations, poisoned, by_job, name)
    _pools(report, ledger, incident, plan, batch, name)
    _schedules(report, ledger, incident, plan, batch, name)


def _untouched_job(
    report: IncidentReport, batch: BatchEmulator, terminations: collections.Counter[str], job_id: str, what: str
) -> None:
    job = batch.job(job_id)
    if terminations[job_id] or job is None or job.state is not JobState.ACTIVE:
        state = job.state.value if job is not None else "absent"
        report.problems.append(f"{what} {job_id} was terminated ({terminations[job_id]} times, {state})")


def _jobs(
    report: IncidentReport,
    incident: Incident,
    plan: GroupPlan,
    batch: BatchEmulator,
    terminations: collections.Counter[str],
    poisoned: Mapping[str, list[dict[str, Any]]],
    by_job: Mapping[str, list[AppRecord]],
    name: str,
) -> None:
    selected = {job.job_id for job in incident.jobs}
    if {j.casefold() for j in selected} != {j.casefold() for j in plan.jobs}:
        missing = sorted(set(plan.jobs) - selected)
        extra = sorted(selected - set(plan.jobs))
        report.unexpected[f"an incident selected other jobs than planned (missing {missing}, extra {extra})"] += 1
    for entry in incident.jobs:
        job_id = entry.job_id
        report.jobs_selected += 1
        if not entry.enqueued:
            report.problems.append(f"{name}: job {job_id} never enqueued")
        applied = terminations[job_id]
        records = poisoned.get(job_id, [])
        for record in records:
            if record.get("incident") != incident.id:
                report.unexpected["a poison record without its incident"] += 1
        for app in by_job.get(job_id, []):
            if app.outcome == "confirmed":
                continue
            report.messages += 1
            if app.incident != incident.id:
                report.messages_without_incident += 1
                report.problems.append(f"{name}: job {job_id}'s record carries incident {app.incident!r}")
        if applied > 1:
            report.problems.append(f"{name}: job {job_id} terminated {applied} times")
        if applied:
            report.jobs_terminated += 1
            job = batch.job(job_id)
            if job is None or job.state is JobState.ACTIVE:
                report.problems.append(f"{name}: job {job_id} terminated but still active")
        elif records:
            report.jobs_poisoned[str(records[0].get("error", {}).get("code"))] += 1
        else:
            job = batch.job(job_id)
            state = job.state.value if job is not None else "absent"
            report.problems.append(f"{name}: job {job_id} lost: no terminate at Batch, no record ({state})")


def _pools(
    report: IncidentReport, ledger: PhaseLedger, incident: Incident, plan: GroupPlan, batch: BatchEmulator, name: str
) -> None:
    after = {pool.id: pool for pool in ledger.after_acting.get(plan.account, [])}
    with_before = set()
    for entry in incident.pools:
        pool_id = entry.pool_id
        initial = plan.pools.get(pool_id)
        current = batch.pool(pool_id)
        if entry.skipped is not None and entry.before is None:
            report.pools_skipped[entry.skipped] += 1
            if plan.skipped.get(pool_id) != entry.skipped:
                report.unexpected[f"a pool skipped as {entry.skipped}, planned {plan.skipped.get(pool_id)}"] += 1
            if initial is not None and (current is None or shape_of(current) != initial):
                report.problems.append(f"{name}: pool {pool_id} skipped ({entry.skipped}) but changed")
            continue
        if entry.before is None:
            report.problems.append(f"{name}: pool {pool_id} to scale has no recorded before (result {entry.result})")
            continue
        with_before.add(pool_id)
        report.pools_to_restore += 1
        before = before_shape(entry.before)
        if initial is None:
            report.unexpected["a scaled pool the soak did not create"] += 1
            continue
        if before != initial:
            report.problems.append(
                f"{name}: pool {pool_id} recorded before {before.describe()}, it was {initial.describe()}"
            )
            if initial.has_nodes and not before.enable_auto_scale and before.dedicated + before.low_priority == 0:
                report.zero_before += 1
        scaled = after.get(pool_id)
        at_zero = scaled is not None and (scaled.target_dedicated, scaled.target_low_priority) == (0, 0)
        if scaled is not None and at_zero and not scaled.enable_auto_scale:
            report.pools_scaled += 1
        else:
            shape = shape_of(scaled).describe() if scaled is not None else "absent"
            report.problems.append(
                f"{name}: pool {pool_id} not scaled to zero once executed ({shape}, result {entry.result})"
            )
        if current is not None and before.restored_by(shape_of(current)) and initial.restored_by(shape_of(current)):
            report.pools_restored += 1
        else:
            shape = shape_of(current).describe() if current is not None else "absent"
            report.problems.append(
                f"{name}: pool {pool_id} not restored: {shape}, recorded before {before.describe()}"
                f" (result {entry.result})"
            )
    if with_before != set(plan.scaled):
        report.unexpected[
            f"an incident scaled other pools than planned (planned {sorted(plan.scaled)}, scaled {sorted(with_before)})"
        ] += 1


def _schedules(
    report: IncidentReport, ledger: PhaseLedger, incident: Incident, plan: GroupPlan, batch: BatchEmulator, name: str
) -> None:
    after = {schedule.id: schedule for schedule in ledger.schedules_after_acting.get(plan.account, [])}
    recorded = {entry.job_schedule_id for entry in incident.schedules}
    if recorded != set(plan.schedules):
        report.unexpected[f"an incident selected other schedules than planned ({sorted(recorded)})"] += 1
    for entry in incident.schedules:
        schedule_id = entry.job_schedule_id
        report.schedules_to_restore += 1
        acted = after.get(schedule_id)
        if acted is not None and acted.state == "disabled":
            report.schedules_disabled += 1
        else:
            report.problems.append(f"{name}: schedule {schedule_id} not disabled once executed")
        current = batch.schedule(schedule_id)
        if current is not None and current.state == "active":
            report.schedules_enabled += 1
        else:
            state = current.state if current is not None else "absent"
            report.problems.append(
                f"{name}: schedule {schedule_id} left {state} after undo (recorded disabled={entry.disabled},"
                f" result {entry.result})"
            )
