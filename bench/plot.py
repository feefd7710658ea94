"""The throughput-versus-concurrency plot (bench/throughput.png)."""

from __future__ import annotations

from pathlib import Path

from bench.end_to_end import E2E_TARGET, LATENCY, Sweep


def missing() -> str | None:
    """None when matplotlib imports, else why it does not."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return "matplotlib is not installed; pip install -r requirements-bench.txt"
    return None


def draw(result: Sweep, path: Path) -> None:
    """Messages/s against concurrency: ours, the same host with a sleep-only function, the ideal, Azurite's ceiling."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = [p.concurrency for p in result.points]
    figure, axes = plt.subplots(figsize=(7, 4.5), dpi=120)
    axes.plot(levels, [p.rate for p in result.points], "o-", label="terminate_job via local host + Azurite")
    nulls = [(p.concurrency, p.null_rate) for p in result.points if p.null_rate]
    if nulls:
        axes.plot(*zip(*nulls, strict=True), "s--", label=f"same host, function = {LATENCY * 1000:.0f} ms sleep")
    threads = max(p.threads for p in result.points)
    ideal_label = f"ideal: min(in flight, {threads} threads) / 20 ms"
    axes.plot(levels, [p.ideal for p in result.points], ":", color="grey", label=ideal_label)
    axes.axhline(result.ceiling, color="tab:red", linestyle="-.", label="Azurite ceiling (bare receive+delete)")
    targets = [E2E_TARGET * min(p.ideal, result.ceiling) for p in result.points]
    target_label = f"target: {E2E_TARGET:.0%} of min(ideal, ceiling)"
    axes.plot(levels, targets, "-", color="tab:green", alpha=0.4, linewidth=4, label=target_label)
    axes.set_xscale("log", base=2)
    axes.set_yscale("log")
    axes.set_xticks(levels, [str(level) for level in levels])
    axes.set_xlabel(f"messages in flight (batchSize + newBatchThreshold); PYTHON_THREADPOOL_THREAD_COUNT {threads}")
    axes.set_ylabel("messages / s")
    axes.set_title("End-to-end throughput, emulator latency 20 ms")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8, loc="upper left")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
