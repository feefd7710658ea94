"""The soak's host process: terminate_job and confirm_termination (and kill_switch in the kill-switch phase) on
local queue hosts, in a SIGKILLable child."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

from local.functions import FunctionFolder
from local.invocations import ThreadPool
from local.queue_host import Invocation, QueueHost
from shared import telemetry, wiring
from shared.config.settings import PROJECT_ROOT, Settings
from soak.config import (
    SoakConfig,
)

DEFAULT_FUNCTIONS = ("terminate_job", "confirm_termination")


class HostProcess:
    """The local queue hosts running terminate_job and confirm_termination in a child process."""

    def __init__(self, config_path: Path, log_dir: Path) -> None:
        """Remember where the worker's configuration and logs go."""
        self._config_path = config_path
        self._log_dir = log_dir
        self._process: subprocess.Popen[bytes] | None = None
        self._generation = 0

    def start(self) -> None:
        """Start a new host process."""
        self._generation += 1
        output = (self._log_dir / f"host-{self._generation}.out").open("wb")
        self._process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "soak",
                "--worker",
                str(self._config_path),
                "--generation",
                str(self._generation),
            ],
            cwd=PROJECT_ROOT,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        output.close()

    def kill(self) -> None:
        """SIGKILL the host: no drain, in-flight messages stay hidden until their hide expires."""
        if self._process is not None:
            self._process.kill()
            self._process.wait(10)
            self._process = None

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM the host so it drains, then wait for it."""
        process, self._process = self._process, None
        if process is None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)

    @property
    def alive(self) -> bool:
        """Whether the current host process is running."""
        return self._process is not None and self._process.poll() is None


class RecordLog(logging.Handler):
    """Appends each finished-message record (docs/CONTRACT.md §8) as one JSON line: what the app said it did."""

    def __init__(self, path: Path) -> None:
        super().__init__(logging.INFO)
        # Line-buffered, so a SIGKILL loses at most the line being written (whose message is then delivered again).
        self._file = path.open("a", encoding="utf-8", buffering=1)

    def emit(self, record: logging.LogRecord) -> None:
        """Keep a message record's job, message id, outcome, code and time to completion."""
        outcome = getattr(record, "outcome", None)
        if outcome is None or getattr(record, "run", None) is not None:
            return
        line = {
            "j": getattr(record, "jobId", None),
            "m": getattr(record, "messageId", None),
            "o": outcome,
            "c": getattr(record, "code", None),
            "t": getattr(record, telemetry.TERMINATING_ATTRIBUTE, None),
            "i": getattr(record, "incident", None),
        }
        self.acquire()
        try:
            self._file.write(json.dumps(line) + "\n")
        finally:
            self.release()

    def close(self) -> None:
        """Close the file."""
        self._file.close()
        super().close()


def run_worker(config_path: Path, generation: int) -> int:
    """Child process: install the functions with the soak's settings and pump their queues until SIGTERM."""
    document = json.loads(config_path.read_text(encoding="utf-8"))
    os.environ.update(document["env"])
    log_dir = config_path.parent
    logging.basicConfig(
        level=logging.WARNING,
        filename=log_dir / f"host-{generation}.log",
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    config = SoakConfig(**document["config"])
    options = config.queue_options()
    settings = replace(Settings.from_env(), queues=options)
    wiring.install(wiring.Wiring(settings, http_timeout=config.http_timeout, policy=config.policy()))
    outcomes = (log_dir / f"deliveries-{generation}.jsonl").open("a", encoding="utf-8", buffering=1)
    records = RecordLog(log_dir / f"records-{generation}.jsonl")
    logging.getLogger(telemetry.LOGGER_NAME).addHandler(records)
    lock = threading.Lock()

    def record(invocation: Invocation) -> None:
        """Append one delivery outcome (line-buffered, so a SIGKILL loses at most the line being written)."""
        line = json.dumps(
            {
                "id": invocation.message_id,
                "n": invocation.dequeue_count,
                "o": invocation.outcome.value,
                "t": invocation.timed_out,
            }
        )
        with lock:
            outcomes.write(line + "\n")

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    functions = document.get("functions") or list(DEFAULT_FUNCTIONS)
    # One worker process, one thread pool for every function (dispatcher.py _sync_call_tp), sized as deployed.
    pool = ThreadPool(config.threads, name="worker")
    hosts = [
        QueueHost.for_function(
            FunctionFolder.read(PROJECT_ROOT / name),
            settings.storage,
            options,
            hide_seconds=config.hide_seconds,
            drain_seconds=10.0,
            function_timeout_seconds=config.function_timeout,
            on_invocation=record,
            pool=pool,
        )
        for name in functions
    ]
    for host in hosts:
        host.start()
    while not stop.wait(0.2):
        pass
    for host in hosts:
        host.stop()
    pool.shutdown()
    outcomes.close()
    records.close()
    return 0
