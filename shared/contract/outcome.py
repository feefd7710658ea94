"""How a message finished (docs/CONTRACT.md §5, §8): the outcome and the one record that describes it."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from shared.contract.terminate_request import is_job_id


class Outcome(enum.Enum):
    """How a message finished; the values are the telemetry's `outcome`."""

    TERMINATED = "terminated"
    ALREADY_TERMINATED = "already_terminated"
    POISONED = "poisoned"
    DRY_RUN = "dry_run"
    CONFIRMED = "confirmed"


@dataclass(frozen=True)
class Result:
    """One finished message: its outcome, Batch's answer (or the poison record's error) and the delivery."""

    outcome: Outcome
    job_id: str | None
    http_status: int | None
    code: str | None
    request_id: str | None
    client_request_id: str | None
    attempt: int = 1
    duration: float = 0.0
    message_id: str | None = None
    account: str | None = None
    # confirmed only: the terminate request to completion, from Batch's state transition times (None: unknown)
    terminating_seconds: float | None = None
    incident: str | None = None  # the incident (docs/CONTRACT.md §10) whose message this was

    def describe(self) -> str:
        """The one log line for this outcome."""
        job = self.job_id
        if job is not None and not is_job_id(job):
            job = repr(job[:100])  # an invalid id is the sender's text: escaped, so it cannot forge log lines
        line = (
            f"terminate job={job} outcome={self.outcome.value} status={self.http_status}"
            f" code={self.code} request_id={self.request_id} client_request_id={self.client_request_id}"
            f" attempt={self.attempt} duration_ms={self.duration * 1000:.0f}"
        )
        if self.outcome is Outcome.CONFIRMED:
            seconds = self.terminating_seconds
            line += f" terminating_ms={'unknown' if seconds is None else f'{seconds * 1000:.0f}'}"
        if self.incident is not None:
            line += f" incident={self.incident}"
        return line
