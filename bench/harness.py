"""Measuring helpers: figures with targets, interleaved timing, RSS, the function's environment, log sink."""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import statistics
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from azure.functions.queue import QueueMessage

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


@dataclass
class Figure:
    """One measured figure, its target and whether it is met (None: not measured)."""

    name: str
    value: float | None
    unit: str
    target: str
    met: bool | None
    detail: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The figure as results.json stores it."""
        return asdict(self)


def status_text(figure: Figure) -> str:
    """met / NOT MET / skipped (not measured) / - (a reference, no target)."""
    if figure.met is None:
        return "skipped" if figure.value is None else "-"
    return "met" if figure.met else "NOT MET"


def format_value(value: float | None, unit: str) -> str:
    """A value with its unit, compact."""
    if value is None:
        return "-"
    if unit == "x":
        return f"{value:.2f}x"
    if unit == "%":
        return f"{value:.0f}%"
    if unit == "MB":
        return f"{value:.2f} MB"
    if abs(value) >= 100 or float(value).is_integer():
        return f"{value:,.0f} {unit}".strip()
    return f"{value:.2f} {unit}".strip()


def table(figures: list[Figure]) -> str:
    """The results as a fixed-width table, one figure a row, details below it."""
    rows = [("figure", "value", "target", "status")]
    rows += [(f.name, format_value(f.value, f.unit), f.target, status_text(f)) for f in figures]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = []
    for index, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
        elif figures[index - 1].detail:
            lines.append(" " * 4 + figures[index - 1].detail)
    return "\n".join(lines)


def rss_bytes() -> int:
    """Resident set size of this process, from /proc/self/statm."""
    with open("/proc/self/statm", encoding="ascii") as statm:
        return int(statm.read().split()[1]) * PAGE_SIZE


def settled_rss() -> int:
    """RSS after a full garbage collection."""
    gc.collect()
    return rss_bytes()


@dataclass
class Sample:
    """Per-message wall and CPU microseconds of one timed chunk."""

    wall_us: float
    cpu_us: float


class Contender(Protocol):
    """One way of terminating jobs, timed on `run` only."""

    def prepare(self, n: int) -> Any:
        """Build the inputs of n calls (untimed)."""
        ...

    def run(self, work: Any) -> None:
        """Make the calls (timed)."""
        ...

    def settle(self) -> None:
        """Finish background work the calls left (untimed)."""
        ...


def interleave(
    contenders: Mapping[str, Contender], per_round: int, rounds: int, warmup: int
) -> dict[str, list[Sample]]:
    """Time each contender `rounds` times, `per_round` calls a time, rotating the order every round."""
    names = list(contenders)
    for name in names:
        contenders[name].run(contenders[name].prepare(warmup))
        contenders[name].settle()
    samples: dict[str, list[Sample]] = {name: [] for name in names}
    for index in range(rounds):
        shift = index % len(names)
        order = names[shift:] + names[:shift]
        if index % 2:
            order.reverse()
        for name in order:
            contender = contenders[name]
            work = contender.prepare(per_round)
            wall, cpu = time.perf_counter(), time.process_time()
            contender.run(work)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            contender.settle()
            samples[name].append(Sample(wall / per_round * 1e6, cpu / per_round * 1e6))
    return samples


def median_wall(samples: list[Sample]) -> float:
    """Median per-message wall time of the rounds, µs."""
    return statistics.median(s.wall_us for s in samples)


def median_cpu(samples: list[Sample]) -> float:
    """Median per-message CPU time of the rounds, µs."""
    return statistics.median(s.cpu_us for s in samples)


class JobIds:
    """Unique Batch job ids, so every terminate finds an active (auto-created) job."""

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix
        self._next = 0

    def take(self, n: int) -> list[str]:
        """The next `n` ids."""
        start, self._next = self._next, self._next + n
        return [f"{self._prefix}-{i:07d}" for i in range(start, start + n)]


def messages(job_ids: list[str], reason: str) -> list[QueueMessage]:
    """Queue messages as the host hands them to main(), built before any timing starts."""
    return [
        QueueMessage(
            id=str(uuid.uuid4()),
            body=f'{{"jobId": "{job_id}", "reason": "{reason}"}}'.encode(),
            dequeue_count=1,
            pop_receipt="bench",
        )
        for job_id in job_ids
    ]


class WorkerLikeHandler(logging.Handler):
    """Formats every record it gets, as the Functions Python worker does before shipping it, then drops it."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records = 0
        self.warnings: list[tuple[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        """Format and count; keep warnings and errors, so a figure can say when retries or failures happened."""
        text = self.format(record)
        self.records += 1
        if record.levelno >= logging.WARNING:
            self.warnings.append((record.name, text[:160]))

    def take_warnings(self) -> list[tuple[str, str]]:
        """The warnings since the last call."""
        taken, self.warnings = self.warnings, []
        return taken


def summarize_warnings(warnings: list[tuple[str, str]]) -> str:
    """'' when there were none, else the count per logger and the first warning that is not pool churn."""
    if not warnings:
        return ""
    counts: dict[str, int] = {}
    for name, _ in warnings:
        counts[name] = counts.get(name, 0) + 1
    notable = next((f"{name}: {text}" for name, text in warnings if "pool is full" not in text), None)
    listed = ", ".join(f"{name} {n}" for name, n in sorted(counts.items(), key=lambda item: -item[1]))
    return f"; warnings logged: {listed}" + (f" (first other than pool churn: {notable})" if notable else "")


@contextlib.contextmanager
def worker_logging() -> Iterator[WorkerLikeHandler]:
    """Root logger at INFO into a WorkerLikeHandler (the worker's default), azure SDK request logs off."""
    root = logging.getLogger()
    handler = WorkerLikeHandler()
    saved = root.level, list(root.handlers)
    quiet = logging.getLogger("azure.core.pipeline.policies.http_logging_policy")
    saved_quiet = quiet.level
    root.handlers = [handler]
    root.setLevel(logging.INFO)
    quiet.setLevel(logging.WARNING)
    try:
        yield handler
    finally:
        root.setLevel(saved[0])
        root.handlers = saved[1]
        quiet.setLevel(saved_quiet)


@contextlib.contextmanager
def environment(values: Mapping[str, str | None]) -> Iterator[None]:
    """Set (None: unset) environment variables for the block, restoring the previous values after it."""
    saved = {name: os.environ.get(name) for name in values}
    for name, value in values.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
