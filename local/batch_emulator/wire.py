"""Batch's wire format: HTTP dates, JSON times, BatchError answers and job documents."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime
from typing import Any

from local.batch_emulator.fleet import Node, Pool, Schedule, iso_duration
from local.batch_emulator.model import Job, NodeTaskStatus
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

# $select names per document (the properties the emulator writes; Batch takes any property of the resource).
SCHEDULE_FIELDS = (
    "id",
    "url",
    "eTag",
    "lastModified",
    "creationTime",
    "state",
    "stateTransitionTime",
    "previousState",
    "previousStateTransitionTime",
    "schedule",
    "jobSpecification",
    "executionInfo",
    "metadata",
)
POOL_FIELDS = (
    "id",
    "url",
    "eTag",
    "lastModified",
    "creationTime",
    "state",
    "stateTransitionTime",
    "allocationState",
    "allocationStateTransitionTime",
    "vmSize",
    "resizeTimeout",
    "currentDedicatedNodes",
    "currentLowPriorityNodes",
    "targetDedicatedNodes",
    "targetLowPriorityNodes",
    "enableAutoScale",
    "autoScaleFormula",
    "autoScaleEvaluationInterval",
    "metadata",
)
NODE_FIELDS = (
    "id",
    "url",
    "state",
    "schedulingState",
    "stateTransitionTime",
    "allocationTime",
    "isDedicated",
    "vmSize",
)
PREP_RELEASE_FIELDS = ("poolId", "nodeId", "nodeUrl", "jobPreparationTaskExecutionInfo", "jobReleaseTaskExecutionInfo")

# Messages of Batch's error table (learn.microsoft.com "Batch Status and Error Codes"), or the service's own text.
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
    "JobPreparationTaskNotSpecified": "The specified job does not have job preparation task.",
    "JobScheduleBeingDeleted": "The specified job schedule has been marked for deletion and is being reclaimed.",
    "JobScheduleBeingTerminated": "The specified job schedule is being terminated.",
    "JobScheduleCompleted": "The specified job schedule is already in completed state.",
    "JobScheduleDisabled": "The specified job schedule is disabled.",
    "JobScheduleNotFound": "The specified job schedule does not exist.",
    "InvalidPropertyValue": "The value provided for one of the properties in the request body is invalid.",
    "MissingRequiredProperty": "A required property was not specified in the request body.",
    "OperationInvalidForCurrentState": "The specified operation is not valid for the current state of the resource.",
    "PoolBeingResized": "The specified pool is being resized.",
    "PoolNotFound": "The specified pool does not exist.",
    "TooManyEnableAutoScaleRequests": "Too many Enable Pool AutoScale requests are issued on the pool.",
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


def _pool_info(pool_id: str | None, auto_pool: dict[str, Any] | None) -> dict[str, Any]:
    """poolInfo: a pool id, or an auto pool (which names no pool)."""
    if pool_id is not None:
        return {"poolId": pool_id}
    return {"autoPoolSpecification": auto_pool if auto_pool is not None else _AUTO_POOL}


def _metadata(items: dict[str, str]) -> list[dict[str, str]]:
    return [{"name": name, "value": value} for name, value in items.items()]


def _limit(document: dict[str, Any], selected: tuple[str, ...]) -> dict[str, Any]:
    return {name: document[name] for name in selected if name in document} if selected else document


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
    document["poolInfo"] = _pool_info(job.pool_id, job.auto_pool)
    document["onAllTasksComplete"] = "noaction"
    document["onTaskFailure"] = "noaction"
    if job.job_release_seconds:
        # Batch takes a job release task only beside a job preparation task.
        document["jobPreparationTask"] = {"id": "jobpreparation", "commandLine": "/bin/true"}
        document["jobReleaseTask"] = {"id": "jobrelease", "commandLine": "/bin/sh -c 'sleep 60'"}
    if job.metadata:
        document["metadata"] = _metadata(job.metadata)
    document["executionInfo"] = execution
    return _limit(document, selected)


def schedule_document(schedule: Schedule, account_url: str, selected: tuple[str, ...] = ()) -> dict[str, Any]:
    """The job schedule as Batch's JSON (the spec's JobSchedules_GetJobSchedule example's shape)."""
    document: dict[str, Any] = {
        "id": schedule.id,
        "url": f"{account_url}/jobschedules/{schedule.id}",
        "eTag": schedule.etag,
        "lastModified": iso_time(schedule.last_modified),
        "creationTime": iso_time(schedule.creation_time),
        "state": schedule.state.value,
        "stateTransitionTime": iso_time(schedule.state_transition_time),
    }
    if schedule.previous_state is not None and schedule.previous_state_transition_time is not None:
        document["previousState"] = schedule.previous_state.value
        document["previousStateTransitionTime"] = iso_time(schedule.previous_state_transition_time)
    document["schedule"] = (
        {"recurrenceInterval": iso_duration(schedule.recurrence)} if schedule.recurrence is not None else {}
    )
    specification: dict[str, Any] = {
        "priority": 0,
        "onAllTasksComplete": "noaction",
        "onTaskFailure": "noaction",
        "poolInfo": _pool_info(schedule.pool_id, schedule.auto_pool),
    }
    if schedule.job_release_seconds:
        specification["jobPreparationTask"] = {"id": "jobpreparation", "commandLine": "/bin/true"}
        specification["jobReleaseTask"] = {"id": "jobrelease", "commandLine": "/bin/sh -c 'sleep 60'"}
    if schedule.job_metadata:
        specification["metadata"] = _metadata(schedule.job_metadata)
    document["jobSpecification"] = specification
    execution: dict[str, Any] = {}
    if schedule.next_run_time is not None and schedule.state in ("active", "disabled"):
        execution["nextRunTime"] = iso_time(schedule.next_run_time)
    if schedule.recent_job_id is not None:
        execution["recentJob"] = {"id": schedule.recent_job_id, "url": f"{account_url}/jobs/{schedule.recent_job_id}"}
    if schedule.end_time is not None:
        execution["endTime"] = iso_time(schedule.end_time)
    document["executionInfo"] = execution
    if schedule.metadata:
        document["metadata"] = _metadata(schedule.metadata)
    return _limit(document, selected)


def pool_document(pool: Pool, account_url: str, selected: tuple[str, ...] = ()) -> dict[str, Any]:
    """The pool as Batch's JSON (the spec's Pools_GetPool_Basic example's shape; no VM configuration)."""
    document: dict[str, Any] = {
        "id": pool.id,
        "url": f"{account_url}/pools/{pool.id}",
        "eTag": pool.etag,
        "lastModified": iso_time(pool.last_modified),
        "creationTime": iso_time(pool.creation_time),
        "state": "active",
        "stateTransitionTime": iso_time(pool.creation_time),
        "allocationState": pool.allocation_state.value,
        "allocationStateTransitionTime": iso_time(pool.allocation_state_transition_time or pool.creation_time),
        "vmSize": pool.vm_size,
        "resizeTimeout": iso_duration(pool.resize_timeout),
        "currentDedicatedNodes": pool.current_dedicated,
        "currentLowPriorityNodes": pool.current_low_priority,
        "targetDedicatedNodes": pool.target_dedicated,
        "targetLowPriorityNodes": pool.target_low_priority,
        "enableAutoScale": pool.enable_auto_scale,
    }
    if pool.enable_auto_scale and pool.auto_scale_formula is not None:
        document["autoScaleFormula"] = pool.auto_scale_formula
    if pool.enable_auto_scale and pool.auto_scale_evaluation_interval is not None:
        document["autoScaleEvaluationInterval"] = iso_duration(pool.auto_scale_evaluation_interval)
    if pool.metadata:
        document["metadata"] = _metadata(pool.metadata)
    return _limit(document, selected)


def node_document(node: Node, pool: str, account_url: str, selected: tuple[str, ...] = ()) -> dict[str, Any]:
    """A compute node as Batch's JSON."""
    document: dict[str, Any] = {
        "id": node.id,
        "url": f"{account_url}/pools/{pool}/nodes/{node.id}",
        "state": node.state.value,
        "schedulingState": "enabled",
        "stateTransitionTime": iso_time(node.state_transition_time),
        "allocationTime": iso_time(node.allocation_time),
        "isDedicated": node.dedicated,
        "vmSize": "standard_d2s_v3",
    }
    return _limit(document, selected)


def prep_release_document(row: NodeTaskStatus, account_url: str, selected: tuple[str, ...] = ()) -> dict[str, Any]:
    """One node's preparation/release task status (the spec's JobListPreparationAndReleaseTaskStatus example)."""
    document: dict[str, Any] = {
        "poolId": row.pool_id,
        "nodeId": row.node_id,
        "nodeUrl": f"{account_url}/pools/{row.pool_id}/nodes/{row.node_id}",
        "jobPreparationTaskExecutionInfo": {
            "state": "completed",
            "startTime": iso_time(row.preparation_start),
            "endTime": iso_time(row.preparation_start),
            "exitCode": 0,
            "retryCount": 0,
        },
    }
    if row.release_state is not None and row.release_start is not None:
        release: dict[str, Any] = {"state": row.release_state, "startTime": iso_time(row.release_start)}
        if row.release_end is not None:
            release["endTime"] = iso_time(row.release_end)
            release["exitCode"] = 0
        document["jobReleaseTaskExecutionInfo"] = release
    return _limit(document, selected)


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
