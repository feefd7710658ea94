"""Which active jobs an alert or the sweep may stop: one Job - List, Batch's filters server-side, the rest here."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

from shared.batch.jobs import Job
from shared.config import catalog, readers
from shared.contract.errors import ConfigurationError
from shared.contract.terminate_request import JOB_ID_PATTERN, is_job_id
from shared.rules.guards import is_kept

log = logging.getLogger("batch_terminator.selection")

# Job - List's own maximum; the service may still answer with shorter pages and an odata.nextLink.
LIST_PAGE_SIZE = 1000


class JobLister(Protocol):
    """What selection needs from a Batch reader (shared.batch_read.BatchReader)."""

    def list_jobs(self, *, odata_filter: str | None, select: str, page_size: int) -> Iterator[Job]: ...


@dataclass(frozen=True)
class JobSelector:
    """Conditions an active job must all meet: id prefix, pool, one metadata pair (each optional)."""

    job_id_prefix: str = ""
    pool_id: str | None = None
    metadata: tuple[str, str] | None = None

    @property
    def configured(self) -> bool:
        """Whether any condition is set (an alert without one selects nothing: 400 NoJobId)."""
        return bool(self.job_id_prefix) or self.pool_id is not None or self.metadata is not None

    def odata_filter(self) -> str:
        """The server-side part: Batch filters Job - List on state and on id with startswith."""
        # The prefix holds only Batch id characters (checked when read), so it needs no OData quoting.
        terms = ["state eq 'active'"]
        if self.job_id_prefix:
            terms.append(f"startswith(id,'{self.job_id_prefix}')")
        # The pool stays client-side: executionInfo/poolId is filterable, but a server filter on it would drop a
        # job whose executionInfo has no poolId while its poolInfo.poolId matches (docs/CONTRACT.md §9's "else").
        return " and ".join(terms)

    def matches(self, job: Job) -> bool:
        """Every condition, checked on the listed job (the server's filter is never taken on trust)."""
        if job.state not in (None, "active") or not is_job_id(job.id):
            return False
        return self.holds_for(job.id, job.pool_id, job.metadata.items())

    def holds_for(self, resource_id: str, pool_id: str | None, metadata: Iterable[tuple[str, str]]) -> bool:
        """Every set condition on an id, its pool and metadata pairs (a job's, or a job schedule's)."""
        # Batch ids (jobs, schedules and pools) are case-insensitive.
        if self.job_id_prefix and not resource_id.casefold().startswith(self.job_id_prefix.casefold()):
            return False
        if self.pool_id is not None and (pool_id or "").casefold() != self.pool_id.casefold():
            return False
        if self.metadata is not None:
            name, value = self.metadata
            # As Azure tags: names compare case-insensitively, values exactly.
            if not any(k.casefold() == name.casefold() and v == value for k, v in metadata):
                return False
        return True

    def describe(self) -> str:
        """The selector as one log fragment."""
        pair = f"{self.metadata[0]}={self.metadata[1]}" if self.metadata else None
        return f"prefix={self.job_id_prefix!r} pool={self.pool_id!r} metadata={pair!r}"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> JobSelector:
        """Read ALERT_SELECT_*; a ConfigurationError names the first bad one."""
        env = os.environ if environ is None else environ
        prefix = readers.job_id_prefix(env, catalog.ALERT_SELECT_JOB_ID_PREFIX)
        pool = readers.text(env, catalog.ALERT_SELECT_POOL_ID)
        if pool is not None and not JOB_ID_PATTERN.fullmatch(pool):
            raise ConfigurationError(
                catalog.ALERT_SELECT_POOL_ID.name, "must be a Batch pool id (letters, digits, - and _, at most 64)"
            )
        raw_pair = readers.raw(env, catalog.ALERT_SELECT_METADATA)
        pair: tuple[str, str] | None = None
        if raw_pair:
            name, equals, value = raw_pair.partition("=")
            if not equals or not name.strip():
                raise ConfigurationError(catalog.ALERT_SELECT_METADATA.name, "must be key=value, e.g. team=render")
            pair = (name.strip(), value.strip())
        return cls(job_id_prefix=prefix, pool_id=pool, metadata=pair)


@dataclass(frozen=True)
class Selection:
    """The jobs a selector picked from one account's listing; kept jobs are neither picked nor counted."""

    jobs: tuple[Job, ...]
    listed: int
    kept: int

    @property
    def job_ids(self) -> list[str]:
        """The picked ids in listing order."""
        return [job.id for job in self.jobs]


def select_jobs(lister: JobLister, selector: JobSelector, *, select: str = "") -> Selection:
    """List the account's active jobs once (paged) and keep those `selector` matches and no one protected."""
    picked: list[Job] = []
    listed = kept = 0
    needed = ("id", "state", "metadata", *(("executionInfo", "poolInfo") if selector.pool_id is not None else ()))
    fields = ",".join(dict.fromkeys(name for name in (*select.split(","), *needed) if name))
    for job in lister.list_jobs(odata_filter=selector.odata_filter(), select=fields, page_size=LIST_PAGE_SIZE):
        listed += 1
        if not selector.matches(job):
            continue
        if is_kept(job.metadata):
            kept += 1
            continue
        picked.append(job)
    return Selection(tuple(picked), listed, kept)
