"""local.timer_host: NCRONTAB parsing and next occurrences (UTC), and the timer thread that fires a function."""

from __future__ import annotations

import logging
import re
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from azure.functions.timer import TimerRequest

from local.timer_host import (
    CronSchedule,
    ScheduleError,
    TimerHost,
    TimerNotLoaded,
    format_moment,
    resolve_settings,
    timer_functions,
)
from shared.settings import PROJECT_ROOT


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


# ---- parsing and next occurrences


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


def test_settings_are_resolved_from_the_environment() -> None:
    assert resolve_settings("%SWEEP_SCHEDULE%", {"SWEEP_SCHEDULE": "0 */15 * * * *"}) == "0 */15 * * * *"
    assert resolve_settings("%SWEEP_SCHEDULE%", {}) == ""
    assert resolve_settings("0 0 * * * *", {}) == "0 0 * * * *"


def test_format_moment_shows_the_date_only_when_not_today() -> None:
    now = at("2026-11-25 12:31:07")
    assert format_moment(at("2026-11-25 12:45:00"), now) == "12:45:00Z"
    assert format_moment(at("2026-11-26 00:00:00"), now) == "2026-11-26 00:00:00Z"


# ---- loading sweep_jobs from its function.json


def test_the_app_has_one_timer_function() -> None:
    assert timer_functions() == [PROJECT_ROOT / "sweep_jobs"]


def test_sweep_jobs_loads_with_its_schedule_from_the_setting() -> None:
    timer = TimerHost.from_function(PROJECT_ROOT / "sweep_jobs", {"SWEEP_SCHEDULE": "0 */15 * * * *"})
    assert timer.name == "sweep_jobs"
    assert timer.setting == "SWEEP_SCHEDULE"
    assert timer.schedule.expression == "0 */15 * * * *"
    assert timer.next_occurrence.minute in (0, 15, 30, 45)


@pytest.mark.parametrize("value", ["", "   "])
def test_an_empty_schedule_setting_skips_the_function(value: str) -> None:
    with pytest.raises(TimerNotLoaded, match="sweep_jobs: the setting SWEEP_SCHEDULE is empty"):
        TimerHost.from_function(PROJECT_ROOT / "sweep_jobs", {"SWEEP_SCHEDULE": value})


def test_an_invalid_schedule_skips_the_function() -> None:
    with pytest.raises(TimerNotLoaded, match=r"sweep_jobs: invalid schedule: .*has 5 field"):
        TimerHost.from_function(PROJECT_ROOT / "sweep_jobs", {"SWEEP_SCHEDULE": "*/15 * * * *"})


def test_the_real_sweep_jobs_runs_from_the_timer(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    for name in ("SWEEP_MAX_AGE_HOURS", "SWEEP_IDLE_MINUTES", "SWEEP_JOB_ID_PREFIX", "SWEEP_DRY_RUN"):
        monkeypatch.delenv(name, raising=False)
    caplog.set_level(logging.INFO)
    timer = TimerHost.from_function(PROJECT_ROOT / "sweep_jobs", {"SWEEP_SCHEDULE": "0 0 0 1 1 *"})

    with timer:
        timer.fire_now()
        deadline = time.monotonic() + 3
        while (timer.invocations == 0 or timer.busy) and time.monotonic() < deadline:
            time.sleep(0.02)

    assert timer.invocations == 1
    assert timer.failures == 0
    assert "sweep disabled: set SWEEP_MAX_AGE_HOURS and/or SWEEP_IDLE_MINUTES to enable it" in caplog.messages


# ---- the timer thread


def test_fires_on_a_fast_schedule_and_stops_cleanly() -> None:
    fired: list[tuple[float, TimerRequest]] = []
    timer = TimerHost("fast", CronSchedule.parse("*/1 * * * * *"), lambda t: fired.append((time.monotonic(), t)))

    timer.start()
    deadline = time.monotonic() + 3
    while len(fired) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    started = time.monotonic()
    timer.stop()
    stopped_in = time.monotonic() - started

    assert len(fired) >= 2, "the timer did not fire twice within 3 s"
    assert not timer.running
    assert stopped_in < 1.0
    count = len(fired)
    time.sleep(1.2)
    assert len(fired) == count, "the timer fired after stop()"
    request = fired[0][1]
    assert request.past_due is False
    assert "Next" in request.schedule_status
    assert "Last" in fired[1][1].schedule_status


def test_fire_now_runs_once_without_waiting_for_the_schedule() -> None:
    fired = threading.Event()
    timer = TimerHost("yearly", CronSchedule.parse("0 0 0 1 1 *"), lambda _t: fired.set())
    with timer:
        next_before = timer.next_occurrence
        timer.fire_now()
        assert fired.wait(2)
        assert timer.next_occurrence == next_before
    assert timer.invocations == 1


def test_a_failing_invocation_is_logged_and_the_timer_keeps_going(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[int] = []

    def boom(_timer: TimerRequest) -> None:
        calls.append(1)
        raise RuntimeError("boom")

    caplog.set_level(logging.ERROR, logger="local.timer")
    with TimerHost("flaky", CronSchedule.parse("*/1 * * * * *"), boom):
        deadline = time.monotonic() + 3
        while len(calls) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)

    assert len(calls) >= 2
    assert any("timer flaky: failed" in r.getMessage() and r.exc_info for r in caplog.records)


def test_invocations_never_overlap_and_missed_occurrences_are_skipped() -> None:
    active = 0
    peak = 0
    lock = threading.Lock()

    def slow(_timer: TimerRequest) -> None:
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        time.sleep(0.8)
        with lock:
            active -= 1

    timer = TimerHost("slow", CronSchedule.parse("* * * * * *"), slow)
    with timer:
        timer.fire_now()
        time.sleep(1.3)
    assert peak == 1
    # 1.3 s of a per-second schedule with 0.8 s invocations: at most two runs, none queued up behind them.
    assert timer.invocations <= 2


def test_a_timer_function_in_another_folder_gets_its_binding_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "nightly_tick_fn"
    folder.mkdir()
    (folder / "function.json").write_text(
        '{"bindings": [{"name": "mytimer", "type": "timerTrigger", "direction": "in", "schedule": "0 0 2 * * *"}]}'
    )
    (folder / "__init__.py").write_text(
        "seen = []\n\ndef main(mytimer):\n    seen.append(mytimer.past_due)\n",
    )
    monkeypatch.syspath_prepend(str(tmp_path))

    assert timer_functions(tmp_path) == [folder]
    timer = TimerHost.from_function(folder, {})
    assert timer.setting is None
    with timer:
        timer.fire_now()
        deadline = time.monotonic() + 2
        while timer.invocations == 0 or timer.busy:
            assert time.monotonic() < deadline
            time.sleep(0.02)
    import nightly_tick_fn  # type: ignore[import-not-found]

    assert nightly_tick_fn.seen == [False]
