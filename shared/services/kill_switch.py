"""The kill switch (docs/CONTRACT.md §10): opening incidents, sending their commands, and running them.

`Incidents` is what opens and commands incidents (alert_terminate, the operator CLI); `KillSwitch` is the
kill_switch function's service, one command message at a time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from shared.batch.job_schedules import JobSchedules
from shared.batch.jobs import Job
from shared.batch.pools import Pool, Pools
from shared.config.kill_switch import KillSwitchSettings
from shared.contract.errors import BatchCallFailed, BatchError, BatchErrorDetail, InvalidMessage, RetryLater
from shared.contract.incident import (
    POOL_IN_USE,
    UNDO_NOTE,
    ActionResult,
    Approval,
    Command,
    Incident,
    IncidentCommand,
    IncidentJob,
    IncidentPool,
    IncidentSchedule,
    State,
)
from shared.contract.terminate_request import DEFAULT_ACCOUNT
from shared.rules.incidents import (
    PLAN_JOB_SELECT,
    NotAccepted,
    accepts,
    approval_of,
    job_pools,
    job_selector,
    move,
    plan_pools,
    pool_in_use,
    require,
    select_schedules,
    too_many_jobs,
)
from shared.rules.selection import LIST_PAGE_SIZE, JobLister, select_jobs
from shared.storage.incidents import IncidentQueue, IncidentStore
from shared.storage.terminate_queue import TerminateQueue, build_request
from shared.telemetry import Telemetry

log = logging.getLogger("batch_terminator.incidents")

# Job - List for the pools' in-use check: every active job with its pool.
ACTIVE_JOBS_FILTER = "state eq 'active'"
ACTIVE_JOB_SELECT = "id,state,executionInfo,poolInfo"
# Pool - Resize when acting (docs/CONTRACT.md §10).
DEALLOCATION = "terminate"
SCHEDULE_DISABLED = "JobScheduleDisabled"


def utc_now() -> datetime:
    """The wall clock, in UTC."""
    return datetime.now(UTC)


class UnknownIncident(LookupError):
    """No incident has this id."""


@dataclass(frozen=True)
class BatchAccount:
    """The Batch operations the kill switch uses in one account."""

    jobs: JobLister
    schedules: JobSchedules
    pools: Pools


@dataclass(frozen=True)
class Handled:
    """What one command message did: `outcome` is changed, ignored, unknown or malformed."""

    outcome: str
    command: IncidentCommand | None
    incident: Incident | None
    detail: str = ""

    def describe(self) -> str:
        """The one log line of the command."""
        name = self.command.command.value if self.command is not None else None
        target = self.command.incident if self.command is not None else None
        state = self.incident.state.value if self.incident is not None else None
        return f"kill_switch command={name} incident={target} outcome={self.outcome} state={state}" + (
            f": {self.detail}" if self.detail else ""
        )


class Incidents:
    """Opens incidents and sends their commands (alert_terminate, the operator CLI); thread-safe."""

    def __init__(
        self,
        store: IncidentStore,
        queue: IncidentQueue,
        telemetry: Telemetry,
        *,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._store = store
        self._queue = queue
        self._telemetry = telemetry
        self._clock = clock

    @property
    def store(self) -> IncidentStore:
        """The incident table."""
        return self._store

    @property
    def queue(self) -> IncidentQueue:
        """The command queue."""
        return self._queue

    def open(self, incident: Incident) -> tuple[Incident, bool]:
        """Store the incident unless its id is taken, then put a `plan` command on the queue.

        Returns (the stored incident, whether it is new). The same alert twice gets the first incident and another
        `plan`, which does nothing unless it is still accepted. IncidentWriteFailed / EnqueueFailed when storage
        does not take it.
        """
        stored, created = self._store.insert(incident)
        if created:
            self._telemetry.incident_changed(stored)
        if stored.state is State.ACCEPTED:
            self._queue.send(stored.id, Command.PLAN)
        return stored, created

    def get(self, incident_id: str) -> Incident | None:
        """The incident, or None."""
        return self._store.get(incident_id)

    def list(self, *, limit: int | None = None) -> list[Incident]:
        """Incidents, newest first."""
        return self._store.list_incidents(limit=limit)

    def send(self, incident_id: str, command: Command) -> Incident:
        """Put a command on the queue after checking the incident takes it in its state.

        UnknownIncident when there is none; NotAccepted (with the incident) when its state does not take it.
        """
        incident = self._store.get(incident_id)
        if incident is None:
            raise UnknownIncident(incident_id)
        require(incident, command)
        self._queue.send(incident.id, command)
        return incident


class _Listing:
    """A job lister that keeps what it listed, so one Job - List can serve two decisions."""

    def __init__(self, lister: JobLister) -> None:
        self._lister = lister
        self.jobs: list[Job] = []

    def list_jobs(self, *, odata_filter: str | None, select: str, page_size: int) -> Iterator[Job]:
        """The lister's jobs, each also kept in `jobs`."""
        for job in self._lister.list_jobs(odata_filter=odata_filter, select=select, page_size=page_size):
            self.jobs.append(job)
            yield job


class KillSwitch:
    """Runs incident commands (the kill_switch function's service); thread-safe, one per process."""

    def __init__(
        self,
        store: IncidentStore,
        accounts: Mapping[str, BatchAccount],
        terminate_queue: TerminateQueue,
        settings: KillSwitchSettings,
        telemetry: Telemetry,
        *,
        dry_run: bool,
        max_dequeue_count: int,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._store = store
        self._accounts = accounts
        self._terminate = terminate_queue
        self._settings = settings
        self._telemetry = telemetry
        self._dry_run = dry_run
        self._max_dequeue_count = max_dequeue_count
        self._clock = clock

    def handle(self, body: bytes | str, message_id: str | None, dequeue_count: int) -> Handled:
        """Run one command message; raise RetryLater / IncidentWriteFailed / EnqueueFailed to have it delivered
        again (docs/CONTRACT.md §1, §10)."""
        attempt = max(dequeue_count, 1)
        try:
            command = IncidentCommand.parse(body)
        except InvalidMessage as exc:
            return Handled("malformed", None, None, str(exc))
        incident = self._store.get(command.incident)
        if incident is None:
            return Handled("unknown", command, None, "no incident has this id")
        if not self._takes(incident, command.command):
            return Handled("ignored", command, incident, f"{command.command.value} is not accepted in this state")
        try:
            if command.command is Command.CANCEL:
                if incident.acting_since is not None:
                    return Handled("ignored", command, incident, "approve is already acting on the plan")
                done = self._save(incident.id, lambda current: self._entering(current, Command.CANCEL, State.CANCELLED))
            elif command.command is Command.UNDO:
                done = self._undo(incident)
            else:
                if command.command is Command.RETRY and incident.state is State.FAILED:
                    incident = self._save(
                        incident.id,
                        lambda current: self._entering(current, Command.RETRY, State.ACCEPTED, error=None),
                    )
                done = self._plan(incident) if incident.state is State.ACCEPTED else self._act(incident)
        except NotAccepted as exc:  # another delivery changed the incident meanwhile
            return Handled("ignored", command, exc.incident, str(exc))
        except BatchCallFailed as exc:
            if exc.transient and attempt < self._max_dequeue_count:
                raise RetryLater(
                    f"kill_switch incident={incident.id} command={command.command.value} outcome=retry_later"
                    f" code={exc.error.code} status={exc.error.http_status} attempt={attempt}/{self._max_dequeue_count}"
                ) from exc
            done = self._failed(incident.id, command.command, exc.error)
        return Handled("changed", command, done)

    # ---- states

    @staticmethod
    def _takes(incident: Incident, command: Command) -> bool:
        """The state table, and the redeliveries of a command that already moved the incident on its way."""
        if accepts(incident.state, command):
            return True
        # A retry moved the incident to accepted, then raised: its redelivery goes on as the plan.
        return command is Command.RETRY and incident.state is State.ACCEPTED

    def _entering(self, current: Incident, command: Command, state: State, **changes: object) -> Incident:
        if not self._takes(current, command):
            raise NotAccepted(current, f"{command.value} is not accepted any more")
        if current.state is state:
            return current
        return move(current, state, self._clock(), **changes)

    def _save(self, incident_id: str, change: Callable[[Incident], Incident]) -> Incident:
        """Write a change (ETag-matched, reapplied on a conflict); one §8 record when the state changed."""
        before: list[State] = []

        def apply(current: Incident) -> Incident:
            before[:] = [current.state]
            return change(current)

        saved = self._store.update(incident_id, apply)
        if before and before[0] is not saved.state:
            self._telemetry.incident_changed(saved)
        return saved

    def _failed(self, incident_id: str, command: Command, error: BatchError) -> Incident:
        """The last attempt failed: the incident becomes failed (an undo keeps executed and records the error)."""

        def change(current: Incident) -> Incident:
            if current.state is State.EXECUTED:
                return current.changed(self._clock(), error=error)
            if current.state not in (State.ACCEPTED, State.AWAITING_APPROVAL):
                raise NotAccepted(current, "cannot become failed")
            return move(current, State.FAILED, self._clock(), error=error)

        saved = self._save(incident_id, change)
        if saved.state is State.EXECUTED:
            log.error(
                "incident %s undo failed: %s %s",
                saved.id,
                error.code,
                error.message,
                extra={"incident": saved.id, "state": saved.state.value, "code": error.code},
            )
        return saved

    # ---- plan

    def _batch(self, incident: Incident) -> BatchAccount:
        batch = self._accounts.get(incident.account)
        if batch is None:
            error = BatchError(
                "UnknownAccount",
                f"the incident's account {incident.account!r} is not configured (BATCH_ACCOUNT_URL, BATCH_ACCOUNTS)",
                (BatchErrorDetail("account", incident.account),),
            )
            raise BatchCallFailed(error, attempts=0, transient=False)
        return batch

    def _plan(self, incident: Incident) -> Incident:
        """Select, refuse over ALERT_MAX_JOBS, wait for approval, or act (a plan that had begun acting goes on)."""
        if incident.acting_since is not None:
            return self._act(incident)
        batch = self._batch(incident)
        selector = job_selector(incident.selectors)
        # Without a prefix the selection lists every active job, which is what the pools' in-use check needs too.
        listing = _Listing(batch.jobs)
        selection = select_jobs(listing, selector, select=PLAN_JOB_SELECT)
        jobs = list(selection.jobs)
        limit = self._settings.max_jobs
        if len(jobs) > limit:
            refusal = too_many_jobs(len(jobs), limit)
            return self._save(
                incident.id, lambda current: self._entering(current, Command.PLAN, State.REFUSED, error=refusal)
            )
        schedules = (
            select_schedules(batch.schedules.list_active(), incident.selectors, (job.id for job in jobs))
            if self._settings.disable_schedules
            else []
        )
        pools: tuple[IncidentPool, ...] = ()
        if self._settings.scale_pools and jobs:
            active = listing.jobs if not selector.job_id_prefix else self._active_jobs(batch)
            found: dict[str, Pool | None] = {}
            for key, pool_id in job_pools(jobs).items():
                found[key] = self._read_pool(batch, pool_id)
            pools = plan_pools(jobs, active, found)
        planned = {
            "jobs": tuple(IncidentJob(job.id, job.pool_id) for job in jobs),
            "schedules": tuple(IncidentSchedule(schedule.id) for schedule in schedules),
            "pools": pools,
            "dry_run": self._dry_run,
        }
        manual = approval_of(incident, self._settings.approval) is Approval.MANUAL

        def record(current: Incident) -> Incident:
            if not self._takes(current, Command.PLAN) or current.acting_since is not None:
                raise NotAccepted(current, "planned meanwhile by another delivery")
            if manual:
                return move(current, State.AWAITING_APPROVAL, self._clock(), **planned)
            return current.changed(self._clock(), **planned)

        incident = self._save(incident.id, record)
        if manual:
            return incident
        return self._act(incident)

    @staticmethod
    def _active_jobs(batch: BatchAccount) -> list[Job]:
        return list(
            batch.jobs.list_jobs(odata_filter=ACTIVE_JOBS_FILTER, select=ACTIVE_JOB_SELECT, page_size=LIST_PAGE_SIZE)
        )

    @staticmethod
    def _read_pool(batch: BatchAccount, pool_id: str) -> Pool | None:
        try:
            return batch.pools.get(pool_id)
        except BatchCallFailed as exc:
            if exc.transient:
                raise
            return None  # acting reads it again and records Batch's answer

    # ---- act

    def _act(self, incident: Incident) -> Incident:
        """Schedules disabled, terminate messages sent, pools scaled to zero (docs/CONTRACT.md §10), then executed."""
        resumed = incident.acting_since is not None
        batch = self._batch(incident)
        if not resumed:
            now = self._clock()

            def start(current: Incident) -> Incident:
                if current.state not in (State.ACCEPTED, State.AWAITING_APPROVAL):
                    raise NotAccepted(current, "cannot act")
                return current if current.acting_since is not None else current.changed(now, acting_since=now)

            incident = self._save(incident.id, start)
        dry_run = incident.dry_run
        # 1. schedules: nothing new starts while the jobs stop
        if not dry_run:
            for entry in incident.schedules:
                if entry.disabled:
                    continue
                try:
                    result = batch.schedules.disable(entry.job_schedule_id)
                    disabled = True
                except BatchCallFailed as exc:
                    if exc.transient:
                        raise
                    result = ActionResult(exc.error.http_status, exc.error.code)
                    # Disabled already: by an earlier delivery of this command that did not live to record it, or
                    # by this call's own earlier attempt whose answer was lost (a timeout or dropped connection;
                    # the retry then gets 409). The schedule was active when planned, so it is this incident's.
                    disabled = exc.error.code == SCHEDULE_DISABLED and (resumed or exc.attempts > 1)
                incident = self._schedule_result(incident, entry.job_schedule_id, result, disabled=disabled)
        # 2. one terminate message per job, with the incident's reason, account and id
        incident = self._enqueue(incident)
        # 3. pools
        if not dry_run and incident.pools:
            active: list[Job] | None = None
            selected = [job.job_id for job in incident.jobs]
            for pool_entry in incident.pools:
                if pool_entry.skipped is not None and pool_entry.before is None:
                    continue
                if pool_entry.before is None and active is None:
                    active = self._active_jobs(batch)
                incident = self._scale(incident, batch, pool_entry, active or [], selected)
        return self._save(incident.id, lambda current: self._finish_acting(current))

    def _finish_acting(self, current: Incident) -> Incident:
        if current.state not in (State.ACCEPTED, State.AWAITING_APPROVAL):
            raise NotAccepted(current, "cannot become executed")
        return move(current, State.EXECUTED, self._clock())

    def _enqueue(self, incident: Incident) -> Incident:
        pending = [job for job in incident.jobs if not job.enqueued]
        if not pending:
            return incident
        account = None if incident.account == DEFAULT_ACCOUNT else incident.account
        requests = [
            build_request(job.job_id, incident.reason or None, account=account, incident=incident.id) for job in pending
        ]
        sent = self._terminate.enqueue_many(requests)
        done = {job.job_id for job in sent.sent(pending)}

        def mark(current: Incident) -> Incident:
            jobs = tuple(
                job if job.enqueued or job.job_id not in done else replace(job, enqueued=True) for job in current.jobs
            )
            return current.changed(self._clock(), jobs=jobs)

        if done:
            incident = self._save(incident.id, mark)
        if sent.failure is not None:
            raise sent.failure
        return incident

    def _scale(
        self, incident: Incident, batch: BatchAccount, entry: IncidentPool, active: list[Job], selected: list[str]
    ) -> Incident:
        pool_id = entry.pool_id
        try:
            pool = batch.pools.get(pool_id)
        except BatchCallFailed as exc:
            if exc.transient:
                raise
            return self._pool_result(incident, pool_id, ActionResult(exc.error.http_status, exc.error.code))
        if entry.before is None:
            if pool_in_use(pool_id, active, selected):
                return self._save(
                    incident.id, lambda current: current.with_pool(pool_id, self._clock(), skipped=POOL_IN_USE)
                )
            # The "before" reaches the table before the pool changes: a crash after the resize cannot lose it.
            before = pool.before()
            incident = self._save(incident.id, lambda current: current.with_pool(pool_id, self._clock(), before=before))
        done = entry.result is not None and entry.result.succeeded
        if (
            done
            and not pool.enable_auto_scale
            and pool.target_dedicated_nodes == 0
            and pool.target_low_priority_nodes == 0
        ):
            return incident  # an earlier delivery scaled it already
        try:
            result: ActionResult | None = None
            if pool.enable_auto_scale:
                result = batch.pools.disable_auto_scale(pool_id)
                pool = batch.pools.get(pool_id)
            if pool.resizing:
                result = batch.pools.stop_resize(pool_id)
                batch.pools.steady(pool_id)
            result = batch.pools.resize(pool_id, 0, 0, deallocation=DEALLOCATION)
        except BatchCallFailed as exc:
            if exc.transient:
                raise
            result = ActionResult(exc.error.http_status, exc.error.code)
        return self._pool_result(incident, pool_id, result)

    def _schedule_result(self, incident: Incident, schedule_id: str, result: ActionResult, **changes: bool) -> Incident:
        def change(current: Incident) -> Incident:
            return current.with_schedule(schedule_id, self._clock(), result=result, **changes)

        return self._save(incident.id, change)

    def _pool_result(self, incident: Incident, pool_id: str, result: ActionResult | None) -> Incident:
        return self._save(incident.id, lambda current: current.with_pool(pool_id, self._clock(), result=result))

    # ---- undo

    def _undo(self, incident: Incident) -> Incident:
        """Enable the schedules it disabled (still disabled), restore the pools it scaled; then undone."""
        batch = self._batch(incident)
        for entry in incident.schedules:
            if not entry.disabled:
                continue
            schedule_id = entry.job_schedule_id
            result: ActionResult | None
            try:
                schedule = batch.schedules.get(schedule_id)
                result = batch.schedules.enable(schedule_id) if schedule.state == "disabled" else None
            except BatchCallFailed as exc:
                if exc.transient:
                    raise
                result = ActionResult(exc.error.http_status, exc.error.code)
            if result is not None:
                incident = self._schedule_result(incident, schedule_id, result)
        for pool_entry in incident.pools:
            if pool_entry.before is None:
                continue
            restored = self._restore(batch, pool_entry)
            if restored is not None:
                incident = self._pool_result(incident, pool_entry.pool_id, restored)

        def finish(current: Incident) -> Incident:
            return self._entering(current, Command.UNDO, State.UNDONE, note=UNDO_NOTE, error=None)

        return self._save(incident.id, finish)

    @staticmethod
    def _restore(batch: BatchAccount, entry: IncidentPool) -> ActionResult | None:
        """Put a pool back as its "before" says; None when it already is (a redelivered undo)."""
        before = entry.before
        assert before is not None
        pool_id = entry.pool_id
        try:
            pool = batch.pools.get(pool_id)
            if before.enable_auto_scale:
                if (
                    pool.enable_auto_scale
                    and pool.auto_scale_formula == before.auto_scale_formula
                    and pool.auto_scale_evaluation_interval == before.auto_scale_evaluation_interval
                ):
                    return None
            elif (
                not pool.enable_auto_scale
                and pool.target_dedicated_nodes == before.target_dedicated_nodes
                and pool.target_low_priority_nodes == before.target_low_priority_nodes
            ):
                return None
            if pool.resizing:
                batch.pools.stop_resize(pool_id)
                batch.pools.steady(pool_id)
            if before.enable_auto_scale:
                return batch.pools.enable_auto_scale(
                    pool_id, before.auto_scale_formula, before.auto_scale_evaluation_interval
                )
            return batch.pools.resize(pool_id, before.target_dedicated_nodes, before.target_low_priority_nodes)
        except BatchCallFailed as exc:
            if exc.transient:
                raise
            return ActionResult(exc.error.http_status, exc.error.code)
