"""`./dev run`: Azurite, local queue, HTTP and timer hosts, and Batch (the emulator unless BATCH_ACCOUNT_URL is set)."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import threading
from collections.abc import Sequence

from azure.core.exceptions import AzureError

from local.console import incident_lines, print_banner, say, serve, stop_on_signals
from local.functions import FunctionLoadError
from local.http_host import DEFAULT_PORT as DEFAULT_HTTP_PORT
from local.queue_host import QueueHost
from local.smoke import smoke
from local.stack import DEFAULT_AZURITE_PORT, DEFAULT_EMULATOR_PORT, RunError, start_everything, start_timers
from local.telemetry import start_local
from shared.contract.errors import ConfigurationError, TerminatorError


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The run command's flags."""
    parser = argparse.ArgumentParser(
        prog="./dev run",
        description="Run batch-terminator on this machine: Azurite, the local queue-trigger, HTTP and timer hosts, "
        "and Batch (the local emulator unless BATCH_ACCOUNT_URL names a real account).",
        epilog="Budget kill switch demo (with the emulator): POST tests/payloads/budget-test-action.json (Microsoft's "
        "sample Cost Management budget notification) to the alert URL the banner prints: the incident it opens "
        "terminates the active demo jobs, disables demo-schedule and scales the demo pools to zero; "
        "batch-terminator incidents show|undo ID. "
        "Stopping: Ctrl-C waits for in-flight invocations, a second Ctrl-C stops waiting (see --release-on-stop).",
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
    parser.add_argument(
        "--any-job",
        action="store_true",
        help="let the local Batch emulator create any job id on its first terminate (default: only the demo jobs"
        " exist, so another id ends as a JobNotFound poison record, as in Azure)",
    )
    parser.add_argument(
        "--release-on-stop",
        action="store_true",
        help="on a forced stop (second Ctrl-C) make unfinished messages visible at once; the real host leaves"
        " them hidden until their 10-minute hide expires (the default here too)",
    )
    parser.add_argument("--in-memory", action="store_true", help="keep Azurite's data in memory, not in .azurite/")
    parser.add_argument("--once", action="store_true", help="process what is queued, then stop")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="self-test on free ports with in-memory Azurite: enqueue 4 messages, POST 1 alert, then the sample"
        " budget (an incident, then its undo), check, exit 0/1",
    )
    args = parser.parse_args(argv)
    if args.function_key is not None and not args.function_key.strip():
        parser.error("--function-key must not be empty")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the flow until Ctrl-C (or the smoke test / --once finishes); return the exit code."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Every storage request is logged at INFO by azure-core; keep the terminal for what matters.
    logging.getLogger("azure").setLevel(logging.WARNING)
    stop = threading.Event()
    hosts: list[QueueHost] = []

    def force() -> None:
        for host in hosts:
            host.force_stop()

    with stop_on_signals(stop, force), contextlib.ExitStack() as stack:
        try:
            run = start_everything(args, stack)
        except (RunError, FunctionLoadError, ConfigurationError, TerminatorError, RuntimeError, AzureError) as exc:
            say(f"error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
            return 2
        print_banner(run, args)
        hosts.extend(run.hosts)
        stack.enter_context(incident_lines())  # one line per incident state change (docs/CONTRACT.md §8)
        # The same metrics Azure Monitor gets, as one summary line every 10 s (and a last one at the end).
        stack.callback(start_local(say, interval_seconds=10.0).shutdown)
        for host in run.hosts:
            host.start()
            stack.callback(host.stop)
        if run.http is not None:
            stack.callback(run.http.stop)  # stop taking requests before the queue hosts drain
        if not args.smoke and (note := start_timers(run, stack, sweep_now=args.sweep_now)):
            say(note)
        if args.smoke:
            return smoke(run, stop)
        code = serve(run, stop, once=args.once)
    say("stopped.")
    return code


if __name__ == "__main__":
    sys.exit(main())
