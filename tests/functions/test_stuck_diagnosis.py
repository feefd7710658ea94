"""A stuck termination says why (docs/CONTRACT.md §5b v3), end to end over the emulator and Azurite: at the last
check confirm_termination reads the job's release task status and its pool's nodes into the TerminationStuck record."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import pytest
from azure.storage.queue import QueueClient

import confirm_termination
import terminate_job
from local.batch_emulator import BatchEmulator, Fault, JobState, ManualClock, NodeState, iso_time
from shared.contract.confirm_check import ConfirmCheck
from tests.conftest import MessageFactory, Queues

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("no_sleep")]

TERMINATED_AT = datetime(2026, 12, 1, 10, 2, tzinfo=UTC)
POOL = "render-pool"
# The values every TerminationStuck record has had since v1, whatever the diagnosis says.
BASE_KEYS = ["state", "stateTransitionTime", "checks"]


@pytest.fixture
def confirm_queue(monkeypatch: pytest.MonkeyPatch, function_env: dict[str, str], queues: Queues) -> QueueClient:
    """Checks on (CONFIRM_MAX_CHECKS 3), on a fresh confirm queue."""
    name = f"{queues.trigger}-confirm"
    monkeypatch.setenv("CONFIRM_QUEUE_NAME", name)
    monkeypatch.setenv("CONFIRM_AFTER_SECONDS", "1")
    for setting in ("CONFIRM_MAX_CHECKS", "CONFIRM_FORCE"):
        monkeypatch.delenv(setting, raising=False)
    client = QueueClient.from_connection_string(queues.connection_string, name)
    client.create_queue()
    return client


@pytest.fixture
def clock(batch: BatchEmulator) -> ManualClock:
    """The account's clock, so the release tasks start at a known time."""
    clock = ManualClock(TERMINATED_AT)
    batch.clock = clock
    return clock


def pool_nodes(batch: BatchEmulator, count: int = 6, pool_id: str = POOL) -> list[str]:
    return [node.id for node in batch.add_pool(pool_id, dedicated=count).nodes]


def terminated(batch: BatchEmulator, make_message: MessageFactory, job_id: str = "job-1", **options: Any) -> None:
    """Add the job with a release task that never ends and terminate it through terminate_job (a 202)."""
    options.setdefault("job_release_seconds", math.inf)
    batch.add_job(job_id, **options)
    terminate_job.main(make_message({"jobId": job_id, "reason": "budget"}, message_id="orig-1"))


def last_check(
    batch: BatchEmulator, make_message: MessageFactory, queues: Queues, *, job_id: str = "job-1", dequeue_count: int = 1
) -> tuple[dict[str, Any], list[str], list[Any]]:
    """Run check 3 (the last) once; the one record, its values' keys in order, and the requests it made."""
    before = len(batch.requests)
    text = ConfirmCheck(job_id, "default", "budget", "orig-1", 3).to_json()
    confirm_termination.main(make_message(text, dequeue_count=dequeue_count))  # returns: never raises here
    [record] = queues.poison_records()
    assert record["error"]["code"] == "TerminationStuck"
    assert (record["messageId"], record["attempts"], record["jobId"], record["originalMessage"]) == (
        "orig-1",
        3,
        job_id,
        text,
    )
    return record, [v["key"] for v in record["error"]["values"]], batch.requests[before:]


def values_of(record: dict[str, Any]) -> dict[str, str]:
    return {v["key"]: v["value"] for v in record["error"]["values"]}


def base_values(batch: BatchEmulator, job_id: str = "job-1") -> dict[str, str]:
    job = batch.job(job_id)
    assert job is not None
    assert job.state_transition_time is not None
    return {"state": "terminating", "stateTransitionTime": iso_time(job.state_transition_time), "checks": "3"}


def test_a_job_held_by_release_tasks_on_some_nodes_names_them(
    batch: BatchEmulator, clock: ManualClock, make_message: MessageFactory, queues: Queues, confirm_queue: QueueClient
) -> None:
    nodes = pool_nodes(batch, 6)
    batch.set_node_states(POOL, {nodes[4]: NodeState.UNUSABLE})
    terminated(batch, make_message, pool_id=POOL, nodes=nodes[:3])
    clock.advance(900)
    record, keys, requests = last_check(batch, make_message, queues)
    assert keys == [
        *BASE_KEYS,
        "releaseTasksRunning",
        "releaseTaskNodes",
        "releaseTaskSince",
        "unusableNodes",
        "offlineNodes",
        "startTaskFailedNodes",
    ]
    assert values_of(record) == {
        **base_values(batch),
        "releaseTasksRunning": "3",
        "releaseTaskNodes": ",".join(sorted(nodes[:3])),
        "releaseTaskSince": iso_time(TERMINATED_AT),
        "unusableNodes": "1",
        "offlineNodes": "0",
        "startTaskFailedNodes": "0",
    }
    # Three reads at the last check, each one page: the job (with its pool), the release status, the pool's nodes.
    get, release, listing = requests
    assert (get.operation, release.operation, listing.operation) == (
        "job.get",
        "job.preparationandreleasestatus",
        "node.list",
    )
    assert {"executionInfo", "poolInfo"} <= set(get.query["$select"].split(","))
    assert release.path == "/jobs/job-1/jobpreparationandreleasetaskstatus"
    assert (release.query["$select"], release.query["maxresults"]) == (
        "poolId,nodeId,jobReleaseTaskExecutionInfo",
        "1000",
    )
    assert listing.path == f"/pools/{POOL}/nodes"
    assert (listing.query["$select"], listing.query["maxresults"]) == ("id,state", "1000")
    assert record["error"]["httpStatus"] is None


def test_at_most_ten_release_task_nodes_are_named_and_every_one_is_counted(
    batch: BatchEmulator, clock: ManualClock, make_message: MessageFactory, queues: Queues, confirm_queue: QueueClient
) -> None:
    nodes = pool_nodes(batch, 12)
    terminated(batch, make_message, pool_id=POOL)  # ran on every node of the pool
    record, _, _ = last_check(batch, make_message, queues)
    values = values_of(record)
    assert values["releaseTasksRunning"] == "12"
    named = values["releaseTaskNodes"].split(",")
    assert len(named) == 10
    assert set(named) <= set(nodes)


def test_a_job_without_a_release_task_says_none(
    batch: BatchEmulator, make_message: MessageFactory, queues: Queues, confirm_queue: QueueClient
) -> None:
    pool_nodes(batch, 2)
    # No release task, so no hold: Batch's answer to the status read is 409 JobPreparationTaskNotSpecified.
    batch.add_job("job-1", JobState.TERMINATING, pool_id=POOL)
    record, keys, requests = last_check(batch, make_message, queues)
    assert keys == [*BASE_KEYS, "releaseTask", "unusableNodes", "offlineNodes", "startTaskFailedNodes"]
    assert values_of(record) == {
        **base_values(batch),
        "releaseTask": "none",
        "unusableNodes": "0",
        "offlineNodes": "0",
        "startTaskFailedNodes": "0",
    }
    assert [r.operation for r in requests] == ["job.get", "job.preparationandreleasestatus", "node.list"]


def test_a_pool_with_unusable_offline_and_start_task_failed_nodes_is_counted(
    batch: BatchEmulator, make_message: MessageFactory, queues: Queues, confirm_queue: QueueClient
) -> None:
    states = [
        NodeState.UNUSABLE,
        NodeState.UNUSABLE,
        NodeState.OFFLINE,
        NodeState.START_TASK_FAILED,
        NodeState.START_TASK_FAILED,
        NodeState.START_TASK_FAILED,
        NodeState.RUNNING,
        NodeState.IDLE,
    ]
    nodes = pool_nodes(batch, len(states))
    batch.set_node_states(POOL, states)
    terminated(batch, make_message, pool_id=POOL, nodes=nodes[6:7])
    record, _, _ = last_check(batch, make_message, queues)
    values = values_of(record)
    assert (values["releaseTasksRunning"], values["releaseTaskNodes"]) == ("1", nodes[6])
    assert (values["unusableNodes"], values["offlineNodes"], values["startTaskFailedNodes"]) == ("2", "1", "3")


def test_the_pool_is_the_one_the_job_runs_on(
    batch: BatchEmulator, make_message: MessageFactory, queues: Queues, confirm_queue: QueueClient
) -> None:
    """executionInfo.poolId first (an auto pool has only that), else poolInfo.poolId."""
    pool_nodes(batch, 2, "named-pool")
    running = pool_nodes(batch, 3, "auto-pool-1")
    batch.set_node_states("auto-pool-1", [NodeState.OFFLINE])
    terminated(batch, make_message, pool_id="named-pool", execution_pool_id="auto-pool-1")
    record, _, requests = last_check(batch, make_message, queues)
    assert requests[-1].path == "/pools/auto-pool-1/nodes"
    values = values_of(record)
    assert (values["releaseTasksRunning"], values["offlineNodes"]) == ("3", "1")
    assert set(values["releaseTaskNodes"].split(",")) == set(running)


def test_a_job_without_a_pool_id_gets_no_node_counts_and_no_node_read(
    batch: BatchEmulator, make_message: MessageFactory, queues: Queues, confirm_queue: QueueClient
) -> None:
    terminated(batch, make_message, nodes=["tvm-1_1-20261201t100000z"])
    record, keys, requests = last_check(batch, make_message, queues)
    assert keys == [*BASE_KEYS, "releaseTasksRunning", "releaseTaskNodes", "releaseTaskSince"]
    assert values_of(record)["releaseTaskNodes"] == "tvm-1_1-20261201t100000z"
    assert [r.operation for r in requests] == ["job.get", "job.preparationandreleasestatus"]


def test_no_release_task_running_is_a_zero_count(
    batch: BatchEmulator, make_message: MessageFactory, queues: Queues, confirm_queue: QueueClient
) -> None:
    """A job with a release task that was never terminated (someone disabled it, say): none has started."""
    nodes = pool_nodes(batch, 2)
    batch.add_job("job-1", JobState.DISABLED, pool_id=POOL, nodes=nodes, job_release_seconds=math.inf)
    record, keys, _ = last_check(batch, make_message, queues)
    assert keys == [*BASE_KEYS, "releaseTasksRunning", "unusableNodes", "offlineNodes", "startTaskFailedNodes"]
    values = values_of(record)
    assert (values["state"], values["releaseTasksRunning"]) == ("disabled", "0")


# ---- a failed read never stops the record: diagnosis = unavailable: <code>, still exactly one record


@pytest.mark.parametrize(
    ("fault", "times", "code"),
    [
        (Fault.status(503, "ServerBusy"), 4, "ServerBusy"),  # transient, after the client's retries
        (Fault.drop(), 4, "ServiceUnavailable"),  # no answer at all
        (Fault.status(403, "AuthorizationFailure"), 1, "AuthorizationFailure"),  # permanent: no retry
        (Fault.status(404, "JobNotFound"), 1, "JobNotFound"),  # deleted between the two reads
    ],
)
@pytest.mark.parametrize("dequeue_count", [1, 5])
def test_a_failed_release_status_read_is_named_and_the_record_written(
    batch: BatchEmulator,
    make_message: MessageFactory,
    queues: Queues,
    confirm_queue: QueueClient,
    captured_logs: pytest.LogCaptureFixture,
    fault: Fault,
    times: int,
    code: str,
    dequeue_count: int,
) -> None:
    nodes = pool_nodes(batch, 3)
    terminated(batch, make_message, pool_id=POOL, nodes=nodes)
    batch.inject(fault, times=times, operation="job.preparationandreleasestatus")
    record, keys, requests = last_check(batch, make_message, queues, dequeue_count=dequeue_count)
    assert keys == [*BASE_KEYS, "diagnosis"]
    assert values_of(record) == {**base_values(batch), "diagnosis": f"unavailable: {code}"}
    operations = [r.operation for r in requests]
    assert operations == ["job.get", *["job.preparationandreleasestatus"] * times]  # no node read after it failed
    assert any(f"diagnosis unavailable code={code}" in r.getMessage() for r in captured_logs.records)
    assert confirm_queue.peek_messages() == []


@pytest.mark.parametrize(
    ("fault", "times", "code"),
    [
        (Fault.status(500, "InternalError"), 4, "InternalError"),
        (Fault.status(403, "AuthorizationFailure"), 1, "AuthorizationFailure"),
    ],
)
def test_a_failed_node_read_keeps_the_release_values_and_is_named(
    batch: BatchEmulator,
    make_message: MessageFactory,
    queues: Queues,
    confirm_queue: QueueClient,
    fault: Fault,
    times: int,
    code: str,
) -> None:
    nodes = pool_nodes(batch, 3)
    terminated(batch, make_message, pool_id=POOL, nodes=nodes[:2])
    batch.inject(fault, times=times, operation="node.list")
    record, keys, _ = last_check(batch, make_message, queues)
    assert keys == [*BASE_KEYS, "releaseTasksRunning", "releaseTaskNodes", "releaseTaskSince", "diagnosis"]
    values = values_of(record)
    assert (values["releaseTasksRunning"], values["diagnosis"]) == ("2", f"unavailable: {code}")
    assert {k: values[k] for k in BASE_KEYS} == base_values(batch)


def test_a_deleted_pool_is_named(
    batch: BatchEmulator, make_message: MessageFactory, queues: Queues, confirm_queue: QueueClient
) -> None:
    terminated(batch, make_message, pool_id="gone-pool", nodes=["tvm-1_1-20261201t100000z"])
    record, _, _ = last_check(batch, make_message, queues)
    assert values_of(record)["diagnosis"] == "unavailable: PoolNotFound"


def test_a_transient_failure_of_the_diagnosis_is_retried_by_the_client_then_read(
    batch: BatchEmulator, make_message: MessageFactory, queues: Queues, confirm_queue: QueueClient
) -> None:
    """The diagnosis reads go through BatchClient's retries (docs/CONTRACT.md §5) like every read."""
    nodes = pool_nodes(batch, 2)
    terminated(batch, make_message, pool_id=POOL, nodes=nodes)
    batch.inject(Fault.status(503, "ServerBusy"), times=1, operation="job.preparationandreleasestatus")
    batch.inject(Fault.status(429, "TooManyRequests", retry_after=0), times=1, operation="node.list")
    record, _, requests = last_check(batch, make_message, queues)
    values = values_of(record)
    assert "diagnosis" not in values
    assert (values["releaseTasksRunning"], values["unusableNodes"]) == ("2", "0")
    assert [r.fault for r in requests] == [
        None,
        "status:503 ServerBusy",
        None,
        "status:429 TooManyRequests",
        None,
    ]
