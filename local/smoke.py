"""`./dev run --smoke`: push two jobs, one invalid message and one alert through the whole local stack, then pull
the budget kill switch on the demo and undo it; 0 when OK."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import requests
from azure.core.exceptions import AzureError

from local.batch_emulator import AllocationState, JobScheduleState
from local.console import (
    ALERT_FUNCTION,
    BUDGET_PAYLOAD,
    queue_is_drained,
    report_recurrences,
    report_terminations,
    say,
)
from local.queue_host import Settlement
from local.stack import (
    DEMO_AUTOSCALE_FORMULA,
    DEMO_AUTOSCALE_JOB,
    DEMO_AUTOSCALE_POOL,
    DEMO_AUTOSCALE_SECONDS,
    DEMO_FIXED_NODES,
    DEMO_FIXED_POOL,
    DEMO_HELD_JOB,
    DEMO_JOBS,
    DEMO_RELEASE_POOL,
    DEMO_SCHEDULE,
    Run,
)
from shared import telemetry, wiring
from shared.config.settings import PROJECT_ROOT
from shared.contract.incident import Command, Incident, State
from shared.storage import queues as storage
from shared.storage.terminate_queue import TerminateQueue

SMOKE_TIMEOUT = 60.0
KILL_SWITCH_TIMEOUT = 30.0
MISSING_JOB = "no-such-job"
STUCK = "TerminationStuck"
# What the budget incident selects on the demo (ALERT_SELECT_JOB_ID_PREFIX=demo-) once demo-job-1..3 have ended.
KILL_SWITCH_JOBS = frozenset({DEMO_HELD_JOB, DEMO_AUTOSCALE_JOB, f"{DEMO_SCHEDULE}:job-1"})
SCALED_POOLS = (DEMO_FIXED_POOL, DEMO_AUTOSCALE_POOL)


def poison_records(run: Run) -> list[dict[str, Any]]:
    """The function's poison records, decoded, left in place."""
    client = storage.queue_client(
        run.settings.storage, run.settings.poison_queue_name, run.settings.queues.message_encoding
    )
    records: list[dict[str, Any]] = []
    for message in client.peek_messages(max_messages=32):
        with contextlib.suppress(ValueError, TypeError):
            records.append(json.loads(message.content))
    return records


class ConfirmedJobs(logging.Handler):
    """The jobs whose confirmed record (docs/CONTRACT.md §5b, §8) the app logged, with their terminatingMs."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.jobs: dict[str, float | None] = {}

    def emit(self, record: logging.LogRecord) -> None:
        """Keep a confirmed record's job id and time to completion."""
        if getattr(record, "outcome", None) == "confirmed":
            self.jobs[str(getattr(record, "jobId", None))] = getattr(record, telemetry.TERMINATING_ATTRIBUTE, None)


def drained(run: Run) -> bool:
    """Nothing in flight and nothing left on any trigger queue (pending checks included)."""
    try:
        return queue_is_drained(run)
    except AzureError:
        return False


def post_alert(run: Run, job_id: str) -> requests.Response:
    """POST a minimal fired common-schema alert naming job_id to the local alert_terminate, with the key."""
    alert = {
        "schemaId": "azureMonitorCommonAlertSchema",
        "data": {
            "essentials": {"alertRule": "smoke-test", "severity": "Sev4", "monitorCondition": "Fired"},
            "alertContext": {},
            "customProperties": {"jobId": job_id},
        },
    }
    assert run.http is not None
    with requests.Session() as session:
        session.trust_env = False  # a proxy from the environment must not answer for a loopback port
        return session.post(run.http.url(ALERT_FUNCTION), json=alert, timeout=10)


def post_budget(run: Run) -> requests.Response:
    """POST Microsoft's sample budget notification (the file, as the banner's curl sends it) to alert_terminate."""
    assert run.http is not None
    body = (PROJECT_ROOT / BUDGET_PAYLOAD).read_bytes()
    with requests.Session() as session:
        session.trust_env = False
        return session.post(
            run.http.url(ALERT_FUNCTION), data=body, headers={"Content-Type": "application/json"}, timeout=10
        )


def smoke(run: Run, stop: threading.Event) -> int:
    """Two demo jobs, a missing job, an invalid message, an alert: 0 when 3 end terminated and confirmed, 2 poisoned;
    then the sample budget's incident on the demo and its undo (docs/CONTRACT.md §10)."""
    confirmed = ConfirmedJobs()
    logger = logging.getLogger(telemetry.LOGGER_NAME)
    logger.addHandler(confirmed)
    try:
        return _smoke(run, stop, confirmed)
    finally:
        logger.removeHandler(confirmed)


def _smoke(run: Run, stop: threading.Event, confirmed: ConfirmedJobs) -> int:
    """The smoke test itself."""
    started = time.monotonic()
    queue = TerminateQueue.connect(
        run.settings.terminate_queue_name,
        connection_string=run.settings.storage.connection_string,
        message_encoding=run.settings.queues.message_encoding,
    )
    wanted = set(DEMO_JOBS[:2])
    for job_id in sorted(wanted):
        queue.enqueue_terminate(job_id, "smoke test")
    queue.enqueue_terminate(MISSING_JOB, "smoke test")  # only the demo jobs exist: a JobNotFound record
    # The producer refuses invalid requests, so the invalid one goes through its queue client as raw text.
    queue.client.send_message("this is not a terminate message")
    say(f"smoke: enqueued 4 messages on {queue.queue_name} (2 demo jobs, 1 missing job, 1 invalid)")
    answer = post_alert(run, DEMO_JOBS[2])
    say(f"smoke: POST /api/{ALERT_FUNCTION} (alert naming {DEMO_JOBS[2]}) -> {answer.status_code} {answer.text}")
    if answer.status_code != 202:
        say("smoke: FAILED: the local HTTP host did not accept the alert")
        return 1
    wanted.add(DEMO_JOBS[2])
    terminated: set[str] = set()
    records: list[dict[str, Any]] = []
    confirming = run.settings.confirm.enabled
    deadline = started + SMOKE_TIMEOUT
    while time.monotonic() < deadline and not stop.is_set():
        terminated.update(t.job_id for t in report_terminations(run))
        records = poison_records(run)
        checked = not confirming or wanted <= set(confirmed.jobs)
        if wanted <= terminated and len(records) >= 2 and checked and drained(run):
            break
        stop.wait(0.2)
    else:
        say(
            f"smoke: FAILED after {time.monotonic() - started:.0f}s: terminated {sorted(terminated)},"
            f" confirmed {sorted(confirmed.jobs)}, {len(records)} poison record(s),"
            f" {len(run.invocations)} invocation(s)"
        )
        return 1
    codes = ", ".join(sorted({str(r.get("error", {}).get("code")) for r in records}))
    say(f"smoke: emulator terminated {', '.join(sorted(terminated))}")
    say(f"smoke: {len(records)} poison record(s) on {run.settings.poison_queue_name} (code {codes})")
    if confirming:
        times = ", ".join(f"{job} {_ms(confirmed.jobs[job])}" for job in sorted(confirmed.jobs))
        say(f"smoke: confirmed {len(confirmed.jobs)} on {run.settings.confirm.queue_name} (terminating ms: {times})")
    if not kill_switch(run, stop, confirmed, terminated):
        return 1
    settled = {kind: sum(1 for i in run.invocations if i.outcome is kind) for kind in Settlement}
    say(
        f"smoke: {len(run.invocations)} invocations: {settled[Settlement.SUCCEEDED]} succeeded,"
        f" {settled[Settlement.FAILED]} failed, {settled[Settlement.MOVED_TO_POISON]} moved to poison"
        f" ({time.monotonic() - started:.1f}s)"
    )
    say("smoke: OK")
    return 0


def _ms(value: float | None) -> str:
    return "unknown" if value is None else f"{value:.0f}"


def wait_for(
    run: Run, stop: threading.Event, what: str, ready: Callable[[], list[str]], timeout: float = KILL_SWITCH_TIMEOUT
) -> bool:
    """Poll until `ready()` returns no missing condition; False (having printed what was missing) on timeout."""
    started = time.monotonic()
    missing = ["not checked yet"]
    while time.monotonic() - started < timeout and not stop.is_set():
        report_terminations(run)
        report_recurrences(run)
        try:
            missing = ready()
        except AzureError as exc:
            missing = [f"storage: {type(exc).__name__}"]
        if not missing:
            return True
        stop.wait(0.2)
    say(f"smoke: FAILED waiting {time.monotonic() - started:.0f}s for {what}: {'; '.join(missing)}")
    return False


def kill_switch(run: Run, stop: threading.Event, confirmed: ConfirmedJobs, terminated: set[str]) -> bool:
    """The sample budget opens an incident that stops the demo's jobs, disables its schedule and scales its pools to
    zero (recording each pool's "before"); demo-job-4 ends as a TerminationStuck record that names its release-task
    nodes; undo enables the schedule and restores the pools."""
    emulator = run.emulator
    assert emulator is not None
    incidents = wiring.current().incidents()
    answer = post_budget(run)
    say(f"smoke: POST /api/{ALERT_FUNCTION} ({BUDGET_PAYLOAD.as_posix()}) -> {answer.status_code} {answer.text}")
    if answer.status_code != 202 or not isinstance(answer.json().get("incident"), str):
        say("smoke: FAILED: the sample budget did not open an incident")
        return False
    incident_id: str = answer.json()["incident"]
    found: list[Incident] = []
    stuck: list[dict[str, Any]] = []
    skipped: set[str] = set()

    def executed() -> list[str]:
        missing: list[str] = []
        terminated.update(t.job_id for t in emulator.terminations)
        skipped.update(s.id for s, job in run.recurrences if job is None)
        incident = incidents.get(incident_id)
        if incident is None or incident.state is not State.EXECUTED:
            return [f"incident {incident_id} is {incident.state.value if incident else 'missing'}"]
        found[:] = [incident]
        if {job.job_id for job in incident.jobs} != KILL_SWITCH_JOBS:
            missing.append(f"selected {sorted(job.job_id for job in incident.jobs)}")
        schedule = emulator.schedule(DEMO_SCHEDULE)
        if schedule is None or schedule.state != JobScheduleState.DISABLED:
            missing.append(f"{DEMO_SCHEDULE} is {schedule.state if schedule else 'missing'}")
        if DEMO_SCHEDULE not in skipped:
            missing.append(f"no recurrence of {DEMO_SCHEDULE} skipped yet")
        for pool_id in SCALED_POOLS:
            entry, pool = incident.pool(pool_id), emulator.pool(pool_id)
            if entry is None or entry.before is None:
                missing.append(f"{pool_id}: no before recorded")
            if pool is None or pool.enable_auto_scale or pool.allocation_state != AllocationState.STEADY:
                missing.append(f"{pool_id} is not steady without autoscale")
            elif (pool.current_dedicated, pool.current_low_priority) != (0, 0):
                missing.append(f"{pool_id} has {pool.current_dedicated}+{pool.current_low_priority} nodes")
        kept = incident.pool(DEMO_RELEASE_POOL)
        if kept is None or kept.skipped != "PoolKept":
            missing.append(f"{DEMO_RELEASE_POOL} not skipped as PoolKept")
        if not terminated >= KILL_SWITCH_JOBS:
            missing.append(f"terminated {sorted(KILL_SWITCH_JOBS - terminated)} not yet")
        unconfirmed = KILL_SWITCH_JOBS - {DEMO_HELD_JOB} - set(confirmed.jobs)
        if run.settings.confirm.enabled and unconfirmed:
            missing.append(f"not confirmed yet: {sorted(unconfirmed)}")
        record = stuck_record(run)
        if record is None:
            missing.append(f"no {STUCK} record for {DEMO_HELD_JOB} yet")
        else:
            stuck[:] = [record]
        return missing

    if not wait_for(run, stop, f"incident {incident_id} to be executed", executed):
        return False
    incident, record = found[0], stuck[0]
    befores = []
    for pool_id in SCALED_POOLS:
        before = incident.pool(pool_id).before  # type: ignore[union-attr]
        assert before is not None
        befores.append(
            f"{pool_id} (before: autoscale every {before.auto_scale_evaluation_interval})"
            if before.enable_auto_scale
            else f"{pool_id} (before: {before.target_dedicated_nodes}+{before.target_low_priority_nodes})"
        )
    say(
        f"smoke: incident {incident_id} executed: {len(incident.jobs)} jobs terminated, {DEMO_SCHEDULE} disabled"
        f" (a recurrence passed with no job), {' and '.join(befores)} at zero, {DEMO_RELEASE_POOL} skipped (PoolKept)"
    )
    values = poison_values(record)
    if not values.get("releaseTasksRunning") or not values.get("releaseTaskNodes"):
        say(f"smoke: FAILED: {DEMO_HELD_JOB}'s {STUCK} record has no release-task diagnosis: {values}")
        return False
    diagnosis = " ".join(
        f"{key}={values[key]}" for key in ("releaseTasksRunning", "releaseTaskNodes", "unusableNodes") if key in values
    )
    say(f"smoke: {DEMO_HELD_JOB} {STUCK} (incident {record.get('incident')}): {diagnosis}")

    incidents.send(incident_id, Command.UNDO)
    say(f"smoke: undo sent for {incident_id} on {incidents.queue.queue_name}")
    created: set[str] = set()

    def undone() -> list[str]:
        created.update(job.id for schedule, job in run.recurrences if job is not None)
        incident = incidents.get(incident_id)
        if incident is None or incident.state is not State.UNDONE:
            return [f"incident {incident_id} is {incident.state.value if incident else 'missing'}"]
        missing: list[str] = []
        schedule = emulator.schedule(DEMO_SCHEDULE)
        if schedule is None or schedule.state != JobScheduleState.ACTIVE:
            missing.append(f"{DEMO_SCHEDULE} is {schedule.state if schedule else 'missing'}")
        if f"{DEMO_SCHEDULE}:job-2" not in created:
            missing.append(f"{DEMO_SCHEDULE} created no job since")
        fixed, elastic = emulator.pool(DEMO_FIXED_POOL), emulator.pool(DEMO_AUTOSCALE_POOL)
        if fixed is None or (fixed.target_dedicated, fixed.target_low_priority) != DEMO_FIXED_NODES:
            missing.append(f"{DEMO_FIXED_POOL} targets not restored")
        interval = elastic.auto_scale_evaluation_interval if elastic is not None else None
        if (
            elastic is None
            or not elastic.enable_auto_scale
            or elastic.auto_scale_formula != DEMO_AUTOSCALE_FORMULA
            or interval is None
            or interval.total_seconds() != DEMO_AUTOSCALE_SECONDS
        ):
            missing.append(f"{DEMO_AUTOSCALE_POOL} autoscale not restored")
        return missing

    if not wait_for(run, stop, f"incident {incident_id} to be undone", undone):
        return False
    say(
        f"smoke: incident {incident_id} undone: {DEMO_SCHEDULE} active again (created {DEMO_SCHEDULE}:job-2),"
        f" {DEMO_FIXED_POOL} back to {DEMO_FIXED_NODES[0]}+{DEMO_FIXED_NODES[1]},"
        f" {DEMO_AUTOSCALE_POOL} autoscale again"
    )
    return wait_for(run, stop, "the queues to drain", lambda: [] if drained(run) else ["messages left"])


def stuck_record(run: Run) -> dict[str, Any] | None:
    """The held demo job's TerminationStuck record, if it is on the poison queue."""
    for record in poison_records(run):
        error = record.get("error") if isinstance(record.get("error"), dict) else {}
        if str(record.get("jobId")) == DEMO_HELD_JOB and error.get("code") == STUCK:  # type: ignore[union-attr]
            return record
    return None


def poison_values(record: dict[str, Any]) -> dict[str, str]:
    """A poison record's error values as a dict."""
    values = record.get("error", {}).get("values") or []
    return {str(item.get("key")): str(item.get("value")) for item in values if isinstance(item, dict)}


__all__ = ["SMOKE_TIMEOUT", "smoke"]
