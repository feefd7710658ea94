"""Job schedules over REST: *Job Schedule - List*, *- Get*, *- Disable*, *- Enable* (docs/CONTRACT.md §10)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from shared.batch.client import BatchClient
from shared.batch.jobs import metadata_of
from shared.contract.incident import ActionResult

# What selection reads of a schedule: its state, metadata, job specification (pool, metadata) and recent job.
SCHEDULE_SELECT = "id,state,metadata,jobSpecification,executionInfo"
LIST_PAGE_SIZE = 1000


@dataclass(frozen=True)
class JobSchedule:
    """The properties of a Batch job schedule the kill switch looks at (Batch's REST names)."""

    id: str
    state: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    pool_id: str | None = None  # jobSpecification.poolInfo.poolId
    auto_pool: bool = False  # jobSpecification.poolInfo.autoPoolSpecification
    job_metadata: Mapping[str, str] = field(default_factory=dict)  # jobSpecification.metadata
    recent_job_id: str | None = None  # executionInfo.recentJob.id

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> JobSchedule | None:
        """A JobSchedule from a Job Schedule - Get answer or a list entry; None without a usable id."""
        schedule_id = document.get("id")
        if not isinstance(schedule_id, str) or not schedule_id:
            return None
        specification = document.get("jobSpecification")
        specification = specification if isinstance(specification, dict) else {}
        pool_info = specification.get("poolInfo")
        pool_info = pool_info if isinstance(pool_info, dict) else {}
        execution = document.get("executionInfo")
        recent = execution.get("recentJob") if isinstance(execution, dict) else None
        recent_id = recent.get("id") if isinstance(recent, dict) else None
        pool_id = pool_info.get("poolId")
        state = document.get("state")
        return cls(
            id=schedule_id,
            state=state if isinstance(state, str) else None,
            metadata=metadata_of(document),
            pool_id=pool_id if isinstance(pool_id, str) and pool_id else None,
            auto_pool=isinstance(pool_info.get("autoPoolSpecification"), dict),
            job_metadata=metadata_of(specification),
            recent_job_id=recent_id if isinstance(recent_id, str) and recent_id else None,
        )


class JobSchedules:
    """One account's job schedules, through that account's client; BatchCallFailed on failure."""

    def __init__(self, client: BatchClient) -> None:
        self._client = client

    def list_active(self, *, select: str = SCHEDULE_SELECT) -> Iterator[JobSchedule]:
        """Every job schedule in state active (Batch filters; the state is checked again by the caller)."""
        query = {"maxresults": str(LIST_PAGE_SIZE), "$filter": "state eq 'active'", "$select": select}
        url = self._client.urls.url("jobschedules", query=query)
        for item in self._client.pages(url, label="list job schedules"):
            schedule = JobSchedule.from_json(item)
            if schedule is not None:
                yield schedule

    def get(self, schedule_id: str) -> JobSchedule:
        """Job Schedule - Get (404 JobScheduleNotFound raises BatchCallFailed)."""
        url = self._client.urls.resource("jobschedules", schedule_id, query={"$select": SCHEDULE_SELECT})
        document = self._client.get_json(url, label=f"get job schedule={schedule_id}")
        schedule = JobSchedule.from_json({**document, "id": document.get("id") or schedule_id})
        assert schedule is not None
        return schedule

    def disable(self, schedule_id: str) -> ActionResult:
        """Job Schedule - Disable: no new job starts until it is enabled (204)."""
        return self._action(schedule_id, "disable")

    def enable(self, schedule_id: str) -> ActionResult:
        """Job Schedule - Enable (204)."""
        return self._action(schedule_id, "enable")

    def _action(self, schedule_id: str, action: str) -> ActionResult:
        url = self._client.urls.resource("jobschedules", schedule_id, action)
        response = self._client.post(
            url, None, operation=f"jobschedule.{action}", label=f"{action} job schedule={schedule_id}"
        )
        return ActionResult(response.status_code, None)
