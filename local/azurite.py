"""Start and stop Azurite's queue and table services (the npm package pinned in package.json)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
from collections import deque
from pathlib import Path
from types import TracebackType

PROJECT_ROOT = Path(__file__).resolve().parent.parent
AZURITE_BIN = PROJECT_ROOT / "node_modules" / ".bin" / "azurite-queue"
AZURITE_TABLE_BIN = PROJECT_ROOT / "node_modules" / ".bin" / "azurite-table"
# Azurite's documented well-known development account; not a secret.
ACCOUNT_NAME = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
PR_SET_PDEATHSIG = 1
_LISTENING = {
    "queue": re.compile(r"Queue service successfully listens on http://[^:]+:(\d+)"),
    "table": re.compile(r"Table service successfully (?:listens|started) on \S+?:(\d+)"),
}


def _die_with_parent() -> None:
    """In the child: ask Linux for SIGTERM when the starting thread ends, so a killed run leaves no Azurite behind."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def ensure_installed() -> Path:
    """Install the pinned Azurite with `npm ci` when node_modules lacks it."""
    if not AZURITE_BIN.exists():
        npm = shutil.which("npm")
        if npm is None:
            raise RuntimeError("npm is required to run Azurite (install Node.js 20+)")
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=PROJECT_ROOT, check=True)
    return AZURITE_BIN


def connection_string(port: int, host: str = "127.0.0.1", table_port: int | None = None) -> str:
    """The connection string of Azurite's queue service on this port (and its table service on table_port)."""
    text = (
        f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT_NAME};AccountKey={ACCOUNT_KEY};"
        f"QueueEndpoint=http://{host}:{port}/{ACCOUNT_NAME};"
    )
    if table_port is not None:
        text += f"TableEndpoint=http://{host}:{table_port}/{ACCOUNT_NAME};"
    return text


class _Service:
    """One Azurite service process (`azurite-queue` or `azurite-table`), ready once it says it listens."""

    def __init__(self, name: str, binary: Path, port: int, host: str, location: Path | None) -> None:
        self.name = name
        self.binary = binary
        self.port = port
        self.host = host
        self.location = location
        self._process: subprocess.Popen[str] | None = None
        self._output: deque[str] = deque(maxlen=50)

    def start(self, timeout: float) -> None:
        """Start the process and wait until it listens (RuntimeError with its output when it does not)."""
        ensure_installed()
        if not self.port and self.name == "table":
            # The table service prints the port it was given (0 stays 0), so it is given a free one.
            self.port = _free_port(self.host)
        args = [
            str(self.binary),
            f"--{self.name}Host",
            self.host,
            f"--{self.name}Port",
            str(self.port),
            "--skipApiVersionCheck",
            "--disableTelemetry",
        ]
        if self.location is None:
            args.append("--inMemoryPersistence")
        else:
            self.location.mkdir(parents=True, exist_ok=True)
            args += ["--location", str(self.location)]
        self._process = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=PROJECT_ROOT,
            env={**os.environ, "NODE_NO_WARNINGS": "1"},
            # Its own session: a terminal's Ctrl-C reaches the host, which drains before stopping Azurite.
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        ready = threading.Event()
        threading.Thread(target=self._pump, args=(ready,), daemon=True).start()
        if not ready.wait(timeout) or self._process.poll() is not None:
            output = "".join(self._output)
            self.stop()
            raise RuntimeError(f"Azurite's {self.name} service did not start:\n{output}")

    def _pump(self, ready: threading.Event) -> None:
        assert self._process is not None
        assert self._process.stdout is not None
        listening = _LISTENING[self.name]
        for line in self._process.stdout:
            self._output.append(line)
            match = listening.search(line)
            if match:
                self.port = int(match.group(1))
                ready.set()
        ready.set()  # the process ended; start() sees poll() is not None

    def stop(self) -> None:
        """Terminate the process (kill it if it does not end)."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


class Azurite:
    """Azurite's queue service child process, and its table service (the incident table) beside it; in memory,
    or persisted in `location`."""

    def __init__(
        self,
        port: int = 0,
        *,
        location: Path | None = None,
        host: str = "127.0.0.1",
        table_port: int | None = 0,
    ) -> None:
        self.host = host
        self.location = location
        self.queue = _Service("queue", AZURITE_BIN, port, host, location)
        # None: no table service; 0: a free port
        self.table: _Service | None = (
            None if table_port is None else _Service("table", AZURITE_TABLE_BIN, table_port, host, location)
        )

    @property
    def port(self) -> int:
        """The queue service's port."""
        return self.queue.port

    @property
    def table_port(self) -> int | None:
        """The table service's port (None when it was not asked for)."""
        return self.table.port if self.table is not None else None

    @property
    def connection_string(self) -> str:
        """Connection string for the running services (QueueEndpoint, and TableEndpoint)."""
        return connection_string(self.port, self.host, self.table_port)

    def start(self, timeout: float = 60.0) -> Azurite:
        """Start Azurite's services and wait until they listen."""
        for service in (self.queue, self.table):
            if service is None:
                continue
            try:
                service.start(timeout)
            except RuntimeError:
                self.stop()
                raise
        return self

    def stop(self) -> None:
        """Stop the processes (their in-memory data goes with them)."""
        if self.table is not None:
            self.table.stop()
        self.queue.stop()

    def __enter__(self) -> Azurite:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _free_port(host: str) -> int:
    """A port nothing listens on now (the service binds it a moment later)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])
