"""The kill switch's figures (issue 20), each against a bare loop on the same services.

- incident_accept: a budget notification's POST → 202 (the incident stored, its plan command sent; no Batch call)
  against one bare table insert plus one queue send.
- kill_switch_1000: from the POST to the last of 1,000 terminates at Batch, through the incident (alert_terminate →
  incident → kill_switch plan → terminate messages → terminate_job → emulator), against a bare send-then-receive.
- kill_switch_plan_10000: kill_switch's plan over 10,000 active jobs, 200 schedules and 20 pools at 20 ms, up to
  awaiting_approval (manual approval), against the same list pages and Pool - Gets made bare with requests.
"""

from __future__ import annotations

import copy
import json
import statistics
import time
import uuid
from collections import Counter as Tally
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests
from azure.core.pipeline.transport import RequestsTransport
from azure.data.tables import TableClient
from azure.functions.queue import QueueMessage
from azure.storage.queue import QueueClient

from bench import deployment
from bench.calls import function_environment
from bench.ceilings import Ceiling, round_trip
from bench.end_to_end import HIDE_SECONDS, STORAGE_POOL, Counter, encode, new_queue, storage_client, warm_message
from bench.harness import Figure, WorkerLikeHandler, summarize_warnings
from bench.services import Recorded, Services
from bench.worker import RemoteWorker
from local.azurite import Azurite
from local.queue_host import QueueHost
from shared.contract.incident import Command, Incident, IncidentCommand, Selectors, Source, State
from shared.storage.incidents import from_entity, to_entity
from shared.transport.sessions import pin_environment

LATENCY = 0.020
TARGET = 0.80
ACCEPT_TARGET = 3.0
PLAN_TARGET = 1.5
PAYLOAD = Path(__file__).resolve().parent.parent / "tests" / "payloads" / "budget-test-action.json"
ALERT_URL = "http://127.0.0.1/api/alert_terminate"
# requests adds these itself; the rest of a recorded request's headers are sent again as they were.
_TRANSPORT_HEADERS = frozenset({"host", "content-length", "connection", "accept-encoding"})
# The plan figure's account: ten teams, each with its job id prefix, two pools and its share of the schedules.
TEAMS = ("render", "etl", "train", "sim", "qa", "bio", "geo", "fin", "ml", "viz")
# The most jobs an incident may stop in the plan figure (the selected team's share stays under it).
PLAN_MAX_JOBS = 5000
# A command for no incident, to wire kill_switch before the timing (its "unknown" warning is not the run's).
WARM_INCIDENT = "bench-warm-0"
FORMULA = "$TargetDedicatedNodes = min(8, $PendingTasks.GetSample(1));"


def enqueue_threads() -> int:
    """The threads alert_terminate enqueues with (shared.storage.terminate_queue.ENQUEUE_THREADS)."""
    from shared.storage.terminate_queue import ENQUEUE_THREADS

    return ENQUEUE_THREADS


# ---- shared by the three figures


def budget_bodies(count: int, tag: str) -> list[bytes]:
    """`count` distinct budget notifications (the spend differs by a cent each), so each opens its own incident."""
    template = json.loads(PAYLOAD.read_bytes())
    base = float(template["data"]["SpendingAmount"])
    bodies = []
    for n in range(count):
        document = copy.deepcopy(template)
        document["data"]["SpendingAmount"] = f"{base + n / 100:.2f}"
        document["data"]["ResourceGroup"] = f"{template['data']['ResourceGroup']}-{tag}"
        bodies.append(json.dumps(document, indent=3).encode())
    return bodies


def new_table_name() -> str:
    """A fresh incident table name (letters and digits)."""
    return f"benchincidents{uuid.uuid4().hex[:12]}"


def table_storage_client(connection_string: str, name: str) -> TableClient:
    """A bare table client on its own pooled session, the environment resolved once (as storage_client does)."""
    session = requests.Session()
    session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=STORAGE_POOL, max_retries=0))
    transport = RequestsTransport(session=session, session_owner=False, read_timeout=10)
    client = TableClient.from_connection_string(connection_string, name, transport=transport)
    pin_environment(session, client.url)
    return client


def incident_environment(
    services: Services,
    storage: str,
    *,
    terminate_queue: str,
    incident_queue: str,
    table: str,
    prefix: str,
    max_jobs: int,
    approval: str,
    scale_pools: bool,
) -> dict[str, str | None]:
    """The app settings of alert_terminate, kill_switch and terminate_job for one figure."""
    return {
        **function_environment(services, storage),
        "TERMINATE_QUEUE_NAME": terminate_queue,
        "INCIDENT_QUEUE_NAME": incident_queue,
        "INCIDENT_TABLE_NAME": table,
        "ALERT_SELECT_JOB_ID_PREFIX": prefix,
        "ALERT_SELECT_POOL_ID": None,
        "ALERT_SELECT_METADATA": None,
        "ALERT_RULES_ALLOWED": None,
        "ALERT_MAX_JOBS": str(max_jobs),
        "KILL_SWITCH_APPROVAL": approval,
        "KILL_SWITCH_DISABLE_SCHEDULES": "true",
        "KILL_SWITCH_SCALE_POOLS": "true" if scale_pools else "false",
        "TERMINATE_DRY_RUN": None,
        "CONFIRM_QUEUE_NAME": None,
        deployment.THREAD_COUNT_SETTING: str(deployment.deployed_threads()),
    }


def post_budget(worker: RemoteWorker, body: bytes) -> str:
    """POST one budget notification to alert_terminate in the worker; the incident id of its 202."""
    status, answer = worker.post(ALERT_URL, body)
    if status != 202:
        raise RuntimeError(f"alert_terminate answered {status}: {answer[:300]!r}")
    document = json.loads(answer)
    if document.get("enqueued") != [] or not document.get("incident"):
        raise RuntimeError(f"alert_terminate did not open an incident: {document}")
    return str(document["incident"])


def read_incident(table: TableClient, incident_id: str) -> Incident:
    """The stored incident, read bare."""
    return from_entity(dict(table.get_entity("incident", incident_id)))


# ---- incident_accept


class BareAccept:
    """One table insert of an incident-sized entity and one queue send of a plan command: the floor of the 202."""

    def __init__(self, storage: str, table: str, queue: str) -> None:
        self.table = table_storage_client(storage, table)
        self.queue = storage_client(storage, queue)
        sample = Incident.open(
            "budget-" + "0" * 20,
            source=Source.BUDGET,
            reason="Budget 'test-budgetName' notification: spent 1111.32 USD, budget 10000 USD, threshold 8000.0",
            selectors=Selectors("render-"),
            at=datetime.now(UTC),
            rule="test-budgetName",
        )
        self.entity = to_entity(sample)  # the same properties and document size as alert_terminate stores
        self._next = 0

    def __call__(self) -> None:
        """Insert one entity, send one command."""
        self._next += 1
        row = f"bare-{self._next:06d}-{uuid.uuid4().hex[:8]}"
        self.table.create_entity({**self.entity, "RowKey": row})
        self.queue.send_message(IncidentCommand(row, Command.PLAN).to_json(), time_to_live=-1)


def incident_accept(services: Services, log: WorkerLikeHandler, count: int, warmup: int = 3) -> Figure:
    """incident_accept: median POST → 202 of `count` distinct budget notifications ÷ median bare insert + send."""
    services.set_latency(LATENCY)
    services.reset()
    try:
        with Azurite() as azurite:
            storage = azurite.connection_string
            commands = new_queue(storage, "incidents")
            table = new_table_name()
            table_storage_client(storage, table).create_table()  # a deployed app's table exists
            env = incident_environment(
                services,
                storage,
                terminate_queue="bench-accept-terminate",
                incident_queue=commands.queue_name,
                table=table,
                prefix="render-",
                max_jobs=1000,
                approval="manual",
                scale_pools=False,
            )
            bodies = budget_bodies(warmup + count, uuid.uuid4().hex[:8])
            bare = BareAccept(storage, table, commands.queue_name)
            posted: list[float] = []
            floor: list[float] = []
            ids: list[str] = []
            with RemoteWorker(env) as worker:
                log.take_warnings()
                for body in bodies[:warmup]:  # imports, clients, connections: the app has been running
                    post_budget(worker, body)
                    bare()
                for index, body in enumerate(bodies[warmup:]):

                    def ours(body: bytes = body) -> None:
                        ids.append(post_budget(worker, body))

                    order: list[tuple[list[float], Callable[[], None]]] = [(posted, ours), (floor, bare)]
                    for samples, call in order if index % 2 == 0 else reversed(order):
                        started = time.perf_counter()
                        call()
                        samples.append(time.perf_counter() - started)
            warnings = summarize_warnings(worker.warnings + log.take_warnings())
            batch_requests = services.request_count()
            stored = [read_incident(bare.table, incident_id) for incident_id in ids[:3]]
    finally:
        services.set_latency(0.0)
        services.reset()
    if len(set(ids)) != count:
        raise RuntimeError(f"incident_accept: {len(set(ids))} distinct incidents for {count} notifications")
    if any(incident.state is not State.ACCEPTED for incident in stored):
        raise RuntimeError(f"incident_accept: stored states {[i.state.value for i in stored]}")
    ours_s, bare_s = statistics.median(posted), statistics.median(floor)
    ratio = ours_s / bare_s
    no_batch = batch_requests == 0
    return Figure(
        "incident_accept",
        ratio,
        "x",
        f"<= {ACCEPT_TARGET:.0f}x bare insert+send, no Batch call",
        ratio <= ACCEPT_TARGET and no_batch,
        f"POST -> 202 {ours_s * 1000:.1f} ms (median of {count} distinct budget notifications, each a new incident;"
        f" p90 {_quantile(posted, 0.9) * 1000:.1f} ms) vs bare table insert + queue send {bare_s * 1000:.1f} ms"
        f" (median; interleaved, same Azurite); Batch requests during the POSTs: {batch_requests}"
        f" ({'none, as §9 says' if no_batch else 'THE FUNCTION CALLED BATCH'})"
        f"{warnings}",
        {
            "target_share": ACCEPT_TARGET,
            "requests": count,
            "accept_seconds": ours_s,
            "bare_seconds": bare_s,
            "accept_p90_seconds": _quantile(posted, 0.9),
            "batch_requests": batch_requests,
            "incidents": len(set(ids)),
        },
    )


def _quantile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


# ---- kill_switch_1000


@dataclass(frozen=True)
class Pipeline:
    """One kill switch: seconds from the POST to its answer, to the plan's end, to the first delivery, the last 202."""

    jobs: int
    answered: float
    planned: float
    plan_seconds: float
    first_settled: float
    last_terminated: float
    list_pages: int
    warnings: str

    @property
    def rate(self) -> float:
        """Jobs terminated per second, from the POST to the last 202."""
        return self.jobs / self.last_terminated


def ceiling(storage: str, jobs: int, threads: int) -> Ceiling:
    """The same number of messages sent with the kill switch's threads, then received and deleted as the host does."""
    options = deployment.deployed_queues()
    queue = new_queue(storage, "kill-ceiling")
    try:
        reason = "Budget 'test-budgetName' notification: spent 1111.32 USD, budget 10000 USD, threshold 8000.0"
        texts = [
            encode(json.dumps({"jobId": f"ceiling-{n:05d}", "reason": reason}), options.message_encoding)
            for n in range(jobs)
        ]
        in_flight = options.batch_size + options.new_batch_threshold
        return round_trip(queue, texts, threads, options.batch_size, in_flight)
    finally:
        queue.delete_queue()


def _host(storage: str, queue: QueueClient, handler: Callable[[Any], None], counter: Counter, name: str) -> QueueHost:
    """The local host on one trigger queue, forwarding to the worker, as deployed (host.json, the worker's pool)."""
    return QueueHost(
        storage_client(storage, queue.queue_name),
        storage_client(storage, f"{queue.queue_name}-poison"),
        deployment.deployed_queues(),
        handler,
        on_invocation=counter,
        hide_seconds=HIDE_SECONDS,
        function_name=name,
        threads=deployment.deployed_threads(),  # the worker's pool as deployed
    )


def pipeline(services: Services, log: WorkerLikeHandler, storage: str, jobs: int) -> Pipeline:
    """POST a budget notification to alert_terminate in the worker; the local host runs kill_switch on the incident
    queue and terminate_job on the terminate queue meanwhile, both in the same worker."""
    prefix = f"kill-{uuid.uuid4().hex[:8]}"
    trigger = new_queue(storage, "kill")
    commands = new_queue(storage, "incident")
    table = new_table_name()
    bare_table = table_storage_client(storage, table)
    bare_table.create_table()  # a deployed app's table exists
    env = incident_environment(
        services,
        storage,
        terminate_queue=trigger.queue_name,
        incident_queue=commands.queue_name,
        table=table,
        prefix=prefix,
        max_jobs=jobs,
        approval="auto",
        scale_pools=False,
    )
    try:
        with RemoteWorker(env) as worker:
            worker(warm_message())  # terminate_job wired, token fetched: the app has been running
            # kill_switch wired too: a command for no incident reads the table and is finished
            warm = IncidentCommand(WARM_INCIDENT, Command.PLAN).to_json().encode()
            worker.kill_switch(QueueMessage(id="warm", body=warm))
            services.add_jobs(prefix, jobs)
            before, _ = services.ledger()
            pages_before = services.list_requests()
            log.take_warnings()
            counter = Counter(jobs)
            planned = Counter(1)
            hosts = [
                _host(storage, commands, worker.kill_switch, planned, "kill_switch"),
                _host(storage, trigger, worker, counter, "terminate_job"),
            ]
            for host in hosts:
                host.start()  # its first poll finds the queue empty; it polls again after 100 ms, backing off to 2 s
            try:
                posted, started = time.time(), time.perf_counter()
                incident_id = post_budget(worker, PAYLOAD.read_bytes())
                answered = time.perf_counter() - started
                finished = counter.done.wait(max(60.0, jobs / 5))
                planned.done.wait(10)
            finally:
                for host in hosts:
                    host.stop(timeout=10)
        count, last = services.ledger()
        if not finished or counter.other or planned.other or count - before != jobs or last is None:
            raise RuntimeError(
                f"kill switch: {count - before}/{jobs} jobs terminated, {counter.succeeded} deliveries succeeded,"
                f" plan {planned.succeeded} succeeded {planned.other[:1]}, first failures {counter.other[:3]}"
            )
        incident = read_incident(bare_table, incident_id)
        if incident.state is not State.EXECUTED or len(incident.jobs) != jobs:
            raise RuntimeError(
                f"kill switch: incident {incident_id} is {incident.state.value} with {len(incident.jobs)} jobs"
            )
        return Pipeline(
            jobs,
            answered,
            (planned.first_settled or started) - started,
            planned.slowest,
            (counter.first_settled or started) - started,
            last + LATENCY - posted,  # the ledger notes the terminate; the emulator answers `latency` later
            services.list_requests() - pages_before,
            summarize_warnings([w for w in worker.warnings if WARM_INCIDENT not in w[1]] + log.take_warnings()),
        )
    finally:
        trigger.delete_queue()
        commands.delete_queue()


def kill_switch(services: Services, log: WorkerLikeHandler, jobs: int, rounds: int = 1) -> Figure:
    """kill_switch_{jobs}: the pipeline's rate in % of the same round's bare send-then-receive ceiling; the median
    round of `rounds` (each on a fresh Azurite, ceiling and pipeline in alternating order: Azurite's own rate drifts
    by half between runs on a shared 2-core machine)."""
    name = "kill_switch_1000"  # the same name at smoke sizes
    threads = enqueue_threads()
    measured: list[tuple[float, Ceiling, Pipeline]] = []
    services.set_latency(LATENCY)
    try:
        for index in range(rounds):
            with Azurite() as azurite:
                if index % 2:
                    run = pipeline(services, log, azurite.connection_string, jobs)
                    bare = ceiling(azurite.connection_string, jobs, threads)
                else:
                    bare = ceiling(azurite.connection_string, jobs, threads)
                    run = pipeline(services, log, azurite.connection_string, jobs)
            measured.append((run.rate / bare.rate, bare, run))
            services.reset()
            services.set_latency(LATENCY)
    finally:
        services.set_latency(0.0)
        services.reset()
    measured.sort(key=lambda entry: entry[0])
    share, bare, run = measured[len(measured) // 2]
    shares = ", ".join(f"{entry[0]:.0%}" for entry in measured)
    options = deployment.deployed_queues()
    workers = deployment.deployed_threads()
    return Figure(
        name,
        share * 100,
        "%",
        f">= {TARGET:.0%} of ceiling",
        share >= TARGET,
        f"{jobs} jobs in {run.last_terminated:.2f} s from the POST to the last 202 = {run.rate:.0f} jobs/s, through"
        f" the incident; ceiling {bare.rate:.0f} msg/s (bare send {bare.send_seconds:.2f} s with {threads} threads,"
        f" then receive+delete {bare.receive_seconds:.2f} s with batchSize {options.batch_size} and"
        f" {options.batch_size + options.new_batch_threshold} threads); alert_terminate answered 202 after"
        f" {run.answered * 1000:.0f} ms (incident stored, no Batch call); kill_switch's plan settled after"
        f" {run.planned:.2f} s (its invocation {run.plan_seconds:.2f} s: {run.list_pages} Job - List page(s), the"
        f" schedules, {jobs} terminate messages), the first terminate settled after {run.first_settled:.2f} s;"
        f" emulator latency {LATENCY * 1000:.0f} ms, {deployment.THREAD_COUNT_SETTING} {workers}{run.warnings};"
        f" the median of {rounds} round(s): {shares}",
        {
            "target_share": TARGET,
            "jobs": jobs,
            "seconds": run.last_terminated,
            "rate": run.rate,
            "ceiling_rate": bare.rate,
            "ceiling_send_seconds": bare.send_seconds,
            "ceiling_receive_seconds": bare.receive_seconds,
            "answered_seconds": run.answered,
            "plan_settled_seconds": run.planned,
            "plan_invocation_seconds": run.plan_seconds,
            "first_settled_seconds": run.first_settled,
            "list_pages": run.list_pages,
            "enqueue_threads": threads,
            "worker_threads": workers,
            "round_shares": [entry[0] for entry in measured],
        },
    )


# ---- kill_switch_plan_10000


@dataclass(frozen=True)
class Fleet:
    """The plan figure's account: what was created and what the selected team's incident must plan."""

    entries: list[tuple[str, Any, dict[str, Any]]]
    jobs: int
    schedules: int
    pools: int
    prefix: str
    selected_jobs: int
    selected_schedules: int
    pools_to_scale: int
    pools_skipped: int


def fleet(jobs: int, schedules: int, pools: int) -> Fleet:
    """`jobs` active jobs (the schedules' first jobs among them), `schedules` schedules, `pools` pools, in teams.

    Team k has pools `pool-{team}-a` (fixed size) and `pool-{team}-b` (autoscale); 85% of its jobs run on its pool
    a, 10% on its pool b, 5% on the previous team's pool b, so every pool b is shared by two teams. Its schedules
    create jobs on its pool a. The incident selects the first team by its id prefix: its pool a is to be scaled,
    both pools b it used are skipped as PoolInUse.
    """
    teams = TEAMS[: max(1, min(len(TEAMS), pools // 2))]
    entries: list[tuple[str, Any, dict[str, Any]]] = []
    for team in teams:
        entries.append(("pool", f"pool-{team}-a", {"dedicated": 2, "metadata": {"team": team}}))
        entries.append(("pool", f"pool-{team}-b", {"auto_scale_formula": FORMULA, "metadata": {"team": team}}))
    plain = jobs - schedules
    per_team = [plain // len(teams) + (1 if k < plain % len(teams) else 0) for k in range(len(teams))]
    schedules_per_team = [schedules // len(teams) + (1 if k < schedules % len(teams) else 0) for k in range(len(teams))]
    for k, team in enumerate(teams):
        count = per_team[k]
        shared = count * 5 // 100 if len(teams) > 1 else 0
        own_b = count * 10 // 100
        own_a = count - own_b - shared
        metadata = {"team": team}
        entries.append(("jobs", (own_a, f"{team}-a-"), {"pool_id": f"pool-{team}-a", "metadata": metadata}))
        entries.append(("jobs", (own_b, f"{team}-b-"), {"pool_id": f"pool-{team}-b", "metadata": metadata}))
        if shared:
            neighbour = teams[k - 1]
            entries.append(("jobs", (shared, f"{team}-x-"), {"pool_id": f"pool-{neighbour}-b", "metadata": metadata}))
        for n in range(schedules_per_team[k]):
            options = {"recurrence_seconds": 86400.0, "pool_id": f"pool-{team}-a", "job_metadata": metadata}
            entries.append(("schedule", f"{team}-nightly-{n:03d}", options))
    skipped = 2 if len(teams) > 1 else 0  # its own pool b and its neighbour's
    return Fleet(
        entries,
        jobs,
        schedules,
        2 * len(teams),
        f"{teams[0]}-",
        per_team[0] + schedules_per_team[0],
        schedules_per_team[0],
        1,
        skipped,
    )


class BarePlan:
    """The list calls a plan needs, made bare with requests: each distinct list's pages (odata.nextLink followed)
    and one Pool - Get per pool, sequentially as the plan makes them, each answer parsed."""

    def __init__(self, base_url: str, recorded: list[Recorded]) -> None:
        self._session = requests.Session()
        self._session.trust_env = False
        self._base = base_url
        self.calls: list[tuple[str, str, dict[str, str], dict[str, str]]] = []
        seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
        for request in recorded:
            if request.operation not in ("job.list", "jobschedule.list", "pool.get"):
                continue
            if any(name.lower() == "$skiptoken" for name in request.query):
                continue  # a later page: the bare loop gets it from odata.nextLink
            key = (request.path.casefold(), tuple(sorted(request.query.items())))
            if key in seen:
                continue  # listed or read already: a bare loop would not ask again
            seen.add(key)
            headers = {k: v for k, v in request.headers.items() if k not in _TRANSPORT_HEADERS}
            self.calls.append((request.operation, base_url + request.path, dict(request.query), headers))
        self.pages: Tally[str] = Tally()

    def __call__(self) -> None:
        """Make every call; count the pages."""
        self.pages = Tally()
        get = self._session.get
        for operation, url, query, headers in self.calls:
            params: dict[str, str] | None = query
            next_url: str | None = url
            while next_url is not None:
                response = get(next_url, params=params, headers=headers, timeout=30)
                if response.status_code != 200:
                    raise RuntimeError(f"bare {operation} got HTTP {response.status_code}: {response.text[:200]}")
                document = response.json()
                self.pages[operation] += 1
                link = document.get("odata.nextLink")
                next_url = link if isinstance(link, str) and link.startswith(self._base) else None
                params = None


def plan_scale(
    services: Services, log: WorkerLikeHandler, jobs: int, schedules: int, pools: int, rounds: int
) -> Figure:
    """kill_switch_plan_10000: kill_switch's plan up to awaiting_approval ÷ the bare list calls it needs."""
    name = "kill_switch_plan_10000"  # the same name at smoke sizes
    account = fleet(jobs, schedules, pools)
    services.set_latency(0.0)
    services.reset()
    try:
        services.fleet(account.entries)
        with Azurite() as azurite:
            storage = azurite.connection_string
            commands = new_queue(storage, "incident")
            table = new_table_name()
            bare_table = table_storage_client(storage, table)
            bare_table.create_table()  # a deployed app's table exists
            env = incident_environment(
                services,
                storage,
                terminate_queue="bench-plan-terminate",
                incident_queue=commands.queue_name,
                table=table,
                prefix=account.prefix,
                max_jobs=PLAN_MAX_JOBS,
                approval="manual",
                scale_pools=True,
            )
            bodies = budget_bodies(rounds + 1, uuid.uuid4().hex[:8])
            plans: list[float] = []
            floors: list[float] = []
            made: list[Tally[str]] = []
            with RemoteWorker(env) as worker:
                log.take_warnings()
                services.set_latency(LATENCY)
                bare: BarePlan | None = None
                for index, body in enumerate(bodies):
                    incident_id = post_budget(worker, body)
                    message = _take_command(commands, incident_id)
                    first = services.request_count()

                    def plan(message: QueueMessage = message) -> None:
                        worker.kill_switch(message)

                    if bare is None:  # the warm-up round: wires kill_switch, and shows which calls a plan makes
                        plan()
                        recorded = services.requests_since(first)
                        bare = BarePlan(services.batch_url, recorded)
                        bare()
                        made.append(_operations(recorded))
                        _check_plan(read_incident(bare_table, incident_id), account)
                        continue
                    order: list[tuple[list[float], Callable[[], None]]] = [(plans, plan), (floors, bare)]
                    for samples, call in order if index % 2 == 0 else reversed(order):
                        mark = services.request_count()
                        started = time.perf_counter()
                        call()
                        samples.append(time.perf_counter() - started)
                        if samples is plans:
                            made.append(_operations(services.requests_since(mark)))
                    _check_plan(read_incident(bare_table, incident_id), account)
            warnings = summarize_warnings(worker.warnings + log.take_warnings())
            commands.delete_queue()
    finally:
        services.set_latency(0.0)
        services.reset()
    assert bare is not None
    plan_s, bare_s = statistics.median(plans), statistics.median(floors)
    ratio = plan_s / bare_s
    calls = made[-1]
    same = all(tally == bare.pages for tally in made)
    listed = ", ".join(f"{calls[op]} {label}" for op, label in _LABELS if calls[op])
    other = {op: n for op, n in calls.items() if op not in dict(_LABELS)}
    return Figure(
        name,
        ratio,
        "x",
        f"<= {PLAN_TARGET}x the bare list calls",
        ratio <= PLAN_TARGET and same and not other,
        f"plan up to awaiting_approval {plan_s:.2f} s vs the same calls bare {bare_s:.2f} s (median of {rounds}"
        f" round(s), interleaved); {account.jobs} active jobs, {account.schedules} schedules, {account.pools} pools,"
        f" emulator latency {LATENCY * 1000:.0f} ms; prefix {account.prefix!r} selects {account.selected_jobs} jobs,"
        f" {account.selected_schedules} schedules, {account.pools_to_scale} pool to scale and"
        f" {account.pools_skipped} PoolInUse (ALERT_MAX_JOBS {PLAN_MAX_JOBS}); the plan's Batch requests: {listed}"
        + (f", other {other}" if other else "")
        + (" = the bare loop's" if same else f" != the bare loop's {dict(bare.pages)}")
        + warnings,
        {
            "target_share": PLAN_TARGET,
            "jobs": account.jobs,
            "schedules": account.schedules,
            "pools": account.pools,
            "selected_jobs": account.selected_jobs,
            "plan_seconds": plan_s,
            "bare_seconds": bare_s,
            "plan_runs": plans,
            "bare_runs": floors,
            "requests": dict(calls),
            "bare_requests": dict(bare.pages),
        },
    )


_LABELS = (
    ("job.list", "Job - List pages"),
    ("jobschedule.list", "Job Schedule - List pages"),
    ("pool.get", "Pool - Gets"),
)


def _operations(recorded: list[Recorded]) -> Tally[str]:
    return Tally(request.operation for request in recorded)


def _take_command(queue: QueueClient, incident_id: str) -> QueueMessage:
    """The plan command alert_terminate put on the queue for this incident, received and deleted (untimed)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for message in queue.receive_messages(max_messages=32, visibility_timeout=60):
            queue.delete_message(message)
            if json.loads(message.content).get("incident") == incident_id:
                return QueueMessage(id=message.id, body=message.content.encode(), dequeue_count=1, pop_receipt="bench")
    raise RuntimeError(f"no plan command for incident {incident_id}")


def _check_plan(incident: Incident, account: Fleet) -> None:
    """The plan chose what the fleet was built for, and waits for approval."""
    skipped = [pool for pool in incident.pools if pool.skipped is not None]
    found = (
        incident.state,
        len(incident.jobs),
        len(incident.schedules),
        len(incident.pools) - len(skipped),
        len(skipped),
    )
    expected = (
        State.AWAITING_APPROVAL,
        account.selected_jobs,
        account.selected_schedules,
        account.pools_to_scale,
        account.pools_skipped,
    )
    if found != expected:
        raise RuntimeError(
            f"plan of incident {incident.id}: (state, jobs, schedules, pools, skipped) {found} != {expected}"
        )
