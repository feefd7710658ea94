"""The soak's kill-switch phase (docs/CONTRACT.md §9, §10).

Incidents are opened the two ways the app opens them — budget notifications through `alert_terminate.main`, and
operator incidents through `Incidents.open` — each over its own group of jobs, job schedules and pools (fixed and
autoscale; some kept, in use or auto pools) in one of two Batch accounts. `kill_switch`, `terminate_job` and
`confirm_termination` run in a child host with KILL_SWITCH_SCALE_POOLS=true and KILL_SWITCH_APPROVAL=manual (some
operator incidents carry `auto`), while the emulators fail the kill switch's list, schedule and pool requests at
random (5xx, drops before and after the request was applied, answers slower than the client timeout) and the host
is SIGKILLed three times in the middle of an incident's Batch call. The soak approves or cancels what waits, retries
what failed, then undoes every executed incident and reconciles (soak/kill_switch_reconcile.py).
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import azure.functions as func
from azure.storage.queue import QueueClient

import alert_terminate
from local.azurite import Azurite
from local.batch_emulator import BatchEmulator, Fault
from local.batch_emulator.faults import RATE_KINDS, FaultPlan
from local.identity import IdentityEndpoint
from shared import wiring
from shared.config.settings import Settings
from shared.contract.errors import EnqueueFailed, IncidentWriteFailed
from shared.contract.incident import Approval, Command, Incident, Selectors, Source, State
from shared.rules.incidents import NotAccepted, operator_incident_id
from shared.services.kill_switch import UnknownIncident
from soak.config import (
    FAULT_RATES,
    KS_CONFIRM_QUEUE_NAME,
    KS_FAULT_OPERATIONS,
    KS_FAULT_RATES,
    KS_INCIDENT_QUEUE_NAME,
    KS_KILL_DELAY,
    KS_MAX_JOBS,
    KS_MAX_RESENDS,
    KS_OTHER_ACCOUNT,
    KS_POISON_QUEUE_NAME,
    KS_QUEUE_NAME,
    KS_TABLE_NAME,
    SoakConfig,
)
from soak.kill_switch_reconcile import (
    GroupPlan,
    IncidentReport,
    PhaseLedger,
    PoolShape,
    reconcile_incidents,
    shape_of,
)
from soak.reconcile import read_poison, read_records
from soak.worker import HostProcess

log = logging.getLogger("soak")

FUNCTIONS = ("kill_switch", "terminate_job", "confirm_termination")
FORMULA = "$TargetDedicatedNodes = min({cap}, $PendingTasks.GetSample(1));"
KEEP = {"batch-terminator-keep": "true"}
AUTO_POOL_SPEC = {"autoPoolIdPrefix": "soak", "poolLifetimeOption": "job", "pool": {"vmSize": "standard_d2s_v3"}}
# (kind, account, approval, expected end, what the soak sends while it waits): the cycle of incident kinds.
Kind = tuple[str, str, Approval | None, State, Command | None]
KINDS: tuple[Kind, ...] = (
    ("budget", "default", None, State.UNDONE, Command.APPROVE),
    ("auto", KS_OTHER_ACCOUNT, Approval.AUTO, State.UNDONE, None),
    ("manual", "default", Approval.MANUAL, State.UNDONE, Command.APPROVE),
    ("setting", KS_OTHER_ACCOUNT, None, State.UNDONE, Command.APPROVE),
    ("auto", "default", Approval.AUTO, State.UNDONE, None),
    ("cancel", KS_OTHER_ACCOUNT, Approval.MANUAL, State.CANCELLED, Command.CANCEL),
    ("refused", "default", Approval.AUTO, State.REFUSED, None),
    ("budget-twice", "default", None, State.UNDONE, Command.APPROVE),
)
# The group whose plan keeps failing (Pool - Get answers 503 on every attempt of every delivery): it ends
# `failed`, and the soak's `retry` executes it.
FAILING_GROUP = 4
# Where the soak kills the host: the operation whose answer it holds back (KS_KILL_DELAY, after applying it).
KILL_POINTS = (("default", "pool.resize", "acting"), (KS_OTHER_ACCOUNT, "jobschedule.disable", "acting"))
UNDO_KILL_POINT = ("default", "pool.enableautoscale", "undoing")
# Answers lost after Batch applied the request (the connection dropped), once each, on these groups' resources:
# the client's retry finds the work done (409 JobScheduleDisabled, 409 PoolBeingResized, nothing to disable).
LOST_ANSWERS = (
    (2, "jobschedule.disable", "{group}-nightly"),
    (0, "pool.disableautoscale", "{group}-auto"),
    (3, "pool.resize", "{group}-fixed"),
    (1, "jobschedule.enable", "{group}-nightly"),
)
FINISHED = frozenset({State.EXECUTED, State.REFUSED, State.CANCELLED})


class PhaseFaults(FaultPlan):
    """The emulator's fault plan, plus random faults for the kill switch's list, schedule and pool requests."""

    def __init__(self, seed: int, rates: Mapping[str, float], operations: frozenset[str]) -> None:
        super().__init__(seed)
        self._phase_rates = {kind: float(rates[kind]) for kind in RATE_KINDS if rates.get(kind)}
        self._operations = operations
        self._phase_rng = random.Random(seed * 7919 + 17)

    def calm(self) -> None:
        """No more random faults on the kill switch's operations."""
        self._phase_rates = {}

    def take(self, operation: str, job_id: str | None) -> Fault | None:
        """An injected fault, a terminate's random one, or (for the kill switch's operations) a random one."""
        fault = super().take(operation, job_id)
        if fault is not None or operation not in self._operations:
            return fault
        draw = self._phase_rng.random()
        for kind, rate in self._phase_rates.items():
            if draw < rate:
                return self._rate_fault(kind)
            draw -= rate
        return None


def kinds_for(count: int) -> list[Kind]:
    """The kind of each incident, cycling through KINDS."""
    return [KINDS[n % len(KINDS)] for n in range(count)]


def build_group(batch: BatchEmulator, n: int, kind: str) -> GroupPlan:
    """Jobs, schedules and pools of one incident's group; what the incident should select and scale."""
    group = f"ks{n:03d}"
    fixed, auto, side = f"{group}-fixed", f"{group}-auto", f"{group}-side"
    batch.add_pool(fixed, dedicated=2 + n % 3, low_priority=n % 2)
    batch.add_pool(
        auto,
        dedicated=1 + n % 3,
        auto_scale_formula=FORMULA.format(cap=2 + n % 4),
        auto_scale_evaluation_seconds=300 + 60 * (n % 5),
    )
    batch.add_pool(side, dedicated=1)
    count = KS_MAX_JOBS + 1 if kind == "refused" else 3 + n % 3
    jobs = [f"{group}-job-{k}" for k in range(count)]
    for k, job_id in enumerate(jobs):
        batch.add_job(job_id, pool_id=fixed if k % 2 == 0 else auto)
    batch.add_schedule(f"{group}-nightly", pool_id=fixed, recurrence_seconds=86400)
    jobs.append(f"{group}-nightly:job-1")
    schedules = [f"{group}-nightly"]
    if n % 4 == 1:  # a schedule the prefix matches that has not run yet
        batch.add_schedule(f"{group}-hourly", pool_id=fixed, recurrence_seconds=3600, first_job=False)
        schedules.append(f"{group}-hourly")
    skipped: dict[str, str] = {}
    if n % 4 == 3:  # an auto-pool job: Batch ends its pool with it
        batch.add_job(f"{group}-job-ap", execution_pool_id=f"{group}-ap", auto_pool=AUTO_POOL_SPEC)
        jobs.append(f"{group}-job-ap")
        skipped[f"{group}-ap"] = "AutoPool"
    if n % 5 == 2:  # a kept pool
        batch.add_pool(f"{group}-kept", dedicated=2, metadata=KEEP)
        batch.add_job(f"{group}-job-k", pool_id=f"{group}-kept")
        jobs.append(f"{group}-job-k")
        skipped[f"{group}-kept"] = "PoolKept"
    untouched = [f"{group}-keep"]
    batch.add_job(f"{group}-keep", pool_id=side, metadata=KEEP)  # a kept job: never selected
    if n % 8 == 4:  # an unselected job on the autoscale pool: PoolInUse
        batch.add_job(f"x{group}-other", pool_id=auto)
        untouched.append(f"x{group}-other")
        skipped[auto] = "PoolInUse"
    batch.tick()  # schedules run what is due now
    kept = set(untouched)
    jobs = [job.id for job in batch.jobs() if job.id.startswith(f"{group}-") and job.id not in kept]
    shapes: dict[str, PoolShape] = {}
    for pool in batch.pools():
        if pool.id.startswith(f"{group}-"):
            shapes[pool.id] = shape_of(pool)
    scaled = frozenset({fixed, auto} - set(skipped))
    return GroupPlan(
        n=n,
        group=group,
        jobs=tuple(jobs),
        untouched_jobs=tuple(untouched),
        schedules=tuple(schedules),
        pools=shapes,
        scaled=scaled,
        skipped=skipped,
    )


def budget_body(n: int) -> bytes:
    """A Cost Management budget notification (not the common schema; every value a string)."""
    data = {
        "SubscriptionName": "soak",
        "SubscriptionId": "00000000-0000-0000-0000-000000000000",
        "SpendingAmount": str(100 + n),
        "BudgetStartDate": "6/1/2025",
        "Budget": "50",
        "Unit": "USD",
        "BudgetCreator": "soak@example.com",
        "BudgetName": f"soak-budget-{n:03d}",
        "BudgetType": "Cost",
        "ResourceGroup": "",
        "NotificationThresholdAmount": "0.8",
    }
    return json.dumps({"schemaId": "AIP Budget Notification", "data": data}).encode()


@contextmanager
def selecting(prefix: str) -> Iterator[None]:
    """ALERT_SELECT_JOB_ID_PREFIX for one alert_terminate call (it reads the ALERT_* settings per request)."""
    name = "ALERT_SELECT_JOB_ID_PREFIX"
    saved = os.environ.get(name)
    os.environ[name] = prefix
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = saved


def post_budget(body: bytes, prefix: str) -> tuple[int, dict[str, object]]:
    """POST a budget notification to alert_terminate.main, as the host would hand it over: (status, document)."""
    request = func.HttpRequest(
        method="POST",
        url="http://127.0.0.1/api/alert_terminate",
        headers={"Content-Type": "application/json"},
        params={},
        route_params={},
        body=body,
    )
    with selecting(prefix):
        response = alert_terminate.main(request)
    return response.status_code, json.loads(response.get_body() or b"{}")


@dataclass
class Phase:
    """The running phase: its emulators, host, the incidents it opened and what it did to them."""

    config: SoakConfig
    accounts: dict[str, BatchEmulator]
    host: HostProcess
    azurite: Azurite
    say: Callable[[str], None]
    ledger: PhaseLedger = field(default_factory=PhaseLedger)
    kill_marks: dict[str, int] = field(default_factory=dict)

    @property
    def incidents(self) -> wiring.Wiring:
        """The orchestrator's wiring (alert_terminate, Incidents)."""
        return wiring.current()

    # ---- opening

    def open_all(self, plans: list[GroupPlan], kinds: list[Kind]) -> None:
        """Open one incident per group: budgets through alert_terminate, the rest as an operator does."""
        for plan, (kind, account, approval, expect, then) in zip(plans, kinds, strict=True):
            prefix = f"{plan.group}-"
            if kind.startswith("budget"):
                body = budget_body(plan.n)
                status, document = post_budget(body, prefix)
                if status != 202:
                    self.ledger.unexpected[f"budget notification answered {status} {document}"] += 1
                    continue
                incident_id = str(document["incident"])
                self.ledger.opened["budget"] += 1
                if kind == "budget-twice":
                    again, second = post_budget(body, prefix)
                    self.ledger.duplicate_deliveries += 1
                    if (again, second.get("incident")) != (202, incident_id):
                        self.ledger.unexpected[f"a budget delivered twice answered {again} {second}"] += 1
            else:
                incident = Incident.open(
                    operator_incident_id(),
                    source=Source.OPERATOR,
                    reason=f"soak {kind} {plan.group}",
                    selectors=Selectors(prefix=prefix),
                    at=datetime.now(UTC),
                    account=account,
                    approval=approval,
                )
                stored, created = self.incidents.incidents().open(incident)
                if not created:
                    self.ledger.unexpected["an operator incident id was taken"] += 1
                incident_id = stored.id
                self.ledger.opened["operator"] += 1
            self.ledger.planned[incident_id] = replace(plan, kind=kind, account=account, expect=expect, then=then)

    # ---- driving

    def states(self) -> dict[str, Incident]:
        """The phase's incidents as the table holds them now (empty while storage does not answer)."""
        try:
            return {i.id: i for i in self.incidents.incident_store().list_incidents() if i.id in self.ledger.planned}
        except IncidentWriteFailed:
            return {}

    def send(self, incident_id: str, command: Command) -> bool:
        """Send a command through Incidents.send (the CLI's way); False when the incident no longer takes it."""
        try:
            self.incidents.incidents().send(incident_id, command)
        except (NotAccepted, UnknownIncident, EnqueueFailed, IncidentWriteFailed) as exc:
            log.warning("soak: %s %s not sent: %s", command.value, incident_id, exc)
            return False
        self.ledger.sent[command.value] += 1
        return True

    def arm_kill(self, account: str, operation: str) -> None:
        """Hold back the next answer to `operation` (after applying it): the soak kills the host meanwhile."""
        self.accounts[account].inject(Fault.delay(KS_KILL_DELAY, apply=True), times=1, operation=operation)

    def watch_kills(self) -> None:
        """Kill and restart the host as soon as a held-back request arrives."""
        label = Fault.delay(KS_KILL_DELAY, apply=True).label
        for alias, batch in self.accounts.items():
            requests = batch.requests
            start = self.kill_marks.get(alias, 0)
            self.kill_marks[alias] = len(requests)
            for request in requests[start:]:
                if request.fault != label:
                    continue
                self.host.kill()
                self.host.start()
                event = (
                    f"host killed (SIGKILL) and restarted during {request.operation} {request.resource_id} ({alias})"
                )
                self.ledger.kills.append(event)
                self.say(f"soak: kill switch: {event}")

    def tick(self) -> None:
        """One poll's chores: kills, and a host that died on its own."""
        self.watch_kills()
        if not self.host.alive:
            self.ledger.events.append("host process exited on its own; restarted")
            self.host.start()

    def act(self, deadline: float) -> dict[str, Incident]:
        """Approve or cancel what waits, retry what failed, until every incident is executed, refused,
        cancelled, or failed KS_MAX_RESENDS times."""
        handled: set[tuple[str, str]] = set()
        last_say = time.monotonic()
        states: dict[str, Incident] = {}
        while time.monotonic() < deadline:
            time.sleep(0.25)
            self.tick()
            states = self.states() or states
            for incident in states.values():
                planned = self.ledger.planned[incident.id]
                if incident.state is State.AWAITING_APPROVAL and planned.then is not None:
                    key = (incident.id, planned.then.value)
                    if key not in handled and self.send(incident.id, planned.then):
                        handled.add(key)
                elif incident.state is State.FAILED:
                    key = (incident.id, f"retry@{incident.updated_at.isoformat()}")
                    fresh = key not in handled and self.ledger.retries[incident.id] < KS_MAX_RESENDS
                    if fresh and self.send(incident.id, Command.RETRY):
                        handled.add(key)
                        self.ledger.retries[incident.id] += 1
            if len(states) == len(self.ledger.planned) and all(
                i.state in FINISHED or (i.state is State.FAILED and self.ledger.retries[i.id] >= KS_MAX_RESENDS)
                for i in states.values()
            ):
                return states
            if time.monotonic() - last_say > 10:
                last_say = time.monotonic()
                counts = _count_states(states)
                self.say(f"soak: kill switch: {counts}")
        self.ledger.events.append("deadline reached while acting")
        return states

    def undo(self, deadline: float) -> dict[str, Incident]:
        """Undo every executed incident (again when its undo failed) until each is undone."""
        states = self.states()
        executed = [i.id for i in states.values() if i.state is State.EXECUTED]
        for incident_id in executed:
            self.send(incident_id, Command.UNDO)
        handled: set[tuple[str, str]] = set()
        last_say = time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.25)
            self.tick()
            states = self.states() or states
            pending = [states[i] for i in executed if i in states and states[i].state is State.EXECUTED]
            for incident in pending:
                if incident.error is None:
                    continue
                key = (incident.id, incident.updated_at.isoformat())
                if key not in handled and self.ledger.undo_resends[incident.id] < KS_MAX_RESENDS:
                    handled.add(key)
                    if self.send(incident.id, Command.UNDO):
                        self.ledger.undo_resends[incident.id] += 1
            if all(i.error is not None and self.ledger.undo_resends[i.id] >= KS_MAX_RESENDS for i in pending) and len(
                states
            ) == len(self.ledger.planned):
                return states
            if time.monotonic() - last_say > 10:
                last_say = time.monotonic()
                self.say(f"soak: kill switch: undoing, {len(pending)} left")
        self.ledger.events.append("deadline reached while undoing")
        return states

    def drain(self, connection: str, deadline: float) -> int | None:
        """Wait until the phase's terminate, check and command queues are empty: the count left."""
        queues = [
            QueueClient.from_connection_string(connection, name)
            for name in (KS_QUEUE_NAME, KS_CONFIRM_QUEUE_NAME, KS_INCIDENT_QUEUE_NAME)
        ]
        left: int | None = None
        while time.monotonic() < deadline:
            self.tick()
            try:
                left = sum(int(q.get_queue_properties().approximate_message_count or 0) for q in queues)
            except Exception:  # storage not answering: ask again
                left = None
            if left == 0:
                return 0
            time.sleep(0.25)
        self.ledger.events.append(f"deadline reached with {left} queued message(s) in the phase's queues")
        return left


def _count_states(states: Mapping[str, Incident]) -> str:
    counts: dict[str, int] = {}
    for incident in states.values():
        counts[incident.state.value] = counts.get(incident.state.value, 0) + 1
    return ", ".join(f"{name} {count}" for name, count in sorted(counts.items()))


def run_phase(
    config: SoakConfig,
    workdir: Path,
    azurite: Azurite,
    identity: IdentityEndpoint,
    say: Callable[[str], None],
) -> IncidentReport:
    """The kill-switch phase from start to reconciliation."""
    began = time.monotonic()
    directory = workdir / "kill-switch"
    directory.mkdir(parents=True, exist_ok=True)
    accounts = {
        "default": BatchEmulator(authorize=identity.is_valid, seed=config.seed + 11),
        KS_OTHER_ACCOUNT: BatchEmulator(authorize=identity.is_valid, seed=config.seed + 12),
    }
    host = HostProcess(directory / "worker.json", directory)
    phase = Phase(config, accounts, host, azurite, say)
    try:
        for offset, batch in enumerate(accounts.values()):
            batch.faults = PhaseFaults(config.seed + 21 + offset, KS_FAULT_RATES, KS_FAULT_OPERATIONS)
            batch.resize_seconds = config.ks_resize_seconds
            batch.slow_seconds = config.slow_seconds
            batch.start()
        connection = azurite.connection_string
        for name in (KS_QUEUE_NAME, KS_CONFIRM_QUEUE_NAME, KS_INCIDENT_QUEUE_NAME):
            QueueClient.from_connection_string(connection, name).create_queue()
        kinds = kinds_for(config.incidents)
        plans = [build_group(accounts[account], n, kind) for n, (kind, account, *_) in enumerate(kinds)]
        env = {
            **identity.environ(),
            "BATCH_ACCOUNT_URL": accounts["default"].url,
            "BATCH_ACCOUNTS": f"{KS_OTHER_ACCOUNT}={accounts[KS_OTHER_ACCOUNT].url}",
            "TERMINATE_QUEUE_NAME": KS_QUEUE_NAME,
            "POISON_QUEUE_NAME": KS_POISON_QUEUE_NAME,
            "AzureWebJobsStorage": connection,
            "AzureFunctionsJobHost__extensions__queues__maxDequeueCount": str(config.max_dequeue_count),
            # The soak's hosts decode base64 (SoakConfig.queue_options); the app's own producers (the kill
            # switch's terminate messages, TerminateQueue.from_env) follow this setting, as host.json's in Azure.
            "AzureFunctionsJobHost__extensions__queues__messageEncoding": "base64",
            "PYTHON_THREADPOOL_THREAD_COUNT": str(config.threads),
            "CONFIRM_QUEUE_NAME": KS_CONFIRM_QUEUE_NAME,
            "CONFIRM_AFTER_SECONDS": str(config.confirm_after_seconds),
            "CONFIRM_MAX_CHECKS": str(config.confirm_max_checks),
            "INCIDENT_QUEUE_NAME": KS_INCIDENT_QUEUE_NAME,
            "INCIDENT_TABLE_NAME": KS_TABLE_NAME,
            "KILL_SWITCH_APPROVAL": "manual",
            "KILL_SWITCH_DISABLE_SCHEDULES": "true",
            "KILL_SWITCH_SCALE_POOLS": "true",
            "ALERT_MAX_JOBS": str(KS_MAX_JOBS),
        }
        document = {"env": env, "config": asdict(config), "functions": list(FUNCTIONS)}
        (directory / "worker.json").write_text(json.dumps(document), encoding="utf-8")
        settings = replace(Settings.from_env(env), queues=config.queue_options())
        wiring.install(wiring.Wiring(settings, environ=env, http_timeout=config.http_timeout, policy=config.policy()))
        say(
            f"soak: kill switch: {config.incidents} incidents over {len(accounts)} accounts"
            f" ({sum(len(p.jobs) for p in plans)} jobs, {sum(len(p.pools) for p in plans)} pools)"
        )
        if config.incidents > FAILING_GROUP:
            failing = plans[FAILING_GROUP]
            attempts = config.policy().max_attempts * config.max_dequeue_count
            accounts[kinds[FAILING_GROUP][1]].inject(
                Fault.status(503, "ServerBusy"), times=attempts, job_id=f"{failing.group}-fixed", operation="pool.get"
            )
        for n, operation, resource in LOST_ANSWERS:
            if n < len(plans):
                target = resource.format(group=plans[n].group)
                accounts[kinds[n][1]].inject(Fault.drop(apply=True), times=1, job_id=target, operation=operation)
        for batch in accounts.values():
            batch.set_fault_rates(FAULT_RATES, seed=config.seed)
        for account, operation, _ in KILL_POINTS:
            phase.arm_kill(account, operation)
        host.start()
        phase.open_all(plans, kinds)
        deadline = began + config.ks_deadline_seconds
        acted = phase.act(deadline)
        phase.ledger.after_acting = {alias: batch.pools() for alias, batch in accounts.items()}
        phase.ledger.schedules_after_acting = {alias: batch.schedules() for alias, batch in accounts.items()}
        phase.ledger.acted = acted
        say(f"soak: kill switch: acted in {time.monotonic() - began:.1f} s ({_count_states(acted)}); undoing")
        phase.arm_kill(UNDO_KILL_POINT[0], UNDO_KILL_POINT[1])
        final = phase.undo(deadline)
        left = phase.drain(connection, deadline)
        host.stop()
        for batch in accounts.values():
            faults = batch.faults
            if isinstance(faults, PhaseFaults):
                faults.calm()
            batch.set_fault_rates({})
        poison = read_poison(connection, KS_POISON_QUEUE_NAME)
        poison += read_poison(connection, f"{KS_CONFIRM_QUEUE_NAME}-poison")
        report = reconcile_incidents(phase.ledger, final, accounts, poison, read_records(directory), left)
        report.seconds = time.monotonic() - began
        return report
    finally:
        host.kill()
        for batch in accounts.values():
            batch.stop()
        wiring.reset()
