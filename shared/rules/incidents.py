"""Incident decisions on data (docs/CONTRACT.md §9, §10): the state machine, selection, and incident ids."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from shared.batch.job_schedules import JobSchedule
from shared.batch.jobs import Job
from shared.batch.pools import Pool
from shared.config import catalog
from shared.contract.errors import BatchError, BatchErrorDetail
from shared.contract.incident import (
    AUTO_POOL,
    POOL_IN_USE,
    POOL_KEPT,
    TOO_MANY_JOBS,
    Approval,
    Command,
    Incident,
    IncidentPool,
    Selectors,
    Source,
    State,
)
from shared.contract.terminate_request import schedule_of
from shared.rules.guards import is_kept
from shared.rules.selection import JobSelector

# Job - List's $select for a plan: what selection and the pools need.
PLAN_JOB_SELECT = "id,state,metadata,executionInfo,poolInfo"
# The hex digits of an id derived from a hash: 80 bits, so two alerts never share an incident by accident.
_ID_DIGITS = 20

# docs/CONTRACT.md §10's command table: the state each command is accepted in.
ACCEPTED_IN: Mapping[Command, State] = {
    Command.PLAN: State.ACCEPTED,
    Command.APPROVE: State.AWAITING_APPROVAL,
    Command.CANCEL: State.AWAITING_APPROVAL,
    Command.RETRY: State.FAILED,
    Command.UNDO: State.EXECUTED,
}
# The moves between states. (project) awaiting_approval → failed: an approve whose Batch calls keep failing ends
# as failed like a plan's, and retry plans again (waiting for approval again).
TRANSITIONS: Mapping[State, frozenset[State]] = {
    State.ACCEPTED: frozenset({State.REFUSED, State.AWAITING_APPROVAL, State.EXECUTED, State.FAILED}),
    State.AWAITING_APPROVAL: frozenset({State.EXECUTED, State.CANCELLED, State.FAILED}),
    State.FAILED: frozenset({State.ACCEPTED}),
    State.EXECUTED: frozenset({State.UNDONE}),
}


class NotAccepted(Exception):
    """A command the incident's state does not accept, or a move the state machine does not allow."""

    def __init__(self, incident: Incident, what: str) -> None:
        super().__init__(f"incident {incident.id} is {incident.state.value}: {what}")
        self.incident = incident


def accepts(state: State, command: Command) -> bool:
    """Whether an incident in `state` takes `command`."""
    return ACCEPTED_IN[command] is state


def commands_in(state: State) -> tuple[Command, ...]:
    """The commands an incident in `state` takes (none: it is final, or waits for none)."""
    return tuple(command for command, needed in ACCEPTED_IN.items() if needed is state)


def require(incident: Incident, command: Command) -> None:
    """Raise NotAccepted unless the incident's state takes the command."""
    if not accepts(incident.state, command):
        raise NotAccepted(incident, f"{command.value} is accepted only when {ACCEPTED_IN[command].value}")


def move(incident: Incident, state: State, at: datetime, **changes: Any) -> Incident:
    """The incident in its next state; NotAccepted when the state machine has no such move."""
    if state not in TRANSITIONS.get(incident.state, frozenset()):
        raise NotAccepted(incident, f"cannot become {state.value}")
    return incident.entering(state, at, **changes)


def approval_of(incident: Incident, default: Approval) -> Approval:
    """The incident's own approval (an operator's --approval), else KILL_SWITCH_APPROVAL."""
    return incident.approval or default


def too_many_jobs(count: int, limit: int) -> BatchError:
    """The refusal of a plan that selected more jobs than ALERT_MAX_JOBS."""
    return BatchError(
        TOO_MANY_JOBS,
        f"the incident selected {count} jobs, more than {catalog.ALERT_MAX_JOBS.name}={limit}; nothing was acted on",
        (BatchErrorDetail("count", str(count)), BatchErrorDetail("limit", str(limit))),
    )


# ---- selection


def job_selector(selectors: Selectors) -> JobSelector:
    """The Job - List selector of an incident's recorded selectors."""
    return JobSelector(job_id_prefix=selectors.prefix, pool_id=selectors.pool, metadata=selectors.metadata)


def selectors_of(selector: JobSelector) -> Selectors:
    """The selectors an incident records for the ALERT_SELECT_* settings in force."""
    return Selectors(prefix=selector.job_id_prefix, pool=selector.pool_id, metadata=selector.metadata)


def schedule_matches(schedule: JobSchedule, selectors: Selectors) -> bool:
    """All set selectors hold for the schedule: prefix on its id, pool on its job specification, the metadata
    pair on its own metadata or its job specification's."""
    if not selectors.configured:
        return False
    pairs = (*schedule.metadata.items(), *schedule.job_metadata.items())
    return job_selector(selectors).holds_for(schedule.id, schedule.pool_id, pairs)


def select_schedules(
    schedules: Iterable[JobSchedule], selectors: Selectors, job_ids: Iterable[str]
) -> list[JobSchedule]:
    """The active, unkept schedules that created a selected job or that the selectors match, in listing order."""
    selected = {job_id.casefold() for job_id in job_ids}
    creators = {owner.casefold() for owner in map(schedule_of, selected) if owner is not None}
    picked: dict[str, JobSchedule] = {}
    for schedule in schedules:
        if schedule.state not in (None, "active") or is_kept(schedule.metadata):
            continue
        key = schedule.id.casefold()
        created = (schedule.recent_job_id or "").casefold() in selected or key in creators
        if created or schedule_matches(schedule, selectors):
            picked.setdefault(key, schedule)
    return list(picked.values())


def job_pools(jobs: Iterable[Job]) -> dict[str, str]:
    """The pools the jobs ran on, casefolded id → id as first written, in order."""
    pools: dict[str, str] = {}
    for job in jobs:
        if job.pool_id:
            pools.setdefault(job.pool_id.casefold(), job.pool_id)
    return pools


def pool_in_use(pool_id: str, active_jobs: Iterable[Job], selected_ids: Iterable[str]) -> bool:
    """Whether an active job that is not selected runs on the pool."""
    selected = {job_id.casefold() for job_id in selected_ids}
    key = pool_id.casefold()
    return any(
        job.state in (None, "active") and job.id.casefold() not in selected and (job.pool_id or "").casefold() == key
        for job in active_jobs
    )


def plan_pools(
    selected: Sequence[Job], active_jobs: Sequence[Job], pools: Mapping[str, Pool | None]
) -> tuple[IncidentPool, ...]:
    """Each pool the selected jobs ran on, to scale or skipped (AutoPool, PoolKept, PoolInUse, in that order).

    `pools` holds each pool's Pool - Get by casefolded id (None: not found; acting records the 404).
    """
    selected_ids = [job.id for job in selected]
    auto = {job.pool_id.casefold() for job in selected if job.auto_pool and job.pool_id}
    planned: list[IncidentPool] = []
    for key, pool_id in job_pools(selected).items():
        pool = pools.get(key)
        skipped: str | None = None
        if key in auto:
            skipped = AUTO_POOL
        elif pool is not None and is_kept(pool.metadata):
            skipped = POOL_KEPT
        elif pool_in_use(pool_id, active_jobs, selected_ids):
            skipped = POOL_IN_USE
        planned.append(IncidentPool(pool.id if pool is not None else pool_id, skipped))
    return tuple(planned)


# ---- ids


def alert_incident_id(alert_id: str, fired: str | None, source: Source = Source.ALERT) -> str:
    """A common-schema alert's incident (a budget's too, in that schema): from data.essentials.alertId and
    firedDateTime, so the same alert delivered twice has one id."""
    return _derived(source, f"{alert_id}\n{fired or ''}".encode())


def body_incident_id(source: Source, body: bytes) -> str:
    """A budget notification's incident (or an alert without alertId): from the body's bytes as received."""
    return _derived(source, body)


def operator_incident_id() -> str:
    """An operator's incident: random (each `kill` is a decision of its own)."""
    return f"{Source.OPERATOR.value}-{uuid.uuid4().hex[:_ID_DIGITS]}"


def _derived(source: Source, material: bytes) -> str:
    digest = hashlib.sha256(source.value.encode() + b"\n" + material).hexdigest()[:_ID_DIGITS]
    return f"{source.value}-{digest}"
