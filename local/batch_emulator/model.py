"""The Batch account's jobs: states, transitions, task counts, the terminate ledger — no HTTP."""

from __future__ import annotations

import json
import math
import re
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, TypedDict, Unpack

TASK_COUNT_KEYS = ("active", "running", "completed", "succeeded", "failed")
DEFAULT_TERMINATE_REASON = "UserTerminate"
JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


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


class JobOptions(TypedDict, total=False):
    """What a new job can be given besides its id and state."""

    creation_time: datetime | None
    metadata: Mapping[str, str] | None
    task_counts: Mapping[str, int] | None
    # poolInfo.poolId; executionInfo.poolId defaults to it (an auto-pool job has only executionInfo.poolId).
    pool_id: str | None
    execution_pool_id: str | None
    # How long the job release task keeps a terminated job `terminating` (math.inf: until a forced terminate).
    job_release_seconds: float


@dataclass(frozen=True)
class RecordedRequest:
    """A request the emulator received; fault names the fault it was given, if any."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    job_id: str | None
    fault: str | None = None

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
    return replace(job, metadata=dict(job.metadata), task_counts=dict(job.task_counts))


class Account:
    """The jobs of one Batch account behind one lock; every read settles due terminations first."""

    def __init__(self) -> None:
        self.terminate_delay = 0.0
        self.auto_create_jobs = False
        self._lock = threading.Lock()
        self._jobs: dict[str, Job] = {}
        self._terminations: list[Termination] = []

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
        created = utc(creation_time) if creation_time is not None else datetime.now(UTC)
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
            self._transition(job, JobState(state), datetime.now(UTC))
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
        """Forget jobs and the ledger."""
        with self._lock:
            self._jobs.clear()
            self._terminations.clear()

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
                job = self._create(job_id, JobState.ACTIVE, datetime.now(UTC))
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
            now = datetime.now(UTC)
            delay = timedelta(seconds=max(self.terminate_delay, 0.0))
            if forcing_end:
                # force: "terminate the Job even if the corresponding nodes have not fully processed the
                # termination" — the job release task is no longer waited for.
                job.completes_at = now + delay
                self._settle(job)
            else:
                self._transition(job, JobState.TERMINATING, now)
                job.terminate_reason = reason
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

    def _settle(self, job: Job) -> None:
        """Complete a terminating job whose terminate_delay has passed (lazily, on read)."""
        due = job.completes_at
        if job.state == JobState.TERMINATING and due is not None and datetime.now(UTC) >= due:
            self._transition(job, JobState.COMPLETED, due)
            job.completes_at = None
