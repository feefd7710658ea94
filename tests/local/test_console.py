"""local.console: what `./dev run` prints for the person at the terminal."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from local.console import BUDGET_PAYLOAD, budget_demo_lines, describe_poison

URL = "http://127.0.0.1:7071/api/alert_terminate?code=k"


def with_payload(root: Path) -> Path:
    (root / BUDGET_PAYLOAD).parent.mkdir(parents=True)
    (root / BUDGET_PAYLOAD).write_text("{}")
    return root


def test_the_budget_demo_says_how_to_select_the_demo_jobs_and_what_to_post(tmp_path: Path) -> None:
    lines = budget_demo_lines(URL, {}, with_payload(tmp_path))
    assert "ALERT_SELECT_JOB_ID_PREFIX=demo" in lines[0]
    assert lines[-1] == (
        f"  curl -i -X POST '{URL}' -H 'Content-Type: application/json' --data @tests/payloads/budget-test-action.json"
    )


def test_with_a_selector_set_the_budget_demo_is_the_post_and_the_incident_commands(tmp_path: Path) -> None:
    selectors = {"ALERT_SELECT_JOB_ID_PREFIX": "demo-", "ALERT_SELECT_POOL_ID": " "}
    lines = budget_demo_lines(URL, selectors, with_payload(tmp_path), stuck_after=15)
    assert lines[0].startswith("Budget kill switch (ALERT_SELECT_JOB_ID_PREFIX=demo-): POST Microsoft's sample")
    assert lines[2] == (
        f"  curl -i -X POST '{URL}' -H 'Content-Type: application/json' --data @tests/payloads/budget-test-action.json"
    )
    commands = [line.split("#")[0].strip() for line in lines[3:]]
    assert commands == [
        ".venv/bin/batch-terminator incidents list",
        ".venv/bin/batch-terminator incidents show ID",
        ".venv/bin/batch-terminator incidents undo ID",
        ".venv/bin/batch-terminator poison list",
    ]
    assert "demo-job-4's TerminationStuck record (~15 s after the POST)" in lines[-1]


def test_no_budget_demo_without_the_sample_payload(tmp_path: Path) -> None:
    assert budget_demo_lines(URL, {}, tmp_path) == []


def test_poison_lines_name_the_job_and_code_in_either_encoding() -> None:
    record = {
        "jobId": "j1",
        "error": {"code": "JobNotFound", "message": "The specified job does not exist.\nRequestId:x"},
        "attempts": 1,
    }
    text = json.dumps(record)
    expected = "job j1: JobNotFound (The specified job does not exist.) attempts=1"
    assert describe_poison(text) == expected
    assert describe_poison(base64.b64encode(text.encode()).decode()) == expected
    assert describe_poison('{"jobId": "moved"}').startswith("moved unchanged by the host")
