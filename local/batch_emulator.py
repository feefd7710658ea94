"""A loopback Azure Batch service: Job - Terminate plus the job reads a sweep needs, with fault injection."""

from __future__ import annotations

import json
import logging
import random
import re
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime, parsedate_to_datetime
from enum import StrEnum
from http.server import BaseHTTPRequestHandler
from typing import Any, Literal, Self
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

from local.loopback import TrackingHTTPServer

logger = logging.getLogger(__name__)

ODATA_JSON = "application/json;odata=minimalmetadata"
DEFAULT_TERMINATE_REASON = "UserTerminate"
MAX_SERVER_TIMEOUT = 30
MAX_RESULTS = 1000
TASK_COUNT_KEYS = ("active", "running", "completed", "succeeded", "failed")
RATE_KINDS = ("server_busy", "throttle", "internal", "drop", "drop_applied", "slow")
BATCH_RESOURCE = "https://batch.core.windows.net/"
WWW_AUTHENTICATE = (
    f'Bearer authorization="https://login.microsoftonline.com/common/oauth2/authorize", resource="{BATCH_RESOURCE}"'
)

_API_VERSION = re.compile(r"\d{4}-\d{2}-\d{2}\.\d+\.\d+")
_JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_DIGITS = re.compile(r"\d{1,9}")
_STATE_FILTER = re.compile(r"\s*state\s+eq\s+'([a-z]+)'\s*")
_JOB_FIELDS = (
    "id",
    "url",
    "eTag",
    "lastModified",
    "creationTime",
    "state",
    "stateTransitionTime",
    "previousState",
    "previousStateTransitionTime",
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
    "OperationTimedOut": "Operation could not be completed within the specified time.",
    "ServerBusy": "The server is currently unable to receive requests. Please retry your request.",
    "TooManyRequests": "The server is receiving too many requests. Please retry your request later.",
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


def _utc(moment: datetime) -> datetime:
    """Read a naive datetime as UTC and convert aware ones to UTC."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _new_etag() -> str:
    """Make an ETag shaped like Batch's (0x8D followed by hex digits)."""
    return "0x8D" + uuid.uuid4().hex[:13].upper()


def _seconds_text(seconds: float) -> str:
    """Render a Retry-After value without a trailing .0."""
    return str(int(seconds)) if float(seconds).is_integer() else f"{seconds:g}"


# --------------------------------------------------------------------------- loopback HTTP plumbing


@dataclass(frozen=True)
class HttpRequest:
    """One request as read off the socket."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes


@dataclass
class HttpResponse:
    """One answer; Content-Length is added when it is written."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


class _Server(TrackingHTTPServer):
    """The loopback server, with the object that answers its requests."""

    request_queue_size = 256

    def __init__(self, address: tuple[str, int], service: LoopbackService) -> None:
        self.service = service
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    """Reads a request, asks the service for an answer and writes it (or drops the connection)."""

    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; with Nagle on, delayed ACKs add ~40 ms to every answer with a body.
    disable_nagle_algorithm = True
    server: _Server

    def _dispatch(self) -> None:
        """Serve any method through the service's handle()."""
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0 or "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            # Only Content-Length framed bodies are supported; without a length the stream can't be reused.
            self.close_connection = True
            self._write(HttpResponse(411, {"Connection": "close"}))
            return
        body = self.rfile.read(length) if length else b""
        target = urlsplit(self.path)
        request = HttpRequest(
            method=self.command,
            path=target.path,
            query=dict(parse_qsl(target.query, keep_blank_values=True)),
            headers={name.lower(): value for name, value in self.headers.items()},
            body=body,
        )
        try:
            response = self.server.service.handle(request)
        except Exception:
            logger.exception("emulator failed on %s %s", self.command, self.path)
            response = HttpResponse(500, {"Content-Type": "text/plain"}, b"emulator error")
        if response is None:
            self.close_connection = True
            return
        self._write(response)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _dispatch

    def _write(self, response: HttpResponse) -> None:
        """Write status, headers (always with Content-Length) and body."""
        self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        self.wfile.write(response.body)

    def log_message(self, format: str, *args: Any) -> None:
        """Send the per-request log line to logging at DEBUG instead of stderr."""
        logger.debug("%s %s", self.address_string(), format % args)


class LoopbackService:
    """An HTTP service on a daemon thread; subclasses implement handle()."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._address = (host, port)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    @property
    def port(self) -> int:
        """The bound port (only known once started)."""
        if self._server is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return self._server.server_port

    @property
    def base_url(self) -> str:
        """http://host:port of the running server."""
        return f"http://{self._address[0]}:{self.port}"

    @property
    def running(self) -> bool:
        """Whether the server is serving."""
        return self._server is not None

    def start(self) -> Self:
        """Bind and serve on a daemon thread."""
        if self._server is not None:
            raise RuntimeError(f"{type(self).__name__} is already started")
        self._stopping.clear()
        self._server = _Server(self._address, self)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"{type(self).__name__}:{self._server.server_port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close open connections and release the port."""
        server, thread = self._server, self._thread
        if server is None:
            return
        # Wakes handlers sleeping in a delay so they give up instead of answering into a closed server.
        self._stopping.set()
        server.shutdown()
        server.close_connections()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> Self:
        """Start (unless already started) and return self."""
        return self if self._server is not None else self.start()

    def __exit__(self, *exc_info: object) -> None:
        """Stop."""
        self.stop()

    def handle(self, request: HttpRequest) -> HttpResponse | None:
        """Answer one request; None closes the connection without an answer."""
        raise NotImplementedError

    def _sleep(self, seconds: float) -> bool:
        """Sleep unless the service stops meanwhile; False means it is stopping."""
        if seconds <= 0:
            return not self._stopping.is_set()
        return not self._stopping.wait(seconds)


# --------------------------------------------------------------------------- Batch model


class JobState(StrEnum):
    """Batch job states."""

    ACTIVE = "active"
    TERMINATING = "terminating"
    COMPLETED = "completed"
    DELETING = "deleting"
    DISABLED = "disabled"


@dataclass
class Job:
    """A Batch job; terminate_count counts terminate requests that reached it, whatever the answer."""

    id: str
    state: JobState
    etag: str
    last_modified: datetime
    creation_time: datetime
    metadata: dict[str, str] = field(default_factory=dict)
    task_counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TASK_COUNT_KEYS, 0))
    terminate_reason: str | None = None
    terminate_count: int = 0
    state_transition_time: datetime | None = None
    previous_state: JobState | None = None
    previous_state_transition_time: datetime | None = None
    end_time: datetime | None = None
    completes_at: datetime | None = field(default=None, repr=False)


@dataclass(frozen=True)
class RecordedRequest:
    """A request the emulator received; fault names the fault it was given, if any."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    job_id: str | None
    fault: str | None = None

    def json(self) -> Any:
        """The body decoded as JSON."""
        return json.loads(self.body)


@dataclass(frozen=True)
class Termination:
    """One ledger entry: a terminate that moved a job out of active/disabled."""

    job_id: str
    reason: str
    client_request_id: str | None
    at: float
    force: bool = False


@dataclass(frozen=True)
class Fault:
    """A misbehaviour to play instead of (or around) the normal terminate answer."""

    kind: Literal["status", "drop", "delay"]
    http_status: int = 0
    code: str = ""
    message: str | None = None
    retry_after: float | None = None
    values: tuple[tuple[str, str], ...] = ()
    seconds: float = 0.0
    apply: bool = False

    @classmethod
    def status(
        cls,
        http_status: int,
        code: str,
        message: str | None = None,
        retry_after: float | None = None,
        values: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
    ) -> Fault:
        """Answer with a BatchError (message defaults to Batch's text for the code)."""
        pairs = tuple(values.items()) if isinstance(values, Mapping) else tuple(values or ())
        return cls("status", http_status, code, message, retry_after, pairs)

    @classmethod
    def drop(cls, apply: bool = False) -> Fault:
        """Read the request and close the socket unanswered; apply=True terminates first (answer lost)."""
        return cls("drop", apply=apply)

    @classmethod
    def delay(cls, seconds: float, apply: bool = True) -> Fault:
        """Answer normally after `seconds`; apply=True terminates before the wait, False after it."""
        return cls("delay", seconds=seconds, apply=apply)

    @property
    def label(self) -> str:
        """Short description recorded on the request."""
        if self.kind == "status":
            return f"status:{self.http_status} {self.code}"
        suffix = "(applied)" if self.apply else ""
        return f"drop{suffix}" if self.kind == "drop" else f"delay:{self.seconds:g}s{suffix}"


@dataclass
class _Injection:
    """A queued fault with its remaining uses."""

    fault: Fault
    remaining: int
    job_key: str | None


class _Reply:
    """Builds answers for one request, adding request-id and the client-request-id echo."""

    def __init__(self, request: HttpRequest, base_url: str) -> None:
        self.request = request
        self.base_url = base_url
        self.request_id = str(uuid.uuid4())

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


# --------------------------------------------------------------------------- the emulator


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
        self.latency = latency
        self.terminate_delay = terminate_delay
        self.auto_create_jobs = False
        self.slow_seconds = 40.0
        # Soak tests and benchmarks turn this off so memory stays flat over long runs.
        self.record_requests = True
        self._lock = threading.Lock()
        self._jobs: dict[str, Job] = {}
        self._requests: list[RecordedRequest] = []
        self._terminations: list[Termination] = []
        self._injections: list[_Injection] = []
        self._rates: dict[str, float] = {}
        self._rng = random.Random(seed)

    @property
    def url(self) -> str:
        """The account URL, e.g. http://127.0.0.1:PORT."""
        return self.base_url

    # ---- test-facing state

    def add_job(
        self,
        job_id: str,
        state: JobState = JobState.ACTIVE,
        *,
        creation_time: datetime | None = None,
        metadata: Mapping[str, str] | None = None,
        task_counts: Mapping[str, int] | None = None,
    ) -> Job:
        """Create a job (Last-Modified = creation time) and return a snapshot of it."""
        if not _JOB_ID.fullmatch(job_id):
            raise ValueError(f"invalid Batch job id: {job_id!r}")
        counts = dict.fromkeys(TASK_COUNT_KEYS, 0)
        unknown = set(task_counts or {}) - set(TASK_COUNT_KEYS)
        if unknown:
            raise ValueError(f"unknown task count keys: {sorted(unknown)}")
        counts.update(task_counts or {})
        created = _utc(creation_time) if creation_time is not None else datetime.now(UTC)
        with self._lock:
            if job_id.lower() in self._jobs:
                raise ValueError(f"job {job_id!r} already exists")
            job = self._create(job_id, JobState(state), created)
            job.metadata = dict(metadata or {})
            job.task_counts = counts
            return self._snapshot(job)

    def job(self, job_id: str) -> Job | None:
        """A snapshot of the job (ids are case-insensitive, as in Batch), or None."""
        with self._lock:
            job = self._jobs.get(job_id.lower())
            if job is None:
                return None
            self._settle(job)
            return self._snapshot(job)

    def jobs(self) -> list[Job]:
        """Snapshots of all jobs in creation order."""
        with self._lock:
            for job in self._jobs.values():
                self._settle(job)
            return [self._snapshot(job) for job in self._jobs.values()]

    def set_state(self, job_id: str, state: JobState) -> Job:
        """Move a job to `state` as the service would (new ETag, transition times)."""
        with self._lock:
            job = self._jobs[job_id.lower()]
            self._transition(job, JobState(state), datetime.now(UTC))
            job.completes_at = None
            return self._snapshot(job)

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far, oldest first."""
        with self._lock:
            return list(self._requests)

    @property
    def terminations(self) -> list[Termination]:
        """The ledger: one entry per terminate that moved a job out of active/disabled."""
        with self._lock:
            return list(self._terminations)

    def inject(self, fault: Fault, times: int = 1, job_id: str | None = None) -> None:
        """Give the next `times` terminate requests (for `job_id`, or any) this fault; queued FIFO."""
        if times < 1:
            raise ValueError("times must be at least 1")
        with self._lock:
            self._injections.append(_Injection(fault, times, job_id.lower() if job_id else None))

    def set_fault_rates(self, rates: Mapping[str, float], seed: int | None = None) -> None:
        """Give each terminate request a random fault with these probabilities (keys: RATE_KINDS)."""
        unknown = set(rates) - set(RATE_KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; expected some of {RATE_KINDS}")
        if any(not 0.0 <= rate <= 1.0 for rate in rates.values()) or sum(rates.values()) > 1.0 + 1e-9:
            raise ValueError("fault rates must each be within 0..1 and sum to at most 1")
        with self._lock:
            # Fixed kind order, so a seed replays the same faults whatever order the mapping came in.
            self._rates = {kind: float(rates[kind]) for kind in RATE_KINDS if rates.get(kind)}
            if seed is not None:
                self._rng = random.Random(seed)

    def reset(self) -> None:
        """Forget jobs, recorded requests, the ledger, injected faults and fault rates."""
        with self._lock:
            self._jobs.clear()
            self._requests.clear()
            self._terminations.clear()
            self._injections.clear()
            self._rates = {}

    # ---- HTTP

    def handle(self, request: HttpRequest) -> HttpResponse | None:
        """Route one request, apply any fault, and answer after `latency`."""
        reply = _Reply(request, self.url)
        route, job_id, response = self._route(request, reply)
        # Drawing the fault and recording under one lock keeps `requests` in the order faults were drawn.
        with self._lock:
            fault = self._take_fault(job_id) if route == "terminate" and job_id is not None else None
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
        if response is None and route == "terminate" and job_id is not None:
            response = self._terminate_with_fault(reply, job_id, fault)
            if response is None:
                return None
        elif response is None:
            response = self._read(route, reply, job_id)
        return response if self._sleep(self.latency) else None

    def _route(self, request: HttpRequest, reply: _Reply) -> tuple[str, str | None, HttpResponse | None]:
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
        if not _JOB_ID.fullmatch(job_id):
            return route, None, reply.error(400, "InvalidUri", values=[("JobId", job_id)])
        return route, job_id, None

    def _take_fault(self, job_id: str) -> Fault | None:
        """Pop the first matching injected fault, else draw one from the rates (caller holds the lock)."""
        key = job_id.lower()
        for injection in self._injections:
            if injection.job_key in (None, key):
                injection.remaining -= 1
                if injection.remaining == 0:
                    self._injections.remove(injection)
                return injection.fault
        if not self._rates:
            return None
        draw = self._rng.random()
        for kind, rate in self._rates.items():
            if draw < rate:
                return self._rate_fault(kind)
            draw -= rate
        return None

    def _rate_fault(self, kind: str) -> Fault:
        """The fault a random-rate kind stands for."""
        match kind:
            case "server_busy":
                return Fault.status(503, "ServerBusy")
            case "throttle":
                return Fault.status(429, "TooManyRequests", retry_after=1)
            case "internal":
                return Fault.status(500, "InternalError")
            case "drop":
                return Fault.drop()
            case "drop_applied":
                return Fault.drop(apply=True)
            case _:
                return Fault.delay(self.slow_seconds, apply=True)

    def _terminate_with_fault(self, reply: _Reply, job_id: str, fault: Fault | None) -> HttpResponse | None:
        """Play the fault around the terminate; None means the connection is dropped."""
        if fault is None:
            return self._terminate(reply, job_id)
        if fault.kind == "status":
            extra = {"Retry-After": _seconds_text(fault.retry_after)} if fault.retry_after is not None else None
            return reply.error(fault.http_status, fault.code, fault.message, fault.values, extra)
        if fault.kind == "drop":
            if fault.apply:
                self._terminate(reply, job_id)
            return None
        if fault.apply:
            response = self._terminate(reply, job_id)
            return response if self._sleep(fault.seconds) else None
        return self._terminate(reply, job_id) if self._sleep(fault.seconds) else None

    def _check_query(self, reply: _Reply) -> HttpResponse | None:
        """api-version and timeout (every route) and force (terminate)."""
        query = reply.request.query
        version = query.get("api-version")
        if version is None:
            values = [("QueryParameterName", "api-version")]
            return reply.error(400, "MissingRequiredQueryParameter", values=values)
        if not _API_VERSION.fullmatch(version):
            return reply.bad_query("api-version", version, "The api-version is not of the form YYYY-MM-DD.N.N.")
        timeout = query.get("timeout")
        if timeout is not None and not (_DIGITS.fullmatch(timeout) and 1 <= int(timeout) <= MAX_SERVER_TIMEOUT):
            return reply.bad_query("timeout", timeout, f"timeout must be an integer from 1 to {MAX_SERVER_TIMEOUT}.")
        force = query.get("force")
        if force is not None and reply.request.method == "POST" and force not in ("true", "false"):
            return reply.bad_query("force", force, "force must be true or false.")
        return None

    def _check_auth(self, reply: _Reply) -> HttpResponse | None:
        """401 AuthenticationFailed unless a bearer token is present and accepted."""
        scheme, _, token = reply.request.headers.get("authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            detail = "The Authorization header is missing or is not a Bearer token."
        elif self.authorize is not None and not self.authorize(token):
            detail = "The access token is invalid, revoked or expired."
        else:
            return None
        return reply.error(
            401,
            "AuthenticationFailed",
            values=[("AuthenticationErrorDetail", detail)],
            extra={"WWW-Authenticate": WWW_AUTHENTICATE},
        )

    def _check_terminate_headers(self, reply: _Reply) -> HttpResponse | None:
        """Content-Type, client-request-id, ocp-date and conditional date formats."""
        headers = reply.request.headers
        content_type = headers.get("content-type", "")
        if not content_type.lower().startswith("application/json"):
            return reply.bad_header("Content-Type", content_type)
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
        return None

    def _terminate(self, reply: _Reply, job_id: str) -> HttpResponse:
        """The Job - Terminate operation."""
        error = self._check_query(reply) or self._check_auth(reply) or self._check_terminate_headers(reply)
        if error is not None:
            return error
        force = reply.request.query.get("force") == "true"
        try:
            payload = json.loads(reply.request.body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return reply.error(400, "InvalidRequestBody", values=[("Reason", "The body is not UTF-8 JSON.")])
        if not isinstance(payload, dict):
            return reply.error(400, "InvalidRequestBody", values=[("Reason", "The body is not a JSON object.")])
        reason = payload.get("terminateReason")
        if reason is None:
            reason = DEFAULT_TERMINATE_REASON
        elif not isinstance(reason, str):
            values = [("PropertyName", "terminateReason"), ("Reason", "terminateReason must be a string.")]
            return reply.error(400, "InvalidRequestBody", values=values)

        with self._lock:
            job = self._jobs.get(job_id.lower())
            if job is None and self.auto_create_jobs:
                job = self._create(job_id, JobState.ACTIVE, datetime.now(UTC))
            if job is None:
                return reply.error(404, "JobNotFound")
            self._settle(job)
            job.terminate_count += 1
            conflict = {
                JobState.DELETING: "JobBeingDeleted",
                JobState.TERMINATING: "JobBeingTerminated",
                JobState.COMPLETED: "JobCompleted",
            }.get(job.state)
            if conflict is not None:
                return reply.error(409, conflict)
            failed = self._failed_condition(reply.request.headers, job)
            if failed is not None:
                return reply.error(412, "ConditionNotMet", values=[("HeaderName", failed)])
            now = datetime.now(UTC)
            self._transition(job, JobState.TERMINATING, now)
            job.terminate_reason = reason
            job.completes_at = now + timedelta(seconds=max(self.terminate_delay, 0.0))
            self._terminations.append(
                Termination(
                    job_id=job.id,
                    reason=reason,
                    client_request_id=reply.request.headers.get("client-request-id"),
                    at=now.timestamp(),
                    force=force,
                )
            )
            headers = {
                "ETag": job.etag,
                "Last-Modified": http_date(job.last_modified),
                "DataServiceId": f"{self.url}/jobs/{job.id}",
            }
        return reply.empty(202, headers)

    @staticmethod
    def _failed_condition(headers: Mapping[str, str], job: Job) -> str | None:
        """The name of the first If-* header the job fails, or None."""

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

    def _read(self, route: str, reply: _Reply, job_id: str | None) -> HttpResponse:
        """GET /jobs, /jobs/{id} and /jobs/{id}/taskcounts."""
        error = self._check_query(reply) or self._check_auth(reply)
        if error is not None:
            return error
        query = reply.request.query
        if route == "taskcounts":
            with self._lock:
                job = self._jobs.get(str(job_id).lower())
                counts = dict(job.task_counts) if job is not None else None
            if counts is None:
                return reply.error(404, "JobNotFound")
            return reply.json(
                {
                    "odata.metadata": f"{self.url}/$metadata#taskcounts/@Element",
                    "taskCounts": counts,
                    "taskSlotCounts": dict(counts),
                }
            )
        selected = self._selection(query.get("$select"))
        if isinstance(selected, str):
            return reply.bad_query("$select", query["$select"], f"Unknown property {selected!r}.")
        if route == "get":
            with self._lock:
                job = self._jobs.get(str(job_id).lower())
                if job is None:
                    return reply.error(404, "JobNotFound")
                self._settle(job)
                document = self._job_json(job, selected)
            return reply.json({"odata.metadata": f"{self.url}/$metadata#jobs/@Element", **document})
        return self._list(reply, selected)

    @staticmethod
    def _selection(value: str | None) -> tuple[str, ...] | str:
        """The $select fields (empty = all), or the first unknown name."""
        names = tuple(name.strip() for name in (value or "").split(",") if name.strip())
        unknown = [name for name in names if name not in _JOB_FIELDS]
        return unknown[0] if unknown else names

    def _list(self, reply: _Reply, selected: tuple[str, ...]) -> HttpResponse:
        """GET /jobs with $filter (state eq '...'), $select, maxresults and $skiptoken paging."""
        query = reply.request.query
        wanted: JobState | None = None
        filter_text = query.get("$filter")
        if filter_text is not None:
            matched = _STATE_FILTER.fullmatch(filter_text)
            if matched is None or matched.group(1) not in {state.value for state in JobState}:
                return reply.bad_query("$filter", filter_text, "Only state eq '<state>' is supported.")
            wanted = JobState(matched.group(1))
        raw_max = query.get("maxresults", str(MAX_RESULTS))
        if not (_DIGITS.fullmatch(raw_max) and 1 <= int(raw_max) <= MAX_RESULTS):
            return reply.bad_query("maxresults", raw_max, f"maxresults must be from 1 to {MAX_RESULTS}.")
        limit = int(raw_max)
        token = query.get("$skiptoken")
        with self._lock:
            keys = list(self._jobs)
            start = 0
            if token is not None:
                # The token is the last key served, so paging survives jobs changing state in between.
                if token not in self._jobs:
                    return reply.bad_query("$skiptoken", token, "Unknown continuation token.")
                start = keys.index(token) + 1
            page: list[Job] = []
            more = False
            for key in keys[start:]:
                job = self._jobs[key]
                self._settle(job)
                if wanted is not None and job.state != wanted:
                    continue
                if len(page) == limit:
                    more = True
                    break
                page.append(job)
            documents = [self._job_json(job, selected) for job in page]
            last_key = page[-1].id.lower() if page else None
        payload: dict[str, Any] = {"odata.metadata": f"{self.url}/$metadata#jobs", "value": documents}
        if more and last_key is not None:
            params = {name: value for name, value in query.items() if name != "$skiptoken"}
            params["$skiptoken"] = last_key
            payload["odata.nextLink"] = f"{self.url}/jobs?" + urlencode(params, quote_via=quote, safe="$,'")
        return reply.json(payload)

    # ---- model helpers (callers hold the lock)

    def _create(self, job_id: str, state: JobState, created: datetime) -> Job:
        """Insert a new job."""
        job = Job(
            id=job_id,
            state=state,
            etag=_new_etag(),
            last_modified=created,
            creation_time=created,
            state_transition_time=created,
            end_time=created if state == JobState.COMPLETED else None,
        )
        self._jobs[job_id.lower()] = job
        return job

    @staticmethod
    def _transition(job: Job, state: JobState, when: datetime) -> None:
        """Change state with Batch's bookkeeping (previous state, new ETag and Last-Modified)."""
        job.previous_state, job.previous_state_transition_time = job.state, job.state_transition_time
        job.state, job.state_transition_time = state, when
        job.etag, job.last_modified = _new_etag(), when
        if state == JobState.COMPLETED:
            job.end_time = when

    def _settle(self, job: Job) -> None:
        """Complete a terminating job whose terminate_delay has passed (lazily, on read)."""
        due = job.completes_at
        if job.state == JobState.TERMINATING and due is not None and datetime.now(UTC) >= due:
            self._transition(job, JobState.COMPLETED, due)
            job.completes_at = None

    @staticmethod
    def _snapshot(job: Job) -> Job:
        """A copy callers can keep without racing the server."""
        return replace(job, metadata=dict(job.metadata), task_counts=dict(job.task_counts))

    def _job_json(self, job: Job, selected: tuple[str, ...]) -> dict[str, Any]:
        """The job as Batch's JSON (optional properties omitted when unset), limited to $select."""
        execution: dict[str, str] = {"startTime": iso_time(job.creation_time)}
        if job.end_time is not None:
            execution["endTime"] = iso_time(job.end_time)
        if job.terminate_reason is not None:
            execution["terminateReason"] = job.terminate_reason
        document: dict[str, Any] = {
            "id": job.id,
            "url": f"{self.url}/jobs/{job.id}",
            "eTag": job.etag,
            "lastModified": iso_time(job.last_modified),
            "creationTime": iso_time(job.creation_time),
            "state": job.state.value,
            "stateTransitionTime": iso_time(job.state_transition_time or job.creation_time),
        }
        if job.previous_state is not None and job.previous_state_transition_time is not None:
            document["previousState"] = job.previous_state.value
            document["previousStateTransitionTime"] = iso_time(job.previous_state_transition_time)
        if job.metadata:
            document["metadata"] = [{"name": name, "value": value} for name, value in job.metadata.items()]
        document["executionInfo"] = execution
        if selected:
            return {name: document[name] for name in selected if name in document}
        return document
