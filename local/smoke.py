"""`./dev run --smoke`: push two jobs, one invalid message and one alert through the whole local stack; 0 when OK."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from typing import Any

import requests
from azure.core.exceptions import AzureError

from local.console import ALERT_FUNCTION, queue_is_drained, report_terminations, say
from local.queue_host import Settlement
from local.stack import DEMO_JOBS, Run
from shared import telemetry
from shared.storage import queues as storage
from shared.storage.terminate_queue import TerminateQueue

SMOKE_TIMEOUT = 60.0
MISSING_JOB = "no-such-job"


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


def smoke(run: Run, stop: threading.Event) -> int:
    """Two demo jobs, a missing job, an invalid message, an alert; 0 when 3 end terminated and confirmed, 2 poisoned."""
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
    settled = {kind: sum(1 for i in run.invocations if i.outcome is kind) for kind in Settlement}
    codes = ", ".join(sorted({str(r.get("error", {}).get("code")) for r in records}))
    say(f"smoke: emulator terminated {', '.join(sorted(terminated))}")
    say(f"smoke: {len(records)} poison record(s) on {run.settings.poison_queue_name} (code {codes})")
    if confirming:
        times = ", ".join(f"{job} {_ms(confirmed.jobs[job])}" for job in sorted(confirmed.jobs))
        say(f"smoke: confirmed {len(confirmed.jobs)} on {run.settings.confirm.queue_name} (terminating ms: {times})")
    say(
        f"smoke: {len(run.invocations)} invocations: {settled[Settlement.SUCCEEDED]} succeeded,"
        f" {settled[Settlement.FAILED]} failed, {settled[Settlement.MOVED_TO_POISON]} moved to poison"
        f" ({time.monotonic() - started:.1f}s)"
    )
    say("smoke: OK")
    return 0


def _ms(value: float | None) -> str:
    return "unknown" if value is None else f"{value:.0f}"


__all__ = ["SMOKE_TIMEOUT", "smoke"]
