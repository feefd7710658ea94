"""A loopback Azure Batch service: Job - Terminate plus the job reads a sweep needs, with fault injection."""

from local.batch_emulator.faults import RATE_KINDS, Fault, FaultPlan
from local.batch_emulator.model import (
    DEFAULT_TERMINATE_REASON,
    TASK_COUNT_KEYS,
    Account,
    Job,
    JobOptions,
    JobState,
    RecordedRequest,
    Termination,
)
from local.batch_emulator.service import MAX_RESULTS, MAX_SERVER_TIMEOUT, BatchEmulator
from local.batch_emulator.wire import (
    BATCH_RESOURCE,
    ERROR_MESSAGES,
    ODATA_JSON,
    WWW_AUTHENTICATE,
    http_date,
    iso_time,
    parse_http_date,
)
from local.loopback import HttpRequest, HttpResponse, LoopbackService

__all__ = [
    "BATCH_RESOURCE",
    "DEFAULT_TERMINATE_REASON",
    "ERROR_MESSAGES",
    "MAX_RESULTS",
    "MAX_SERVER_TIMEOUT",
    "ODATA_JSON",
    "RATE_KINDS",
    "TASK_COUNT_KEYS",
    "WWW_AUTHENTICATE",
    "Account",
    "BatchEmulator",
    "Fault",
    "FaultPlan",
    "HttpRequest",
    "HttpResponse",
    "Job",
    "JobOptions",
    "JobState",
    "LoopbackService",
    "RecordedRequest",
    "Termination",
    "http_date",
    "iso_time",
    "parse_http_date",
]
