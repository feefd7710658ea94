"""*Job - List Preparation and Release Task Status*: where the job's release task runs, one frozen row per node."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from shared.batch.client import BatchClient
from shared.contract.errors import BatchCallFailed

# Batch's 409 for a job that has no job preparation (and so no job release) task.
NO_RELEASE_TASK_CODE = "JobPreparationTaskNotSpecified"
# Only what a stuck termination's record needs (docs/CONTRACT.md §5b); one page holds up to 1000 nodes.
RELEASE_SELECT = "poolId,nodeId,jobReleaseTaskExecutionInfo"
PAGE_SIZE = 1000


@dataclass(frozen=True)
class NodeRelease:
    """One node the job ran on, and its job release task there (jobReleaseTaskExecutionInfo)."""

    node_id: str
    pool_id: str | None = None
    state: str | None = None  # running or completed; None: the release task has not started on the node
    start_time: str | None = None  # as Batch wrote it

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> NodeRelease | None:
        """A row of the list, or None when it names no node."""
        node_id = document.get("nodeId")
        if not isinstance(node_id, str) or not node_id:
            return None
        release = document.get("jobReleaseTaskExecutionInfo")
        release = release if isinstance(release, dict) else {}
        return cls(
            node_id=node_id,
            pool_id=_text(document.get("poolId")),
            state=_text(release.get("state")),
            start_time=_text(release.get("startTime")),
        )


@dataclass(frozen=True)
class ReleaseStatus:
    """The job's release task on every node it ran on; `specified` False when the job has none (Batch's 409)."""

    nodes: tuple[NodeRelease, ...] = ()
    specified: bool = True


def read_release_status(client: BatchClient, job_id: str) -> ReleaseStatus:
    """GET /jobs/{jobId}/jobpreparationandreleasetaskstatus, every page; BatchCallFailed when it fails."""
    url = client.urls.job(
        job_id, "jobpreparationandreleasetaskstatus", query={"maxresults": str(PAGE_SIZE), "$select": RELEASE_SELECT}
    )
    try:
        rows = [
            row
            for item in client.pages(url, label=f"release task status job={job_id}")
            if (row := NodeRelease.from_json(item)) is not None
        ]
    except BatchCallFailed as exc:
        if exc.error.code == NO_RELEASE_TASK_CODE:
            return ReleaseStatus(specified=False)
        raise
    return ReleaseStatus(tuple(rows))


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None
