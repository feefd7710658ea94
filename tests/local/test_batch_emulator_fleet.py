"""The emulator's job schedules, pools, nodes and prep/release task status over raw HTTP (docs/CONTRACT.md §5b, §10)."""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import requests

from local.batch_emulator import BatchEmulator, Fault, JobState
from local.batch_emulator.fleet import JobScheduleState, ManualClock, NodeState, iso_duration, parse_duration
from local.batch_emulator.versions import API_VERSIONS, timeout_name

pytestmark = pytest.mark.integration

V = "2025-06-01"
AUTH = {"Authorization": "Bearer test-token"}
JSON = {"Content-Type": "application/json; odata=minimalmetadata"}
START = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def server() -> Iterator[BatchEmulator]:
    with BatchEmulator() as emulator:
        yield emulator


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def emulator(server: BatchEmulator, clock: ManualClock) -> BatchEmulator:
    server.reset()
    server.clock = clock
    server.resize_seconds = 1.0
    server.terminate_delay = 0.0
    server.strict_query_names = False
    server.on_recurrence = None
    return server


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


def get(http: requests.Session, emulator: BatchEmulator, path: str, **params: Any) -> requests.Response:
    return http.get(f"{emulator.url}{path}", params={"api-version": V, **params}, headers=AUTH, timeout=10)


def post(
    http: requests.Session,
    emulator: BatchEmulator,
    path: str,
    body: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    **params: Any,
) -> requests.Response:
    data = json.dumps(body).encode() if body is not None else None
    sent = {**AUTH, **(JSON if body is not None else {}), **(headers or {})}
    return http.post(f"{emulator.url}{path}", params={"api-version": V, **params}, headers=sent, data=data, timeout=10)


def error(response: requests.Response, status: int, code: str) -> dict[str, str]:
    assert response.status_code == status, response.text
    document = response.json()
    assert document["code"] == code
    return {item["key"]: item["value"] for item in document.get("values", [])}


def every(http: requests.Session, emulator: BatchEmulator, path: str, **params: Any) -> list[dict[str, Any]]:
    """Every item of a list, following odata.nextLink."""
    page = get(http, emulator, path, **params)
    assert page.status_code == 200, page.text
    document = page.json()
    items = list(document["value"])
    while "odata.nextLink" in document:
        document = http.get(document["odata.nextLink"], headers=AUTH, timeout=10).json()
        items += document["value"]
    return items


# ---------------------------------------------------------------- api-versions: the timeout's spelling


@pytest.mark.parametrize(
    ("version", "spelling"),
    [("2025-06-01", "timeOut"), ("2024-07-01.20.0", "timeout"), ("2023-11-01.18.0", "timeout")],
)
def test_each_version_spells_the_timeout_as_its_spec_does(version: str, spelling: str) -> None:
    assert timeout_name(version) == spelling


def test_the_versions_are_the_readmes_stable_ones_newest_first() -> None:
    assert API_VERSIONS[:4] == ("2025-06-01", "2024-07-01.20.0", "2024-02-01.19.0", "2023-11-01.18.0")
    assert len(API_VERSIONS) == 22
    assert API_VERSIONS[-1] == "2015-12-01.2.2"


@pytest.mark.parametrize(("version", "wrong"), [("2025-06-01", "timeout"), ("2024-07-01.20.0", "timeOut")])
def test_by_default_either_spelling_is_read(
    emulator: BatchEmulator, http: requests.Session, version: str, wrong: str
) -> None:
    emulator.add_job("render")
    assert get(http, emulator, "/jobs/render", **{"api-version": version, wrong: "5"}).status_code == 200
    assert emulator.requests[-1].query[wrong] == "5"


@pytest.mark.parametrize(("version", "wrong"), [("2025-06-01", "timeout"), ("2024-07-01.20.0", "timeOut")])
def test_strict_query_names_refuse_the_other_spelling(
    emulator: BatchEmulator, http: requests.Session, version: str, wrong: str
) -> None:
    emulator.strict_query_names = True
    emulator.add_job("render")
    response = get(http, emulator, "/jobs/render", **{"api-version": version, wrong: "5"})
    assert error(response, 400, "UnsupportedQueryParameter")["QueryParameterName"] == wrong
    right = timeout_name(version)
    assert get(http, emulator, "/jobs/render", **{"api-version": version, right: "5"}).status_code == 200


def test_a_bad_timeout_is_named_as_sent(emulator: BatchEmulator, http: requests.Session) -> None:
    response = get(http, emulator, "/jobs", timeOut="0")
    assert error(response, 400, "InvalidQueryParameterValue")["QueryParameterName"] == "timeOut"


# ---------------------------------------------------------------- jobs a schedule created: {schedule}:job-{n}


def test_a_schedules_job_id_is_percent_encoded_in_paths_and_served_everywhere(
    emulator: BatchEmulator, http: requests.Session
) -> None:
    emulator.add_schedule("nightly", pool_id="gpu", job_metadata={"team": "render"}, job_release_seconds=math.inf)
    job = get(http, emulator, "/jobs/nightly%3Ajob-1").json()
    assert (job["id"], job["poolInfo"], job["executionInfo"]["poolId"]) == ("nightly:job-1", {"poolId": "gpu"}, "gpu")
    assert job["metadata"] == [{"name": "team", "value": "render"}]
    assert get(http, emulator, "/jobs/nightly%3Ajob-1/taskcounts").status_code == 200
    assert [item["id"] for item in every(http, emulator, "/jobs")] == ["nightly:job-1"]
    assert get(http, emulator, "/jobs/nightly%3Ajob-1/jobpreparationandreleasetaskstatus").status_code == 200
    response = post(http, emulator, "/jobs/nightly%3Ajob-1/terminate", {"terminateReason": "budget"})
    assert response.status_code == 202
    assert response.headers["DataServiceId"].endswith("/jobs/nightly:job-1")
    assert emulator.terminations[0].job_id == "nightly:job-1"
    assert emulator.requests[-1].job_id == "nightly:job-1"


@pytest.mark.parametrize("job_id", ["nightly%3Ajob-x", "nightly%3Ajob-", "nightly%3Ab", "a%3Ab%3Ajob-1"])
def test_other_ids_with_a_colon_are_invalid_uris(emulator: BatchEmulator, http: requests.Session, job_id: str) -> None:
    error(get(http, emulator, f"/jobs/{job_id}"), 400, "InvalidUri")


def test_add_job_takes_schedule_shaped_ids_only(emulator: BatchEmulator) -> None:
    assert emulator.add_job("weekly:job-12").id == "weekly:job-12"
    with pytest.raises(ValueError, match="invalid Batch job id"):
        emulator.add_job("weekly:job")


def test_an_auto_pool_job_shows_its_specification(emulator: BatchEmulator, http: requests.Session) -> None:
    spec = {"autoPoolIdPrefix": "render", "poolLifetimeOption": "job", "pool": {"vmSize": "standard_d4s_v3"}}
    emulator.add_job("render", auto_pool=spec, execution_pool_id="render_auto_1")
    job = get(http, emulator, "/jobs/render").json()
    assert job["poolInfo"] == {"autoPoolSpecification": spec}
    assert job["executionInfo"]["poolId"] == "render_auto_1"


# ---------------------------------------------------------------- job schedules


def test_get_schedule_has_batchs_fields(emulator: BatchEmulator, http: requests.Session) -> None:
    emulator.add_schedule(
        "nightly",
        recurrence_seconds=3600,
        pool_id="gpu",
        job_metadata={"team": "render"},
        metadata={"owner": "ops"},
    )
    response = get(http, emulator, "/jobschedules/nightly")
    assert response.status_code == 200
    document = response.json()
    assert document["id"] == "nightly"
    assert document["url"] == f"{emulator.url}/jobschedules/nightly"
    assert document["state"] == "active"
    assert document["schedule"] == {"recurrenceInterval": "PT1H"}
    assert document["jobSpecification"]["poolInfo"] == {"poolId": "gpu"}
    assert document["jobSpecification"]["metadata"] == [{"name": "team", "value": "render"}]
    assert document["metadata"] == [{"name": "owner", "value": "ops"}]
    recent = document["executionInfo"]["recentJob"]
    assert recent == {"id": "nightly:job-1", "url": f"{emulator.url}/jobs/nightly:job-1"}
    assert response.headers["ETag"] == document["eTag"]
    selected = get(http, emulator, "/jobschedules/nightly", **{"$select": "id,state"}).json()
    assert set(selected) == {"odata.metadata", "id", "state"}


def test_unknown_schedules_are_job_schedule_not_found(emulator: BatchEmulator, http: requests.Session) -> None:
    error(get(http, emulator, "/jobschedules/nope"), 404, "JobScheduleNotFound")
    for verb in ("disable", "enable", "terminate"):
        error(post(http, emulator, f"/jobschedules/nope/{verb}"), 404, "JobScheduleNotFound")


def test_a_removed_schedule_is_job_schedule_not_found_and_its_jobs_stay(
    emulator: BatchEmulator, http: requests.Session
) -> None:
    emulator.add_schedule("nightly", recurrence_seconds=60)
    emulator.add_schedule("weekly", first_job=False)
    assert get(http, emulator, "/jobschedules/nightly").status_code == 200

    emulator.remove_schedule("NIGHTLY")  # ids are case-insensitive, as in Batch

    error(get(http, emulator, "/jobschedules/nightly"), 404, "JobScheduleNotFound")
    for verb in ("disable", "enable", "terminate"):
        error(post(http, emulator, f"/jobschedules/nightly/{verb}"), 404, "JobScheduleNotFound")
    assert [item["id"] for item in every(http, emulator, "/jobschedules", **{"$select": "id"})] == ["weekly"]
    assert get(http, emulator, "/jobs/nightly:job-1").json()["state"] == "active"
    assert emulator.schedule("nightly") is None
    with pytest.raises(KeyError):
        emulator.remove_schedule("nightly")


def test_list_schedules_filters_selects_and_pages(emulator: BatchEmulator, http: requests.Session) -> None:
    for name in ("render-a", "render-b", "render-c", "other"):
        emulator.add_schedule(name, first_job=False)
    emulator.set_schedule_state("render-b", JobScheduleState.DISABLED)
    items = every(
        http,
        emulator,
        "/jobschedules",
        **{"$filter": "state eq 'active' and startswith(id,'render')", "$select": "id", "maxresults": "1"},
    )
    assert items == [{"id": "render-a"}, {"id": "render-c"}]
    error(get(http, emulator, "/jobschedules", **{"$filter": "metadata eq 'x'"}), 400, "InvalidQueryParameterValue")
    error(get(http, emulator, "/jobschedules", **{"$filter": "state eq 'paused'"}), 400, "InvalidQueryParameterValue")


def test_disable_enable_terminate_move_the_schedule(emulator: BatchEmulator, http: requests.Session) -> None:
    emulator.add_schedule("nightly", first_job=False)
    disabled = post(http, emulator, "/jobschedules/nightly/disable")
    assert disabled.status_code == 204
    assert disabled.headers["ETag"] == emulator.schedule("nightly").etag  # type: ignore[union-attr]
    assert emulator.schedule("nightly").state == JobScheduleState.DISABLED  # type: ignore[union-attr]
    error(post(http, emulator, "/jobschedules/nightly/disable"), 409, "JobScheduleDisabled")
    assert post(http, emulator, "/jobschedules/nightly/enable").status_code == 204
    assert post(http, emulator, "/jobschedules/nightly/enable").status_code == 204  # enabling an active one: no-op
    assert post(http, emulator, "/jobschedules/nightly/terminate").status_code == 202
    document = get(http, emulator, "/jobschedules/nightly").json()
    assert (document["state"], document["previousState"]) == ("completed", "terminating")
    assert "endTime" in document["executionInfo"]
    for verb in ("disable", "enable", "terminate"):
        error(post(http, emulator, f"/jobschedules/nightly/{verb}"), 409, "JobScheduleCompleted")


def test_a_terminating_schedule_refuses_and_force_ends_it(
    emulator: BatchEmulator, http: requests.Session, clock: ManualClock
) -> None:
    emulator.terminate_delay = 60
    emulator.add_schedule("nightly", first_job=False)
    assert post(http, emulator, "/jobschedules/nightly/terminate").status_code == 202
    error(post(http, emulator, "/jobschedules/nightly/disable"), 409, "JobScheduleBeingTerminated")
    error(post(http, emulator, "/jobschedules/nightly/terminate"), 409, "JobScheduleBeingTerminated")
    response = post(
        http, emulator, "/jobschedules/nightly/terminate", force="true", **{"api-version": "2024-02-01.19.0"}
    )
    assert error(response, 400, "UnsupportedQueryParameter")["QueryParameterName"] == "force"
    assert post(http, emulator, "/jobschedules/nightly/terminate", force="true").status_code == 202
    assert emulator.schedule("nightly").state == JobScheduleState.COMPLETED  # type: ignore[union-attr]


def test_schedule_writes_honour_if_match(emulator: BatchEmulator, http: requests.Session) -> None:
    etag = emulator.add_schedule("nightly", first_job=False).etag
    stale = post(http, emulator, "/jobschedules/nightly/disable", headers={"If-Match": "0x8DSTALE"})
    assert error(stale, 412, "ConditionNotMet")["HeaderName"] == "If-Match"
    assert post(http, emulator, "/jobschedules/nightly/disable", headers={"If-Match": etag}).status_code == 204


# ---------------------------------------------------------------- recurrence on the account's clock


def test_an_active_schedule_creates_its_next_job_when_due_and_free(
    emulator: BatchEmulator, http: requests.Session, clock: ManualClock
) -> None:
    emulator.add_schedule("hourly", recurrence_seconds=3600, pool_id="gpu", job_metadata={"team": "render"})
    clock.advance(3600)
    assert emulator.tick() == []  # job-1 is still active: the next waits for it
    emulator.set_state("hourly:job-1", JobState.COMPLETED)
    [(schedule, job)] = emulator.tick()
    assert job is not None
    assert (schedule.id, job.id, job.pool_id, job.metadata) == ("hourly", "hourly:job-2", "gpu", {"team": "render"})
    assert schedule.recent_job_id == "hourly:job-2"
    assert emulator.tick() == []  # not due again until an hour later


def test_a_disabled_schedule_creates_nothing_and_enable_resumes(
    emulator: BatchEmulator, http: requests.Session, clock: ManualClock
) -> None:
    seen: list[tuple[str, str | None]] = []
    emulator.on_recurrence = lambda schedule, job: seen.append((schedule.id, job.id if job else None))
    emulator.add_schedule("hourly", recurrence_seconds=3600)
    emulator.set_state("hourly:job-1", JobState.COMPLETED)
    assert post(http, emulator, "/jobschedules/hourly/disable").status_code == 204
    clock.advance(3600)
    # Any request brings the account to now first; a disabled schedule creates nothing.
    assert [job["id"] for job in every(http, emulator, "/jobs")] == ["hourly:job-1"]
    assert seen == [("hourly", None)]
    assert post(http, emulator, "/jobschedules/hourly/enable").status_code == 204
    clock.advance(3600)
    assert [job["id"] for job in every(http, emulator, "/jobs")] == ["hourly:job-1", "hourly:job-2"]
    assert seen == [("hourly", None), ("hourly", "hourly:job-2")]


def test_a_schedule_without_recurrence_completes_after_its_job(emulator: BatchEmulator) -> None:
    emulator.add_schedule("once")
    emulator.set_state("once:job-1", JobState.COMPLETED)
    emulator.tick()
    assert emulator.schedule("once").state == JobScheduleState.COMPLETED  # type: ignore[union-attr]


def test_the_ticker_runs_recurrences_without_requests(emulator: BatchEmulator, clock: ManualClock) -> None:
    created = threading.Event()
    emulator.on_recurrence = lambda schedule, job: created.set() if job is not None else None
    emulator.add_schedule("minutely", recurrence_seconds=60, first_job=False)
    clock.advance(60)
    emulator.start_ticking(every=0.01)
    try:
        assert created.wait(timeout=5)
    finally:
        emulator._ticker_stop.set()
        assert emulator._ticker is not None
        emulator._ticker.join(timeout=5)
        emulator._ticker = None
    assert emulator.job("minutely:job-1") is not None


# ---------------------------------------------------------------- pools


def test_get_pool_has_batchs_fields(emulator: BatchEmulator, http: requests.Session) -> None:
    emulator.add_pool("gpu", dedicated=2, low_priority=1, metadata={"batch-terminator-keep": "true"})
    emulator.add_pool("auto", auto_scale_formula="$TargetDedicatedNodes=1;", auto_scale_evaluation_seconds=300)
    pool = get(http, emulator, "/pools/gpu").json()
    assert (pool["id"], pool["url"], pool["state"], pool["allocationState"]) == (
        "gpu",
        f"{emulator.url}/pools/gpu",
        "active",
        "steady",
    )
    assert (pool["currentDedicatedNodes"], pool["currentLowPriorityNodes"]) == (2, 1)
    assert (pool["targetDedicatedNodes"], pool["targetLowPriorityNodes"], pool["enableAutoScale"]) == (2, 1, False)
    assert pool["metadata"] == [{"name": "batch-terminator-keep", "value": "true"}]
    assert "autoScaleFormula" not in pool
    auto = get(http, emulator, "/pools/auto").json()
    assert (auto["enableAutoScale"], auto["autoScaleFormula"], auto["autoScaleEvaluationInterval"]) == (
        True,
        "$TargetDedicatedNodes=1;",
        "PT5M",
    )
    error(get(http, emulator, "/pools/nope"), 404, "PoolNotFound")
    for verb in ("resize", "stopresize", "disableautoscale", "enableautoscale"):
        error(post(http, emulator, f"/pools/nope/{verb}", {}), 404, "PoolNotFound")


def test_a_removed_pool_is_pool_not_found_and_its_jobs_keep_its_id(
    emulator: BatchEmulator, http: requests.Session
) -> None:
    emulator.add_pool("gone", dedicated=2)
    emulator.add_pool("elastic", auto_scale_formula="$TargetDedicatedNodes=1;", auto_scale_evaluation_seconds=300)
    emulator.add_job("render-1", pool_id="gone")
    assert get(http, emulator, "/pools/gone").status_code == 200

    emulator.remove_pool("Gone")

    error(get(http, emulator, "/pools/gone"), 404, "PoolNotFound")
    error(get(http, emulator, "/pools/gone/nodes"), 404, "PoolNotFound")
    for verb in ("resize", "stopresize", "disableautoscale", "enableautoscale"):
        error(post(http, emulator, f"/pools/gone/{verb}", {}), 404, "PoolNotFound")
    assert get(http, emulator, "/pools/elastic").status_code == 200
    assert get(http, emulator, "/jobs/render-1").json()["executionInfo"]["poolId"] == "gone"
    assert emulator.pool("gone") is None
    with pytest.raises(KeyError):
        emulator.remove_pool("gone")


def test_resize_moves_the_nodes_to_the_targets_after_the_delay(
    emulator: BatchEmulator, http: requests.Session, clock: ManualClock
) -> None:
    emulator.add_pool("gpu", dedicated=2, low_priority=2)
    body = {"targetDedicatedNodes": 0, "targetLowPriorityNodes": 0, "nodeDeallocationOption": "terminate"}
    assert post(http, emulator, "/pools/gpu/resize", body).status_code == 202
    pool = get(http, emulator, "/pools/gpu").json()
    assert (pool["allocationState"], pool["targetDedicatedNodes"], pool["currentDedicatedNodes"]) == ("resizing", 0, 2)
    error(post(http, emulator, "/pools/gpu/resize", body), 409, "PoolBeingResized")
    clock.advance(1)
    pool = get(http, emulator, "/pools/gpu").json()
    assert (pool["allocationState"], pool["currentDedicatedNodes"], pool["currentLowPriorityNodes"]) == ("steady", 0, 0)
    assert every(http, emulator, "/pools/gpu/nodes") == []


def test_settle_ends_a_resize_at_once(emulator: BatchEmulator, http: requests.Session) -> None:
    emulator.add_pool("gpu")
    post(http, emulator, "/pools/gpu/resize", {"targetDedicatedNodes": 3, "resizeTimeout": "PT10M"})
    emulator.settle()
    pool = emulator.pool("gpu")
    assert pool is not None
    assert (pool.allocation_state, pool.current_dedicated, len(pool.nodes)) == ("steady", 3, 3)
    assert get(http, emulator, "/pools/gpu").json()["resizeTimeout"] == "PT10M"


def test_stop_resize_keeps_the_current_nodes(
    emulator: BatchEmulator, http: requests.Session, clock: ManualClock
) -> None:
    emulator.add_pool("gpu", dedicated=2)
    post(http, emulator, "/pools/gpu/resize", {"targetDedicatedNodes": 5})
    assert post(http, emulator, "/pools/gpu/stopresize").status_code == 202
    assert get(http, emulator, "/pools/gpu").json()["allocationState"] == "stopping"
    error(post(http, emulator, "/pools/gpu/resize", {"targetDedicatedNodes": 0}), 409, "PoolBeingResized")
    clock.advance(1)
    pool = get(http, emulator, "/pools/gpu").json()
    assert (pool["allocationState"], pool["currentDedicatedNodes"]) == ("steady", 2)
    assert post(http, emulator, "/pools/gpu/stopresize").status_code == 202  # a steady pool: nothing to stop


def test_an_autoscale_pool_refuses_resize_until_autoscale_is_disabled(
    emulator: BatchEmulator, http: requests.Session
) -> None:
    emulator.add_pool("auto", dedicated=1, auto_scale_formula="$TargetDedicatedNodes=1;")
    error(
        post(http, emulator, "/pools/auto/resize", {"targetDedicatedNodes": 0}), 409, "OperationInvalidForCurrentState"
    )
    response = post(http, emulator, "/pools/auto/disableautoscale")
    assert (response.status_code, response.content) == (200, b"")
    pool = get(http, emulator, "/pools/auto").json()
    assert (pool["enableAutoScale"], pool["targetDedicatedNodes"]) == (False, 1)
    assert post(http, emulator, "/pools/auto/resize", {"targetDedicatedNodes": 0}).status_code == 202


def test_enable_autoscale_twice_within_30_seconds_is_too_many_requests(
    emulator: BatchEmulator, http: requests.Session, clock: ManualClock
) -> None:
    emulator.add_pool("gpu", dedicated=1)
    body = {"autoScaleFormula": "$TargetDedicatedNodes=2;", "autoScaleEvaluationInterval": "PT10M"}
    assert post(http, emulator, "/pools/gpu/enableautoscale", body).status_code == 200
    pool = get(http, emulator, "/pools/gpu").json()
    assert (pool["enableAutoScale"], pool["autoScaleFormula"], pool["autoScaleEvaluationInterval"]) == (
        True,
        "$TargetDedicatedNodes=2;",
        "PT10M",
    )
    clock.advance(29)
    error(post(http, emulator, "/pools/gpu/enableautoscale", body), 503, "TooManyEnableAutoScaleRequests")
    clock.advance(1)
    assert post(http, emulator, "/pools/gpu/enableautoscale", body).status_code == 200


@pytest.mark.parametrize(
    ("verb", "body", "code", "name"),
    [
        ("enableautoscale", {}, "MissingRequiredProperty", "autoScaleFormula"),
        (
            "enableautoscale",
            {"autoScaleFormula": "x", "autoScaleEvaluationInterval": "PT1M"},
            "InvalidPropertyValue",
            "autoScaleEvaluationInterval",
        ),
        (
            "enableautoscale",
            {"autoScaleFormula": "x", "autoScaleEvaluationInterval": "soon"},
            "InvalidPropertyValue",
            "autoScaleEvaluationInterval",
        ),
        ("resize", {"targetDedicatedNodes": -1}, "InvalidPropertyValue", "targetDedicatedNodes"),
        ("resize", {"targetLowPriorityNodes": "2"}, "InvalidPropertyValue", "targetLowPriorityNodes"),
        ("resize", {"nodeDeallocationOption": "later"}, "InvalidPropertyValue", "nodeDeallocationOption"),
        ("resize", {"resizeTimeout": "PT1M"}, "InvalidPropertyValue", "resizeTimeout"),
    ],
)
def test_bad_pool_bodies_are_refused(
    emulator: BatchEmulator, http: requests.Session, verb: str, body: dict[str, Any], code: str, name: str
) -> None:
    emulator.add_pool("gpu", dedicated=1)
    assert error(post(http, emulator, f"/pools/gpu/{verb}", body), 400, code)["PropertyName"] == name
    pool = emulator.pool("gpu")
    assert pool is not None
    assert (pool.allocation_state, pool.enable_auto_scale) == ("steady", False)


def test_enable_autoscale_during_a_resize_is_refused(emulator: BatchEmulator, http: requests.Session) -> None:
    emulator.add_pool("gpu", dedicated=1)
    post(http, emulator, "/pools/gpu/resize", {"targetDedicatedNodes": 2})
    body = {"autoScaleFormula": "$TargetDedicatedNodes=2;"}
    error(post(http, emulator, "/pools/gpu/enableautoscale", body), 409, "PoolBeingResized")


def test_pool_reads_and_writes_honour_conditions(emulator: BatchEmulator, http: requests.Session) -> None:
    etag = emulator.add_pool("gpu", dedicated=1).etag
    not_modified = http.get(
        f"{emulator.url}/pools/gpu", params={"api-version": V}, headers={**AUTH, "If-None-Match": etag}, timeout=10
    )
    assert not_modified.status_code == 304
    stale = post(http, emulator, "/pools/gpu/resize", {"targetDedicatedNodes": 0}, headers={"If-Match": "0x8DOLD"})
    error(stale, 412, "ConditionNotMet")


# ---------------------------------------------------------------- compute nodes


def test_nodes_follow_the_pool_and_take_states(emulator: BatchEmulator, http: requests.Session) -> None:
    emulator.add_pool("gpu", dedicated=3, low_priority=1)
    emulator.set_node_states("gpu", [NodeState.UNUSABLE, NodeState.OFFLINE, NodeState.START_TASK_FAILED])
    nodes = every(http, emulator, "/pools/gpu/nodes", maxresults="3")
    assert [node["state"] for node in nodes] == ["unusable", "offline", "starttaskfailed", "idle"]
    assert [node["isDedicated"] for node in nodes] == [True, True, True, False]
    assert all(node["url"] == f"{emulator.url}/pools/gpu/nodes/{node['id']}" for node in nodes)
    unusable = every(http, emulator, "/pools/gpu/nodes", **{"$filter": "state eq 'unusable'", "$select": "id,state"})
    assert unusable == [{"id": nodes[0]["id"], "state": "unusable"}]
    emulator.set_node_states("gpu", {nodes[3]["id"]: NodeState.RUNNING})
    assert [node.state for node in emulator.nodes("gpu")][3] == NodeState.RUNNING
    error(get(http, emulator, "/pools/nope/nodes"), 404, "PoolNotFound")
    error(get(http, emulator, "/pools/gpu/nodes", **{"$filter": "vmSize eq 'x'"}), 400, "InvalidQueryParameterValue")


# ---------------------------------------------------------------- job preparation and release task status


def test_a_job_without_release_task_is_job_preparation_task_not_specified(
    emulator: BatchEmulator, http: requests.Session
) -> None:
    emulator.add_job("render")
    error(get(http, emulator, "/jobs/render/jobpreparationandreleasetaskstatus"), 409, "JobPreparationTaskNotSpecified")
    error(get(http, emulator, "/jobs/nope/jobpreparationandreleasetaskstatus"), 404, "JobNotFound")


def test_a_job_held_by_its_release_task_shows_the_nodes_running_it(
    emulator: BatchEmulator, http: requests.Session, clock: ManualClock
) -> None:
    emulator.add_pool("gpu", dedicated=3)
    emulator.add_job("render", pool_id="gpu", job_release_seconds=120)
    path = "/jobs/render/jobpreparationandreleasetaskstatus"
    before = every(http, emulator, path)
    assert len(before) == 3
    assert all("jobReleaseTaskExecutionInfo" not in row for row in before)
    assert before[0]["jobPreparationTaskExecutionInfo"]["state"] == "completed"
    clock.advance(10)
    assert post(http, emulator, "/jobs/render/terminate", {"terminateReason": "budget"}).status_code == 202
    clock.advance(60)
    rows = every(http, emulator, path, maxresults="2")
    node_ids = [node.id for node in emulator.nodes("gpu")]
    assert [(row["poolId"], row["nodeId"]) for row in rows] == [("gpu", node_id) for node_id in node_ids]
    assert rows[0]["nodeUrl"] == f"{emulator.url}/pools/gpu/nodes/{node_ids[0]}"
    release = rows[0]["jobReleaseTaskExecutionInfo"]
    assert release == {"state": "running", "startTime": "2026-03-01T12:00:10.0000000Z"}
    one = every(http, emulator, path, **{"$filter": f"nodeId eq '{node_ids[1]}'"})
    assert [row["nodeId"] for row in one] == [node_ids[1]]
    clock.advance(60)
    done = every(http, emulator, path)[0]["jobReleaseTaskExecutionInfo"]
    assert (done["state"], done["endTime"]) == ("completed", "2026-03-01T12:02:10.0000000Z")
    assert emulator.job("render").state == JobState.COMPLETED  # type: ignore[union-attr]


def test_a_jobs_nodes_can_be_named(emulator: BatchEmulator, http: requests.Session) -> None:
    emulator.add_job("render", execution_pool_id="gone", job_release_seconds=math.inf, nodes=["tvm-1_1", "tvm-1_2"])
    rows = every(http, emulator, "/jobs/render/jobpreparationandreleasetaskstatus")
    assert [(row["poolId"], row["nodeId"]) for row in rows] == [("gone", "tvm-1_1"), ("gone", "tvm-1_2")]


# ---------------------------------------------------------------- faults and the request log


def test_faults_aim_at_the_new_operations_by_name_wildcard_and_id(
    emulator: BatchEmulator, http: requests.Session
) -> None:
    emulator.add_pool("gpu", dedicated=1)
    emulator.add_pool("cpu", dedicated=1)
    emulator.add_schedule("nightly", first_job=False)
    emulator.inject(Fault.status(500, "InternalError"), operation="pool.resize", job_id="cpu")
    emulator.inject(Fault.status(503, "ServerBusy"), operation="jobschedule.*")
    assert post(http, emulator, "/pools/gpu/resize", {"targetDedicatedNodes": 0}).status_code == 202
    error(post(http, emulator, "/pools/cpu/resize", {"targetDedicatedNodes": 0}), 500, "InternalError")
    error(post(http, emulator, "/jobschedules/nightly/disable"), 503, "ServerBusy")
    assert post(http, emulator, "/jobschedules/nightly/disable").status_code == 204
    emulator.inject(Fault.status(503, "ServerBusy"), operation="node.list")
    error(get(http, emulator, "/pools/gpu/nodes"), 503, "ServerBusy")
    recorded = [(r.operation, r.resource_id, r.job_id, r.fault) for r in emulator.requests]
    assert recorded == [
        ("pool.resize", "gpu", None, None),
        ("pool.resize", "cpu", None, "status:500 InternalError"),
        ("jobschedule.disable", "nightly", None, "status:503 ServerBusy"),
        ("jobschedule.disable", "nightly", None, None),
        ("node.list", "gpu", None, "status:503 ServerBusy"),
    ]


def test_inject_refuses_unknown_operation_names(emulator: BatchEmulator) -> None:
    with pytest.raises(ValueError, match="unknown operation"):
        emulator.inject(Fault.status(500, "InternalError"), operation="pool.delete")


def test_old_operation_names_still_aim_at_job_operations(emulator: BatchEmulator, http: requests.Session) -> None:
    emulator.add_job("render")
    emulator.inject(Fault.status(500, "InternalError"), operation="get")
    error(get(http, emulator, "/jobs/render"), 500, "InternalError")
    assert emulator.requests[-1].operation == "job.get"


# ---------------------------------------------------------------- durations


@pytest.mark.parametrize(("text", "seconds"), [("PT15M", 900), ("PT1H30M", 5400), ("P1DT2H", 93600), ("PT45S", 45)])
def test_iso_durations_round_trip(text: str, seconds: int) -> None:
    parsed = parse_duration(text)
    assert parsed is not None
    assert parsed.total_seconds() == seconds
    assert iso_duration(parsed) == text


@pytest.mark.parametrize("text", ["", "P", "PT", "15M", "PT-5M", "P1W"])
def test_other_durations_are_refused(text: str) -> None:
    assert parse_duration(text) is None
