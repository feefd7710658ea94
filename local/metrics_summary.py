"""A metric exporter that prints the app's metrics as one summary line: the local run's view of the telemetry."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from opentelemetry.sdk.metrics.export import (
    HistogramDataPoint,
    MetricExporter,
    MetricExportResult,
    MetricsData,
    NumberDataPoint,
)

from shared import telemetry


class SummaryExporter(MetricExporter):
    """Writes one line per export: terminations by outcome, Batch latency, retries, poison, sweeps, alerts."""

    def __init__(self, say: Callable[[str], None]) -> None:
        super().__init__()
        self._say = say
        self._last = ""
        # Set before the provider's shutdown: the last export prints its line even when unchanged, so a run always
        # ends with its summary.
        self.final = False

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> MetricExportResult:
        """Print the summary when it changed since the last line (a quiet run prints nothing new), or at the end."""
        line = summarize(metrics_data)
        if line != self._last or self.final:
            self._say(line)
            self._last = line
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        """Nothing is buffered."""
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        """Nothing to release."""


def summarize(metrics_data: MetricsData) -> str:
    """The one-line summary of the batch_terminator metrics in `metrics_data` (cumulative since start)."""
    sums: dict[str, Counter[str]] = {}
    latency: list[HistogramDataPoint] = []
    for resource in metrics_data.resource_metrics:
        for scope in resource.scope_metrics:
            if scope.scope.name != telemetry.METER_NAME:
                continue
            for metric in scope.metrics:
                points: Iterable[Any] = metric.data.data_points
                if metric.name == telemetry.BATCH_DURATION:
                    latency.extend(p for p in points if isinstance(p, HistogramDataPoint))
                    continue
                counts = sums.setdefault(metric.name, Counter())
                for point in points:
                    if isinstance(point, NumberDataPoint):
                        counts[_label(metric.name, point.attributes or {})] += int(point.value)
    terminations = sums.get(telemetry.TERMINATIONS, Counter())
    outcomes = " ".join(f"{name}={count}" for name, count in sorted(terminations.items())) or "none"
    return (
        f"metrics: terminations {outcomes} | batch {_latency(latency)}"
        f" | retries={_total(sums, telemetry.BATCH_RETRIES)}"
        f" | poison writes={_total(sums, telemetry.POISON_WRITES)}"
        f" | sweep runs={_total(sums, telemetry.SWEEP_RUNS)}"
        f" | alert requests={_total(sums, telemetry.ALERT_REQUESTS)}"
    )


def _label(name: str, attributes: Any) -> str:
    if name == telemetry.TERMINATIONS:
        return str(attributes.get("outcome", "?"))
    return ""


def _total(sums: dict[str, Counter[str]], name: str) -> int:
    return sum(sums.get(name, Counter()).values())


def _latency(points: list[HistogramDataPoint]) -> str:
    """Calls and p50/p95 read from the histogram buckets (an upper bound: the bucket's edge)."""
    count = sum(p.count for p in points)
    if not count:
        return "calls=0"
    bounds = points[0].explicit_bounds
    buckets = [sum(p.bucket_counts[i] for p in points) for i in range(len(bounds) + 1)]
    largest = max(p.max for p in points)

    def quantile(q: float) -> str:
        seen = 0
        for index, bucket in enumerate(buckets):
            seen += bucket
            if seen >= q * count:
                edge = bounds[index] if index < len(bounds) else largest
                return f"<={math.ceil(min(edge, largest))}ms"
        return f"<={math.ceil(largest)}ms"

    return f"calls={count} p50{quantile(0.5)} p95{quantile(0.95)}"
