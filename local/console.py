"""What the person running `./dev run` sees: the banner, terminations as they happen, and a clean Ctrl-C."""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import json
import logging
import os
import shlex
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import FrameType

from azure.core.exceptions import AzureError

from local.batch_emulator import Job, Schedule, Termination
from local.stack import (
    DEFAULT_AZURITE_PORT,
    DEMO_HELD_JOB,
    DEMO_JOBS,
    DEMO_RELEASE_JOB,
    SWEEP_FUNCTION,
    Run,
)
from local.timer_host import format_moment
from shared.config.kill_switch import KillSwitchSettings
from shared.config.settings import HOST_JSON, PROJECT_ROOT
from shared.contract.errors import ConfigurationError
from shared.rules.sweep_policy import SweepPolicy
from shared.storage import queues as storage
from shared.telemetry import LOGGER_NAME

CLI = ".venv/bin/batch-terminator"
ALERT_FUNCTION = "alert_terminate"
BUDGET_PAYLOAD = Path("tests/payloads/budget-test-action.json")
BUDGET_SELECTOR = "ALERT_SELECT_JOB_ID_PREFIX"
SELECTORS = (BUDGET_SELECTOR, "ALERT_SELECT_POOL_ID", "ALERT_SELECT_METADATA")


def say(text: str = "") -> None:
    """Print for the person at the terminal (unbuffered, so pipes see it at once).

    One write with its newline: print() writes the newline apart, so a log record from another thread (stderr, often
    the same terminal or pipe) could land between the text and its newline.
    """
    sys.stdout.write(f"{text}\n")
    sys.stdout.flush()


def print_banner(run: Run, args: argparse.Namespace) -> None:
    """Where everything is, and a command to try."""
    settings = run.settings
    source = run.settings_file.name if run.settings_file else "the environment only"
    say("batch-terminator local run")
    say(f"  settings  {source} (environment variables win), {HOST_JSON.name}")
    say(f"  storage   {run.storage_where}")
    say(f"  queues    trigger {settings.terminate_queue_name}, poison {settings.poison_queue_name}")
    print_confirmation(run)
    if run.emulator is not None and run.identity is not None:
        say(f"  batch     No BATCH_ACCOUNT_URL: using the local Batch emulator at {run.emulator.url}")
        say(f"            (tokens from the local managed-identity endpoint {run.identity.url})")
        jobs = ", ".join(job.id for job in run.emulator.jobs())
        if args.any_job:
            say(f"  jobs      {jobs}; any other job id is created on its first terminate (--any-job)")
        else:
            say(f"  jobs      only {jobs}: any other id ends as a JobNotFound record, as in Azure")
            say("            (--any-job makes the emulator create unknown jobs on their first terminate)")
        release = run.emulator.job(DEMO_RELEASE_JOB)
        if release is not None and release.job_release_seconds:
            say(
                f"            ({DEMO_RELEASE_JOB} has a job release task: terminated, it stays terminating"
                f" {release.job_release_seconds:g} s)"
            )
        print_demo_fleet(run)
    else:
        say(f"  batch     {settings.batch_account_url} (real account; token from azure-identity)")
    print_kill_switch(run)
    print_hosts(run, args)
    if args.smoke or args.once:
        return
    job_id = DEMO_JOBS[0] if run.emulator is not None else "JOB_ID"
    prefix = cli_prefix(run)
    say()
    say("Try it from another terminal:")
    say(f'  {prefix}{CLI} enqueue {job_id} --reason "try it"')
    if run.emulator is not None and not args.any_job:
        say(f'  {prefix}{CLI} enqueue no-such-job --reason "try it"   # a JobNotFound poison record')
    if run.http is not None and any(f.name == ALERT_FUNCTION for f in run.http.functions):
        body = json.dumps({"jobId": DEMO_JOBS[1] if run.emulator is not None else "JOB_ID", "reason": "try it"})
        say(
            f"  curl -i -X POST {shlex.quote(run.http.url(ALERT_FUNCTION))}"
            f" -H 'Content-Type: application/json' -d {shlex.quote(body)}"
        )
    if run.http is not None and run.emulator is not None and any(f.name == ALERT_FUNCTION for f in run.http.functions):
        stuck_after = run.settings.confirm.after_seconds * run.settings.confirm.max_checks
        lines = budget_demo_lines(run.http.url(ALERT_FUNCTION), os.environ, stuck_after=stuck_after)
        if prefix and len(lines) > 2:
            # One export instead of the connection string in front of each command.
            lines.insert(2, f"  export {prefix.strip()}   # this run's Azurite, for the commands below")
        for line in lines:
            say(line)
        if run.azurite is not None and not args.in_memory:
            say("  (the same budget body is one incident: kept in .azurite/, a second run's POST answers the first")
            say("   one; start with --in-memory, or delete .azurite/, to try it again)")
    say(
        "Ctrl-C stops everything"
        + (" (queued messages stay in .azurite/)." if run.azurite and not args.in_memory else ".")
    )
    say()


def cli_prefix(run: Run) -> str:
    """What the CLI needs in front when Azurite is not on its usual port (the CLI reads UseDevelopmentStorage=true
    from local.settings, which means ports 10001 and 10002)."""
    if run.azurite is None or run.azurite.port == DEFAULT_AZURITE_PORT:
        return ""
    return f"AzureWebJobsStorage={shlex.quote(run.settings.storage.connection_string or '')} "


def print_demo_fleet(run: Run) -> None:
    """The emulator's pools and job schedules, and the held-for-good job (the kill switch's demo)."""
    assert run.emulator is not None
    held = run.emulator.job(DEMO_HELD_JOB)
    if held is not None and held.node_ids:
        say(
            f"            ({DEMO_HELD_JOB}'s job release tasks never finish: terminated, it ends as a TerminationStuck"
            f" record naming its {len(held.node_ids)} nodes)"
        )
    for pool in run.emulator.pools():
        if pool.enable_auto_scale:
            interval = pool.auto_scale_evaluation_interval
            minutes = f"{interval.total_seconds() / 60:g} min" if interval is not None else "?"
            size = f"autoscale, evaluated every {minutes}, now {pool.current_dedicated} dedicated"
        else:
            size = f"{pool.target_dedicated} dedicated + {pool.target_low_priority} low-priority"
        kept = ", kept: batch-terminator-keep=true" if pool.metadata.get("batch-terminator-keep") == "true" else ""
        jobs = [job.id for job in run.emulator.jobs() if (job.execution_pool_id or "").lower() == pool.id.lower()]
        say(f"  pool      {pool.id}: {size}{kept} ({', '.join(jobs) or 'no job'})")
    for schedule in run.emulator.schedules():
        every = f"every {schedule.recurrence.total_seconds():g} s" if schedule.recurrence is not None else "once"
        target = schedule.pool_id or "an auto pool"
        say(
            f"  schedule  {schedule.id}: while active, a job {schedule.id}:job-N on {target} {every} once its last job"
            f" has ended (now {schedule.recent_job_id})"
        )


def print_kill_switch(run: Run) -> None:
    """How incidents are carried out (docs/CONTRACT.md §10), from the settings the app will read."""
    try:
        kill = KillSwitchSettings.from_env(other_queues=run.settings.queue_names)
    except ConfigurationError as exc:
        say(f"  incidents kill_switch will log an error: {exc}")
        return
    selectors = ", ".join(f"{name}={os.environ[name]}" for name in SELECTORS if os.environ.get(name, "").strip())
    say(
        f"  incidents on {kill.queue_name}, table {kill.table_name}: approval {kill.approval.value},"
        f" schedules {'disabled' if kill.disable_schedules else 'left alone'},"
        f" pools {'scaled to zero' if kill.scale_pools else 'left alone'}; a budget selects {selectors or 'nothing'}"
    )
    if run.kill_switch_note:
        say(f"            ({run.kill_switch_note})")


def print_confirmation(run: Run) -> None:
    """Whether and when terminated jobs are checked (docs/CONTRACT.md §5b)."""
    confirm = run.settings.confirm
    if not confirm.enabled:
        say("  confirm   off (CONFIRM_AFTER_SECONDS=0): a 202 is not followed by checks")
        return
    say(
        f"  confirm   checks on {confirm.queue_name} {confirm.after_seconds} s after each 202, up to"
        f" {confirm.max_checks}, then a TerminationStuck record (force {'on' if confirm.force else 'off'})"
    )
    if run.confirm_note:
        say(f"            ({run.confirm_note})")


def budget_demo_lines(
    alert_url: str,
    environ: Mapping[str, str],
    root: Path = PROJECT_ROOT,
    *,
    cli: str = CLI,
    stuck_after: float | None = None,
) -> list[str]:
    """How to pull the budget kill switch on the demo and follow the incident (when the sample payload is here)."""
    payload = root / BUDGET_PAYLOAD
    if not payload.is_file():
        return []
    curl = (
        f"  curl -i -X POST {shlex.quote(alert_url)} -H 'Content-Type: application/json'"
        f" --data @{BUDGET_PAYLOAD.as_posix()}"
    )
    selectors = [f"{name}={environ[name].strip()}" for name in SELECTORS if environ.get(name, "").strip()]
    if not selectors:
        return [
            f"Budget kill switch: restart with {BUDGET_SELECTOR}=demo- (selects the demo jobs), then POST Microsoft's",
            "sample budget notification; every selected job is terminated:",
            curl,
        ]
    stuck = f" (~{stuck_after:g} s after the POST)" if stuck_after else ""
    return [
        f"Budget kill switch ({', '.join(selectors)}): POST Microsoft's sample Cost Management budget notification"
        " (from this folder);",
        "the answer names an incident, which stops the selected jobs, disables their schedules and scales their pools:",
        curl,
        f"  {cli} incidents list",
        f"  {cli} incidents show ID     # the plan, each pool's recorded size before, the disabled schedule",
        f"  {cli} incidents undo ID     # enables the schedule again and restores the pools",
        f"  {cli} poison list           # {DEMO_HELD_JOB}'s TerminationStuck record{stuck}; then: poison show ID",
    ]


def print_hosts(run: Run, args: argparse.Namespace) -> None:
    """Each queue host's options, the HTTP functions' URLs (with this run's key) and each timer's schedule."""
    for host in run.hosts:
        options = host.options
        say(
            f"  host      {host.function_name} on {host.queue_name}: batchSize={options.batch_size}"
            f" newBatchThreshold={options.new_batch_threshold} maxDequeueCount={options.max_dequeue_count}"
            f" visibilityTimeout={options.visibility_timeout_seconds:g}s"
            f" maxPollingInterval={options.max_polling_interval_seconds:g}s messageEncoding={options.message_encoding}"
        )
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
    for note in run.notes:
        label = "sweep" if SWEEP_FUNCTION in note else "function"
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


def report_recurrences(run: Run) -> list[tuple[Schedule, Job | None]]:
    """Print each job schedule recurrence the emulator found due since the last call: the job it created, or that
    a disabled schedule created none (why an incident disables schedules)."""
    fresh = run.new_recurrences()
    for schedule, job in fresh:
        if job is not None:
            say(f"emulator: schedule {schedule.id} created job {job.id} (on {job.pool_id or 'an auto pool'})")
        else:
            say(f"emulator: schedule {schedule.id} is disabled: its recurrence came and created no job")
    return fresh


class IncidentLines(logging.Handler):
    """Print one line per incident state change: the §8 records (logger batch_terminator, `incident` and `state`)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)

    def emit(self, record: logging.LogRecord) -> None:
        """One line for a state record; nothing for any other record."""
        incident, state = getattr(record, "incident", None), getattr(record, "state", None)
        if record.name != LOGGER_NAME or incident is None or state is None or not hasattr(record, "source"):
            return
        counts = " ".join(f"{name}={getattr(record, name, '?')}" for name in ("jobs", "schedules", "pools"))
        code = getattr(record, "code", None)
        source = getattr(record, "source", "?")
        say(f"incident: {incident} {state} ({source}; {counts}" + (f"; code={code})" if code else ")"))


@contextlib.contextmanager
def incident_lines() -> Iterator[None]:
    """Print incident state changes while inside."""
    handler = IncidentLines()
    logger = logging.getLogger(LOGGER_NAME)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)


def report_poison(run: Run, seen: set[str]) -> None:
    """Print each message that reached the poison queue since the last call (peeks the first 32; leaves them)."""
    try:
        messages = list(
            storage.queue_client(run.settings.storage, run.settings.poison_queue_name, "none").peek_messages(32)
        )
    except AzureError:
        return
    for message in messages:
        if message.id in seen:
            continue
        seen.add(message.id)
        say(f"poison: {describe_poison(str(message.content or ''))}")


def describe_poison(text: str) -> str:
    """One line for a poison message: a function record (its job and code) or a message the host moved as is."""
    document: object = None
    for candidate in (text, _unbase64(text)):
        with contextlib.suppress(ValueError):
            document = json.loads(candidate) if candidate else None
            if isinstance(document, dict):
                break
    if isinstance(document, dict) and isinstance(document.get("error"), dict):
        error, attempts = document["error"], document.get("attempts")
        message = str(error.get("message") or "").splitlines()[0] if error.get("message") else ""
        return f"job {document.get('jobId')}: {error.get('code')} ({message}) attempts={attempts}"
    return f"moved unchanged by the host after maxDequeueCount failed deliveries: {text[:80]!r}"


def _unbase64(text: str) -> str:
    """The base64-decoded text, or '' when it is not base64 of UTF-8."""
    try:
        return base64.b64decode(text, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return ""


def queue_is_drained(run: Run) -> bool:
    """No timer running, nothing in flight and nothing left on a trigger queue (hidden messages count as left)."""
    if any(timer.busy for timer in run.timers):
        return False
    return all(
        host.in_flight == 0 and host.trigger.get_queue_properties().approximate_message_count == 0 for host in run.hosts
    )


def serve(run: Run, stop: threading.Event, *, once: bool) -> int:
    """Print terminations as they happen until stopped (or, with once, until the queues are drained)."""
    quiet_since: float | None = None
    poisoned: set[str] = set()
    while not stop.wait(0.2):
        report_terminations(run)
        report_recurrences(run)
        report_poison(run, poisoned)
        if once:
            try:
                drained = queue_is_drained(run)
            except AzureError:
                drained = False
            quiet_since = (quiet_since or time.monotonic()) if drained else None
            # Give the hosts a couple of polls so a message enqueued just now is not missed.
            if quiet_since is not None and time.monotonic() - quiet_since > 1.0:
                break
    report_terminations(run)
    report_recurrences(run)
    report_poison(run, poisoned)
    return 0


@contextlib.contextmanager
def stop_on_signals(stop: threading.Event, force: Callable[[], object] = lambda: None) -> Iterator[None]:
    """The first SIGINT/SIGTERM asks for a clean stop, the second stops waiting for invocations, a third interrupts."""
    signals = [0]

    def handle(signum: int, frame: FrameType | None) -> None:
        signals[0] += 1
        if signals[0] == 1:
            say(f"\n{signal.Signals(signum).name}: stopping; waiting for in-flight invocations (Ctrl-C again: don't)")
            stop.set()
        elif signals[0] == 2:
            say("not waiting: unfinished messages stay hidden until their hide expires (see --release-on-stop)")
            force()
        else:
            raise KeyboardInterrupt

    previous = {signum: signal.signal(signum, handle) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


__all__ = [
    "ALERT_FUNCTION",
    "CLI",
    "incident_lines",
    "print_banner",
    "report_recurrences",
    "report_terminations",
    "say",
    "serve",
]
