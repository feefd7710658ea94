"""Alert bodies → what to stop: common-schema alerts, budget notifications and plain {"jobId", "reason"} bodies."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from shared.config import catalog, readers
from shared.contract.codec import json_type
from shared.contract.errors import AlertRejected, BatchErrorDetail, ConfigurationError, InvalidMessage
from shared.contract.terminate_request import MAX_REASON_LENGTH
from shared.rules.accounts import batch_account_names
from shared.rules.budget import (
    BUDGET_SCHEMA_ID,
    BudgetNotification,
    is_cost_alert,
    read_budget_notification,
    read_cost_alert,
)
from shared.rules.selection import JobSelector
from shared.storage.terminate_queue import build_request

COMMON_SCHEMA_ID = "azureMonitorCommonAlertSchema"
DEFAULT_DIMENSION = catalog.ALERT_JOB_ID_DIMENSION.default_text()
MAX_BODY_BYTES = 64 * 1024
FIRED = "Fired"
RESOLVED = "Resolved"
_SHOWN = 80  # characters of a rejected value echoed back


@dataclass(frozen=True)
class AlertSettings:
    """ALERT_JOB_ID_DIMENSION, ALERT_RULES_ALLOWED, the ALERT_SELECT_* selector and ALERT_MAX_JOBS."""

    job_id_dimension: str = DEFAULT_DIMENSION
    rules_allowed: frozenset[str] = frozenset()  # casefolded; empty = every rule
    selector: JobSelector = field(default_factory=JobSelector)
    max_jobs: int = int(catalog.ALERT_MAX_JOBS.default_number())

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> AlertSettings:
        """Read the ALERT_* settings; a ConfigurationError names the first bad one."""
        env = os.environ if environ is None else environ
        dimension = readers.text(env, catalog.ALERT_JOB_ID_DIMENSION) or DEFAULT_DIMENSION
        if len(dimension) > 256:
            raise ConfigurationError(
                catalog.ALERT_JOB_ID_DIMENSION.name, "must be a dimension name (at most 256 characters)"
            )
        rules = frozenset(rule.casefold() for rule in readers.items(env, catalog.ALERT_RULES_ALLOWED))
        return cls(
            job_id_dimension=dimension,
            rules_allowed=rules,
            selector=JobSelector.from_env(env),
            max_jobs=readers.whole(env, catalog.ALERT_MAX_JOBS),
        )

    def allows(self, rule: str | None) -> bool:
        """Whether an alert from this rule (or budget) may terminate jobs (names are case-insensitive)."""
        return not self.rules_allowed or (rule is not None and rule.casefold() in self.rules_allowed)


@dataclass(frozen=True)
class AlertRequest:
    """What one HTTP call asks for: named job ids, or (none named) a selection from the account's active jobs."""

    source: str  # "alert" (common schema), "budget" (either budget form) or "plain"
    monitor_condition: str
    rule: str | None  # the alert rule, or the budget's name
    severity: str | None
    reason: str | None  # the terminate reason of every message
    job_ids: tuple[str, ...] = ()  # validated, de-duplicated; empty = select
    batch_accounts: tuple[str, ...] = ()  # Batch account names in alertTargetIDs (casefolded)
    account: object = None  # a plain body's `account` field, as given
    alert_id: str | None = None  # data.essentials.alertId (common schema): with fired_at, the incident's id
    fired_at: str | None = None  # data.essentials.firedDateTime, as written

    @property
    def fired(self) -> bool:
        """Whether jobs should be stopped (Resolved alerts stop nothing)."""
        return self.monitor_condition == FIRED

    @property
    def selects(self) -> bool:
        """Whether the jobs come from the selector rather than the body."""
        return self.fired and not self.job_ids


def read_alert(body: bytes, settings: AlertSettings) -> AlertRequest:
    """Parse and validate a request body completely; raise AlertRejected (400/403/413) before anything is enqueued."""
    if len(body) > MAX_BODY_BYTES:
        raise AlertRejected(413, "RequestBodyTooLarge", f"the body must be at most {MAX_BODY_BYTES} bytes")
    document = _load(body)
    if document.get("schemaId") == BUDGET_SCHEMA_ID:
        return _budget(read_budget_notification(document), (), settings)
    if "schemaId" in document or "data" in document:
        return _common_alert(document, settings)
    return _plain(document, settings)


def alert_reason(rule: str | None, severity: str | None) -> str:
    """The terminate reason for a fired alert, cut to the message limit."""
    return f"Alert '{rule or 'unnamed'}' fired ({severity or 'no severity'})"[:MAX_REASON_LENGTH]


def _load(body: bytes) -> dict[str, Any]:
    try:
        text = body.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        raise AlertRejected(400, "InvalidJson", f"the body is not UTF-8 (byte {exc.start})") from exc
    if not text.strip():
        raise AlertRejected(400, "InvalidJson", "the body is empty")
    try:
        document = json.loads(text)
    except RecursionError as exc:
        raise AlertRejected(400, "InvalidJson", "the body is nested too deeply") from exc
    except ValueError as exc:
        raise AlertRejected(400, "InvalidJson", f"the body is not JSON ({exc})") from exc
    if not isinstance(document, dict):
        raise AlertRejected(400, "InvalidAlert", f"the body must be a JSON object, got {json_type(document)}")
    return document


def _plain(document: dict[str, Any], settings: AlertSettings) -> AlertRequest:
    """{"jobId": "...", "reason": "...", "account": "..."} from a caller that is not Azure Monitor."""
    job_id = document.get("jobId")
    reason = document.get("reason")
    if job_id is None:
        raise AlertRejected(
            400,
            "InvalidAlert",
            f'expected the Azure Monitor common alert schema (schemaId "{COMMON_SCHEMA_ID}"), a budget notification '
            f'(schemaId "{BUDGET_SCHEMA_ID}") or a {{"jobId": "...", "reason": "..."}} body',
        )
    if reason is not None and not isinstance(reason, str):
        raise AlertRejected(
            400, "InvalidRequest", "reason must be a string", (BatchErrorDetail("reason", json_type(reason)),)
        )
    job_ids = _validated([job_id], reason or None, settings)
    return AlertRequest("plain", FIRED, None, None, reason or None, job_ids, account=document.get("account"))


def _budget(
    notification: BudgetNotification,
    accounts: tuple[str, ...],
    settings: AlertSettings,
    alert_id: str | None = None,
    fired_at: str | None = None,
) -> AlertRequest:
    """A budget names no job: it always selects, and has no Resolved state (every notification acts)."""
    if not settings.allows(notification.name):
        raise AlertRejected(
            403,
            "RuleNotAllowed",
            "this budget is not in ALERT_RULES_ALLOWED",
            (BatchErrorDetail("BudgetName", _show(notification.name)),),
        )
    _require_selector(settings, "a budget notification names no job")
    return AlertRequest(
        "budget",
        FIRED,
        notification.name,
        None,
        notification.reason(),
        batch_accounts=accounts,
        alert_id=alert_id,
        fired_at=fired_at,
    )


def _common_alert(document: dict[str, Any], settings: AlertSettings) -> AlertRequest:
    schema = document.get("schemaId")
    if schema != COMMON_SCHEMA_ID:
        raise AlertRejected(
            400,
            "UnsupportedSchema",
            f'schemaId must be "{COMMON_SCHEMA_ID}" (enable the common alert schema on the action group\'s action) '
            f'or "{BUDGET_SCHEMA_ID}"',
            (BatchErrorDetail("schemaId", _show(schema)),),
        )
    data = _object(document.get("data"), "data")
    essentials = _object(data.get("essentials"), "data.essentials")
    rule = _optional_string(essentials, "alertRule", "data.essentials")
    severity = _optional_string(essentials, "severity", "data.essentials")
    accounts = tuple(batch_account_names(essentials.get("alertTargetIDs")))
    alert_id = _optional_string(essentials, "alertId", "data.essentials") or None
    fired_at = _optional_string(essentials, "firedDateTime", "data.essentials") or None
    context = data.get("alertContext")
    if is_cost_alert(essentials, context):
        # Budgets in the common schema carry no monitorCondition (null): like the budget schema, each one acts.
        return _budget(read_cost_alert(context), accounts, settings, alert_id, fired_at)
    condition = essentials.get("monitorCondition")
    if condition not in (FIRED, RESOLVED):
        raise AlertRejected(
            400,
            "InvalidAlert",
            "data.essentials.monitorCondition must be Fired or Resolved",
            (BatchErrorDetail("monitorCondition", _show(condition)),),
        )
    if not settings.allows(rule):
        raise AlertRejected(
            403,
            "RuleNotAllowed",
            "this alert rule is not in ALERT_RULES_ALLOWED",
            (BatchErrorDetail("alertRule", _show(rule)),),
        )
    reason = alert_reason(rule, severity)
    if condition == RESOLVED:
        return AlertRequest("alert", RESOLVED, rule, severity, reason, batch_accounts=accounts)
    context = context if isinstance(context, dict) else {}
    job_ids = _from_properties(data.get("customProperties"), "data.customProperties")
    if not job_ids:
        # Log search alerts (v2) carry the rule's custom properties in alertContext.properties.
        job_ids = _from_properties(context.get("properties"), "data.alertContext.properties")
    if not job_ids:
        job_ids = list(_from_dimensions(context, settings.job_id_dimension))
    if not job_ids:
        _require_selector(
            settings,
            "the alert names no job: set the custom property jobId or jobIds on the alert rule's action, "
            f"split the alert by the dimension {settings.job_id_dimension!r}, or set ALERT_SELECT_*",
        )
        return AlertRequest(
            "alert", FIRED, rule, severity, reason, batch_accounts=accounts, alert_id=alert_id, fired_at=fired_at
        )
    validated = _validated(job_ids, reason, settings)
    return AlertRequest("alert", FIRED, rule, severity, reason, validated, accounts)


def _require_selector(settings: AlertSettings, message: str) -> None:
    """Without an ALERT_SELECT_* setting, an alert that names no job stops nothing: 400 NoJobId."""
    if not settings.selector.configured:
        raise AlertRejected(
            400,
            "NoJobId",
            f"{message}; no ALERT_SELECT_JOB_ID_PREFIX, ALERT_SELECT_POOL_ID or ALERT_SELECT_METADATA is set",
        )


def _from_properties(properties: object, path: str) -> list[object]:
    """jobId, then jobIds (comma-separated) from a custom-properties object."""
    if properties is None:
        return []
    if not isinstance(properties, dict):
        raise AlertRejected(400, "InvalidAlert", f"{path} must be an object, got {json_type(properties)}")
    found: list[object] = []
    single = properties.get("jobId")
    if single is not None:
        found.append(single)
    several = properties.get("jobIds")
    if several is not None:
        if not isinstance(several, str):
            raise AlertRejected(
                400, "InvalidJobId", f"{path}.jobIds must be a comma-separated string, got {json_type(several)}"
            )
        found.extend(part.strip() for part in several.split(",") if part.strip())
    return found


def _from_dimensions(context: dict[str, Any], name: str) -> Iterator[object]:
    """Values of the dimension `name` in alertContext.condition.allOf[] (metric and log search v2 alerts)."""
    wanted = name.casefold()
    condition = context.get("condition")
    criteria = condition.get("allOf") if isinstance(condition, dict) else None
    for criterion in criteria if isinstance(criteria, list) else []:
        dimensions = criterion.get("dimensions") if isinstance(criterion, dict) else None
        for dimension in dimensions if isinstance(dimensions, list) else []:
            if isinstance(dimension, dict) and str(dimension.get("name", "")).casefold() == wanted:
                yield dimension.get("value")


def _validated(job_ids: list[object], reason: str | None, settings: AlertSettings) -> tuple[str, ...]:
    """Every id checked by the producer API's own rules; any bad id rejects the whole call."""
    unique: dict[str, object] = {}
    for job_id in job_ids:
        # Batch ids are case-insensitive: Job-1 and job-1 are one job.
        key = job_id.casefold() if isinstance(job_id, str) else repr(job_id)
        unique.setdefault(key, job_id)
    if len(unique) > settings.max_jobs:
        raise too_many_jobs(len(unique), settings.max_jobs)
    valid: list[str] = []
    problems: list[BatchErrorDetail] = []
    for job_id in unique.values():
        if not isinstance(job_id, str):
            problems.append(BatchErrorDetail("jobId", f"{_show(job_id)}: must be a string, got {json_type(job_id)}"))
            continue
        try:
            valid.append(build_request(job_id, reason).job_id)
        except InvalidMessage as exc:
            problems.extend(BatchErrorDetail(p.key, f"{_show(job_id)}: {p.value}") for p in exc.problems)
    if problems:
        code = "InvalidJobId" if all(p.key == "jobId" for p in problems) else "InvalidRequest"
        raise AlertRejected(400, code, f"nothing was enqueued: {len(problems)} problem(s), see values", tuple(problems))
    return tuple(valid)


def too_many_jobs(count: int, limit: int) -> AlertRejected:
    """409 TooManyJobs: the blast-radius refusal (nothing is enqueued)."""
    return AlertRejected(
        409,
        "TooManyJobs",
        f"the alert would stop {count} jobs, more than {catalog.ALERT_MAX_JOBS.name}={limit}; nothing was enqueued",
        (BatchErrorDetail("count", str(count)), BatchErrorDetail(catalog.ALERT_MAX_JOBS.name, str(limit))),
    )


def _object(value: object, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise AlertRejected(400, "InvalidAlert", f"{path} must be an object, got {json_type(value)}")
    return value


def _optional_string(container: dict[str, Any], key: str, path: str) -> str | None:
    value = container.get(key)
    if value is not None and not isinstance(value, str):
        raise AlertRejected(400, "InvalidAlert", f"{path}.{key} must be a string, got {json_type(value)}")
    return value


def _show(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= _SHOWN else text[:_SHOWN] + "…"
