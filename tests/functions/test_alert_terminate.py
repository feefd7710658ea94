"""alert_terminate: Azure Monitor common-schema alerts and plain bodies in, terminate requests on Azurite out."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest

import alert_terminate
from shared import wiring
from shared.rules.alerts import MAX_BODY_BYTES
from tests.conftest import Queues

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

# A metric alert rule on a Batch account's Task Fail Events, split by the jobId dimension.
METRIC_ALERT: dict[str, Any] = {
    "schemaId": "azureMonitorCommonAlertSchema",
    "data": {
        "essentials": {
            "alertId": "/subscriptions/aaaa0a0a-bb1b-cc2c-dd3d-eeeeee4e4e4e/providers/Microsoft.AlertsManagement"
            "/alerts/"
            "b9569717-bc32-442f-add5-83a997729330",
            "alertRule": "batch-task-failures",
            "severity": "Sev2",
            "signalType": "Metric",
            "monitorCondition": "Fired",
            "monitoringService": "Platform",
            "alertTargetIDs": [
                "/subscriptions/aaaa0a0a-bb1b-cc2c-dd3d-eeeeee4e4e4e/resourcegroups/rg-batch/providers/"
                "microsoft.batch/batchaccounts/contosobatch"
            ],
            "configurationItems": ["contosobatch"],
            "originAlertId": "aaaa0a0a-bb1b-cc2c-dd3d-eeeeee4e4e4e_rg-batch_microsoft.insights_metricAlerts_"
            "batch-task-failures_-1488312052",
            "firedDateTime": "2026-11-25T11:58:24.3713213Z",
            "description": "More than 5 failed tasks in 15 minutes",
            "essentialsVersion": "1.0",
            "alertContextVersion": "1.0",
        },
        "alertContext": {
            "properties": None,
            "conditionType": "SingleResourceMultipleMetricCriteria",
            "condition": {
                "windowSize": "PT15M",
                "allOf": [
                    {
                        "metricName": "TaskFailEvent",
                        "metricNamespace": "Microsoft.Batch/batchAccounts",
                        "operator": "GreaterThan",
                        "threshold": "5",
                        "timeAggregation": "Total",
                        "dimensions": [
                            {"name": "poolId", "value": "render-pool"},
                            {"name": "jobId", "value": "nightly-render-42"},
                        ],
                        "metricValue": 12.0,
                        "webTestName": None,
                    }
                ],
                "windowStartTime": "2026-11-25T11:40:03.064Z",
                "windowEndTime": "2026-11-25T11:55:03.064Z",
            },
        },
        "customProperties": None,
    },
}

# A log search alert (scheduled query rule, API 2021-08-01+: "Log Alerts V2") split by a jobId column.
LOG_SEARCH_ALERT: dict[str, Any] = {
    "schemaId": "azureMonitorCommonAlertSchema",
    "data": {
        "essentials": {
            "alertId": "/subscriptions/aaaa0a0a-bb1b-cc2c-dd3d-eeeeee4e4e4e/providers/Microsoft.AlertsManagement"
            "/alerts/"
            "eeeeeeee-4444-5555-6666-ffffffffffff",
            "alertRule": "batch-etl-error-log",
            "severity": "Sev1",
            "signalType": "Log",
            "monitorCondition": "Fired",
            "monitoringService": "Log Alerts V2",
            "alertTargetIDs": [
                "/subscriptions/aaaa0a0a-bb1b-cc2c-dd3d-eeeeee4e4e4e/resourcegroups/rg-batch/providers/"
                "microsoft.operationalinsights/workspaces/law-batch"
            ],
            "configurationItems": ["law-batch"],
            "originAlertId": "22222222-2222-2222-2222-222222222222",
            "firedDateTime": "2026-11-25T12:08:03.626Z",
            "description": "ETL job logs errors",
            "essentialsVersion": "1.0",
            "alertContextVersion": "1.0",
        },
        "alertContext": {
            "properties": {"team": "data-platform"},
            "conditionType": "LogQueryCriteria",
            "condition": {
                "windowSize": "PT10M",
                "allOf": [
                    {
                        "searchQuery": "AppTraces | where SeverityLevel >= 3 | extend jobId = tostring("
                        "Properties.jobId) | summarize errors = count() by jobId",
                        "metricMeasureColumn": "errors",
                        "targetResourceTypes": "['Microsoft.OperationalInsights/workspaces']",
                        "operator": "GreaterThan",
                        "threshold": "10",
                        "timeAggregation": "Total",
                        "dimensions": [{"name": "jobId", "value": "etl-2026-11-25"}],
                        "metricValue": 14.0,
                        "failingPeriods": {"numberOfEvaluationPeriods": 1, "minFailingPeriodsToAlert": 1},
                        "linkToSearchResultsUI": "https://portal.azure.com#@cccc2222-dd33-4444-55ee-666666ffffff/"
                        "blade/Microsoft_Azure_Monitoring_Logs/LogsBlade/source/Alerts.EmailLinks/q/abc/prettify/1",
                        "linkToFilteredSearchResultsUI": "https://portal.azure.com#@cccc2222-dd33-4444-55ee-666666ffffff"
                        "/blade/Microsoft_Azure_Monitoring_Logs/LogsBlade/source/Alerts.EmailLinks/q/def/prettify/1",
                        "linkToSearchResultsAPI": "https://api.loganalytics.io/v1/workspaces/"
                        "dddd3333-ee44-5555-66ff-777777aaaaaa/query?query=AppTraces&timespan=PT10M",
                        "linkToFilteredSearchResultsAPI": "https://api.loganalytics.io/v1/workspaces/"
                        "dddd3333-ee44-5555-66ff-777777aaaaaa/query?query=AppTraces%7C%20where%20jobId&timespan=PT10M",
                    }
                ],
                "windowStartTime": "2026-11-25T11:58:03Z",
                "windowEndTime": "2026-11-25T12:08:03Z",
            },
        },
    },
}

# An activity log alert: no dimensions, so the action's custom properties name the jobs.
ACTIVITY_LOG_ALERT: dict[str, Any] = {
    "schemaId": "azureMonitorCommonAlertSchema",
    "data": {
        "essentials": {
            "alertId": "/subscriptions/aaaa0a0a-bb1b-cc2c-dd3d-eeeeee4e4e4e/providers/Microsoft.AlertsManagement"
            "/alerts/"
            "d4a3b2c1-1111-2222-3333-444455556666",
            "alertRule": "ingest-pool-deleted",
            "severity": "Sev4",
            "signalType": "Activity Log",
            "monitorCondition": "Fired",
            "monitoringService": "Activity Log - Administrative",
            "alertTargetIDs": [
                "/subscriptions/aaaa0a0a-bb1b-cc2c-dd3d-eeeeee4e4e4e/resourcegroups/rg-batch/providers/"
                "microsoft.batch/batchaccounts/contosobatch"
            ],
            "configurationItems": ["contosobatch"],
            "originAlertId": "dddd3333-ee44-5555-66ff-777777aaaaaa_123456789012345678901234567890ab",
            "firedDateTime": "2026-11-25T11:26:21.386Z",
            "description": "The ingest pool was deleted",
            "essentialsVersion": "1.0",
            "alertContextVersion": "1.0",
        },
        "alertContext": {
            "authorization": {
                "action": "Microsoft.Batch/batchAccounts/pools/delete",
                "scope": "/subscriptions/aaaa0a0a-bb1b-cc2c-dd3d-eeeeee4e4e4e/resourceGroups/rg-batch/providers/"
                "Microsoft.Batch/batchAccounts/contosobatch/pools/ingest",
            },
            "channels": "Operation",
            "claims": "{}",
            "caller": "ops@contoso.com",
            "correlationId": "cccc2222-dd33-4444-55ee-666666ffffff",
            "eventSource": "Administrative",
            "eventTimestamp": "2026-11-25T11:26:21.386Z",
            "eventDataId": "dddd3333-ee44-5555-66ff-777777aaaaaa",
            "level": "Informational",
            "operationName": "Microsoft.Batch/batchAccounts/pools/delete",
            "operationId": "bbbbbbbb-1111-2222-3333-cccccccccccc",
            "properties": {
                "eventCategory": "Administrative",
                "entity": "/subscriptions/aaaa0a0a-bb1b-cc2c-dd3d-eeeeee4e4e4e/resourceGroups/rg-batch/providers/"
                "Microsoft.Batch/batchAccounts/contosobatch/pools/ingest",
                "message": "Microsoft.Batch/batchAccounts/pools/delete",
            },
            "status": "Succeeded",
            "subStatus": "",
            "submissionTimestamp": "2026-11-25T11:26:21.386Z",
            "Activity Log Event Description": "",
        },
        "customProperties": {"jobIds": "ingest-a, ingest-b,,ingest-A", "team": "ingest"},
    },
}


def post(body: object, *, method: str = "POST") -> func.HttpResponse:
    """Call the function the way the host does, with a real azure.functions HttpRequest."""
    raw = body if isinstance(body, bytes) else body.encode() if isinstance(body, str) else json.dumps(body).encode()
    request = func.HttpRequest(
        method=method,
        url="/api/alert_terminate",
        body=raw,
        headers={"Content-Type": "application/json", "User-Agent": "IcMBroadcaster/1.0"},
    )
    return alert_terminate.main(request)


def answer(response: func.HttpResponse) -> dict[str, Any]:
    assert response.mimetype == "application/json"
    document = json.loads(response.get_body())
    assert isinstance(document, dict)
    return document


def with_changes(payload: dict[str, Any], **essentials: Any) -> dict[str, Any]:
    changed = copy.deepcopy(payload)
    changed["data"]["essentials"].update(essentials)
    return changed


def test_metric_alert_enqueues_the_job_named_by_the_dimension(trigger: Queues) -> None:
    response = post(METRIC_ALERT)

    assert response.status_code == 202
    assert answer(response) == {"enqueued": ["nightly-render-42"]}
    [request] = trigger.enqueued()
    assert request.job_id == "nightly-render-42"
    assert request.reason == "Alert 'batch-task-failures' fired (Sev2)"
    assert not request.force


def test_log_search_alert_v2_enqueues_the_job_named_by_the_dimension(trigger: Queues) -> None:
    response = post(LOG_SEARCH_ALERT)

    assert response.status_code == 202
    assert answer(response) == {"enqueued": ["etl-2026-11-25"]}
    [request] = trigger.enqueued()
    assert (request.job_id, request.reason) == ("etl-2026-11-25", "Alert 'batch-etl-error-log' fired (Sev1)")


def test_activity_log_alert_takes_job_ids_from_custom_properties_without_duplicates(trigger: Queues) -> None:
    response = post(ACTIVITY_LOG_ALERT)

    assert response.status_code == 202
    assert answer(response) == {"enqueued": ["ingest-a", "ingest-b"]}, "ids are case-insensitive, as in Batch"
    requests = trigger.enqueued()
    # The messages go out a few at a time, and a storage queue keeps no order anyway: the answer has the order.
    assert sorted(r.job_id for r in requests) == ["ingest-a", "ingest-b"]
    assert {r.reason for r in requests} == {"Alert 'ingest-pool-deleted' fired (Sev4)"}


def test_custom_properties_come_before_dimensions(trigger: Queues) -> None:
    payload = copy.deepcopy(METRIC_ALERT)
    payload["data"]["customProperties"] = {"jobId": "render-7", "jobIds": "render-8,render-7"}

    response = post(payload)

    assert answer(response) == {"enqueued": ["render-7", "render-8"]}
    assert sorted(r.job_id for r in trigger.enqueued()) == ["render-7", "render-8"]


def test_log_search_alert_custom_properties_in_the_alert_context_are_read(trigger: Queues) -> None:
    payload = copy.deepcopy(LOG_SEARCH_ALERT)
    payload["data"]["alertContext"]["properties"] = {"jobId": "etl-override"}

    assert answer(post(payload)) == {"enqueued": ["etl-override"]}


def test_dimension_name_comes_from_the_setting(trigger: Queues, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALERT_JOB_ID_DIMENSION", "BatchJob")
    payload = copy.deepcopy(LOG_SEARCH_ALERT)
    payload["data"]["alertContext"]["condition"]["allOf"][0]["dimensions"] = [
        {"name": "jobId", "value": "not-this-one"},
        {"name": "batchjob", "value": "etl-by-setting"},
    ]

    assert answer(post(payload)) == {"enqueued": ["etl-by-setting"]}


def test_every_criterion_of_a_multi_criteria_alert_contributes(trigger: Queues) -> None:
    payload = copy.deepcopy(METRIC_ALERT)
    criteria = payload["data"]["alertContext"]["condition"]["allOf"]
    criteria.append(copy.deepcopy(criteria[0]))
    criteria[1]["dimensions"][1]["value"] = "nightly-render-43"

    assert answer(post(payload)) == {"enqueued": ["nightly-render-42", "nightly-render-43"]}


def test_resolved_alert_answers_200_and_enqueues_nothing(trigger: Queues) -> None:
    response = post(with_changes(METRIC_ALERT, monitorCondition="Resolved", resolvedDateTime="2026-11-25T12:03Z"))

    assert response.status_code == 200
    assert answer(response) == {"enqueued": []}
    assert trigger.enqueued() == []


def test_rule_outside_the_allow_list_is_forbidden(trigger: Queues, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALERT_RULES_ALLOWED", "batch-etl-error-log, ingest-pool-deleted")

    response = post(METRIC_ALERT)

    assert response.status_code == 403
    assert answer(response)["error"]["code"] == "RuleNotAllowed"
    assert trigger.enqueued() == []


def test_rules_in_the_allow_list_act_case_insensitively(trigger: Queues, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALERT_RULES_ALLOWED", "Batch-Task-Failures,ingest-pool-deleted")

    assert post(METRIC_ALERT).status_code == 202
    assert post(with_changes(METRIC_ALERT, alertRule=None)).status_code == 403
    assert [r.job_id for r in trigger.enqueued()] == ["nightly-render-42"]


def test_plain_body_is_accepted(trigger: Queues) -> None:
    response = post({"jobId": "job-7", "reason": "budget exceeded", "ticket": "INC-1"})

    assert response.status_code == 202
    assert answer(response) == {"enqueued": ["job-7"]}
    [request] = trigger.enqueued()
    assert (request.job_id, request.reason) == ("job-7", "budget exceeded")


def test_plain_body_without_reason_gets_the_default_reason(trigger: Queues) -> None:
    assert post({"jobId": "job-8"}).status_code == 202
    [request] = trigger.enqueued()
    assert request.terminate_reason == "UserTerminate"


def test_reason_is_cut_to_the_message_limit(trigger: Queues) -> None:
    response = post(with_changes(METRIC_ALERT, alertRule="r" * 2000))

    assert response.status_code == 202
    [request] = trigger.enqueued()
    assert len(request.reason) == 1024
    assert request.reason.startswith("Alert 'rrr")


def test_budget_style_alert_without_rule_or_severity_still_has_a_reason(trigger: Queues) -> None:
    payload = with_changes(ACTIVITY_LOG_ALERT, alertRule=None, severity=None)

    assert post(payload).status_code == 202
    assert {r.reason for r in trigger.enqueued()} == {"Alert 'unnamed' fired (no severity)"}


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"not json", "InvalidJson"),
        (b"", "InvalidJson"),
        (b"\xff\xfe{}", "InvalidJson"),
        (b"[" * 20_000, "InvalidJson"),
        ("[1, 2]", "InvalidAlert"),
        ('"nightly-render-42"', "InvalidAlert"),
        ("null", "InvalidAlert"),
        ({"reason": "no job"}, "InvalidAlert"),
        ({"jobId": 42}, "InvalidJobId"),
        ({"jobId": "job-1", "reason": ["x"]}, "InvalidRequest"),
        ({"jobId": "job-1", "reason": "x" * 1025}, "InvalidRequest"),
        ({"schemaId": "AzureMonitorMetricAlert", "data": {}}, "UnsupportedSchema"),
        ({"schemaId": "azureMonitorCommonAlertSchema", "data": []}, "InvalidAlert"),
        ({"schemaId": "azureMonitorCommonAlertSchema", "data": {"alertContext": {}}}, "InvalidAlert"),
        ({"data": {"essentials": {"monitorCondition": "Fired"}}}, "UnsupportedSchema"),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_malformed_bodies_are_400_with_a_json_error(trigger: Queues, body: object, code: str) -> None:
    response = post(body)

    assert response.status_code == 400
    error = answer(response)["error"]
    assert error["code"] == code
    assert error["message"]
    assert isinstance(error["values"], list)
    assert trigger.enqueued() == []


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"monitorCondition": "Acknowledged"}, "InvalidAlert"),
        ({"monitorCondition": None}, "InvalidAlert"),
        ({"alertRule": ["a"]}, "InvalidAlert"),
        ({"severity": 2}, "InvalidAlert"),
    ],
)
def test_bad_essentials_are_400(trigger: Queues, change: dict[str, Any], code: str) -> None:
    response = post(with_changes(METRIC_ALERT, **change))

    assert response.status_code == 400
    assert answer(response)["error"]["code"] == code
    assert trigger.enqueued() == []


@pytest.mark.parametrize(
    "custom",
    [
        "jobId=nightly-render-42",
        {"jobIds": ["a", "b"]},
        {"jobId": {"id": "a"}},
    ],
)
def test_bad_custom_properties_are_400(trigger: Queues, custom: object) -> None:
    payload = copy.deepcopy(METRIC_ALERT)
    payload["data"]["customProperties"] = custom

    assert post(payload).status_code == 400
    assert trigger.enqueued() == []


def test_one_invalid_id_means_nothing_is_enqueued(trigger: Queues) -> None:
    payload = copy.deepcopy(ACTIVITY_LOG_ALERT)
    payload["data"]["customProperties"] = {"jobIds": "good-1,../../pools/ingest,job/terminate,good-2," + "x" * 65}

    response = post(payload)

    assert response.status_code == 400
    error = answer(response)["error"]
    assert error["code"] == "InvalidJobId"
    assert [v["key"] for v in error["values"]] == ["jobId", "jobId", "jobId"]
    assert error["values"][0]["value"].startswith("../../pools/ingest: ")
    assert error["values"][2]["value"] == "x" * 65 + ": must be at most 64 characters, got 65"
    assert trigger.enqueued() == []


def test_dimension_values_are_validated_too(trigger: Queues) -> None:
    payload = copy.deepcopy(METRIC_ALERT)
    payload["data"]["alertContext"]["condition"]["allOf"][0]["dimensions"][1]["value"] = "a b\r\nHost: evil"

    response = post(payload)

    assert response.status_code == 400
    assert answer(response)["error"]["code"] == "InvalidJobId"
    assert trigger.enqueued() == []


def test_fired_alert_naming_no_job_is_400(trigger: Queues) -> None:
    payload = copy.deepcopy(METRIC_ALERT)
    payload["data"]["alertContext"]["condition"]["allOf"][0]["dimensions"] = [{"name": "poolId", "value": "p"}]

    response = post(payload)

    assert response.status_code == 400
    error = answer(response)["error"]
    assert error["code"] == "NoJobId"
    assert "jobId" in error["message"]


def test_too_many_job_ids_are_refused(trigger: Queues) -> None:
    payload = copy.deepcopy(ACTIVITY_LOG_ALERT)
    payload["data"]["customProperties"] = {"jobIds": ",".join(f"j{n}" for n in range(101))}

    response = post(payload)

    assert response.status_code == 409, "ALERT_MAX_JOBS (default 100) caps named jobs too"
    assert answer(response)["error"]["code"] == "TooManyJobs"
    assert trigger.enqueued() == []


def test_body_over_64_kib_is_413(trigger: Queues) -> None:
    padded = copy.deepcopy(METRIC_ALERT)
    padded["data"]["essentials"]["description"] = ""
    size = len(json.dumps(padded).encode())
    padded["data"]["essentials"]["description"] = "d" * (MAX_BODY_BYTES - size + 1)
    body = json.dumps(padded).encode()
    assert len(body) == MAX_BODY_BYTES + 1

    response = post(body)

    assert response.status_code == 413
    assert answer(response)["error"]["code"] == "RequestBodyTooLarge"
    assert trigger.enqueued() == []
    padded["data"]["essentials"]["description"] = "d" * (MAX_BODY_BYTES - size)
    assert post(padded).status_code == 202, "exactly 64 KiB is still accepted"


def test_only_post_is_served(trigger: Queues) -> None:
    response = post(b"", method="GET")

    assert response.status_code == 405
    assert response.headers["Allow"] == "POST"


def test_queue_failure_is_503_so_the_action_group_retries(
    trigger: Queues, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("TERMINATE_QUEUE_NAME", "no-such-queue")

    response = post(METRIC_ALERT)

    assert response.status_code == 503
    assert response.headers["Retry-After"] == "30"
    document = answer(response)
    assert document["error"]["code"] == "EnqueueFailed"
    assert set(document) == {"error"}
    assert document["error"]["values"] == [{"key": "enqueued", "value": ""}]
    assert any("enqueue failed" in r.getMessage() for r in caplog.records)


def test_missing_settings_are_a_500_without_details(trigger: Queues, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TERMINATE_QUEUE_NAME")

    response = post(METRIC_ALERT)

    assert response.status_code == 500
    assert answer(response)["error"] == {
        "code": "ConfigurationError",
        "message": "the function app is misconfigured; see its logs",
        "values": [],
    }


def test_the_queue_client_is_created_once_per_process(trigger: Queues) -> None:
    assert post(METRIC_ALERT).status_code == 202
    first = wiring.current().terminate_queue()
    assert post(LOG_SEARCH_ALERT).status_code == 202
    assert wiring.current().terminate_queue() is first
    assert len(trigger.enqueued()) == 2


@pytest.mark.usefixtures("no_sleep")
def test_function_json_is_a_function_key_post_trigger() -> None:
    bindings = json.loads((ROOT / "alert_terminate" / "function.json").read_text())["bindings"]
    trigger_binding = next(b for b in bindings if b["type"] == "httpTrigger")
    assert trigger_binding["authLevel"] == "function"
    assert trigger_binding["methods"] == ["post"]
    assert "route" not in trigger_binding, "default route: /api/alert_terminate"
    assert {"type": "http", "direction": "out", "name": "$return"} in bindings
