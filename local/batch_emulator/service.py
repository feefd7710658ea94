"""The emulator's HTTP service: routing, query/auth/header checks, faults, and the account's state for tests."""

from __future__ import annotations

import logging
import re
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Unpack
from urllib.parse import unquote

from local.batch_emulator.faults import Fault, FaultPlan
from local.batch_emulator.fleet import (
    NODE_ID,
    RESOURCE_ID,
    JobScheduleState,
    Node,
    NodeState,
    Pool,
    PoolOptions,
    Schedule,
    ScheduleOptions,
)
from local.batch_emulator.model import (
    JOB_ID,
    Account,
    Job,
    JobOptions,
    JobState,
    RecordedRequest,
    Termination,
)
from local.batch_emulator.routes import MAX_RESULTS, Routes
from local.batch_emulator.versions import API_VERSIONS, FORCE_SINCE, supports_force, timeout_name
from local.batch_emulator.wire import WWW_AUTHENTICATE, Reply, parse_http_date, seconds_text
from local.loopback import HttpRequest, HttpResponse, LoopbackService

logger = logging.getLogger(__name__)

MAX_SERVER_TIMEOUT = 30
__all__ = ["MAX_RESULTS", "MAX_SERVER_TIMEOUT", "BatchEmulator"]

_DIGITS = re.compile(r"\d{1,9}")
_CONDITIONS = ("if-match", "if-none-match", "if-modified-since", "if-unmodified-since")
# (method, path shape) -> operation; "{}" is the percent-decoded id segment. See routes.py for the statuses.
_ROUTES: dict[tuple[str, tuple[str, ...]], str] = {
    ("GET", ("jobs",)): "job.list",
    ("GET", ("jobs", "{}")): "job.get",
    ("GET", ("jobs", "{}", "taskcounts")): "job.taskcounts",
    ("POST", ("jobs", "{}", "terminate")): "job.terminate",
    ("GET", ("jobs", "{}", "jobpreparationandreleasetaskstatus")): "job.preparationandreleasestatus",
    ("GET", ("jobschedules",)): "jobschedule.list",
    ("GET", ("jobschedules", "{}")): "jobschedule.get",
    ("POST", ("jobschedules", "{}", "disable")): "jobschedule.disable",
    ("POST", ("jobschedules", "{}", "enable")): "jobschedule.enable",
    ("POST", ("jobschedules", "{}", "terminate")): "jobschedule.terminate",
    ("GET", ("pools", "{}")): "pool.get",
    ("POST", ("pools", "{}", "resize")): "pool.resize",
    ("POST", ("pools", "{}", "stopresize")): "pool.stopresize",
    ("POST", ("pools", "{}", "disableautoscale")): "pool.disableautoscale",
    ("POST", ("pools", "{}", "enableautoscale")): "pool.enableautoscale",
    ("GET", ("pools", "{}", "nodes")): "node.list",
}
# The id rule each resource's path segment must meet (else 400 InvalidUri, as for a malformed job id).
_ID_RULES = {
    "jobs": (JOB_ID, "JobId"),
    "jobschedules": (RESOURCE_ID, "JobScheduleId"),
    "pools": (RESOURCE_ID, "PoolId"),
}
_FORCE_OPERATIONS = ("job.terminate", "jobschedule.terminate")


class BatchEmulator(LoopbackService):
    """Loopback Azure Batch account: jobs, job schedules, pools and nodes (routes.py), with faults and a ledger."""

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
        self._routes = Routes(self.account, lambda: self.url)
        # What the emulator does with the server timeout spelled the other way than the request's api-version
        # spells it (`timeOut` from 2025-06-01 on, `timeout` before; versions.py). Batch's own behaviour cannot
        # be checked from its documents, but it serves clients that send either spelling whatever the version:
        # azure-batch 15.1.0 always sends `timeOut` (its request builders hardcode it, also for an older
        # api_version), older SDKs and the REST docs before 2025-06-01 `timeout` — so Batch does not refuse the
        # other spelling, and by default neither does the emulator (it reads query names case-insensitively, and
        # `requests` keeps the names as sent, for tests that check the spelling). True makes the other spelling a
        # 400 UnsupportedQueryParameter naming it, so a client that ignores its version's spelling fails loudly.
        self.strict_query_names = False
        # Called (outside the lock) for each recurrence tick() finds due: the job the schedule created, or None
        # when it is disabled and created nothing; the local run prints these.
        self.on_recurrence: Callable[[Schedule, Job | None], None] | None = None
        self._ticker: threading.Thread | None = None
        self._ticker_stop = threading.Event()
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

    # ---- time: the account's clock, tick and settle

    @property
    def clock(self) -> Callable[[], datetime]:
        """What the account reads as now (default: the wall clock; tests set a ManualClock)."""
        return self.account.clock

    @clock.setter
    def clock(self, clock: Callable[[], datetime]) -> None:
        self.account.clock = clock

    @property
    def resize_seconds(self) -> float:
        """Seconds a Pool - Resize or Stop Resize takes to reach steady (on the clock; settle() ends it now)."""
        return self.account.resize_seconds

    @resize_seconds.setter
    def resize_seconds(self, seconds: float) -> None:
        self.account.resize_seconds = seconds

    def tick(self) -> list[tuple[Schedule, Job | None]]:
        """Bring the account to now (every request does this first): due resizes, job schedule terminations and
        recurrences. Returns (schedule, created job or None when disabled) per recurrence that came due."""
        events = self.account.tick()
        callback = self.on_recurrence
        if callback is not None:
            for schedule, job in events:
                try:
                    callback(schedule, job)
                except Exception:  # a printing callback must not break the emulator
                    logger.exception("on_recurrence failed")
        return events

    def settle(self) -> None:
        """Finish pending resizes, stop-resizes and job schedule terminations now, whatever their delay."""
        self.account.settle()

    def start_ticking(self, every: float = 1.0) -> None:
        """Call tick() every `every` seconds on a daemon thread until stop() (for the local run: schedules then
        create jobs, and disabled ones visibly do not, without any request coming in)."""
        if self._ticker is not None:
            return
        self._ticker_stop.clear()

        def run() -> None:
            while not self._ticker_stop.wait(every):
                self.tick()

        self._ticker = threading.Thread(target=run, name="BatchEmulator:tick", daemon=True)
        self._ticker.start()

    def stop(self) -> None:
        """Stop the ticker (if any) and the server."""
        self._ticker_stop.set()
        if self._ticker is not None:
            self._ticker.join(timeout=5)
            self._ticker = None
        super().stop()

    # ---- job schedules

    def add_schedule(self, schedule_id: str, **options: Unpack[ScheduleOptions]) -> Schedule:
        """Create a job schedule (options: ScheduleOptions) and, unless first_job=False, its job `{id}:job-1`."""
        return self.account.add_schedule(schedule_id, **options)

    def schedule(self, schedule_id: str) -> Schedule | None:
        """A snapshot of the job schedule, or None."""
        return self.account.schedule(schedule_id)

    def schedules(self) -> list[Schedule]:
        """Snapshots of all job schedules in creation order."""
        return self.account.schedules()

    def set_schedule_state(self, schedule_id: str, state: JobScheduleState) -> Schedule:
        """Move a job schedule to `state` as the service would (new ETag, transition times)."""
        return self.account.set_schedule_state(schedule_id, state)

    def remove_schedule(self, schedule_id: str) -> None:
        """Forget a job schedule, as Batch does once a Job Schedule - Delete has finished (requests for it then
        answer 404 JobScheduleNotFound; the jobs it created stay). KeyError when there is none."""
        self.account.remove_schedule(schedule_id)

    # ---- pools and nodes

    def add_pool(self, pool_id: str, **options: Unpack[PoolOptions]) -> Pool:
        """Create a steady pool with `dedicated` + `low_priority` idle nodes (options: PoolOptions)."""
        return self.account.add_pool(pool_id, **options)

    def pool(self, pool_id: str) -> Pool | None:
        """A snapshot of the pool (its nodes included), or None."""
        return self.account.pool(pool_id)

    def pools(self) -> list[Pool]:
        """Snapshots of all pools in creation order."""
        return self.account.pools()

    def remove_pool(self, pool_id: str) -> None:
        """Forget a pool and its nodes, as Batch does once a Pool - Delete has finished (requests for it then answer
        404 PoolNotFound). KeyError when there is none."""
        self.account.remove_pool(pool_id)

    def nodes(self, pool_id: str) -> list[Node]:
        """The pool's compute nodes (KeyError when there is no such pool)."""
        pool = self.account.pool(pool_id)
        if pool is None:
            raise KeyError(pool_id)
        return pool.nodes

    def set_node_states(self, pool_id: str, states: Mapping[str, NodeState] | Sequence[NodeState]) -> list[Node]:
        """Set node states: {node id: state}, or a sequence for the pool's first nodes in order."""
        bad = [node for node in (states if isinstance(states, Mapping) else []) if not NODE_ID.fullmatch(node)]
        if bad:
            raise ValueError(f"invalid node id: {bad[0]!r}")
        return self.account.set_node_states(pool_id, states)

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
        """Give the next `times` requests of `operation` (for the id `job_id` in their path, or any) this fault.

        Queued FIFO. operation: job.terminate, job.get, ..., pool.resize, node.list (faults.OPERATIONS), an old
        alias (terminate, get, list, taskcounts), `{resource}.*`, or any; job_id is a job, schedule or pool id.
        """
        with self._lock:
            self.faults.inject(fault, times, job_id, operation)

    def set_fault_rates(self, rates: Mapping[str, float], seed: int | None = None) -> None:
        """Give each terminate request a random fault with these probabilities (keys: RATE_KINDS)."""
        with self._lock:
            self.faults.set_rates(rates, seed)

    def reset(self) -> None:
        """Forget jobs, schedules, pools, recorded requests, the ledger, faults, fault rates and the in-flight peak."""
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
        # Each request first brings the account to now: due resizes, terminations and schedule recurrences.
        self.tick()
        reply = Reply(request, self.url)
        operation, resource_id, response = self._route(request, reply)
        job_id = resource_id if operation.startswith("job.") else None
        with self._lock:
            fault = self.faults.take(operation, resource_id) if response is None else None
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
                        operation=operation,
                        resource_id=resource_id,
                    )
                )
        if response is None:
            response = self._with_fault(reply, fault, lambda: self._operation(operation, reply, resource_id))
            if response is None:
                return None
        return response if self._sleep(self.latency) else None

    def _route(self, request: HttpRequest, reply: Reply) -> tuple[str, str | None, HttpResponse | None]:
        """Find (operation, the decoded id in the path, early error) for a request."""
        # Each segment is percent-decoded on its own, so a schedule's job `sched:job-1` arrives as sched%3Ajob-1.
        segments = [unquote(part) for part in request.path.strip("/").split("/")]
        shape = tuple("{}" if index == 1 else part for index, part in enumerate(segments))
        operation = _ROUTES.get((request.method, shape))
        if operation is None:
            return "invalid", None, reply.error(400, "InvalidUri")
        if len(segments) == 1:
            return operation, None, None
        resource_id = segments[1]
        rule, name = _ID_RULES[segments[0]]
        if not rule.fullmatch(resource_id):
            return operation, None, reply.error(400, "InvalidUri", values=[(name, resource_id)])
        return operation, resource_id, None

    def _operation(self, operation: str, reply: Reply, resource_id: str | None) -> HttpResponse:
        """Answer a routed request: common checks (query, auth, headers), then the operation."""
        error = self._check_query(reply, operation) or self._check_auth(reply) or self._check_headers(reply)
        if error is not None:
            return error
        return self._routes.answer(operation, reply, resource_id)

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

    def _check_query(self, reply: Reply, operation: str) -> HttpResponse | None:
        """api-version and timeout (every operation) and force (the terminates); names are case-insensitive."""
        query = reply.query
        version = query.get("api-version")
        if version is None:
            values = [("QueryParameterName", "api-version")]
            return reply.error(400, "MissingRequiredQueryParameter", values=values)
        if version not in API_VERSIONS:
            # Batch's error table: UnsupportedRequestVersion, 400, "The specified request version is not supported."
            values = [("QueryParameterName", "api-version"), ("QueryParameterValue", version)]
            return reply.error(400, "UnsupportedRequestVersion", values=values)
        spelling = timeout_name(version)
        for name in reply.request.query:
            if name.lower() == "timeout" and name != spelling and self.strict_query_names:
                values = [
                    ("QueryParameterName", name),
                    ("Reason", f"api-version {version} spells the server timeout {spelling}."),
                ]
                return reply.error(400, "UnsupportedQueryParameter", values=values)
        timeout = query.get("timeout")
        # The spec: "If the value is larger than 30, the default will be used instead" — so only non-integers
        # and values below 1 are refused.
        if timeout is not None and not (_DIGITS.fullmatch(timeout) and int(timeout) >= 1):
            sent = next((name for name in reply.request.query if name.lower() == "timeout"), spelling)
            return reply.bad_query(sent, timeout, "timeout must be a positive integer (seconds).")
        force = query.get("force")
        if force is not None and operation in _FORCE_OPERATIONS:
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
