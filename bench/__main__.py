"""`./dev bench [--smoke] [--messages N] [--output DIR]`: run every figure side by side, print the table."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bench import calls, end_to_end, enqueue_file, imports, kill_switch, plot, sweep_scale
from bench.harness import Figure, table, worker_logging
from bench.services import Services
from local import azurite

BENCH_DIR = Path(__file__).resolve().parent
AZURITE_UNUSED_PORT = 9
ORDER = (
    "per_message_vs_floor",
    "peer_sdk_vs_ours",
    "azurite_ceiling",
    "end_to_end_c",
    "incident_accept",
    "kill_switch_1000",
    "kill_switch_plan",
    "sweep_1000",
    "enqueue_file_1000",
    "token_fetches",
    "rss_growth",
    "import_time_vs_deps",
)


@dataclass(frozen=True)
class Plan:
    """How much of everything to run."""

    mode: str
    per_round: int
    rounds: int
    warmup: int
    steady_messages: int
    import_repetitions: int
    point_seconds: float
    ceiling_messages: int
    point_minimum: int
    incident_jobs: int
    enqueue_rounds: int
    null_from: int
    accept_requests: int
    plan_jobs: int
    plan_schedules: int
    plan_pools: int
    plan_rounds: int
    incident_rounds: int

    @classmethod
    def full(cls, messages: int) -> Plan:
        """The real measurement: `messages` per contender for figures 1 and 2, 10,000 for tokens and RSS."""
        rounds = 10
        per_round = max(messages // rounds, 1)
        return cls("full", per_round, rounds, 100, 10_000, 15, 4.0, 600, 100, 1000, 5, 1, 50, 10_000, 200, 20, 5, 5)

    @classmethod
    def smoke(cls) -> Plan:
        """Tiny counts, no sleep-only host runs: proves every figure still runs; the values mean little."""
        return cls("smoke", 20, 4, 10, 300, 3, 0.25, 48, 16, 40, 1, 1_000, 6, 600, 20, 4, 1, 1)


def progress(text: str) -> None:
    """One progress line on stderr."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def ordered(figures: list[Figure]) -> list[Figure]:
    """The issue's order: floor, peer, end to end, the incident figures, tokens, RSS, imports."""
    return sorted(figures, key=lambda f: next(i for i, p in enumerate(ORDER) if f.name.startswith(p)))


def enqueue_figure(ids: int, rounds: int) -> Figure:
    """ops' enqueue_file_1000 measurement (bench/enqueue_file.py) as a row of the table."""
    measured = enqueue_file.figure(count=ids, rounds=rounds)
    target = float(measured["target"])
    return Figure(
        measured["name"],
        measured["value"],
        measured["unit"],
        f">= {target:.0f}% of a bare send loop",
        measured["met"],
        measured["detail"],
        {**measured["extra"], "target_share": target / 100},
    )


def run(plan: Plan, output: Path) -> list[Figure]:
    """Measure everything, print the table, write results.json and the plot."""
    started = time.perf_counter()
    figures: list[Figure] = []
    sweep: end_to_end.Sweep | None = None
    with worker_logging() as log, Services() as services:
        # No poison record is written on these paths; one would fail loudly (nothing listens there) and stop the run.
        storage = azurite.connection_string(AZURITE_UNUSED_PORT)
        count = plan.per_round * plan.rounds
        progress(f"per message: terminate_job.main, bare requests, azure-batch SDK ({count} calls each, interleaved)")
        result = calls.per_call(services, storage, per_round=plan.per_round, rounds=plan.rounds, warmup=plan.warmup)
        figures += result.figures
        progress(f"token fetches and RSS over {plan.steady_messages} messages")
        figures += calls.steady_state(services, storage, count=plan.steady_messages)
        progress("end to end through Azurite and the local host, emulator latency 20 ms")
        sweep = end_to_end.sweep(
            services,
            log,
            per_point_seconds=plan.point_seconds,
            ceiling_messages=plan.ceiling_messages,
            minimum=plan.point_minimum,
            null_from=plan.null_from,
        )
        figures += end_to_end.figures(sweep)
        jobs = plan.incident_jobs
        progress(f"incident accept: {plan.accept_requests} budget notifications against a bare insert + send")
        figures.append(kill_switch.incident_accept(services, log, plan.accept_requests))
        progress(
            f"kill switch: a budget notification selecting {jobs} active jobs against its bare ceiling,"
            f" {plan.incident_rounds} round(s)"
        )
        figures.append(kill_switch.kill_switch(services, log, jobs, plan.incident_rounds))
        progress(
            f"kill switch plan over {plan.plan_jobs} jobs, {plan.plan_schedules} schedules, {plan.plan_pools} pools"
            f" at 20 ms against its list calls bare, {plan.plan_rounds} round(s)"
        )
        figures.append(
            kill_switch.plan_scale(
                services, log, plan.plan_jobs, plan.plan_schedules, plan.plan_pools, plan.plan_rounds
            )
        )
        progress(f"sweep over {jobs} idle jobs at 50 ms, concurrent and serial")
        figures.append(sweep_scale.sweep_scale(services, jobs))
    progress(f"enqueue --file of {plan.incident_jobs} ids against a bare send loop, {plan.enqueue_rounds} round(s)")
    figures.append(enqueue_figure(plan.incident_jobs, plan.enqueue_rounds))
    progress(f"import time, {plan.import_repetitions} fresh interpreters each")
    figures.append(imports.import_time(plan.import_repetitions))
    figures = ordered(figures)

    output.mkdir(parents=True, exist_ok=True)
    plot_path: Path | None = output / "throughput.png"
    plot_skipped = plot.missing()
    if plot_skipped is None and plot_path is not None:
        plot.draw(sweep, figures, plot_path)
    else:
        plot_path = None
    seconds = time.perf_counter() - started

    print(f"batch-terminator bench ({plan.mode}; {os.cpu_count()} CPUs, Python {platform.python_version()})")
    print(table(figures))
    met = [f for f in figures if f.met is not None]
    print(f"\n{sum(bool(f.met) for f in met)}/{len(met)} targets met in {seconds:.0f} s")
    if plan.mode == "smoke":
        print("smoke run: tiny counts; the values are not measurements")
    results = {
        "mode": plan.mode,
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "seconds": seconds,
        "plan": plan.__dict__,
        "figures": [f.as_dict() for f in figures],
        "plot": str(plot_path) if plot_path else None,
        "plot_skipped": plot_skipped,
    }
    (output / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {output / 'results.json'}" + (f" and {plot_path}" if plot_path else f" (no plot: {plot_skipped})"))
    return figures


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and run."""
    parser = argparse.ArgumentParser(prog="./dev bench", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny counts: checks the bench still runs")
    parser.add_argument(
        "--messages", type=int, default=5000, help="calls per contender for the per-message figures (default 5000)"
    )
    parser.add_argument("--output", type=Path, default=BENCH_DIR, help="where results.json and throughput.png go")
    args = parser.parse_args(argv)
    if args.messages < 10:
        parser.error("--messages must be at least 10")
    plan = Plan.smoke() if args.smoke else Plan.full(args.messages)
    run(plan, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
