"""The exceptions batch-terminator raises, and Batch's error data; foreign errors are mapped to these at the edge."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class BatchErrorDetail:
    """One key/value pair of a BatchError's `values` (Batch REST: BatchErrorDetail)."""

    key: str
    value: str


@dataclass(frozen=True)
class BatchError:
    """What went wrong at Batch (or on the way to it), in Batch REST's BatchError terms plus the answer's ids."""

    code: str
    message: str
    values: tuple[BatchErrorDetail, ...] = ()
    http_status: int | None = None
    request_id: str | None = None
    client_request_id: str | None = None


def _rebuild(cls: type[BaseException], args: tuple[Any, ...], state: dict[str, Any]) -> BaseException:
    """Unpickle an exception without calling its __init__ (whose signature differs from its args)."""
    exc = cls.__new__(cls)
    exc.args = args
    exc.__dict__.update(state)
    return exc


class TerminatorError(Exception):
    """Base class of every error this package raises on purpose."""

    def __reduce__(self) -> tuple[Any, ...]:
        # Exception's own reduce calls cls(*args), which fails for an __init__ that takes other arguments.
        return (_rebuild, (type(self), self.args, dict(self.__dict__)))


class ConfigurationError(TerminatorError):
    """A setting is missing or invalid; names the setting."""

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(f"setting {setting}: {problem}")
        self.setting = setting
        self.problem = problem


class InvalidMessage(TerminatorError):
    """A terminate message broke the schema; carries one BatchErrorDetail per rule broken."""

    def __init__(
        self,
        problems: Sequence[BatchErrorDetail],
        *,
        job_id: str | None = None,
        reason: str | None = None,
        account: str | None = None,
        incident: str | None = None,
    ) -> None:
        super().__init__("; ".join(f"{p.key}: {p.value}" for p in problems))
        self.problems = tuple(problems)
        self.job_id = job_id
        self.reason = reason
        self.account = account
        self.incident = incident  # the message's valid `incident` field, so its record still names the incident


class BatchCallFailed(TerminatorError):
    """A Batch call ended without the answer asked for."""

    def __init__(self, error: BatchError, *, attempts: int, transient: bool) -> None:
        status = error.http_status if error.http_status is not None else "-"
        kind = "transient" if transient else "permanent"
        super().__init__(f"{kind} failure {error.code} (HTTP {status}) after {attempts} attempt(s)")
        self.error = error
        self.attempts = attempts
        self.transient = transient


class JobRefused(TerminatorError):
    """A guard (docs/CONTRACT.md §5a) refused the message; it ends as a poison record with this error."""

    def __init__(self, error: BatchError) -> None:
        super().__init__(f"{error.code}: {error.message}")
        self.error = error


class RetryLater(TerminatorError):
    """Raised from the trigger so the host delivers the message again."""


class PoisonWriteFailed(TerminatorError):
    """The poison record could not be written; the message must stay in the trigger queue."""


class EnqueueFailed(TerminatorError):
    """The queue did not take the message."""


class IncidentWriteFailed(TerminatorError):
    """The incident table did not take (or give back) an incident; the command must be delivered again."""


class AlertRejected(TerminatorError):
    """An alert request cannot be acted on; carries the HTTP status and a BatchError-like error body."""

    def __init__(self, status: int, code: str, message: str, values: tuple[BatchErrorDetail, ...] = ()) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.values = values

    def document(self) -> dict[str, Any]:
        """The JSON error answer."""
        return {
            "error": {
                "code": self.code,
                "message": self.message,
                "values": [{"key": p.key, "value": p.value} for p in self.values],
            }
        }
