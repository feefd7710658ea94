"""Cost Management budget notifications: the action group's own schema and the common-schema CostAlerts form."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from shared.contract.codec import json_type
from shared.contract.errors import AlertRejected, BatchErrorDetail
from shared.contract.terminate_request import MAX_REASON_LENGTH

# Budgets send their own schema to an action group's webhook, or with the common schema enabled a CostAlerts alert
# (docs/CONTRACT.md §9). Both shapes as Microsoft documents them: tests/payloads/README.md names the pages.
BUDGET_SCHEMA_ID = "AIP Budget Notification"
COST_ALERTS_SERVICE = "CostAlerts"
_SHOWN = 80


@dataclass(frozen=True)
class BudgetNotification:
    """One budget threshold crossed: the budget's name and the amounts, as the notification wrote them."""

    name: str
    spent: str | None = None
    budget: str | None = None
    threshold: str | None = None
    unit: str | None = None
    threshold_type: str | None = None  # "Actual" or "Forecasted" (common schema only)

    def reason(self) -> str:
        """The terminate reason: the budget by name, what was spent of how much, and the threshold crossed."""
        kind = f" ({self.threshold_type.lower()} cost)" if self.threshold_type else ""
        unit = f" {self.unit}" if self.unit else ""
        amounts = []
        if self.spent:
            amounts.append(f"spent {self.spent}{unit}")
        if self.budget:
            amounts.append(f"budget {self.budget}{unit}")
        if self.threshold:
            # Not suffixed with the unit: older notifications give it as a fraction of the budget ("0.8").
            amounts.append(f"threshold {self.threshold}")
        text = f"Budget '{self.name}'{kind} notification" + (": " + ", ".join(amounts) if amounts else "")
        return text[:MAX_REASON_LENGTH]


def read_budget_notification(document: dict[str, Any]) -> BudgetNotification:
    """`{"schemaId": "AIP Budget Notification", "data": {...}}` (every value a string) → BudgetNotification."""
    data = document.get("data")
    if not isinstance(data, dict):
        raise AlertRejected(400, "InvalidAlert", f"data must be an object, got {json_type(data)}")
    fields = _strings(data, "data", ("BudgetName", "SpendingAmount", "Budget", "NotificationThresholdAmount", "Unit"))
    return BudgetNotification(
        name=_name(fields, "data"),
        spent=fields.get("SpendingAmount"),
        budget=fields.get("Budget"),
        threshold=fields.get("NotificationThresholdAmount"),
        unit=fields.get("Unit"),
    )


def is_cost_alert(essentials: dict[str, Any], context: object) -> bool:
    """Whether a common-schema alert is a budget's (monitoringService CostAlerts, or alertContext AlertData)."""
    if essentials.get("monitoringService") == COST_ALERTS_SERVICE:
        return True
    return isinstance(context, dict) and str(context.get("AlertCategory", "")).casefold() == "budgets"


def read_cost_alert(context: object) -> BudgetNotification:
    """The common-schema form's alertContext.AlertData → BudgetNotification."""
    path = "data.alertContext.AlertData"
    data = context.get("AlertData") if isinstance(context, dict) else None
    if not isinstance(data, dict):
        raise AlertRejected(400, "InvalidAlert", f"{path} must be an object, got {json_type(data)}")
    names = ("BudgetName", "SpentAmount", "BudgetThreshold", "NotificationThresholdAmount", "Unit", "ThresholdType")
    fields = _strings(data, path, names)
    return BudgetNotification(
        name=_name(fields, path),
        spent=fields.get("SpentAmount"),
        budget=fields.get("BudgetThreshold"),
        threshold=fields.get("NotificationThresholdAmount"),
        # The amounts already carry the currency sign ("$25.00"); Unit would only repeat it.
        unit=None,
        threshold_type=fields.get("ThresholdType"),
    )


def _strings(data: dict[str, Any], path: str, names: tuple[str, ...]) -> dict[str, str]:
    """The named fields that are present, each required to be a string (budgets send every value as one)."""
    found: dict[str, str] = {}
    problems: list[BatchErrorDetail] = []
    for name in names:
        value = data.get(name)
        if value is None:
            continue
        if not isinstance(value, str):
            problems.append(BatchErrorDetail(name, f"must be a string, got {json_type(value)}"))
            continue
        found[name] = value.strip()[: _SHOWN * 2]
    if problems:
        raise AlertRejected(400, "InvalidAlert", f"{path}: {len(problems)} field(s) are not strings", tuple(problems))
    return found


def _name(fields: dict[str, str], path: str) -> str:
    name = fields.get("BudgetName", "")
    if not name:
        raise AlertRejected(
            400, "InvalidAlert", f"{path}.BudgetName is required", (BatchErrorDetail("BudgetName", json.dumps(None)),)
        )
    return name
