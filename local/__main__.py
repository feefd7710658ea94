"""`./dev run`: Azurite, local queue, HTTP and timer hosts, and Batch (the emulator unless BATCH_ACCOUNT_URL is set)."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shlex
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator, MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import requests
from azure.core.exceptions import AzureError, ResourceExistsError
from azure.storage.queue import QueueClient

from local.azurite import ACCOUNT_NAME, Azurite, connection_string
from local.batch_emulator import BatchEmulator, Termination
from local.host import Invocation, Outcome, QueueHost
from local.http_host import DEFAULT_PORT as DEFAULT_HTTP_PORT
from local.http_host import HttpHost
from local.identity import IdentityEndpoint
from local.timer_host import TimerHost, TimerNotLoaded, format_moment, timer_functions
from shared import storage, wiring
from shared.errors import ConfigurationError, TerminatorError
from shared.producer import TerminateQueue
from shared.settings import HOST_JSON, PROJECT_ROOT, Settings, local_settings_values
from shared.sweep import SweepPolicy

log = logging.getLogger("local.run")

AZURITE_DIR = PROJECT_ROOT / ".azurite"
DEFAULT_AZURITE_PORT = 10001  # what UseDevelopmentStorage=true means to the storage SDKs
EMULATOR_PLACEHOLDER = "http://127.0.0.1:8045"  # the sample's BATCH_ACCOUNT_URL: "use the local emulator"
DEFAULT_EMULATOR_PORT = 8045
DEMO_JOBS = ("demo-job-1", "demo-job-2", "demo-job-3")
SMOKE_TIMEOUT = 60.0
CLI = ".venv/bin/python -m shared.cli"
ALERT_FUNCTION = "alert_terminate"
SWEEP_FUNCTION = "sweep_jobs"


class RunError(Exception):
    """Something the run command cannot work around; the message is the one line the user sees."""


def say(text: str = "") -> None:
    """Print for the person at the terminal (unbuffered, so pipes see it at once)."""
    print(text, flush=True)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The run command's flags."""
    parser = argparse.ArgumentParser(
        prog="./dev run",
        description="Run batch-terminator on this machine: Azurite, the local queue-trigger, HTTP and timer hosts, "
        "and Batch (the local emulator unless BATCH_ACCOUNT_URL names a real account).",
    )
    parser.add_argument(
        "--azurite-port",
        type=int,
        default=DEFAULT_AZURITE_PORT,
        help=f"Azurite queue port (default {DEFAULT_AZURITE_PORT}, what UseDevelopmentStorage=true uses; 0 = any)",
    )
    parser.add_argument(
        "--batch-port",
        type=int,
        default=DEFAULT_EMULATOR_PORT,
        help=f"port of the local Batch emulator (default {DEFAULT_EMULATOR_PORT}; 0 = any)",
    )
    parser.add_argument(
        "--http-port",
        type=int,
        default=DEFAULT_HTTP_PORT,
        help=f"port of the local HTTP host for the HTTP-triggered functions (default {DEFAULT_HTTP_PORT}, like"
        " func start; 0 = any)",
    )
    parser.add_argument(
        "--function-key",
        help="the function key the HTTP host requires (?code= or x-functions-key; default: a new one per run)",
    )
    parser.add_argument(
        "--sweep-now", action="store_true", help="fire the sweep_jobs timer once right after start (then on schedule)"
    )
    parser.add_argument("--in-memory", action="store_true", help="keep Azurite's data in memory, not in .azurite/")
    parser.add_argument("--once", action="store_true", help="process what is queued, then stop")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="self-test on free ports with in-memory Azurite: enqueue 3 messages, POST 1 alert, check, exit 0/1",
    )
    args = parser.parse_args(argv)
    if args.function_key is not None and not args.function_key.strip():
        parser.error("--function-key must not be empty")
    return args


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
    """Start Azurite (in its own session, so Ctrl-C reaches only us and the host can drain before it stops)."""
    return Azurite(port, location=location).start()


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
    host: QueueHost
    invocations: list[Invocation]
    storage_where: str
    settings_file: Path | None
    azurite: Azurite | None = None
    emulator: BatchEmulator | None = None
    identity: IdentityEndpoint | None = None
    http: HttpHost | None = None
    timers: list[TimerHost] = field(default_factory=list)
    timer_notes: list[str] = field(default_factory=list)
    _seen_terminations: int = 0

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


def start_http_host(args: argparse.Namespace, stack: contextlib.ExitStack) -> HttpHost:
    """The HTTP-triggered functions on a loopback port (serving at once: a request only enqueues)."""
    port = 0 if args.smoke else args.http_port
    http = HttpHost.from_project(port=port, function_key=args.function_key)
    try:
        http.start()
    except OSError as exc:
        raise RunError(
            f"the local HTTP host cannot listen on port {port} ({exc.strerror}); stop what uses it"
            " (another func start?) or pass --http-port"
        ) from exc
    stack.callback(http.stop)
    return http


def load_timers() -> tuple[list[TimerHost], list[str]]:
    """The timer functions whose schedule resolves, and a note for each one skipped (as the host would skip it)."""
    timers: list[TimerHost] = []
    notes: list[str] = []
    for folder in timer_functions():
        try:
            timers.append(TimerHost.from_function(folder))
        except TimerNotLoaded as exc:
            notes.append(f"not loaded: {exc}")
    return timers, notes


def start_everything(args: argparse.Namespace, stack: contextlib.ExitStack) -> Run:
    """Settings, Azurite, Batch (emulator or real), queues, the queue host (not yet polling), HTTP host, timers."""
    env = os.environ
    settings_file, values = load_local_settings()
    apply_settings(values, env)
    if args.smoke:
        # The self-test never touches a configured account, whatever local.settings.json says.
        env["AzureWebJobsStorage"] = "UseDevelopmentStorage=true"
        env["BATCH_ACCOUNT_URL"] = ""

    azurite: Azurite | None = None
    if uses_development_storage(env):
        port = 0 if args.smoke else args.azurite_port
        in_memory = args.smoke or args.in_memory
        if port and answers_as_azurite(port):
            storage_where = f"Azurite already running at http://127.0.0.1:{port}/{ACCOUNT_NAME} (reused)"
        elif port and port_in_use(port):
            raise RunError(f"port {port} is in use by something that is not Azurite; stop it or pass --azurite-port")
        else:
            azurite = start_azurite(port, None if in_memory else AZURITE_DIR)
            stack.callback(azurite.stop)
            port = azurite.port
            kept = "in memory" if in_memory else f"data kept in {AZURITE_DIR.relative_to(PROJECT_ROOT)}/"
            storage_where = f"Azurite at http://127.0.0.1:{port}/{ACCOUNT_NAME} ({kept})"
        env["AzureWebJobsStorage"] = connection_string(port)
    else:
        storage_where = "the storage account in AzureWebJobsStorage (Azurite not started)"

    emulator: BatchEmulator | None = None
    identity: IdentityEndpoint | None = None
    if uses_batch_emulator(env):
        identity = stack.enter_context(IdentityEndpoint())
        emulator = BatchEmulator(port=0 if args.smoke else args.batch_port, authorize=identity.is_valid)
        emulator.auto_create_jobs = True
        try:
            emulator.start()
        except OSError as exc:
            raise RunError(
                f"the local Batch emulator cannot listen on port {args.batch_port} ({exc.strerror})"
            ) from exc
        stack.callback(emulator.stop)
        for job_id in DEMO_JOBS:
            emulator.add_job(job_id)
        env.update(identity.environ())
        env["BATCH_ACCOUNT_URL"] = emulator.url

    wiring.reset()
    settings = Settings.from_env()
    host_poison = f"{settings.terminate_queue_name}-poison"
    create_queues(settings, [settings.terminate_queue_name, settings.poison_queue_name, host_poison])
    invocations: list[Invocation] = []
    host = QueueHost.from_storage(
        settings.storage,
        settings.terminate_queue_name,
        settings.queues,
        poison_queue_name=host_poison,
        on_invocation=invocations.append,
    )
    http = start_http_host(args, stack)
    timers, timer_notes = load_timers()
    return Run(
        settings,
        host,
        invocations,
        storage_where,
        settings_file,
        azurite,
        emulator,
        identity,
        http,
        timers,
        timer_notes,
    )


# ---- what the person sees


def print_banner(run: Run, args: argparse.Namespace) -> None:
    """Where everything is, and a command to try."""
    settings, options = run.settings, run.settings.queues
    source = run.settings_file.name if run.settings_file else "the environment only"
    say("batch-terminator local run")
    say(f"  settings  {source} (environment variables win), {HOST_JSON.name}")
    say(f"  storage   {run.storage_where}")
    say(f"  queues    trigger {settings.terminate_queue_name}, poison {settings.poison_queue_name}")
    if run.emulator is not None and run.identity is not None:
        say(f"  batch     No BATCH_ACCOUNT_URL: using the local Batch emulator at {run.emulator.url}")
        say(f"            (tokens from the local managed-identity endpoint {run.identity.url})")
        say(f"  jobs      {', '.join(DEMO_JOBS)} (any other job id is created on its first terminate)")
    else:
        say(f"  batch     {settings.batch_account_url} (real account; token from azure-identity)")
    say(
        f"  host      terminate_job on {settings.terminate_queue_name}: batchSize={options.batch_size}"
        f" newBatchThreshold={options.new_batch_threshold} maxDequeueCount={options.max_dequeue_count}"
        f" visibilityTimeout={options.visibility_timeout_seconds:g}s"
        f" maxPollingInterval={options.max_polling_interval_seconds:g}s messageEncoding={options.message_encoding}"
    )
    print_http_and_timers(run, args)
    if args.smoke or args.once:
        return
    job_id = DEMO_JOBS[0] if run.emulator is not None else "JOB_ID"
    prefix = ""
    if run.azurite is not None and run.azurite.port != DEFAULT_AZURITE_PORT:
        # The CLI reads UseDevelopmentStorage=true from local.settings, which means port 10001.
        prefix = f"AzureWebJobsStorage={shlex.quote(run.settings.storage.connection_string or '')} "
    say()
    say("Try it from another terminal:")
    say(f'  {prefix}{CLI} enqueue {job_id} --reason "try it"')
    if run.http is not None and any(f.name == ALERT_FUNCTION for f in run.http.functions):
        body = json.dumps({"jobId": DEMO_JOBS[1] if run.emulator is not None else "JOB_ID", "reason": "try it"})
        say(
            f"  curl -i -X POST {shlex.quote(run.http.url(ALERT_FUNCTION))}"
            f" -H 'Content-Type: application/json' -d {shlex.quote(body)}"
        )
    say(
        "Ctrl-C stops everything"
        + (" (queued messages stay in .azurite/)." if run.azurite and not args.in_memory else ".")
    )
    say()


def print_http_and_timers(run: Run, args: argparse.Namespace) -> None:
    """The HTTP functions' URLs (with this run's key) and each timer's schedule and next occurrence."""
    if run.http is not None:
        for function in run.http.functions:
            label = "alert" if function.name == ALERT_FUNCTION else "http"
            methods = ",".join(function.allowed_methods()) if function.methods else "any method"
            say(f"  {label:<10}{methods} {run.http.url(function.name)}")
        if any(f.auth_level != "anonymous" for f in run.http.functions):
            where = "from --function-key" if args.function_key else "generated for this run; --function-key sets one"
            say(f"            (key {where}; send it as ?code= or in an x-functions-key header)")
    for timer in run.timers:
        label = "sweep" if timer.name == SWEEP_FUNCTION else "timer"
        now = (
            " and once now (--sweep-now)" if args.sweep_now and timer.name == SWEEP_FUNCTION and not args.smoke else ""
        )
        next_at = format_moment(timer.next_occurrence)
        say(f'  {label:<10}{timer.name} on "{timer.schedule.expression}" (next {next_at}){now}')
        if timer.name == SWEEP_FUNCTION:
            say(f"            {sweep_state()}")
    for note in run.timer_notes:
        label = "sweep" if SWEEP_FUNCTION in note else "timer"
        say(f"  {label:<10}{note}")


def sweep_state() -> str:
    """What sweep_jobs will do when it fires, from the SWEEP_* settings."""
    try:
        policy = SweepPolicy.from_env()
    except ConfigurationError as exc:
        return f"each run logs an error: {exc}"
    if not policy.enabled:
        return "disabled (set SWEEP_MAX_AGE_HOURS or SWEEP_IDLE_MINUTES); each run only logs that"
    return f"policy {policy.describe()}"


def report_terminations(run: Run) -> list[Termination]:
    """Print each termination the emulator saw since the last call."""
    fresh = run.new_terminations()
    for termination in fresh:
        say(f"emulator: job {termination.job_id} terminated (reason: {termination.reason})")
    return fresh


def poison_records(run: Run) -> list[dict[str, Any]]:
    """The function's poison records, decoded, left in place."""
    client = storage.queue_client(
        run.settings.storage, run.settings.poison_queue_name, run.settings.queues.message_encoding
    )
    records: list[dict[str, Any]] = []
    for message in client.peek_messages(max_messages=32):
        with contextlib.suppress(ValueError, TypeError):
            records.append(json.loads(message.content))
    return records


def queue_is_drained(run: Run) -> bool:
    """No timer running, nothing in flight and nothing left on the trigger queue (hidden messages count as left)."""
    if any(timer.busy for timer in run.timers):
        return False
    client: QueueClient = run.host.trigger
    return run.host.in_flight == 0 and client.get_queue_properties().approximate_message_count == 0


def post_alert(run: Run, job_id: str) -> requests.Response:
    """POST a minimal fired common-schema alert naming job_id to the local alert_terminate, with the key."""
    alert = {
        "schemaId": "azureMonitorCommonAlertSchema",
        "data": {
            "essentials": {"alertRule": "smoke-test", "severity": "Sev4", "monitorCondition": "Fired"},
            "alertContext": {},
            "customProperties": {"jobId": job_id},
        },
    }
    assert run.http is not None
    with requests.Session() as session:
        session.trust_env = False  # a proxy from the environment must not answer for a loopback port
        return session.post(run.http.url(ALERT_FUNCTION), json=alert, timeout=10)


# ---- modes


def smoke(run: Run, stop: threading.Event) -> int:
    """Enqueue two demo jobs and one invalid message, POST one alert; 0 when 3 are terminated and 1 is poisoned."""
    started = time.monotonic()
    queue = TerminateQueue.connect(
        run.settings.terminate_queue_name,
        connection_string=run.settings.storage.connection_string,
        message_encoding=run.settings.queues.message_encoding,
    )
    wanted = set(DEMO_JOBS[:2])
    for job_id in sorted(wanted):
        queue.enqueue_terminate(job_id, "smoke test")
    # The producer refuses invalid requests, so the invalid one goes through its queue client as raw text.
    queue.client.send_message("this is not a terminate message")
    say(f"smoke: enqueued 3 messages on {queue.queue_name} (2 valid, 1 invalid)")
    answer = post_alert(run, DEMO_JOBS[2])
    say(f"smoke: POST /api/{ALERT_FUNCTION} (alert naming {DEMO_JOBS[2]}) -> {answer.status_code} {answer.text}")
    if answer.status_code != 202:
        say("smoke: FAILED: the local HTTP host did not accept the alert")
        return 1
    wanted.add(DEMO_JOBS[2])
    terminated: set[str] = set()
    records: list[dict[str, Any]] = []
    deadline = started + SMOKE_TIMEOUT
    while time.monotonic() < deadline and not stop.is_set():
        terminated.update(t.job_id for t in report_terminations(run))
        records = poison_records(run)
        if wanted <= terminated and records and len(run.invocations) >= len(wanted) + 1:
            break
        stop.wait(0.2)
    else:
        say(
            f"smoke: FAILED after {time.monotonic() - started:.0f}s: terminated {sorted(terminated)},"
            f" {len(records)} poison record(s), {len(run.invocations)} invocation(s)"
        )
        return 1
    outcomes = {outcome: sum(1 for i in run.invocations if i.outcome is outcome) for outcome in Outcome}
    codes = ", ".join(sorted({str(r.get("error", {}).get("code")) for r in records}))
    say(f"smoke: emulator terminated {', '.join(sorted(terminated))}")
    say(f"smoke: {len(records)} poison record(s) on {run.settings.poison_queue_name} (code {codes})")
    say(
        f"smoke: {len(run.invocations)} invocations: {outcomes[Outcome.SUCCEEDED]} succeeded,"
        f" {outcomes[Outcome.FAILED]} failed, {outcomes[Outcome.MOVED_TO_POISON]} moved to poison"
        f" ({time.monotonic() - started:.1f}s)"
    )
    say("smoke: OK")
    return 0


def serve(run: Run, stop: threading.Event, *, once: bool) -> int:
    """Print terminations as they happen until stopped (or, with once, until the queue is drained)."""
    quiet_since: float | None = None
    while not stop.wait(0.2):
        report_terminations(run)
        if once:
            try:
                drained = queue_is_drained(run)
            except AzureError:
                drained = False
            quiet_since = (quiet_since or time.monotonic()) if drained else None
            # Give the host a couple of polls so a message enqueued just now is not missed.
            if quiet_since is not None and time.monotonic() - quiet_since > 1.0:
                break
    report_terminations(run)
    return 0


def start_timers(run: Run, stack: contextlib.ExitStack, *, sweep_now: bool) -> None:
    """Start each timer (stopped before the queue host drains); with sweep_now, fire sweep_jobs once at once."""
    for timer in run.timers:
        timer.start()
        stack.callback(timer.stop)
    if sweep_now:
        sweep = run.timer(SWEEP_FUNCTION)
        if sweep is None:
            say(f"--sweep-now: {SWEEP_FUNCTION} is not loaded (see the sweep line above)")
        else:
            sweep.fire_now()


@contextlib.contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """The first SIGINT/SIGTERM asks for a clean stop; a second Ctrl-C interrupts it."""

    def handle(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        say(f"\n{signal.Signals(signum).name}: stopping (in-flight messages finish or become visible again)...")
        stop.set()

    previous = {signum: signal.signal(signum, handle) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the flow until Ctrl-C (or the smoke test / --once finishes); return the exit code."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Every storage request is logged at INFO by azure-core; keep the terminal for what matters.
    logging.getLogger("azure").setLevel(logging.WARNING)
    stop = threading.Event()
    with stop_on_signals(stop), contextlib.ExitStack() as stack:
        try:
            run = start_everything(args, stack)
        except (RunError, ConfigurationError, TerminatorError, RuntimeError, AzureError) as exc:
            say(f"error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
            return 2
        print_banner(run, args)
        run.host.start()
        stack.callback(run.host.stop)
        if run.http is not None:
            stack.callback(run.http.stop)  # stop taking requests before the queue host drains
        if not args.smoke:
            start_timers(run, stack, sweep_now=args.sweep_now)
        if args.smoke:
            return smoke(run, stop)
        code = serve(run, stop, once=args.once)
    say("stopped.")
    return code


if __name__ == "__main__":
    sys.exit(main())
