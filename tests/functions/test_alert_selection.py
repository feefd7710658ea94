"""alert_terminate when the alert names no job (docs/CONTRACT.md §9): budgets and common-schema alerts select jobs.

Microsoft's own payloads (tests/payloads) are posted as real func.HttpRequests; the jobs live in the Batch emulator,
behind the loopback managed-identity endpoint; the terminate messages land on Azurite.
"""

from __future__ import annotations

import base64
import copy
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest
from azure.storage.queue import QueueClient

import alert_terminate
from local.batch_emulator import ODATA_JSON, BatchEmulator, HttpRequest, HttpResponse, JobState
from local.identity import IdentityEndpoint
from shared import wiring
from tests.conftest import Queues

pytestmark = pytest.mark.integration

PAYLOADS = Path(__file__).resolve().parents[1] / "payloads"
SELECT_SETTINGS = ("ALERT_SELECT_JOB_ID_PREFIX", "ALERT_SELECT_POOL_ID", "ALERT_SELECT_METADATA", "ALERT_MAX_JOBS")
BUDGETS = ("budget-scenario.json", "budget-test-action.json", "common-actual-cost-budget.json")


def payload(name: str) -> dict[str, Any]:
    document = json.loads((PAYLOADS / name).read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


@pytest.fixture
def app(
    monkeypatch: pytest.MonkeyPatch, queues: Queues, batch: BatchEmulator, identity: IdentityEndpoint
) -> Iterator[Queues]:
    """alert_terminate's settings: Azurite's queue, the emulator as the one account, no selector yet."""
    for name in (*SELECT_SETTINGS, "ALERT_JOB_ID_DIMENSION", "ALERT_RULES_ALLOWED", "BATCH_ACCOUNTS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("BATCH_ACCOUNT_URL", batch.url)
    monkeypatch.setenv("AzureWebJobsStorage", queues.connection_string)
    monkeypatch.setenv("TERMINATE_QUEUE_NAME", queues.trigger)
    wiring.reset()
    yield queues
    wiring.reset()


def post(body: object) -> func.HttpResponse:
    """Call the function as the host does, with a real azure.functions HttpRequest."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = func.HttpRequest(
        method="POST",
        url="/api/alert_terminate",
        body=raw,
        headers={"Content-Type": "application/json; charset=utf-8", "User-Agent": "IcMBroadcaster/1.0"},
    )
    return alert_terminate.main(request)


def answer(response: func.HttpResponse) -> dict[str, Any]:
    assert response.mimetype == "application/json"
    document = json.loads(response.get_body())
    assert isinstance(document, dict)
    return document


def messages(queues: Queues) -> list[dict[str, Any]]:
    """Every terminate message on the trigger queue, decoded as terminate_job reads it."""
    raw = QueueClient.from_connection_string(queues.connection_string, queues.trigger)
    found: list[dict[str, Any]] = []
    while batch := list(raw.receive_messages(max_messages=32, visibility_timeout=60)):
        found.extend(_decoded(m.content) for m in batch)
    return found


def _decoded(content: str) -> dict[str, Any]:
    """A message as JSON text or base64 of it (host.json messageEncoding decides which producers write)."""
    try:
        document = json.loads(content)
    except ValueError:
        document = json.loads(base64.b64decode(content, validate=True))
    assert isinstance(document, dict)
    return document


def add_jobs(batch: BatchEmulator) -> None:
    """An account in mid-incident: render jobs (one protected, one done), and others."""
    batch.add_job("render-1")
    batch.add_job("Render-2")
    batch.add_job("render-keep", metadata={"batch-terminator-keep": "true"})
    batch.add_job("render-done", JobState.COMPLETED)
    batch.add_job("etl-1")


@pytest.mark.parametrize("name", BUDGETS)
def test_a_budget_notification_stops_the_selected_active_jobs(
    app: Queues, batch: BatchEmulator, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    add_jobs(batch)
    monkeypatch.setenv("ALERT_SELECT_JOB_ID_PREFIX", "RENDER")
    data = payload(name)["data"]
    budget = data.get("BudgetName") or data["alertContext"]["AlertData"]["BudgetName"]

    response = post(payload(name))

    assert response.status_code == 202, answer(response)
    assert answer(response) == {"enqueued": ["render-1", "Render-2"]}
    sent = messages(app)
    assert sorted(m["jobId"] for m in sent) == ["Render-2", "render-1"]
    assert all(m["reason"].startswith(f"Budget '{budget}'") for m in sent)
    assert batch.terminations == [], "alert_terminate only enqueues"


def test_the_budget_reason_names_the_budget_its_amount_and_threshold(
    app: Queues, batch: BatchEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch.add_job("render-1")
    monkeypatch.setenv("ALERT_SELECT_JOB_ID_PREFIX", "render")

    assert post(payload("budget-test-action.json")).status_code == 202

    [message] = messages(app)
    assert message == {
        "jobId": "render-1",
        "reason": "Budget 'test-budgetName' notification: spent 1111.32 USD, budget 10000 USD, threshold 8000.0",
    }


def test_every_budget_notification_acts_even_a_repeated_one(
    app: Queues, batch: BatchEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch.add_job("render-1")
    monkeypatch.setenv("ALERT_SELECT_JOB_ID_PREFIX", "render")

    assert post(payload("budget-scenario.json")).status_code == 202
    assert post(payload("budget-scenario.json")).status_code == 202

    assert [m["jobId"] for m in messages(app)] == ["render-1", "render-1"]


@pytest.mark.parametrize("name", [*BUDGETS, "batch-account-metric-alert.json"])
def test_without_a_selector_an_alert_naming_no_job_is_400_no_job_id(
    app: Queues, batch: BatchEmulator, name: str
) -> None:
    add_jobs(batch)

    response = post(payload(name))

    assert response.status_code == 400
    error = answer(response)["error"]
    assert error["code"] == "NoJobId"
    assert "ALERT_SELECT_" in error["message"]
    assert messages(app) == []
    assert not any(r.path == "/jobs" for r in batch.requests), "nothing is listed without a selector"


def test_microsofts_resolved_sample_answers_200_with_nothing_enqueued(
    app: Queues, batch: BatchEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_jobs(batch)
    monkeypatch.setenv("ALERT_SELECT_JOB_ID_PREFIX", "render")

    response = post(payload("common-schema-sample.json"))

    assert response.status_code == 200
    assert answer(response) == {"enqueued": []}
    assert messages(app) == []


def test_a_fired_common_schema_alert_naming_no_job_selects_with_the_rule_as_reason(
    app: Queues, batch: BatchEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_jobs(batch)
    monkeypatch.setenv("ALERT_SELECT_JOB_ID_PREFIX", "etl")
    fired = payload("common-schema-sample.json")
    fired["data"]["essentials"]["monitorCondition"] = "Fired"

    response = post(fired)

    assert response.status_code == 202
    assert answer(response) == {"enqueued": ["etl-1"]}
    assert messages(app) == [{"jobId": "etl-1", "reason": "Alert 'WCUS-R2-Gen2' fired (Sev3)"}]


def test_metadata_selector_needs_the_pair(app: Queues, batch: BatchEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    batch.add_job("a-1", metadata={"team": "render"})
    batch.add_job("a-2", metadata={"Team": "render"})
    batch.add_job("a-3", metadata={"team": "Render"})
    batch.add_job("a-4", metadata={"team": "render", "batch-terminator-keep": "TRUE"})
    batch.add_job("a-5")
    monkeypatch.setenv("ALERT_SELECT_METADATA", "team=render")

    response = post(payload("batch-account-metric-alert.json"))

    assert response.status_code == 202
    assert answer(response) == {"enqueued": ["a-1", "a-2"]}


def test_all_selectors_must_hold(app: Queues, batch: BatchEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    batch.add_job("render-1", metadata={"team": "render"})
    batch.add_job("render-2", metadata={"team": "etl"})
    batch.add_job("etl-1", metadata={"team": "render"})
    monkeypatch.setenv("ALERT_SELECT_JOB_ID_PREFIX", "render")
    monkeypatch.setenv("ALERT_SELECT_METADATA", "team=render")

    assert answer(post(payload("budget-scenario.json"))) == {"enqueued": ["render-1"]}


def test_more_selected_jobs_than_the_limit_enqueue_nothing_and_log_the_count(
    app: Queues, batch: BatchEmulator, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    for n in range(5):
        batch.add_job(f"render-{n}")
    monkeypatch.setenv("ALERT_SELECT_JOB_ID_PREFIX", "render")
    monkeypatch.setenv("ALERT_MAX_JOBS", "4")
    caplog.set_level(logging.INFO, logger="batch_terminator")

    response = post(payload("budget-scenario.json"))

    assert response.status_code == 409
    error = answer(response)["error"]
    assert error["code"] == "TooManyJobs"
    assert {"key": "count", "value": "5"} in error["values"]
    assert messages(app) == []
    [line] = [r for r in caplog.records if r.levelno == logging.ERROR and "TooManyJobs" not in r.getMessage()]
    assert "5 jobs selected" in line.getMessage()
    assert "ALERT_MAX_JOBS=4" in line.getMessage()


def test_the_default_limit_is_100(app: Queues, batch: BatchEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    for n in range(101):
        batch.add_job(f"render-{n}")
    monkeypatch.setenv("ALERT_SELECT_JOB_ID_PREFIX", "render")

    assert post(payload("budget-scenario.json")).status_code == 409
    batch.set_state("render-100", JobState.COMPLETED)
    assert len(answer(post(payload("budget-scenario.json")))["enqueued"]) == 100


def test_protected_jobs_are_not_counted_against_the_limit(
    app: Queues, batch: BatchEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch.add_job("render-1")
    batch.add_job("render-2")
    batch.add_job("render-3", metadata={"batch-terminator-keep": "true"})
    monkeypatch.setenv("ALERT_SELECT_JOB_ID_PREFIX", "render")
    monkeypatch.setenv("ALERT_MAX_JOBS", "2")

    assert answer(post(payload("budget-scenario.json"))) == {"enqueued": ["render-1", "render-2"]}


def test_named_jobs_over_the_limit_are_refused_too(app: Queues, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALERT_MAX_JOBS", "2")
    alert = payload("batch-account-metric-alert.json")
    alert["data"]["customProperties"] = {"jobIds": "a,b,c"}

    response = post(alert)

    assert response.status_code == 409
    assert answer(response)["error"]["code"] == "TooManyJobs"
    assert messages(app) == []


def test_a_budget_outside_the_allowed_rules_is_403(
    app: Queues, batch: BatchEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch.add_job("render-1")
    monkeypatch.setenv("ALERT_SELECT_JOB_ID_PREFIX", "render")
    monkeypatch.setenv("ALERT_RULES_ALLOWED", "other-budget")

    response = post(payload("budget-scenario.json"))

    assert response.status_code == 403
    assert answer(response)["error"]["code"] == "RuleNotAllowed"
    monkeypatch.setenv("ALERT_RULES_ALLOWED", "other-budget,budgetname")
    assert post(payload("budget-scenario.json")).status_code == 202


def test_an_alert_about_an_unconfigured_batch_account_is_400_unknown_account(
    app: Queues, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BATCH_ACCOUNT_URL", "https://fabrikam.westeurope.batch.azure.com")
    alert = payload("batch-account-metric-alert.json")
    alert["data"]["customProperties"] = {"jobId": "render-1"}

    response = post(alert)

    assert response.status_code == 400
    error = answer(response)["error"]
    assert error["code"] == "UnknownAccount"
    assert error["values"] == [{"key": "batchAccount", "value": "contosoeu"}]
    assert messages(app) == []


def test_an_alert_about_the_configured_account_is_taken(app: Queues, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCH_ACCOUNT_URL", "https://ContosoEU.westeurope.batch.azure.com")
    alert = payload("batch-account-metric-alert.json")
    alert["data"]["customProperties"] = {"jobId": "render-1"}

    assert answer(post(alert)) == {"enqueued": ["render-1"]}
    assert messages(app) == [{"jobId": "render-1", "reason": "Alert 'batch-core-minutes-spike' fired (Sev1)"}]


class BusyListing(BatchEmulator):
    """The emulator, answering every Job - List with 503 ServerBusy."""

    def handle(self, request: HttpRequest) -> HttpResponse | None:
        if request.method == "GET" and request.path.rstrip("/") == "/jobs":
            body = {"code": "ServerBusy", "message": {"lang": "en-US", "value": "The server is busy."}}
            return HttpResponse(503, {"Content-Type": ODATA_JSON}, json.dumps(body).encode())
        return super().handle(request)


def test_a_listing_that_batch_keeps_refusing_is_503_with_retry_after(
    app: Queues, identity: IdentityEndpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ALERT_SELECT_JOB_ID_PREFIX", "render")
    with BusyListing(authorize=identity.is_valid) as busy:
        monkeypatch.setenv("BATCH_ACCOUNT_URL", busy.url)
        wiring.install(wiring.Wiring(sleep=lambda _: None))

        response = post(payload("budget-scenario.json"))

    assert response.status_code == 503
    assert response.headers["Retry-After"] == "30"
    error = answer(response)["error"]
    assert error["code"] == "BatchUnavailable"
    assert {"key": "code", "value": "ServerBusy"} in error["values"]
    assert messages(app) == []


def test_the_wire_form_of_an_answer_is_exactly_the_contracts(
    app: Queues, batch: BatchEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch.add_job("render-1")
    monkeypatch.setenv("ALERT_SELECT_JOB_ID_PREFIX", "render")
    monkeypatch.setenv("ALERT_MAX_JOBS", "1")
    batch.add_job("render-2")

    document = answer(post(copy.deepcopy(payload("budget-scenario.json"))))

    assert set(document) == {"error"}
    assert set(document["error"]) == {"code", "message", "values"}
    assert all(set(v) == {"key", "value"} for v in document["error"]["values"])


def test_pool_selector_reads_execution_info_else_pool_info(
    app: Queues, batch: BatchEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch.add_job("on-gpu", pool_id="gpu")  # poolInfo.poolId and executionInfo.poolId, as Batch shows them
    batch.add_job("auto-gpu", execution_pool_id="GPU")  # an auto pool: only executionInfo names it
    batch.add_job("waiting-gpu", pool_id="gpu", execution_pool_id="")  # no executionInfo.poolId yet
    batch.add_job("on-cpu", pool_id="cpu")
    batch.add_job("moved", pool_id="gpu", execution_pool_id="cpu")  # executionInfo wins
    batch.add_job("no-pool")
    monkeypatch.setenv("ALERT_SELECT_POOL_ID", "gpu")

    response = post(payload("budget-scenario.json"))

    assert answer(response) == {"enqueued": ["on-gpu", "auto-gpu", "waiting-gpu"]}
    [listing] = [r for r in batch.requests if r.path == "/jobs"]
    assert listing.query["$filter"] == "state eq 'active'", "poolInfo/poolId cannot be filtered server-side"
    assert {"executionInfo", "poolInfo"} <= set(listing.query["$select"].split(","))


def test_the_prefix_is_filtered_by_batch_and_checked_again(
    app: Queues, batch: BatchEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_jobs(batch)
    monkeypatch.setenv("ALERT_SELECT_JOB_ID_PREFIX", "render")

    assert answer(post(payload("budget-scenario.json"))) == {"enqueued": ["render-1", "Render-2"]}

    [listing] = [r for r in batch.requests if r.path == "/jobs"]
    assert listing.query["$filter"] == "state eq 'active' and startswith(id,'render')"
    assert listing.query["maxresults"] == "1000"
