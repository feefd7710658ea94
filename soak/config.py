"""The knobs of one soak run: message count, fault rates, the scaled retry policy and queue options."""

from __future__ import annotations

from dataclasses import dataclass

from shared.batch.retry import RetryPolicy
from shared.config.settings import QueueOptions

QUEUE_NAME = "soak-terminate"
POISON_QUEUE_NAME = f"{QUEUE_NAME}-poison"
# docs/CONTRACT.md §5b: the checks after each 202, and the host's own poison queue for them.
CONFIRM_QUEUE_NAME = f"{QUEUE_NAME}-confirm"
CONFIRM_HOST_POISON_QUEUE_NAME = f"{CONFIRM_QUEUE_NAME}-poison"
# Batch fault rates per terminate request (the emulator draws one per request).
FAULT_RATES = {"server_busy": 0.10, "throttle": 0.05, "drop": 0.02, "slow": 0.01}
TOKEN_FAILURE_RATE = 0.01
MISSING_SHARE = 0.03
COMPLETED_SHARE = 0.03
# Jobs whose job release task never ends (the emulator holds them terminating until forced): TerminationStuck.
STUCK_SHARE = 0.03
# Jobs whose job release task holds them terminating for RELEASE_DELAYS check delays: checked again, then confirmed.
RELEASING_SHARE = 0.05
RELEASE_DELAYS = 1.5

# The kill-switch phase (docs/CONTRACT.md §9, §10): its own queues, table and Batch accounts, the same Azurite.
KS_QUEUE_NAME = "soak-ks-terminate"
KS_POISON_QUEUE_NAME = f"{KS_QUEUE_NAME}-poison"
KS_CONFIRM_QUEUE_NAME = "soak-ks-confirm"
KS_INCIDENT_QUEUE_NAME = "soak-ks-incidents"
KS_TABLE_NAME = "soakincidents"
KS_OTHER_ACCOUNT = "eu"
# ALERT_MAX_JOBS in the phase: a `refused` group selects more.
KS_MAX_JOBS = 8
# Fault rates per request of the kill switch's list, schedule and pool operations (5xx, drops before and after
# Batch applied the request, answers slower than the client timeout after Batch applied it).
KS_FAULT_RATES = {"server_busy": 0.07, "internal": 0.02, "drop": 0.03, "drop_applied": 0.03, "slow": 0.03}
KS_FAULT_OPERATIONS = frozenset(
    {
        "job.list",
        "jobschedule.list",
        "jobschedule.get",
        "jobschedule.disable",
        "jobschedule.enable",
        "pool.get",
        "pool.resize",
        "pool.stopresize",
        "pool.disableautoscale",
        "pool.enableautoscale",
    }
)
# An answer held this long (after Batch applied the request) marks the request the soak kills the host during.
KS_KILL_DELAY = 3.0
# How often the soak sends `retry` to a failed incident, or `undo` again to one whose undo failed, before it
# counts it as failed for good.
KS_MAX_RESENDS = 3


@dataclass(frozen=True)
class SoakConfig:
    """Knobs of one soak run."""

    messages: int = 10_000
    seed: int = 1
    http_timeout: float = 1.0
    slow_seconds: float = 1.25
    token_lifetime: int = 302
    max_dequeue_count: int = 5
    batch_size: int = 16
    new_batch_threshold: int = 8
    visibility_timeout: float = 1.0
    max_polling_interval: float = 0.5
    hide_seconds: float = 5.0
    # host.json's 5-minute functionTimeout scaled as the retry budget is (120 s -> 15 s).
    function_timeout: float = 300.0 / 8
    azurite_restart_at: float = 0.35
    host_kill_at: float = 0.65
    confirm_after_seconds: int = 1
    confirm_max_checks: int = 3
    timeout: float | None = None
    keep: bool = False
    # Incidents of the kill-switch phase (0: no phase); each has its own group of jobs, schedules and pools.
    incidents: int = 16
    ks_resize_seconds: float = 0.5

    @property
    def ks_deadline_seconds(self) -> float:
        """How long the kill-switch phase may take before what is unfinished counts as lost."""
        return 180.0 + self.incidents * 5.0

    @property
    def deadline_seconds(self) -> float:
        """How long processing may take before the remaining messages count as lost."""
        return self.timeout if self.timeout is not None else 120.0 + self.messages * 0.1

    def policy(self) -> RetryPolicy:
        """A retry policy scaled down so the soak finishes in minutes."""
        # credential_delay stays at MSAL's 5 s failure cache, or token retries would be futile.
        return RetryPolicy(
            max_attempts=4,
            base_delay=0.05,
            max_delay=0.4,
            retry_after_cap=5.0,
            budget_seconds=15.0,
            credential_delay=5.0,
        )

    @property
    def threads(self) -> int:
        """PYTHON_THREADPOOL_THREAD_COUNT as the deployed app sets it: one thread per message the hosts hold."""
        # Two queue-triggered functions (terminate_job, confirm_termination) share the worker's one pool.
        return 2 * (self.batch_size + self.new_batch_threshold)

    @property
    def release_seconds(self) -> float:
        """How long a `releasing` job's release task keeps it terminating."""
        return RELEASE_DELAYS * self.confirm_after_seconds

    def queue_options(self) -> QueueOptions:
        """The host's queue options for the soak."""
        return QueueOptions(
            max_dequeue_count=self.max_dequeue_count,
            message_encoding="base64",
            batch_size=self.batch_size,
            new_batch_threshold=self.new_batch_threshold,
            visibility_timeout_seconds=self.visibility_timeout,
            max_polling_interval_seconds=self.max_polling_interval,
        )
