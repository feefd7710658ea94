"""The Batch emulator and the identity endpoint in a child process, so their CPU is not the client's."""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
from dataclasses import dataclass
from types import TracebackType
from typing import Any


@dataclass(frozen=True)
class Recorded:
    """One request the emulator received, as the bench reads it back: operation is e.g. job.list, pool.get."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    operation: str
    resource_id: str | None


# The child is told what to do with (command, argument) pairs; it answers each with one value.
_COMMANDS = (
    "fetches",
    "latency",
    "terminations",
    "last_request",
    "reset",
    "add_jobs",
    "ledger",
    "lists",
    "fleet",
    "request_count",
    "requests_since",
    "stop",
)


def _serve(conn: multiprocessing.connection.Connection) -> None:
    """Child process: run both services and answer commands until told to stop."""
    import logging
    from datetime import UTC, datetime, timedelta

    from local.batch_emulator import BatchEmulator
    from local.identity import IdentityEndpoint

    logging.disable(logging.CRITICAL)
    with IdentityEndpoint() as identity, BatchEmulator(authorize=identity.is_valid) as batch:
        batch.auto_create_jobs = True
        conn.send({"batch_url": batch.url, "identity_env": identity.environ()})
        while True:
            command, argument = conn.recv()
            if command == "fetches":
                conn.send(identity.fetches)
            elif command == "latency":
                batch.latency = float(argument)
                conn.send(batch.latency)
            elif command == "terminations":
                conn.send(len(batch.terminations))
            elif command == "last_request":
                recorded = batch.requests[-1]
                conn.send((recorded.path, recorded.query, recorded.headers, recorded.body))
            elif command == "add_jobs":
                prefix, count, age_seconds = argument
                created = datetime.now(UTC) - timedelta(seconds=age_seconds)
                for n in range(count):
                    batch.add_job(f"{prefix}-{n:05d}", creation_time=created)
                conn.send(count)
            elif command == "ledger":
                entries = batch.terminations
                conn.send((len(entries), max((entry.at for entry in entries), default=None)))
            elif command == "lists":
                conn.send(sum(1 for recorded in batch.requests if recorded.path.rstrip("/") == "/jobs"))
            elif command == "fleet":
                # Through the emulator's public API: ("pool", id, options), ("jobs", (count, prefix), options),
                # ("schedule", id, options); the created job ids are not sent back (thousands of them).
                made = 0
                for kind, key, options in argument:
                    if kind == "pool":
                        batch.add_pool(key, **options)
                    elif kind == "jobs":
                        count, prefix = key
                        batch.add_jobs(count, prefix, **options)
                    elif kind == "schedule":
                        batch.add_schedule(key, **options)
                    else:
                        raise ValueError(f"unknown fleet entry {kind!r}")
                    made += 1
                conn.send(made)
            elif command == "request_count":
                conn.send(len(batch.requests))
            elif command == "requests_since":
                conn.send(
                    [
                        Recorded(r.method, r.path, dict(r.query), dict(r.headers), r.operation, r.resource_id)
                        for r in batch.requests[int(argument) :]
                    ]
                )
            elif command == "reset":
                # Forget jobs and the request log so the child's memory stays flat over long runs.
                batch.reset()
                conn.send(None)
            else:
                conn.send(None)
                return


class Services:
    """Handle on the child process: the Batch URL, the identity environment, and a few controls."""

    def __init__(self, latency: float = 0.0) -> None:
        self._latency = latency
        self._process: multiprocessing.process.BaseProcess | None = None
        self._conn: multiprocessing.connection.Connection | None = None
        self.batch_url = ""
        self.identity_env: dict[str, str] = {}

    def start(self) -> Services:
        """Start the child and wait until both services listen."""
        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe()
        self._process = context.Process(target=_serve, args=(child,), name="bench-services", daemon=True)
        self._process.start()
        child.close()
        self._conn = parent
        if not parent.poll(60):
            self.stop()
            raise RuntimeError("the emulator process did not start")
        ready = parent.recv()
        self.batch_url = ready["batch_url"]
        self.identity_env = dict(ready["identity_env"])
        self.set_latency(self._latency)
        return self

    def _call(self, command: str, argument: Any = None) -> Any:
        """Send one command and return the child's answer."""
        assert command in _COMMANDS
        if self._conn is None:
            raise RuntimeError("services are not started")
        self._conn.send((command, argument))
        return self._conn.recv()

    def token_fetches(self) -> int:
        """How many tokens the identity endpoint has served so far."""
        return int(self._call("fetches"))

    def set_latency(self, seconds: float) -> None:
        """Make the emulator answer every request after `seconds`."""
        self._call("latency", seconds)

    def terminations(self) -> int:
        """How many jobs the emulator has moved to terminating since the last reset."""
        return int(self._call("terminations"))

    def last_request(self) -> tuple[str, dict[str, str], dict[str, str], bytes]:
        """(path, query, lower-cased headers, body) of the last request the emulator received."""
        path, query, headers, body = self._call("last_request")
        return path, dict(query), dict(headers), body

    def add_jobs(self, prefix: str, count: int, age_seconds: float = 0.0) -> None:
        """Create `count` active jobs `{prefix}-00000`..., created `age_seconds` ago, with no tasks."""
        self._call("add_jobs", (prefix, count, age_seconds))

    def ledger(self) -> tuple[int, float | None]:
        """(terminations since the last reset, wall-clock time of the latest one or None)."""
        count, last = self._call("ledger")
        return int(count), last

    def list_requests(self) -> int:
        """Job - List requests (pages) since the last reset."""
        return int(self._call("lists"))

    def fleet(self, entries: list[tuple[str, Any, dict[str, Any]]]) -> int:
        """Create pools, jobs and job schedules through the emulator's API: ("pool", id, PoolOptions),
        ("jobs", (count, prefix), JobOptions), ("schedule", id, ScheduleOptions); the number of entries made."""
        return int(self._call("fleet", entries))

    def request_count(self) -> int:
        """Requests the emulator received since the last reset (any operation)."""
        return int(self._call("request_count"))

    def requests_since(self, index: int) -> list[Recorded]:
        """The requests received from the `index`-th on (0: since the last reset), oldest first."""
        return list(self._call("requests_since", index))

    def reset(self) -> None:
        """Forget the emulator's jobs and request log."""
        self._call("reset")

    def stop(self) -> None:
        """Stop the child."""
        conn, process = self._conn, self._process
        self._conn = self._process = None
        if conn is not None:
            try:
                conn.send(("stop", None))
                conn.poll(5)
            except (OSError, EOFError):
                pass
            conn.close()
        if process is not None:
            process.join(5)
            if process.is_alive():
                process.terminate()
                process.join(5)

    def __enter__(self) -> Services:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
