"""When a terminated job counts as done (docs/CONTRACT.md §5b), and how long it took."""

from __future__ import annotations

from datetime import datetime

from shared.batch.jobs import Job

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
