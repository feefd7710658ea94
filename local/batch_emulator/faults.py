"""Fault injection: queued faults for any operation, and seeded random fault rates for Job - Terminate.

Operation names are `{resource}.{verb}`, lower case, the verb being the path's last segment where it has one:

    job.list  job.get  job.taskcounts  job.terminate  job.preparationandreleasestatus
    jobschedule.list  jobschedule.get  jobschedule.disable  jobschedule.enable  jobschedule.terminate
    pool.get  pool.resize  pool.stopresize  pool.disableautoscale  pool.enableautoscale
    node.list

`{resource}.*` aims at every operation of a resource, `any` at every operation. The first names the emulator had
stay as aliases: terminate, get, list and taskcounts are job.terminate, job.get, job.list and job.taskcounts.
A fault's id (inject's job_id) is the id in the request's path: a job id, job schedule id or pool id.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

RATE_KINDS = ("server_busy", "throttle", "internal", "drop", "drop_applied", "slow")
# The operations a fault can be aimed at. Fault rates only ever hit job.terminate.
OPERATIONS = (
    "job.list",
    "job.get",
    "job.taskcounts",
    "job.terminate",
    "job.preparationandreleasestatus",
    "jobschedule.list",
    "jobschedule.get",
    "jobschedule.disable",
    "jobschedule.enable",
    "jobschedule.terminate",
    "pool.get",
    "pool.resize",
    "pool.stopresize",
    "pool.disableautoscale",
    "pool.enableautoscale",
    "node.list",
)
ALIASES = {"terminate": "job.terminate", "get": "job.get", "list": "job.list", "taskcounts": "job.taskcounts"}
WILDCARDS = ("any", *sorted({f"{name.split('.')[0]}.*" for name in OPERATIONS}))


def operation_name(operation: str) -> str:
    """The canonical name of an operation, alias or wildcard; ValueError for anything else."""
    name = ALIASES.get(operation, operation)
    if name not in OPERATIONS and name not in WILDCARDS:
        raise ValueError(f"unknown operation {operation!r}; expected one of {(*OPERATIONS, *WILDCARDS, *ALIASES)}")
    return name


def _matches(aimed: str, operation: str) -> bool:
    """Whether a fault aimed at `aimed` (a name or wildcard) hits `operation`."""
    return aimed in (operation, "any") or (aimed.endswith(".*") and operation.startswith(aimed[:-1]))


@dataclass(frozen=True)
class Fault:
    """A misbehaviour to play instead of (or around) the normal terminate answer."""

    kind: Literal["status", "drop", "delay"]
    http_status: int = 0
    code: str = ""
    message: str | None = None
    retry_after: float | None = None
    values: tuple[tuple[str, str], ...] = ()
    seconds: float = 0.0
    apply: bool = False

    @classmethod
    def status(
        cls,
        http_status: int,
        code: str,
        message: str | None = None,
        retry_after: float | None = None,
        values: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
    ) -> Fault:
        """Answer with a BatchError (message defaults to Batch's text for the code)."""
        pairs = tuple(values.items()) if isinstance(values, Mapping) else tuple(values or ())
        return cls("status", http_status, code, message, retry_after, pairs)

    @classmethod
    def authentication(cls, http_status: int = 401) -> Fault:
        """Batch's AuthenticationFailed, as 401 (a rejected bearer token) or 403 (Batch's documented status)."""
        if http_status not in (401, 403):
            raise ValueError("AuthenticationFailed comes as 401 or 403")
        detail = "The access token is invalid, revoked or expired (injected)."
        return cls.status(http_status, "AuthenticationFailed", values={"AuthenticationErrorDetail": detail})

    @classmethod
    def drop(cls, apply: bool = False) -> Fault:
        """Read the request and close the socket unanswered; apply=True terminates first (answer lost)."""
        return cls("drop", apply=apply)

    @classmethod
    def delay(cls, seconds: float, apply: bool = True) -> Fault:
        """Answer normally after `seconds`; apply=True terminates before the wait, False after it."""
        return cls("delay", seconds=seconds, apply=apply)

    @property
    def label(self) -> str:
        """Short description recorded on the request."""
        if self.kind == "status":
            return f"status:{self.http_status} {self.code}"
        suffix = "(applied)" if self.apply else ""
        return f"drop{suffix}" if self.kind == "drop" else f"delay:{self.seconds:g}s{suffix}"


@dataclass
class _Injection:
    """A queued fault with its remaining uses."""

    fault: Fault
    remaining: int
    job_key: str | None
    operation: str


class FaultPlan:
    """Which fault the next terminate request gets; not locked itself (the emulator holds its lock around it)."""

    def __init__(self, seed: int | None = None) -> None:
        self.slow_seconds = 40.0
        self._injections: list[_Injection] = []
        self._rates: dict[str, float] = {}
        self._rng = random.Random(seed)

    def inject(self, fault: Fault, times: int = 1, job_id: str | None = None, operation: str = "terminate") -> None:
        """Give the next `times` requests of `operation` (for the id `job_id` in their path, or any) this fault.

        Queued FIFO; operation: a name of OPERATIONS, an alias, `{resource}.*` or `any` (see the module doc).
        """
        if times < 1:
            raise ValueError("times must be at least 1")
        name = operation_name(operation)
        self._injections.append(_Injection(fault, times, job_id.lower() if job_id else None, name))

    def set_rates(self, rates: Mapping[str, float], seed: int | None = None) -> None:
        """Give each terminate request a random fault with these probabilities (keys: RATE_KINDS)."""
        unknown = set(rates) - set(RATE_KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; expected some of {RATE_KINDS}")
        if any(not 0.0 <= rate <= 1.0 for rate in rates.values()) or sum(rates.values()) > 1.0 + 1e-9:
            raise ValueError("fault rates must each be within 0..1 and sum to at most 1")
        # Fixed kind order, so a seed replays the same faults whatever order the mapping came in.
        self._rates = {kind: float(rates[kind]) for kind in RATE_KINDS if rates.get(kind)}
        if seed is not None:
            self._rng = random.Random(seed)

    def reset(self) -> None:
        """Forget injected faults and fault rates."""
        self._injections.clear()
        self._rates = {}

    def take(self, operation: str, job_id: str | None) -> Fault | None:
        """Pop the first matching injected fault, else (for job.terminate) draw one from the rates."""
        operation = ALIASES.get(operation, operation)
        key = job_id.lower() if job_id else None
        for injection in self._injections:
            if _matches(injection.operation, operation) and injection.job_key in (None, key):
                injection.remaining -= 1
                if injection.remaining == 0:
                    self._injections.remove(injection)
                return injection.fault
        if not self._rates or operation != "job.terminate":
            return None
        draw = self._rng.random()
        for kind, rate in self._rates.items():
            if draw < rate:
                return self._rate_fault(kind)
            draw -= rate
        return None

    def _rate_fault(self, kind: str) -> Fault:
        """The fault a random-rate kind stands for."""
        match kind:
            case "server_busy":
                return Fault.status(503, "ServerBusy")
            case "throttle":
                return Fault.status(429, "TooManyRequests", retry_after=1)
            case "internal":
                return Fault.status(500, "InternalError")
            case "drop":
                return Fault.drop()
            case "drop_applied":
                return Fault.drop(apply=True)
            case _:
                return Fault.delay(self.slow_seconds, apply=True)
