"""The sweep's policies (SWEEP_*): which active jobs a scheduled run stops, and why."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeVar

from shared.config import catalog, readers
from shared.contract.errors import ConfigurationError

DEFAULT_CONCURRENCY = int(catalog.SWEEP_CONCURRENCY.default_number())
# host.json's functionTimeout is 5 minutes: a run stops reading at 2 and still has time to enqueue what it decided.
DEFAULT_RUN_BUDGET_SECONDS = catalog.SWEEP_RUN_BUDGET_SECONDS.default_number()
MAX_CONCURRENCY = catalog.SWEEP_CONCURRENCY.upper_bound()
T = TypeVar("T")


@dataclass(frozen=True)
class SweepPolicy:
    """Which active jobs the sweep stops (older than max_age_hours, or idle longer than idle_minutes) and how."""

    max_age_hours: float | None = None
    idle_minutes: float | None = None
    job_id_prefix: str = ""
    dry_run: bool = False
    # per run, all accounts together: more matches stop nothing
    max_jobs: int = int(catalog.SWEEP_MAX_JOBS.default_number())
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
            raise ConfigurationError(catalog.SWEEP_ACCOUNTS.name, f"names no configured account: {', '.join(unknown)}")
        return {alias: configured[alias] for alias in self.accounts}

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SweepPolicy:
        """Read the SWEEP_* settings; a ConfigurationError names the first bad one."""
        env = os.environ if environ is None else environ
        accounts = tuple(dict.fromkeys(a.casefold() for a in readers.items(env, catalog.SWEEP_ACCOUNTS)))
        return cls(
            max_age_hours=readers.positive(env, catalog.SWEEP_MAX_AGE_HOURS, "hours"),
            idle_minutes=readers.positive(env, catalog.SWEEP_IDLE_MINUTES, "minutes"),
            job_id_prefix=readers.job_id_prefix(env, catalog.SWEEP_JOB_ID_PREFIX),
            dry_run=readers.boolean(env, catalog.SWEEP_DRY_RUN),
            max_jobs=readers.whole(env, catalog.SWEEP_MAX_JOBS),
            accounts=accounts,
            concurrency=readers.whole(env, catalog.SWEEP_CONCURRENCY),
            run_budget_seconds=readers.positive(env, catalog.SWEEP_RUN_BUDGET_SECONDS, "seconds")
            or DEFAULT_RUN_BUDGET_SECONDS,
        )


@dataclass(frozen=True)
class Match:
    """A job the sweep decided to stop, and why."""

    job_id: str
    reason: str
    account: str = "default"
