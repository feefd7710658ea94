"""The throughput-versus-concurrency plot (bench/throughput.png)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.end_to_end import E2E_TARGET, LATENCY, Sweep
from bench.harness import Figure

# Each incident figure as (measured, reference) bars: the extra keys its Figure carries, and what they are.
INCIDENTS = {
    "incident_accept": ("accept_seconds", "bare_seconds", "s: POST→202 (incident) vs bare table insert + send"),
    "kill_switch_1000": ("rate", "ceiling_rate", "jobs/s: kill switch vs bare send-then-receive"),
    "kill_switch_plan_10000": ("plan_seconds", "bare_seconds", "s: plan (10,000 jobs) vs its list calls bare"),
    "enqueue_file_1000": ("rate", "bare_rate", "msg/s: enqueue --file vs bare send loop"),
    "sweep_1000": ("seconds", "serial_seconds", "s: sweep run vs serial reads"),
}


def missing() -> str | None:
    """None when matplotlib imports, else why it does not."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return "matplotlib is not installed; pip install -r requirements-bench.txt"
    return None


def draw(result: Sweep, figures: list[Figure], path: Path) -> None:
    """Left: messages/s against messages in flight. Right: each incident figure beside its reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = [p.concurrency for p in result.points]
    figure, (axes, incidents) = plt.subplots(1, 2, figsize=(13, 4.8), dpi=120, width_ratios=(3, 2))
    axes.plot(levels, [p.rate for p in result.points], "o-", label="terminate_job via local host + Azurite")
    nulls = [(p.concurrency, p.null_rate) for p in result.points if p.null_rate]
    if nulls:
        axes.plot(*zip(*nulls, strict=True), "s--", label=f"same host, function = {LATENCY * 1000:.0f} ms sleep")
    threads = max(p.threads for p in result.points)
    ideal_label = f"ideal: min(in flight, {threads} threads) / 20 ms"
    axes.plot(levels, [p.ideal for p in result.points], ":", color="grey", label=ideal_label)
    axes.axhline(result.ceiling, color="tab:red", linestyle="-.", label="Azurite ceiling (bare receive+delete)")
    targets = [E2E_TARGET * min(p.ideal, result.ceiling, p.null_rate or p.ideal) for p in result.points]
    target_label = f"target: {E2E_TARGET:.0%} of min(ideal, ceiling, same host with a sleep)"
    axes.plot(levels, targets, "-", color="tab:green", alpha=0.4, linewidth=4, label=target_label)
    axes.set_xscale("log", base=2)
    axes.set_yscale("log")
    axes.set_xticks(levels, [str(level) for level in levels])
    axes.set_xlabel(f"messages in flight (batchSize + newBatchThreshold); PYTHON_THREADPOOL_THREAD_COUNT {threads}")
    axes.set_ylabel("messages / s")
    axes.set_title("End-to-end throughput, emulator latency 20 ms")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8, loc="upper left")
    _incidents(incidents, {f.name: f for f in figures})
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)


def _incidents(axes: Any, figures: dict[str, Figure]) -> None:
    """Each incident figure as measured ÷ its reference (grey bar = 1), its target marked."""
    rows = [(name, figures[name]) for name in INCIDENTS if name in figures and figures[name].value is not None]
    shares = [found.extra[INCIDENTS[name][0]] / found.extra[INCIDENTS[name][1]] for name, found in rows]
    for index, ((name, found), share) in enumerate(zip(rows, shares, strict=True)):
        label = INCIDENTS[name][2]
        target = found.extra["target_share"]
        axes.barh(index + 0.2, 1.0, height=0.4, color="lightgrey")
        axes.barh(index - 0.2, share, height=0.4, color="tab:green" if found.met else "tab:red")
        axes.plot([target, target], [index - 0.45, index + 0.45], color="black", linewidth=1.5)
        axes.text(max(share, 1.0) + 0.03, index, f"{share:.2f} (target {found.target})", va="center", fontsize=8)
        axes.text(0.01, index + 0.47, label, fontsize=8)
    axes.set_yticks(range(len(rows)), [name for name, _ in rows], fontsize=8)
    axes.set_ylim(-0.6, len(rows) - 0.05)
    # Room for the labels right of the longest bar, and every target line inside the axes (3x for incident_accept).
    targets = [found.extra["target_share"] for _, found in rows]
    axes.set_xlim(0, max(max([1.0, *shares]) * 1.6, max(targets, default=0.0) * 1.1))
    axes.set_xlabel("measured ÷ reference (grey = the reference; black line = target)")
    axes.set_title("Incident scale, same run")
    axes.grid(True, axis="x", alpha=0.3)
