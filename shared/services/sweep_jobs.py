"""The scheduled sweep: list each account's active jobs, apply the policies, enqueue terminate requests for matches."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeVar

from shared.batch.job_list import BatchReader, TaskCounts
from shared.batch.jobs import Job
from shared.contract.errors import BatchCallFailed
from shared.rules.accounts import terminate_request
from shared.rules.selection import JobSelector, select_jobs
from shared.rules.sweep_policy import Match, SweepPolicy
from shared.storage.terminate_queue import TerminateQueue
from shared.telemetry import Telemetry

log = logging.getLogger("batch_terminator.sweep")
LIST_SELECT = "id,creationTime,metadata,state"
T = TypeVar("T")


@dataclass
class SweepReport:
    """What one run did; summary() is its one log line."""

    dry_run: bool
    outcome: str = "ok"  # ok, batch_error, budget_exhausted (first not-ok account), too_many_jobs, enqueue_failed
    listed: int = 0
    kept: int = 0
    reads: int = 0  # Get Task Counts calls made
    unread: int = 0  # candidates left unread when the run budget ran out
    stopped_at: str | None = None  # "alias/jobId" of the first unread candidate
    matched: list[Match] = field(default_factory=list)
    enqueued: list[str] = field(default_factory=list)
    accounts: dict[str, str] = field(default_factory=dict)  # alias → that account's outcome
    duration: float = 0.0

    def summary(self) -> str:
        """The run's summary line."""
        stopped = f" stopped_at={self.stopped_at} unread={self.unread}" if self.stopped_at else ""
        accounts = ",".join(f"{alias}:{outcome}" for alias, outcome in self.accounts.items())
        return (
            f"sweep outcome={self.outcome} listed={self.listed} matched={len(self.matched)}"
            f" enqueued={len(self.enqueued)} kept={self.kept} dry_run={str(self.dry_run).lower()}"
            f" reads={self.reads}{stopped} accounts={accounts} duration_ms={self.duration * 1000:.0f}"
        )

    def note(self, outcome: str) -> None:
        """Record an account's outcome; the run's outcome is the first that is not ok."""
        if self.outcome == "ok":
            self.outcome = outcome


class _OutOfTime(Exception):
    """The run budget ran out before every candidate's task counts were read."""

    def __init__(self, decided: list[Match], unread: Sequence[Job]) -> None:
        super().__init__(f"{len(unread)} unread")
        self.decided = decided
        self.unread = unread


class Sweeper:
    """One sweep per run(): per account list, decide (task counts read concurrently), then enqueue."""

    def __init__(
        self,
        readers: Mapping[str, BatchReader],
        queue: TerminateQueue,
        policy: SweepPolicy,
        *,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        clock: Callable[[], float] = time.monotonic,
        telemetry: Telemetry | None = None,
    ) -> None:
        self._readers = dict(readers)
        self._queue = queue
        self._policy = policy
        self._now = now
        self._clock = clock
        self._telemetry = telemetry or Telemetry()

    def run(self) -> SweepReport:
        """Sweep every account once: decide all, check SWEEP_MAX_JOBS over the run, then enqueue; never raises."""
        started = self._clock()
        deadline = started + self._policy.run_budget_seconds
        report = SweepReport(dry_run=self._policy.dry_run)
        decided: list[Match] = []
        for alias, reader in self._readers.items():
            if report.stopped_at is not None:
                report.accounts[alias] = "not_swept"
                log.error("sweep skips account=%s: the run budget is spent", alias)
                continue
            outcome, matches = self._sweep_account(alias, reader, deadline, report)
            report.accounts[alias] = outcome
            report.note(outcome)
            decided.extend(matches)
        if len(decided) > self._policy.max_jobs:
            # The blast radius, as docs/CONTRACT.md §2 sets it: a run that would enqueue more enqueues nothing.
            log.error(
                "sweep refused: %d jobs matched, more than SWEEP_MAX_JOBS=%d; nothing enqueued",
                len(decided),
                self._policy.max_jobs,
            )
            report.outcome = "too_many_jobs"
            report.matched = decided
        else:
            report.matched = decided
            failed = self._act(decided, report)
            if failed is not None:
                report.outcome = failed
        report.duration = self._clock() - started
        self._telemetry.sweep_finished(report)
        return report

    def _sweep_account(
        self, alias: str, reader: BatchReader, deadline: float, report: SweepReport
    ) -> tuple[str, list[Match]]:
        """One account's decisions and outcome; a Batch failure decides nothing there."""
        try:
            return "ok", self._decide(alias, reader, deadline, report)
        except BatchCallFailed as exc:
            # Decide everything before enqueueing anything: a half-read account stops nothing.
            log.error(
                "sweep account=%s stopped: Batch call failed code=%s status=%s request_id=%s message=%r attempts=%d",
                alias,
                exc.error.code,
                exc.error.http_status,
                exc.error.request_id,
                exc.error.message[:200],
                exc.attempts,
            )
            return "batch_error", []
        except _OutOfTime as stop:
            # What was decided stays decided: those jobs stop now, and the next run (where they no longer
            # show as active) reads the rest first.
            report.unread = len(stop.unread)
            report.stopped_at = f"{alias}/{stop.unread[0].id}"
            log.error(
                "sweep account=%s ran out of its %gs budget after %d task-count reads: stopped at job=%s,"
                " %d candidate(s) unread; enqueueing the %d decided",
                alias,
                self._policy.run_budget_seconds,
                report.reads,
                stop.unread[0].id,
                len(stop.unread),
                len(stop.decided),
            )
            return "budget_exhausted", stop.decided

    def _decide(self, alias: str, reader: BatchReader, deadline: float, report: SweepReport) -> list[Match]:
        policy = self._policy
        now = self._now()
        selection = select_jobs(reader, JobSelector(job_id_prefix=policy.job_id_prefix), select=LIST_SELECT)
        report.listed += selection.listed
        report.kept += selection.kept
        decided: dict[str, Match | None] = {}
        candidates: list[Job] = []
        for job in selection.jobs:
            if job.creation_time is None:
                log.warning("sweep skips job=%s: no creationTime in the Job - List answer", job.id)
                continue
            age = (now - job.creation_time).total_seconds()
            if policy.max_age_hours is not None and age > policy.max_age_hours * 3600:
                decided[job.id] = Match(job.id, f"sweep: active {age / 3600:.1f} h > {policy.max_age_hours:g} h", alias)
            elif policy.idle_minutes is not None and age > policy.idle_minutes * 60:
                candidates.append(job)
        read, unread = self._read_counts(reader, candidates, deadline, report)
        for job, counts in read:
            decided[job.id] = self._idle_match(alias, job, counts, now)
        # Listing order, whatever order the reads finished in.
        matches = [m for m in (decided.get(job.id) for job in selection.jobs) if m is not None]
        if unread:
            raise _OutOfTime(matches, unread)
        return matches

    def _idle_match(self, alias: str, job: Job, counts: TaskCounts | None, now: datetime) -> Match | None:
        if counts is None or counts.active + counts.running > 0 or job.creation_time is None:
            return None
        minutes = math.floor((now - job.creation_time).total_seconds() / 60)
        idle = self._policy.idle_minutes
        reason = f"sweep: idle, no active or running tasks, created {minutes} min ago > {idle:g} min"
        return Match(job.id, reason, alias)

    def _read_counts(
        self, reader: BatchReader, candidates: Sequence[Job], deadline: float, report: SweepReport
    ) -> tuple[list[tuple[Job, TaskCounts | None]], Sequence[Job]]:
        """Task counts of the candidates, `concurrency` reads at a time, until no read may start: (read, unread)."""
        results: list[tuple[Job, TaskCounts | None]] = []
        if not candidates:
            return results, ()
        pending: dict[Future[TaskCounts | None], Job] = {}

        def collect(futures: set[Future[TaskCounts | None]]) -> None:
            for future in futures:
                job = pending.pop(future)
                results.append((job, future.result()))  # a BatchCallFailed ends the account's run

        unread: Sequence[Job] = ()
        with ThreadPoolExecutor(min(self._policy.concurrency, len(candidates)), thread_name_prefix="sweep") as pool:
            try:
                for index, job in enumerate(candidates):
                    while len(pending) >= self._policy.concurrency:
                        collect(wait(pending, return_when=FIRST_COMPLETED).done)
                    if self._clock() >= deadline:
                        unread = candidates[index:]
                        break
                    report.reads += 1
                    pending[pool.submit(self._counts, reader, job)] = job
                collect(wait(pending).done)
            finally:
                for future in pending:
                    future.cancel()
        return results, unread

    @staticmethod
    def _counts(reader: BatchReader, job: Job) -> TaskCounts | None:
        try:
            return reader.task_counts(job.id)
        except BatchCallFailed as exc:
            if exc.error.code != "JobNotFound":
                raise
            log.info("sweep skips job=%s: deleted since it was listed", job.id)
            return None

    def _act(self, matches: list[Match], report: SweepReport) -> str | None:
        """Enqueue the matches (or log them in a dry run); "enqueue_failed" when the queue refused one."""
        if self._policy.dry_run:
            for match in matches:
                log.info(
                    "sweep dry run: would terminate job=%s reason=%r account=%s",
                    match.job_id,
                    match.reason,
                    match.account,
                )
            return None

        def sent(index: int, message_id: str) -> None:
            match = matches[index]
            log.info(
                "sweep enqueued job=%s account=%s message_id=%s reason=%r",
                match.job_id,
                match.account,
                message_id,
                match.reason,
            )

        requests = [terminate_request(m.job_id, m.reason, m.account) for m in matches]
        result = self._queue.enqueue_many(requests, on_sent=sent)
        report.enqueued = result.sent([m.job_id for m in matches])
        if result.failure is not None:
            log.error("sweep stopped: %s (enqueued %d of %d)", result.failure, result.count, len(matches))
            return "enqueue_failed"
        return None
