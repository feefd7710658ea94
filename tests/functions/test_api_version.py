"""The api-version rules of docs/CONTRACT.md §2-§4: the current default, the version's own query names, the form
check, the retiring warning, and the ids Batch gives the jobs of a job schedule."""

from __future__ import annotations

import logging

import pytest

import terminate_job
from local.batch_emulator import BatchEmulator
from shared import wiring
from shared.contract.errors import ConfigurationError
from tests.conftest import MessageFactory, Queues

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("no_sleep")]


def retiring(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "code", None) == "ApiVersionRetiring"]


def test_the_default_is_2025_06_01_with_its_timeout_spelling(
    batch: BatchEmulator, make_message: MessageFactory, caplog: pytest.LogCaptureFixture
) -> None:
    batch.add_job("job-1")
    terminate_job.main(make_message({"jobId": "job-1", "force": True}))
    [sent] = [r for r in batch.requests if r.method == "POST"]
    assert sent.query == {"api-version": "2025-06-01", "timeOut": "30", "force": "true"}
    assert retiring(caplog) == []


@pytest.mark.parametrize(
    ("version", "name"),
    [("2023-11-01.18.0", "timeout"), ("2024-02-01.19.0", "timeout"), ("2024-07-01.20.0", "timeOut")],
)
def test_an_older_version_is_spelled_as_its_spec_and_warned_once_per_process(
    monkeypatch: pytest.MonkeyPatch,
    batch: BatchEmulator,
    make_message: MessageFactory,
    caplog: pytest.LogCaptureFixture,
    version: str,
    name: str,
) -> None:
    monkeypatch.setenv("BATCH_API_VERSION", version)
    batch.add_job("job-1")
    batch.add_job("job-2")
    terminate_job.main(make_message({"jobId": "job-1"}))
    wiring.install(None)  # a second Wiring in the same process warns no more
    terminate_job.main(make_message({"jobId": "job-2"}))
    sent = [r for r in batch.requests if r.method == "POST"]
    assert [r.query for r in sent] == [{"api-version": version, name: "30"}] * 2
    [warning] = retiring(caplog)
    assert (warning.levelno, warning.name, getattr(warning, "apiVersion", None)) == (
        logging.WARNING,
        "batch_terminator",
        version,
    )


@pytest.mark.parametrize("bad", ["latest", "2025-06-01-preview", "2024-07-01.20", "v2025-06-01", "2025-6-1"])
def test_a_version_not_of_the_form_is_a_configuration_error_before_any_request(
    monkeypatch: pytest.MonkeyPatch, batch: BatchEmulator, make_message: MessageFactory, queues: Queues, bad: str
) -> None:
    monkeypatch.setenv("BATCH_API_VERSION", bad)
    batch.add_job("job-1")
    with pytest.raises(ConfigurationError) as caught:
        terminate_job.main(make_message({"jobId": "job-1"}))
    assert caught.value.setting == "BATCH_API_VERSION"
    assert batch.requests == []
    assert queues.poison_records() == []


def test_a_job_a_schedule_created_is_terminated_with_its_id_percent_encoded(
    batch: BatchEmulator, make_message: MessageFactory, queues: Queues
) -> None:
    batch.add_job("nightly:job-7")
    terminate_job.main(make_message({"jobId": "nightly:job-7", "reason": "runaway"}))
    [sent] = [r for r in batch.requests if r.method == "POST"]
    assert sent.path in ("/jobs/nightly%3Ajob-7/terminate", "/jobs/nightly:job-7/terminate")
    assert sent.job_id == "nightly:job-7"
    assert batch.job("nightly:job-7") is not None
    assert batch.job("nightly:job-7").terminate_reason == "runaway"  # type: ignore[union-attr]
    assert queues.poison_records() == []


@pytest.mark.parametrize(
    "bad", ["a:b", "nightly:job-", "nightly:job-x", ":job-1", "a:job-1:job-2", "x" * 65 + ":job-1"]
)
def test_other_ids_with_a_colon_stay_invalid(
    batch: BatchEmulator, make_message: MessageFactory, queues: Queues, bad: str
) -> None:
    terminate_job.main(make_message({"jobId": bad}))
    [record] = queues.poison_records()
    assert record["error"]["code"] == "InvalidMessage"
    assert [v["key"] for v in record["error"]["values"]] == ["jobId"]
    assert batch.requests == []
