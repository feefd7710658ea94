"""The scheduled sweep: list active jobs, apply the policies, enqueue terminate requests for the ones that match."""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from shared.batch_read import BatchReader, JobInfo
from shared.errors import BatchCallFailed, ConfigurationError, EnqueueFailed
from shared.message import JOB_ID_PATTERN
from shared.producer import TerminateQueue, build_request
from shared.telemetry import Telemetry

log = logging.getLogger("batch_terminator.sweep")

KEEP_METADATA = "batch-terminator-keep"
# Job - List's own maximum; the service may still answer with shorter pages and an odata.nextLink.
LIST_PAGE_SIZE = 1000
LIST_SELECT = "id,creationTime,metadata,state"
MAX_AGE_SETTING = "SWEEP_MAX_AGE_HOURS"
IDLE_SETTING = "SWEEP_IDLE_MINUTES"
PREFIX_SETTING = "SWEEP_JOB_ID_PREFIX"
DRY_RUN_SETTING = "SWEEP_DRY_RUN"
_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off", ""})


@dataclass(frozen=True)
class SweepPolicy:
    """Which active jobs the sweep stops: older than max_age_hours, or idle longer than idle_minutes."""

    max_age_hours: float | None = None
    idle_minutes: float | None = None
    job_id_prefix: str = ""
    dry_run: bool = False

    @property
    def enabled(self) -> bool:
        """A sweep runs only when at least one policy that picks jobs is set (the prefix only narrows)."""
        return self.max_age_hours is not None or self.idle_minutes is not None

    def describe(self) -> str:
        """The policy as one log fragment."""
        age = f"{self.max_age_hours:g}h" if self.max_age_hours is not None else "off"
        idle = f"{self.idle_minutes:g}min" if self.idle_minutes is not None else "off"
        return f"max_age={age} idle={idle} prefix={self.job_id_prefix!r} dry_run={str(self.dry_run).lower()}"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SweepPolicy:
        """Read the SWEEP_* settings; a ConfigurationError names the first bad one."""
        env = os.environ if environ is None else environ
        prefix = env.get(PREFIX_SETTING, "").strip()
        if prefix and not JOB_ID_PATTERN.fullmatch(prefix):
            raise ConfigurationError(PREFIX_SETTING, "may contain only letters, digits, hyphens and underscores")
        raw_dry_run = env.get(DRY_RUN_SETTING, "").strip().lower()
        if raw_dry_run not in _TRUE | _FALSE:
            raise ConfigurationError(DRY_RUN_SETTING, f"must be true or false, got {raw_dry_run!r}")
        return cls(
            max_age_hours=_positive(env, MAX_AGE_SETTING, "hours"),
            idle_minutes=_positive(env, IDLE_SETTING, "minutes"),
            job_id_prefix=prefix,
            dry_run=raw_dry_run in _TRUE,
        )


@dataclass(frozen=True)
class Match:
    """A job the sweep decided to stop, and why."""

    job_id: str
    reason: str


@dataclass
class SweepReport:
    """What one run did; summary() is its one log line."""

    dry_run: bool
    outcome: str = "ok"
    listed: int = 0
    kept: int = 0
    matched: list[Match] = field(default_factory=list)
    enqueued: list[str] = field(default_factory=list)
    duration: float = 0.0

    def summary(self) -> str:
        """The run's summary line."""
        return (
            f"sweep outcome={self.outcome} listed={self.listed} matched={len(self.matched)}"
            f" enqueued={len(self.enqueued)} kept={self.kept} dry_run={str(self.dry_run).lower()}"
            f" duration_ms={self.duration * 1000:.0f}"
        )


class Sweeper:
    """One sweep per run(): list, decide, then enqueue through the producer API (never terminate directly)."""

    def __init__(
        self,
        reader: BatchReader,
        queue: TerminateQueue,
        policy: SweepPolicy,
        *,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        clock: Callable[[], float] = time.monotonic,
        telemetry: Telemetry | None = None,
    ) -> None:
        self._reader = reader
        self._queue = queue
        self._policy = policy
        self._now = now
        self._clock = clock
        self._telemetry = telemetry or Telemetry()

    def run(self) -> SweepReport:
        """Sweep once; Batch and queue failures are logged and end the run (the next schedule tries again)."""
        started = self._clock()
        report = SweepReport(dry_run=self._policy.dry_run)
        try:
            self._decide(report)
        except BatchCallFailed as exc:
            # Decide everything before enqueueing anything: a half-read account stops nothing.
            report.outcome = "batch_error"
            report.matched.clear()
            log.error(
                "sweep stopped: Batch call failed code=%s status=%s request_id=%s message=%r attempts=%d",
                exc.error.code,
                exc.error.http_status,
                exc.error.request_id,
                exc.error.message[:200],
                exc.attempts,
            )
        else:
            self._act(report)
        report.duration = self._clock() - started
        self._telemetry.sweep_finished(report)
        return report

    def _decide(self, report: SweepReport) -> None:
        now = self._now()
        jobs = list(self._reader.list_jobs(state="active", select=LIST_SELECT, page_size=LIST_PAGE_SIZE))
        report.listed = len(jobs)
        for job in jobs:
            match = self._evaluate(job, now, report)
            if match is not None:
                report.matched.append(match)

    def _evaluate(self, job: JobInfo, now: datetime, report: SweepReport) -> Match | None:
        policy = self._policy
        if job.state not in (None, "active") or not JOB_ID_PATTERN.fullmatch(job.id):
            return None
        # Batch job ids are case-insensitive, so the prefix is too.
        if policy.job_id_prefix and not job.id.casefold().startswith(policy.job_id_prefix.casefold()):
            return None
        if _kept(job.metadata):
            report.kept += 1
            return None
        if job.creation_time is None:
            log.warning("sweep skips job=%s: no creationTime in the Job - List answer", job.id)
            return None
        age = (now - job.creation_time).total_seconds()
        if policy.max_age_hours is not None and age > policy.max_age_hours * 3600:
            return Match(job.id, f"sweep: active {age / 3600:.1f} h > {policy.max_age_hours:g} h")
        if policy.idle_minutes is not None and age > policy.idle_minutes * 60:
            try:
                counts = self._reader.task_counts(job.id)
            except BatchCallFailed as exc:
                if exc.error.code != "JobNotFound":
                    raise
                log.info("sweep skips job=%s: deleted since it was listed", job.id)
                return None
            if counts.active + counts.running == 0:
                minutes = math.floor(age / 60)
                return Match(
                    job.id,
                    f"sweep: idle, no active or running tasks, created {minutes} min ago > {policy.idle_minutes:g} min",
                )
        return None

    def _act(self, report: SweepReport) -> None:
        for match in report.matched:
            if self._policy.dry_run:
                log.info("sweep dry run: would terminate job=%s reason=%r", match.job_id, match.reason)
                continue
            try:
                message_id = self._queue.enqueue(build_request(match.job_id, match.reason))
            except EnqueueFailed as exc:
                report.outcome = "enqueue_failed"
                log.error("sweep stopped: %s (enqueued %d of %d)", exc, len(report.enqueued), len(report.matched))
                return
            report.enqueued.append(match.job_id)
            log.info("sweep enqueued job=%s message_id=%s reason=%r", match.job_id, message_id, match.reason)


def _kept(metadata: Mapping[str, str]) -> bool:
    """Whether the job opted out (metadata batch-terminator-keep=true; names and values read leniently)."""
    return any(
        name.strip().casefold() == KEEP_METADATA and value.strip().casefold() == "true"
        for name, value in metadata.items()
    )


def _positive(env: Mapping[str, str], name: str, unit: str) -> float | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError as exc:
        raise ConfigurationError(name, f"must be a number of {unit}, got {raw!r}") from exc
    if not math.isfinite(value) or value <= 0:
        raise ConfigurationError(name, f"must be a positive number of {unit}, got {raw!r}")
    return value
