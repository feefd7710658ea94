"""How invocations reach Python code: the worker's thread pool and the host's functionTimeout."""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from shared.config.settings import HOST_JSON, parse_timespan
from shared.contract.errors import ConfigurationError

log = logging.getLogger("local.invocations")

T = TypeVar("T")

THREAD_COUNT_SETTING = "PYTHON_THREADPOOL_THREAD_COUNT"
# The host's default when host.json has no functionTimeout and the plan is not Consumption (30 min there, 5 min on
# Consumption); this app's host.json always sets it.
DEFAULT_FUNCTION_TIMEOUT = 30 * 60.0


def default_thread_count(cpus: int | None = None) -> int:
    """ThreadPoolExecutor's own default, which the worker uses when the setting is absent: min(32, cpus + 4)."""
    if cpus is None:
        cpus = os.cpu_count()
    return min(32, (cpus or 1) + 4)


def thread_pool_size(environ: Mapping[str, str] | None = None, cpus: int | None = None) -> int:
    """Threads of the worker's pool for sync functions: PYTHON_THREADPOOL_THREAD_COUNT (>= 1), else the default."""
    # azure_functions_worker/dispatcher.py (4.34.0) _get_sync_tp_max_workers: a value that is not an integer >= 1 is
    # logged and ignored; on Python >= 3.9 no value means ThreadPoolExecutor(max_workers=None).
    env = os.environ if environ is None else environ
    raw = env.get(THREAD_COUNT_SETTING)
    if raw is None or raw == "":
        return default_thread_count(cpus)
    try:
        value = int(raw)
    except ValueError:
        log.warning("%s must be an integer (got %r); using the default", THREAD_COUNT_SETTING, raw)
        return default_thread_count(cpus)
    if value < 1:
        log.warning("%s must be at least 1 (got %d); using the default", THREAD_COUNT_SETTING, value)
        return default_thread_count(cpus)
    return value


def function_timeout(host_json: Path = HOST_JSON) -> float | None:
    """host.json's functionTimeout in seconds; None for "-1" (no limit); the host's default when absent."""
    try:
        document = json.loads(host_json.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        return DEFAULT_FUNCTION_TIMEOUT
    except (OSError, ValueError) as exc:
        raise ConfigurationError("host.json", f"unreadable ({exc})") from exc
    value = document.get("functionTimeout") if isinstance(document, dict) else None
    if value is None:
        return DEFAULT_FUNCTION_TIMEOUT
    if str(value).strip() == "-1":
        return None
    seconds = parse_timespan(value)
    if seconds <= 0:
        raise ConfigurationError("host.json", f"functionTimeout {value!r} must be positive or -1")
    return seconds


def format_timeout(seconds: float) -> str:
    """A TimeSpan as the host writes it in its timeout message, e.g. 00:05:00."""
    whole = round(seconds)
    if abs(seconds - whole) > 1e-6:
        return f"{seconds:g}s"
    return f"{whole // 3600:02d}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


class ThreadPool:
    """A fixed number of daemon threads running submitted calls in order, like the worker's sync executor."""

    def __init__(self, size: int, name: str = "worker") -> None:
        if size < 1:
            raise ValueError("a thread pool needs at least one thread")
        self.size = size
        self._work: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        # Daemon threads, not a ThreadPoolExecutor: a function stuck past the host's stop must not block exit.
        self._threads = [threading.Thread(target=self._loop, name=f"{name}-{n}", daemon=True) for n in range(size)]
        self._busy = 0
        self._lock = threading.Lock()
        for thread in self._threads:
            thread.start()

    @property
    def busy(self) -> int:
        """How many threads are running a call right now."""
        with self._lock:
            return self._busy

    def submit(self, call: Callable[[], None]) -> None:
        """Queue a call; it runs when a thread is free."""
        self._work.put(call)

    def run(self, call: Callable[[], T]) -> T:
        """Run a call on the pool and wait for it (an HTTP or timer invocation); its exception is re-raised."""
        done = threading.Event()
        outcome: list[Any] = []

        def wrapped() -> None:
            try:
                outcome.append((True, call()))
            except BaseException as exc:  # handed back to the waiting caller
                outcome.append((False, exc))
            finally:
                done.set()

        self.submit(wrapped)
        done.wait()
        ok, value = outcome[0]
        if not ok:
            raise value
        return value

    def shutdown(self) -> None:
        """Let each thread end after the call it is running (queued calls still run first)."""
        for _ in self._threads:
            self._work.put(None)

    def _loop(self) -> None:
        """Run calls until the stop sentinel; a failing call never ends the thread."""
        while (call := self._work.get()) is not None:
            with self._lock:
                self._busy += 1
            try:
                call()
            except Exception:
                log.exception("a call on the worker's thread pool failed")
            finally:
                with self._lock:
                    self._busy -= 1


__all__ = [
    "DEFAULT_FUNCTION_TIMEOUT",
    "THREAD_COUNT_SETTING",
    "ThreadPool",
    "default_thread_count",
    "format_timeout",
    "function_timeout",
    "thread_pool_size",
]
