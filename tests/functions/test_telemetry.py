"""docs/CONTRACT.md §8 through the OpenTelemetry SDK's in-memory exporters: one record per finished message, metrics."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest
from azure.functions.timer import TimerRequest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

import alert_terminate
import sweep_jobs
import terminate_job
from local.batch_emulator import BatchEmulator, Fault
from local.identity import IdentityEndpoint
from local.metrics_summary import summarize
from shared import telemetry
from shared.contract.errors import ConfigurationError, RetryLater
from shared.contract.outcome import Outcome, Result
from tests.conftest import Exported, MessageFactory, Queues

pytestmark = pytest.mark.integration

# What the SDK's LoggingHandler adds to every record on its own.
SDK_ATTRIBUTES = {"code.file.path", "code.function.name", "code.line.number"}


def finished_records(exported: Exported) -> list[dict[str, Any]]:
    """The records of finished messages (those with the §8 outcome and messageId)."""
    return [r for r in exported.records() if "messageId" in r and "outcome" in r]


def only_record(exported: Exported, message: func.QueueMessage) -> dict[str, Any]:
    [record] = [r for r in finished_records(exported) if r["messageId"] == message.id]
    assert set(record) - SDK_ATTRIBUTES == set(telemetry.RECORD_ATTRIBUTES), "exactly the §8 attributes"
    return record


def test_a_terminated_job_logs_one_record_with_batchs_ids_and_counts_it(
    exported: Exported, batch: BatchEmulator, make_message: MessageFactory
) -> None:
    batch.add_job("job-1")
    message = make_message({"jobId": "job-1"}, dequeue_count=2)

    terminate_job.main(message)

    record = only_record(exported, message)
    [termination] = batch.terminations
    assert record["outcome"] == "terminated"
    assert (record["jobId"], record["account"], record["httpStatus"], record["attempt"]) == ("job-1", "default", 202, 2)
    assert record["code"] is None
    assert record["requestId"]
    assert record["clientRequestId"] == termination.client_request_id
    assert isinstance(record["durationMs"], float)
    assert record["durationMs"] >= 0
    assert exported.counts(telemetry.TERMINATIONS) == {(("outcome", "terminated"),): 1}
    [(attrs, latency)] = exported.points(telemetry.BATCH_DURATION)
    assert attrs == {"operation": "terminate", "httpStatus": 202}
    assert latency.count == 1
    assert exported.points(telemetry.POISON_WRITES) == []


def test_an_already_terminated_job_is_its_own_outcome_with_batchs_code(
    exported: Exported, batch: BatchEmulator, make_message: MessageFactory
) -> None:
    batch.add_job("job-1")
    terminate_job.main(make_message({"jobId": "job-1"}))
    again = make_message({"jobId": "job-1"})

    terminate_job.main(again)

    record = only_record(exported, again)
    assert (record["outcome"], record["httpStatus"]) == ("already_terminated", 409)
    assert record["code"] in ("JobBeingTerminated", "JobCompleted")
    counts = exported.counts(telemetry.TERMINATIONS)
    assert counts[(("outcome", "terminated"),)] == 1
    assert counts[(("code", record["code"]), ("outcome", "already_terminated"))] == 1


def test_an_invalid_message_is_poisoned_with_nulls_and_an_error_level_record(
    exported: Exported, batch: BatchEmulator, make_message: MessageFactory, queues: Queues
) -> None:
    message = make_message(b"not json")

    terminate_job.main(message)

    record = only_record(exported, message)
    assert (record["outcome"], record["code"], record["jobId"], record["account"]) == (
        "poisoned",
        "InvalidMessage",
        None,
        None,
    )
    assert (record["httpStatus"], record["requestId"], record["clientRequestId"]) == (None, None, None)
    [log_record] = [r.log_record for r in exported.logs.get_finished_logs() if r.log_record.attributes == record]
    assert log_record.severity_text == "ERROR"
    assert "outcome=poisoned" in str(log_record.body), "a readable text too"
    assert exported.counts(telemetry.POISON_WRITES) == {(("code", "InvalidMessage"),): 1}
    assert exported.counts(telemetry.TERMINATIONS) == {(("code", "InvalidMessage"), ("outcome", "poisoned")): 1}
    assert batch.requests == []
    assert [r["error"]["code"] for r in queues.poison_records()] == ["InvalidMessage"]


def test_a_batch_error_is_poisoned_with_its_status_code_and_ids(
    exported: Exported, batch: BatchEmulator, make_message: MessageFactory
) -> None:
    message = make_message({"jobId": "ghost"})

    terminate_job.main(message)

    record = only_record(exported, message)
    assert (record["outcome"], record["code"], record["httpStatus"], record["jobId"]) == (
        "poisoned",
        "JobNotFound",
        404,
        "ghost",
    )
    assert record["requestId"]
    assert record["clientRequestId"]
    assert exported.counts(telemetry.POISON_WRITES) == {(("code", "JobNotFound"),): 1}
    [(attrs, _)] = exported.points(telemetry.BATCH_DURATION)
    assert attrs == {"operation": "terminate", "httpStatus": 404, "code": "JobNotFound"}


def test_retries_are_counted_and_each_attempt_is_timed(
    exported: Exported, batch: BatchEmulator, make_message: MessageFactory
) -> None:
    batch.add_job("job-1")
    batch.inject(Fault.status(503, "ServerBusy"), times=2)
    message = make_message({"jobId": "job-1"})

    terminate_job.main(message)

    assert only_record(exported, message)["outcome"] == "terminated"
    assert exported.counts(telemetry.BATCH_RETRIES) == {(("code", "ServerBusy"), ("operation", "terminate")): 2}
    latency = {tuple(sorted(a.items())): p.count for a, p in exported.points(telemetry.BATCH_DURATION)}
    assert latency == {
        (("code", "ServerBusy"), ("httpStatus", 503), ("operation", "terminate")): 2,
        (("httpStatus", 202), ("operation", "terminate")): 1,
    }


def test_a_retry_later_is_not_a_finished_message_and_logs_no_record(
    exported: Exported, batch: BatchEmulator, make_message: MessageFactory
) -> None:
    batch.add_job("job-1")
    batch.inject(Fault.status(503, "ServerBusy"), times=100)

    with pytest.raises(RetryLater):
        terminate_job.main(make_message({"jobId": "job-1"}, dequeue_count=1))

    assert finished_records(exported) == []
    assert exported.points(telemetry.TERMINATIONS) == []
    assert exported.counts(telemetry.BATCH_RETRIES)[(("code", "ServerBusy"), ("operation", "terminate"))] >= 1


def test_no_token_identity_secret_or_storage_key_in_any_attribute_or_text(
    exported: Exported,
    batch: BatchEmulator,
    identity: IdentityEndpoint,
    make_message: MessageFactory,
    queues: Queues,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    batch.add_job("job-ok")
    batch.add_job("job-401")
    terminate_job.main(make_message({"jobId": "job-ok", "reason": "budget"}))
    identity.revoke_all()  # the next call is answered 401 and the token refreshed
    terminate_job.main(make_message({"jobId": "job-401"}))
    terminate_job.main(make_message({"jobId": "ghost"}))
    terminate_job.main(make_message(b"{not json"))

    key = dict(part.split("=", 1) for part in queues.connection_string.split(";") if "=" in part)["AccountKey"]
    secrets = [*identity.issued, identity.secret, key, queues.connection_string]
    assert len(identity.issued) >= 2
    texts = [json.dumps(r, default=str) for r in exported.records()] + exported.bodies()
    assert len(finished_records(exported)) == 4
    for text in texts:
        for secret in secrets:
            assert secret not in text
    for attrs, _ in [
        *exported.points(telemetry.TERMINATIONS),
        *exported.points(telemetry.BATCH_DURATION),
        *exported.points(telemetry.BATCH_RETRIES),
        *exported.points(telemetry.POISON_WRITES),
    ]:
        assert not any(secret in str(value) for value in attrs.values() for secret in secrets)


def test_a_sweep_run_logs_one_record_with_its_counts(
    exported: Exported, batch: BatchEmulator, queues: Queues, monkeypatch: pytest.MonkeyPatch
) -> None:
    from datetime import UTC, datetime, timedelta

    for name in ("SWEEP_IDLE_MINUTES", "SWEEP_JOB_ID_PREFIX", "SWEEP_DRY_RUN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SWEEP_MAX_AGE_HOURS", "48")
    batch.add_job("old-1", creation_time=datetime.now(UTC) - timedelta(hours=72))
    batch.add_job("young-1", creation_time=datetime.now(UTC) - timedelta(hours=1))

    sweep_jobs.main(TimerRequest(past_due=False))

    [record] = [r for r in exported.records() if r.get("run") == "sweep"]
    assert {k: record[k] for k in ("outcome", "listed", "matched", "enqueued", "kept", "dryRun")} == {
        "outcome": "ok",
        "listed": 2,
        "matched": 1,
        "enqueued": 1,
        "kept": 0,
        "dryRun": False,
    }
    assert exported.counts(telemetry.SWEEP_RUNS) == {(("outcome", "ok"),): 1}
    reads = [attrs for attrs, _ in exported.points(telemetry.BATCH_DURATION) if attrs["operation"] == "read"]
    assert reads, "Job - List is timed as a read"
    assert all(attrs["httpStatus"] == 200 for attrs in reads)
    assert exported.counts(telemetry.SWEEP_JOBS) == {
        (("stage", "listed"),): 2,
        (("stage", "matched"),): 1,
        (("stage", "enqueued"),): 1,
    }


@pytest.mark.parametrize(
    ("body", "status", "outcome", "code", "enqueued"),
    [
        ({"jobId": "job-7", "reason": "budget"}, 202, "enqueued", None, 1),
        ({"jobId": "a/b"}, 400, "rejected", "InvalidJobId", 0),
    ],
    ids=["enqueued", "rejected"],
)
def test_an_alert_request_logs_one_record_and_counts_it(
    exported: Exported,
    queues: Queues,
    body: dict[str, str],
    status: int,
    outcome: str,
    code: str | None,
    enqueued: int,
) -> None:
    request = func.HttpRequest(method="POST", url="/api/alert_terminate", body=json.dumps(body).encode())

    assert alert_terminate.main(request).status_code == status

    [record] = [r for r in exported.records() if r.get("run") == "alert"]
    assert (record["outcome"], record["httpStatus"], record.get("code"), record["enqueued"]) == (
        outcome,
        status,
        code,
        enqueued,
    )
    expected = {"outcome": outcome, **({"code": code} if code else {})}
    assert exported.counts(telemetry.ALERT_REQUESTS) == {tuple(sorted(expected.items())): 1}
    assert sum(exported.counts(telemetry.ALERT_JOBS).values()) == enqueued
    if enqueued:
        [raw] = queues.client(queues.trigger).peek_messages()
        assert json.loads(raw.content)["jobId"] == "job-7"


def test_record_attributes_follow_the_result() -> None:
    result = Result(Outcome.POISONED, "job-1", 404, "JobNotFound", "r", "c", 5, 0.0123, "m-1", "eu")

    assert telemetry.record_attributes(result) == {
        "jobId": "job-1",
        "account": "eu",
        "outcome": "poisoned",
        "code": "JobNotFound",
        "httpStatus": 404,
        "requestId": "r",
        "clientRequestId": "c",
        "attempt": 5,
        "durationMs": 12.3,
        "messageId": "m-1",
        "incident": None,
    }
    assert tuple(telemetry.record_attributes(result)) == telemetry.RECORD_ATTRIBUTES


def test_a_confirmed_job_records_its_time_from_request_to_completion(caplog: pytest.LogCaptureFixture) -> None:
    """docs/CONTRACT.md §5b, §8: terminatingMs on the confirmed record and in the confirmation histogram."""
    reader = InMemoryMetricReader()
    recorder = telemetry.Telemetry(MeterProvider(metric_readers=[reader]), logger=logging.getLogger("t.confirm"))
    caplog.set_level(logging.INFO, logger="t.confirm")
    recorder.finished(Result(Outcome.CONFIRMED, "job-1", 200, None, "r", "c", terminating_seconds=95.5))
    recorder.finished(Result(Outcome.CONFIRMED, "job-2", 404, "JobNotFound", "r", "c"))  # gone: no time known
    recorder.finished(Result(Outcome.TERMINATED, "job-3", 202, None, "r", "c"))
    timed, gone, terminated = caplog.records
    assert timed.__dict__["terminatingMs"] == 95500.0
    assert timed.getMessage().endswith(" terminating_ms=95500")
    assert gone.__dict__["terminatingMs"] is None
    assert gone.getMessage().endswith(" terminating_ms=unknown")
    assert not hasattr(terminated, "terminatingMs")  # only confirmed records carry it
    data = reader.get_metrics_data()
    assert data is not None
    [histogram] = [
        m
        for r in data.resource_metrics
        for sm in r.scope_metrics
        for m in sm.metrics
        if m.name == telemetry.CONFIRMATION_DURATION
    ]
    [point] = histogram.data.data_points
    assert (histogram.unit, point.count, point.sum) == ("ms", 1, 95500.0)
    assert tuple(point.explicit_bounds) == telemetry.COMPLETION_BOUNDARIES_MS


def test_the_local_summary_line_reads_the_same_metrics() -> None:
    reader = InMemoryMetricReader()
    recorder = telemetry.Telemetry(MeterProvider(metric_readers=[reader]), logger=logging.getLogger("t.summary"))
    for outcome, status in ((Outcome.TERMINATED, 202), (Outcome.TERMINATED, 202), (Outcome.POISONED, 404)):
        recorder.finished(Result(outcome, "j", status, None, None, None))
    for ms in (3, 8, 40):
        recorder.batch_call("terminate", ms / 1000, 202, None)
    recorder.retried("terminate", "ServerBusy")
    recorder.poison_written("JobNotFound")

    data = reader.get_metrics_data()
    assert data is not None
    assert summarize(data) == (
        "metrics: terminations poisoned=1 terminated=2 | batch calls=3 p50<=10ms p95<=40ms"
        " | retries=1 | poison writes=1 | sweep runs=0 | alert requests=0"
    )


def test_a_configuration_error_is_handed_back_with_code_and_setting_but_no_outcome(
    exported: Exported, make_message: MessageFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BATCH_ACCOUNT_URL", "http://batch.example.com")
    message = make_message({"jobId": "job-1"}, dequeue_count=3)

    with pytest.raises(ConfigurationError):
        terminate_job.main(message)

    [record] = [r for r in exported.records() if r.get("messageId") == message.id]
    assert {k: record[k] for k in ("event", "code", "setting", "attempt")} == {
        "event": "configuration_error",
        "code": "ConfigurationError",
        "setting": "BATCH_ACCOUNT_URL",
        "attempt": 3,
    }
    assert "outcome" not in record, "not finished: the host delivers it again"
    assert exported.points(telemetry.TERMINATIONS) == []


def test_the_app_exports_through_opentelemetry_and_samples_nothing() -> None:
    root = Path(__file__).resolve().parents[2]
    host = json.loads((root / "host.json").read_text())
    assert host["telemetryMode"] == "OpenTelemetry"
    assert host["logging"]["applicationInsights"]["samplingSettings"]["isEnabled"] is False
    pins = (root / "requirements.txt").read_text().splitlines()
    assert any(re.fullmatch(r"azure-monitor-opentelemetry==[\d.]+", line) for line in pins)
