"""Batch reads for the sweep and the selections: *Job - List* (paged) and *Job - Get Task Counts*."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from shared.batch.answers import unexpected
from shared.batch.client import BatchClient
from shared.batch.jobs import Job


@dataclass(frozen=True)
class TaskCounts:
    """A job's task counts (Job - Get Task Counts, taskCounts)."""

    active: int = 0
    running: int = 0
    completed: int = 0
    succeeded: int = 0
    failed: int = 0


class BatchReader:
    """Lists one account's jobs and reads task counts, through that account's client."""

    def __init__(self, client: BatchClient) -> None:
        self._client = client

    @property
    def account_url(self) -> str:
        """The account this reader lists (no trailing slash)."""
        return self._client.account_url

    def list_jobs(self, *, odata_filter: str | None, select: str, page_size: int) -> Iterator[Job]:
        """Yield every job `odata_filter` passes (None: all), following odata.nextLink; raise BatchCallFailed."""
        query = {"maxresults": str(page_size)}
        if odata_filter:
            query["$filter"] = odata_filter
        if select:
            query["$select"] = select
        for item in self._client.pages(self._client.urls.url("jobs", query=query), label="list jobs"):
            job = Job.from_json(item)
            if job is not None:
                yield job

    def task_counts(self, job_id: str) -> TaskCounts:
        """The job's task counts; raise BatchCallFailed (JobNotFound when it is gone)."""
        url = self._client.urls.job(job_id, "taskcounts")
        document = self._client.get_json(url, label=f"task counts job={job_id}")
        # Newer api-versions nest the counts under taskCounts (beside taskSlotCounts); older ones answer them flat.
        counts = document.get("taskCounts", document)
        if not isinstance(counts, dict):
            raise unexpected("the answer has no taskCounts object", operation="Job - Get Task Counts")
        values: dict[str, int] = {}
        for name in TaskCounts.__dataclass_fields__:
            value = counts.get(name, None if name in ("active", "running") else 0)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                # A count we cannot read must never look like zero: zero active tasks can mean "terminate".
                raise unexpected(
                    f"task counts job={job_id}: {name} is not a count",
                    (name, repr(value)[:50]),
                    operation="Job - Get Task Counts",
                )
            values[name] = value
        return TaskCounts(**values)
