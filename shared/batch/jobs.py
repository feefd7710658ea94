"""Batch *Job - Get* for one job (state, metadata), over BatchClient's token, session and retry loop."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import quote, urlencode

from shared.batch.client import BatchClient
from shared.config.settings import Settings
from shared.contract.errors import BatchCallFailed, BatchError, BatchErrorDetail
from shared.contract.terminate_request import JOB_ID_PATTERN


@dataclass(frozen=True)
class JobSnapshot:
    """What one Job - Get said about a job, with the answer's request-id."""

    id: str
    state: str | None
    state_transition_time: str | None  # as Batch wrote it
    metadata: Mapping[str, str] = field(default_factory=dict)
    request_id: str | None = None
    previous_state: str | None = None
    previous_state_transition_time: str | None = None  # as Batch wrote it


class JobReader(Protocol):
    """Reads one job: (account alias, job id, client-request-id, $select) → its snapshot, or BatchCallFailed."""

    def __call__(self, account: str, job_id: str, client_request_id: str, *, select: str) -> JobSnapshot: ...


class JobGetter:
    """Reads one job in a configured account; a JobSnapshot, or BatchCallFailed (404 JobNotFound included)."""

    def __init__(self, client: BatchClient, settings: Settings) -> None:
        self._client = client
        self._settings = settings

    def __call__(self, account: str, job_id: str, client_request_id: str, *, select: str) -> JobSnapshot:
        """GET {account}/jobs/{jobId}?$select=... (the one read the guards and the checks make)."""
        if not JOB_ID_PATTERN.fullmatch(job_id):
            raise ValueError("job id failed validation")  # never build a URL from an id Batch would refuse
        params = {
            "api-version": self._settings.batch_api_version,
            "timeout": str(self._settings.batch_timeout_seconds),
            "$select": select,
        }
        url = f"{self._settings.account_url(account)}/jobs/{job_id}?{urlencode(params, quote_via=quote, safe='$,')}"
        response = self._client.get(url, client_request_id, label=f"get job={job_id}")
        request_id = response.headers.get("request-id")
        try:
            document = response.json()
        except ValueError as exc:
            raise _unexpected("the Job - Get answer is not JSON", request_id) from exc
        if not isinstance(document, dict):
            raise _unexpected("the Job - Get answer is not a JSON object", request_id)
        state = _text(document.get("state"))
        transition = _text(document.get("stateTransitionTime"))
        metadata: dict[str, str] = {}
        raw_metadata = document.get("metadata")
        if isinstance(raw_metadata, list):
            for pair in raw_metadata:
                if isinstance(pair, dict) and isinstance(pair.get("name"), str):
                    metadata[pair["name"]] = str(pair.get("value") or "")
        return JobSnapshot(
            id=str(document.get("id") or job_id),
            state=state,
            state_transition_time=transition,
            metadata=metadata,
            request_id=request_id,
            previous_state=_text(document.get("previousState")),
            previous_state_transition_time=_text(document.get("previousStateTransitionTime")),
        )


def _text(value: object) -> str | None:
    """A string property of the answer, or None when it is absent or not a string."""
    return value if isinstance(value, str) else None


def _unexpected(message: str, request_id: str | None) -> BatchCallFailed:
    error = BatchError("UnexpectedResponse", message, (BatchErrorDetail("operation", "Job - Get"),), None, request_id)
    return BatchCallFailed(error, attempts=1, transient=False)


__all__ = ["JobGetter", "JobReader", "JobSnapshot"]
