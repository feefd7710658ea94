"""Job schedules, pools, nodes and preparation/release status through the real azure-batch 15.1.0 client."""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from azure.batch import BatchClient
from azure.batch.models import (
    AllocationState,
    BatchJobReleaseTaskState,
    BatchJobScheduleState,
    BatchJobState,
    BatchNodeState,
    BatchPoolEnableAutoScaleOptions,
    BatchPoolResizeOptions,
)
from azure.batch.models._models import BatchJobTerminateOptions  # not re-exported in 15.1.0
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError

from local.batch_emulator import BatchEmulator, JobState
from local.batch_emulator.fleet import ManualClock, NodeState
from local.identity import IdentityEndpoint
from tests.local.test_batch_emulator_sdk import client_for

pytestmark = pytest.mark.integration

START = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def account(identity: IdentityEndpoint, clock: ManualClock) -> Iterator[BatchEmulator]:
    with BatchEmulator(authorize=identity.is_valid) as emulator:
        emulator.clock = clock
        emulator.resize_seconds = 0.0
        yield emulator


@pytest.fixture
def client(account: BatchEmulator) -> BatchClient:
    return client_for(account)


# ---------------------------------------------------------------- job schedules and their jobs


def test_list_job_schedules_with_filter_select_and_paging(account: BatchEmulator, client: BatchClient) -> None:
    for name in ("render-a", "render-b", "render-c", "other"):
        account.add_schedule(name, first_job=False)
    client.disable_job_schedule("render-b")
    listed = client.list_job_schedules(
        filter="state eq 'active' and startswith(id,'render')", select=["id", "state"], max_results=1
    )
    assert [(item.id, item.state) for item in listed] == [
        ("render-a", BatchJobScheduleState.ACTIVE),
        ("render-c", BatchJobScheduleState.ACTIVE),
    ]
    lists = [r for r in account.requests if r.operation == "jobschedule.list"]
    assert len(lists) == 2
    assert "$skiptoken" in lists[1].query


def test_get_job_schedule_reads_its_job_specification_and_recent_job(
    account: BatchEmulator, client: BatchClient
) -> None:
    account.add_schedule("nightly", recurrence_seconds=86400, pool_id="gpu", job_metadata={"team": "render"})
    schedule = client.get_job_schedule("nightly")
    assert schedule.state == BatchJobScheduleState.ACTIVE
    assert schedule.schedule.recurrence_interval == timedelta(days=1)
    assert schedule.job_specification.pool_info.pool_id == "gpu"
    assert [(item.name, item.value) for item in schedule.job_specification.metadata] == [("team", "render")]
    assert schedule.execution_info.recent_job.id == "nightly:job-1"
    with pytest.raises(ResourceNotFoundError) as missing:
        client.get_job_schedule("nope")
    assert missing.value.error is not None
    assert missing.value.error.code == "JobScheduleNotFound"


def test_disable_enable_and_terminate_a_job_schedule(account: BatchEmulator, client: BatchClient) -> None:
    account.add_schedule("nightly", first_job=False)
    client.disable_job_schedule("nightly")
    assert client.get_job_schedule("nightly").state == BatchJobScheduleState.DISABLED
    with pytest.raises(ResourceExistsError) as twice:
        client.disable_job_schedule("nightly")
    assert twice.value.error is not None
    assert twice.value.error.code == "JobScheduleDisabled"
    client.enable_job_schedule("nightly")
    assert client.get_job_schedule("nightly").state == BatchJobScheduleState.ACTIVE
    client.begin_terminate_job_schedule("nightly", polling_interval=0).result(timeout=10)
    assert client.get_job_schedule("nightly").state == BatchJobScheduleState.COMPLETED
    assert [r.query["api-version"] for r in account.requests if r.method == "POST"] == ["2025-06-01"] * 4


def test_a_schedules_job_is_read_and_terminated_by_its_id(account: BatchEmulator, client: BatchClient) -> None:
    account.add_schedule("nightly", pool_id="gpu")
    job = client.get_job("nightly:job-1")
    assert (job.id, job.state, job.pool_info.pool_id) == ("nightly:job-1", BatchJobState.ACTIVE, "gpu")
    options = BatchJobTerminateOptions(termination_reason="budget")
    client.begin_terminate_job("nightly:job-1", options, polling_interval=0).result(timeout=10)
    assert client.get_job("nightly:job-1").state == BatchJobState.COMPLETED
    # The SDK percent-encodes the colon; the emulator decodes the segment.
    assert "/jobs/nightly%3Ajob-1/terminate" in [r.path for r in account.requests]
    assert [job.id for job in client.list_jobs()] == ["nightly:job-1"]


def test_a_disabled_schedule_creates_no_job_when_its_recurrence_comes(
    account: BatchEmulator, client: BatchClient, clock: ManualClock
) -> None:
    account.add_schedule("hourly", recurrence_seconds=3600)
    account.set_state("hourly:job-1", JobState.COMPLETED)
    client.disable_job_schedule("hourly")
    clock.advance(3600)
    assert [job.id for job in client.list_jobs()] == ["hourly:job-1"]
    client.enable_job_schedule("hourly")
    # The recurrence that came while disabled is skipped; the next one creates a job.
    assert [job.id for job in client.list_jobs()] == ["hourly:job-1"]
    clock.advance(3600)
    assert [job.id for job in client.list_jobs()] == ["hourly:job-1", "hourly:job-2"]
    assert client.get_job_schedule("hourly").execution_info.recent_job.id == "hourly:job-2"


# ---------------------------------------------------------------- pools and nodes


def test_get_pool(account: BatchEmulator, client: BatchClient) -> None:
    account.add_pool("auto", dedicated=2, auto_scale_formula="$TargetDedicatedNodes=2;", metadata={"k": "v"})
    pool = client.get_pool("auto")
    assert (pool.id, pool.allocation_state, pool.current_dedicated_nodes, pool.target_dedicated_nodes) == (
        "auto",
        AllocationState.STEADY,
        2,
        2,
    )
    assert (pool.enable_auto_scale, pool.auto_scale_formula) == (True, "$TargetDedicatedNodes=2;")
    assert pool.auto_scale_evaluation_interval == timedelta(minutes=15)
    assert [(item.name, item.value) for item in pool.metadata] == [("k", "v")]


def test_resize_pool_to_zero_and_stop_a_resize(account: BatchEmulator, client: BatchClient) -> None:
    account.add_pool("gpu", dedicated=2, low_priority=1)
    options = BatchPoolResizeOptions(
        target_dedicated_nodes=0, target_low_priority_nodes=0, node_deallocation_option="terminate"
    )
    client.begin_resize_pool("gpu", options, polling_interval=0).result(timeout=10)
    pool = client.get_pool("gpu")
    assert (pool.current_dedicated_nodes, pool.current_low_priority_nodes, pool.allocation_state) == (
        0,
        0,
        AllocationState.STEADY,
    )
    assert list(client.list_nodes("gpu")) == []
    resize = next(r for r in account.requests if r.operation == "pool.resize")
    assert resize.json() == {
        "targetDedicatedNodes": 0,
        "targetLowPriorityNodes": 0,
        "nodeDeallocationOption": "terminate",
    }
    account.resize_seconds = 60
    client.begin_resize_pool("gpu", BatchPoolResizeOptions(target_dedicated_nodes=4), polling_interval=0)
    assert client.get_pool("gpu").allocation_state == AllocationState.RESIZING
    with pytest.raises(ResourceExistsError) as busy:
        client.begin_resize_pool("gpu", BatchPoolResizeOptions(target_dedicated_nodes=1), polling_interval=0)
    assert busy.value.error is not None
    assert busy.value.error.code == "PoolBeingResized"
    client.begin_stop_pool_resize("gpu", polling_interval=0)
    assert client.get_pool("gpu").allocation_state == AllocationState.STOPPING
    account.settle()
    pool = client.get_pool("gpu")
    assert (pool.allocation_state, pool.current_dedicated_nodes) == (AllocationState.STEADY, 0)


def test_disable_and_enable_pool_auto_scale_and_the_30_second_refusal(
    identity: IdentityEndpoint, account: BatchEmulator, client: BatchClient, clock: ManualClock
) -> None:
    account.add_pool("auto", dedicated=1, auto_scale_formula="$TargetDedicatedNodes=1;")
    client.disable_pool_auto_scale("auto")
    assert client.get_pool("auto").enable_auto_scale is False
    options = BatchPoolEnableAutoScaleOptions(
        auto_scale_formula="$TargetDedicatedNodes=1;", auto_scale_evaluation_interval=timedelta(minutes=5)
    )
    client.enable_pool_auto_scale("auto", options)
    pool = client.get_pool("auto")
    assert (pool.enable_auto_scale, pool.auto_scale_evaluation_interval) == (True, timedelta(minutes=5))
    # The SDK writes the duration zero-padded; Batch's own answers (and the emulator's) write PT5M.
    assert account.requests[-2].json()["autoScaleEvaluationInterval"] == "PT05M00S"
    clock.advance(10)
    # azure-core retries a 503 by itself; without retries the refusal reaches the caller at once.
    with pytest.raises(HttpResponseError) as refused:
        client.enable_pool_auto_scale("auto", options, retry_total=0)
    assert refused.value.status_code == 503
    assert refused.value.error is not None
    assert refused.value.error.code == "TooManyEnableAutoScaleRequests"
    clock.advance(20)
    client.enable_pool_auto_scale("auto", options)


def test_list_nodes_with_states_and_a_filter(account: BatchEmulator, client: BatchClient) -> None:
    account.add_pool("gpu", dedicated=3)
    account.set_node_states("gpu", [NodeState.UNUSABLE, NodeState.OFFLINE])
    nodes = list(client.list_nodes("gpu", max_results=2))
    assert [node.state for node in nodes] == [BatchNodeState.UNUSABLE, BatchNodeState.OFFLINE, BatchNodeState.IDLE]
    unusable = list(client.list_nodes("gpu", filter="state eq 'unusable'"))
    assert [node.id for node in unusable] == [nodes[0].id]
    with pytest.raises(ResourceNotFoundError):
        list(client.list_nodes("nope"))


# ---------------------------------------------------------------- job preparation and release task status


def test_list_job_preparation_and_release_task_status_of_a_held_job(
    account: BatchEmulator, client: BatchClient, clock: ManualClock
) -> None:
    account.add_pool("gpu", dedicated=2)
    account.add_job("render", pool_id="gpu", job_release_seconds=math.inf)
    client.begin_terminate_job("render", BatchJobTerminateOptions(termination_reason="budget"), polling_interval=0)
    clock.advance(300)
    rows = list(client.list_job_preparation_and_release_task_status("render", max_results=1))
    assert [(row.pool_id, row.node_id) for row in rows] == [("gpu", node.id) for node in account.nodes("gpu")]
    release = rows[0].job_release_task_execution_info
    assert (release.state, release.start_time) == (BatchJobReleaseTaskState.RUNNING, START)
    account.add_job("plain")
    with pytest.raises(ResourceExistsError) as none:
        list(client.list_job_preparation_and_release_task_status("plain"))
    assert none.value.error is not None
    assert none.value.error.code == "JobPreparationTaskNotSpecified"


def test_an_older_api_version_spells_the_timeout_its_own_way_only_in_strict_mode(account: BatchEmulator) -> None:
    """azure-batch 15.1.0 always sends timeOut (its request builders hardcode the name), also for
    2024-07-01.20.0 whose spec spells it timeout: Batch serves it, so the emulator does too unless strict."""
    account.add_pool("gpu")
    older = client_for(account, "2024-07-01.20.0")
    assert older.get_pool("gpu", service_timeout=5).id == "gpu"
    assert account.requests[-1].query["timeOut"] == "5"
    account.strict_query_names = True
    with pytest.raises(HttpResponseError) as refused:
        older.get_pool("gpu", service_timeout=5)
    assert refused.value.error is not None
    assert refused.value.error.code == "UnsupportedQueryParameter"
