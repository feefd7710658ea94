"""Batch's wire format: HTTP dates, JSON times, BatchError answers and job documents."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime
from typing import Any

from local.batch_emulator.model import Job
from local.loopback import HttpRequest, HttpResponse

ODATA_JSON = "application/json;odata=minimalmetadata"
BATCH_RESOURCE = "https://batch.core.windows.net/"
WWW_AUTHENTICATE = (
    f'Bearer authorization="https://login.microsoftonline.com/common/oauth2/authorize", resource="{BATCH_RESOURCE}"'
)
JOB_FIELDS = (
    "id",
    "url",
    "eTag",
    "lastModified",
    "creationTime",
    "state",
    "stateTransitionTime",
    "previousState",
    "previousStateTransitionTime",
    "priority",
    "poolInfo",
    "onAllTasksComplete",
    "onTaskFailure",
    "jobPreparationTask",
    "jobReleaseTask",
    "metadata",
    "executionInfo",
)

ERROR_MESSAGES: dict[str, str] = {
    "AuthenticationFailed": "Server failed to authenticate the request. Make sure the value of Authorization "
    "header is formed correctly including the signature.",
    "ConditionNotMet": "The condition specified using HTTP conditional header(s) is not met.",
    "InternalError": "Server encountered an internal error. Please try again after some time.",
    "InvalidHeaderValue": "The value for one of the HTTP headers is not in the correct format.",
    "InvalidQueryParameterValue": "Value for one of the query parameters specified in the request URI is invalid.",
    "InvalidRequestBody": "The specified Request Body is not syntactically valid.",
    "InvalidUri": "The requested URI does not represent any resource on the server.",
    "JobBeingDeleted": "The specified job has been marked for deletion and is being reclaimed.",
    "JobBeingTerminated": "The specified job is already in the process of being terminated.",
    "JobCompleted": "The specified job is already in a completed state.",
    "JobNotFound": "The specified job does not exist.",
    "MissingRequiredQueryParameter": "A query parameter that's mandatory for this request is not specified.",
    "MultipleConditionHeadersNotSupported": "Multiple condition headers are not supported.",
    "OperationTimedOut": "Operation could not be completed within the specified time.",
    "ServerBusy": "The server is currently unable to receive requests. Please retry your request.",
    "TooManyRequests": "The server is receiving too many requests. Please retry your request later.",
    "UnsupportedQueryParameter": "One of the query parameters specified in the request URI is not supported.",
    "UnsupportedRequestVersion": "The specified request version is not supported.",
}


def http_date(moment: datetime) -> str:
    """Format a datetime as an RFC 1123 GMT date."""
    return format_datetime(moment.astimezone(UTC), usegmt=True)


def iso_time(moment: datetime) -> str:
    """Format a datetime the way Batch writes JSON times (7 fractional digits, Z)."""
    moment = moment.astimezone(UTC)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{moment.microsecond:06d}0Z"


def parse_http_date(value: str) -> datetime | None:
    """Parse an RFC 1123 date header, or None when it is not one."""
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def seconds_text(seconds: float) -> str:
    """Render a Retry-After value without a trailing .0."""
    return str(int(seconds)) if float(seconds).is_integer() else f"{seconds:g}"


_AUTO_POOL = {"poolLifetimeOption": "job", "pool": {"vmSize": "standard_d2s_v3"}}


def job_document(job: Job, account_url: str, selected: tuple[str, ...] = ()) -> dict[str, Any]:
    """The job as Batch's JSON (optional properties omitted when unset), limited to $select."""
    execution: dict[str, str] = {"startTime": iso_time(job.creation_time)}
    if job.execution_pool_id is not None:
        execution["poolId"] = job.execution_pool_id
    if job.end_time is not None:
        execution["endTime"] = iso_time(job.end_time)
    if job.terminate_reason is not None:
        execution["terminateReason"] = job.terminate_reason
    document: dict[str, Any] = {
        "id": job.id,
        "url": f"{account_url}/jobs/{job.id}",
        "eTag": job.etag,
        "lastModified": iso_time(job.last_modified),
        "creationTime": iso_time(job.creation_time),
        "state": job.state.value,
        "stateTransitionTime": iso_time(job.state_transition_time or job.creation_time),
    }
    if job.previous_state is not None and job.previous_state_transition_time is not None:
        document["previousState"] = job.previous_state.value
        document["previousStateTransitionTime"] = iso_time(job.previous_state_transition_time)
    document["priority"] = 0
    # An auto-pool job names no pool in poolInfo; its pool shows only in executionInfo.poolId.
    document["poolInfo"] = {"poolId": job.pool_id} if job.pool_id is not None else {"autoPoolSpecification": _AUTO_POOL}
    document["onAllTasksComplete"] = "noaction"
    document["onTaskFailure"] = "noaction"
    if job.job_release_seconds:
        # Batch takes a job release task only beside a job preparation task.
        document["jobPreparationTask"] = {"id": "jobpreparation", "commandLine": "/bin/true"}
        document["jobReleaseTask"] = {"id": "jobrelease", "commandLine": "/bin/sh -c 'sleep 60'"}
    if job.metadata:
        document["metadata"] = [{"name": name, "value": value} for name, value in job.metadata.items()]
    document["executionInfo"] = execution
    if selected:
        return {name: document[name] for name in selected if name in document}
    return document


class Reply:
    """Builds answers for one request, adding request-id and the client-request-id echo."""

    def __init__(self, request: HttpRequest, base_url: str) -> None:
        self.request = request
        self.base_url = base_url
        self.request_id = str(uuid.uuid4())
        # Batch reads query parameter names case-insensitively (the specs spell it `timeout` and `timeOut`).
        self.query = {name.lower(): value for name, value in request.query.items()}

    def headers(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """Headers every answer carries."""
        headers = {"request-id": self.request_id, "DataServiceVersion": "3.0"}
        client_request_id = self.request.headers.get("client-request-id")
        if client_request_id and self.request.headers.get("return-client-request-id", "").lower() == "true":
            headers["client-request-id"] = client_request_id
        headers.update(extra or {})
        return headers

    def empty(self, status: int, extra: Mapping[str, str] | None = None) -> HttpResponse:
        """An answer without a body."""
        return HttpResponse(status, self.headers(extra))

    def json(self, payload: Mapping[str, Any], status: int = 200) -> HttpResponse:
        """A JSON answer."""
        body = json.dumps(payload).encode()
        return HttpResponse(status, self.headers({"Content-Type": ODATA_JSON}), body)

    def error(
        self,
        status: int,
        code: str,
        message: str | None = None,
        values: Iterable[tuple[str, str]] = (),
        extra: Mapping[str, str] | None = None,
    ) -> HttpResponse:
        """A BatchError answer."""
        text = message if message is not None else ERROR_MESSAGES.get(code, "The server encountered an error.")
        payload: dict[str, Any] = {
            "odata.metadata": f"{self.base_url}/$metadata#Microsoft.Azure.Batch.Protocol.Entities.Container"
            ".errors/@Element",
            "code": code,
            "message": {
                "lang": "en-US",
                "value": f"{text}\nRequestId:{self.request_id}\nTime:{iso_time(datetime.now(UTC))}",
            },
        }
        details = [{"key": key, "value": value} for key, value in values]
        if details:
            payload["values"] = details
        body = json.dumps(payload).encode()
        return HttpResponse(status, self.headers({"Content-Type": ODATA_JSON, **(extra or {})}), body)

    def bad_query(self, name: str, value: str, reason: str) -> HttpResponse:
        """400 InvalidQueryParameterValue naming the parameter."""
        values = [("QueryParameterName", name), ("QueryParameterValue", value), ("Reason", reason)]
        return self.error(400, "InvalidQueryParameterValue", values=values)

    def bad_header(self, name: str, value: str) -> HttpResponse:
        """400 InvalidHeaderValue naming the header."""
        return self.error(400, "InvalidHeaderValue", values=[("HeaderName", name), ("HeaderValue", value)])
