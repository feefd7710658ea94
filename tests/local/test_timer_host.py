"""local.timer_host: loading a timer function from its function.json, and the timer thread that fires it."""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from azure.functions.timer import TimerRequest

from local.invocations import ThreadPool
from local.ncrontab import CronSchedule
from local.timer_host import TimerHost, TimerNotLoaded, format_moment, timer_functions
from shared.config.settings import PROJECT_ROOT


def at(text: str) -> datetime:
    """A UTC moment from `YYYY-MM-DD HH:MM:SS`."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def test_format_moment_shows_the_date_only_when_not_today() -> None:
    now = at("2026-11-25 12:31:07")
    assert format_moment(at("2026-11-25 12:45:00"), now) == "12:45:00Z"
    assert format_moment(at("2026-11-26 00:00:00"), now) == "2026-11-26 00:00:00Z"


# ---- loading sweep_jobs from its function.json


def test_the_app_has_two_timer_functions() -> None:
    assert [f.directory for f in timer_functions()] == [PROJECT_ROOT / "keep_poison", PROJECT_ROOT / "sweep_jobs"]


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

    assert [f.directory for f in timer_functions(tmp_path)] == [folder]
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


def test_a_timer_invocation_runs_on_the_workers_pool_when_given_one() -> None:
    ran_on: list[str] = []
    pool = ThreadPool(1, name="worker")
    timer = TimerHost(
        "pooled",
        CronSchedule.parse("0 0 0 1 1 *"),
        lambda _t: ran_on.append(threading.current_thread().name),
        pool=pool,
    )
    try:
        with timer:
            timer.fire_now()
            deadline = time.monotonic() + 3
            while not ran_on:
                assert time.monotonic() < deadline
                time.sleep(0.02)
    finally:
        pool.shutdown()
    assert ran_on == ["worker-0"]
