"""local.invocations: the worker's thread pool size and host.json's functionTimeout, read as the real ones are."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest

from local.invocations import (
    DEFAULT_FUNCTION_TIMEOUT,
    ThreadPool,
    default_thread_count,
    format_timeout,
    function_timeout,
    thread_pool_size,
)
from shared.config.settings import HOST_JSON
from shared.contract.errors import ConfigurationError


@pytest.mark.parametrize(("cpus", "expected"), [(1, 5), (2, 6), (8, 12), (28, 32), (64, 32), (None, 5)])
def test_the_default_is_thread_pool_executors_min_32_cpus_plus_4(cpus: int | None, expected: int) -> None:
    assert default_thread_count(cpus or 0) == expected


def test_the_setting_wins_over_the_default() -> None:
    assert thread_pool_size({"PYTHON_THREADPOOL_THREAD_COUNT": "24"}, cpus=1) == 24
    assert thread_pool_size({"PYTHON_THREADPOOL_THREAD_COUNT": "100"}, cpus=1) == 100  # no cap on Python >= 3.9
    assert thread_pool_size({}, cpus=1) == 5
    assert thread_pool_size({"PYTHON_THREADPOOL_THREAD_COUNT": ""}, cpus=1) == 5


@pytest.mark.parametrize("value", ["0", "-3", "many", "2.5"])
def test_an_invalid_setting_is_logged_and_the_default_used(value: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    assert thread_pool_size({"PYTHON_THREADPOOL_THREAD_COUNT": value}, cpus=1) == 5
    assert any("PYTHON_THREADPOOL_THREAD_COUNT" in message for message in caplog.messages)


def test_function_timeout_is_read_from_host_json(tmp_path: Path) -> None:
    assert function_timeout(HOST_JSON) == 300.0  # the app's host.json: 00:05:00
    path = tmp_path / "host.json"
    path.write_text('{"version": "2.0", "functionTimeout": "01:30:00"}')
    assert function_timeout(path) == 5400.0
    path.write_text('{"version": "2.0", "functionTimeout": "-1"}')
    assert function_timeout(path) is None
    path.write_text('{"version": "2.0"}')
    assert function_timeout(path) == DEFAULT_FUNCTION_TIMEOUT
    assert function_timeout(tmp_path / "absent.json") == DEFAULT_FUNCTION_TIMEOUT


@pytest.mark.parametrize("text", ['{"functionTimeout": "soon"}', '{"functionTimeout": "00:00:00"}', "{nope"])
def test_a_bad_function_timeout_names_host_json(tmp_path: Path, text: str) -> None:
    path = tmp_path / "host.json"
    path.write_text(text)
    with pytest.raises(ConfigurationError, match=r"host\.json"):
        function_timeout(path)


def test_format_timeout_writes_a_timespan() -> None:
    assert format_timeout(300) == "00:05:00"
    assert format_timeout(5400) == "01:30:00"
    assert format_timeout(1.5) == "1.5s"


def test_the_pool_runs_at_most_its_size_at_once_and_everything_eventually() -> None:
    pool = ThreadPool(2, name="t")
    lock = threading.Lock()
    running, peak, done = [0], [0], []

    def call() -> None:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.05)
        with lock:
            running[0] -= 1
            done.append(1)

    for _ in range(6):
        pool.submit(call)
    deadline = time.monotonic() + 5
    while len(done) < 6:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    pool.shutdown()
    assert peak[0] == 2
