"""What is deployed: host.json's queue options and the worker's thread count, as the bench's points use them."""

from __future__ import annotations

import os
from collections.abc import Mapping

from ops.local_settings import local_settings_values
from shared.config.settings import QueueOptions, queue_options

THREAD_COUNT_SETTING = "PYTHON_THREADPOOL_THREAD_COUNT"
QUEUES_PREFIX = "AzureFunctionsJobHost__extensions__queues__"


def worker_default_threads(cpus: int | None = None) -> int:
    """The worker's pool when the setting is absent: ThreadPoolExecutor's own min(32, cpus + 4)."""
    return min(32, (cpus if cpus is not None else os.cpu_count() or 1) + 4)


def pool_size(environ: Mapping[str, str]) -> int:
    """The worker's sync pool: PYTHON_THREADPOOL_THREAD_COUNT when it is an integer >= 1, else the default."""
    raw = environ.get(THREAD_COUNT_SETTING, "").strip()
    return int(raw) if raw.isdigit() and int(raw) >= 1 else worker_default_threads()


def deployed_threads() -> int:
    """PYTHON_THREADPOOL_THREAD_COUNT as local.settings.sample.json (and infra/) set it, else the worker's default."""
    _, values = local_settings_values()
    return pool_size(values)


def deployed_queues() -> QueueOptions:
    """host.json's extensions.queues, without app-setting overrides."""
    return queue_options({})


def in_flight_settings(concurrency: int) -> dict[str, str]:
    """App settings holding `concurrency` messages in flight: host.json's batchSize (lowered only below it)."""
    batch = min(deployed_queues().batch_size, concurrency)
    return {f"{QUEUES_PREFIX}batchSize": str(batch), f"{QUEUES_PREFIX}newBatchThreshold": str(concurrency - batch)}


def point_queues(concurrency: int) -> QueueOptions:
    """The host's options at one point: host.json with the point's batchSize/newBatchThreshold app settings."""
    return queue_options(in_flight_settings(concurrency))


def describe(options: QueueOptions, threads: int) -> str:
    """batchSize/newBatchThreshold/threads, as a figure's detail says them."""
    return (
        f"batchSize {options.batch_size}, newBatchThreshold {options.new_batch_threshold},"
        f" {THREAD_COUNT_SETTING} {threads}"
    )


def environment(concurrency: int, threads: int) -> Mapping[str, str]:
    """The point's app settings: its queue options and the deployed thread count."""
    return {**in_flight_settings(concurrency), THREAD_COUNT_SETTING: str(threads)}
