"""Start and stop Azurite's queue service (the npm package pinned in package.json)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import signal
import subprocess
import threading
from collections import deque
from pathlib import Path
from types import TracebackType

PROJECT_ROOT = Path(__file__).resolve().parent.parent
AZURITE_BIN = PROJECT_ROOT / "node_modules" / ".bin" / "azurite-queue"
# Azurite's documented well-known development account; not a secret.
ACCOUNT_NAME = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
PR_SET_PDEATHSIG = 1
_LISTENING = re.compile(r"Queue service successfully listens on http://[^:]+:(\d+)")


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


def connection_string(port: int, host: str = "127.0.0.1") -> str:
    """The connection string of Azurite's queue service on this port."""
    return (
        f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT_NAME};AccountKey={ACCOUNT_KEY};"
        f"QueueEndpoint=http://{host}:{port}/{ACCOUNT_NAME};"
    )


class Azurite:
    """An Azurite queue service child process; in memory, or persisted in `location`."""

    def __init__(self, port: int = 0, *, location: Path | None = None, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = port
        self.location = location
        self._process: subprocess.Popen[str] | None = None
        self._output: deque[str] = deque(maxlen=50)

    @property
    def connection_string(self) -> str:
        """Connection string for the running service."""
        return connection_string(self.port, self.host)

    def start(self, timeout: float = 60.0) -> Azurite:
        """Start Azurite and wait until it listens."""
        binary = ensure_installed()
        args = [
            str(binary),
            "--queueHost",
            self.host,
            "--queuePort",
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
            raise RuntimeError(f"Azurite did not start:\n{output}")
        return self

    def _pump(self, ready: threading.Event) -> None:
        assert self._process is not None
        assert self._process.stdout is not None
        for line in self._process.stdout:
            self._output.append(line)
            match = _LISTENING.search(line)
            if match:
                self.port = int(match.group(1))
                ready.set()
        ready.set()  # the process ended; start() sees poll() is not None

    def stop(self) -> None:
        """Stop the process (its in-memory data goes with it)."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)

    def __enter__(self) -> Azurite:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
