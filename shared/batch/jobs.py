"""A Batch job as the app reads it (one model for Job - Get and Job - List), and *Job - Get* itself."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from shared.batch.answers import unexpected
from shared.batch.client import BatchClient
from shared.contract.codec import parse_http_date


@dataclass(frozen=True)
class Job:
    """The properties of a Batch job the app looks at (Batch's REST names), with the answer's request-id."""

    id: str
    state: str | None = None
    state_transition_time: str | None = None  # as Batch wrote it
    creation_time: datetime | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    execution_pool_id: str | None = None  # executionInfo.poolId: the pool the job runs on (auto pools too)
    pool_info_pool_id: str | None = None  # poolInfo.poolId: the pool named when the job was added or updated
    auto_pool: bool = False  # poolInfo.autoPoolSpecification: Batch ends the pool with the job
    previous_state: str | None = None
    previous_state_transition_time: str | None = None  # as Batch wrote it
    request_id: str | None = None

    @property
    def pool_id(self) -> str | None:
        """The job's pool: executionInfo.poolId, else poolInfo.poolId."""
        return self.execution_pool_id or self.pool_info_pool_id

    @classmethod
    def from_json(cls, document: Mapping[str, Any], *, request_id: str | None = None) -> Job | None:
        """A Job from a Job - Get answer or a Job - List entry; None when it has no usable id."""
        job_id = document.get("id")
        if not isinstance(job_id, str) or not job_id:
            return None
        created = document.get("creationTime")
        pool_info = document.get("poolInfo")
        return cls(
            id=job_id,
            state=_text(document.get("state")),
            state_transition_time=_text(document.get("stateTransitionTime")),
            creation_time=parse_http_date(created) if isinstance(created, str) else None,
            metadata=metadata_of(document),
            execution_pool_id=_pool_id(document.get("executionInfo")),
            pool_info_pool_id=_pool_id(pool_info),
            auto_pool=isinstance(pool_info, dict) and isinstance(pool_info.get("autoPoolSpecification"), dict),
            previous_state=_text(document.get("previousState")),
            previous_state_transition_time=_text(document.get("previousStateTransitionTime")),
            request_id=request_id,
        )


class JobReader(Protocol):
    """Reads one job: (account alias, job id, client-request-id, $select) → the job, or BatchCallFailed."""

    def __call__(self, account: str, job_id: str, client_request_id: str, *, select: str) -> Job: ...


class JobGetter:
    """Job - Get in any configured account, through that account's client; BatchCallFailed on failure (404 too)."""

    def __init__(self, clients: Mapping[str, BatchClient]) -> None:
        self._clients = clients

    def __call__(self, account: str, job_id: str, client_request_id: str, *, select: str) -> Job:
        """GET {account}/jobs/{jobId}?$select=... (the one read the guards and the checks make)."""
        client = self._clients[account.lower()]
        url = client.urls.job(job_id, query={"$select": select})
        response = client.get(url, client_request_id, label=f"get job={job_id}")
        request_id = response.headers.get("request-id")
        try:
            document = response.json()
        except ValueError as exc:
            raise unexpected("the answer is not JSON", operation="Job - Get", request_id=request_id) from exc
        if not isinstance(document, dict):
            raise unexpected("the answer is not a JSON object", operation="Job - Get", request_id=request_id)
        job = Job.from_json({**document, "id": document.get("id") or job_id}, request_id=request_id)
        assert job is not None
        return job


def metadata_of(document: Mapping[str, Any]) -> dict[str, str]:
    """A resource's metadata (a list of name/value pairs) as a dict."""
    metadata: dict[str, str] = {}
    raw = document.get("metadata")
    if isinstance(raw, list):
        for pair in raw:
            if isinstance(pair, dict) and isinstance(pair.get("name"), str):
                metadata[pair["name"]] = str(pair.get("value") or "")
    return metadata


def _text(value: object) -> str | None:
    """A string property of the answer, or None when it is absent or not a string."""
    return value if isinstance(value, str) else None


def _pool_id(section: object) -> str | None:
    """poolId of an executionInfo or poolInfo object, when it is a non-empty string."""
    value = section.get("poolId") if isinstance(section, dict) else None
    return value if isinstance(value, str) and value else None
