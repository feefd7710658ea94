"""Batch reads for the sweep and alert selection: *Job - List* (with paging) and *Job - Get Task Counts*."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

from shared.batch.client import BatchClient
from shared.config.settings import Settings
from shared.contract.codec import parse_http_date
from shared.contract.errors import BatchCallFailed, BatchError, BatchErrorDetail
from shared.contract.terminate_request import JOB_ID_PATTERN

# A safety net against a service that keeps answering with a nextLink: 1000 pages of up to 1000 jobs.
MAX_PAGES = 1000
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class JobInfo:
    """The part of a Batch job the sweep and the alert selection look at."""

    id: str
    state: str | None
    creation_time: datetime | None
    metadata: Mapping[str, str] = field(default_factory=dict)
    execution_pool_id: str | None = None  # executionInfo.poolId: the pool the job runs on (auto pools too)
    pool_info_pool_id: str | None = None  # poolInfo.poolId: the pool named when the job was added or updated

    @property
    def pool_id(self) -> str | None:
        """The job's pool: executionInfo.poolId, else poolInfo.poolId."""
        return self.execution_pool_id or self.pool_info_pool_id


@dataclass(frozen=True)
class TaskCounts:
    """A job's task counts (Job - Get Task Counts, taskCounts)."""

    active: int = 0
    running: int = 0
    completed: int = 0
    succeeded: int = 0
    failed: int = 0


class BatchReader:
    """Lists jobs and reads task counts with the same token, session and retry policy as terminate."""

    def __init__(self, client: BatchClient, settings: Settings) -> None:
        self._client = client
        self._base = client.account_url
        self._origin = _origin(self._base)
        self._api_version = settings.batch_api_version
        self._timeout = str(settings.batch_timeout_seconds)

    @property
    def account_url(self) -> str:
        """The account this reader lists (no trailing slash)."""
        return self._base

    def list_jobs(self, *, odata_filter: str | None, select: str, page_size: int) -> Iterator[JobInfo]:
        """Yield every job `odata_filter` passes (None: all), following odata.nextLink; raise BatchCallFailed."""
        params = {"api-version": self._api_version, "maxresults": str(page_size), "timeout": self._timeout}
        if odata_filter:
            params["$filter"] = odata_filter
        if select:
            params["$select"] = select
        url: str | None = f"{self._base}/jobs?{_encode(params)}"
        seen: set[str] = set()
        pages = 0
        while url is not None:
            seen.add(url)
            pages += 1
            document = self._get_json(url, "list jobs")
            values = document.get("value")
            if not isinstance(values, list):
                raise _unexpected("the Job - List answer has no value array")
            for item in values:
                job = _job(item)
                if job is not None:
                    yield job
            url = self._next_url(document.get("odata.nextLink"))
            if url is not None and (url in seen or pages >= MAX_PAGES):
                raise _unexpected(f"paging did not end after {pages} page(s)", ("odata.nextLink", url))

    def task_counts(self, job_id: str) -> TaskCounts:
        """The job's task counts; raise BatchCallFailed (JobNotFound when it is gone)."""
        if not JOB_ID_PATTERN.fullmatch(job_id):
            raise ValueError("job id failed validation")  # never build a URL from an id Batch would refuse
        query = _encode({"api-version": self._api_version, "timeout": self._timeout})
        document = self._get_json(f"{self._base}/jobs/{job_id}/taskcounts?{query}", f"task counts job={job_id}")
        # Newer api-versions nest the counts under taskCounts (beside taskSlotCounts); older ones answer them flat.
        counts = document.get("taskCounts", document)
        if not isinstance(counts, dict):
            raise _unexpected("the Get Task Counts answer has no taskCounts object")
        values: dict[str, int] = {}
        for name in TaskCounts.__dataclass_fields__:
            value = counts.get(name, None if name in ("active", "running") else 0)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                # A count we cannot read must never look like zero: zero active tasks can mean "terminate".
                raise _unexpected(f"task counts job={job_id}: {name} is not a count", (name, repr(value)[:50]))
            values[name] = value
        return TaskCounts(**values)

    def _get_json(self, url: str, label: str) -> dict[str, Any]:
        response = self._client.get(url, str(uuid.uuid4()), label=label)
        try:
            document = response.json()
        except ValueError as exc:
            raise _unexpected(f"{label}: the answer is not JSON", ("body", response.text[:200])) from exc
        if not isinstance(document, dict):
            raise _unexpected(f"{label}: the answer is not a JSON object")
        return document

    def _next_url(self, link: object) -> str | None:
        """The next page's URL, only if it stays on the configured account and path."""
        if link is None or link == "":
            return None
        if not isinstance(link, str):
            raise _unexpected("odata.nextLink is not a string")
        try:
            parts = urlsplit(link)
            origin = _origin(link)
        except ValueError as exc:
            raise _unexpected("odata.nextLink is not a URL", ("odata.nextLink", link[:200])) from exc
        if origin != self._origin or parts.path.rstrip("/") != "/jobs" or parts.username or parts.fragment:
            # Following it would hand the Batch token to whoever the link names.
            raise _unexpected("odata.nextLink leaves the configured Batch account", ("odata.nextLink", link[:200]))
        params = dict(parse_qsl(parts.query, keep_blank_values=True))
        params.setdefault("api-version", self._api_version)
        return f"{self._base}/jobs?{_encode(params)}"


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or _DEFAULT_PORTS.get(scheme)


def _encode(params: Mapping[str, str]) -> str:
    return urlencode(params, quote_via=quote, safe="$,'")


def _job(item: object) -> JobInfo | None:
    """A JobInfo from one Job - List entry, or None when the entry has no usable id."""
    if not isinstance(item, dict) or not isinstance(item.get("id"), str):
        return None
    created = item.get("creationTime")
    metadata: dict[str, str] = {}
    raw_metadata = item.get("metadata")
    if isinstance(raw_metadata, list):
        for pair in raw_metadata:
            if isinstance(pair, dict) and isinstance(pair.get("name"), str):
                metadata[pair["name"]] = str(pair.get("value", ""))
    state = item.get("state")
    return JobInfo(
        id=item["id"],
        state=state if isinstance(state, str) else None,
        creation_time=parse_http_date(created) if isinstance(created, str) else None,
        metadata=metadata,
        execution_pool_id=_pool_id(item.get("executionInfo")),
        pool_info_pool_id=_pool_id(item.get("poolInfo")),
    )


def _pool_id(section: object) -> str | None:
    """poolId of an executionInfo or poolInfo object, when it is a non-empty string."""
    value = section.get("poolId") if isinstance(section, dict) else None
    return value if isinstance(value, str) and value else None


def _unexpected(message: str, *values: tuple[str, str]) -> BatchCallFailed:
    detail = BatchError(
        code="UnexpectedResponse", message=message, values=tuple(BatchErrorDetail(k, v) for k, v in values)
    )
    return BatchCallFailed(detail, attempts=1, transient=False)


__all__ = ["BatchReader", "JobInfo", "TaskCounts"]
