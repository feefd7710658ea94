"""The exceptions batch-terminator raises; foreign errors are mapped to these at the boundary."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class TerminatorError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigurationError(TerminatorError):
    """A setting is missing or invalid; names the setting."""

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(f"setting {setting}: {problem}")
        self.setting = setting
        self.problem = problem


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a message: the field and what is wrong with it."""

    key: str
    value: str


class InvalidMessage(TerminatorError):
    """A terminate message broke the schema; carries one Problem per rule broken."""

    def __init__(
        self,
        problems: Sequence[Problem],
        *,
        job_id: str | None = None,
        reason: str | None = None,
        account: str | None = None,
    ) -> None:
        super().__init__("; ".join(f"{p.key}: {p.value}" for p in problems))
        self.problems = tuple(problems)
        self.job_id = job_id
        self.reason = reason
        self.account = account


@dataclass(frozen=True)
class ErrorDetail:
    """What went wrong at Batch (or on the way to it), in BatchError terms."""

    code: str
    message: str
    values: tuple[Problem, ...] = ()
    http_status: int | None = None
    request_id: str | None = None
    client_request_id: str | None = None


@dataclass
class BatchCallFailed(TerminatorError):
    """A terminate call ended without the job reaching the state asked for."""

    detail: ErrorDetail
    attempts: int
    transient: bool

    def __str__(self) -> str:
        status = self.detail.http_status if self.detail.http_status is not None else "-"
        kind = "transient" if self.transient else "permanent"
        return f"{kind} failure {self.detail.code} (HTTP {status}) after {self.attempts} attempt(s)"


class RetryLater(TerminatorError):
    """Raised from the trigger so the host delivers the message again."""


class PoisonWriteFailed(TerminatorError):
    """The poison record could not be written; the message must stay in the trigger queue."""
