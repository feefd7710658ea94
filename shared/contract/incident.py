"""An incident (docs/CONTRACT.md §10): one decision to stop work in one Batch account; its commands and states."""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from shared.contract.approval import Approval
from shared.contract.codec import json_type, load_object
from shared.contract.errors import BatchError, BatchErrorDetail, InvalidMessage
from shared.contract.terminate_request import DEFAULT_ACCOUNT, INCIDENT_ID_PATTERN, incident_id_problem


class State(enum.StrEnum):
    """The states of docs/CONTRACT.md §10; the values are the spec's names."""

    ACCEPTED = "accepted"
    REFUSED = "refused"
    AWAITING_APPROVAL = "awaiting_approval"
    EXECUTED = "executed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    UNDONE = "undone"


class Command(enum.StrEnum):
    """The commands kill_switch runs (docs/CONTRACT.md §10)."""

    PLAN = "plan"
    APPROVE = "approve"
    CANCEL = "cancel"
    RETRY = "retry"
    UNDO = "undo"


class Source(enum.StrEnum):
    """Who opened the incident."""

    ALERT = "alert"
    BUDGET = "budget"
    OPERATOR = "operator"


# Why a pool the selected jobs ran on is not scaled (docs/CONTRACT.md §10).
POOL_KEPT = "PoolKept"
POOL_IN_USE = "PoolInUse"
AUTO_POOL = "AutoPool"
# Refusal code of a plan that selected more jobs than ALERT_MAX_JOBS.
TOO_MANY_JOBS = "TooManyJobs"
UNDO_NOTE = (
    "Terminated jobs cannot be restarted (Batch has no such operation): undo re-enabled the job schedules and "
    "restored the pools this incident changed; submit the jobs again to run them."
)


def _time(moment: datetime) -> str:
    """A time as the incident writes it: UTC, ISO 8601 with milliseconds and Z (sorts as text)."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _parse_time(value: object) -> datetime:
    if not isinstance(value, str):
        raise ValueError(f"not a time: {value!r}")
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)


@dataclass(frozen=True)
class Selectors:
    """What an incident selects: an id prefix, a pool, a metadata pair (each optional; all set ones must hold)."""

    prefix: str = ""
    pool: str | None = None
    metadata: tuple[str, str] | None = None  # (name, value)

    @property
    def configured(self) -> bool:
        """Whether any selector is set (an incident without one would select every job: never opened)."""
        return bool(self.prefix) or self.pool is not None or self.metadata is not None

    def to_document(self) -> dict[str, Any]:
        """{"prefix", "pool", "metadata": "name=value"}, null where unset."""
        pair = f"{self.metadata[0]}={self.metadata[1]}" if self.metadata is not None else None
        return {"prefix": self.prefix or None, "pool": self.pool, "metadata": pair}

    @classmethod
    def from_document(cls, document: Mapping[str, Any] | None) -> Selectors:
        """The selectors to_document wrote."""
        document = document or {}
        pair = document.get("metadata")
        metadata: tuple[str, str] | None = None
        if isinstance(pair, str) and "=" in pair:
            name, _, value = pair.partition("=")
            metadata = (name, value)
        return cls(str(document.get("prefix") or ""), document.get("pool") or None, metadata)


@dataclass(frozen=True)
class ActionResult:
    """Batch's answer to the last action on one schedule or pool: HTTP status and Batch's code (null on success)."""

    http_status: int | None
    code: str | None = None

    @property
    def succeeded(self) -> bool:
        """A 2xx answer."""
        return self.http_status is not None and 200 <= self.http_status < 300

    def to_document(self) -> dict[str, Any]:
        """{"httpStatus", "code"}."""
        return {"httpStatus": self.http_status, "code": self.code}

    @classmethod
    def from_document(cls, document: object) -> ActionResult | None:
        """The result to_document wrote, or None."""
        if not isinstance(document, Mapping):
            return None
        status = document.get("httpStatus")
        return cls(status if isinstance(status, int) else None, document.get("code"))


@dataclass(frozen=True)
class PoolBefore:
    """A pool's scale settings as they were before the incident acted on it (Batch's property names on the wire)."""

    enable_auto_scale: bool
    auto_scale_formula: str | None = None
    auto_scale_evaluation_interval: str | None = None  # an ISO 8601 duration, as Batch writes it
    target_dedicated_nodes: int = 0
    target_low_priority_nodes: int = 0

    def to_document(self) -> dict[str, Any]:
        """The five recorded fields by their Batch names."""
        return {
            "enableAutoScale": self.enable_auto_scale,
            "autoScaleFormula": self.auto_scale_formula,
            "autoScaleEvaluationInterval": self.auto_scale_evaluation_interval,
            "targetDedicatedNodes": self.target_dedicated_nodes,
            "targetLowPriorityNodes": self.target_low_priority_nodes,
        }

    @classmethod
    def from_document(cls, document: object) -> PoolBefore | None:
        """The before to_document wrote, or None."""
        if not isinstance(document, Mapping):
            return None
        return cls(
            enable_auto_scale=document.get("enableAutoScale") is True,
            auto_scale_formula=document.get("autoScaleFormula"),
            auto_scale_evaluation_interval=document.get("autoScaleEvaluationInterval"),
            target_dedicated_nodes=int(document.get("targetDedicatedNodes") or 0),
            target_low_priority_nodes=int(document.get("targetLowPriorityNodes") or 0),
        )


@dataclass(frozen=True)
class IncidentJob:
    """A selected job: its id, its pool, and whether its terminate message is on the queue."""

    job_id: str
    pool_id: str | None = None
    enqueued: bool = False

    def to_document(self) -> dict[str, Any]:
        return {"jobId": self.job_id, "poolId": self.pool_id, "enqueued": self.enqueued}


@dataclass(frozen=True)
class IncidentSchedule:
    """A selected job schedule; `disabled`: this incident disabled it (undo enables only those)."""

    job_schedule_id: str
    result: ActionResult | None = None
    disabled: bool = False

    def to_document(self) -> dict[str, Any]:
        return {
            "jobScheduleId": self.job_schedule_id,
            "result": self.result.to_document() if self.result is not None else None,
            "disabled": self.disabled,
        }


@dataclass(frozen=True)
class IncidentPool:
    """A pool the selected jobs ran on: skipped (with the reason) or to scale, its "before" once recorded."""

    pool_id: str
    skipped: str | None = None
    before: PoolBefore | None = None
    result: ActionResult | None = None

    def to_document(self) -> dict[str, Any]:
        return {
            "poolId": self.pool_id,
            "skipped": self.skipped,
            "before": self.before.to_document() if self.before is not None else None,
            "result": self.result.to_document() if self.result is not None else None,
        }


@dataclass(frozen=True)
class Change:
    """One entry of an incident's history: the state it entered, and when."""

    state: State
    at: datetime

    def to_document(self) -> dict[str, Any]:
        return {"state": self.state.value, "at": _time(self.at)}


@dataclass(frozen=True)
class Incident:
    """One incident as stored (docs/CONTRACT.md §10); frozen: every change makes a new one."""

    id: str
    state: State
    source: Source
    account: str
    reason: str
    created_at: datetime
    updated_at: datetime
    rule: str | None = None  # the alert rule or budget name; None for an operator
    selectors: Selectors = Selectors()
    approval: Approval | None = None  # None: KILL_SWITCH_APPROVAL decides when the plan runs
    dry_run: bool = False
    jobs: tuple[IncidentJob, ...] = ()
    schedules: tuple[IncidentSchedule, ...] = ()
    pools: tuple[IncidentPool, ...] = ()
    error: BatchError | None = None  # why it was refused or failed (code, message, values)
    note: str | None = None
    history: tuple[Change, ...] = ()
    # When a delivery first started acting on the plan: a later delivery then knows an earlier one may have acted.
    acting_since: datetime | None = None

    @classmethod
    def open(
        cls,
        incident_id: str,
        *,
        source: Source,
        reason: str,
        selectors: Selectors,
        at: datetime,
        account: str = DEFAULT_ACCOUNT,
        rule: str | None = None,
        approval: Approval | None = None,
    ) -> Incident:
        """A new incident, state `accepted`, with that first change in its history."""
        if not INCIDENT_ID_PATTERN.fullmatch(incident_id):
            raise ValueError(f"not an incident id: {incident_id!r}")
        return cls(
            id=incident_id,
            state=State.ACCEPTED,
            source=source,
            account=account,
            reason=reason,
            created_at=at,
            updated_at=at,
            rule=rule,
            selectors=selectors,
            approval=approval,
            history=(Change(State.ACCEPTED, at),),
        )

    # ---- changes (each returns a new incident)

    def entering(self, state: State, at: datetime, **changes: Any) -> Incident:
        """The incident in `state` from `at`, the change in its history (whether the move is allowed: rules)."""
        return replace(self, state=state, updated_at=at, history=(*self.history, Change(state, at)), **changes)

    def changed(self, at: datetime, **changes: Any) -> Incident:
        """The incident with some fields changed and its state unchanged."""
        return replace(self, updated_at=at, **changes)

    def with_schedule(self, schedule_id: str, at: datetime, **changes: Any) -> Incident:
        """The incident with one schedule's entry changed."""
        schedules = tuple(
            replace(item, **changes) if item.job_schedule_id == schedule_id else item for item in self.schedules
        )
        return replace(self, schedules=schedules, updated_at=at)

    def with_pool(self, pool_id: str, at: datetime, **changes: Any) -> Incident:
        """The incident with one pool's entry changed; a recorded "before" is never replaced."""
        pools = []
        for item in self.pools:
            if item.pool_id == pool_id:
                if item.before is not None:
                    changes = {**changes, "before": item.before}
                item = replace(item, **changes)
            pools.append(item)
        return replace(self, pools=tuple(pools), updated_at=at)

    def pool(self, pool_id: str) -> IncidentPool | None:
        """The pool's entry, or None."""
        return next((item for item in self.pools if item.pool_id == pool_id), None)

    def schedule(self, schedule_id: str) -> IncidentSchedule | None:
        """The schedule's entry, or None."""
        return next((item for item in self.schedules if item.job_schedule_id == schedule_id), None)

    @property
    def pools_to_scale(self) -> tuple[IncidentPool, ...]:
        """The pools not skipped at planning."""
        return tuple(item for item in self.pools if item.skipped is None)

    # ---- wire forms

    def to_document(self) -> dict[str, Any]:
        """The JSON object of `incidents show ID --json` (docs/CONTRACT.md §10), which is also how it is stored."""
        error = self.error
        return {
            "id": self.id,
            "state": self.state.value,
            "source": self.source.value,
            "rule": self.rule,
            "account": self.account,
            "reason": self.reason,
            "selectors": self.selectors.to_document(),
            "approval": self.approval.value if self.approval is not None else None,
            "dryRun": self.dry_run,
            "createdAt": _time(self.created_at),
            "updatedAt": _time(self.updated_at),
            "jobs": [job.to_document() for job in self.jobs],
            "schedules": [schedule.to_document() for schedule in self.schedules],
            "pools": [pool.to_document() for pool in self.pools],
            "error": (
                {
                    "code": error.code,
                    "message": error.message,
                    "values": [{"key": v.key, "value": v.value} for v in error.values],
                }
                if error is not None
                else None
            ),
            "note": self.note,
            "history": [change.to_document() for change in self.history],
            "actingSince": _time(self.acting_since) if self.acting_since is not None else None,
        }

    def summary(self) -> dict[str, Any]:
        """The fields `incidents list --json` shows for each incident."""
        document = self.to_document()
        keys = ("id", "state", "source", "rule", "account", "reason", "dryRun", "createdAt", "updatedAt")
        return {key: document[key] for key in keys} | {
            "jobs": len(self.jobs),
            "schedules": len(self.schedules),
            "pools": len(self.pools_to_scale),
        }

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> Incident:
        """Rebuild an incident from to_document's object; ValueError when it is not one."""
        try:
            error = document.get("error")
            return cls(
                id=str(document["id"]),
                state=State(document["state"]),
                source=Source(document["source"]),
                account=str(document.get("account") or DEFAULT_ACCOUNT),
                reason=str(document.get("reason") or ""),
                created_at=_parse_time(document["createdAt"]),
                updated_at=_parse_time(document["updatedAt"]),
                rule=document.get("rule"),
                selectors=Selectors.from_document(document.get("selectors")),
                approval=Approval(document["approval"]) if document.get("approval") else None,
                dry_run=document.get("dryRun") is True,
                jobs=tuple(
                    IncidentJob(str(item["jobId"]), item.get("poolId"), item.get("enqueued") is True)
                    for item in document.get("jobs") or ()
                ),
                schedules=tuple(
                    IncidentSchedule(
                        str(item["jobScheduleId"]),
                        ActionResult.from_document(item.get("result")),
                        item.get("disabled") is True,
                    )
                    for item in document.get("schedules") or ()
                ),
                pools=tuple(
                    IncidentPool(
                        str(item["poolId"]),
                        item.get("skipped"),
                        PoolBefore.from_document(item.get("before")),
                        ActionResult.from_document(item.get("result")),
                    )
                    for item in document.get("pools") or ()
                ),
                error=(
                    BatchError(
                        str(error.get("code") or ""),
                        str(error.get("message") or ""),
                        tuple(
                            BatchErrorDetail(str(v.get("key")), str(v.get("value"))) for v in error.get("values") or ()
                        ),
                    )
                    if isinstance(error, Mapping)
                    else None
                ),
                note=document.get("note"),
                history=tuple(
                    Change(State(item["state"]), _parse_time(item["at"])) for item in document.get("history") or ()
                ),
                acting_since=_parse_time(document["actingSince"]) if document.get("actingSince") else None,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"not an incident document: {exc}") from exc


@dataclass(frozen=True)
class IncidentCommand:
    """A command message on INCIDENT_QUEUE_NAME: {"incident": id, "command": name}."""

    incident: str
    command: Command

    def to_json(self) -> str:
        """The message text (plain JSON)."""
        return json.dumps({"incident": self.incident, "command": self.command.value}, separators=(",", ":"))

    @classmethod
    def parse(cls, body: bytes | str) -> IncidentCommand:
        """Read a command message (JSON, or base64 of it); raise InvalidMessage naming each problem."""
        document = load_object(body)
        problems: list[BatchErrorDetail] = []
        for key in sorted(document.duplicates & {"incident", "command"}):
            problems.append(BatchErrorDetail(key, "appears more than once"))
        incident = document.get("incident")
        problem = "is required" if incident is None else incident_id_problem(incident)
        if problem:
            problems.append(BatchErrorDetail("incident", problem))
        command = document.get("command")
        names = ", ".join(c.value for c in Command)
        if not isinstance(command, str):
            problems.append(
                BatchErrorDetail(
                    "command", "is required" if command is None else f"must be a string, got {json_type(command)}"
                )
            )
        elif command not in {c.value for c in Command}:
            problems.append(BatchErrorDetail("command", f"must be one of {names}"))
        if problems:
            raise InvalidMessage(problems, incident=incident if isinstance(incident, str) else None)
        assert isinstance(incident, str)
        assert isinstance(command, str)
        return cls(incident, Command(command))
