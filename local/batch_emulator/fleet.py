"""Job schedules, pools and compute nodes of the emulated account: their states and transitions — no HTTP, no lock.

The Account (model.py) holds these behind its lock and calls the functions here; each function takes `now` from
the account's clock, so tests drive every transition with a ManualClock and no sleeps.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, TypedDict

# Batch's id rule for pools and job schedules (as for jobs): letters, digits, hyphens and underscores, 1-64.
RESOURCE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
# Node ids Batch generates look like tvm-2167304207_1-20140905t174658z (the spec's examples).
NODE_ID = re.compile(r"[A-Za-z0-9_.-]{1,128}")

# Enable Pool AutoScale: "You cannot call this API for the same Pool more than once every 30 seconds" (the spec's
# description of Pools_EnablePoolAutoScale); the refusal is 503 TooManyEnableAutoScaleRequests (Batch status and
# error codes table; .NET BatchErrorCodeStrings.AutoScaleTooManyRequestsToEnable).
ENABLE_AUTOSCALE_SPACING = timedelta(seconds=30)
# autoScaleEvaluationInterval: "The default value is 15 minutes. The minimum and maximum value are 5 minutes and
# 168 hours respectively" (BatchPool / BatchPoolEnableAutoScaleOptions in the spec).
DEFAULT_EVALUATION_INTERVAL = timedelta(minutes=15)
MIN_EVALUATION_INTERVAL = timedelta(minutes=5)
MAX_EVALUATION_INTERVAL = timedelta(hours=168)
# resizeTimeout: "The default value is 15 minutes. The minimum value is 5 minutes" (BatchPoolResizeOptions).
DEFAULT_RESIZE_TIMEOUT = timedelta(minutes=15)
MIN_RESIZE_TIMEOUT = timedelta(minutes=5)


class ManualClock:
    """A clock tests move by hand: `clock()` is now; `advance(seconds)` moves it on. Thread-safe."""

    def __init__(self, start: datetime | None = None) -> None:
        moment = start if start is not None else datetime.now(UTC)
        self._now = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> datetime:
        """Move the clock on by `seconds` and return the new now."""
        with self._lock:
            self._now += timedelta(seconds=seconds)
            return self._now


class JobScheduleState(StrEnum):
    """BatchJobScheduleState in the spec."""

    ACTIVE = "active"
    COMPLETED = "completed"
    DISABLED = "disabled"
    TERMINATING = "terminating"
    DELETING = "deleting"


class AllocationState(StrEnum):
    """AllocationState in the spec."""

    STEADY = "steady"
    RESIZING = "resizing"
    STOPPING = "stopping"


class NodeState(StrEnum):
    """BatchNodeState in the spec (azure-batch 15.1.0 models/_enums.py has the same sixteen)."""

    IDLE = "idle"
    REBOOTING = "rebooting"
    REIMAGING = "reimaging"
    RUNNING = "running"
    UNUSABLE = "unusable"
    CREATING = "creating"
    STARTING = "starting"
    WAITING_FOR_START_TASK = "waitingforstarttask"
    START_TASK_FAILED = "starttaskfailed"
    UNKNOWN = "unknown"
    LEAVING_POOL = "leavingpool"
    OFFLINE = "offline"
    PREEMPTED = "preempted"
    UPGRADING_OS = "upgradingos"
    DEALLOCATED = "deallocated"
    DEALLOCATING = "deallocating"


# Pool - Resize body: nodeDeallocationOption values (BatchNodeDeallocationOption in the spec).
DEALLOCATION_OPTIONS = ("requeue", "terminate", "taskcompletion", "retaineddata")


@dataclass
class Schedule:
    """A job schedule. job_count is n of its latest job `{id}:job-{n}`."""

    id: str
    state: JobScheduleState
    etag: str
    last_modified: datetime
    creation_time: datetime
    state_transition_time: datetime
    previous_state: JobScheduleState | None = None
    previous_state_transition_time: datetime | None = None
    recurrence: timedelta | None = None
    pool_id: str | None = None
    auto_pool: dict[str, Any] | None = None
    job_metadata: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    job_release_seconds: float = 0.0
    job_count: int = 0
    recent_job_id: str | None = None
    next_run_time: datetime | None = None
    end_time: datetime | None = None
    completes_at: datetime | None = field(default=None, repr=False)


class ScheduleOptions(TypedDict, total=False):
    """What a new job schedule can be given besides its id."""

    # schedule.recurrenceInterval in seconds; None: one job only (Batch completes such a schedule after it).
    recurrence_seconds: float | None
    # jobSpecification.poolInfo.poolId, or an auto pool (jobSpecification.poolInfo.autoPoolSpecification).
    pool_id: str | None
    auto_pool: Mapping[str, Any] | None
    # jobSpecification.metadata (copied to every job the schedule creates) and the schedule's own metadata.
    job_metadata: Mapping[str, str] | None
    metadata: Mapping[str, str] | None
    # The created jobs' job release hold (see JobOptions.job_release_seconds).
    job_release_seconds: float
    state: JobScheduleState
    creation_time: datetime | None
    # Whether the schedule's first job `{id}:job-1` is created at once (True, Batch's "as soon as possible").
    first_job: bool


@dataclass
class Node:
    """A compute node of a pool."""

    id: str
    state: NodeState
    state_transition_time: datetime
    allocation_time: datetime
    dedicated: bool = True


@dataclass
class Pool:
    """A pool; nodes follow current_dedicated / current_low_priority."""

    id: str
    etag: str
    last_modified: datetime
    creation_time: datetime
    allocation_state: AllocationState = AllocationState.STEADY
    allocation_state_transition_time: datetime | None = None
    vm_size: str = "standard_d2s_v3"
    resize_timeout: timedelta = DEFAULT_RESIZE_TIMEOUT
    target_dedicated: int = 0
    target_low_priority: int = 0
    current_dedicated: int = 0
    current_low_priority: int = 0
    enable_auto_scale: bool = False
    auto_scale_formula: str | None = None
    auto_scale_evaluation_interval: timedelta | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    nodes: list[Node] = field(default_factory=list)
    node_serial: int = 0
    settles_at: datetime | None = field(default=None, repr=False)
    autoscale_enabled_at: datetime | None = field(default=None, repr=False)


class PoolOptions(TypedDict, total=False):
    """What a new pool can be given besides its id."""

    dedicated: int
    low_priority: int
    # An autoscale pool: its formula (and evaluation interval in seconds, default 15 minutes).
    auto_scale_formula: str | None
    auto_scale_evaluation_seconds: float | None
    metadata: Mapping[str, str] | None
    vm_size: str
    creation_time: datetime | None


def snapshot_schedule(schedule: Schedule) -> Schedule:
    """A copy callers can keep."""
    return replace(
        schedule,
        job_metadata=dict(schedule.job_metadata),
        metadata=dict(schedule.metadata),
        auto_pool=dict(schedule.auto_pool) if schedule.auto_pool is not None else None,
    )


def snapshot_pool(pool: Pool) -> Pool:
    """A copy callers can keep (nodes copied too)."""
    return replace(pool, metadata=dict(pool.metadata), nodes=[replace(node) for node in pool.nodes])


def schedule_transition(schedule: Schedule, state: JobScheduleState, when: datetime, etag: str) -> None:
    """Change a schedule's state with Batch's bookkeeping."""
    schedule.previous_state, schedule.previous_state_transition_time = schedule.state, schedule.state_transition_time
    schedule.state, schedule.state_transition_time = state, when
    schedule.etag, schedule.last_modified = etag, when
    if state == JobScheduleState.COMPLETED:
        schedule.end_time = when
        schedule.next_run_time = None


def pool_allocation(pool: Pool, state: AllocationState, when: datetime, etag: str) -> None:
    """Change a pool's allocation state (new ETag and Last-Modified)."""
    pool.allocation_state, pool.allocation_state_transition_time = state, when
    pool.etag, pool.last_modified = etag, when


def reconcile_nodes(pool: Pool, when: datetime) -> None:
    """Add or remove nodes so the pool has current_dedicated dedicated and current_low_priority Spot nodes.

    New nodes arrive idle; the newest go first when the pool shrinks (Batch picks which; the emulator is
    predictable instead).
    """
    for dedicated, wanted in ((True, pool.current_dedicated), (False, pool.current_low_priority)):
        have = [node for node in pool.nodes if node.dedicated is dedicated]
        for node in have[wanted:]:
            pool.nodes.remove(node)
        for _ in range(wanted - len(have)):
            pool.node_serial += 1
            node_id = f"tvm-{_digits(pool.id)}_{pool.node_serial}-{when:%Y%m%dt%H%M%S}z"
            pool.nodes.append(Node(node_id, NodeState.IDLE, when, when, dedicated))


def _digits(text: str) -> str:
    """A stable 10-digit number for a pool id (the tvm-NNNNNNNNNN part of Batch's node ids)."""
    value = 0
    for char in text.lower():
        value = (value * 131 + ord(char)) % 4_294_967_291
    return f"{value:010d}"


def iso_duration(value: timedelta) -> str:
    """A timedelta as the ISO 8601 duration Batch writes (PT15M, PT1H30M, PT45S, P1DT2H)."""
    total = int(value.total_seconds())
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    time = "".join(f"{n}{unit}" for n, unit in ((hours, "H"), (minutes, "M"), (seconds, "S")) if n)
    text = "P" + (f"{days}D" if days else "") + (f"T{time}" if time else "")
    return text if text != "P" else "PT0S"


_DURATION = re.compile(
    r"P(?:(?P<days>\d+(?:\.\d+)?)D)?(?:T(?:(?P<hours>\d+(?:\.\d+)?)H)?(?:(?P<minutes>\d+(?:\.\d+)?)M)?"
    r"(?:(?P<seconds>\d+(?:\.\d+)?)S)?)?"
)


def parse_duration(text: str) -> timedelta | None:
    """An ISO 8601 duration of days/hours/minutes/seconds (what Batch's duration properties take), or None."""
    matched = _DURATION.fullmatch(text.strip())
    if matched is None or text.strip() in ("P", "PT") or text.strip().endswith("T"):
        return None
    parts = {name: float(value) for name, value in matched.groupdict().items() if value is not None}
    return timedelta(**parts)
