"""Guards checked before Job - Terminate (docs/CONTRACT.md §5a): allow-list, force vs api-version, kept jobs."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from shared.config.settings import FORCE_API_VERSION, Settings
from shared.contract.errors import BatchError, BatchErrorDetail, JobRefused
from shared.contract.terminate_request import TerminateRequest

if TYPE_CHECKING:  # the reader comes from wiring; a terminate_job cold start need not load the Job model
    from shared.batch.jobs import JobReader

KEEP_METADATA = "batch-terminator-keep"
# Job - Get with $select: the guards need the state and the metadata, nothing else.
GUARD_SELECT = "id,state,metadata"


class Clearance(enum.Enum):
    """What the guards let the terminator do."""

    TERMINATE = "terminate"
    ALREADY_COMPLETED = "already_completed"  # done, as 409 JobCompleted, without a terminate request
    DRY_RUN = "dry_run"


@dataclass(frozen=True)
class Cleared:
    """The guards' answer, with the Job - Get's request-id when they read the job."""

    clearance: Clearance
    request_id: str | None = None


def is_kept(metadata: Mapping[str, str]) -> bool:
    """Whether a job's metadata marks it as never to be terminated (`batch-terminator-keep` = `true`, any case)."""
    return any(
        name.strip().lower() == KEEP_METADATA and value.strip().lower() == "true" for name, value in metadata.items()
    )


def refusal(request: TerminateRequest, settings: Settings) -> BatchError | None:
    """The error of the first guard that needs no Batch call and refuses the request, or None."""
    prefixes = settings.guards.allowed_job_id_prefixes
    if prefixes and not request.job_id.lower().startswith(prefixes):
        return BatchError(
            "JobNotAllowed",
            "The job id starts with none of TERMINATE_ALLOWED_JOB_ID_PREFIXES.",
            (BatchErrorDetail("jobId", request.job_id),),
        )
    if request.force and not settings.supports_force:
        return BatchError(
            "ForceNotSupported",
            f"force needs BATCH_API_VERSION {FORCE_API_VERSION} or later; the request was not sent.",
            (
                BatchErrorDetail("apiVersion", settings.batch_api_version),
                BatchErrorDetail("minimumApiVersion", FORCE_API_VERSION),
            ),
        )
    return None


class Guards:
    """Runs §5a's checks in the contract's order; raises JobRefused, or BatchCallFailed when the job read fails."""

    def __init__(self, settings: Settings, read_job: JobReader) -> None:
        self._settings = settings
        self._read_job = read_job

    def check(self, request: TerminateRequest, client_request_id: str) -> Cleared:
        """Whether, and how, the request may go on to Job - Terminate."""
        error = refusal(request, self._settings)
        if error is not None:
            raise JobRefused(error)
        request_id: str | None = None
        if self._settings.guards.honor_keep:
            job = self._read_job(request.account, request.job_id, client_request_id, select=GUARD_SELECT)
            request_id = job.request_id
            if is_kept(job.metadata):
                raise JobRefused(
                    BatchError(
                        "JobProtected",
                        f"The job's metadata {KEEP_METADATA} is true (TERMINATE_HONOR_KEEP).",
                        (BatchErrorDetail("jobId", request.job_id), BatchErrorDetail(KEEP_METADATA, "true")),
                    )
                )
            if job.state == "completed":
                return Cleared(Clearance.ALREADY_COMPLETED, request_id)
        if self._settings.guards.dry_run:
            return Cleared(Clearance.DRY_RUN, request_id)
        return Cleared(Clearance.TERMINATE, request_id)
