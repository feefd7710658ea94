"""A local timer-trigger host: a function.json NCRONTAB schedule (6 fields, UTC) fired on a background thread."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from azure.functions.timer import TimerRequest

from local.functions import FunctionFolder, FunctionLoadError, function_folders, resolve_settings, setting_name
from local.invocations import ThreadPool
from local.ncrontab import CronSchedule, ScheduleError, as_utc
from shared.config.settings import PROJECT_ROOT

log = logging.getLogger("local.timer")

TimerHandler = Callable[[TimerRequest], None]
Clock = Callable[[], datetime]

# Wake at least this often while waiting, so a wall-clock jump (suspend, NTP) is noticed.
_MAX_WAIT_SECONDS = 1.0


class TimerNotLoaded(Exception):
    """The timer function cannot be loaded (the Functions host would skip it too); the message says why."""


def utc_now() -> datetime:
    """The current time in UTC."""
    return datetime.now(UTC)


def format_moment(moment: datetime, now: datetime | None = None) -> str:
    """`12:45:00Z` when the moment is today (UTC), else `2026-05-02 12:45:00Z`."""
    moment, today = as_utc(moment), as_utc(now or utc_now()).date()
    return moment.strftime("%H:%M:%SZ" if moment.date() == today else "%Y-%m-%d %H:%M:%SZ")


def timer_functions(root: Path = PROJECT_ROOT) -> list[FunctionFolder]:
    """The function folders under root whose trigger is a timerTrigger."""
    return function_folders(root, "timerTrigger")


class TimerHost:
    """Fires one timer function at each occurrence of its schedule (and on demand), one invocation at a time."""

    def __init__(
        self,
        name: str,
        schedule: CronSchedule,
        handler: TimerHandler,
        *,
        setting: str | None = None,
        clock: Clock = utc_now,
        pool: ThreadPool | None = None,
    ) -> None:
        self.pool = pool  # the worker's one thread pool, when the run shares it
        self.name = name
        self.schedule = schedule
        self.setting = setting
        self.handler = handler
        self.clock = clock
        self.invocations = 0
        self.failures = 0
        self._condition = threading.Condition()
        self._stopping = False
        self._fire_now = 0
        self._running = False
        self._next: datetime | None = None
        self._last: datetime | None = None
        self._thread: threading.Thread | None = None

    @classmethod
    def from_function(
        cls,
        function: FunctionFolder | Path,
        environ: Mapping[str, str] | None = None,
        *,
        clock: Clock = utc_now,
        pool: ThreadPool | None = None,
    ) -> TimerHost:
        """Load a timer function: schedule from function.json (`%NAME%` resolved), handler from its entry point."""
        try:
            folder = function if isinstance(function, FunctionFolder) else FunctionFolder.read(function)
        except FunctionLoadError as exc:
            raise TimerNotLoaded(str(exc)) from exc
        name = folder.name
        binding = folder.binding("timerTrigger")
        if binding is None:
            raise TimerNotLoaded(f"{name}: no timerTrigger binding in function.json")
        raw = str(binding.get("schedule") or "")
        setting = setting_name(raw)
        expression = resolve_settings(raw, environ).strip()
        if not expression:
            where = f"the setting {setting}" if setting else "its schedule"
            raise TimerNotLoaded(f"{name}: {where} is empty")
        try:
            schedule = CronSchedule.parse(expression)
            schedule.next_after(clock())
        except ScheduleError as exc:
            raise TimerNotLoaded(f"{name}: invalid schedule: {exc}") from exc
        try:
            handler = folder.trigger_handler()
        except FunctionLoadError as exc:
            raise TimerNotLoaded(str(exc)) from exc
        return cls(name, schedule, handler, setting=setting, clock=clock, pool=pool)

    @property
    def next_occurrence(self) -> datetime:
        """When the schedule fires next (as planned by the running thread, else computed from now)."""
        with self._condition:
            planned = self._next
        return planned or self.schedule.next_after(self.clock())

    @property
    def busy(self) -> bool:
        """Whether an invocation runs or an on-demand one is waiting."""
        with self._condition:
            return self._running or self._fire_now > 0

    @property
    def running(self) -> bool:
        """Whether the timer thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def fire_now(self) -> None:
        """Invoke the function once as soon as the timer thread is free (without changing the schedule)."""
        with self._condition:
            self._fire_now += 1
            self._condition.notify_all()

    def start(self) -> TimerHost:
        """Run the timer on a daemon thread."""
        if self._thread is not None:
            raise RuntimeError(f"the timer {self.name} is already started")
        with self._condition:
            self._stopping = False
            self._next = self.schedule.next_after(self.clock())
        self._thread = threading.Thread(target=self._loop, name=f"timer:{self.name}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop firing; wait up to `timeout` for a running invocation to finish."""
        with self._condition:
            self._stopping = True
            self._fire_now = 0
            self._condition.notify_all()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                log.warning(
                    "timer %s: an invocation is still running after %gs; not waiting for it", self.name, timeout
                )

    def __enter__(self) -> TimerHost:
        """Start."""
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Stop."""
        self.stop()

    def _loop(self) -> None:
        """Wait for the next occurrence or an on-demand request, invoke, repeat until stopped."""
        log.info("timer %s on %r, next %s", self.name, self.schedule.expression, self.next_occurrence.isoformat())
        while True:
            with self._condition:
                while not self._stopping and not self._fire_now:
                    due = self._next or self.schedule.next_after(self.clock())
                    remaining = (due - self.clock()).total_seconds()
                    if remaining <= 0:
                        break
                    self._condition.wait(min(remaining, _MAX_WAIT_SECONDS))
                if self._stopping:
                    return
                on_demand = self._fire_now > 0
                if on_demand:
                    self._fire_now -= 1
                scheduled = None if on_demand else self._next
                self._running = True
            try:
                self._invoke(scheduled)
            finally:
                with self._condition:
                    self._running = False
                    if scheduled is not None:
                        # Occurrences missed while the invocation ran are skipped, as the host does.
                        self._next = self.schedule.next_after(max(self.clock(), scheduled))

    def _invoke(self, scheduled: datetime | None) -> None:
        """One invocation with the TimerRequest the host would pass; a failure is logged, never raised."""
        now = self.clock()
        following = self.schedule.next_after(scheduled or now)
        status: dict[str, Any] = {"Next": following.isoformat(), "LastUpdated": now.isoformat()}
        if self._last is not None:
            status["Last"] = self._last.isoformat()
        request = TimerRequest(past_due=False, schedule_status=status, schedule={"AdjustForDST": True})
        why = f"scheduled {format_moment(scheduled, now)}" if scheduled is not None else "on demand"
        log.info("timer %s: executing (%s)", self.name, why)
        started = time.monotonic()
        self.invocations += 1
        try:
            if self.pool is None:
                self.handler(request)
            else:
                self.pool.run(lambda: self.handler(request))
        except Exception:
            self.failures += 1
            log.exception("timer %s: failed after %.0f ms", self.name, (time.monotonic() - started) * 1000)
        else:
            log.info("timer %s: succeeded in %.0f ms", self.name, (time.monotonic() - started) * 1000)
        self._last = scheduled or now


__all__ = ["TimerHost", "TimerNotLoaded", "format_moment", "timer_functions", "utc_now"]
