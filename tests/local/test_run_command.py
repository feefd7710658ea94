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
    # 5 terminate-side invocations, 3 or 4 checks (demo-job-2's first check may find it still terminating).
    invocations = re.search(r"^smoke: (\d+) invocations: (\d+) succeeded, 0 failed, 0 moved to poison", out, re.M)
    assert invocations, out
    assert invocations.group(1) == invocations.group(2), out
    assert int(invocations.group(1)) in (8, 9), out
    # The telemetry's last summary line follows the smoke's verdict (printed when the run's objects stop).
    assert out.rstrip().splitlines()[-2:][0] == "smoke: OK"
    assert re.search(
        r"^metrics: terminations confirmed=3 poisoned=2 terminated=3 \| batch calls=(7|8) p50<=\d+ms p95<=\d+ms"
        r" \| retries=0"
        r" \| poison writes=2 \| sweep runs=0 \| alert requests=1$",
        out,
        re.MULTILINE,
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

    process.send_signal(signal.SIGINT)
    assert process.wait(20) == 0
    lines.wait_for(r"^stopped\.$")
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", azurite_port)) != 0, "Azurite still listens after the run stopped"
    http_port = int(alert_url.split(":")[2].split("/")[0])
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", http_port)) != 0, "the HTTP host still listens after the run stopped"
