"""The emulator's HTTP service: routes, query/auth/header checks and Batch's answers for each job operation."""

from __future__ import annotations

import json
import logging
import re
import threading
import uuid
from collections.abc import Callable, Mapping
from typing import Any, Unpack
from urllib.parse import quote, unquote, urlencode

from local.batch_emulator.faults import Fault, FaultPlan
from local.batch_emulator.model import (
    DEFAULT_TERMINATE_REASON,
    JOB_ID,
    Account,
    Job,
    JobOptions,
    JobState,
    RecordedRequest,
    Refusal,
    Termination,
)
from local.batch_emulator.odata import FilterError, Predicate, parse_filter
from local.batch_emulator.versions import API_VERSIONS, FORCE_SINCE, supports_force
from local.batch_emulator.wire import (
    JOB_FIELDS,
    WWW_AUTHENTICATE,
    Reply,
    http_date,
    job_document,
    parse_http_date,
    seconds_text,
)
from local.loopback import HttpRequest, HttpResponse, LoopbackService

logger = logging.getLogger(__name__)

MAX_SERVER_TIMEOUT = 30
MAX_RESULTS = 1000

_DIGITS = re.compile(r"\d{1,9}")
_CONDITIONS = ("if-match", "if-none-match", "if-modified-since", "if-unmodified-since")


class BatchEmulator(LoopbackService):
    """Loopback Azure Batch account: terminate, get, list and taskcounts for jobs, with faults and a ledger."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        authorize: Callable[[str], bool] | None = None,
        latency: float = 0.0,
        terminate_delay: float = 0.0,
        seed: int | None = None,
    ) -> None:
        super().__init__(host, port)
        self.authorize = authorize
        # Seconds added to every answer; each connection has its own thread, so concurrent requests overlap.
        self.latency = latency
        # How a missing or rejected token is answered: 401 (what a bearer token gets) or 403 (Batch's table).
        self.auth_failure_status = 401
        # Soak tests and benchmarks turn this off so memory stays flat over long runs.
        self.record_requests = True
        self.account = Account()
        self.account.terminate_delay = terminate_delay
        self.faults = FaultPlan(seed)
        # Guards the recorded requests and the fault plan together, so `requests` is in the order faults were drawn.
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._in_flight = 0
        self._peak_in_flight = 0

    @property
    def url(self) -> str:
        """The account URL, e.g. http://127.0.0.1:PORT."""
        return self.base_url

    # ---- test-facing state (delegated to the account and the fault plan)

    @property
    def terminate_delay(self) -> float:
        """Seconds a terminated job stays `terminating` before it reads as `completed`."""
        return self.account.terminate_delay

    @terminate_delay.setter
    def terminate_delay(self, seconds: float) -> None:
        self.account.terminate_delay = seconds

    @property
    def auto_create_jobs(self) -> bool:
        """Whether a terminate for an unknown id creates the job first instead of answering JobNotFound."""
        return self.account.auto_create_jobs

    @auto_create_jobs.setter
    def auto_create_jobs(self, enabled: bool) -> None:
        self.account.auto_create_jobs = enabled

    @property
    def slow_seconds(self) -> float:
        """How long the `slow` fault rate delays an answer."""
        return self.faults.slow_seconds

    @slow_seconds.setter
    def slow_seconds(self, seconds: float) -> None:
        self.faults.slow_seconds = seconds

    def add_job(self, job_id: str, state: JobState = JobState.ACTIVE, **options: Unpack[JobOptions]) -> Job:
        """Create a job (options: JobOptions) and return a snapshot of it."""
        return self.account.add(job_id, state, **options)

    def add_jobs(
        self, count: int, prefix: str = "job-", state: JobState = JobState.ACTIVE, **options: Unpack[JobOptions]
    ) -> list[str]:
        """Create `count` jobs `{prefix}0000`... in one call (cheap for thousands); return their ids."""
        width = max(4, len(str(max(count - 1, 0))))
        ids = [f"{prefix}{index:0{width}d}" for index in range(count)]
        self.account.add_many(ids, state, **options)
        return ids

    def job(self, job_id: str) -> Job | None:
        """A snapshot of the job (ids are case-insensitive, as in Batch), or None."""
        return self.account.job(job_id)

    def jobs(self) -> list[Job]:
        """Snapshots of all jobs in creation order."""
        return self.account.jobs()

    def set_state(self, job_id: str, state: JobState) -> Job:
        """Move a job to `state` as the service would (new ETag, transition times)."""
        return self.account.set_state(job_id, state)

    def remove_job(self, job_id: str) -> None:
        """Forget a job, as Batch does once a Job - Delete has finished (reads then answer 404 JobNotFound)."""
        self.account.remove(job_id)

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far, oldest first."""
        with self._lock:
            return list(self._requests)

    @property
    def terminations(self) -> list[Termination]:
        """The ledger: one entry per accepted (202) terminate, oldest first."""
        return self.account.terminations

    @property
    def peak_in_flight(self) -> int:
        """The most requests that were being answered at the same moment since the last reset."""
        with self._lock:
            return self._peak_in_flight

    def inject(self, fault: Fault, times: int = 1, job_id: str | None = None, operation: str = "terminate") -> None:
        """Give the next `times` requests of `operation` (for `job_id`, or any) this fault; queued FIFO.

        operation: terminate, get, list, taskcounts or any.
        """
        with self._lock:
            self.faults.inject(fault, times, job_id, operation)

    def set_fault_rates(self, rates: Mapping[str, float], seed: int | None = None) -> None:
        """Give each terminate request a random fault with these probabilities (keys: RATE_KINDS)."""
        with self._lock:
            self.faults.set_rates(rates, seed)

    def reset(self) -> None:
        """Forget jobs, recorded requests, the ledger, injected faults, fault rates and the in-flight peak."""
        self.account.reset()
        with self._lock:
            self._requests.clear()
            self.faults.reset()
            self._peak_in_flight = self._in_flight

    # ---- HTTP

    def handle(self, request: HttpRequest) -> HttpResponse | None:
        """Route one request, apply any fault, and answer after `latency`."""
        with self._lock:
            self._in_flight += 1
            self._peak_in_flight = max(self._peak_in_flight, self._in_flight)
        try:
            return self._handle(request)
        finally:
            with self._lock:
                self._in_flight -= 1

    def _handle(self, request: HttpRequest) -> HttpResponse | None:
        """handle() without the in-flight bookkeeping."""
        reply = Reply(request, self.url)
        route, job_id, response = self._route(request, reply)
        with self._lock:
            fault = self.faults.take(route, job_id) if response is None else None
            if self.record_requests:
                self._requests.append(
                    RecordedRequest(
                        method=request.method,
                        path=request.path,
                        query=dict(request.query),
                        headers=dict(request.headers),
                        body=request.body,
                        job_id=job_id,
                        fault=fault.label if fault else None,
                    )
                )
        if response is None:
            response = self._with_fault(reply, fault, lambda: self._operation(route, reply, job_id))
            if response is None:
                return None
        return response if self._sleep(self.latency) else None

    def _route(self, request: HttpRequest, reply: Reply) -> tuple[str, str | None, HttpResponse | None]:
        """Find (route, job id, early error) for a request."""
        segments = [unquote(part) for part in request.path.strip("/").split("/")]
        match request.method, segments:
            case "GET", ["jobs"]:
                return "list", None, None
            case "GET", ["jobs", job_id]:
                route = "get"
            case "GET", ["jobs", job_id, "taskcounts"]:
                route = "taskcounts"
            case "POST", ["jobs", job_id, "terminate"]:
                route = "terminate"
            case _:
                return "invalid", None, reply.error(400, "InvalidUri")
        if not JOB_ID.fullmatch(job_id):
            return route, None, reply.error(400, "InvalidUri", values=[("JobId", job_id)])
        return route, job_id, None

    def _operation(self, route: str, reply: Reply, job_id: str | None) -> HttpResponse:
        """Answer a routed request."""
        if route == "terminate":
            return self._terminate(reply, str(job_id))
        return self._read(route, reply, job_id)

    def _with_fault(self, reply: Reply, fault: Fault | None, answer: Callable[[], HttpResponse]) -> HttpResponse | None:
        """Play the fault around the answer; None means the connection is dropped."""
        if fault is None:
            return answer()
        if fault.kind == "status":
            extra = {"Retry-After": seconds_text(fault.retry_after)} if fault.retry_after is not None else {}
            if fault.code == "AuthenticationFailed" and fault.http_status == 401:
                extra["WWW-Authenticate"] = WWW_AUTHENTICATE
            return reply.error(fault.http_status, fault.code, fault.message, fault.values, extra)
        if fault.kind == "drop":
            if fault.apply:
                answer()
            return None
        if fault.apply:
            response = answer()
            return response if self._sleep(fault.seconds) else None
        return answer() if self._sleep(fault.seconds) else None

    def _check_query(self, reply: Reply, route: str) -> HttpResponse | None:
        """api-version and timeout (every route) and force (terminate); names are case-insensitive."""
        query = reply.query
        version = query.get("api-version")
        if version is None:
            values = [("QueryParameterName", "api-version")]
            return reply.error(400, "MissingRequiredQueryParameter", values=values)
        if version not in API_VERSIONS:
            values = [("QueryParameterName", "api-version"), ("QueryParameterValue", version)]
            return reply.error(400, "UnsupportedRequestVersion", values=values)
        timeout = query.get("timeout")
        # The spec: "If the value is larger than 30, the default will be used instead" — so only non-integers
        # and values below 1 are refused.
        if timeout is not None and not (_DIGITS.fullmatch(timeout) and int(timeout) >= 1):
            return reply.bad_query("timeout", timeout, "timeout must be a positive integer (seconds).")
        force = query.get("force")
        if force is not None and route == "terminate":
            if not supports_force(version):
                values = [
                    ("QueryParameterName", "force"),
                    ("QueryParameterValue", force),
                    ("Reason", f"force is supported from api-version {FORCE_SINCE}."),
                ]
                return reply.error(400, "UnsupportedQueryParameter", values=values)
            if force not in ("true", "false"):
                return reply.bad_query("force", force, "force must be true or false.")
        return None

    def _check_auth(self, reply: Reply) -> HttpResponse | None:
        """AuthenticationFailed (auth_failure_status) unless a bearer token is present and accepted."""
        scheme, _, token = reply.request.headers.get("authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            detail = "The Authorization header is missing or is not a Bearer token."
        elif self.authorize is not None and not self.authorize(token):
            detail = "The access token is invalid, revoked or expired."
        else:
            return None
        status = self.auth_failure_status
        extra = {"WWW-Authenticate": WWW_AUTHENTICATE} if status == 401 else None
        return reply.error(status, "AuthenticationFailed", values=[("AuthenticationErrorDetail", detail)], extra=extra)

    def _check_headers(self, reply: Reply) -> HttpResponse | None:
        """client-request-id, ocp-date and conditional date formats; at most one If-* header."""
        headers = reply.request.headers
        client_request_id = headers.get("client-request-id")
        if client_request_id is not None:
            try:
                uuid.UUID(client_request_id)
            except ValueError:
                return reply.bad_header("client-request-id", client_request_id)
        for name in ("ocp-date", "if-modified-since", "if-unmodified-since"):
            value = headers.get(name)
            if value is not None and parse_http_date(value) is None:
                return reply.bad_header(name, value)
        conditions = [name for name in _CONDITIONS if name in headers]
        if len(conditions) > 1:
            return reply.error(
                400, "MultipleConditionHeadersNotSupported", values=[("HeaderNames", ", ".join(conditions))]
            )
        return None

    def _terminate(self, reply: Reply, job_id: str) -> HttpResponse:
        """The Job - Terminate operation (the body is optional: terminateReason defaults to UserTerminate)."""
        error = self._check_query(reply, "terminate") or self._check_auth(reply) or self._check_headers(reply)
        if error is not None:
            return error
        request = reply.request
        reason = DEFAULT_TERMINATE_REASON
        if request.body:
            content_type = request.headers.get("content-type", "")
            if not content_type.lower().startswith("application/json"):
                return reply.bad_header("Content-Type", content_type)
            try:
                payload = json.loads(request.body.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                return reply.error(400, "InvalidRequestBody", values=[("Reason", "The body is not UTF-8 JSON.")])
            if not isinstance(payload, dict):
                return reply.error(400, "InvalidRequestBody", values=[("Reason", "The body is not a JSON object.")])
            given = payload.get("terminateReason")
            if given is not None and not isinstance(given, str):
                values = [("PropertyName", "terminateReason"), ("Reason", "terminateReason must be a string.")]
                return reply.error(400, "InvalidRequestBody", values=values)
            reason = given if given is not None else DEFAULT_TERMINATE_REASON
        outcome = self.account.terminate(
            job_id,
            reason,
            client_request_id=request.headers.get("client-request-id"),
            force=reply.query.get("force") == "true",
            failed_condition=lambda job: _failed_condition(request.headers, job),
        )
        if isinstance(outcome, Refusal):
            return reply.error(outcome.http_status, outcome.code, values=outcome.values)
        headers = {
            "ETag": outcome.etag,
            "Last-Modified": http_date(outcome.last_modified),
            "DataServiceId": f"{self.url}/jobs/{outcome.id}",
        }
        return reply.empty(202, headers)

    def _read(self, route: str, reply: Reply, job_id: str | None) -> HttpResponse:
        """GET /jobs, /jobs/{id} and /jobs/{id}/taskcounts."""
        error = self._check_query(reply, route) or self._check_auth(reply) or self._check_headers(reply)
        if error is not None:
            return error
        query = reply.query
        if route == "taskcounts":
            counts = self.account.task_counts(str(job_id))
            if counts is None:
                return reply.error(404, "JobNotFound")
            return reply.json(
                {
                    "odata.metadata": f"{self.url}/$metadata#taskcounts/@Element",
                    "taskCounts": counts,
                    "taskSlotCounts": dict(counts),
                }
            )
        selected = _selection(query.get("$select"))
        if isinstance(selected, str):
            return reply.bad_query("$select", query["$select"], f"Unknown property {selected!r}.")
        if route == "get":
            job = self.account.job(str(job_id))
            if job is None:
                return reply.error(404, "JobNotFound")
            headers = {"ETag": job.etag, "Last-Modified": http_date(job.last_modified)}
            failed = _failed_condition(reply.request.headers, job)
            if failed in ("If-None-Match", "If-Modified-Since"):
                # Batch's table: ConditionNotMet is 304 Not Modified for a read (no body), 412 for a write.
                return reply.empty(304, headers)
            if failed is not None:
                return reply.error(412, "ConditionNotMet", values=[("HeaderName", failed)])
            document = job_document(job, self.url, selected)
            response = reply.json({"odata.metadata": f"{self.url}/$metadata#jobs/@Element", **document})
            response.headers.update(headers)
            return response
        return self._list(reply, selected)

    def _list(self, reply: Reply, selected: tuple[str, ...]) -> HttpResponse:
        """GET /jobs with $filter (Batch's Job - List subset), $select, maxresults and $skiptoken paging."""
        query = reply.query
        keep: Predicate = _every_job
        filter_text = query.get("$filter")
        if filter_text is not None:
            try:
                keep = parse_filter(filter_text)
            except FilterError as exc:
                return reply.bad_query("$filter", filter_text, str(exc))
        raw_max = query.get("maxresults", str(MAX_RESULTS))
        if not (_DIGITS.fullmatch(raw_max) and 1 <= int(raw_max) <= MAX_RESULTS):
            return reply.bad_query("maxresults", raw_max, f"maxresults must be from 1 to {MAX_RESULTS}.")
        token = query.get("$skiptoken")
        paged = self.account.page(token, int(raw_max), keep)
        if paged is None:
            return reply.bad_query("$skiptoken", str(token), "Unknown continuation token.")
        page, next_key = paged
        documents = [job_document(job, self.url, selected) for job in page]
        payload: dict[str, Any] = {"odata.metadata": f"{self.url}/$metadata#jobs", "value": documents}
        if next_key is not None:
            params = {name: value for name, value in query.items() if name != "$skiptoken"}
            params["$skiptoken"] = next_key
            payload["odata.nextLink"] = f"{self.url}/jobs?" + urlencode(params, quote_via=quote, safe="$,'")
        return reply.json(payload)


def _every_job(job: Job) -> bool:
    """The predicate of a list without $filter."""
    return True


def _selection(value: str | None) -> tuple[str, ...] | str:
    """The $select fields (empty = all), or the first unknown name."""
    names = tuple(name.strip() for name in (value or "").split(",") if name.strip())
    unknown = [name for name in names if name not in JOB_FIELDS]
    return unknown[0] if unknown else names


def _failed_condition(headers: Mapping[str, str], job: Job) -> str | None:
    """The name of the If-* header the job fails, or None."""

    def tags(value: str) -> set[str]:
        return {tag.strip().removeprefix("W/").strip('"') for tag in value.split(",")}

    if_match = headers.get("if-match")
    if if_match is not None and if_match.strip() != "*" and job.etag not in tags(if_match):
        return "If-Match"
    if_none_match = headers.get("if-none-match")
    if if_none_match is not None and (if_none_match.strip() == "*" or job.etag in tags(if_none_match)):
        return "If-None-Match"
    # HTTP dates have whole seconds, so compare at that resolution.
    modified = job.last_modified.replace(microsecond=0)
    since = parse_http_date(headers.get("if-modified-since", ""))
    if since is not None and modified <= since:
        return "If-Modified-Since"
    unmodified_since = parse_http_date(headers.get("if-unmodified-since", ""))
    if unmodified_since is not None and modified > unmodified_since:
        return "If-Unmodified-Since"
    return None
