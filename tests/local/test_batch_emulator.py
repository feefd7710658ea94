"""The loopback Batch emulator, exercised over real sockets with requests."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from http.client import HTTPConnection
from typing import Any

import pytest
import requests

from local.batch_emulator import (
    ODATA_JSON,
    WWW_AUTHENTICATE,
    BatchEmulator,
    Fault,
    Job,
    JobState,
    http_date,
)

pytestmark = pytest.mark.integration

API_VERSION = "2023-11-01.18.0"
AUTH = {"Authorization": "Bearer test-token"}
PAST = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.fixture(scope="module")
def server() -> Iterator[BatchEmulator]:
    """One emulator for the module; tests get it reset."""
    with BatchEmulator() as emulator:
        yield emulator


@pytest.fixture
def emulator(server: BatchEmulator) -> BatchEmulator:
    """The shared emulator with state and settings back to defaults."""
    server.reset()
    server.authorize = None
    server.latency = 0.0
    server.terminate_delay = 0.0
    server.auto_create_jobs = False
    server.slow_seconds = 40.0
    server.record_requests = True
    return server


@pytest.fixture
def http() -> Iterator[requests.Session]:
    """A keep-alive client session."""
    with requests.Session() as session:
        yield session


def terminate(
    http: requests.Session,
    emulator: BatchEmulator,
    job_id: str,
    *,
    reason: str | None = "budget exceeded",
    headers: dict[str, str | None] | None = None,
    params: dict[str, Any] | None = None,
    body: bytes | None = None,
    timeout: float = 10,
) -> requests.Response:
    """POST a terminate the way our client does (docs/CONTRACT.md §4)."""
    query: dict[str, Any] = {"api-version": API_VERSION, "timeout": 30}
    query.update(params or {})
    sent: dict[str, str | None] = {
        **AUTH,
        "Content-Type": "application/json; odata=minimalmetadata",
        "ocp-date": http_date(datetime.now(UTC)),
    }
    sent.update(headers or {})
    payload = body if body is not None else json.dumps({} if reason is None else {"terminateReason": reason})
    return http.post(
        f"{emulator.url}/jobs/{job_id}/terminate",
        params={name: value for name, value in query.items() if value is not None},
        headers={name: value for name, value in sent.items() if value is not None},
        data=payload,
        timeout=timeout,
    )


def get(http: requests.Session, emulator: BatchEmulator, path: str, **params: Any) -> requests.Response:
    """GET a read route with the api-version."""
    return http.get(f"{emulator.url}{path}", params={"api-version": API_VERSION, **params}, headers=AUTH, timeout=10)


def job_of(emulator: BatchEmulator, job_id: str) -> Job:
    """The emulator's job, which must exist."""
    job = emulator.job(job_id)
    assert job is not None
    return job


def state_of(emulator: BatchEmulator, job_id: str) -> JobState:
    """The state of an existing job."""
    return job_of(emulator, job_id).state


def assert_batch_error(response: requests.Response, status: int, code: str) -> dict[str, Any]:
    """Check a BatchError answer and return its JSON."""
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == ODATA_JSON
    error = response.json()
    assert error["code"] == code
    assert error["odata.metadata"].endswith(
        "/$metadata#Microsoft.Azure.Batch.Protocol.Entities.Container.errors/@Element"
    )
    assert error["message"]["lang"] == "en-US"
    return error


def detail(error: dict[str, Any]) -> dict[str, str]:
    """BatchError values as a dict."""
    return {item["key"]: item["value"] for item in error.get("values", [])}


# ---------------------------------------------------------------- success


def test_terminate_accepts_active_job_and_answers_202_with_batch_headers(
    emulator: BatchEmulator, http: requests.Session
) -> None:
    emulator.terminate_delay = 60
    emulator.add_job("nightly-42")
    client_request_id = str(uuid.uuid4())
    response = terminate(
        http,
        emulator,
        "nightly-42",
        headers={"client-request-id": client_request_id, "return-client-request-id": "true"},
    )
    assert response.status_code == 202
    assert response.content == b""
    assert response.headers["Content-Length"] == "0"
    assert uuid.UUID(response.headers["request-id"])
    assert response.headers["client-request-id"] == client_request_id
    assert response.headers["DataServiceId"] == f"{emulator.url}/jobs/nightly-42"
    job = emulator.job("nightly-42")
    assert job is not None
    assert response.headers["ETag"] == job.etag
    assert parsedate_to_datetime(response.headers["Last-Modified"]) == job.last_modified.replace(microsecond=0)


def test_terminate_moves_job_to_terminating_with_reason_and_new_etag(
    emulator: BatchEmulator, http: requests.Session
) -> None:
    emulator.terminate_delay = 60
    before = emulator.add_job("render")
    terminate(http, emulator, "render", reason="budget exceeded")
    job = emulator.job("render")
    assert job is not None
    assert job.state == JobState.TERMINATING
    assert job.terminate_reason == "budget exceeded"
    assert job.etag != before.etag
    assert job.last_modified > before.last_modified
    assert job.terminate_count == 1


def test_terminate_records_ledger_entry_with_client_request_id(emulator: BatchEmulator, http: requests.Session) -> None:
    emulator.add_job("render")
    client_request_id = str(uuid.uuid4())
    started = time.time()
    params = {"force": "true", "api-version": "2024-07-01.20.0"}
    terminate(http, emulator, "render", headers={"client-request-id": client_request_id}, params=params)
    [entry] = emulator.terminations
    assert (entry.job_id, entry.reason, entry.client_request_id, entry.force) == (
        "render",
        "budget exceeded",
        client_request_id,
        True,
    )
    assert started - 1 <= entry.at <= time.time() + 1


def test_terminate_without_reason_records_user_terminate(emulator: BatchEmulator, http: requests.Session) -> None:
    emulator.add_job("render")
    assert terminate(http, emulator, "render", reason=None).status_code == 202
    assert emulator.terminations[0].reason == "UserTerminate"


def test_client_request_id_is_echoed_only_when_asked(emulator: BatchEmulator, http: requests.Session) -> None:
    emulator.add_job("render")
    response = terminate(http, emulator, "render", headers={"client-request-id": str(uuid.uuid4())})
    assert response.status_code == 202
    assert "client-request-id" not in response.headers


def test_error_answers_echo_client_request_id_and_carry_request_id(
    emulator: BatchEmulator, http: requests.Session
) -> None:
    client_request_id = str(uuid.uuid4())
    response = terminate(
        http,
        emulator,
        "missing",
        headers={"client-request-id": client_request_id, "return-client-request-id": "true"},
    )
    assert response.status_code == 404
    assert response.headers["client-request-id"] == client_request_id
    assert uuid.UUID(response.headers["request-id"])


def test_job_ids_are_case_insensitive_like_batch(emulator: BatchEmulator, http: requests.Session) -> None:
    emulator.add_job("Nightly-Render")
    assert terminate(http, emulator, "nightly-render").status_code == 202
    assert emulator.terminations[0].job_id == "Nightly-Render"
    with pytest.raises(ValueError, match="already exists"):
        emulator.add_job("NIGHTLY-RENDER")


# ---------------------------------------------------------------- job states


def test_terminated_job_completes_on_next_read_when_delay_is_zero(
    emulator: BatchEmulator, http: requests.Session
) -> None:
    emulator.add_job("render")
    terminate(http, emulator, "render")
    job = emulator.job("render")
    assert job is not None
    assert job.state == JobState.COMPLETED
    assert job.previous_state == JobState.TERMINATING
    assert job.end_time is not None
    error = assert_batch_error(terminate(http, emulator, "render"), 409, "JobCompleted")
    assert error["message"]["value"].startswith("The specified job is already in a completed state.")


def test_terminating_job_completes_after_terminate_delay(emulator: BatchEmulator, http: requests.Session) -> None:
    emulator.terminate_delay = 0.2
    emulator.add_job("render")
    terminate(http, emulator, "render")
    assert get(http, emulator, "/jobs/render").json()["state"] == "terminating"
    time.sleep(0.25)
    assert get(http, emulator, "/jobs/render").json()["state"] == "completed"


def test_second_terminate_while_terminating_is_job_being_terminated_and_not_in_ledger(
    emulator: BatchEmulator, http: requests.Session
) -> None:
    emulator.terminate_delay = 60
    emulator.add_job("render")
    assert terminate(http, emulator, "render").status_code == 202
    assert_batch_error(terminate(http, emulator, "render"), 409, "JobBeingTerminated")
    assert len(emulator.terminations) == 1
    job = emulator.job("render")
    assert job is not None
    assert job.terminate_count == 2


@pytest.mark.parametrize(
    ("state", "code"),
    [
        (JobState.DELETING, "JobBeingDeleted"),
        (JobState.TERMINATING, "JobBeingTerminated"),
        (JobState.COMPLETED, "JobCompleted"),
    ],
)
def test_terminate_conflicts_with_jobs_not_active(
    emulator: BatchEmulator, http: requests.Session, state: JobState, code: str
) -> None:
    emulator.add_job("render", state)
    assert_batch_error(terminate(http, emulator, "render"), 409, code)
    assert emulator.terminations == []
    job = emulator.job("render")
    assert job is not None
    assert job.state == state


def test_disabled_job_is_terminable_like_active(emulator: BatchEmulator, http: requests.Session) -> None:
    emulator.terminate_delay = 60
    emulator.add_job("render", JobState.DISABLED)
    assert terminate(http, emulator, "render").status_code == 202
    job = emulator.job("render")
    assert job is not None
    assert job.state == JobState.TERMINATING
    assert job.previous_state == JobState.DISABLED


def test_set_state_moves_job_like_the_service(emulator: BatchEmulator, http: requests.Session) -> None:
    before = emulator.add_job("render")
    after = emulator.set_state("render", JobState.DELETING)
    assert after.etag != before.etag
    assert_batch_error(terminate(http, emulator, "render"), 409, "JobBeingDeleted")


def test_unknown_job_is_job_not_found(emulator: BatchEmulator, http: requests.Session) -> None:
    response = terminate(http, emulator, "missing")
    error = assert_batch_error(response, 404, "JobNotFound")
    text, request_id, when = error["message"]["value"].split("\n")
    assert text == "The specified job does not exist."
    assert request_id == f"RequestId:{response.headers['request-id']}"
    assert when.startswith("Time:")
    assert when.endswith("Z")
    assert "values" not in error


def test_auto_create_jobs_terminates_unknown_ids(emulator: BatchEmulator, http: requests.Session) -> None:
    emulator.auto_create_jobs = True
    emulator.terminate_delay = 60
    assert terminate(http, emulator, "load-0001").status_code == 202
    job = emulator.job("load-0001")
    assert job is not None
    assert job.state == JobState.TERMINATING


def test_concurrent_terminates_of_one_job_accept_exactly_one(emulator: BatchEmulator) -> None:
    emulator.terminate_delay = 60
    emulator.add_job("render")

    def one(_: int) -> int:
        with requests.Session() as session:
            return terminate(session, emulator, "render").status_code

    with ThreadPoolExecutor(max_workers=32) as pool:
        statuses = list(pool.map(one, range(64)))
    assert statuses.count(202) == 1
    assert statuses.count(409) == 63
    assert len(emulator.terminations) == 1


def test_many_concurrent_connections_are_all_served(emulator: BatchEmulator) -> None:
    emulator.auto_create_jobs = True
    barrier = threading.Barrier(48)

    def one(index: int) -> int:
        with requests.Session() as session:
            barrier.wait(timeout=10)
            return terminate(session, emulator, f"job-{index}").status_code

    with ThreadPoolExecutor(max_workers=48) as pool:
        statuses = list(pool.map(one, range(48)))
    assert statuses == [202] * 48
    assert len(emulator.terminations) == 48


# ---------------------------------------------------------------- request validation


@pytest.mark.parametrize(
    ("params", "code", "parameter"),
    [
        ({"api-version": None}, "MissingRequiredQueryParameter", "api-version"),
        ({"api-version": "2023-11-01"}, "UnsupportedRequestVersion", "api-version"),
        ({"api-version": "latest"}, "UnsupportedRequestVersion", "api-version"),
        ({"timeout": 0}, "InvalidQueryParameterValue", "timeout"),
        ({"timeout": "soon"}, "InvalidQueryParameterValue", "timeout"),
        ({"force": "true"}, "UnsupportedQueryParameter", "force"),
        ({"force": "yes", "api-version": "2024-07-01.20.0"}, "InvalidQueryParameterValue", "force"),
    ],
)
def test_bad_query_parameters_are_rejected_before_anything_else(
    emulator: BatchEmulator, http: requests.Session, params: dict[str, Any], code: str, parameter: str
) -> None:
    # No Authorization and an unknown job: the query is checked first.
    response = terminate(http, emulator, "missing", params=params, headers={"Authorization": None})
    error = assert_batch_error(response, 400, code)
    assert detail(error)["QueryParameterName"] == parameter


@pytest.mark.parametrize(
    "params",
    [
        {"timeout": 1},
        # "If the value is larger than 30, the default will be used instead" (the specs' timeOut).
        {"timeout": 31},
        {"timeout": 30, "force": "false", "api-version": "2024-07-01.20.0"},
        {"api-version": "2024-07-01.20.0"},
    ],
)
def test_valid_query_variants_are_accepted(
    emulator: BatchEmulator, http: requests.Session, params: dict[str, Any]
) -> None:
    emulator.add_job("render")
    assert terminate(http, emulator, "render", params=params).status_code == 202


@pytest.mark.parametrize("authorization", [None, "Basic dXNlcjpwYXNz", "Bearer "])
def test_missing_or_non_bearer_authorization_is_401(
    emulator: BatchEmulator, http: requests.Session, authorization: str | None
) -> None:
    emulator.add_job("render")
    response = terminate(http, emulator, "render", headers={"Authorization": authorization})
    error = assert_batch_error(response, 401, "AuthenticationFailed")
    assert response.headers["WWW-Authenticate"] == WWW_AUTHENTICATE
    assert 'resource="https://batch.core.windows.net/"' in response.headers["WWW-Authenticate"]
    assert "AuthenticationErrorDetail" in detail(error)
    job = emulator.job("render")
    assert job is not None
    assert job.state == JobState.ACTIVE


def test_authorize_callback_decides_which_tokens_pass(emulator: BatchEmulator, http: requests.Session) -> None:
    seen: list[str] = []

    def authorize(token: str) -> bool:
        seen.append(token)
        return token == "good"

    emulator.authorize = authorize
    emulator.add_job("render")
    assert_batch_error(
        terminate(http, emulator, "render", headers={"Authorization": "Bearer bad"}), 401, "AuthenticationFailed"
    )
    assert terminate(http, emulator, "render", headers={"Authorization": "Bearer good"}).status_code == 202
    assert seen == ["bad", "good"]


@pytest.mark.parametrize("content_type", ["text/plain", "application/xml"])
def test_non_json_content_type_is_invalid_header_value(
    emulator: BatchEmulator, http: requests.Session, content_type: str
) -> None:
    emulator.add_job("render")
    response = terminate(http, emulator, "render", headers={"Content-Type": content_type})
    error = assert_batch_error(response, 400, "InvalidHeaderValue")
    assert detail(error)["HeaderName"] == "Content-Type"


def test_plain_application_json_content_type_is_accepted(emulator: BatchEmulator, http: requests.Session) -> None:
    emulator.add_job("render")
    response = terminate(http, emulator, "render", headers={"Content-Type": "application/json"})
    assert response.status_code == 202


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("client-request-id", "not-a-uuid"),
        ("ocp-date", "yesterday"),
        ("If-Modified-Since", "2024-01-01"),
        ("If-Unmodified-Since", "soon"),
    ],
)
def test_malformed_headers_are_invalid_header_value(
    emulator: BatchEmulator, http: requests.Session, name: str, value: str
) -> None:
    emulator.add_job("render")
    error = assert_batch_error(terminate(http, emulator, "render", headers={name: value}), 400, "InvalidHeaderValue")
    assert detail(error)["HeaderName"].lower() == name.lower()


@pytest.mark.parametrize("body", [b"not json", b"[]", b'"text"', b'{"terminateReason": 5}', b"\xff\xfe"])
def test_body_must_be_json_object_with_string_reason(
    emulator: BatchEmulator, http: requests.Session, body: bytes
) -> None:
    emulator.add_job("render")
    assert_batch_error(terminate(http, emulator, "render", body=body), 400, "InvalidRequestBody")
    assert emulator.terminations == []


@pytest.mark.parametrize(
    "path",
    [
        "/jobs/bad%20id/terminate",
        "/jobs/bad.id/terminate",
        "/jobs/" + "x" * 65 + "/terminate",
        "/jobs/render/stop",
        "/pools",
        "/",
    ],
)
def test_malformed_paths_are_invalid_uri(emulator: BatchEmulator, http: requests.Session, path: str) -> None:
    response = http.post(
        f"{emulator.url}{path}", params={"api-version": API_VERSION}, headers=AUTH, json={}, timeout=10
    )
    assert_batch_error(response, 400, "InvalidUri")


def test_longest_valid_job_id_is_accepted(emulator: BatchEmulator, http: requests.Session) -> None:
    job_id = "A_b-9" * 12 + "abcd"
    emulator.add_job(job_id)
    assert terminate(http, emulator, job_id).status_code == 202


def test_add_job_rejects_ids_batch_would_reject(emulator: BatchEmulator) -> None:
    with pytest.raises(ValueError, match="invalid Batch job id"):
        emulator.add_job("has space")


# ---------------------------------------------------------------- conditional headers


@pytest.fixture
def old_job(emulator: BatchEmulator) -> str:
    """A job last modified at PAST; returns its ETag."""
    return emulator.add_job("render", creation_time=PAST).etag


@pytest.mark.parametrize(
    ("name", "value", "accepted"),
    [
        ("If-Match", "{etag}", True),
        ("If-Match", '"{etag}"', True),
        ("If-Match", "*", True),
        ("If-Match", "0x8D0000000000000", False),
        ("If-None-Match", "0x8D0000000000000", True),
        ("If-None-Match", "{etag}", False),
        ("If-None-Match", "*", False),
        ("If-Modified-Since", http_date(PAST - timedelta(seconds=1)), True),
        ("If-Modified-Since", http_date(PAST), False),
        ("If-Modified-Since", http_date(PAST + timedelta(days=1)), False),
        ("If-Unmodified-Since", http_date(PAST), True),
        ("If-Unmodified-Since", http_date(PAST + timedelta(days=1)), True),
        ("If-Unmodified-Since", http_date(PAST - timedelta(seconds=1)), False),
    ],
)
def test_conditional_headers_gate_terminate(
    emulator: BatchEmulator, http: requests.Session, old_job: str, name: str, value: str, accepted: bool
) -> None:
    response = terminate(http, emulator, "render", headers={name: value.format(etag=old_job)})
    if accepted:
        assert response.status_code == 202, response.text
    else:
        error = assert_batch_error(response, 412, "ConditionNotMet")
        assert detail(error) == {"HeaderName": name}
        assert emulator.terminations == []


def test_etag_from_a_read_satisfies_if_match(emulator: BatchEmulator, http: requests.Session) -> None:
    emulator.add_job("render")
    etag = get(http, emulator, "/jobs/render").json()["eTag"]
    assert terminate(http, emulator, "render", headers={"If-Match": etag}).status_code == 202


def test_state_conflict_is_reported_before_failed_condition(emulator: BatchEmulator, http: requests.Session) -> None:
    emulator.add_job("render", JobState.COMPLETED)
    response = terminate(http, emulator, "render", headers={"If-Match": "0x8D0000000000000"})
    assert_batch_error(response, 409, "JobCompleted")


# ---------------------------------------------------------------- faults


def test_status_fault_answers_batch_error_once_then_normally(emulator: BatchEmulator, http: requests.Session) -> None:
    emulator.add_job("render")
    emulator.inject(Fault.status(503, "ServerBusy", retry_after=2, values={"Hint": "later"}))
    response = terminate(http, emulator, "render")
    error = assert_batch_error(response, 503, "ServerBusy")
    assert response.headers["Retry-After"] == "2"
    assert detail(error) == {"Hint": "later"}
    assert error["message"]["value"].startswith("The server is currently unable to receive requests.")
    assert state_of(emulator, "render") == JobState.ACTIVE
    assert terminate(http, emulator, "render").status_code == 202
    assert [request.fault for request in emulator.requests] == ["status:503 ServerBusy", None]


def test_status_fault_uses_given_message_and_fractional_retry_after(
    emulator: BatchEmulator, http: requests.Session
) -> None:
    emulator.add_job("render")
    emulator.inject(Fault.status(429, "TooManyRequests", "slow down", retry_after=0.5))
    response = terminate(http, emulator, "render")
    error = assert_batch_error(response, 429, "TooManyRequests")
    assert error["message"]["value"].startswith("slow down\nRequestId:")
    assert response.headers["Retry-After"] == "0.5"


def test_fault_times_counts_matching_requests(emulator: BatchEmulator, http: requests.Session) -> None:
    emulator.add_job("render")
    emulator.inject(Fault.status(500, "InternalError"), times=2)
    statuses = [terminate(http, emulator, "render").status_code for _ in range(3)]
    assert statuses == [500, 500, 202]


def test_faults_are_played_fifo(emulator: BatchEmulator, http: requests.Session) -> None:
    emulator.add_job("render")
    emulator.inject(Fault.status(503, "ServerBusy"))
    emulator.inject(Fault.status(500, "InternalError"))
    codes = [terminate(http, emulator, "render").json()["code"] for _ in range(2)]
    assert codes == ["ServerBusy", "InternalError"]


def test_fault_for_one_job_leaves_other_jobs_alone(emulator: BatchEmulator, http: requests.Session) -> None:
    emulator.add_job("victim")
    emulator.add_job("bystander")
    emulator.inject(Fault.status(503, "ServerBusy"), job_id="VICTIM")
    assert terminate(http, emulator, "bystander").status_code == 202
    assert terminate(http, emulator, "victim").status_code == 503
    assert terminate(http, emulator, "victim").status_code == 202


def test_faults_apply_only_to_terminate_requests(emulator: BatchEmulator, http: requests.Session) -> None:
    emulator.add_job("render")
    emulator.inject(Fault.status(503, "ServerBusy"))
    assert get(http, emulator, "/jobs/render").status_code == 200
    assert terminate(http, emulator, "render").status_code == 503


def test_inject_rejects_non_positive_times(emulator: BatchEmulator) -> None:
    with pytest.raises(ValueError, match="times"):
        emulator.inject(Fault.drop(), times=0)


def test_drop_closes_connection_without_terminating(emulator: BatchEmulator, http: requests.Session) -> None:
    emulator.add_job("render")
    emulator.inject(Fault.drop())
    with pytest.raises(requests.ConnectionError):
        terminate(http, emulator, "render")
    assert state_of(emulator, "render") == JobState.ACTIVE
    assert emulator.terminations == []
    assert emulator.requests[0].fault == "drop"
    assert terminate(http, emulator, "render").status_code == 202


def test_applied_drop_terminates_but_loses_the_answer(emulator: BatchEmulator, http: requests.Session) -> None:
    emulator.terminate_delay = 60
    emulator.add_job("render")
    emulator.inject(Fault.drop(apply=True))
    with pytest.raises(requests.ConnectionError):
        terminate(http, emulator, "render")
    assert state_of(emulator, "render") == JobState.TERMINATING
    assert len(emulator.terminations) == 1
    assert_batch_error(terminate(http, emulator, "render"), 409, "JobBeingTerminated")


def test_delay_answers_normally_after_waiting(emulator: BatchEmulator, http: requests.Session) -> None:
    emulator.add_job("render")
    emulator.inject(Fault.delay(0.3))
    started = time.monotonic()
    assert terminate(http, emulator, "render").status_code == 202
    assert time.monotonic() - started >= 0.3


def test_applied_delay_terminates_even_when_the_client_times_out(
    emulator: BatchEmulator, http: requests.Session
) -> None:
    emulator.add_job("render")
    emulator.inject(Fault.delay(5, apply=True))
    with pytest.raises(requests.ReadTimeout):
        terminate(http, emulator, "render", timeout=0.2)
    assert len(emulator.terminations) == 1


def test_unapplied_delay_terminates_only_after_the_wait(emulator: BatchEmulator, http: requests.Session) -> None:
    emulator.add_job("render")
    emulator.inject(Fault.delay(0.5, apply=False))
    with pytest.raises(requests.ReadTimeout):
        terminate(http, emulator, "render", timeout=0.1)
    assert emulator.terminations == []
    deadline = time.monotonic() + 5
    while not emulator.terminations and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(emulator.terminations) == 1


def outcomes(seed: int, count: int = 60) -> list[str]:
    """Terminate `count` fresh jobs on a new emulator with fault rates; return what each got."""
    rates = {"server_busy": 0.2, "throttle": 0.15, "internal": 0.1, "drop": 0.1, "drop_applied": 0.05}
    seen: list[str] = []
    with BatchEmulator() as emulator, requests.Session() as session:
        emulator.auto_create_jobs = True
        emulator.set_fault_rates(rates, seed=seed)
        for index in range(count):
            try:
                response = terminate(session, emulator, f"soak-{index}")
            except requests.ConnectionError:
                seen.append("dropped")
                continue
            seen.append(str(response.status_code))
            if response.status_code == 429:
                assert response.headers["Retry-After"] == "1"
                assert response.json()["code"] == "TooManyRequests"
    return seen


def test_fault_rates_are_reproducible_with_a_seed() -> None:
    first, second, other = outcomes(7), outcomes(7), outcomes(8)
    assert first == second
    assert first != other
    assert {"202", "503", "429", "500", "dropped"} <= set(first)


def test_constructor_seed_drives_fault_rates(http: requests.Session) -> None:
    def run() -> list[int]:
        with BatchEmulator(seed=3) as emulator:
            emulator.auto_create_jobs = True
            emulator.set_fault_rates({"internal": 0.5})
            return [terminate(http, emulator, f"j{index}").status_code for index in range(20)]

    first = run()
    assert first == run()
    assert set(first) == {202, 500}


def test_slow_rate_delays_by_slow_seconds(emulator: BatchEmulator, http: requests.Session) -> None:
    emulator.auto_create_jobs = True
    emulator.slow_seconds = 0.3
    emulator.set_fault_rates({"slow": 1.0})
    started = time.monotonic()
    assert terminate(http, emulator, "render").status_code == 202
    assert time.monotonic() - started >= 0.3
    assert emulator.requests[0].fault == "delay:0.3s(applied)"


@pytest.mark.parametrize("rates", [{"meteor": 0.1}, {"drop": 1.5}, {"drop": 0.6, "internal": 0.6}])
def test_set_fault_rates_rejects_nonsense(emulator: BatchEmulator, rates: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="fault"):
        emulator.set_fault_rates(rates)


def test_reset_forgets_jobs_requests_ledger_and_faults(emulator: BatchEmulator, http: requests.Session) -> None:
    emulator.add_job("render")
    terminate(http, emulator, "render")
    emulator.inject(Fault.status(503, "ServerBusy"))
    emulator.set_fault_rates({"internal": 1.0})
    emulator.reset()
    assert (emulator.job("render"), emulator.requests, emulator.terminations) == (None, [], [])
    emulator.add_job("render")
    assert terminate(http, emulator, "render").status_code == 202


def test_latency_is_added_to_every_answer(emulator: BatchEmulator, http: requests.Session) -> None:
    emulator.latency = 0.15
    started = time.monotonic()
    assert terminate(http, emulator, "missing").status_code == 404
    assert get(http, emulator, "/jobs").status_code == 200
    assert time.monotonic() - started >= 0.3


# ---------------------------------------------------------------- recording


def test_requests_are_recorded_with_decoded_query_lowercase_headers_and_body(
    emulator: BatchEmulator, http: requests.Session
) -> None:
    emulator.add_job("render")
    client_request_id = str(uuid.uuid4())
    terminate(http, emulator, "render", headers={"client-request-id": client_request_id}, params={"force": "true"})
    [recorded] = emulator.requests
    assert (recorded.method, recorded.path, recorded.job_id) == ("POST", "/jobs/render/terminate", "render")
    assert recorded.query == {"api-version": API_VERSION, "timeout": "30", "force": "true"}
    assert recorded.headers["client-request-id"] == client_request_id
    assert recorded.headers["content-type"] == "application/json; odata=minimalmetadata"
    assert recorded.headers["authorization"] == "Bearer test-token"
    assert recorded.json() == {"terminateReason": "budget exceeded"}


def test_request_recording_can_be_turned_off_for_long_runs(emulator: BatchEmulator, http: requests.Session) -> None:
    emulator.record_requests = False
    emulator.add_job("render")
    assert terminate(http, emulator, "render").status_code == 202
    assert emulator.requests == []
    assert len(emulator.terminations) == 1


def test_job_returns_snapshots_not_live_objects(emulator: BatchEmulator) -> None:
    emulator.add_job("render", metadata={"team": "vfx"})
    snapshot = emulator.job("render")
    assert snapshot is not None
    snapshot.metadata["team"] = "changed"
    snapshot.state = JobState.DELETING
    assert emulator.job("render") == emulator.jobs()[0]
    assert job_of(emulator, "render").metadata == {"team": "vfx"}
    assert state_of(emulator, "render") == JobState.ACTIVE


# ---------------------------------------------------------------- reads


def test_get_job_returns_batch_json(emulator: BatchEmulator, http: requests.Session) -> None:
    emulator.add_job("render", creation_time=PAST, metadata={"team": "vfx", "owner": "ana"})
    response = get(http, emulator, "/jobs/render")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == ODATA_JSON
    job = response.json()
    assert job["odata.metadata"] == f"{emulator.url}/$metadata#jobs/@Element"
    assert job["id"] == "render"
    assert job["url"] == f"{emulator.url}/jobs/render"
    assert job["state"] == "active"
    assert job["creationTime"] == job["lastModified"] == "2024-01-02T03:04:05.0000000Z"
    assert job["stateTransitionTime"] == job["creationTime"]
    assert job["metadata"] == [{"name": "team", "value": "vfx"}, {"name": "owner", "value": "ana"}]
    assert job["executionInfo"] == {"startTime": "2024-01-02T03:04:05.0000000Z"}
    assert job["eTag"] == job_of(emulator, "render").etag


def test_get_terminated_job_shows_execution_info(emulator: BatchEmulator, http: requests.Session) -> None:
    emulator.add_job("render")
    terminate(http, emulator, "render", reason="over budget")
    job = get(http, emulator, "/jobs/render").json()
    assert job["state"] == "completed"
    assert job["previousState"] == "terminating"
    assert job["executionInfo"]["terminateReason"] == "over budget"
    assert "endTime" in job["executionInfo"]
    assert "metadata" not in job


def test_get_job_honours_select(emulator: BatchEmulator, http: requests.Session) -> None:
    emulator.add_job("render")
    job = get(http, emulator, "/jobs/render", **{"$select": "id,state"}).json()
    assert set(job) == {"odata.metadata", "id", "state"}


def test_get_unknown_job_is_job_not_found(emulator: BatchEmulator, http: requests.Session) -> None:
    assert_batch_error(get(http, emulator, "/jobs/missing"), 404, "JobNotFound")
    assert_batch_error(get(http, emulator, "/jobs/missing/taskcounts"), 404, "JobNotFound")


def test_taskcounts_reports_counts_and_slot_counts(emulator: BatchEmulator, http: requests.Session) -> None:
    emulator.add_job("render", task_counts={"active": 3, "running": 2, "succeeded": 4, "completed": 5, "failed": 1})
    body = get(http, emulator, "/jobs/render/taskcounts").json()
    expected = {"active": 3, "running": 2, "completed": 5, "succeeded": 4, "failed": 1}
    assert body["taskCounts"] == expected
    assert body["taskSlotCounts"] == expected


def test_add_job_rejects_unknown_task_count_keys(emulator: BatchEmulator) -> None:
    with pytest.raises(ValueError, match="task count"):
        emulator.add_job("render", task_counts={"pending": 1})


@pytest.mark.parametrize("path", ["/jobs", "/jobs/render", "/jobs/render/taskcounts"])
def test_reads_require_authorization(emulator: BatchEmulator, http: requests.Session, path: str) -> None:
    emulator.add_job("render")
    response = http.get(f"{emulator.url}{path}", params={"api-version": API_VERSION}, timeout=10)
    assert_batch_error(response, 401, "AuthenticationFailed")


def test_reads_require_api_version(emulator: BatchEmulator, http: requests.Session) -> None:
    response = http.get(f"{emulator.url}/jobs", headers=AUTH, timeout=10)
    assert_batch_error(response, 400, "MissingRequiredQueryParameter")


def test_list_pages_through_filtered_jobs_with_next_link(emulator: BatchEmulator, http: requests.Session) -> None:
    for index in range(5):
        emulator.add_job(f"active-{index}")
        emulator.add_job(f"done-{index}", JobState.COMPLETED)
    params = {"$filter": "state eq 'active'", "$select": "id,state,creationTime,metadata", "maxresults": 2}
    page = get(http, emulator, "/jobs", **params).json()
    assert page["odata.metadata"] == f"{emulator.url}/$metadata#jobs"
    seen, pages = [job["id"] for job in page["value"]], 1
    while "odata.nextLink" in page:
        page = http.get(page["odata.nextLink"], headers=AUTH, timeout=10).json()
        seen += [job["id"] for job in page["value"]]
        pages += 1
    assert seen == [f"active-{index}" for index in range(5)]
    assert pages == 3


def test_list_paging_survives_jobs_changing_state_between_pages(
    emulator: BatchEmulator, http: requests.Session
) -> None:
    for index in range(4):
        emulator.add_job(f"active-{index}")
    page = get(http, emulator, "/jobs", **{"$filter": "state eq 'active'", "maxresults": 2}).json()
    terminate(http, emulator, "active-0")
    terminate(http, emulator, "active-2")
    rest = http.get(page["odata.nextLink"], headers=AUTH, timeout=10).json()
    assert [job["id"] for job in rest["value"]] == ["active-3"]
    assert "odata.nextLink" not in rest


def test_list_select_limits_fields(emulator: BatchEmulator, http: requests.Session) -> None:
    emulator.add_job("render", metadata={"team": "vfx"})
    [job] = get(http, emulator, "/jobs", **{"$select": "id,state,creationTime,metadata"}).json()["value"]
    assert set(job) == {"id", "state", "creationTime", "metadata"}


def test_list_without_filter_returns_every_state_and_no_next_link(
    emulator: BatchEmulator, http: requests.Session
) -> None:
    for state in JobState:
        emulator.add_job(f"job-{state.value}", state)
    page = get(http, emulator, "/jobs").json()
    assert [job["state"] for job in page["value"]] == [state.value for state in JobState]
    assert "odata.nextLink" not in page


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("$filter", "poolInfo/poolId eq 'render'"),
        ("$filter", "state eq 'sleeping'"),
        ("$select", "id,colour"),
        ("maxresults", "0"),
        ("maxresults", "1001"),
        ("maxresults", "many"),
        ("$skiptoken", "nowhere"),
    ],
)
def test_list_rejects_unsupported_query_values(
    emulator: BatchEmulator, http: requests.Session, name: str, value: str
) -> None:
    error = assert_batch_error(get(http, emulator, "/jobs", **{name: value}), 400, "InvalidQueryParameterValue")
    assert detail(error)["QueryParameterName"] == name


# ---------------------------------------------------------------- server lifecycle


def test_server_speaks_http11_keep_alive(emulator: BatchEmulator) -> None:
    emulator.add_job("render")
    connection = HTTPConnection("127.0.0.1", emulator.port, timeout=10)
    try:
        path = f"/jobs/render?api-version={API_VERSION}"
        connection.request("GET", path, headers=AUTH)
        first = connection.getresponse()
        first.read()
        sock = connection.sock
        connection.request("GET", path, headers=AUTH)
        second = connection.getresponse()
        second.read()
        assert (first.version, first.will_close, second.status) == (11, False, 200)
        assert connection.sock is sock
    finally:
        connection.close()


def test_stop_releases_port_and_wakes_slow_requests(http: requests.Session) -> None:
    emulator = BatchEmulator().start()
    emulator.auto_create_jobs = True
    emulator.inject(Fault.delay(30))
    url = emulator.url
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(terminate, requests.Session(), emulator, "render", timeout=20)
        time.sleep(0.2)
        started = time.monotonic()
        emulator.stop()
        assert time.monotonic() - started < 2
        with pytest.raises(requests.ConnectionError):
            pending.result(timeout=5)
    with pytest.raises(requests.ConnectionError):
        http.get(f"{url}/jobs", timeout=2)


def test_context_manager_starts_and_stops(http: requests.Session) -> None:
    with BatchEmulator() as emulator:
        assert emulator.url.startswith("http://127.0.0.1:")
        assert get(http, emulator, "/jobs").status_code == 200
        with pytest.raises(RuntimeError, match="already started"):
            emulator.start()
    assert not emulator.running
    with pytest.raises(RuntimeError, match="not started"):
        _ = emulator.url
