"""`./dev run` itself (python -m local): the smoke mode CI relies on, and a real start, enqueue, alert and Ctrl-C."""

from __future__ import annotations

import os
import queue
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
import requests

from shared.config.settings import PROJECT_ROOT
from shared.storage.terminate_queue import TerminateQueue

pytestmark = pytest.mark.integration

# Env vars win over local.settings.json, so a developer's own settings file cannot steer these runs.
CLEAN_ENV = {
    "AzureWebJobsStorage": "UseDevelopmentStorage=true",
    "BATCH_ACCOUNT_URL": "",
    "TERMINATE_QUEUE_NAME": "batch-terminate",
    "POISON_QUEUE_NAME": "batch-terminate-poison",
    "PYTHONUNBUFFERED": "1",
}
# The banner's sweep line; the next run is HH:MM:SSZ today, with the date in front when it falls tomorrow.
SWEEP_LINE = r'^  sweep     sweep_jobs on "0 \*/15 \* \* \* \*" \(next (\d{4}-\d\d-\d\d )?\d\d:\d\d:\d\dZ\)$'


def run_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IDENTITY_", "MSI_", "AzureFunctionsJobHost__"))}
    env.update(CLEAN_ENV)
    return env


class Lines:
    """The merged output of a child process, readable line by line with a deadline."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.seen: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        assert process.stdout is not None
        stdout = process.stdout

        def pump() -> None:
            for line in stdout:
                self._lines.put(line.rstrip("\n"))
            self._lines.put(None)

        threading.Thread(target=pump, daemon=True).start()

    def wait_for(self, pattern: str, timeout: float = 20.0) -> re.Match[str]:
        """The first line (from here on) that matches, or fail showing what was printed."""
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                line = self._lines.get(timeout=remaining)
            except queue.Empty:
                break
            if line is None:
                break
            self.seen.append(line)
            match = re.search(pattern, line)
            if match:
                return match
        raise AssertionError(f"no line matching {pattern!r}; output so far:\n" + "\n".join(self.seen))


@pytest.fixture
def running() -> Iterator[tuple[subprocess.Popen[str], Lines]]:
    """`python -m local` on free ports with in-memory Azurite, as a developer would start it."""
    process = subprocess.Popen(
        [sys.executable, "-m", "local", "--in-memory", "--azurite-port", "0", "--batch-port", "0", "--http-port", "0"],
        cwd=PROJECT_ROOT,
        env=run_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        yield process, Lines(process)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def test_smoke_mode_processes_messages_and_exits_zero() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "local", "--smoke"],
        cwd=PROJECT_ROOT,
        env=run_env(),
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "No BATCH_ACCOUNT_URL: using the local Batch emulator at http://127.0.0.1:" in out
    assert re.search(r"^  alert     POST http://127\.0\.0\.1:\d+/api/alert_terminate\?code=\S+$", out, re.MULTILINE)
    assert re.search(SWEEP_LINE, out, re.MULTILINE)
    assert "smoke: enqueued 4 messages on batch-terminate (2 demo jobs, 1 missing job, 1 invalid)" in out
    assert 'smoke: POST /api/alert_terminate (alert naming demo-job-3) -> 202 {"enqueued": ["demo-job-3"]}' in out
    assert "emulator: job demo-job-1 terminated (reason: smoke test)" in out
    assert "emulator: job demo-job-2 terminated (reason: smoke test)" in out
    assert "emulator: job demo-job-3 terminated (reason: Alert 'smoke-test' fired (Sev4))" in out
    assert "smoke: 2 poison record(s) on batch-terminate-poison (code InvalidMessage, JobNotFound)" in out
    # docs/CONTRACT.md §5b: every terminated job is checked and confirmed; demo-job-2's release task holds it 1.5 s.
    assert re.search(r"^  confirm   checks on batch-terminate-confirm 1 s after each 202, up to 3,", out, re.MULTILINE)
    assert (
        "smoke: confirmed 3 on batch-terminate-confirm (terminating ms: demo-job-1 0, demo-job-2 1500, demo-job-3 0)"
        in out
    )
    # The kill switch (docs/CONTRACT.md §10) on the emulator's demo: the sample budget opens an incident that stops
    # the demo jobs still active, disables demo-schedule and scales its two pools to zero, keeping demo-release-pool.
    assert re.search(r"^  pool      demo-fixed-pool: 3 dedicated \+ 1 low-priority \(demo-schedule:job-1\)$", out, re.M)
    assert re.search(r"^  pool      demo-autoscale-pool: autoscale, evaluated every 5 min, now 2 dedicated", out, re.M)
    schedule = r"^  schedule  demo-schedule: while active, a job demo-schedule:job-N on demo-fixed-pool every 2 s"
    assert re.search(schedule, out, re.M)
    assert re.search(r"^  pool      demo-release-pool: .*, kept: batch-terminator-keep=true", out, re.M)
    assert re.search(
        r"^  incidents on batch-kill-switch, table batchterminatorincidents: approval auto, schedules disabled,"
        r" pools scaled to zero; a budget selects ALERT_SELECT_JOB_ID_PREFIX=demo-$",
        out,
        re.M,
    )
    posted = re.search(
        r"^smoke: POST /api/alert_terminate \(tests/payloads/budget-test-action\.json\) -> 202"
        r' \{"incident": "(budget-[0-9a-f]+)", "enqueued": \[\]\}$',
        out,
        re.M,
    )
    assert posted, out
    incident = posted.group(1)
    lines = out.splitlines()
    # One console line per state change (the §8 records), in order.
    states = [line for line in lines if line.startswith(f"incident: {incident} ")]
    assert states == [
        f"incident: {incident} accepted (budget; jobs=0 schedules=0 pools=0)",
        f"incident: {incident} executed (budget; jobs=3 schedules=1 pools=2)",
        f"incident: {incident} undone (budget; jobs=3 schedules=1 pools=2)",
    ]
    budget = "Budget 'test-budgetName' notification: spent 1111.32 USD, budget 10000 USD, threshold 8000.0"
    for job_id in ("demo-job-4", "demo-job-5", "demo-schedule:job-1"):
        assert f"emulator: job {job_id} terminated (reason: {budget})" in lines
    assert "emulator: schedule demo-schedule is disabled: its recurrence came and created no job" in lines
    assert (
        f"smoke: incident {incident} executed: 3 jobs terminated, demo-schedule disabled (a recurrence passed with no"
        " job), demo-fixed-pool (before: 3+1) and demo-autoscale-pool (before: autoscale every PT5M) at zero,"
        " demo-release-pool skipped (PoolKept)"
    ) in lines
    # docs/CONTRACT.md §5b v3: the held-for-good job's record names its two release-task nodes and the unusable one.
    assert re.search(
        rf"^smoke: demo-job-4 TerminationStuck \(incident {incident}\): releaseTasksRunning=2"
        r" releaseTaskNodes=tvm-\d+_3-\d{8}t\d{6}z,tvm-\d+_5-\d{8}t\d{6}z unusableNodes=1$",
        out,
        re.M,
    )
    assert "emulator: schedule demo-schedule created job demo-schedule:job-2 (on demo-fixed-pool)" in lines
    assert (
        f"smoke: incident {incident} undone: demo-schedule active again (created demo-schedule:job-2),"
        " demo-fixed-pool back to 3+1, demo-autoscale-pool autoscale again"
    ) in lines
    # Terminate side: 5 + 3 (the incident's); checks: 3 or 4 + 5 (demo-job-4's three); kill_switch: plan and undo.
    invocations = re.search(r"^smoke: (\d+) invocations: (\d+) succeeded, 0 failed, 0 moved to poison", out, re.M)
    assert invocations, out
    assert invocations.group(1) == invocations.group(2), out
    assert int(invocations.group(1)) in (18, 19), out
    # The telemetry's last summary line follows the smoke's verdict (printed when the run's objects stop; a periodic
    # one may come just before it).
    after = out.rstrip().splitlines()[lines.index("smoke: OK") + 1 :]
    assert after, out
    assert all(line.startswith("metrics: ") for line in after), out
    assert re.search(
        r"^metrics: terminations confirmed=5 poisoned=3 terminated=6 \| batch calls=\d+ p50<=\d+ms p95<=\d+ms"
        r" \| retries=0"
        r" \| poison writes=3 \| sweep runs=0 \| alert requests=2$",
        out.rstrip().splitlines()[-1],
    )


def test_run_prints_a_working_example_and_stops_cleanly_on_sigint(
    running: tuple[subprocess.Popen[str], Lines],
) -> None:
    process, lines = running
    azurite_port = int(lines.wait_for(r"storage +Azurite at http://127\.0\.0\.1:(\d+)/").group(1))
    lines.wait_for(r"^  confirm   checks on batch-terminate-confirm 5 s after each 202, up to 3, then a Termination")
    lines.wait_for(r"^            \(CONFIRM_AFTER_SECONDS=5 with the local emulator")
    lines.wait_for(r"No BATCH_ACCOUNT_URL: using the local Batch emulator at http://127\.0\.0\.1:\d+")
    lines.wait_for(r"^            \(demo-job-2 has a job release task: terminated, it stays terminating 7\.5 s\)$")
    alert_url = lines.wait_for(r"^  alert     POST (http://127\.0\.0\.1:\d+/api/alert_terminate\?code=\S+)$").group(1)
    lines.wait_for(SWEEP_LINE)
    example = lines.wait_for(r"^  (AzureWebJobsStorage=.*) \S*batch-terminator enqueue demo-job-1 --reason \"try it\"$")
    lines.wait_for(r"enqueue no-such-job --reason \"try it\"   # a JobNotFound poison record$")
    curl = lines.wait_for(r"^  curl -i -X POST '(http://\S+)' -H 'Content-Type: application/json' -d '(.*)'$")
    assert curl.group(1) == alert_url
    budget = lines.wait_for(
        r"^  curl -i -X POST '(\S+)' -H 'Content-Type: application/json' --data @(tests/payloads/budget-\S+\.json)$"
    )
    assert budget.group(1) == alert_url
    for command in ("incidents list", "incidents show ID", "incidents undo ID", "poison list"):
        lines.wait_for(rf"^  \S*batch-terminator {command}( |$)")
    [assignment] = shlex.split(example.group(1))
    connection_string = assignment.removeprefix("AzureWebJobsStorage=")
    lines.wait_for(r"host listening on batch-terminate")

    # What the printed command does: enqueue through the producer API on the printed storage.
    TerminateQueue.connect("batch-terminate", connection_string=connection_string).enqueue_terminate(
        "demo-job-1", "try it"
    )
    lines.wait_for(r"^emulator: job demo-job-1 terminated \(reason: try it\)$")

    # Only the demo jobs exist: the printed no-such-job example ends as a JobNotFound record, shown as it lands.
    TerminateQueue.connect("batch-terminate", connection_string=connection_string).enqueue_terminate(
        "no-such-job", "try it"
    )
    lines.wait_for(r"^poison: job no-such-job: JobNotFound \(.*\) attempts=1$")

    # What the printed curl command does: POST to the local HTTP host with this run's key.
    with requests.Session() as session:
        session.trust_env = False
        answer = session.post(alert_url, data=curl.group(2), headers={"Content-Type": "application/json"}, timeout=10)
    assert (answer.status_code, answer.json()) == (202, {"enqueued": ["demo-job-2"]})
    lines.wait_for(r"^emulator: job demo-job-2 terminated \(reason: try it\)$")

    # With the emulator the checks come 5 s after each 202 (docs/CONTRACT.md §5b); demo-job-1 ends at once.
    lines.wait_for(r"INFO batch_terminator: terminate job=demo-job-1 outcome=confirmed status=200 .* terminating_ms=0$")

    # The printed budget command (docs/CONTRACT.md §10): an incident on the demo jobs still active (demo-job-3..5 and
    # the schedule's job), its schedule and two pools (demo-release-pool is kept); one line per state change.
    with requests.Session() as session:
        session.trust_env = False
        answer = session.post(
            alert_url,
            data=(PROJECT_ROOT / budget.group(2)).read_bytes(),
            headers={"Content-Type": "application/json"},
            timeout=10,
        )
    assert answer.status_code == 202, answer.text
    incident = answer.json()["incident"]
    lines.wait_for(rf"^incident: {incident} accepted \(budget; jobs=0 schedules=0 pools=0\)$")
    lines.wait_for(rf"^incident: {incident} executed \(budget; jobs=4 schedules=1 pools=2\)$")
    held = r"^emulator: job demo-job-4 terminated \(reason: Budget 'test-budgetName' notification: "
    if not any(re.search(held, line) for line in lines.seen):  # printed before or after the executed line
        lines.wait_for(held)

    process.send_signal(signal.SIGINT)
    assert process.wait(20) == 0
    lines.wait_for(r"^stopped\.$")
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", azurite_port)) != 0, "Azurite still listens after the run stopped"
    http_port = int(alert_url.split(":")[2].split("/")[0])
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", http_port)) != 0, "the HTTP host still listens after the run stopped"
