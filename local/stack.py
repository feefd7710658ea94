"""What `./dev run` starts: settings, Azurite, Batch (emulator or real), queues and the three local hosts."""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import socket
from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import requests
from azure.core.exceptions import ResourceExistsError

from local.azurite import ACCOUNT_NAME, Azurite, connection_string
from local.batch_emulator import BatchEmulator, Job, NodeState, Schedule, Termination
from local.functions import FunctionLoadError, function_folders
from local.http_host import HttpHost
from local.identity import IdentityEndpoint
from local.invocations import ThreadPool, thread_pool_size
from local.queue_host import Invocation, QueueHost
from local.timer_host import TimerHost, TimerNotLoaded, timer_functions
from ops.local_settings import LOCAL_SETTINGS_FILES, local_settings_values
from shared import wiring
from shared.config.settings import PROJECT_ROOT, Settings
from shared.contract.errors import ConfigurationError
from shared.storage import queues as storage

AZURITE_DIR = PROJECT_ROOT / ".azurite"
DEFAULT_AZURITE_PORT = 10001  # what UseDevelopmentStorage=true means to the storage SDKs
EMULATOR_PLACEHOLDER = "http://127.0.0.1:8045"  # the sample's BATCH_ACCOUNT_URL: "use the local emulator"
DEFAULT_EMULATOR_PORT = 8045
DEMO_JOBS = ("demo-job-1", "demo-job-2", "demo-job-3")
# demo-job-2 has a job release task: once terminated it stays `terminating` for this many check delays, so its
# first confirmation check finds it not done yet and schedules the next one (docs/CONTRACT.md §5b).
DEMO_RELEASE_JOB = DEMO_JOBS[1]
DEMO_RELEASE_DELAYS = 1.5
DEMO_RELEASE_POOL = "demo-release-pool"
# demo-job-4 is held for good: its job release tasks never finish (on 2 of demo-release-pool's nodes, beside the
# unusable one), so after CONFIRM_MAX_CHECKS checks it ends as a TerminationStuck record that names those nodes
# (docs/CONTRACT.md §5b). demo-release-pool is kept (batch-terminator-keep=true): an incident that stops demo-job-4
# leaves its nodes for that diagnosis.
DEMO_HELD_JOB = "demo-job-4"
# The kill switch's demo (docs/CONTRACT.md §10): a fixed pool, an autoscale pool with demo-job-5 on it, and a job
# schedule whose jobs `demo-schedule:job-{n}` run on the fixed pool.
DEMO_AUTOSCALE_JOB = "demo-job-5"
DEMO_FIXED_POOL = "demo-fixed-pool"
DEMO_FIXED_NODES = (3, 1)  # dedicated, low-priority
DEMO_AUTOSCALE_POOL = "demo-autoscale-pool"
DEMO_AUTOSCALE_NODES = 2
DEMO_AUTOSCALE_FORMULA = "$TargetDedicatedNodes = min(4, $PendingTasks.GetSample(1));"
DEMO_AUTOSCALE_SECONDS = 300  # Batch's shortest evaluation interval (5 minutes)
DEMO_SCHEDULE = "demo-schedule"
DEMO_RECURRENCE_SECONDS = 30
SMOKE_RECURRENCE_SECONDS = 2
DEMO_KEEP = {"batch-terminator-keep": "true"}
# What the emulator's demo needs of the kill switch, unless the environment or the developer's local.settings.json
# says otherwise: pools scaled to zero (the sample and the deployed default are false) and a selector for the
# budget (the sample's are empty, so a budget would be refused with NoJobId).
DEMO_KILL_SWITCH = {"KILL_SWITCH_SCALE_POOLS": "true"}
DEMO_SELECTORS = {"ALERT_SELECT_JOB_ID_PREFIX": "demo-"}
SELECTOR_NAMES = ("ALERT_SELECT_JOB_ID_PREFIX", "ALERT_SELECT_POOL_ID", "ALERT_SELECT_METADATA")
# The smoke test's run does not depend on the developer's settings for what it checks.
SMOKE_SETTINGS = {
    **DEMO_KILL_SWITCH,
    **dict.fromkeys(SELECTOR_NAMES, ""),
    **DEMO_SELECTORS,
    "KILL_SWITCH_APPROVAL": "auto",
    "KILL_SWITCH_DISABLE_SCHEDULES": "true",
    "TERMINATE_DRY_RUN": "false",
    "TERMINATE_ALLOWED_JOB_ID_PREFIXES": "",
    "TERMINATE_HONOR_KEEP": "false",
    "CONFIRM_MAX_CHECKS": "3",
    "CONFIRM_FORCE": "false",
}
SMOKE_RESIZE_SECONDS = 0.2
# With the emulator, whose jobs end in seconds, a check this soon after a 202 (the deployed default is 300 s).
LOCAL_CONFIRM_SECONDS = 5
SMOKE_CONFIRM_SECONDS = 1
SWEEP_FUNCTION = "sweep_jobs"


class RunError(Exception):
    """Something the run command cannot work around; the message is the one line the user sees."""


# ---- settings


def load_local_settings(root: Path = PROJECT_ROOT) -> tuple[Path | None, dict[str, str]]:
    """The Values of local.settings.json, else of local.settings.sample.json, as strings."""
    try:
        return local_settings_values(root)
    except ConfigurationError as exc:
        raise RunError(str(exc)) from exc


def apply_settings(values: dict[str, str], environ: MutableMapping[str, str]) -> list[str]:
    """Copy settings into the environment where it has no value yet (the environment wins); return those set."""
    applied = [name for name in values if name not in environ]
    for name in applied:
        environ[name] = values[name]
    return applied


def uses_development_storage(environ: MutableMapping[str, str]) -> bool:
    """Whether the storage setting asks for the local emulator (or names no storage at all)."""
    setting = environ.get("AzureWebJobsStorage", "").strip()
    if setting:
        return setting.replace(" ", "").lower() == "usedevelopmentstorage=true"
    return not any(environ.get(f"AzureWebJobsStorage__{key}") for key in ("queueServiceUri", "accountName"))


def uses_batch_emulator(environ: MutableMapping[str, str]) -> bool:
    """Whether BATCH_ACCOUNT_URL is unset or the sample's loopback placeholder."""
    url = environ.get("BATCH_ACCOUNT_URL", "").strip().rstrip("/")
    return not url or url == EMULATOR_PLACEHOLDER


# ---- services


def answers_as_azurite(port: int, host: str = "127.0.0.1") -> bool:
    """Whether an Azurite queue service already listens on this port."""
    session = requests.Session()
    session.trust_env = False  # a proxy from the environment must not answer for a loopback port
    try:
        response = session.get(f"http://{host}:{port}/{ACCOUNT_NAME}?comp=list", timeout=2)
    except requests.RequestException:
        return False
    finally:
        session.close()
    return response.headers.get("Server", "").startswith("Azurite")


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts connections on this port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(1)
        return probe.connect_ex((host, port)) == 0


def start_azurite(port: int, location: Path | None) -> Azurite:
    """Start Azurite's queue and table services (in their own session, so Ctrl-C reaches only us and the host can
    drain before they stop); the table service on the next port (10002 beside 10001, as the SDKs expect)."""
    return Azurite(port, location=location, table_port=port + 1 if port else 0).start()


def create_queues(settings: Settings, names: Sequence[str]) -> None:
    """Create the queues (existing ones are fine)."""
    for name in dict.fromkeys(names):
        client = storage.queue_client(settings.storage, name, "none")
        with contextlib.suppress(ResourceExistsError):
            client.create_queue()


@dataclass
class Run:
    """What the run command started and where it is."""

    settings: Settings
    hosts: list[QueueHost]
    invocations: list[Invocation]
    storage_where: str
    settings_file: Path | None
    azurite: Azurite | None = None
    emulator: BatchEmulator | None = None
    identity: IdentityEndpoint | None = None
    http: HttpHost | None = None
    timers: list[TimerHost] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    confirm_note: str | None = None  # why CONFIRM_AFTER_SECONDS differs from the settings file's
    kill_switch_note: str | None = None  # the kill switch settings the local run set for the emulator's demo
    # Each job schedule recurrence the emulator's ticker found due: the job it created, or None (disabled).
    recurrences: list[tuple[Schedule, Job | None]] = field(default_factory=list)
    _seen_terminations: int = 0
    _seen_recurrences: int = 0

    def timer(self, name: str) -> TimerHost | None:
        """The loaded timer function with this name."""
        return next((timer for timer in self.timers if timer.name == name), None)

    def new_terminations(self) -> list[Termination]:
        """Terminations the emulator recorded since the last call."""
        if self.emulator is None:
            return []
        ledger = self.emulator.terminations
        fresh, self._seen_terminations = ledger[self._seen_terminations :], len(ledger)
        return fresh

    def new_recurrences(self) -> list[tuple[Schedule, Job | None]]:
        """Job schedule recurrences the emulator found due since the last call."""
        seen = self.recurrences[self._seen_recurrences :]
        self._seen_recurrences += len(seen)
        return seen


def start_http_host(args: argparse.Namespace, stack: contextlib.ExitStack, pool: ThreadPool) -> HttpHost:
    """The HTTP-triggered functions on a loopback port (serving at once: a request only enqueues)."""
    port = 0 if args.smoke else args.http_port
    http = HttpHost.from_project(port=port, function_key=args.function_key, pool=pool)
    try:
        http.start()
    except OSError as exc:
        raise RunError(
            f"the local HTTP host cannot listen on port {port} ({exc.strerror}); stop what uses it"
            " (another func start?) or pass --http-port"
        ) from exc
    stack.callback(http.stop)
    return http


def load_timers(pool: ThreadPool) -> tuple[list[TimerHost], list[str]]:
    """The timer functions whose schedule resolves, and a note for each one skipped (as the host would skip it)."""
    timers: list[TimerHost] = []
    notes: list[str] = []
    for folder in timer_functions():
        if folder.is_disabled():
            notes.append(f"disabled: {folder.name}")
            continue
        try:
            timers.append(TimerHost.from_function(folder, pool=pool))
        except TimerNotLoaded as exc:
            notes.append(f"not loaded: {exc}")
    return timers, notes


def load_queue_hosts(
    settings: Settings, invocations: list[Invocation], pool: ThreadPool, *, release_on_stop: bool = False
) -> tuple[list[QueueHost], list[str]]:
    """One host per enabled queueTrigger function (not polling yet), and a note for each one skipped."""
    hosts: list[QueueHost] = []
    notes: list[str] = []
    for folder in function_folders(trigger_type="queueTrigger"):
        if folder.is_disabled():
            notes.append(f"disabled: {folder.name}")
            continue
        try:
            host = QueueHost.for_function(
                folder,
                settings.storage,
                settings.queues,
                on_invocation=invocations.append,
                release_on_stop=release_on_stop,
                pool=pool,
            )
        except FunctionLoadError as exc:
            notes.append(f"not loaded: {exc}")
            continue
        hosts.append(host)
    return hosts, notes


def confirm_delay(env: MutableMapping[str, str]) -> int:
    """CONFIRM_AFTER_SECONDS as a number (0 when unset or not a number: Settings names a bad value later)."""
    try:
        return max(int(env.get("CONFIRM_AFTER_SECONDS", "0").strip() or "0"), 0)
    except ValueError:
        return 0


def local_confirmation(
    args: argparse.Namespace, env: MutableMapping[str, str], *, chosen: bool, settings_file: Path | None
) -> str | None:
    """With the emulator, check soon after a 202 unless the developer chose a delay; a note saying so, if changed."""
    if args.smoke:
        env["CONFIRM_AFTER_SECONDS"] = str(SMOKE_CONFIRM_SECONDS)
        return None
    from_sample = settings_file is None or settings_file.name == LOCAL_SETTINGS_FILES[-1]
    if chosen or not from_sample:
        return None  # the environment or the developer's local.settings.json said so
    env["CONFIRM_AFTER_SECONDS"] = str(LOCAL_CONFIRM_SECONDS)
    return (
        f"CONFIRM_AFTER_SECONDS={LOCAL_CONFIRM_SECONDS} with the local emulator (its jobs end in seconds; the sample"
        " and the deployed default are 300); set it in the environment to change it"
    )


def local_kill_switch(args: argparse.Namespace, env: MutableMapping[str, str], *, chosen: set[str]) -> str | None:
    """With the emulator, the kill switch settings its demo needs unless the developer chose them; a note if set.

    Chosen: named in the environment, or given a value in the developer's own local.settings.json.
    """
    if args.smoke:
        env.update(SMOKE_SETTINGS)
        return None
    wanted = {name: value for name, value in DEMO_KILL_SWITCH.items() if name not in chosen}
    if not chosen.intersection(SELECTOR_NAMES):
        wanted.update(DEMO_SELECTORS)
    wanted = {name: value for name, value in wanted.items() if env.get(name, "").strip().lower() != value}
    if not wanted:
        return None
    env.update(wanted)
    names = " and ".join(f"{name}={value}" for name, value in wanted.items())
    return (
        f"{names} with the local emulator, for its demo jobs and pools (the sample's are false and empty); set them in"
        " the environment or local.settings.json to change that"
    )


def chosen_settings(environ: MutableMapping[str, str], settings_file: Path | None, values: dict[str, str]) -> set[str]:
    """The settings the developer chose: in the environment, or with a value in their own local.settings.json."""
    chosen = set(environ)
    if settings_file is not None and settings_file.name != LOCAL_SETTINGS_FILES[-1]:
        chosen.update(name for name, value in values.items() if value.strip())
    return chosen


def start_batch_emulator(
    args: argparse.Namespace, stack: contextlib.ExitStack, env: MutableMapping[str, str]
) -> tuple[BatchEmulator, IdentityEndpoint]:
    """The local Batch emulator with the demo jobs, pools and schedule, and the managed-identity endpoint its tokens
    come from."""
    identity = stack.enter_context(IdentityEndpoint())
    emulator = BatchEmulator(port=0 if args.smoke else args.batch_port, authorize=identity.is_valid)
    emulator.auto_create_jobs = args.any_job
    if args.smoke:
        emulator.resize_seconds = SMOKE_RESIZE_SECONDS
    try:
        emulator.start()
    except OSError as exc:
        raise RunError(f"the local Batch emulator cannot listen on port {args.batch_port} ({exc.strerror})") from exc
    stack.callback(emulator.stop)
    add_demo_data(emulator, release_seconds=DEMO_RELEASE_DELAYS * confirm_delay(env), smoke=args.smoke)
    return emulator, identity


def add_demo_data(emulator: BatchEmulator, *, release_seconds: float, smoke: bool = False) -> None:
    """The demo jobs, pools and job schedule (docs/LOCAL.md "The demo data")."""
    # demo-job-2 ran on 3 of its pool's 5 nodes (their release tasks hold it) and another node is unusable, so its
    # TerminationStuck record (e.g. with CONFIRM_MAX_CHECKS=1) says why (docs/CONTRACT.md §5b). demo-job-4 ran on
    # two others and its release tasks never end: its record says so at the last check, whatever the settings.
    nodes = [node.id for node in emulator.add_pool(DEMO_RELEASE_POOL, dedicated=5, metadata=DEMO_KEEP).nodes]
    emulator.set_node_states(DEMO_RELEASE_POOL, {nodes[3]: NodeState.UNUSABLE})
    for job_id in DEMO_JOBS:
        if job_id == DEMO_RELEASE_JOB:
            emulator.add_job(job_id, job_release_seconds=release_seconds, pool_id=DEMO_RELEASE_POOL, nodes=nodes[:3])
        else:
            emulator.add_job(job_id)
    emulator.add_job(DEMO_HELD_JOB, job_release_seconds=math.inf, pool_id=DEMO_RELEASE_POOL, nodes=nodes[2:5:2])
    dedicated, low_priority = DEMO_FIXED_NODES
    emulator.add_pool(DEMO_FIXED_POOL, dedicated=dedicated, low_priority=low_priority)
    emulator.add_pool(
        DEMO_AUTOSCALE_POOL,
        dedicated=DEMO_AUTOSCALE_NODES,
        auto_scale_formula=DEMO_AUTOSCALE_FORMULA,
        auto_scale_evaluation_seconds=DEMO_AUTOSCALE_SECONDS,
    )
    emulator.add_job(DEMO_AUTOSCALE_JOB, pool_id=DEMO_AUTOSCALE_POOL)
    # Its first job `demo-schedule:job-1` at once, the next one a recurrence after that job ends — unless the
    # schedule is disabled then: that recurrence passes and creates nothing.
    emulator.add_schedule(
        DEMO_SCHEDULE,
        recurrence_seconds=SMOKE_RECURRENCE_SECONDS if smoke else DEMO_RECURRENCE_SECONDS,
        pool_id=DEMO_FIXED_POOL,
        job_metadata={"demo": "schedule"},
        first_job=True,
    )


def start_storage(
    args: argparse.Namespace, stack: contextlib.ExitStack, env: MutableMapping[str, str]
) -> tuple[Azurite | None, str]:
    """Azurite when the settings ask for development storage (reusing one already on the port); where storage is."""
    if not uses_development_storage(env):
        return None, "the storage account in AzureWebJobsStorage (Azurite not started)"
    port = 0 if args.smoke else args.azurite_port
    in_memory = args.smoke or args.in_memory
    azurite: Azurite | None = None
    # The incident table (docs/CONTRACT.md §10): Azurite's table service, beside the queue service's port.
    table_port = port + 1 if port else None
    if port and answers_as_azurite(port):
        where = f"Azurite already running at http://127.0.0.1:{port}/{ACCOUNT_NAME} (reused)"
    elif port and port_in_use(port):
        raise RunError(f"port {port} is in use by something that is not Azurite; stop it or pass --azurite-port")
    else:
        azurite = start_azurite(port, None if in_memory else AZURITE_DIR)
        stack.callback(azurite.stop)
        port = azurite.port
        table_port = azurite.table_port
        kept = "in memory" if in_memory else f"data kept in {AZURITE_DIR.relative_to(PROJECT_ROOT)}/"
        where = f"Azurite at http://127.0.0.1:{port}/{ACCOUNT_NAME}, tables on port {table_port} ({kept})"
    env["AzureWebJobsStorage"] = connection_string(port, table_port=table_port)
    return azurite, where


def start_everything(args: argparse.Namespace, stack: contextlib.ExitStack) -> Run:
    """Settings, Azurite, Batch (emulator or real), queues, queue hosts (not yet polling), HTTP host, timers."""
    env = os.environ
    settings_file, values = load_local_settings()
    confirm_chosen = "CONFIRM_AFTER_SECONDS" in env
    chosen = chosen_settings(env, settings_file, values)
    apply_settings(values, env)
    if args.smoke:
        # The self-test never touches a configured account, whatever local.settings.json says.
        env["AzureWebJobsStorage"] = "UseDevelopmentStorage=true"
        env["BATCH_ACCOUNT_URL"] = ""

    azurite, storage_where = start_storage(args, stack, env)
    emulator: BatchEmulator | None = None
    identity: IdentityEndpoint | None = None
    confirm_note: str | None = None
    kill_switch_note: str | None = None
    recurrences: list[tuple[Schedule, Job | None]] = []
    if uses_batch_emulator(env):
        confirm_note = local_confirmation(args, env, chosen=confirm_chosen, settings_file=settings_file)
        kill_switch_note = local_kill_switch(args, env, chosen=chosen)
        emulator, identity = start_batch_emulator(args, stack, env)
        env.update(identity.environ())
        env["BATCH_ACCOUNT_URL"] = emulator.url
        # Schedules recur without any request coming in; the console prints each recurrence.
        emulator.on_recurrence = lambda schedule, job: recurrences.append((schedule, job))
        emulator.start_ticking(0.2 if args.smoke else 1.0)

    wiring.reset()
    settings = Settings.from_env()
    invocations: list[Invocation] = []
    # One worker process, one thread pool for every function (dispatcher.py _sync_call_tp).
    pool = ThreadPool(thread_pool_size(), name="worker")
    stack.callback(pool.shutdown)
    hosts, notes = load_queue_hosts(settings, invocations, pool, release_on_stop=args.release_on_stop)
    queues = [settings.poison_queue_name]
    for host in hosts:
        queues += [host.queue_name, *([host.poison_queue_name] if host.poison_queue_name else [])]
    create_queues(settings, queues)
    http = start_http_host(args, stack, pool)
    timers, timer_notes = load_timers(pool)
    return Run(
        settings,
        hosts,
        invocations,
        storage_where,
        settings_file,
        azurite,
        emulator,
        identity,
        http,
        timers,
        notes + timer_notes,
        confirm_note=confirm_note,
        kill_switch_note=kill_switch_note,
        recurrences=recurrences,
    )


def start_timers(run: Run, stack: contextlib.ExitStack, *, sweep_now: bool) -> str | None:
    """Start each timer (stopped before the queue hosts drain); with sweep_now fire sweep_jobs once; a note if not."""
    for timer in run.timers:
        timer.start()
        stack.callback(timer.stop)
    if not sweep_now:
        return None
    sweep = run.timer(SWEEP_FUNCTION)
    if sweep is None:
        return f"--sweep-now: {SWEEP_FUNCTION} is not loaded (see the sweep line above)"
    sweep.fire_now()
    return None


__all__ = [
    "DEFAULT_AZURITE_PORT",
    "DEFAULT_EMULATOR_PORT",
    "DEMO_AUTOSCALE_JOB",
    "DEMO_AUTOSCALE_POOL",
    "DEMO_FIXED_POOL",
    "DEMO_HELD_JOB",
    "DEMO_JOBS",
    "DEMO_RELEASE_JOB",
    "DEMO_RELEASE_POOL",
    "DEMO_SCHEDULE",
    "SWEEP_FUNCTION",
    "Run",
    "RunError",
    "apply_settings",
    "load_local_settings",
    "start_everything",
    "start_timers",
    "uses_batch_emulator",
    "uses_development_storage",
]
