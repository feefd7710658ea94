"""sweep_1000: one sweep run over 1,000 idle active jobs (each needs a task-count read) against the serial time."""

from __future__ import annotations

import uuid
from dataclasses import replace

from bench.calls import function_environment
from bench.end_to_end import new_queue
from bench.harness import Figure, environment
from bench.services import Services
from local.azurite import Azurite
from shared import wiring

LATENCY = 0.050
TARGET = 0.2
# Created this long ago and never given a task: idle past SWEEP_IDLE_MINUTES=1, so every one needs its counts read.
AGE_SECONDS = 3600.0


def sweep_scale(services: Services, jobs: int) -> Figure:
    """The concurrent run's wall time ÷ the same sweep with one read in flight (list pages + every read, serially)."""
    from shared.rules.sweep_policy import SweepPolicy
    from shared.services.sweep_jobs import Sweeper

    prefix = f"idle-{uuid.uuid4().hex[:8]}"
    services.reset()
    services.add_jobs(prefix, jobs, AGE_SECONDS)
    services.set_latency(LATENCY)
    try:
        with Azurite() as azurite:
            storage = azurite.connection_string
            queue = new_queue(storage, "sweep")
            env = {**function_environment(services, storage), "TERMINATE_QUEUE_NAME": queue.queue_name}
            with environment(env):
                wiring.reset()
                try:
                    built = wiring.Wiring()
                    readers, producer = built.batch_readers(), built.terminate_queue()
                    policy = SweepPolicy(idle_minutes=1, job_id_prefix=prefix, max_jobs=jobs)
                    # Serial first: it pays the token fetch and the first connection, the concurrent run then does not.
                    serial = Sweeper(readers, producer, replace(policy, concurrency=1, dry_run=True)).run()
                    pages = services.list_requests()
                    fast = Sweeper(readers, producer, policy).run()
                finally:
                    wiring.reset()
                enqueued = queue.get_queue_properties().approximate_message_count
    finally:
        services.set_latency(0.0)
        services.reset()
    for label, report in (("serial", serial), ("concurrent", fast)):
        if report.outcome != "ok" or report.reads != jobs or len(report.matched) != jobs:
            raise RuntimeError(f"{label} sweep: {report.summary()}")
    if len(fast.enqueued) != jobs or enqueued != jobs:
        raise RuntimeError(f"concurrent sweep enqueued {len(fast.enqueued)} (queue holds {enqueued}) of {jobs}")
    ratio = fast.duration / serial.duration
    return Figure(
        "sweep_1000",
        ratio,
        "x",
        f"<= {TARGET}x serial",
        ratio <= TARGET,
        f"{jobs} idle active jobs, emulator latency {LATENCY * 1000:.0f} ms: one run (list, {fast.reads} task-count"
        f" reads {policy.concurrency} at a time, {len(fast.enqueued)} enqueued) {fast.duration:.2f} s vs serial"
        f" {serial.duration:.2f} s (list + {serial.reads} reads one at a time, same client, no enqueue;"
        f" {pages} Job - List page(s)); run budget {policy.run_budget_seconds:.0f} s",
        {
            "target_share": TARGET,
            "jobs": jobs,
            "seconds": fast.duration,
            "serial_seconds": serial.duration,
            "concurrency": policy.concurrency,
            "reads": fast.reads,
            "enqueued": len(fast.enqueued),
            "list_pages": pages,
        },
    )
