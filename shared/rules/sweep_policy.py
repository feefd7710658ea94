"""The sweep's policies (SWEEP_*): which active jobs a scheduled run stops, and why."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeVar

from shared.config.settings import MAX_SWEEP_CONCURRENCY, int_setting
from shared.contract.errors import ConfigurationError
from shared.rules.selection import job_id_prefix_setting, max_jobs

MAX_AGE_SETTING = "SWEEP_MAX_AGE_HOURS"


IDLE_SETTING = "SWEEP_IDLE_MINUTES"


PREFIX_SETTING = "SWEEP_JOB_ID_PREFIX"


DRY_RUN_SETTING = "SWEEP_DRY_RUN"


MAX_JOBS_SETTING = "SWEEP_MAX_JOBS"


ACCOUNTS_SETTING = "SWEEP_ACCOUNTS"


CONCURRENCY_SETTING = "SWEEP_CONCURRENCY"


BUDGET_SETTING = "SWEEP_RUN_BUDGET_SECONDS"


DEFAULT_CONCURRENCY = 16


# host.json's functionTimeout is 5 minutes: a run stops reading at 2 and still has time to enqueue what it decided.
DEFAULT_RUN_BUDGET_SECONDS = 120.0


MAX_CONCURRENCY = MAX_SWEEP_CONCURRENCY


_TRUE = frozenset({"true", "1", "yes", "on"})


_FALSE = frozenset({"false", "0", "no", "off", ""})

T = TypeVar("T")


@dataclass(frozen=True)
class SweepPolicy:
    """Which active jobs the sweep stops (older than max_age_hours, or idle longer than idle_minutes) and how."""

    max_age_hours: float | None = None
    idle_minutes: float | None = None
    job_id_prefix: str = ""
    dry_run: bool = False
    max_jobs: int = 100  # per run, all accounts together: more matches stop nothing
    accounts: tuple[str, ...] = ()  # aliases to sweep; empty = every configured account
    concurrency: int = DEFAULT_CONCURRENCY  # task-count reads in flight at once
    run_budget_seconds: float = DEFAULT_RUN_BUDGET_SECONDS  # no new read starts after this

    @property
    def enabled(self) -> bool:
        """A sweep runs only when at least one policy that picks jobs is set (the prefix only narrows)."""
        return self.max_age_hours is not None or self.idle_minutes is not None

    def describe(self) -> str:
        """The policy as one log fragment."""
        age = f"{self.max_age_hours:g}h" if self.max_age_hours is not None else "off"
        idle = f"{self.idle_minutes:g}min" if self.idle_minutes is not None else "off"
        accounts = ",".join(self.accounts) or "all"
        return (
            f"max_age={age} idle={idle} prefix={self.job_id_prefix!r} dry_run={str(self.dry_run).lower()}"
            f" max_jobs={self.max_jobs} accounts={accounts} concurrency={self.concurrency}"
            f" run_budget_s={self.run_budget_seconds:g}"
        )

    def pick_accounts(self, configured: Mapping[str, T]) -> dict[str, T]:
        """The accounts to sweep, in SWEEP_ACCOUNTS order (else the configured order); unknown aliases refused."""
        if not self.accounts:
            return dict(configured)
        unknown = [alias for alias in self.accounts if alias not in configured]
        if unknown:
            raise ConfigurationError(ACCOUNTS_SETTING, f"names no configured account: {', '.join(unknown)}")
        return {alias: configured[alias] for alias in self.accounts}

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SweepPolicy:
        """Read the SWEEP_* settings; a ConfigurationError names the first bad one."""
        env = os.environ if environ is None else environ
        prefix = job_id_prefix_setting(env, PREFIX_SETTING)
        raw_dry_run = env.get(DRY_RUN_SETTING, "").strip().lower()
        if raw_dry_run not in _TRUE | _FALSE:
            raise ConfigurationError(DRY_RUN_SETTING, f"must be true or false, got {raw_dry_run!r}")
        accounts = tuple(dict.fromkeys(a.strip().casefold() for a in env.get(ACCOUNTS_SETTING, "").split(",")))
        budget = _positive(env, BUDGET_SETTING, "seconds")
        return cls(
            max_age_hours=_positive(env, MAX_AGE_SETTING, "hours"),
            idle_minutes=_positive(env, IDLE_SETTING, "minutes"),
            job_id_prefix=prefix,
            dry_run=raw_dry_run in _TRUE,
            max_jobs=max_jobs(env, MAX_JOBS_SETTING),
            accounts=tuple(a for a in accounts if a),
            concurrency=int_setting(env, CONCURRENCY_SETTING, DEFAULT_CONCURRENCY, 1, MAX_CONCURRENCY),
            run_budget_seconds=DEFAULT_RUN_BUDGET_SECONDS if budget is None else budget,
        )


@dataclass(frozen=True)
class Match:
    """A job the sweep decided to stop, and why."""

    job_id: str
    reason: str
    account: str = "default"


def _positive(env: Mapping[str, str], name: str, unit: str) -> float | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError as exc:
        raise ConfigurationError(name, f"must be a number of {unit}, got {raw!r}") from exc
    if not math.isfinite(value) or value <= 0:
        raise ConfigurationError(name, f"must be a positive number of {unit}, got {raw!r}")
    return value
