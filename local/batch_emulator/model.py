"""The Batch account's jobs: states, transitions, task counts, the terminate ledger — no HTTP."""

from __future__ import annotations

import json
import math
import re
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, TypedDict, TypeVar, Unpack

from local.batch_emulator.fleet import (
    DEFAULT_EVALUATION_INTERVAL,
    ENABLE_AUTOSCALE_SPACING,
    RESOURCE_ID,
    AllocationState,
    JobScheduleState,
    Node,
    NodeState,
    Pool,
    PoolOptions,
    Schedule,
    ScheduleOptions,
    pool_allocation,
    reconcile_nodes,
    schedule_transition,
    snapshot_pool,
    snapshot_schedule,
)

TASK_COUNT_KEYS = ("active", "running", "completed", "succeeded", "failed")
DEFAULT_TERMINATE_REASON = "UserTerminate"
# Batch's id rule (letters, digits, - and _, 1-64), or the id Batch gives a job it created for a job schedule:
# `{scheduleId}:job-{n}` (the spec's JobSchedule get example: "recentJob": {"id": "jobScheduleId:job-1"}).
JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,64}(?::job-[0-9]{1,10})?")
T = TypeVar("T")


class JobState(StrEnum):
    """Batch job states, in the spec's order (BatchJobState in azure-rest-api-specs specification/batch)."""

    ACTIVE = "active"
    DISABLING = "disabling"
    DISABLED = "disabled"
    ENABLING = "enabling"
    TERMINATING = "terminating"
    COMPLETED = "completed"
    DELETING = "deleting"


# Terminate's 409 answer for each state it refuses; every other state (active, disabling, disabled, enabling)
# moves to terminating. A forced terminate of a terminating job is accepted and ends it.
TERMINATE_CONFLICTS: dict[JobState, str] = {
    JobState.DELETING: "JobBeingDeleted",
    JobState.TERMINATING: "JobBeingTerminated",
    JobState.COMPLETED: "JobCompleted",
}


@dataclass
class Job:
    """A Batch job; terminate_count counts terminate requests that reached it, whatever the answer."""

    id: str
    state: JobState
    etag: str
    last_modified: datetime
    creation_time: datetime
    metadata: dict[str, str] = field(default_factory=dict)
    task_counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TASK_COUNT_KEYS, 0))
    terminate_reason: str | None = None
    terminate_count: int = 0
    state_transition_time: datetime | None = None
    previous_state: JobState | None = None
    previous_state_transition_time: datetime | None = None
    end_time: datetime | None = None
    pool_id: str | None = None
    execution_pool_id: str | None = None
    # How long the job release task keeps a terminated job `terminating` (inf: until a forced terminate).
    job_release_seconds: float = 0.0
    completes_at: datetime | None = field(default=None, repr=False)
    # poolInfo.autoPoolSpecification when the job has an auto pool (pool_id None); None: the emulator's default.
    auto_pool: dict[str, Any] | None = None
    # The compute nodes the job ran on (its preparation/release tasks); None: its execution pool's nodes.
    node_ids: tuple[str, ...] | None = None
    # The job schedule that created the job (`{schedule}:job-{n}`), if any.
    schedule_id: str | None = None
    # When its job release task started (the terminate that began the hold) and ended.
    release_started: datetime | None = None
    release_ended: datetime | None = None


class JobOptions(TypedDict, total=False):
    """What a new job can be given besides its id and state."""

    creation_time: datetime | None
    metadata: Mapping[str, str] | None
    task_counts: Mapping[str, int] | None
    # poolInfo.poolId; executionInfo.poolId defaults to it (an auto-pool job has only executionInfo.poolId).
    pool_id: str | None
    execution_pool_id: str | None
    # How long the job release task keeps a terminated job `terminating` (math.inf: until a forced terminate).
    # A job with a hold has a job preparation and a job release task; one without has neither.
    job_release_seconds: float
    # poolInfo.autoPoolSpecification for an auto-pool job (pool_id None); default: a minimal job-lifetime auto pool.
    auto_pool: Mapping[str, Any] | None
    # The node ids the job ran on (for Job - List Preparation and Release Task Status); default: the nodes of
    # its execution pool, when the account has that pool.
    nodes: Sequence[str] | None


@dataclass(frozen=True)
class RecordedRequest:
    """A request the emulator received; fault names the fault it was given, if any.

    operation is the fault-injection name of what was asked (e.g. job.terminate, pool.resize; "invalid" for an
    unknown path); resource_id the id in its path (job, job schedule or pool id), job_id that id for job routes.
    """

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    job_id: str | None
    fault: str | None = None
    operation: str = ""
    resource_id: str | None = None

    def json(self) -> Any:
        """The body decoded as JSON."""
        return json.loads(self.body)


@dataclass(frozen=True)
class Termination:
    """One ledger entry: a terminate Batch accepted (202): it started terminating a job, or forced one to end."""

    job_id: str
    reason: str
    client_request_id: str | None
    at: float
    force: bool = False


@dataclass(frozen=True)
class Refusal:
    """Why the account refused an operation: Batch's status, code and values."""

    http_status: int
    code: str
    values: tuple[tuple[str, str], ...] = ()


def utc(moment: datetime) -> datetime:
    """Read a naive datetime as UTC and convert aware ones to UTC."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def new_etag() -> str:
    """Make an ETag shaped like Batch's (0x8D followed by hex digits)."""
    return "0x8D" + uuid.uuid4().hex[:13].upper()


def snapshot(job: Job) -> Job:
    """A copy callers can keep without racing the server."""
    return replace(
        job,
        metadata=dict(job.metadata),
        task_counts=dict(job.task_counts),
        auto_pool=dict(job.auto_pool) if job.auto_pool is not None else None,
    )


@dataclass(frozen=True)
class NodeTaskStatus:
    """One node's row of Job - List Preparation and Release Task Status."""

    pool_id: str
    node_id: str
    preparation_start: datetime
    # None: the release task has not run on the node (the job has not been terminated).
    release_state: str | None = None
    release_start: datetime | None = None
    release_end: datetime | None = None


def _now() -> datetime:
    return datetime.now(UTC)


class Account:
    """The jobs of one Batch account behind one lock; every read settles due terminations first."""

    def __init__(self) -> None:
        self.terminate_delay = 0.0
        self.auto_create_jobs = False
        # Every time the account reads: terminate delays, release holds, resizes, recurrences, the 30 s between
        # two Enable Auto Scale requests. Tests give it a ManualClock.
        self.clock: Callable[[], datetime] = _now
        # Seconds a pool resize (or stop resize) takes to reach steady.
        self.resize_seconds = 1.0
        self._lock = threading.Lock()
        self._jobs: dict[str, Job] = {}
        self._terminations: list[Termination] = []
        self._schedules: dict[str, Schedule] = {}
        self._pools: dict[str, Pool] = {}

    def add(self, job_id: str, state: JobState = JobState.ACTIVE, **options: Unpack[JobOptions]) -> Job:
        """Create a job (Last-Modified = creation time) and return a snapshot of it."""
        [job] = self.add_many([job_id], state, **options)
        return job

    def add_many(
        self, job_ids: Iterable[str], state: JobState = JobState.ACTIVE, **options: Unpack[JobOptions]
    ) -> list[Job]:
        """Create jobs alike under one lock (all or none) and return snapshots of them."""
        creation_time = options.get("creation_time")
        task_counts = options.get("task_counts") or {}
        pool_id = options.get("pool_id")
        execution_pool_id = options.get("execution_pool_id", pool_id)
        job_release_seconds = options.get("job_release_seconds", 0.0)
        given_auto_pool = options.get("auto_pool")
        auto_pool = dict(given_auto_pool) if given_auto_pool is not None else None
        given_nodes = options.get("nodes")
        node_ids = tuple(given_nodes) if given_nodes is not None else None
        ids = list(job_ids)
        bad = [job_id for job_id in ids if not JOB_ID.fullmatch(job_id)]
        if bad:
            raise ValueError(f"invalid Batch job id: {bad[0]!r}")
        counts = dict.fromkeys(TASK_COUNT_KEYS, 0)
        unknown = set(task_counts) - set(TASK_COUNT_KEYS)
        if unknown:
            raise ValueError(f"unknown task count keys: {sorted(unknown)}")
        counts.update(task_counts)
        if job_release_seconds < 0:
            raise ValueError("job_release_seconds must not be negative")
        created = utc(creation_time) if creation_time is not None else self.clock()
        keys = [job_id.lower() for job_id in ids]
        with self._lock:
            taken = [job_id for job_id, key in zip(ids, keys, strict=True) if key in self._jobs]
            if taken or len(set(keys)) != len(keys):
                raise ValueError(f"job {(taken or ids)[0]!r} already exists")
            jobs = []
            for job_id in ids:
                job = self._create(job_id, JobState(state), created)
                job.metadata = dict(options.get("metadata") or {})
                job.task_counts = dict(counts)
                job.pool_id = pool_id
                job.execution_pool_id = execution_pool_id
                job.job_release_seconds = job_release_seconds
                job.auto_pool = auto_pool
                job.node_ids = node_ids
                jobs.append(snapshot(job))
            return jobs

    def job(self, job_id: str) -> Job | None:
        """A snapshot of the job (ids are case-insensitive, as in Batch), or None."""
        with self._lock:
            job = self._jobs.get(job_id.lower())
            if job is None:
                return None
            self._settle(job)
            return snapshot(job)

    def jobs(self) -> list[Job]:
        """Snapshots of all jobs in creation order."""
        with self._lock:
            for job in self._jobs.values():
                self._settle(job)
            return [snapshot(job) for job in self._jobs.values()]

    def set_state(self, job_id: str, state: JobState) -> Job:
        """Move a job to `state` as the service would (new ETag, transition times)."""
        with self._lock:
            job = self._jobs[job_id.lower()]
            self._transition(job, JobState(state), self.clock())
            job.completes_at = None
            return snapshot(job)

    def remove(self, job_id: str) -> None:
        """Forget a job (its terminations stay in the ledger); KeyError when there is none."""
        with self._lock:
            del self._jobs[job_id.lower()]

    def task_counts(self, job_id: str) -> dict[str, int] | None:
        """The job's task counts, or None when there is no such job."""
        with self._lock:
            job = self._jobs.get(job_id.lower())
            return dict(job.task_counts) if job is not None else None

    @property
    def terminations(self) -> list[Termination]:
        """The ledger: one entry per accepted (202) terminate, oldest first."""
        with self._lock:
            return list(self._terminations)

    def reset(self) -> None:
        """Forget jobs, job schedules, pools and the ledger."""
        with self._lock:
            self._jobs.clear()
            self._terminations.clear()
            self._schedules.clear()
            self._pools.clear()

    def terminate(
        self,
        job_id: str,
        reason: str,
        *,
        client_request_id: str | None,
        force: bool,
        failed_condition: Callable[[Job], str | None],
    ) -> Job | Refusal:
        """Job - Terminate: the terminating job's snapshot, or why it was refused."""
        with self._lock:
            job = self._jobs.get(job_id.lower())
            if job is None and self.auto_create_jobs:
                job = self._create(job_id, JobState.ACTIVE, self.clock())
            if job is None:
                return Refusal(404, "JobNotFound")
            self._settle(job)
            job.terminate_count += 1
            forcing_end = force and job.state == JobState.TERMINATING
            conflict = None if forcing_end else TERMINATE_CONFLICTS.get(job.state)
            if conflict is not None:
                return Refusal(409, conflict)
            failed = failed_condition(job)
            if failed is not None:
                return Refusal(412, "ConditionNotMet", (("HeaderName", failed),))
            now = self.clock()
            delay = timedelta(seconds=max(self.terminate_delay, 0.0))
            if forcing_end:
                # force: "terminate the Job even if the corresponding nodes have not fully processed the
                # termination" — the job release task is no longer waited for.
                job.completes_at = now + delay
                self._settle(job)
            else:
                self._transition(job, JobState.TERMINATING, now)
                job.terminate_reason = reason
                if job.job_release_seconds:
                    job.release_started = now
                hold = 0.0 if force else job.job_release_seconds
                job.completes_at = None if math.isinf(hold) else now + delay + timedelta(seconds=hold)
            self._terminations.append(
                Termination(
                    job_id=job.id, reason=reason, client_request_id=client_request_id, at=now.timestamp(), force=force
                )
            )
            return snapshot(job)

    def page(self, after: str | None, limit: int, keep: Callable[[Job], bool]) -> tuple[list[Job], str | None] | None:
        """Up to `limit` kept jobs after the key `after`, with the key to continue from (None: no more).

        None when `after` is not a known key. The key is the last job served, so paging survives jobs
        changing state in between.
        """
        with self._lock:
            keys = list(self._jobs)
            start = 0
            if after is not None:
                if after not in self._jobs:
                    return None
                start = keys.index(after) + 1
            page: list[Job] = []
            more = False
            for job in self._iterate(keys[start:]):
                if not keep(job):
                    continue
                if len(page) == limit:
                    more = True
                    break
                page.append(snapshot(job))
            return page, (page[-1].id.lower() if more and page else None)

    # ---- job preparation and release task status

    def preparation_and_release(self, job_id: str) -> list[NodeTaskStatus] | Refusal:
        """Job - List Preparation and Release Task Status: one row per node the job ran on, or why not.

        A job without a preparation/release task: 409 JobPreparationTaskNotSpecified ("If this API is invoked on
        a Job which has no Job Preparation or Job Release Task, the Batch service returns HTTP status code 409
        (Conflict) with an error code of JobPreparationTaskNotSpecified": the operation's description in the spec).
        """
        with self._lock:
            job = self._jobs.get(job_id.lower())
            if job is None:
                return Refusal(404, "JobNotFound")
            self._settle(job)
            if not job.job_release_seconds:
                return Refusal(409, "JobPreparationTaskNotSpecified")
            pool_id = job.execution_pool_id or job.pool_id or ""
            if job.node_ids is not None:
                node_ids = list(job.node_ids)
            else:
                pool = self._pools.get(pool_id.lower())
                node_ids = [node.id for node in pool.nodes] if pool is not None else []
            state = None
            if job.release_started is not None:
                state = "completed" if job.release_ended is not None else "running"
            return [
                NodeTaskStatus(pool_id, node_id, job.creation_time, state, job.release_started, job.release_ended)
                for node_id in node_ids
            ]

    # ---- job schedules

    def add_schedule(self, schedule_id: str, **options: Unpack[ScheduleOptions]) -> Schedule:
        """Create a job schedule (and, unless first_job=False, its first job `{id}:job-1`); return a snapshot."""
        if not RESOURCE_ID.fullmatch(schedule_id):
            raise ValueError(f"invalid Batch job schedule id: {schedule_id!r}")
        recurrence = options.get("recurrence_seconds")
        if recurrence is not None and recurrence <= 0:
            raise ValueError("recurrence_seconds must be positive")
        release = options.get("job_release_seconds", 0.0)
        if release < 0:
            raise ValueError("job_release_seconds must not be negative")
        auto_pool = options.get("auto_pool")
        with self._lock:
            key = schedule_id.lower()
            if key in self._schedules:
                raise ValueError(f"job schedule {schedule_id!r} already exists")
            given = options.get("creation_time")
            created = utc(given) if given is not None else self.clock()
            schedule = Schedule(
                id=schedule_id,
                state=JobScheduleState(options.get("state", JobScheduleState.ACTIVE)),
                etag=new_etag(),
                last_modified=created,
                creation_time=created,
                state_transition_time=created,
                recurrence=timedelta(seconds=recurrence) if recurrence is not None else None,
                pool_id=options.get("pool_id"),
                auto_pool=dict(auto_pool) if auto_pool is not None else None,
                job_metadata=dict(options.get("job_metadata") or {}),
                metadata=dict(options.get("metadata") or {}),
                job_release_seconds=release,
            )
            self._schedules[key] = schedule
            if options.get("first_job", True) and schedule.state == JobScheduleState.ACTIVE:
                self._run_schedule(schedule, created)
            elif schedule.recurrence is not None or options.get("first_job", True):
                schedule.next_run_time = created
            return snapshot_schedule(schedule)

    def schedule(self, schedule_id: str) -> Schedule | None:
        """A snapshot of the job schedule, or None."""
        with self._lock:
            schedule = self._schedules.get(schedule_id.lower())
            if schedule is None:
                return None
            self._settle_schedule(schedule)
            return snapshot_schedule(schedule)

    def schedules(self) -> list[Schedule]:
        """Snapshots of all job schedules in creation order."""
        with self._lock:
            for schedule in self._schedules.values():
                self._settle_schedule(schedule)
            return [snapshot_schedule(schedule) for schedule in self._schedules.values()]

    def set_schedule_state(self, schedule_id: str, state: JobScheduleState) -> Schedule:
        """Move a job schedule to `state` as the service would (KeyError when there is none)."""
        with self._lock:
            schedule = self._schedules[schedule_id.lower()]
            schedule_transition(schedule, JobScheduleState(state), self.clock(), new_etag())
            schedule.completes_at = None
            return snapshot_schedule(schedule)

    def remove_schedule(self, schedule_id: str) -> None:
        """Forget a job schedule (its jobs stay), as Batch does once a Job Schedule - Delete has finished; KeyError
        when there is none."""
        with self._lock:
            del self._schedules[schedule_id.lower()]

    def schedule_page(
        self, after: str | None, limit: int, keep: Callable[[Schedule], bool]
    ) -> tuple[list[Schedule], str | None] | None:
        """Up to `limit` kept job schedules after the key `after` (None when `after` is unknown)."""
        with self._lock:
            for schedule in self._schedules.values():
                self._settle_schedule(schedule)
            paged = _page(self._schedules, after, limit, keep)
            if paged is None:
                return None
            return [snapshot_schedule(item) for item in paged[0]], paged[1]

    def change_schedule(
        self,
        schedule_id: str,
        action: str,
        *,
        force: bool = False,
        failed_condition: Callable[[str, datetime], str | None] = lambda etag, modified: None,
    ) -> Schedule | Refusal:
        """Job Schedule - Disable, Enable or Terminate (action: disable, enable, terminate).

        Refusals use the codes of Batch's error table (learn.microsoft.com "Batch Status and Error Codes"):
        404 JobScheduleNotFound; 409 JobScheduleBeingDeleted, JobScheduleBeingTerminated, JobScheduleCompleted,
        and JobScheduleDisabled for disabling a disabled schedule. Enabling an active schedule changes nothing
        (Batch's documents say nothing about it; the emulator accepts it, as the kill switch's undo may repeat).
        """
        with self._lock:
            schedule = self._schedules.get(schedule_id.lower())
            if schedule is None:
                return Refusal(404, "JobScheduleNotFound")
            self._settle_schedule(schedule)
            state = schedule.state
            forcing_end = action == "terminate" and force and state == JobScheduleState.TERMINATING
            conflict = None if forcing_end else _SCHEDULE_CONFLICTS.get(state)
            if action == "disable" and state == JobScheduleState.DISABLED:
                conflict = "JobScheduleDisabled"
            if conflict is not None:
                return Refusal(409, conflict)
            failed = failed_condition(schedule.etag, schedule.last_modified)
            if failed is not None:
                return Refusal(412, "ConditionNotMet", (("HeaderName", failed),))
            now = self.clock()
            if action == "disable":
                schedule_transition(schedule, JobScheduleState.DISABLED, now, new_etag())
            elif action == "enable":
                if state == JobScheduleState.DISABLED:
                    schedule_transition(schedule, JobScheduleState.ACTIVE, now, new_etag())
            elif forcing_end:
                schedule_transition(schedule, JobScheduleState.COMPLETED, now, new_etag())
                schedule.completes_at = None
            else:
                schedule_transition(schedule, JobScheduleState.TERMINATING, now, new_etag())
                schedule.completes_at = now + timedelta(seconds=max(self.terminate_delay, 0.0))
                self._settle_schedule(schedule)
            return snapshot_schedule(schedule)

    # ---- pools and nodes

    def add_pool(self, pool_id: str, **options: Unpack[PoolOptions]) -> Pool:
        """Create a steady pool with its nodes (options: PoolOptions); return a snapshot."""
        if not RESOURCE_ID.fullmatch(pool_id):
            raise ValueError(f"invalid Batch pool id: {pool_id!r}")
        dedicated, low = options.get("dedicated", 0), options.get("low_priority", 0)
        if dedicated < 0 or low < 0:
            raise ValueError("node counts must not be negative")
        formula = options.get("auto_scale_formula")
        interval = options.get("auto_scale_evaluation_seconds")
        with self._lock:
            key = pool_id.lower()
            if key in self._pools:
                raise ValueError(f"pool {pool_id!r} already exists")
            given = options.get("creation_time")
            created = utc(given) if given is not None else self.clock()
            pool = Pool(
                id=pool_id,
                etag=new_etag(),
                last_modified=created,
                creation_time=created,
                allocation_state_transition_time=created,
                vm_size=options.get("vm_size", "standard_d2s_v3"),
                target_dedicated=dedicated,
                target_low_priority=low,
                current_dedicated=dedicated,
                current_low_priority=low,
                enable_auto_scale=formula is not None,
                auto_scale_formula=formula,
                auto_scale_evaluation_interval=(
                    (timedelta(seconds=interval) if interval is not None else DEFAULT_EVALUATION_INTERVAL)
                    if formula is not None
                    else None
                ),
                metadata=dict(options.get("metadata") or {}),
            )
            reconcile_nodes(pool, created)
            self._pools[key] = pool
            return snapshot_pool(pool)

    def pool(self, pool_id: str) -> Pool | None:
        """A snapshot of the pool (settled to now), or None."""
        with self._lock:
            pool = self._pools.get(pool_id.lower())
            if pool is None:
                return None
            self._settle_pool(pool)
            return snapshot_pool(pool)

    def pools(self) -> list[Pool]:
        """Snapshots of all pools in creation order."""
        with self._lock:
            for pool in self._pools.values():
                self._settle_pool(pool)
            return [snapshot_pool(pool) for pool in self._pools.values()]

    def remove_pool(self, pool_id: str) -> None:
        """Forget a pool and its nodes (jobs that ran on it keep its id), as Batch does once a Pool - Delete has
        finished; KeyError when there is none."""
        with self._lock:
            del self._pools[pool_id.lower()]

    def set_node_states(self, pool_id: str, states: Mapping[str, NodeState] | Sequence[NodeState]) -> list[Node]:
        """Set node states: by node id (a mapping), or for the pool's first nodes in order (a sequence)."""
        with self._lock:
            pool = self._pools[pool_id.lower()]
            self._settle_pool(pool)
            now = self.clock()
            by_id = {node.id.lower(): node for node in pool.nodes}
            if isinstance(states, Mapping):
                pairs = [(by_id[node_id.lower()], state) for node_id, state in states.items()]
            else:
                if len(states) > len(pool.nodes):
                    raise ValueError(f"pool {pool_id!r} has {len(pool.nodes)} nodes, not {len(states)}")
                pairs = list(zip(pool.nodes, states, strict=False))
            for node, state in pairs:
                node.state, node.state_transition_time = NodeState(state), now
            return [replace(node) for node in pool.nodes]

    def node_page(
        self, pool_id: str, after: str | None, limit: int, keep: Callable[[Node], bool]
    ) -> tuple[list[Node], str | None] | Refusal | None:
        """Compute Node - List: up to `limit` kept nodes after `after`; Refusal for an unknown pool."""
        with self._lock:
            pool = self._pools.get(pool_id.lower())
            if pool is None:
                return Refusal(404, "PoolNotFound")
            self._settle_pool(pool)
            paged = _page({node.id.lower(): node for node in pool.nodes}, after, limit, keep)
            if paged is None:
                return None
            return [replace(node) for node in paged[0]], paged[1]

    def change_pool(
        self,
        pool_id: str,
        action: str,
        body: Mapping[str, Any] | None = None,
        failed_condition: Callable[[str, datetime], str | None] = lambda etag, modified: None,
    ) -> Pool | Refusal:
        """Pool - Resize, Stop Resize, Disable Auto Scale, Enable Auto Scale (the body already validated).

        action: resize (body: targetDedicatedNodes, targetLowPriorityNodes, resizeTimeout as timedelta),
        stopresize, disableautoscale, enableautoscale (body: autoScaleFormula, autoScaleEvaluationInterval as
        timedelta).
        """
        body = body or {}
        with self._lock:
            pool = self._pools.get(pool_id.lower())
            if pool is None:
                return Refusal(404, "PoolNotFound")
            self._settle_pool(pool)
            now = self.clock()
            busy = pool.allocation_state != AllocationState.STEADY
            refusal: Refusal | None = None
            if action == "resize" and pool.enable_auto_scale:
                # "You cannot resize Pools which are configured for automatic scaling. If you try to do this, the
                # Batch service returns an error 409" (Pool - Resize in the spec); the code is not documented.
                refusal = Refusal(409, RESIZE_AUTOSCALE_CODE)
            elif action == "resize" and busy:
                # "If the Pool is already resizing, the request fails with status code 409"; PoolBeingResized is
                # the error table's 409 for "The specified pool is being resized".
                refusal = Refusal(409, "PoolBeingResized")
            elif action == "enableautoscale":
                last = pool.autoscale_enabled_at
                if last is not None and now - last < ENABLE_AUTOSCALE_SPACING:
                    refusal = Refusal(503, "TooManyEnableAutoScaleRequests")
                elif busy:
                    # "You cannot enable automatic scaling on a Pool if a resize operation is in progress".
                    refusal = Refusal(409, "PoolBeingResized")
                elif not pool.enable_auto_scale and not body.get("autoScaleFormula"):
                    # "If automatic scaling of the Pool is currently disabled, you must specify a valid autoscale
                    # formula as part of the request."
                    refusal = Refusal(400, "MissingRequiredProperty", (("PropertyName", "autoScaleFormula"),))
            if refusal is not None:
                return refusal
            failed = failed_condition(pool.etag, pool.last_modified)
            if failed is not None:
                return Refusal(412, "ConditionNotMet", (("HeaderName", failed),))
            etag = new_etag()
            if action == "resize":
                pool.target_dedicated = int(body.get("targetDedicatedNodes") or 0)
                pool.target_low_priority = int(body.get("targetLowPriorityNodes") or 0)
                pool.resize_timeout = body.get("resizeTimeout") or pool.resize_timeout
                pool_allocation(pool, AllocationState.RESIZING, now, etag)
                pool.settles_at = now + timedelta(seconds=max(self.resize_seconds, 0.0))
            elif action == "stopresize":
                if busy:
                    pool_allocation(pool, AllocationState.STOPPING, now, etag)
                    pool.settles_at = now + timedelta(seconds=max(self.resize_seconds, 0.0))
            elif action == "disableautoscale":
                if pool.enable_auto_scale:
                    pool.enable_auto_scale = False
                    pool.auto_scale_formula = None
                    pool.auto_scale_evaluation_interval = None
                    pool.etag, pool.last_modified = etag, now
            else:
                pool.enable_auto_scale = True
                pool.auto_scale_formula = body.get("autoScaleFormula") or pool.auto_scale_formula
                interval = body.get("autoScaleEvaluationInterval")
                pool.auto_scale_evaluation_interval = (
                    interval or pool.auto_scale_evaluation_interval or DEFAULT_EVALUATION_INTERVAL
                )
                pool.autoscale_enabled_at = now
                pool.etag, pool.last_modified = etag, now
            self._settle_pool(pool)
            return snapshot_pool(pool)

    # ---- time

    def tick(self) -> list[tuple[Schedule, Job | None]]:
        """Bring the account to now: due resizes, schedule terminations and recurrences.

        Returns one (schedule, job) pair per recurrence that came due: the job it created, or None when the
        schedule is disabled (it creates nothing; its next recurrence is then one interval later).
        """
        with self._lock:
            now = self.clock()
            for pool in self._pools.values():
                self._settle_pool(pool)
            events: list[tuple[Schedule, Job | None]] = []
            for schedule in self._schedules.values():
                self._settle_schedule(schedule)
                due = schedule.next_run_time
                if (
                    due is None
                    and schedule.recurrence is None
                    and schedule.state == JobScheduleState.ACTIVE
                    and schedule.recent_job_id is not None
                    and not self._has_unfinished_job(schedule)
                ):
                    # Without a recurrence a schedule runs one job; Batch completes the schedule after it.
                    schedule_transition(schedule, JobScheduleState.COMPLETED, now, new_etag())
                if due is None or now < due:
                    continue
                if schedule.state == JobScheduleState.ACTIVE:
                    if self._has_unfinished_job(schedule):
                        # A schedule has at most one active job: the next waits for it (Batch skips the
                        # recurrence when it does not finish within startWindow; the emulator has no startWindow).
                        continue
                    job = self._run_schedule(schedule, now)
                    events.append((snapshot_schedule(schedule), job))
                elif schedule.state == JobScheduleState.DISABLED and schedule.recurrence is not None:
                    schedule.next_run_time = now + schedule.recurrence
                    events.append((snapshot_schedule(schedule), None))
            return events

    def settle(self) -> None:
        """Finish every pending transition at once: resizes and stop-resizes reach steady, terminating job
        schedules complete (jobs keep their own terminate_delay and release holds)."""
        with self._lock:
            for pool in self._pools.values():
                if pool.settles_at is not None:
                    pool.settles_at = min(pool.settles_at, self.clock())
                    self._settle_pool(pool)
            for schedule in self._schedules.values():
                if schedule.completes_at is not None:
                    schedule.completes_at = min(schedule.completes_at, self.clock())
                    self._settle_schedule(schedule)

    # ---- helpers (callers hold the lock)

    def _iterate(self, keys: list[str]) -> Iterator[Job]:
        """Settled jobs for these keys."""
        for key in keys:
            job = self._jobs[key]
            self._settle(job)
            yield job

    def _create(self, job_id: str, state: JobState, created: datetime) -> Job:
        """Insert a new job."""
        job = Job(
            id=job_id,
            state=state,
            etag=new_etag(),
            last_modified=created,
            creation_time=created,
            state_transition_time=created,
            end_time=created if state == JobState.COMPLETED else None,
        )
        self._jobs[job_id.lower()] = job
        return job

    @staticmethod
    def _transition(job: Job, state: JobState, when: datetime) -> None:
        """Change state with Batch's bookkeeping (previous state, new ETag and Last-Modified)."""
        job.previous_state, job.previous_state_transition_time = job.state, job.state_transition_time
        job.state, job.state_transition_time = state, when
        job.etag, job.last_modified = new_etag(), when
        if state == JobState.COMPLETED:
            job.end_time = when

    def _run_schedule(self, schedule: Schedule, now: datetime) -> Job:
        """Create the schedule's next job `{id}:job-{n}` from its job specification."""
        while True:
            schedule.job_count += 1
            job_id = f"{schedule.id}:job-{schedule.job_count}"
            if job_id.lower() not in self._jobs:
                break
        job = self._create(job_id, JobState.ACTIVE, now)
        job.metadata = dict(schedule.job_metadata)
        job.pool_id = schedule.pool_id
        job.execution_pool_id = schedule.pool_id
        job.auto_pool = dict(schedule.auto_pool) if schedule.auto_pool is not None else None
        job.job_release_seconds = schedule.job_release_seconds
        job.schedule_id = schedule.id
        schedule.recent_job_id = job_id
        schedule.next_run_time = now + schedule.recurrence if schedule.recurrence is not None else None
        return snapshot(job)

    def _has_unfinished_job(self, schedule: Schedule) -> bool:
        """Whether the schedule's latest job still exists and has not completed."""
        if schedule.recent_job_id is None:
            return False
        job = self._jobs.get(schedule.recent_job_id.lower())
        if job is None:
            return False
        self._settle(job)
        return job.state not in (JobState.COMPLETED, JobState.DELETING)

    def _settle_schedule(self, schedule: Schedule) -> None:
        """Complete a terminating schedule whose time has come."""
        due = schedule.completes_at
        if schedule.state == JobScheduleState.TERMINATING and due is not None and self.clock() >= due:
            schedule_transition(schedule, JobScheduleState.COMPLETED, due, new_etag())
            schedule.completes_at = None

    def _settle_pool(self, pool: Pool) -> None:
        """Finish a resize (nodes reach the targets) or a stop resize (nodes stay) whose time has come."""
        due = pool.settles_at
        if due is None or self.clock() < due:
            return
        if pool.allocation_state == AllocationState.RESIZING:
            pool.current_dedicated, pool.current_low_priority = pool.target_dedicated, pool.target_low_priority
            reconcile_nodes(pool, due)
        pool_allocation(pool, AllocationState.STEADY, due, new_etag())
        pool.settles_at = None

    def _settle(self, job: Job) -> None:
        """Complete a terminating job whose terminate_delay has passed (lazily, on read)."""
        due = job.completes_at
        if job.state == JobState.TERMINATING and due is not None and self.clock() >= due:
            self._transition(job, JobState.COMPLETED, due)
            job.completes_at = None
            if job.release_started is not None and job.release_ended is None:
                job.release_ended = due


# A schedule operation's 409 for each state that refuses it (disable, enable and terminate alike).
_SCHEDULE_CONFLICTS: dict[JobScheduleState, str] = {
    JobScheduleState.DELETING: "JobScheduleBeingDeleted",
    JobScheduleState.TERMINATING: "JobScheduleBeingTerminated",
    JobScheduleState.COMPLETED: "JobScheduleCompleted",
}
# Pool - Resize of an autoscale pool: 409 (documented) with this code (not documented anywhere the emulator's
# authors could check; OperationInvalidForCurrentState is the error table's general 409 "The specified operation is
# not valid for the current state of the resource").
RESIZE_AUTOSCALE_CODE = "OperationInvalidForCurrentState"


def _page(
    items: Mapping[str, T], after: str | None, limit: int, keep: Callable[[T], bool]
) -> tuple[list[T], str | None] | None:
    """Up to `limit` kept items after the key `after`, with the key to continue from; None for an unknown key."""
    keys = list(items)
    start = 0
    if after is not None:
        if after not in items:
            return None
        start = keys.index(after) + 1
    page: list[T] = []
    last = None
    for key in keys[start:]:
        item = items[key]
        if not keep(item):
            continue
        if len(page) == limit:
            return page, last
        page.append(item)
        last = key
    return page, None
