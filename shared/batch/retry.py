"""What an answer from Batch means (docs/CONTRACT.md §5): the one classification table and the retry policy."""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass


class Verdict(enum.Enum):
    """What an answer from Batch means for the message."""

    SUCCEEDED = "succeeded"
    ALREADY_DONE = "already_terminated"
    REFRESH_TOKEN = "refresh_token"  # noqa: S105 - a verdict name, not a secret
    PERMANENT = "permanent"
    TRANSIENT = "transient"


# docs/CONTRACT.md §5 lives here and nowhere else.
ALREADY_DONE_CODES = frozenset({"JobCompleted", "JobBeingTerminated"})


PERMANENT_STATUSES = frozenset({400, 403, 404, 409, 412, 413})


TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


def classify(status: int, code: str | None) -> Verdict:
    """Map a Batch HTTP status and BatchError code to a verdict."""
    if 200 <= status < 300:
        return Verdict.SUCCEEDED
    if status == 409 and code in ALREADY_DONE_CODES:
        return Verdict.ALREADY_DONE
    if status == 401 or (status == 403 and code == "AuthenticationFailed"):
        # Batch answers a token it cannot authenticate either way; only a fresh token can help.
        return Verdict.REFRESH_TOKEN
    if status in TRANSIENT_STATUSES:
        return Verdict.TRANSIENT
    if status in PERMANENT_STATUSES:
        return Verdict.PERMANENT
    # Outside the documented set: a server-side 5xx may heal, anything else will not.
    return Verdict.TRANSIENT if status >= 500 else Verdict.PERMANENT


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry transient failures inside one invocation."""

    max_attempts: int = 4
    base_delay: float = 0.5
    max_delay: float = 8.0
    retry_after_cap: float = 15.0
    budget_seconds: float = 120.0
    # MSAL answers repeat token requests from a cached failure for 5 s after a 5xx; retrying sooner is wasted.
    credential_delay: float = 5.0

    def delay(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.retry_after_cap)
        ceiling = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
        return ceiling / 2 + rng.uniform(0, ceiling / 2)
