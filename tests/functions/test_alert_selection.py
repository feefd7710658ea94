"""alert_terminate when the alert names no job (docs/CONTRACT.md §9, §10): budgets and common-schema alerts open
an incident at once, without a Batch call; the kill switch's plan then selects the jobs.

Microsoft's own payloads (tests/payloads) are posted as real func.HttpRequests; the incident lands in Azurite's
table and its plan command on Azurite's incident queue; kill_switch.main runs the command against the Batch
emulator (behind the loopback managed-identity endpoint) and the terminate messages land on Azurite.
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
from azure.functions.queue import QueueMessage
from azure.storage.queue import QueueClient

import alert_terminate
import kill_switch
from local.batch_emulator import ODATA_JSON, BatchEmulator, HttpRequest, HttpResponse, JobState
from local.identity import IdentityEndpoint
from shared import wiring
from shared.contract.errors import RetryLater
from shared.contract.incident import Incident
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
    """alert_terminate's and kill_switch's settings: Azurite's queues and table, the emulator as the one account,
    no selector yet."""
    for name in (
        *SELECT_SETTINGS,
        "ALERT_JOB_ID_DIMENSION",
        "ALERT_RULES_ALLOWED",
        "BATCH_ACCOUNTS",
        "KILL_SWITCH_APPROVAL",
        "KILL_SWITCH_SCALE_POOLS",
        "KILL_SWITCH_DISABLE_SCHEDULES",
        "TERMINATE_DRY_RUN",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("BATCH_ACCOUNT_URL", batch.url)
    monkeypatch.setenv("AzureWebJobsStorage", queues.connection_string)
    monkeypatch.setenv("TERMINATE_QUEUE_NAME", queues.trigger)
    monkeypatch.setenv("INCIDENT_QUEUE_NAME", f"{queues.trigger}-ks")
    monkeypatch.setenv("INCIDENT_TABLE_NAME", f"inc{queues.trigger.replace('-', '')}")
    queues.client(f"{queues.trigger}-ks").create_queue()
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


def opened(response: func.HttpResponse) -> str:
    """The incident id of a 202 that opened (or found) an incident."""
    assert response.status_code == 202, answer(response)
    document = answer(response)
    assert set(document) == {"incident", "enqueued"}
    assert document["enqueued"] == []
    return str(document["incident"])


def run_commands(queues: Queues, *, dequeue_count: int = 1) -> int:
    """Deliver the incident queue's commands to kill_switch.main, as the host does; how many ran."""
    client = queues.client(f"{queues.trigger}-ks")
    ran = 0
    for message in client.receive_messages(max_messages=32, visibility_timeout=5):
        kill_switch.main(
            QueueMessage(id=message.id, body=message.content.encode(), dequeue_count=dequeue_count, pop_receipt="p")
        )
        client.delete_message(message)
        ran += 1
    return ran


def incident(incident_id: str) -> Incident:
    found = wiring.current().incident_store().get(incident_id)
    assert found is not None
    return found


def selected(queues: Queues, incident_id: str) -> list[str]:
    """Run the plan; the job ids the incident selected, in listing order (their messages are checked too)."""
    run_commands(queues)
    stored = incident(incident_id)
    assert stored.state.value == "executed", stored.to_document()
    ids = [job.job_id for job in stored.jobs]
    assert sorted(m["jobId"] for m in messages(queues)) == sorted(ids)
    return ids


def add_jobs(batch: BatchEmulator) -> None:
    """An account in mid-incident: render jobs (one protected, one done), and others."""
    batch.add_job("render-1")
    batch.add_job("Render-2")
    batch.add_job("render-keep", metadata={"batch-terminator-keep": "true"})
    batch.add_job("render-done", JobState.COMPLETED)
    batch.add_job("etl-1")


@pytest.mark.parametrize("name", BUDGETS)
def test_a_budget_notification_opens_an_incident_that_stops_the_selected_active_jobs(
    app: Queues, batch: BatchEmulator, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    add_jobs(batch)
    monkeypatch.setenv("ALERT_SELECT_JOB_ID_PREFIX", "RENDER")
    data = payload(name)["data"]
    budget = data.get("BudgetName") or data["alertContext"]["AlertData"]["BudgetName"]

    incident_id = opened(post(payload(name)))

    assert batch.requests == [], "the answer never waits on Batch"
    stored = incident(incident_id)
    assert (stored.state.value, stored.source.value, stored.rule) == ("accepted", "budget", budget)
    assert stored.selectors.prefix == "RENDER", "the ALERT_SELECT_* values in force are recorded"
    assert stored.reason.startswith(f"Budget '{budget}'")
    assert messages(app) == []
    run_commands(app)
    assert [job.job_id for job in incident(incident_id).jobs] == ["render-1", "Render-2"]
    sent = messages(app)
    assert sorted(m["jobId"] for m in sent) == ["Render-2", "render-1"]
    assert all(m["reason"].startswith(f"Budget '{budget}'") and m["incident"] == incident_id for m in sent)
    assert batch.terminations == [], "the kill switch only enqueues"


def test_the_budget_reason_names_the_budget_its_amount_and_threshold(
    app: Queues, batch: BatchEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch.add_job("render-1")
    monkeypatch.setenv("ALERT_SELECT_JOB_ID_PREFIX", "render")

    incident_id = opened(post(payload("budget-test-action.json")))
    run_commands(app)

    [message] = messages(app)
    assert message == {
        "jobId": "render-1",
        "reason": "Budget 'test-budgetName' notification: spent 1111.32 USD, budget 10000 USD, threshold 8000.0",
        "incident": incident_id,
    }


def test_the_same_budget_notification_twice_opens_one_incident(
    app: Queues, batch: BatchEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch.add_job("render-1")
    monkeypatch.setenv("ALERT_SELECT_JOB_ID_PREFIX", "render")
    raw = json.dumps(payload("budget-scenario.json")).encode()

    first = opened(post(raw))
    second = opened(post(raw))
    run_commands(app)

    assert first == second
    assert [m["jobId"] for m in messages(app)] == ["render-1"], "the second plan found it executed: nothing"
    other = payload("budget-scenario.json")
    other["data"]["SpendingAmount"] = "99999"
    assert opened(post(other)) != first, "another notification (other bytes) is another incident"


def test_the_same_alert_delivered_twice_opens_one_incident(
    app: Queues, batch: BatchEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ALERT_SELECT_JOB_ID_PREFIX", "etl")
    fired = payload("common-schema-sample.json")
    fired["data"]["essentials"]["monitorCondition"] = "Fired"
    first = opened(post(fired))
    fired["data"]["customProperties"] = {"note": "the action group retried"}  # other bytes, same alertId

    assert opened(post(fired)) == first
    assert len(wiring.current().incident_store().list_incidents()) == 1
    fired["data"]["essentials"]["firedDateTime"] = "2099-01-01T00:00:00Z"  # fired again later: a new incident
    assert opened(post(fired)) != first


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
    assert run_commands(app) == 0, "nothing is stored"
    assert batch.requests == []


def test_microsofts_resolved_sample_answers_200_with_nothing_enqueued(
    app: Queues, batch: BatchEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_jobs(batch)
    monkeypatch.setenv("ALERT_SELECT_JOB_ID_PREFIX", "render")

    response = post(payload("common-schema-sample.json"))

    assert response.status_code == 200
    assert answer(response) == {"enqueued": []}
    assert messages(app) == []
    assert run_commands(app) == 0


def test_a_fired_common_schema_alert_naming_no_job_selects_with_the_rule_as_reason(
    app: Queues, batch: BatchEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_jobs(batch)
    monkeypatch.setenv("ALERT_SELECT_JOB_ID_PREFIX", "etl")
    fired = payload("common-schema-sample.json")
    fired["data"]["essentials"]["monitorCondition"] = "Fired"

    incident_id = opened(post(fired))

    stored = incident(incident_id)
    assert (stored.source.value, stored.rule) == ("alert", "WCUS-R2-Gen2")
    run_commands(app)
    assert messages(app) == [{"jobId": "etl-1", "reason": "Alert 'WCUS-R2-Gen2' fired (Sev3)", "incident": incident_id}]


def test_metadata_selector_needs_the_pair(app: Queues, batch: BatchEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    batch.add_job("a-1", metadata={"team": "render"})
    batch.add_job("a-2", metadata={"Team": "render"})
    batch.add_job("a-3", metadata={"team": "Render"})
    batch.add_job("a-4", metadata={"team": "render", "batch-terminator-keep": "TRUE"})
    batch.add_job("a-5")
    monkeypatch.setenv("ALERT_SELECT_METADATA", "team=render")

    incident_id = opened(post(payload("batch-account-metric-alert.json")))

    assert selected(app, incident_id) == ["a-1", "a-2"]


def test_all_selectors_must_hold(app: Queues, batch: BatchEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    batch.add_job("render-1", metadata={"team": "render"})
    batch.add_job("render-2", metadata={"team": "etl"})
    batch.add_job("etl-1", metadata={"team": "render"})
    monkeypatch.setenv("ALERT_SELECT_JOB_ID_PREFIX", "render")
    monkeypatch.setenv("ALERT_SELECT_METADATA", "team=render")

    assert selected(app, opened(post(payload("budget-scenario.json")))) == ["render-1"]


def test_more_selected_jobs_than_the_limit_enqueue_nothing_and_log_the_count(
    app: Queues, batch: BatchEmulator, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    for n in range(5):
        batch.add_job(f"render-{n}")
    monkeypatch.setenv("ALERT_SELECT_JOB_ID_PREFIX", "render")
    monkeypatch.setenv("ALERT_MAX_JOBS", "4")
    caplog.set_level(logging.INFO, logger="batch_terminator")

    incident_id = opened(post(payload("budget-scenario.json")))
    run_commands(app)

    refused = incident(incident_id).to_document()
    assert refused["state"] == "refused"
    assert refused["error"]["code"] == "TooManyJobs"
    assert {"key": "count", "value": "5"} in refused["error"]["values"]
    assert {"key": "limit", "value": "4"} in refused["error"]["values"]
    assert messages(app) == []
    [line] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert getattr(line, "code", None) == "TooManyJobs"
    assert "5 jobs" in line.getMessage()
    assert "ALERT_MAX_JOBS=4" in line.getMessage()


def test_the_default_limit_is_100(app: Queues, batch: BatchEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    for n in range(101):
        batch.add_job(f"render-{n}")
    monkeypatch.setenv("ALERT_SELECT_JOB_ID_PREFIX", "render")

    too_many = opened(post(payload("budget-scenario.json")))
    run_commands(app)
    assert incident(too_many).state.value == "refused"
    batch.set_state("render-100", JobState.COMPLETED)
    again = payload("budget-scenario.json")
    again["data"]["SpendingAmount"] = "120"
    assert len(selected(app, opened(post(again)))) == 100


def test_protected_jobs_are_not_counted_against_the_limit(
    app: Queues, batch: BatchEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch.add_job("render-1")
    batch.add_job("render-2")
    batch.add_job("render-3", metadata={"batch-terminator-keep": "true"})
    monkeypatch.setenv("ALERT_SELECT_JOB_ID_PREFIX", "render")
    monkeypatch.setenv("ALERT_MAX_JOBS", "2")

    assert selected(app, opened(post(payload("budget-scenario.json")))) == ["render-1", "render-2"]


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
    assert run_commands(app) == 0
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


def test_an_alert_is_answered_while_batch_is_busy_and_the_plan_waits_for_it(
    app: Queues, identity: IdentityEndpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ALERT_SELECT_JOB_ID_PREFIX", "render")
    with BusyListing(authorize=identity.is_valid) as busy:
        monkeypatch.setenv("BATCH_ACCOUNT_URL", busy.url)
        wiring.install(wiring.Wiring(sleep=lambda _: None))

        incident_id = opened(post(payload("budget-scenario.json")))
        assert busy.requests == []
        with pytest.raises(RetryLater):
            run_commands(app)

    assert incident(incident_id).state.value == "accepted"
    assert messages(app) == []


def test_an_incident_that_cannot_be_stored_is_503_with_retry_after(
    app: Queues, batch: BatchEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ALERT_SELECT_JOB_ID_PREFIX", "render")
    monkeypatch.setenv("INCIDENT_QUEUE_NAME", "no-such-queue")
    wiring.reset()

    response = post(payload("budget-scenario.json"))

    assert response.status_code == 503
    assert response.headers["Retry-After"] == "30"
    assert answer(response)["error"]["code"] == "EnqueueFailed"
    assert batch.requests == []


def test_the_wire_form_of_an_answer_is_exactly_the_contracts(
    app: Queues, batch: BatchEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ALERT_MAX_JOBS", "1")
    alert = payload("batch-account-metric-alert.json")
    alert["data"]["customProperties"] = {"jobIds": "render-1,render-2"}

    document = answer(post(copy.deepcopy(alert)))

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

    assert selected(app, opened(post(payload("budget-scenario.json")))) == ["on-gpu", "auto-gpu", "waiting-gpu"]
    [listing] = [r for r in batch.requests if r.path == "/jobs"]
    assert listing.query["$filter"] == "state eq 'active'", "poolInfo/poolId cannot be filtered server-side"
    assert {"executionInfo", "poolInfo"} <= set(listing.query["$select"].split(","))


def test_the_prefix_is_filtered_by_batch_and_checked_again(
    app: Queues, batch: BatchEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_jobs(batch)
    monkeypatch.setenv("ALERT_SELECT_JOB_ID_PREFIX", "render")

    assert selected(app, opened(post(payload("budget-scenario.json")))) == ["render-1", "Render-2"]

    [listing] = [r for r in batch.requests if r.path == "/jobs"]
    assert listing.query["$filter"] == "state eq 'active' and startswith(id,'render')"
    assert listing.query["maxresults"] == "1000"
