"""local.ncrontab: NCRONTAB parsing and next occurrences (UTC), as the Functions timer trigger reads schedules."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest

from local.ncrontab import CronSchedule, ScheduleError


def at(text: str) -> datetime:
    """A UTC moment from `YYYY-MM-DD HH:MM:SS`."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def following(expression: str, after: str, count: int = 1) -> list[str]:
    """The next `count` occurrences after a moment, as `YYYY-MM-DD HH:MM:SS` strings."""
    schedule = CronSchedule.parse(expression)
    moment = at(after)
    found: list[str] = []
    for _ in range(count):
        moment = schedule.next_after(moment)
        found.append(moment.strftime("%Y-%m-%d %H:%M:%S"))
    return found


def test_every_15_minutes_on_the_quarter_hour() -> None:
    assert following("0 */15 * * * *", "2026-11-25 12:31:07", 4) == [
        "2026-11-25 12:45:00",
        "2026-11-25 13:00:00",
        "2026-11-25 13:15:00",
        "2026-11-25 13:30:00",
    ]


def test_an_occurrence_is_strictly_after_the_base_time() -> None:
    assert following("0 */15 * * * *", "2026-11-25 12:45:00") == ["2026-11-25 13:00:00"]
    assert following("0 */15 * * * *", "2026-11-25 12:44:59.999") == ["2026-11-25 12:45:00"]


def test_every_second_and_every_five_minutes() -> None:
    assert following("* * * * * *", "2026-11-25 12:00:00", 2) == ["2026-11-25 12:00:01", "2026-11-25 12:00:02"]
    assert following("0 */5 * * * *", "2026-11-25 23:58:30", 2) == ["2026-11-26 00:00:00", "2026-11-26 00:05:00"]


def test_ranges_steps_and_lists() -> None:
    schedule = CronSchedule.parse("10,40 5-20/5 8-10,22 * * *")
    assert schedule.seconds == (10, 40)
    assert schedule.minutes == (5, 10, 15, 20)
    assert schedule.hours == (8, 9, 10, 22)
    assert following("10,40 5-20/5 8-10,22 * * *", "2026-11-25 10:20:40", 3) == [
        "2026-11-25 22:05:10",
        "2026-11-25 22:05:40",
        "2026-11-25 22:10:10",
    ]


def test_a_number_with_a_step_runs_to_the_end_of_the_range() -> None:
    assert CronSchedule.parse("0 5/20 * * * *").minutes == (5, 25, 45)


def test_rollover_across_midnight_month_and_year() -> None:
    assert following("30 59 23 * * *", "2026-12-31 23:59:30", 1) == ["2027-01-01 23:59:30"]
    assert following("0 0 0 1 * *", "2026-12-15 08:00:00", 2) == ["2027-01-01 00:00:00", "2027-02-01 00:00:00"]


def test_day_of_week_weekdays_only() -> None:
    # 2026-11-27 is a Friday: the next weekday mornings are Monday to Wednesday.
    assert following("0 30 9 * * 1-5", "2026-11-27 10:00:00", 3) == [
        "2026-11-30 09:30:00",
        "2026-12-01 09:30:00",
        "2026-12-02 09:30:00",
    ]


def test_sunday_is_zero_and_names_work() -> None:
    assert CronSchedule.parse("0 0 0 * * Sun").days_of_week == (0,)
    assert CronSchedule.parse("0 0 0 * * mon-fri").days_of_week == (1, 2, 3, 4, 5)
    assert CronSchedule.parse("0 0 0 * Jan,Jul *").months == (1, 7)
    assert following("0 0 6 * * Sun", "2026-11-25 00:00:00") == ["2026-11-29 06:00:00"]


def test_day_and_day_of_week_must_both_match_as_in_ncrontab() -> None:
    # NCRONTAB ANDs them (Vixie cron would OR): Friday the 13th, not every Friday and every 13th.
    assert following("0 0 0 13 * 5", "2026-01-01 00:00:00", 3) == [
        "2026-02-13 00:00:00",
        "2026-03-13 00:00:00",
        "2026-11-13 00:00:00",
    ]


def test_days_missing_from_a_month_are_skipped() -> None:
    assert following("0 0 12 31 * *", "2026-04-01 00:00:00", 2) == ["2026-05-31 12:00:00", "2026-07-31 12:00:00"]
    assert following("0 0 0 29 2 *", "2026-03-01 00:00:00") == ["2028-02-29 00:00:00"]


def test_matches_agrees_with_next_after() -> None:
    schedule = CronSchedule.parse("*/20 */7 3-5 * * 2,4")
    moment = at("2026-11-25 00:00:00")
    for _ in range(50):
        moment = schedule.next_after(moment)
        assert schedule.matches(moment)


def test_naive_base_times_are_utc_and_results_are_utc() -> None:
    result = CronSchedule.parse("0 0 * * * *").next_after(datetime(2026, 11, 25, 12, 30))
    assert result == at("2026-11-25 13:00:00")
    assert result.tzinfo is UTC


@pytest.mark.parametrize(
    ("expression", "problem"),
    [
        ("*/15 * * * *", "has 5 field(s)"),
        ("0 */15 * * * * *", "has 7 field(s)"),
        ("60 * * * * *", "second values run from 0 to 59"),
        ("0 0 24 * * *", "hour values run from 0 to 23"),
        ("0 0 0 0 * *", "day values run from 1 to 31"),
        ("0 0 0 * 13 *", "month values run from 1 to 12"),
        ("0 0 0 * * 7", "day-of-week values run from 0 to 6"),
        ("*/0 * * * * *", "step must be a positive number"),
        ("0 30-10 * * * *", "range runs backwards"),
        ("0 0 0 * * Funday", "is not a day-of-week value"),
        ("0 0 0 1,,2 * *", "is not a day value"),
        ("0 0 0 30 2 *", "names no day that exists"),
        ("", "has 0 field(s)"),
    ],
)
def test_invalid_schedules_name_the_problem(expression: str, problem: str) -> None:
    with pytest.raises(ScheduleError, match=re.escape(problem)):
        CronSchedule.parse(expression)
