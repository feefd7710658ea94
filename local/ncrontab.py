"""NCRONTAB schedules as the Functions timer trigger reads them: 6 fields (second first), UTC, day AND weekday."""

from __future__ import annotations

import bisect
import calendar
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

# NCRONTAB (what the Functions host uses): second minute hour day month day-of-week, Sunday = 0.
_MONTH_NAMES = tuple(calendar.month_name[1:])
_DAY_NAMES = ("Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday")
# How far ahead a schedule is searched (a Feb 29 that must be a Monday recurs every 28 years).
_SEARCH_YEARS = 400


class ScheduleError(ValueError):
    """The schedule is not a 6-field NCRONTAB expression the host would accept."""


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
        moment = as_utc(moment)
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
        start = as_utc(after).replace(microsecond=0) + timedelta(seconds=1)
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


def as_utc(moment: datetime) -> datetime:
    """The moment in UTC; a naive datetime is taken to be UTC already."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


__all__ = ["CronSchedule", "ScheduleError", "as_utc"]
