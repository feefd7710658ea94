"""A local timer-trigger host: a function.json NCRONTAB schedule (6 fields, UTC) fired on a background thread."""

from __future__ import annotations

import bisect
import calendar
import importlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any

from azure.functions.timer import TimerRequest

from shared.settings import PROJECT_ROOT

log = logging.getLogger("local.timer")

TimerHandler = Callable[[TimerRequest], None]
Clock = Callable[[], datetime]

# NCRONTAB (what the Functions host uses): second minute hour day month day-of-week, Sunday = 0.
_MONTH_NAMES = tuple(calendar.month_name[1:])
_DAY_NAMES = ("Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday")
# How far ahead a schedule is searched (a Feb 29 that must be a Monday recurs every 28 years).
_SEARCH_YEARS = 400
_SETTING = re.compile(r"%([^%]+)%")
# Wake at least this often while waiting, so a wall-clock jump (suspend, NTP) is noticed.
_MAX_WAIT_SECONDS = 1.0


class ScheduleError(ValueError):
    """The schedule is not a 6-field NCRONTAB expression the host would accept."""


class TimerNotLoaded(Exception):
    """The timer function cannot be loaded (the Functions host would skip it too); the message says why."""


@dataclass(frozen=True)
class _Field:
    """One NCRONTAB field's range and value names."""

    kind: str
    low: int
    high: int
    names: tuple[str, ...] = ()

    def parse(self, text: str) -> tuple[int, ...]:
        """The sorted values the field allows: `*`, `n`, `a-b`, `*/n`, `a-b/n`, `a/n` and comma lists of those."""
        if not text:
            raise ScheduleError(f"the {self.kind} field is empty")
        values: set[int] = set()
        for item in text.split(","):
            values.update(self._item(item))
        return tuple(sorted(values))

    def _item(self, item: str) -> range:
        """The values of one list item."""
        base, slash, step_text = item.partition("/")
        step = 1
        if slash:
            if not step_text.isdigit() or int(step_text) == 0:
                raise ScheduleError(f"{item!r}: the {self.kind} step must be a positive number")
            step = int(step_text)
        if base == "*":
            first, last = self.low, self.high
        elif "-" in base:
            start, _, end = base.partition("-")
            first, last = self._value(start, item), self._value(end, item)
            if first > last:
                raise ScheduleError(f"{item!r}: the {self.kind} range runs backwards")
        else:
            first = self._value(base, item)
            # NCRONTAB reads `5/15` as `5-<max>/15`.
            last = self.high if slash else first
        return range(first, last + 1, step)

    def _value(self, text: str, item: str) -> int:
        """One number (or, for months and days of the week, a name or a prefix of one), range-checked."""
        if text.isdigit():
            value = int(text)
        else:
            matches = [n for n, name in enumerate(self.names) if text and name.lower().startswith(text.lower())]
            if not matches:
                raise ScheduleError(f"{item!r}: {text!r} is not a {self.kind} value")
            value = matches[0] + self.low
        if not self.low <= value <= self.high:
            raise ScheduleError(f"{item!r}: {self.kind} values run from {self.low} to {self.high}")
        return value


_FIELDS = (
    _Field("second", 0, 59),
    _Field("minute", 0, 59),
    _Field("hour", 0, 23),
    _Field("day", 1, 31),
    _Field("month", 1, 12, _MONTH_NAMES),
    _Field("day-of-week", 0, 6, _DAY_NAMES),
)


@dataclass(frozen=True)
class CronSchedule:
    """A parsed NCRONTAB schedule; day and day-of-week must both match (NCRONTAB ANDs them, unlike Vixie cron)."""

    expression: str
    seconds: tuple[int, ...]
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: tuple[int, ...]
    months: tuple[int, ...]
    days_of_week: tuple[int, ...]

    @classmethod
    def parse(cls, expression: str) -> CronSchedule:
        """Parse `second minute hour day month day-of-week`; raise ScheduleError naming the first problem."""
        parts = expression.split()
        if len(parts) != len(_FIELDS):
            raise ScheduleError(
                f"{expression!r} has {len(parts)} field(s); NCRONTAB needs 6: second minute hour day month day-of-week"
            )
        values = [field.parse(part) for field, part in zip(_FIELDS, parts, strict=True)]
        schedule = cls(" ".join(parts), *values)
        if not any(day <= calendar.monthrange(2000, month)[1] for month in schedule.months for day in schedule.days):
            raise ScheduleError(f"{expression!r} names no day that exists in its month(s)")
        return schedule

    def matches(self, moment: datetime) -> bool:
        """Whether the schedule fires at this second (taken in UTC)."""
        moment = _utc(moment)
        return (
            moment.second in self.seconds
            and moment.minute in self.minutes
            and moment.hour in self.hours
            and moment.day in self.days
            and moment.month in self.months
            and _cron_weekday(moment) in self.days_of_week
        )

    def next_after(self, after: datetime) -> datetime:
        """The first occurrence strictly after `after`, in UTC (naive datetimes are read as UTC)."""
        start = _utc(after).replace(microsecond=0) + timedelta(seconds=1)
        day = start.date()
        first_day = True
        last_day = day.replace(year=min(day.year + _SEARCH_YEARS, 9999))
        while day <= last_day:
            if day.month not in self.months:
                day = (day.replace(day=1) + timedelta(days=32)).replace(day=1)
                first_day = False
                continue
            if day.day in self.days and (day.isoweekday() % 7) in self.days_of_week:
                at = self._first_time(start.hour, start.minute, start.second) if first_day else self._earliest()
                if at is not None:
                    return datetime(day.year, day.month, day.day, *at, tzinfo=UTC)
            day += timedelta(days=1)
            first_day = False
        raise ScheduleError(f"{self.expression!r} does not fire within {_SEARCH_YEARS} years")

    def _earliest(self) -> tuple[int, int, int]:
        """The first time of day the schedule allows."""
        return self.hours[0], self.minutes[0], self.seconds[0]

    def _first_time(self, hour: int, minute: int, second: int) -> tuple[int, int, int] | None:
        """The first allowed time of day at or after hour:minute:second, or None when none is left that day."""
        h = _at_or_after(self.hours, hour)
        if h is None:
            return None
        if h > hour:
            return h, self.minutes[0], self.seconds[0]
        m = _at_or_after(self.minutes, minute)
        if m is not None and m > minute:
            return h, m, self.seconds[0]
        if m is not None:
            s = _at_or_after(self.seconds, second)
            if s is not None:
                return h, m, s
            m = _at_or_after(self.minutes, minute + 1)
            if m is not None:
                return h, m, self.seconds[0]
        h = _at_or_after(self.hours, hour + 1)
        return None if h is None else (h, self.minutes[0], self.seconds[0])


def _at_or_after(values: tuple[int, ...], wanted: int) -> int | None:
    """The smallest value >= wanted, or None."""
    index = bisect.bisect_left(values, wanted)
    return values[index] if index < len(values) else None


def _cron_weekday(moment: datetime) -> int:
    """Day of the week as NCRONTAB counts it (Sunday = 0)."""
    return moment.isoweekday() % 7


def _utc(moment: datetime) -> datetime:
    """The moment in UTC; a naive datetime is taken to be UTC already."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def utc_now() -> datetime:
    """The current time in UTC."""
    return datetime.now(UTC)


def resolve_settings(value: str, environ: Mapping[str, str] | None = None) -> str:
    """Replace each `%NAME%` with the app setting's value (empty when unset), as the host does for bindings."""
    env = os.environ if environ is None else environ
    return _SETTING.sub(lambda match: env.get(match.group(1), ""), value)


def format_moment(moment: datetime, now: datetime | None = None) -> str:
    """`12:45:00Z` when the moment is today (UTC), else `2026-05-02 12:45:00Z`."""
    moment, today = _utc(moment), _utc(now or utc_now()).date()
    return moment.strftime("%H:%M:%SZ" if moment.date() == today else "%Y-%m-%d %H:%M:%SZ")


def timer_functions(root: Path = PROJECT_ROOT) -> list[Path]:
    """The function folders under root whose function.json has a timerTrigger binding."""
    return [
        path.parent
        for path in sorted(root.glob("*/function.json"))
        if any(b.get("type") == "timerTrigger" for b in _bindings(path))
    ]


def _bindings(function_json: Path) -> list[dict[str, Any]]:
    """The bindings of one function.json ([] when it is not readable)."""
    try:
        document = json.loads(function_json.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    bindings = document.get("bindings") if isinstance(document, dict) else None
    return [b for b in bindings if isinstance(b, dict)] if isinstance(bindings, list) else []


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
    ) -> None:
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
        cls, function_dir: Path, environ: Mapping[str, str] | None = None, *, clock: Clock = utc_now
    ) -> TimerHost:
        """Load a timer function folder: schedule from function.json (`%NAME%` resolved), handler from its module."""
        name = function_dir.name
        function_json = function_dir / "function.json"
        try:
            document = json.loads(function_json.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise TimerNotLoaded(f"{name}: {function_json.name} is not readable JSON ({exc})") from exc
        binding = next((b for b in _bindings(function_json) if b.get("type") == "timerTrigger"), None)
        if binding is None:
            raise TimerNotLoaded(f"{name}: no timerTrigger binding in {function_json.name}")
        raw = str(binding.get("schedule") or "")
        setting_match = _SETTING.fullmatch(raw.strip())
        setting = setting_match.group(1) if setting_match else None
        expression = resolve_settings(raw, environ).strip()
        if not expression:
            where = f"the setting {setting}" if setting else "its schedule"
            raise TimerNotLoaded(f"{name}: {where} is empty")
        try:
            schedule = CronSchedule.parse(expression)
            schedule.next_after(clock())
        except ScheduleError as exc:
            raise TimerNotLoaded(f"{name}: invalid schedule: {exc}") from exc
        module_name = name if document.get("scriptFile", "__init__.py") == "__init__.py" else None
        if module_name is None:
            module_name = f"{name}.{Path(str(document['scriptFile'])).stem}"
        function = getattr(importlib.import_module(module_name), str(document.get("entryPoint") or "main"))
        parameter = str(binding.get("name") or "timer")

        def handler(timer: TimerRequest) -> None:
            """Call the function with the timer bound to its parameter name, as the worker does."""
            function(**{parameter: timer})

        return cls(name, schedule, handler, setting=setting, clock=clock)

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
            self.handler(request)
        except Exception:
            self.failures += 1
            log.exception("timer %s: failed after %.0f ms", self.name, (time.monotonic() - started) * 1000)
        else:
            log.info("timer %s: succeeded in %.0f ms", self.name, (time.monotonic() - started) * 1000)
        self._last = scheduled or now


__all__ = [
    "CronSchedule",
    "ScheduleError",
    "TimerHost",
    "TimerNotLoaded",
    "format_moment",
    "resolve_settings",
    "timer_functions",
    "utc_now",
]
