"""When a terminated job counts as done (docs/CONTRACT.md §5b), how long it took, and why a stuck one is stuck."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime

from shared.batch.job_release import ReleaseStatus
from shared.batch.jobs import Job
from shared.batch.nodes import ComputeNode
from shared.contract.errors import BatchErrorDetail

# States in which the job is gone or finished: nothing left to confirm.
DONE_STATES = frozenset({"completed", "deleting"})


GONE_CODES = frozenset({"JobNotFound", "JobBeingDeleted"})


def terminating_seconds(job: Job) -> float | None:
    """The terminate request to completion by Batch's clock (entering terminating to entering completed), or None."""
    # None when the read does not show that transition: a job deleted, or one that completed some other way.
    if job.state != "completed" or job.previous_state != "terminating":
        return None
    try:
        ended = datetime.fromisoformat(str(job.state_transition_time))
        began = datetime.fromisoformat(str(job.previous_state_transition_time))
    except ValueError:
        return None
    if ended.tzinfo is None or began.tzinfo is None or ended < began:
        return None
    return (ended - began).total_seconds()


# The `values` keys a TerminationStuck record adds to say why (docs/CONTRACT.md §5b); the CLI reads the same names.
RELEASE_TASKS_RUNNING = "releaseTasksRunning"
RELEASE_TASK_NODES = "releaseTaskNodes"
RELEASE_TASK_SINCE = "releaseTaskSince"
RELEASE_TASK = "releaseTask"
NO_RELEASE_TASK = "none"
DIAGNOSIS = "diagnosis"
UNAVAILABLE = "unavailable"
# (values key, BatchNodeState) for the pool's node counts, in the record's order.
NODE_STATE_COUNTS = (
    ("unusableNodes", "unusable"),
    ("offlineNodes", "offline"),
    ("startTaskFailedNodes", "starttaskfailed"),
)
MAX_RELEASE_TASK_NODES = 10


def stuck_values(
    release: ReleaseStatus | None, nodes: Sequence[ComputeNode] | None, failure: str | None = None
) -> tuple[BatchErrorDetail, ...]:
    """Why a job is stuck, as `values` pairs: what the release status and node reads found, and which failed.

    release None: not read (its read failed); nodes None: not read (no pool id, or a read failed first);
    failure: the BatchError code of the read that failed, if one did.
    """
    values: list[BatchErrorDetail] = []
    if release is not None and not release.specified:
        values.append(BatchErrorDetail(RELEASE_TASK, NO_RELEASE_TASK))
    elif release is not None:
        # Earliest start first: the nodes named are the ones stuck longest. Unreadable times sort last.
        running = sorted(
            (node for node in release.nodes if node.state == "running"),
            key=lambda node: (_timestamp(node.start_time), node.node_id),
        )
        values.append(BatchErrorDetail(RELEASE_TASKS_RUNNING, str(len(running))))
        if running:
            names = ",".join(node.node_id for node in running[:MAX_RELEASE_TASK_NODES])
            values.append(BatchErrorDetail(RELEASE_TASK_NODES, names))
            if running[0].start_time is not None and _timestamp(running[0].start_time) < math.inf:
                values.append(BatchErrorDetail(RELEASE_TASK_SINCE, running[0].start_time))
    if nodes is not None:
        for key, state in NODE_STATE_COUNTS:
            values.append(BatchErrorDetail(key, str(sum(1 for node in nodes if node.state == state))))
    if failure is not None:
        values.append(BatchErrorDetail(DIAGNOSIS, f"{UNAVAILABLE}: {failure or 'Unknown'}"))
    return tuple(values)


def _timestamp(text: str | None) -> float:
    """An ISO 8601 time with its zone as POSIX seconds; infinity when absent or unreadable (so it sorts last)."""
    try:
        moment = datetime.fromisoformat(text or "")
    except ValueError:
        return math.inf
    return moment.timestamp() if moment.tzinfo is not None else math.inf
