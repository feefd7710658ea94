"""The local run's telemetry: an OpenTelemetry SDK provider whose metrics are summarised on the console."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider

from local.metrics_summary import SummaryExporter


@dataclass
class LocalTelemetry:
    """The SDK provider ./dev run installed, printing a summary line every interval."""

    provider: SdkMeterProvider
    exporter: SummaryExporter

    def shutdown(self) -> None:
        """Print the last summary (also when unchanged since the last line) and stop the exporter thread."""
        self.exporter.final = True
        self.provider.shutdown()


_local: LocalTelemetry | None = None
_local_lock = threading.Lock()


def start_local(say: Callable[[str], None], *, interval_seconds: float = 10.0) -> LocalTelemetry:
    """Install an SDK MeterProvider (once per process) whose reader prints one metrics summary line per interval."""
    global _local
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

    with _local_lock:
        if _local is None:
            exporter = SummaryExporter(say)
            reader = PeriodicExportingMetricReader(exporter, export_interval_millis=interval_seconds * 1000)
            provider = SdkMeterProvider(metric_readers=[reader])
            metrics.set_meter_provider(provider)
            _local = LocalTelemetry(provider, exporter)
        return _local
