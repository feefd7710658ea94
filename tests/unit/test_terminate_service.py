"""The terminate_job service over the real Batch client and the real emulator, in-process: no socket is opened.

The unit tier's pattern (httpx's MockTransport): shared.services.terminate_job.Terminator with its adapters, the
emulator answering through local.in_process.InProcessTransport (tests/unit/conftest.py forbids sockets).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from azure.core.credentials import AccessToken

from local.batch_emulator import BatchEmulator, Fault, JobState
from local.in_process import in_process_session
from shared.batch.client import BatchClient
from shared.batch.jobs import JobGetter
from shared.batch.retry import RetryPolicy
from shared.batch.tokens import TokenProvider
from shared.config.settings import Settings
from shared.contract.errors import RetryLater
from shared.contract.outcome import Outcome
from shared.contract.poison_record import PoisonRecord
from shared.rules.guards import Guards
from shared.services.terminate_job import Delivery, Terminator

URL = "http://127.0.0.1:9"  # never bound: the transport answers before any connection


class Credential:
    """A managed identity that always has a token (the identity path has its own tests)."""

    def get_token(self, *scopes: str, claims: str | None = None, **kwargs: Any) -> AccessToken:
        return AccessToken("token", 2**31)


class Records:
    """Where the service's poison records go (the Storage adapter has its own tests)."""

    def __init__(self) -> None:
        self.written: list[PoisonRecord] = []

    def write(self, record: PoisonRecord) -> None:
        self.written.append(record)


@pytest.fixture
def emulator() -> BatchEmulator:
    return BatchEmulator(port=9)


def terminator(emulator: BatchEmulator, records: Records, **env: str) -> Terminator:
    settings = Settings.from_env(
        {"BATCH_ACCOUNT_URL": URL, "TERMINATE_QUEUE_NAME": "jobs", "AzureWebJobsStorage": "a=b", **env}
    )
    clients = {
        "default": BatchClient(
            settings,
            TokenProvider(Credential()),
            in_process_session(emulator),
            policy=RetryPolicy(max_attempts=3),
            sleep=lambda _: None,
        )
    }
    return Terminator(settings, clients, records, Guards(settings, JobGetter(clients)))  # type: ignore[arg-type]


def deliver(service: Terminator, document: dict[str, Any], attempt: int = 1) -> Any:
    return service.handle(Delivery(json.dumps(document).encode(), message_id="m-1", dequeue_count=attempt))


def test_an_active_job_is_terminated(emulator: BatchEmulator) -> None:
    emulator.add_job("job-1")
    result = deliver(terminator(emulator, Records()), {"jobId": "job-1", "reason": "budget"})
    assert (result.outcome, result.http_status) == (Outcome.TERMINATED, 202)
    assert emulator.job("job-1").terminate_reason == "budget"  # type: ignore[union-attr]


def test_a_completed_job_is_already_terminated(emulator: BatchEmulator) -> None:
    emulator.add_job("job-1", state=JobState.COMPLETED)
    result = deliver(terminator(emulator, Records()), {"jobId": "job-1"})
    assert (result.outcome, result.code) == (Outcome.ALREADY_TERMINATED, "JobCompleted")


def test_a_missing_job_is_one_record_with_batchs_error(emulator: BatchEmulator) -> None:
    records = Records()
    result = deliver(terminator(emulator, records), {"jobId": "ghost"})
    assert result.outcome is Outcome.POISONED
    [record] = records.written
    assert (record.error.code, record.error.http_status, record.job_id) == ("JobNotFound", 404, "ghost")


def test_a_kept_job_is_refused_before_any_write(emulator: BatchEmulator) -> None:
    emulator.add_job("job-1", metadata={"batch-terminator-keep": "true"})
    records = Records()
    deliver(terminator(emulator, records, TERMINATE_HONOR_KEEP="yes"), {"jobId": "job-1"})
    assert [r.error.code for r in records.written] == ["JobProtected"]
    assert [r.method for r in emulator.requests] == ["GET"]


def test_a_transient_failure_raises_with_attempts_left_and_is_recorded_on_the_last(emulator: BatchEmulator) -> None:
    emulator.add_job("job-1")
    emulator.inject(Fault.status(503, "ServerBusy"), times=6)
    records = Records()
    service = terminator(emulator, records)
    with pytest.raises(RetryLater):
        deliver(service, {"jobId": "job-1"}, attempt=1)
    assert records.written == []
    deliver(service, {"jobId": "job-1"}, attempt=5)
    assert [(r.error.code, r.attempts) for r in records.written] == [("ServerBusy", 5)]


def test_a_schedules_job_goes_to_its_percent_encoded_path(emulator: BatchEmulator) -> None:
    emulator.add_job("nightly:job-3")
    result = deliver(terminator(emulator, Records()), {"jobId": "nightly:job-3"})
    assert result.outcome is Outcome.TERMINATED
    assert [r.job_id for r in emulator.requests] == ["nightly:job-3"]
