"""Budget notifications, in both of Microsoft's shapes, read into a budget name, amounts and a reason."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from shared.contract.errors import AlertRejected
from shared.rules.budget import BudgetNotification, is_cost_alert, read_budget_notification, read_cost_alert

PAYLOADS = Path(__file__).resolve().parents[1] / "payloads"


def payload(name: str) -> dict[str, Any]:
    document = json.loads((PAYLOADS / name).read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


def test_the_budget_scenario_sample_names_budget_amounts_and_threshold() -> None:
    notification = read_budget_notification(payload("budget-scenario.json"))

    assert notification == BudgetNotification("BudgetName", spent="100", budget="50", threshold="0.8", unit="USD")
    assert notification.reason() == "Budget 'BudgetName' notification: spent 100 USD, budget 50 USD, threshold 0.8"


def test_the_test_action_sample_is_read_the_same_way() -> None:
    notification = read_budget_notification(payload("budget-test-action.json"))

    assert notification.name == "test-budgetName"
    assert notification.reason() == (
        "Budget 'test-budgetName' notification: spent 1111.32 USD, budget 10000 USD, threshold 8000.0"
    )


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        (
            "common-actual-cost-budget.json",
            "Budget 'Test_actual_cost_budget' (actual cost) notification: spent $11,111.00, budget $50.00,"
            " threshold $25.00",
        ),
        (
            "common-forecasted-budget.json",
            "Budget 'Test_forcasted_budget' (forecasted cost) notification: spent $999.99, budget $50.00,"
            " threshold $50.00",
        ),
    ],
)
def test_common_schema_budgets_are_recognised_and_read(name: str, reason: str) -> None:
    data = payload(name)["data"]

    assert is_cost_alert(data["essentials"], data["alertContext"])
    assert read_cost_alert(data["alertContext"]).reason() == reason


def test_other_common_schema_alerts_are_not_budgets() -> None:
    data = payload("common-schema-sample.json")["data"]

    assert not is_cost_alert(data["essentials"], data["alertContext"])


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"Budget": 50}, "Budget"),
        ({"SpendingAmount": 100.5}, "SpendingAmount"),
        ({"BudgetName": ["a"]}, "BudgetName"),
        ({"BudgetName": ""}, "BudgetName"),
        ({"BudgetName": None}, "BudgetName"),
    ],
)
def test_values_that_are_not_strings_or_a_missing_name_are_400(change: dict[str, Any], key: str) -> None:
    document = payload("budget-scenario.json")
    document["data"].update(change)

    with pytest.raises(AlertRejected) as caught:
        read_budget_notification(document)

    assert (caught.value.status, caught.value.code) == (400, "InvalidAlert")
    assert [v.key for v in caught.value.values] == [key]


def test_data_must_be_an_object() -> None:
    with pytest.raises(AlertRejected) as caught:
        read_budget_notification({"schemaId": "AIP Budget Notification", "data": "x"})

    assert caught.value.code == "InvalidAlert"


def test_a_long_budget_name_still_gives_a_reason_within_the_message_limit() -> None:
    document = payload("budget-scenario.json")
    document["data"]["BudgetName"] = "b" * 2000

    assert len(read_budget_notification(document).reason()) <= 1024
