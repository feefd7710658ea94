"""Every setting the app reads, declared once: its name, kind, default, bounds, meaning and who reads it.

docs/CONTRACT.md §2 holds the same table for people; tests/repo/test_settings_catalog.py keeps the two, the
local.settings sample and infra's app settings in step with this one.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Kind(enum.Enum):
    """A setting's grammar; shared.config.readers has one reader per kind."""

    TEXT = "text"
    BOOLEAN = "boolean"  # true/1/yes/on, false/0/no/off (docs/CONTRACT.md §2)
    WHOLE = "whole number"
    POSITIVE = "positive number"
    QUEUE_NAME = "queue name"
    TABLE_NAME = "table name"
    JOB_ID_PREFIX = "job id prefix"
    CHOICE = "choice"
    URL = "URL"
    LIST = "comma-separated list"


@dataclass(frozen=True)
class Setting:
    """One app setting."""

    name: str
    kind: Kind
    meaning: str
    readers: tuple[str, ...]  # the function folders (or "worker"/"host") that read it
    default: str | None = None
    low: int | None = None
    high: int | None = None
    choices: tuple[str, ...] = ()
    required: bool = False

    def default_text(self) -> str:
        """The declared default (for code that needs it as a constant: the one copy is this declaration)."""
        if self.default is None:
            raise ValueError(f"{self.name} declares no default")
        return self.default

    def default_number(self) -> float:
        """The declared default of a number setting."""
        return float(self.default_text())

    def upper_bound(self) -> int:
        """The declared upper bound of a whole-number setting."""
        if self.high is None:
            raise ValueError(f"{self.name} declares no upper bound")
        return self.high


APP = ("terminate_job", "confirm_termination", "alert_terminate", "sweep_jobs", "keep_poison", "kill_switch")
QUEUE_FUNCTIONS = ("terminate_job", "confirm_termination", "keep_poison", "kill_switch")

BATCH_ACCOUNT_URL = Setting("BATCH_ACCOUNT_URL", Kind.URL, "the default Batch account's URL", APP, required=True)
BATCH_ACCOUNTS = Setting("BATCH_ACCOUNTS", Kind.LIST, "more accounts as alias=url pairs", APP)
BATCH_API_VERSION = Setting(
    "BATCH_API_VERSION", Kind.TEXT, "the Batch api-version of every request", APP, default="2025-06-01"
)
BATCH_TIMEOUT_SECONDS = Setting(
    "BATCH_TIMEOUT_SECONDS", Kind.WHOLE, "Batch's server-side timeout", APP, default="30", low=1, high=30
)
AZURE_CLIENT_ID = Setting("AZURE_CLIENT_ID", Kind.TEXT, "a user-assigned managed identity's client id", APP)
STORAGE = Setting("AzureWebJobsStorage", Kind.TEXT, "the storage account (connection string)", APP, required=True)
STORAGE_QUEUE_URI = Setting("AzureWebJobsStorage__queueServiceUri", Kind.URL, "the queue service, identity-based", APP)
STORAGE_TABLE_URI = Setting("AzureWebJobsStorage__tableServiceUri", Kind.URL, "the table service, identity-based", APP)
STORAGE_ACCOUNT_NAME = Setting(
    "AzureWebJobsStorage__accountName", Kind.TEXT, "the storage account name, identity-based", APP
)
STORAGE_CLIENT_ID = Setting("AzureWebJobsStorage__clientId", Kind.TEXT, "the identity for storage", APP)
STORAGE_CREDENTIAL = Setting("AzureWebJobsStorage__credential", Kind.TEXT, "managedidentity", APP)
TERMINATE_QUEUE_NAME = Setting("TERMINATE_QUEUE_NAME", Kind.QUEUE_NAME, "the trigger queue", APP, required=True)
POISON_QUEUE_NAME = Setting(
    "POISON_QUEUE_NAME", Kind.QUEUE_NAME, "where records go", APP, default="{TERMINATE_QUEUE_NAME}-poison"
)
CONFIRM_QUEUE_NAME = Setting("CONFIRM_QUEUE_NAME", Kind.QUEUE_NAME, "pending confirmation checks", APP)
INCIDENT_QUEUE_NAME = Setting("INCIDENT_QUEUE_NAME", Kind.QUEUE_NAME, "kill-switch commands", APP)
INCIDENT_TABLE_NAME = Setting(
    "INCIDENT_TABLE_NAME", Kind.TABLE_NAME, "the incident table", APP, default="batchterminatorincidents"
)
MAX_DEQUEUE_COUNT = Setting(
    "AzureFunctionsJobHost__extensions__queues__maxDequeueCount",
    Kind.WHOLE,
    "the host's delivery limit (overrides host.json)",
    ("host", *QUEUE_FUNCTIONS),
    default="5",
    low=1,
    high=1000,
)
MESSAGE_ENCODING = Setting(
    "AzureFunctionsJobHost__extensions__queues__messageEncoding",
    Kind.CHOICE,
    "the trigger queues' encoding (overrides host.json)",
    ("host", *QUEUE_FUNCTIONS),
    choices=("base64", "none"),
)
PYTHON_THREADPOOL_THREAD_COUNT = Setting(
    "PYTHON_THREADPOOL_THREAD_COUNT", Kind.WHOLE, "the worker's invocation threads", ("worker",), low=1, high=10000
)
PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY = Setting(
    "PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY", Kind.BOOLEAN, "the worker configures Azure Monitor", ("worker",)
)
PYTHON_APPLICATIONINSIGHTS_LOGGER_NAME = Setting(
    "PYTHON_APPLICATIONINSIGHTS_LOGGER_NAME", Kind.TEXT, "the logger the worker exports", ("worker",)
)
TERMINATE_ALLOWED_JOB_ID_PREFIXES = Setting(
    "TERMINATE_ALLOWED_JOB_ID_PREFIXES", Kind.LIST, "the only job id prefixes terminated", ("terminate_job",)
)
TERMINATE_HONOR_KEEP = Setting(
    "TERMINATE_HONOR_KEEP", Kind.BOOLEAN, "refuse jobs marked batch-terminator-keep", ("terminate_job",), "false"
)
TERMINATE_DRY_RUN = Setting(
    "TERMINATE_DRY_RUN", Kind.BOOLEAN, "never send Job - Terminate", ("terminate_job", "kill_switch"), "false"
)
CONFIRM_AFTER_SECONDS = Setting(
    "CONFIRM_AFTER_SECONDS",
    Kind.WHOLE,
    "seconds after a 202 before the first check (0: off)",
    ("terminate_job", "confirm_termination"),
    default="0",
    low=0,
    high=7 * 24 * 3600,  # a queue message stays invisible for at most 7 days
)
CONFIRM_MAX_CHECKS = Setting(
    "CONFIRM_MAX_CHECKS", Kind.WHOLE, "checks before TerminationStuck", ("confirm_termination",), "3", 1, 100
)
CONFIRM_FORCE = Setting(
    "CONFIRM_FORCE", Kind.BOOLEAN, "terminate again with force=true once", ("confirm_termination",), "false"
)
ALERT_JOB_ID_DIMENSION = Setting(
    "ALERT_JOB_ID_DIMENSION", Kind.TEXT, "the alert dimension carrying job ids", ("alert_terminate",), "jobId"
)
ALERT_RULES_ALLOWED = Setting(
    "ALERT_RULES_ALLOWED", Kind.LIST, "the only alert rules and budgets acted on", ("alert_terminate",)
)
ALERT_SELECT_JOB_ID_PREFIX = Setting(
    "ALERT_SELECT_JOB_ID_PREFIX", Kind.JOB_ID_PREFIX, "incident selection: job id prefix", ("alert_terminate",)
)
ALERT_SELECT_POOL_ID = Setting(
    "ALERT_SELECT_POOL_ID", Kind.TEXT, "incident selection: the jobs' pool", ("alert_terminate",)
)
ALERT_SELECT_METADATA = Setting(
    "ALERT_SELECT_METADATA", Kind.TEXT, "incident selection: key=value in job metadata", ("alert_terminate",)
)
ALERT_MAX_JOBS = Setting(
    "ALERT_MAX_JOBS",
    Kind.WHOLE,
    "the most jobs one incident (or alert) may stop",
    ("alert_terminate", "kill_switch"),
    default="100",
    low=1,
)
KILL_SWITCH_APPROVAL = Setting(
    "KILL_SWITCH_APPROVAL",
    Kind.CHOICE,
    "auto: act once planned; manual: wait for approve",
    ("kill_switch",),
    default="auto",
    choices=("auto", "manual"),
)
KILL_SWITCH_DISABLE_SCHEDULES = Setting(
    "KILL_SWITCH_DISABLE_SCHEDULES", Kind.BOOLEAN, "incidents disable job schedules", ("kill_switch",), "true"
)
KILL_SWITCH_SCALE_POOLS = Setting(
    "KILL_SWITCH_SCALE_POOLS", Kind.BOOLEAN, "incidents scale pools to zero", ("kill_switch",), "false"
)
SWEEP_SCHEDULE = Setting(
    "SWEEP_SCHEDULE", Kind.TEXT, "the sweep's NCRONTAB schedule", ("host", "sweep_jobs"), required=True
)
SWEEP_MAX_AGE_HOURS = Setting("SWEEP_MAX_AGE_HOURS", Kind.POSITIVE, "sweep jobs older than this", ("sweep_jobs",))
SWEEP_IDLE_MINUTES = Setting("SWEEP_IDLE_MINUTES", Kind.POSITIVE, "sweep jobs idle this long", ("sweep_jobs",))
SWEEP_JOB_ID_PREFIX = Setting(
    "SWEEP_JOB_ID_PREFIX", Kind.JOB_ID_PREFIX, "sweep only ids with this prefix", ("sweep_jobs",)
)
SWEEP_DRY_RUN = Setting("SWEEP_DRY_RUN", Kind.BOOLEAN, "log instead of enqueueing", ("sweep_jobs",), "false")
SWEEP_MAX_JOBS = Setting(
    "SWEEP_MAX_JOBS", Kind.WHOLE, "a run that would enqueue more enqueues none", ("sweep_jobs",), "100", low=1
)
SWEEP_ACCOUNTS = Setting("SWEEP_ACCOUNTS", Kind.LIST, "the aliases to sweep", ("sweep_jobs",))
SWEEP_CONCURRENCY = Setting(
    "SWEEP_CONCURRENCY", Kind.WHOLE, "task-count reads in flight", ("sweep_jobs",), "16", low=1, high=64
)
SWEEP_RUN_BUDGET_SECONDS = Setting(
    "SWEEP_RUN_BUDGET_SECONDS", Kind.POSITIVE, "no new read after this", ("sweep_jobs",), default="120"
)

SETTINGS: tuple[Setting, ...] = tuple(value for value in globals().values() if isinstance(value, Setting))


def declared(name: str) -> Setting:
    """The declaration of the setting called `name` (KeyError when the app reads no such setting)."""
    for setting in SETTINGS:
        if setting.name == name:
            return setting
    raise KeyError(name)
