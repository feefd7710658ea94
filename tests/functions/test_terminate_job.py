"""terminate_job.main end to end: real QueueMessage, Azurite, Batch emulator, azure-identity over loopback."""

from __future__ import annotations

import base64
import json
import re
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path

import azure.functions as func
import pytest
from azure.functions.timer import TimerRequest
from azure.storage.queue import QueueClient

import alert_terminate
import sweep_jobs
import terminate_job
from local.batch_emulator import BatchEmulator, Fault, JobState
from local.identity import IdentityEndpoint
from shared import wiring
from shared.contract.errors import ConfigurationError, PoisonWriteFailed, RetryLater
from shared.storage.poison_writer import PoisonWriter
from tests.conftest import Exported, MessageFactory, Queues, closed_port

pytestmark = pytest.mark.integration

FAILED_AT = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")
RECORD_KEYS = {"jobId", "reason", "account", "error", "attempts", "messageId", "failedAt", "originalMessage"}
ERROR_KEYS = {"code", "message", "values", "httpStatus", "requestId", "clientRequestId"}


def terminate_requests(batch: BatchEmulator) -> list:
    return [r for r in batch.requests if r.method == "POST"]


def only_record(queues: Queues) -> dict:
    records = queues.poison_records()
    assert len(records) == 1, records
    record = records[0]
    assert set(record) >= RECORD_KEYS
    assert set(record["error"]) == ERROR_KEYS
    assert FAILED_AT.fullmatch(record["failedAt"])
    return record


@pytest.mark.usefixtures("no_sleep")
def test_active_job_is_terminated_with_the_contract_request(
    batch: BatchEmulator, identity: IdentityEndpoint, make_message: MessageFactory, queues: Queues, captured_logs
) -> None:
    batch.add_job("nightly-render-42")
    msg = make_message({"jobId": "nightly-render-42", "reason": "budget exceeded"}, message_id="m-1")

    assert terminate_job.main(msg) is None

    job = batch.job("nightly-render-42")
    assert job is not None
    assert job.state in (JobState.TERMINATING, JobState.COMPLETED)
    assert job.terminate_reason == "budget exceeded"
    [sent] = terminate_requests(batch)
    assert sent.path == "/jobs/nightly-render-42/terminate"
    assert sent.query == {"api-version": "2025-06-01", "timeOut": "30"}
    assert sent.headers["authorization"] == f"Bearer {identity.issued[0]}"
    assert sent.headers["content-type"] == "application/json; odata=minimalmetadata"
    assert sent.headers["client-request-id"] == str(uuid.UUID(sent.headers["client-request-id"]))
    assert sent.headers["return-client-request-id"] == "true"
    assert abs(parsedate_to_datetime(sent.headers["ocp-date"]) - datetime.now(UTC)) < timedelta(minutes=1)
    assert json.loads(sent.body) == {"terminateReason": "budget exceeded"}
    assert "if-match" not in sent.headers
    line = next(r.getMessage() for r in captured_logs.records if "outcome=terminated" in r.getMessage())
    assert "job=nightly-render-42" in line
    assert "status=202" in line
    assert f"client_request_id={sent.headers['client-request-id']}" in line
    assert re.search(r"request_id=[0-9a-f-]{36}", line)
    assert "duration_ms=" in line
    assert queues.poison_records() == []


@pytest.mark.usefixtures("no_sleep")
def test_options_become_query_and_headers(
    monkeypatch: pytest.MonkeyPatch, batch: BatchEmulator, make_message: MessageFactory
) -> None:
    monkeypatch.setenv("BATCH_API_VERSION", "2024-07-01.20.0")  # the first with force
    job = batch.add_job("job-1")
    batch.add_job("job-2")
    msg = make_message(
        {
            "jobId": "job-1",
            "force": True,
            "ifMatch": job.etag,
            "requestId": "9c4d50ee-2d56-4cd3-8152-34347dc9f2b0",
        }
    )
    terminate_job.main(msg)
    terminate_job.main(make_message({"jobId": "job-2", "ifUnmodifiedSince": "2099-01-01T00:00:00Z"}))

    first, second = terminate_requests(batch)
    assert first.query["force"] == "true"
    assert first.headers["if-match"] == job.etag
    assert first.headers["client-request-id"] == "9c4d50ee-2d56-4cd3-8152-34347dc9f2b0"
    assert json.loads(first.body) == {"terminateReason": "UserTerminate"}
    assert second.headers["if-unmodified-since"] == "Thu, 01 Jan 2099 00:00:00 GMT"


@pytest.mark.usefixtures("no_sleep")
def test_client_request_id_is_stable_across_deliveries_of_one_message(
    batch: BatchEmulator, make_message: MessageFactory
) -> None:
    batch.add_job("job-1")
    terminate_job.main(make_message({"jobId": "job-1"}, message_id="same-id"))
    terminate_job.main(make_message({"jobId": "job-1"}, message_id="same-id", dequeue_count=2))
    first, second = terminate_requests(batch)
    assert first.headers["client-request-id"] == second.headers["client-request-id"]


@pytest.mark.usefixtures("no_sleep")
@pytest.mark.parametrize(
    ("state", "code"), [(JobState.COMPLETED, "JobCompleted"), (JobState.TERMINATING, "JobBeingTerminated")]
)
def test_already_terminated_job_counts_as_success(
    batch: BatchEmulator, make_message: MessageFactory, queues: Queues, captured_logs, state: JobState, code: str
) -> None:
    batch.add_job("done-job", state=state)
    terminate_job.main(make_message({"jobId": "done-job"}))
    assert queues.poison_records() == []
    assert len(terminate_requests(batch)) == 1
    assert any(
        "outcome=already_terminated" in r.getMessage() and f"code={code}" in r.getMessage()
        for r in captured_logs.records
    )


@pytest.mark.usefixtures("no_sleep")
@pytest.mark.parametrize(
    ("body", "keys"),
    [
        (b"\xff\xfe not utf-8", {"message"}),
        (b"not json", {"message"}),
        (b'["job-1"]', {"message"}),
        (b'{"reason": "x"}', {"jobId"}),
        (b'{"jobId": "a/b"}', {"jobId"}),
        (b'{"jobId": "../etc"}', {"jobId"}),
        (b'{"jobId": "a%2Fb"}', {"jobId"}),
        (b'{"jobId": "a?b=c"}', {"jobId"}),
        (('{"jobId": "' + "x" * 65 + '"}').encode(), {"jobId"}),
        (b'{"jobId": ""}', {"jobId"}),
        (b'{"jobId": 5, "force": "yes", "ifModifiedSince": "soon"}', {"jobId", "force", "ifModifiedSince"}),
    ],
)
def test_invalid_message_is_poisoned_without_calling_batch(
    batch: BatchEmulator,
    identity: IdentityEndpoint,
    make_message: MessageFactory,
    queues: Queues,
    body: bytes,
    keys: set[str],
) -> None:
    msg = make_message(body, message_id="bad-1", dequeue_count=1)

    assert terminate_job.main(msg) is None

    record = only_record(queues)
    assert record["error"]["code"] == "InvalidMessage"
    assert {v["key"] for v in record["error"]["values"]} == keys
    assert all(v["value"] for v in record["error"]["values"])
    assert record["error"]["httpStatus"] is None
    assert record["error"]["requestId"] is None
    assert record["messageId"] == "bad-1"
    assert record["attempts"] == 1
    if record.get("originalMessageEncoding") == "base64":
        assert base64.b64decode(record["originalMessage"]) == body
    else:
        assert record["originalMessage"] == body.decode()
    assert batch.requests == []
    assert identity.fetches == 0


@pytest.mark.usefixtures("no_sleep")
def test_invalid_message_record_keeps_readable_job_id_and_reason(make_message: MessageFactory, queues: Queues) -> None:
    terminate_job.main(make_message({"jobId": "bad/id", "reason": "cost"}))
    record = only_record(queues)
    assert (record["jobId"], record["reason"]) == ("bad/id", "cost")


@pytest.mark.usefixtures("no_sleep")
def test_unreadable_message_record_has_null_job_id_and_reason(make_message: MessageFactory, queues: Queues) -> None:
    terminate_job.main(make_message(b"garbage"))
    record = only_record(queues)
    assert (record["jobId"], record["reason"]) == (None, None)


@pytest.mark.usefixtures("no_sleep")
def test_missing_job_is_poisoned_with_batch_error(
    batch: BatchEmulator, make_message: MessageFactory, queues: Queues
) -> None:
    terminate_job.main(make_message({"jobId": "ghost", "reason": "budget exceeded"}, message_id="m-404"))

    record = only_record(queues)
    assert record["jobId"] == "ghost"
    assert record["reason"] == "budget exceeded"
    assert record["error"]["code"] == "JobNotFound"
    assert record["error"]["message"].startswith("The specified job does not exist.")
    assert record["error"]["httpStatus"] == 404
    assert record["error"]["requestId"]
    sent = terminate_requests(batch)
    assert len(sent) == 1, "permanent errors are not retried"
    assert record["error"]["clientRequestId"] == sent[0].headers["client-request-id"]
    assert record["messageId"] == "m-404"
    assert json.loads(record["originalMessage"]) == {"jobId": "ghost", "reason": "budget exceeded"}


@pytest.mark.usefixtures("no_sleep")
def test_job_being_deleted_is_poisoned(batch: BatchEmulator, make_message: MessageFactory, queues: Queues) -> None:
    batch.add_job("going", state=JobState.DELETING)
    terminate_job.main(make_message({"jobId": "going"}))
    record = only_record(queues)
    assert (record["error"]["code"], record["error"]["httpStatus"]) == ("JobBeingDeleted", 409)


@pytest.mark.usefixtures("no_sleep")
def test_failed_condition_is_poisoned_with_values(
    batch: BatchEmulator, make_message: MessageFactory, queues: Queues
) -> None:
    batch.add_job("job-1")
    terminate_job.main(make_message({"jobId": "job-1", "ifMatch": '"0xstale"'}))
    record = only_record(queues)
    assert (record["error"]["code"], record["error"]["httpStatus"]) == ("ConditionNotMet", 412)
    assert batch.job("job-1").state is JobState.ACTIVE


@pytest.mark.usefixtures("no_sleep")
@pytest.mark.parametrize(
    ("status", "code"),
    [(400, "InvalidRequestBody"), (403, "AuthorizationFailure"), (413, "RequestBodyTooLarge"), (409, "JobDisabled")],
)
def test_other_batch_errors_are_poisoned_once_with_values(
    batch: BatchEmulator, make_message: MessageFactory, queues: Queues, status: int, code: str
) -> None:
    batch.add_job("job-1")
    batch.inject(Fault.status(status, code, message=f"{code} happened", values={"Reason": "because", "Detail": "more"}))

    terminate_job.main(make_message({"jobId": "job-1"}, dequeue_count=1))

    record = only_record(queues)
    assert record["error"]["code"] == code
    assert record["error"]["message"].startswith(f"{code} happened")
    assert record["error"]["values"] == [{"key": "Reason", "value": "because"}, {"key": "Detail", "value": "more"}]
    assert record["error"]["httpStatus"] == status
    assert len(terminate_requests(batch)) == 1


@pytest.mark.usefixtures("no_sleep")
def test_unauthorized_fetches_a_fresh_token_and_tries_once_more(
    batch: BatchEmulator, identity: IdentityEndpoint, make_message: MessageFactory, queues: Queues
) -> None:
    batch.add_job("job-1")
    batch.add_job("job-2")
    terminate_job.main(make_message({"jobId": "job-1"}))
    identity.revoke_all()

    terminate_job.main(make_message({"jobId": "job-2"}))

    assert identity.fetches == 2
    assert batch.job("job-2").state is not JobState.ACTIVE
    first, second = terminate_requests(batch)[1:]
    assert first.headers["authorization"] != second.headers["authorization"]
    assert queues.poison_records() == []


@pytest.mark.usefixtures("no_sleep")
def test_unauthorized_twice_is_poisoned(
    batch: BatchEmulator, identity: IdentityEndpoint, make_message: MessageFactory, queues: Queues
) -> None:
    batch.add_job("job-1")
    batch.inject(Fault.status(401, "AuthenticationFailed", message="Server failed to authenticate"), times=2)

    terminate_job.main(make_message({"jobId": "job-1"}, dequeue_count=1))

    record = only_record(queues)
    assert (record["error"]["code"], record["error"]["httpStatus"]) == ("AuthenticationFailed", 401)
    assert len(terminate_requests(batch)) == 2
    assert identity.fetches == 2


@pytest.mark.parametrize(
    "fault",
    [
        Fault.status(503, "ServerBusy"),
        Fault.status(500, "InternalError"),
        Fault.status(502, "BadGateway"),
        Fault.status(504, "GatewayTimeout"),
        Fault.status(408, "OperationTimedOut"),
        Fault.status(500, "OperationTimedOut"),  # Batch's own status for the code
        Fault.drop(),
    ],
)
def test_transient_failure_is_retried_inside_the_invocation(
    batch: BatchEmulator, make_message: MessageFactory, queues: Queues, no_sleep: list[float], fault: Fault
) -> None:
    batch.add_job("job-1")
    batch.inject(fault, times=2)

    terminate_job.main(make_message({"jobId": "job-1"}))

    assert batch.job("job-1").state is not JobState.ACTIVE
    assert len(terminate_requests(batch)) == 3
    assert len(no_sleep) == 2
    assert 0 < no_sleep[0] < no_sleep[1], "backoff grows"
    assert queues.poison_records() == []


@pytest.mark.parametrize(("retry_after", "expected"), [(3, 3.0), (600, 15.0)])
def test_retry_after_is_honoured_with_a_cap(
    batch: BatchEmulator, make_message: MessageFactory, no_sleep: list[float], retry_after: int, expected: float
) -> None:
    batch.add_job("job-1")
    batch.inject(Fault.status(429, "TooManyRequests", retry_after=retry_after))
    terminate_job.main(make_message({"jobId": "job-1"}))
    assert no_sleep == [expected]
    assert batch.job("job-1").state is not JobState.ACTIVE


def test_transient_failure_with_attempts_left_raises_for_redelivery(
    batch: BatchEmulator, make_message: MessageFactory, queues: Queues, no_sleep: list[float]
) -> None:
    batch.add_job("job-1")
    batch.inject(Fault.status(503, "ServerBusy"), times=10)

    with pytest.raises(RetryLater):
        terminate_job.main(make_message({"jobId": "job-1"}, dequeue_count=4))

    assert queues.poison_records() == []
    assert 2 <= len(terminate_requests(batch)) <= 6, "bounded retries inside one invocation"


@pytest.mark.parametrize(
    ("fault", "code", "status"),
    [(Fault.status(503, "ServerBusy"), "ServerBusy", 503), (Fault.drop(), "ServiceUnavailable", None)],
)
def test_transient_failure_on_last_attempt_is_poisoned(
    batch: BatchEmulator,
    make_message: MessageFactory,
    queues: Queues,
    no_sleep: list[float],
    fault: Fault,
    code: str,
    status: int | None,
) -> None:
    batch.add_job("job-1")
    batch.inject(fault, times=10)

    assert terminate_job.main(make_message({"jobId": "job-1"}, dequeue_count=5)) is None

    record = only_record(queues)
    assert (record["error"]["code"], record["error"]["httpStatus"]) == (code, status)
    assert record["attempts"] == 5


def test_read_timeout_is_transient(
    batch: BatchEmulator, make_message: MessageFactory, queues: Queues, function_env: dict[str, str]
) -> None:
    # The real client timeout is 35 s; a short one keeps the test quick.
    wiring.install(wiring.Wiring(sleep=lambda _: None, http_timeout=0.3))
    batch.add_job("job-1")
    batch.inject(Fault.delay(2.0, apply=False), times=10)

    terminate_job.main(make_message({"jobId": "job-1"}, dequeue_count=5))

    record = only_record(queues)
    assert (record["error"]["code"], record["error"]["httpStatus"]) == ("ServiceUnavailable", None)
    assert "timed out" in record["error"]["message"]


@pytest.mark.usefixtures("function_env")
def test_token_endpoint_failure_is_retried_after_msal_throttle_window(
    batch: BatchEmulator, identity: IdentityEndpoint, make_message: MessageFactory
) -> None:
    # Real sleep: MSAL serves a cached failure for 5 s, so only a real wait proves the retry works.
    batch.add_job("job-1")
    identity.fail_next(1, status=500)
    terminate_job.main(make_message({"jobId": "job-1"}))
    assert batch.job("job-1").state is not JobState.ACTIVE
    assert (len(identity.requests), identity.fetches) == (2, 1)


def test_token_endpoint_failure_backs_off_at_least_the_throttle_window(
    batch: BatchEmulator, identity: IdentityEndpoint, make_message: MessageFactory, no_sleep: list[float]
) -> None:
    batch.add_job("job-1")
    identity.fail_next(20, status=500)
    with pytest.raises(RetryLater):
        terminate_job.main(make_message({"jobId": "job-1"}))
    assert no_sleep
    assert min(no_sleep) >= 5.0


def test_token_endpoint_failure_on_last_attempt_is_poisoned(
    batch: BatchEmulator, identity: IdentityEndpoint, make_message: MessageFactory, queues: Queues, no_sleep
) -> None:
    batch.add_job("job-1")
    identity.fail_next(20, status=500)

    terminate_job.main(make_message({"jobId": "job-1"}, dequeue_count=5))

    record = only_record(queues)
    assert (record["error"]["code"], record["error"]["httpStatus"]) == ("CredentialUnavailable", None)
    assert record["error"]["clientRequestId"] is None, "no request reached Batch"
    assert terminate_requests(batch) == []


def test_token_endpoint_failure_with_attempts_left_raises(
    batch: BatchEmulator, identity: IdentityEndpoint, make_message: MessageFactory, queues: Queues, no_sleep
) -> None:
    batch.add_job("job-1")
    identity.fail_next(20, status=500)
    with pytest.raises(RetryLater):
        terminate_job.main(make_message({"jobId": "job-1"}, dequeue_count=1))
    assert queues.poison_records() == []


def test_failed_poison_write_raises_so_the_message_stays(
    batch: BatchEmulator, make_message: MessageFactory, function_env: dict[str, str]
) -> None:
    unreachable = QueueClient.from_connection_string(
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;"
        "QueueEndpoint=http://127.0.0.1:9/devstoreaccount1;",
        "nowhere-poison",
        retry_total=0,
    )
    wiring.install(wiring.Wiring(sleep=lambda _: None, poison=PoisonWriter(unreachable)))

    with pytest.raises(PoisonWriteFailed):
        terminate_job.main(make_message({"jobId": "ghost"}))
    with pytest.raises(PoisonWriteFailed):
        terminate_job.main(make_message(b"not json"))


@pytest.mark.usefixtures("no_sleep")
def test_poison_record_is_plain_json_like_the_trigger_queue_and_never_expires(
    make_message: MessageFactory, queues: Queues
) -> None:
    terminate_job.main(make_message(b"not json"))
    [raw] = QueueClient.from_connection_string(queues.connection_string, queues.poison).receive_messages()
    assert json.loads(raw.content)["error"]["code"] == "InvalidMessage"
    assert raw.expires_on - datetime.now(UTC) > timedelta(days=365), "poison records never expire"


@pytest.mark.usefixtures("no_sleep")
def test_poison_record_follows_a_base64_trigger_queue(
    monkeypatch: pytest.MonkeyPatch, make_message: MessageFactory, queues: Queues
) -> None:
    monkeypatch.setenv("AzureFunctionsJobHost__extensions__queues__messageEncoding", "base64")
    terminate_job.main(make_message(b"not json"))
    [raw] = QueueClient.from_connection_string(queues.connection_string, queues.poison).receive_messages()
    assert json.loads(base64.b64decode(raw.content))["error"]["code"] == "InvalidMessage"


def test_poison_queue_name_setting_is_used(
    monkeypatch: pytest.MonkeyPatch, make_message: MessageFactory, queues: Queues, function_env: dict[str, str]
) -> None:
    monkeypatch.setenv("POISON_QUEUE_NAME", f"{queues.trigger}-custom")
    wiring.reset()
    terminate_job.main(make_message(b"not json"))
    custom = Queues(queues.connection_string, queues.trigger, f"{queues.trigger}-custom")
    assert [r["error"]["code"] for r in custom.poison_records()] == ["InvalidMessage"]
    assert queues.poison_records() == []


def test_settings_are_read_at_the_first_invocation_not_at_import(
    monkeypatch: pytest.MonkeyPatch, batch: BatchEmulator, make_message: MessageFactory, function_env: dict[str, str]
) -> None:
    monkeypatch.setenv("BATCH_API_VERSION", "2024-07-01.20.0")  # after import, before the first call
    batch.add_job("job-1")
    terminate_job.main(make_message({"jobId": "job-1"}))
    assert [r.query["api-version"] for r in terminate_requests(batch)] == ["2024-07-01.20.0"]


def test_process_objects_are_built_once_and_reused(
    batch: BatchEmulator, identity: IdentityEndpoint, make_message: MessageFactory, function_env: dict[str, str]
) -> None:
    for n in range(3):
        batch.add_job(f"job-{n}")
        terminate_job.main(make_message({"jobId": f"job-{n}"}))
    assert wiring.current().terminator() is wiring.current().terminator()
    assert identity.fetches == 1


@pytest.mark.usefixtures("function_env")
def test_settings_are_cached_after_the_first_invocation_until_reset(
    monkeypatch: pytest.MonkeyPatch, identity: IdentityEndpoint, make_message: MessageFactory
) -> None:
    # docs/CONTRACT.md §1: read at the first invocation and cached; in Azure a changed setting restarts the app.
    with BatchEmulator(authorize=identity.is_valid) as first, BatchEmulator(authorize=identity.is_valid) as second:
        first.add_job("job-1")
        first.add_job("job-2")
        second.add_job("job-3")
        monkeypatch.setenv("BATCH_ACCOUNT_URL", first.url)
        terminate_job.main(make_message({"jobId": "job-1"}))
        monkeypatch.setenv("BATCH_ACCOUNT_URL", second.url)
        terminate_job.main(make_message({"jobId": "job-2"}))
        wiring.reset()
        terminate_job.main(make_message({"jobId": "job-3"}))
        assert [t.job_id for t in first.terminations] == ["job-1", "job-2"]
        assert [t.job_id for t in second.terminations] == ["job-3"]


@pytest.mark.parametrize("url", ["http://batch.example.com", "https://user:secret@acct.batch.azure.com"])
def test_refused_batch_url_fails_before_any_token_is_requested(
    monkeypatch: pytest.MonkeyPatch,
    identity: IdentityEndpoint,
    make_message: MessageFactory,
    function_env: dict[str, str],
    url: str,
) -> None:
    monkeypatch.setenv("BATCH_ACCOUNT_URL", url)
    wiring.reset()
    with pytest.raises(ConfigurationError, match="BATCH_ACCOUNT_URL"):
        terminate_job.main(make_message({"jobId": "job-1"}))
    assert identity.requests == []


@pytest.mark.usefixtures("no_sleep")
def test_concurrent_invocations_terminate_each_job_once_with_one_token(
    batch: BatchEmulator, identity: IdentityEndpoint, make_message: MessageFactory, queues: Queues
) -> None:
    ids = [f"job-{n}" for n in range(60)]
    for job_id in ids:
        batch.add_job(job_id)
    messages = [make_message({"jobId": job_id}) for job_id in ids]

    with ThreadPoolExecutor(max_workers=16) as pool:
        assert list(pool.map(terminate_job.main, messages)) == [None] * len(ids)

    assert sorted(t.job_id for t in batch.terminations) == sorted(ids)
    assert identity.fetches == 1
    assert queues.poison_records() == []


def test_no_log_record_contains_the_token_or_the_storage_key(
    batch: BatchEmulator, identity: IdentityEndpoint, make_message: MessageFactory, captured_logs, no_sleep
) -> None:
    batch.add_job("job-1")
    batch.inject(Fault.status(401, "AuthenticationFailed"))
    batch.inject(Fault.status(503, "ServerBusy"))
    terminate_job.main(make_message({"jobId": "job-1"}))
    terminate_job.main(make_message({"jobId": "ghost"}))
    terminate_job.main(make_message(b"not json"))

    assert len(identity.issued) == 2
    text = "\n".join(f"{r.getMessage()} {r.args!r} {r.__dict__!r}" for r in captured_logs.records)
    assert captured_logs.records, "the flow logged something"
    for token in identity.issued:
        assert token not in text
    assert "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq" not in text


@pytest.mark.usefixtures("no_sleep")
def test_invalid_job_id_cannot_forge_a_log_line(make_message: MessageFactory, captured_logs) -> None:
    terminate_job.main(make_message({"jobId": "a\nterminate job=x outcome=terminated"}))
    lines = [line for r in captured_logs.records for line in r.getMessage().splitlines()]
    assert not any(line.startswith("terminate job=x") for line in lines)
    assert any("outcome=poisoned" in line and "job='a\\nterminate" in line for line in lines)


def _alert(batch: BatchEmulator, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fired common-schema metric alert naming the job by its jobId dimension."""
    batch.add_job("nightly-render-42")
    alert = {
        "schemaId": "azureMonitorCommonAlertSchema",
        "data": {
            "essentials": {"alertRule": "batch-task-failures", "severity": "Sev2", "monitorCondition": "Fired"},
            "alertContext": {
                "condition": {"allOf": [{"dimensions": [{"name": "jobId", "value": "nightly-render-42"}]}]}
            },
        },
    }
    request = func.HttpRequest(method="POST", url="/api/alert_terminate", body=json.dumps(alert).encode())
    assert alert_terminate.main(request).status_code == 202
    return "nightly-render-42"


def _sweep(batch: BatchEmulator, monkeypatch: pytest.MonkeyPatch) -> str:
    """A sweep whose age policy picks one old job."""
    for name in ("SWEEP_IDLE_MINUTES", "SWEEP_JOB_ID_PREFIX", "SWEEP_DRY_RUN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SWEEP_MAX_AGE_HOURS", "48")
    batch.add_job("old-1", creation_time=datetime.now(UTC) - timedelta(hours=72))
    sweep_jobs.main(TimerRequest(past_due=False))
    return "old-1"


@pytest.mark.parametrize(
    ("producer", "reason"),
    [(_alert, "Alert 'batch-task-failures' fired (Sev2)"), (_sweep, "sweep: active 72.0 h > 48 h")],
    ids=["alert", "sweep"],
)
def test_a_producers_reason_reaches_batch_through_the_queue(
    function_env: dict[str, str],
    batch: BatchEmulator,
    queues: Queues,
    make_message: MessageFactory,
    monkeypatch: pytest.MonkeyPatch,
    producer: Callable[[BatchEmulator, pytest.MonkeyPatch], str],
    reason: str,
) -> None:
    job_id = producer(batch, monkeypatch)
    [raw] = QueueClient.from_connection_string(queues.connection_string, queues.trigger).receive_messages()

    terminate_job.main(make_message(raw.content, message_id=raw.id))  # messageEncoding none: the text as it is

    job = batch.job(job_id)
    assert job is not None
    assert job.state in (JobState.TERMINATING, JobState.COMPLETED)
    assert job.terminate_reason == reason


# ---- docs/CONTRACT.md §3 encoding, §3/§5a force and conditions, §5 403 AuthenticationFailed (issue 11)


@pytest.mark.usefixtures("no_sleep")
@pytest.mark.parametrize("encode", [lambda t: t, lambda t: base64.b64encode(t.encode()).decode()], ids=["json", "b64"])
def test_a_message_may_be_json_text_or_base64_of_it(
    batch: BatchEmulator, make_message: MessageFactory, queues: Queues, encode
) -> None:
    batch.add_job("job-1")
    terminate_job.main(make_message(encode('{"jobId": "job-1", "reason": "either way"}')))
    assert batch.job("job-1").terminate_reason == "either way"
    assert queues.poison_records() == []


@pytest.mark.usefixtures("no_sleep")
@pytest.mark.parametrize("body", ["hello world", "e30", "[1, 2]", base64.b64encode(b"[1]").decode()])
def test_text_that_is_neither_json_nor_base64_json_is_an_invalid_message(
    batch: BatchEmulator, make_message: MessageFactory, queues: Queues, body: str
) -> None:
    terminate_job.main(make_message(body))
    record = only_record(queues)
    assert record["error"]["code"] == "InvalidMessage"
    assert [v["key"] for v in record["error"]["values"]] == ["message"]
    assert (record["jobId"], record["reason"], record["account"]) == (None, None, None)
    assert record["originalMessage"] == body
    assert batch.requests == []


def test_host_json_binds_the_message_text_as_is() -> None:
    document = json.loads((Path(terminate_job.__file__).parent.parent / "host.json").read_text())
    assert document["extensions"]["queues"]["messageEncoding"] == "none"


@pytest.mark.usefixtures("no_sleep")
@pytest.mark.parametrize("version", ["2023-11-01.18.0", "2024-02-01.19.0"])
def test_force_with_an_old_api_version_is_refused_without_a_request(
    monkeypatch: pytest.MonkeyPatch, batch: BatchEmulator, make_message: MessageFactory, queues: Queues, version: str
) -> None:
    monkeypatch.setenv("BATCH_API_VERSION", version)
    batch.add_job("job-1")
    terminate_job.main(make_message({"jobId": "job-1", "force": True, "reason": "r"}, message_id="m-7"))
    record = only_record(queues)
    assert record["error"]["code"] == "ForceNotSupported"
    assert {"key": "apiVersion", "value": version} in record["error"]["values"]
    assert (record["error"]["httpStatus"], record["error"]["requestId"], record["error"]["clientRequestId"]) == (
        None,
        None,
        None,
    )
    assert (record["jobId"], record["reason"], record["account"], record["messageId"]) == (
        "job-1",
        "r",
        "default",
        "m-7",
    )
    assert batch.requests == []
    assert batch.job("job-1").state is JobState.ACTIVE


@pytest.mark.usefixtures("no_sleep")
@pytest.mark.parametrize("version", ["2024-07-01.20.0", "2025-06-01"])
def test_force_with_a_new_api_version_is_sent(
    monkeypatch: pytest.MonkeyPatch, batch: BatchEmulator, make_message: MessageFactory, queues: Queues, version: str
) -> None:
    monkeypatch.setenv("BATCH_API_VERSION", version)
    batch.add_job("job-1")
    terminate_job.main(make_message({"jobId": "job-1", "force": True}))
    [sent] = terminate_requests(batch)
    assert (sent.query["api-version"], sent.query["force"]) == (version, "true")
    assert queues.poison_records() == []


@pytest.mark.usefixtures("no_sleep")
def test_two_conditions_are_an_invalid_message_and_nothing_is_sent(
    batch: BatchEmulator, make_message: MessageFactory, queues: Queues
) -> None:
    job = batch.add_job("job-1")
    terminate_job.main(make_message({"jobId": "job-1", "ifMatch": job.etag, "ifModifiedSince": "2020-01-01T00:00:00Z"}))
    record = only_record(queues)
    assert record["error"]["code"] == "InvalidMessage"
    assert [v["key"] for v in record["error"]["values"]] == ["conditions"]
    assert record["jobId"] == "job-1"
    assert batch.requests == []


@pytest.mark.usefixtures("no_sleep")
def test_403_authentication_failed_fetches_a_fresh_token_and_tries_once_more(
    batch: BatchEmulator, identity: IdentityEndpoint, make_message: MessageFactory, queues: Queues
) -> None:
    batch.add_job("job-1")
    batch.inject(Fault.status(403, "AuthenticationFailed"))
    terminate_job.main(make_message({"jobId": "job-1"}))
    first, second = terminate_requests(batch)
    assert first.headers["authorization"] != second.headers["authorization"]
    assert identity.fetches == 2
    assert batch.job("job-1").state is not JobState.ACTIVE
    assert queues.poison_records() == []


@pytest.mark.usefixtures("no_sleep")
def test_403_authentication_failed_twice_is_poisoned(
    batch: BatchEmulator, identity: IdentityEndpoint, make_message: MessageFactory, queues: Queues
) -> None:
    batch.add_job("job-1")
    batch.inject(Fault.status(403, "AuthenticationFailed"), times=2)
    terminate_job.main(make_message({"jobId": "job-1"}))
    record = only_record(queues)
    assert (record["error"]["code"], record["error"]["httpStatus"]) == ("AuthenticationFailed", 403)
    assert len(terminate_requests(batch)) == 2
    assert identity.fetches == 2


@pytest.mark.usefixtures("no_sleep")
def test_403_authorization_failure_gets_no_second_token(
    batch: BatchEmulator, identity: IdentityEndpoint, make_message: MessageFactory, queues: Queues
) -> None:
    batch.add_job("job-1")
    batch.inject(Fault.status(403, "AuthorizationFailure"))
    terminate_job.main(make_message({"jobId": "job-1"}))
    assert only_record(queues)["error"]["code"] == "AuthorizationFailure"
    assert len(terminate_requests(batch)) == 1
    assert identity.fetches == 1


@pytest.mark.usefixtures("no_sleep")
def test_a_poison_queue_name_too_long_for_a_queue_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch, batch: BatchEmulator, identity: IdentityEndpoint, make_message: MessageFactory
) -> None:
    monkeypatch.setenv("TERMINATE_QUEUE_NAME", "q" * 60)
    with pytest.raises(ConfigurationError, match="POISON_QUEUE_NAME"):
        terminate_job.main(make_message({"jobId": "job-1"}))
    assert batch.requests == []
    assert identity.fetches == 0


# ---- docs/CONTRACT.md §2/§3/§6 accounts (issue 13)


@pytest.fixture
def second_batch(identity: IdentityEndpoint) -> Iterator[BatchEmulator]:
    """A second Batch account on loopback, trusting the same identity endpoint."""
    with BatchEmulator(authorize=identity.is_valid) as emulator:
        yield emulator


@pytest.mark.usefixtures("no_sleep")
def test_account_alias_routes_the_request_and_one_token_serves_both(
    monkeypatch: pytest.MonkeyPatch,
    batch: BatchEmulator,
    second_batch: BatchEmulator,
    identity: IdentityEndpoint,
    make_message: MessageFactory,
    queues: Queues,
) -> None:
    monkeypatch.setenv("BATCH_ACCOUNTS", f"eu={second_batch.url}")
    batch.add_job("job-1")
    second_batch.add_job("job-1")
    terminate_job.main(make_message({"jobId": "job-1", "account": "EU", "reason": "eu only"}))
    assert second_batch.job("job-1").terminate_reason == "eu only"
    assert batch.job("job-1").state is JobState.ACTIVE
    assert batch.requests == []
    terminate_job.main(make_message({"jobId": "job-1"}))
    assert batch.job("job-1").state is not JobState.ACTIVE
    assert identity.fetches == 1
    assert queues.poison_records() == []


@pytest.mark.usefixtures("no_sleep")
def test_an_unknown_account_is_an_invalid_message_and_no_account_is_called(
    monkeypatch: pytest.MonkeyPatch,
    batch: BatchEmulator,
    second_batch: BatchEmulator,
    identity: IdentityEndpoint,
    make_message: MessageFactory,
    queues: Queues,
) -> None:
    monkeypatch.setenv("BATCH_ACCOUNTS", f"eu={second_batch.url}")
    terminate_job.main(make_message({"jobId": "job-1", "account": "us"}))
    record = only_record(queues)
    assert record["error"]["code"] == "InvalidMessage"
    assert [v["key"] for v in record["error"]["values"]] == ["account"]
    assert (record["jobId"], record["account"]) == ("job-1", "us")
    assert batch.requests == second_batch.requests == []
    assert identity.fetches == 0


@pytest.mark.usefixtures("no_sleep")
def test_poison_records_carry_the_account(
    monkeypatch: pytest.MonkeyPatch, second_batch: BatchEmulator, make_message: MessageFactory, queues: Queues
) -> None:
    monkeypatch.setenv("BATCH_ACCOUNTS", f"eu={second_batch.url}")
    terminate_job.main(make_message({"jobId": "ghost", "account": "Eu"}))
    record = only_record(queues)
    assert (record["error"]["code"], record["account"]) == ("JobNotFound", "eu")
    assert list(record)[:3] == ["jobId", "reason", "account"]


@pytest.mark.usefixtures("no_sleep")
@pytest.mark.parametrize(
    "accounts", ["eu=http://10.0.0.1:8045", "default=https://other.westeurope.batch.azure.com", "EU!=https://a.b.c"]
)
def test_bad_batch_accounts_are_refused_before_any_token_is_requested(
    monkeypatch: pytest.MonkeyPatch,
    batch: BatchEmulator,
    identity: IdentityEndpoint,
    make_message: MessageFactory,
    queues: Queues,
    accounts: str,
) -> None:
    monkeypatch.setenv("BATCH_ACCOUNTS", accounts)
    with pytest.raises(ConfigurationError, match="BATCH_ACCOUNTS"):
        terminate_job.main(make_message({"jobId": "job-1"}))
    assert identity.fetches == 0
    assert batch.requests == []
    assert queues.poison_records() == []


# ---- docs/CONTRACT.md §5a guards (issue 13)


@pytest.mark.usefixtures("no_sleep")
def test_a_job_outside_the_allowed_prefixes_is_refused_without_calling_batch(
    monkeypatch: pytest.MonkeyPatch,
    batch: BatchEmulator,
    identity: IdentityEndpoint,
    make_message: MessageFactory,
    queues: Queues,
    captured_logs,
) -> None:
    monkeypatch.setenv("TERMINATE_ALLOWED_JOB_ID_PREFIXES", "render-, Nightly-")
    batch.add_job("other-1")
    batch.add_job("NIGHTLY-7")
    terminate_job.main(make_message({"jobId": "other-1"}))
    terminate_job.main(make_message({"jobId": "NIGHTLY-7"}))
    record = only_record(queues)
    assert record["error"]["code"] == "JobNotAllowed"
    assert record["error"]["values"] == [{"key": "jobId", "value": "other-1"}]
    assert record["error"]["httpStatus"] is None
    assert [r.job_id for r in batch.requests] == ["NIGHTLY-7"]
    assert batch.job("other-1").state is JobState.ACTIVE
    assert any(
        "outcome=poisoned" in r.getMessage() and "code=JobNotAllowed" in r.getMessage() for r in captured_logs.records
    )


@pytest.mark.usefixtures("no_sleep")
def test_honor_keep_refuses_a_kept_job_after_one_selected_read(
    monkeypatch: pytest.MonkeyPatch, batch: BatchEmulator, make_message: MessageFactory, queues: Queues
) -> None:
    monkeypatch.setenv("TERMINATE_HONOR_KEEP", "true")
    batch.add_job("keep-me", metadata={"batch-terminator-keep": "TRUE"})
    terminate_job.main(make_message({"jobId": "keep-me"}))
    record = only_record(queues)
    assert record["error"]["code"] == "JobProtected"
    assert record["error"]["httpStatus"] is None
    [read] = batch.requests
    assert (read.method, read.path) == ("GET", "/jobs/keep-me")
    assert set(read.query["$select"].split(",")) >= {"state", "metadata"}
    assert batch.job("keep-me").state is JobState.ACTIVE


@pytest.mark.usefixtures("no_sleep")
def test_honor_keep_terminates_a_job_that_is_not_kept(
    monkeypatch: pytest.MonkeyPatch, batch: BatchEmulator, make_message: MessageFactory, queues: Queues
) -> None:
    monkeypatch.setenv("TERMINATE_HONOR_KEEP", "true")
    batch.add_job("job-1", metadata={"batch-terminator-keep": "false"})
    terminate_job.main(make_message({"jobId": "job-1"}))
    assert [r.method for r in batch.requests] == ["GET", "POST"]
    assert batch.job("job-1").state is not JobState.ACTIVE
    assert queues.poison_records() == []


@pytest.mark.usefixtures("no_sleep")
def test_honor_keep_finds_a_completed_job_done_without_a_terminate(
    monkeypatch: pytest.MonkeyPatch, batch: BatchEmulator, make_message: MessageFactory, queues: Queues, captured_logs
) -> None:
    monkeypatch.setenv("TERMINATE_HONOR_KEEP", "true")
    batch.add_job("done", state=JobState.COMPLETED)
    terminate_job.main(make_message({"jobId": "done"}))
    assert [r.method for r in batch.requests] == ["GET"]
    assert queues.poison_records() == []
    line = next(
        r.getMessage() for r in captured_logs.records if "outcome=" in r.getMessage() and "job=done" in r.getMessage()
    )
    assert "outcome=already_terminated" in line
    assert "code=JobCompleted" in line
    assert "status=409" in line


@pytest.mark.usefixtures("no_sleep")
def test_honor_keep_on_a_missing_job_records_job_not_found(
    monkeypatch: pytest.MonkeyPatch, batch: BatchEmulator, make_message: MessageFactory, queues: Queues
) -> None:
    monkeypatch.setenv("TERMINATE_HONOR_KEEP", "true")
    terminate_job.main(make_message({"jobId": "ghost"}))
    record = only_record(queues)
    assert (record["error"]["code"], record["error"]["httpStatus"]) == ("JobNotFound", 404)
    assert [r.method for r in batch.requests] == ["GET"]


def test_a_transient_failure_of_the_keep_read_follows_the_retry_rules(
    monkeypatch: pytest.MonkeyPatch, function_env: dict[str, str], make_message: MessageFactory, queues: Queues
) -> None:
    slept: list[float] = []
    monkeypatch.setenv("TERMINATE_HONOR_KEEP", "true")
    monkeypatch.setenv("BATCH_ACCOUNT_URL", f"http://127.0.0.1:{closed_port()}")
    wiring.install(wiring.Wiring(sleep=slept.append))
    with pytest.raises(RetryLater):
        terminate_job.main(make_message({"jobId": "job-1"}, dequeue_count=1))
    assert slept  # retried inside the invocation first
    assert queues.poison_records() == []
    terminate_job.main(make_message({"jobId": "job-1"}, dequeue_count=5))
    record = only_record(queues)
    assert (record["error"]["code"], record["error"]["httpStatus"], record["attempts"]) == (
        "ServiceUnavailable",
        None,
        5,
    )


@pytest.mark.usefixtures("no_sleep")
def test_dry_run_sends_no_terminate_and_writes_no_record(
    monkeypatch: pytest.MonkeyPatch, batch: BatchEmulator, make_message: MessageFactory, queues: Queues, captured_logs
) -> None:
    monkeypatch.setenv("TERMINATE_DRY_RUN", "true")
    batch.add_job("job-1")
    terminate_job.main(make_message({"jobId": "job-1"}))
    assert batch.requests == []
    assert batch.job("job-1").state is JobState.ACTIVE
    assert queues.poison_records() == []
    lines = [r.getMessage() for r in captured_logs.records if "outcome=dry_run" in r.getMessage()]
    assert len(lines) == 1
    assert "job=job-1" in lines[0]


@pytest.mark.usefixtures("no_sleep")
def test_dry_run_still_records_invalid_messages_and_refusals(
    monkeypatch: pytest.MonkeyPatch, batch: BatchEmulator, make_message: MessageFactory, queues: Queues
) -> None:
    monkeypatch.setenv("TERMINATE_DRY_RUN", "true")
    monkeypatch.setenv("TERMINATE_ALLOWED_JOB_ID_PREFIXES", "ok-")
    monkeypatch.setenv("TERMINATE_HONOR_KEEP", "true")
    batch.add_job("ok-kept", metadata={"batch-terminator-keep": "true"})
    terminate_job.main(make_message({"jobId": "a/b"}))
    terminate_job.main(make_message({"jobId": "other"}))
    terminate_job.main(make_message({"jobId": "ok-kept"}))
    codes = [r["error"]["code"] for r in queues.poison_records()]
    assert codes == ["InvalidMessage", "JobNotAllowed", "JobProtected"]
    assert all(r.method == "GET" for r in batch.requests)


@pytest.mark.parametrize("fault", [Fault.status(503, "ServerBusy"), Fault.status(429, "TooManyRequests"), Fault.drop()])
def test_a_transient_failure_of_the_keep_read_is_retried_inside_the_invocation(
    monkeypatch: pytest.MonkeyPatch,
    batch: BatchEmulator,
    make_message: MessageFactory,
    queues: Queues,
    no_sleep: list[float],
    fault: Fault,
) -> None:
    monkeypatch.setenv("TERMINATE_HONOR_KEEP", "true")
    batch.add_job("job-1")
    batch.inject(fault, times=2, operation="get")
    terminate_job.main(make_message({"jobId": "job-1"}))
    assert [r.method for r in batch.requests] == ["GET", "GET", "GET", "POST"]
    assert len(no_sleep) == 2
    assert batch.job("job-1").state is not JobState.ACTIVE
    assert queues.poison_records() == []


@pytest.mark.usefixtures("no_sleep")
def test_a_keep_read_failing_on_the_last_attempt_is_recorded_with_batchs_code(
    monkeypatch: pytest.MonkeyPatch, batch: BatchEmulator, make_message: MessageFactory, queues: Queues
) -> None:
    monkeypatch.setenv("TERMINATE_HONOR_KEEP", "true")
    batch.add_job("job-1")
    batch.inject(Fault.status(503, "ServerBusy"), times=100, operation="get")
    with pytest.raises(RetryLater):
        terminate_job.main(make_message({"jobId": "job-1"}, dequeue_count=4))
    terminate_job.main(make_message({"jobId": "job-1"}, dequeue_count=5))
    record = only_record(queues)
    assert (record["error"]["code"], record["error"]["httpStatus"], record["attempts"]) == ("ServerBusy", 503, 5)
    assert all(r.method == "GET" for r in batch.requests)


def test_dry_run_and_guard_outcomes_are_telemetry_records(
    monkeypatch: pytest.MonkeyPatch, exported: Exported, batch: BatchEmulator, make_message: MessageFactory
) -> None:
    monkeypatch.setenv("TERMINATE_DRY_RUN", "true")
    monkeypatch.setenv("TERMINATE_HONOR_KEEP", "true")
    batch.add_job("job-1")
    batch.add_job("done", state=JobState.COMPLETED)
    terminate_job.main(make_message({"jobId": "job-1", "account": "DEFAULT"}, message_id="m-1"))
    terminate_job.main(make_message({"jobId": "done"}, message_id="m-2"))
    records = {r["messageId"]: r for r in exported.records() if "outcome" in r}
    assert (records["m-1"]["outcome"], records["m-1"]["jobId"], records["m-1"]["account"]) == (
        "dry_run",
        "job-1",
        "default",
    )
    assert (records["m-2"]["outcome"], records["m-2"]["code"], records["m-2"]["httpStatus"]) == (
        "already_terminated",
        "JobCompleted",
        409,
    )
    assert [r.method for r in batch.requests] == ["GET", "GET"]
