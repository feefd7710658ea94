"""Why a job is stuck (docs/CONTRACT.md §5b): the release status and node reads as a TerminationStuck record's values,
and the CLI's one line for them."""

from __future__ import annotations

import pytest

from ops.output import stuck_line
from shared.batch.job_release import NodeRelease, ReleaseStatus
from shared.batch.nodes import ComputeNode
from shared.contract.errors import BatchErrorDetail
from shared.rules.confirmation import stuck_values


def as_dict(values: tuple[BatchErrorDetail, ...]) -> dict[str, str]:
    keys = [v.key for v in values]
    assert len(keys) == len(set(keys)), keys
    return {v.key: v.value for v in values}


def running(node_id: str, start: str | None = "2026-12-01T10:02:00Z") -> NodeRelease:
    return NodeRelease(node_id, "pool-1", "running", start)


HEALTHY = (ComputeNode("n1", "idle"), ComputeNode("n2", "running"))


def test_release_tasks_running_are_counted_named_and_dated_by_the_earliest_start() -> None:
    release = ReleaseStatus(
        (
            running("n3", "2026-12-01T10:05:00Z"),
            NodeRelease("n9", "pool-1", "completed", "2026-12-01T09:00:00Z"),
            running("n1", "2026-12-01T10:02:30.1234567Z"),
            NodeRelease("n8", "pool-1"),  # never started there
            running("n2", "2026-12-01T11:02:00+01:00"),  # 10:02 UTC: the earliest
        )
    )
    nodes = (
        ComputeNode("n1", "unusable"),
        ComputeNode("n2", "offline"),
        ComputeNode("n3", "offline"),
        ComputeNode("n4", "starttaskfailed"),
        ComputeNode("n5", "idle"),
        ComputeNode("n6"),
    )
    values = stuck_values(release, nodes)
    assert [v.key for v in values] == [
        "releaseTasksRunning",
        "releaseTaskNodes",
        "releaseTaskSince",
        "unusableNodes",
        "offlineNodes",
        "startTaskFailedNodes",
    ]
    assert as_dict(values) == {
        "releaseTasksRunning": "3",
        "releaseTaskNodes": "n2,n1,n3",  # earliest start first
        "releaseTaskSince": "2026-12-01T11:02:00+01:00",  # as Batch wrote it
        "unusableNodes": "1",
        "offlineNodes": "2",
        "startTaskFailedNodes": "1",
    }


def test_at_most_ten_nodes_are_named_and_all_are_counted() -> None:
    release = ReleaseStatus(tuple(running(f"node-{i:02d}", f"2026-12-01T10:{i:02d}:00Z") for i in range(25)))
    values = as_dict(stuck_values(release, HEALTHY))
    assert values["releaseTasksRunning"] == "25"
    assert values["releaseTaskNodes"] == ",".join(f"node-{i:02d}" for i in range(10))
    assert values["releaseTaskSince"] == "2026-12-01T10:00:00Z"


def test_no_release_task_running_is_a_zero_count_without_nodes_or_since() -> None:
    release = ReleaseStatus((NodeRelease("n1", "pool-1", "completed", "2026-12-01T10:00:00Z"), NodeRelease("n2")))
    assert as_dict(stuck_values(release, HEALTHY)) == {
        "releaseTasksRunning": "0",
        "unusableNodes": "0",
        "offlineNodes": "0",
        "startTaskFailedNodes": "0",
    }
    assert as_dict(stuck_values(ReleaseStatus(), None)) == {"releaseTasksRunning": "0"}


def test_a_job_without_a_release_task_says_none() -> None:
    assert as_dict(stuck_values(ReleaseStatus(specified=False), HEALTHY)) == {
        "releaseTask": "none",
        "unusableNodes": "0",
        "offlineNodes": "0",
        "startTaskFailedNodes": "0",
    }


def test_start_times_that_cannot_be_read_sort_last_and_give_no_since() -> None:
    values = as_dict(stuck_values(ReleaseStatus((running("b", None), running("a", "yesterday"))), None))
    assert values == {"releaseTasksRunning": "2", "releaseTaskNodes": "a,b"}
    values = as_dict(stuck_values(ReleaseStatus((running("b", None), running("a", "2026-12-01T10:00:00Z"))), None))
    assert (values["releaseTaskNodes"], values["releaseTaskSince"]) == ("a,b", "2026-12-01T10:00:00Z")


def test_a_failed_release_read_leaves_only_the_diagnosis() -> None:
    assert as_dict(stuck_values(None, None, "ServiceUnavailable")) == {"diagnosis": "unavailable: ServiceUnavailable"}


def test_a_failed_node_read_keeps_what_the_release_read_found() -> None:
    values = as_dict(stuck_values(ReleaseStatus((running("n1"),)), None, "PoolNotFound"))
    assert values == {
        "releaseTasksRunning": "1",
        "releaseTaskNodes": "n1",
        "releaseTaskSince": "2026-12-01T10:02:00Z",
        "diagnosis": "unavailable: PoolNotFound",
    }


def test_the_diagnosis_comes_last() -> None:
    values = stuck_values(ReleaseStatus(specified=False), None, "InternalError")
    assert [v.key for v in values] == ["releaseTask", "diagnosis"]


# ---- the CLI's line (`batch-terminator poison show`)


@pytest.mark.parametrize(
    ("values", "line"),
    [
        (
            {
                "releaseTasksRunning": "3",
                "releaseTaskNodes": "a,b,c",
                "releaseTaskSince": "2026-12-01T10:02:30.1234567Z",
                "unusableNodes": "1",
                "offlineNodes": "0",
                "startTaskFailedNodes": "0",
            },
            "release task still running on 3 nodes since 10:02 UTC; 1 node unusable",
        ),
        (
            {
                "releaseTasksRunning": "1",
                "releaseTaskNodes": "a",
                "releaseTaskSince": "2026-12-01T11:02:00+01:00",
                "unusableNodes": "2",
                "offlineNodes": "1",
                "startTaskFailedNodes": "3",
            },
            "release task still running on 1 node since 10:02 UTC; 2 nodes unusable; 1 node offline;"
            " 3 nodes with a failed start task",
        ),
        (
            {"releaseTask": "none", "unusableNodes": "0", "offlineNodes": "0", "startTaskFailedNodes": "0"},
            "no release task; no node unusable, offline or with a failed start task",
        ),
        (
            {"releaseTasksRunning": "0", "unusableNodes": "0", "offlineNodes": "2", "startTaskFailedNodes": "0"},
            "no release task running; 2 nodes offline",
        ),
        ({"releaseTasksRunning": "0"}, "no release task running; the job names no pool (node states not read)"),
        ({"diagnosis": "unavailable: ServiceUnavailable"}, "diagnosis unavailable: ServiceUnavailable"),
        (
            {"releaseTasksRunning": "2", "releaseTaskNodes": "a,b", "diagnosis": "unavailable: PoolNotFound"},
            "release task still running on 2 nodes; diagnosis unavailable: PoolNotFound",
        ),
        (
            {"releaseTasksRunning": "1", "releaseTaskNodes": "a", "releaseTaskSince": "not a time"},
            "release task still running on 1 node since not a time; the job names no pool (node states not read)",
        ),
    ],
)
def test_the_diagnosis_in_one_line(values: dict[str, str], line: str) -> None:
    assert stuck_line({"state": "terminating", "stateTransitionTime": "x", "checks": "3", **values}) == line


def test_a_record_from_before_the_diagnosis_has_no_line() -> None:
    assert stuck_line({"state": "terminating", "stateTransitionTime": "x", "checks": "3"}) is None


def test_the_values_function_and_the_line_agree() -> None:
    release = ReleaseStatus((running("n1"), running("n2", "2026-12-01T09:59:00Z")))
    values = {v.key: v.value for v in stuck_values(release, (ComputeNode("n3", "unusable"),))}
    assert stuck_line(values) == "release task still running on 2 nodes since 09:59 UTC; 1 node unusable"
