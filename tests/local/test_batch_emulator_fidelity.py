"""The emulator as the Batch REST spec has it: api-versions, force, query names, conditions, states, auth, lists."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from urllib.parse import urlsplit

import pytest
import requests
from azure.identity import ManagedIdentityCredential

from local.batch_emulator import WWW_AUTHENTICATE, BatchEmulator, Fault, JobState, http_date

pytestmark = pytest.mark.integration

OLD = "2023-11-01.18.0"
AUTH = {"Authorization": "Bearer test-token"}
# Every stable version of azure-rest-api-specs specification/batch/data-plane/Batch/readme.md (its package-* tags).
ALL_VERSIONS = (
    "2025-06-01",
    "2024-07-01.20.0",
    "2024-02-01.19.0",
    "2023-11-01.18.0",
    "2023-05-01.17.0",
    "2022-10-01.16.0",
    "2022-01-01.15.0",
    "2021-06-01.14.0",
    "2020-09-01.12.0",
    "2020-03-01.11.0",
    "2019-08-01.10.0",
    "2019-06-01.9.0",
    "2018-12-01.8.0",
    "2018-08-01.7.0",
    "2018-03-01.6.1",
    "2017-09-01.6.0",
    "2017-06-01.5.1",
    "2017-05-01.5.0",
    "2017-01-01.4.0",
    "2016-07-01.3.1",
    "2016-02-01.3.0",
    "2015-12-01.2.2",
)


@pytest.fixture(scope="module")
def server() -> Iterator[BatchEmulator]:
    with BatchEmulator() as emulator:
        yield emulator


@pytest.fixture
def emulator(server: BatchEmulator) -> BatchEmulator:
    server.reset()
    server.authorize = None
    server.latency = 0.0
    server.terminate_delay = 0.0
    server.auto_create_jobs = False
    server.auth_failure_status = 401
    return server


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


def post_terminate(
    http: requests.Session,
    emulator: BatchEmulator,
    job_id: str,
    *,
    params: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
    body: bytes | None = b'{"terminateReason": "budget"}',
) -> requests.Response:
    """A terminate with api-version OLD unless params say otherwise."""
    sent = {**AUTH, **({"Content-Type": "application/json; odata=minimalmetadata"} if body else {})}
    return http.post(
        f"{emulator.url}/jobs/{job_id}/terminate",
        params={"api-version": OLD, **(params or {})},
        headers={**sent, **(headers or {})},
        data=body,
        timeout=10,
    )


def get(http: requests.Session, emulator: BatchEmulator, path: str, **params: str) -> requests.Response:
    return http.get(f"{emulator.url}{path}", params={"api-version": OLD, **params}, headers=AUTH, timeout=10)


def code_of(response: requests.Response) -> str:
    return str(response.json()["code"])


def values_of(response: requests.Response) -> dict[str, str]:
    return {item["key"]: item["value"] for item in response.json().get("values", [])}


def list_ids(http: requests.Session, emulator: BatchEmulator, **params: str) -> list[str]:
    """Every job id a filtered list returns, following odata.nextLink."""
    page = get(http, emulator, "/jobs", **params)
    assert page.status_code == 200, page.text
    document = page.json()
    ids = [job["id"] for job in document["value"]]
    while "odata.nextLink" in document:
        document = http.get(document["odata.nextLink"], headers=AUTH, timeout=10).json()
        ids += [job["id"] for job in document["value"]]
    return ids


# ---------------------------------------------------------------- api-versions and query parameters


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_every_real_api_version_is_served(emulator: BatchEmulator, http: requests.Session, version: str) -> None:
    emulator.add_job("render")
    assert post_terminate(http, emulator, "render", params={"api-version": version}).status_code == 202


# 2025-06-01.21.0 has no spec folder; 2014-10-01.1.0 and 2021-01-01.13.0 are not in the readme's tags.
@pytest.mark.parametrize(
    "version", ["2025-06-01.21.0", "2024-07-01", "2099-01-01.99.0", "2014-10-01.1.0", "2021-01-01.13.0"]
)
def test_other_api_versions_are_unsupported_request_version(
    emulator: BatchEmulator, http: requests.Session, version: str
) -> None:
    emulator.add_job("render")
    for response in (
        post_terminate(http, emulator, "render", params={"api-version": version}),
        get(http, emulator, "/jobs/render", **{"api-version": version}),
    ):
        assert (response.status_code, code_of(response)) == (400, "UnsupportedRequestVersion")
        assert values_of(response)["QueryParameterValue"] == version
    assert emulator.terminations == []


@pytest.mark.parametrize("version", ["2015-12-01.2.2", "2023-11-01.18.0", "2024-02-01.19.0"])
def test_force_before_2024_07_01_is_an_unsupported_query_parameter(
    emulator: BatchEmulator, http: requests.Session, version: str
) -> None:
    emulator.add_job("render")
    response = post_terminate(http, emulator, "render", params={"api-version": version, "force": "true"})
    assert (response.status_code, code_of(response)) == (400, "UnsupportedQueryParameter")
    assert values_of(response)["QueryParameterName"] == "force"
    assert emulator.terminations == []


@pytest.mark.parametrize("version", ["2024-07-01.20.0", "2025-06-01"])
def test_force_from_2024_07_01_is_accepted_and_recorded(
    emulator: BatchEmulator, http: requests.Session, version: str
) -> None:
    emulator.add_job("render")
    response = post_terminate(http, emulator, "render", params={"api-version": version, "force": "true"})
    assert response.status_code == 202
    [termination] = emulator.terminations
    assert termination.force is True


@pytest.mark.parametrize("name", ["timeout", "timeOut", "TIMEOUT"])
def test_query_parameter_names_are_case_insensitive(emulator: BatchEmulator, http: requests.Session, name: str) -> None:
    emulator.add_job("render")
    bad = post_terminate(http, emulator, "render", params={name: "0"})
    assert (bad.status_code, code_of(bad)) == (400, "InvalidQueryParameterValue")
    assert post_terminate(http, emulator, "render", params={name: "30"}).status_code == 202


def test_case_insensitive_api_version_and_list_parameters(emulator: BatchEmulator, http: requests.Session) -> None:
    emulator.add_jobs(3, prefix="a-")
    response = http.get(
        f"{emulator.url}/jobs",
        params={"API-VERSION": OLD, "MaxResults": "2", "$Filter": "state eq 'active'"},
        headers=AUTH,
        timeout=10,
    )
    assert response.status_code == 200, response.text
    assert len(response.json()["value"]) == 2
    assert "odata.nextLink" in response.json()


def test_force_on_a_read_is_not_a_terminate_parameter(emulator: BatchEmulator, http: requests.Session) -> None:
    emulator.add_job("render")
    assert get(http, emulator, "/jobs/render", force="true").status_code == 200


# ---------------------------------------------------------------- the terminate body and conditions


def test_terminate_without_a_body_or_content_type_defaults_the_reason(
    emulator: BatchEmulator, http: requests.Session
) -> None:
    emulator.add_job("render")
    response = post_terminate(http, emulator, "render", body=None)
    assert response.status_code == 202
    assert emulator.terminations[0].reason == "UserTerminate"
    assert emulator.requests[0].headers.get("content-type") is None


def test_a_body_still_needs_a_json_content_type(emulator: BatchEmulator, http: requests.Session) -> None:
    emulator.add_job("render")
    response = post_terminate(http, emulator, "render", headers={"Content-Type": "text/plain"})
    assert (response.status_code, code_of(response)) == (400, "InvalidHeaderValue")


@pytest.mark.parametrize(
    "headers",
    [
        {"If-Match": "*", "If-None-Match": '"x"'},
        {"If-Match": "*", "If-Unmodified-Since": http_date(datetime.now(UTC))},
        {"If-Modified-Since": http_date(datetime(2020, 1, 1, tzinfo=UTC)), "If-None-Match": '"x"'},
    ],
)
def test_more_than_one_condition_header_is_refused(
    emulator: BatchEmulator, http: requests.Session, headers: dict[str, str]
) -> None:
    emulator.add_job("render")
    response = post_terminate(http, emulator, "render", headers=headers)
    assert (response.status_code, code_of(response)) == (400, "MultipleConditionHeadersNotSupported")
    read = http.get(f"{emulator.url}/jobs/render", params={"api-version": OLD}, headers={**AUTH, **headers}, timeout=10)
    assert (read.status_code, code_of(read)) == (400, "MultipleConditionHeadersNotSupported")
    assert emulator.terminations == []


def test_one_condition_header_still_gates_terminate(emulator: BatchEmulator, http: requests.Session) -> None:
    emulator.add_job("render")
    etag = get(http, emulator, "/jobs/render").headers["ETag"]
    stale = post_terminate(http, emulator, "render", headers={"If-Match": '"0x8DSTALE"'})
    assert (stale.status_code, code_of(stale)) == (412, "ConditionNotMet")
    assert post_terminate(http, emulator, "render", headers={"If-Match": etag}).status_code == 202


# ---------------------------------------------------------------- job states


@pytest.mark.parametrize(
    ("state", "status", "code"),
    [
        (JobState.ACTIVE, 202, None),
        (JobState.DISABLING, 202, None),
        (JobState.DISABLED, 202, None),
        (JobState.ENABLING, 202, None),
        (JobState.TERMINATING, 409, "JobBeingTerminated"),
        (JobState.COMPLETED, 409, "JobCompleted"),
        (JobState.DELETING, 409, "JobBeingDeleted"),
    ],
)
def test_terminate_answers_each_spec_state(
    emulator: BatchEmulator, http: requests.Session, state: JobState, status: int, code: str | None
) -> None:
    emulator.add_job("render", state)
    response = post_terminate(http, emulator, "render")
    assert response.status_code == status
    if code is not None:
        assert code_of(response) == code
    assert get(http, emulator, "/jobs/render").json()["state"] == ("completed" if status == 202 else state.value)


def test_job_states_are_the_specs_seven() -> None:
    assert [state.value for state in JobState] == [
        "active",
        "disabling",
        "disabled",
        "enabling",
        "terminating",
        "completed",
        "deleting",
    ]


def test_a_job_release_task_keeps_the_job_terminating_for_a_while(
    emulator: BatchEmulator, http: requests.Session
) -> None:
    emulator.add_job("render", job_release_seconds=0.4)
    assert post_terminate(http, emulator, "render").status_code == 202
    held = get(http, emulator, "/jobs/render").json()
    assert held["state"] == "terminating"
    assert held["jobReleaseTask"]["id"] == "jobrelease"
    again = post_terminate(http, emulator, "render")
    assert (again.status_code, code_of(again)) == (409, "JobBeingTerminated")
    deadline = time.monotonic() + 10
    while get(http, emulator, "/jobs/render").json()["state"] == "terminating" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert get(http, emulator, "/jobs/render").json()["state"] == "completed"


def test_force_ends_a_job_held_terminating(emulator: BatchEmulator, http: requests.Session) -> None:
    emulator.add_job("render", job_release_seconds=math.inf)
    assert post_terminate(http, emulator, "render").status_code == 202
    assert get(http, emulator, "/jobs/render").json()["state"] == "terminating"
    forced = post_terminate(http, emulator, "render", params={"api-version": "2025-06-01", "force": "true"})
    assert forced.status_code == 202
    job = get(http, emulator, "/jobs/render").json()
    assert job["state"] == "completed"
    assert job["executionInfo"]["terminateReason"] == "budget"
    assert [t.force for t in emulator.terminations] == [False, True]


def test_forced_terminate_of_an_active_job_skips_the_release_hold(
    emulator: BatchEmulator, http: requests.Session
) -> None:
    emulator.add_job("render", job_release_seconds=math.inf)
    params = {"api-version": "2024-07-01.20.0", "force": "true"}
    assert post_terminate(http, emulator, "render", params=params).status_code == 202
    assert get(http, emulator, "/jobs/render").json()["state"] == "completed"


# ---------------------------------------------------------------- authentication


def test_rejected_tokens_can_be_answered_403_authentication_failed(
    emulator: BatchEmulator, http: requests.Session
) -> None:
    emulator.add_job("render")
    emulator.authorize = lambda token: token == "good"
    emulator.auth_failure_status = 403
    for response in (post_terminate(http, emulator, "render"), get(http, emulator, "/jobs/render")):
        assert (response.status_code, code_of(response)) == (403, "AuthenticationFailed")
        assert "WWW-Authenticate" not in response.headers
    assert emulator.terminations == []


@pytest.mark.parametrize(("status", "challenge"), [(401, True), (403, False)])
def test_authentication_failures_are_injectable(
    emulator: BatchEmulator, http: requests.Session, status: int, challenge: bool
) -> None:
    emulator.add_job("render")
    emulator.inject(Fault.authentication(status))
    first = post_terminate(http, emulator, "render")
    assert (first.status_code, code_of(first)) == (status, "AuthenticationFailed")
    assert ("WWW-Authenticate" in first.headers) is challenge
    if challenge:
        assert first.headers["WWW-Authenticate"] == WWW_AUTHENTICATE
    assert post_terminate(http, emulator, "render").status_code == 202


def test_authentication_fault_refuses_other_statuses() -> None:
    with pytest.raises(ValueError, match="401 or 403"):
        Fault.authentication(500)


@pytest.mark.parametrize(
    ("operation", "path"), [("get", "/jobs/render"), ("list", "/jobs"), ("taskcounts", "/jobs/render/taskcounts")]
)
def test_faults_can_be_aimed_at_reads(
    emulator: BatchEmulator, http: requests.Session, operation: str, path: str
) -> None:
    emulator.add_job("render")
    emulator.inject(Fault.status(503, "ServerBusy"), operation=operation)
    assert post_terminate(http, emulator, "render", body=None).status_code == 202
    busy = get(http, emulator, path)
    assert (busy.status_code, code_of(busy)) == (503, "ServerBusy")
    assert get(http, emulator, path).status_code == 200


def test_any_operation_fault_hits_the_next_request_whatever_it_is(
    emulator: BatchEmulator, http: requests.Session
) -> None:
    emulator.add_job("render")
    emulator.inject(Fault.drop(), operation="any")
    with pytest.raises(requests.ConnectionError):
        get(http, emulator, "/jobs/render")
    assert get(http, emulator, "/jobs/render").status_code == 200


def test_inject_refuses_unknown_operations(emulator: BatchEmulator) -> None:
    with pytest.raises(ValueError, match="operation"):
        emulator.inject(Fault.drop(), operation="delete")


# ---------------------------------------------------------------- Job - List and Job - Get for the guard rails


@pytest.fixture
def fleet(emulator: BatchEmulator) -> BatchEmulator:
    emulator.add_job("render-1", pool_id="gpu", metadata={"team": "vfx"})
    emulator.add_job("render-2", pool_id="cpu", metadata={"team": "vfx", "batch-terminator-keep": "true"})
    emulator.add_job("Render-3", execution_pool_id="auto-gpu-1")
    emulator.add_job("etl-1", pool_id="gpu")
    emulator.add_job("etl-2", JobState.COMPLETED, pool_id="gpu")
    return emulator


def test_jobs_carry_pool_info_execution_pool_and_metadata(fleet: BatchEmulator, http: requests.Session) -> None:
    jobs = {job["id"]: job for job in get(http, fleet, "/jobs").json()["value"]}
    assert jobs["render-1"]["poolInfo"] == {"poolId": "gpu"}
    assert jobs["render-1"]["executionInfo"]["poolId"] == "gpu"
    assert jobs["render-2"]["metadata"] == [
        {"name": "team", "value": "vfx"},
        {"name": "batch-terminator-keep", "value": "true"},
    ]
    # An auto-pool job names no pool in poolInfo: only executionInfo.poolId has it.
    assert "poolId" not in jobs["Render-3"]["poolInfo"]
    assert "autoPoolSpecification" in jobs["Render-3"]["poolInfo"]
    assert jobs["Render-3"]["executionInfo"]["poolId"] == "auto-gpu-1"


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("state eq 'active'", ["render-1", "render-2", "Render-3", "etl-1"]),
        ("state ne 'active'", ["etl-2"]),
        ("startswith(id,'render')", ["render-1", "render-2", "Render-3"]),
        ("startswith(id, 'etl-')", ["etl-1", "etl-2"]),
        ("executionInfo/poolId eq 'gpu'", ["render-1", "etl-1", "etl-2"]),
        ("startswith(executionInfo/poolId,'auto-')", ["Render-3"]),
        ("state eq 'active' and startswith(id,'etl')", ["etl-1"]),
        ("state eq 'active' and executionInfo/poolId eq 'gpu' and startswith(id,'render')", ["render-1"]),
        ("executionInfo/poolId eq 'cpu' or executionInfo/poolId eq 'auto-gpu-1'", ["render-2", "Render-3"]),
        ("(id eq 'etl-1' or id eq 'etl-2') and state eq 'completed'", ["etl-2"]),
        ("id eq 'it''s'", []),
    ],
)
def test_list_filters_as_batch_does(
    fleet: BatchEmulator, http: requests.Session, expression: str, expected: list[str]
) -> None:
    assert list_ids(http, fleet, **{"$filter": expression, "maxresults": "2"}) == expected


@pytest.mark.parametrize(
    "expression",
    [
        "poolInfo/poolId eq 'gpu'",
        "metadata/any(m: m/name eq 'team')",
        "state eq 'sleeping'",
        "state gt 'active'",
        "startswith(state,'act')",
        "state eq 'active' and",
        "state eq active",
        "endswith(id,'1')",
        "id eq 'a' xor id eq 'b'",
        "(state eq 'active'",
        "",
    ],
)
def test_list_refuses_filters_batch_does_not_take(
    fleet: BatchEmulator, http: requests.Session, expression: str
) -> None:
    response = get(http, fleet, "/jobs", **{"$filter": expression})
    assert (response.status_code, code_of(response)) == (400, "InvalidQueryParameterValue")
    assert values_of(response)["QueryParameterName"] == "$filter"


def test_list_select_keeps_pool_and_metadata_only(fleet: BatchEmulator, http: requests.Session) -> None:
    page = get(http, fleet, "/jobs", **{"$select": "id,poolInfo,executionInfo,metadata"}).json()
    assert {key for job in page["value"] for key in job} <= {"id", "poolInfo", "executionInfo", "metadata"}
    assert {"id", "poolInfo", "executionInfo"} <= set(page["value"][0])


def test_get_select_reads_state_and_metadata(fleet: BatchEmulator, http: requests.Session) -> None:
    response = get(http, fleet, "/jobs/render-2", **{"$select": "id,state,metadata"})
    assert set(response.json()) == {"odata.metadata", "id", "state", "metadata"}
    assert response.headers["ETag"] == fleet.job("render-2").etag  # type: ignore[union-attr]


def test_next_link_stays_on_the_account_host(fleet: BatchEmulator, http: requests.Session) -> None:
    document = get(http, fleet, "/jobs", maxresults="1", **{"$filter": "state eq 'active'"}).json()
    link = urlsplit(document["odata.nextLink"])
    assert f"{link.scheme}://{link.netloc}" == fleet.url
    assert "%24filter=state%20eq%20%27active%27" in link.query or "$filter=state%20eq%20'active'" in link.query


def test_a_thousand_active_jobs_in_one_call_list_in_pages(emulator: BatchEmulator, http: requests.Session) -> None:
    ids = emulator.add_jobs(1000, prefix="bulk-", pool_id="p", metadata={"team": "x"})
    assert len(ids) == len(set(ids)) == 1000
    assert ids[0] == "bulk-0000"
    listed = list_ids(http, emulator, **{"$filter": "state eq 'active'", "maxresults": "300", "$select": "id"})
    assert listed == ids


def test_add_jobs_is_all_or_nothing(emulator: BatchEmulator) -> None:
    emulator.add_job("bulk-0001")
    with pytest.raises(ValueError, match="already exists"):
        emulator.add_jobs(3, prefix="bulk-")
    assert [job.id for job in emulator.jobs()] == ["bulk-0001"]


# ---------------------------------------------------------------- accounts side by side, latency


def test_two_emulators_are_separate_accounts(http: requests.Session) -> None:
    with BatchEmulator() as east, BatchEmulator() as west:
        east.add_job("render")
        west.add_job("render")
        assert east.url != west.url
        assert post_terminate(http, east, "render").status_code == 202
        assert (east.job("render").state, west.job("render").state) == (  # type: ignore[union-attr]
            JobState.COMPLETED,
            JobState.ACTIVE,
        )
        assert [t.job_id for t in west.terminations] == []
        assert get(http, west, "/jobs/render").json()["url"] == f"{west.url}/jobs/render"


def test_latency_does_not_serialise_concurrent_requests(emulator: BatchEmulator) -> None:
    emulator.add_job("render")
    emulator.latency = 0.5
    with ThreadPoolExecutor(max_workers=6) as pool:
        sessions = [requests.Session() for _ in range(6)]
        answers = list(pool.map(lambda session: get(session, emulator, "/jobs/render").status_code, sessions))
    assert answers == [200] * 6
    # All six were inside the emulator (sleeping the latency) at once: one thread per connection.
    assert emulator.peak_in_flight == 6


def test_recorded_terminate_body_is_kept_as_sent(emulator: BatchEmulator, http: requests.Session) -> None:
    emulator.add_job("render")
    post_terminate(http, emulator, "render", body=json.dumps({"terminateReason": "r"}).encode())
    assert emulator.requests[0].json() == {"terminateReason": "r"}


def test_the_shared_fixtures_give_two_accounts_that_accept_the_same_token(
    batch: BatchEmulator, other_batch: BatchEmulator, identity: object, http: requests.Session
) -> None:
    token = ManagedIdentityCredential().get_token("https://batch.core.windows.net//.default").token
    for account in (batch, other_batch):
        account.add_job("render")
        response = http.get(
            f"{account.url}/jobs/render",
            params={"api-version": OLD},
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        assert response.status_code == 200
    assert batch.url != other_batch.url


def test_job_get_honours_one_condition_header(emulator: BatchEmulator, http: requests.Session) -> None:
    emulator.add_job("render")
    etag = get(http, emulator, "/jobs/render").headers["ETag"]

    def read(name: str, value: str) -> requests.Response:
        return http.get(
            f"{emulator.url}/jobs/render", params={"api-version": OLD}, headers={**AUTH, name: value}, timeout=10
        )

    not_modified = read("If-None-Match", etag)
    assert (not_modified.status_code, not_modified.content, not_modified.headers["ETag"]) == (304, b"", etag)
    assert read("If-Modified-Since", http_date(datetime.now(UTC))).status_code == 304
    stale = read("If-Match", '"0x8DSTALE"')
    assert (stale.status_code, code_of(stale)) == (412, "ConditionNotMet")
    assert read("If-Match", etag).status_code == 200
    assert read("If-None-Match", '"0x8DOTHER"').status_code == 200
