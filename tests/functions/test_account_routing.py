"""Two Batch accounts (two emulators): alerts route by alertTargetIDs, the sweep covers each (docs/CONTRACT.md §9)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest
from azure.functions.queue import QueueMessage
from azure.functions.timer import TimerRequest
from azure.storage.queue import QueueClient

import alert_terminate
import kill_switch
import sweep_jobs
import terminate_job
from local.batch_emulator import BatchEmulator, JobState
from local.identity import IdentityEndpoint
from shared import wiring
from shared.contract.terminate_request import TerminateRequest
from tests.conftest import MessageFactory, Queues

pytestmark = pytest.mark.integration

PAYLOADS = Path(__file__).resolve().parents[1] / "payloads"
OLD = datetime.now(UTC) - timedelta(hours=3)


@pytest.fixture
def second(identity: IdentityEndpoint) -> Iterator[BatchEmulator]:
    """Another account, reached as http://localhost:<port>: its host's first label is `localhost`."""
    with BatchEmulator(authorize=identity.is_valid) as emulator:
        yield emulator


@pytest.fixture
def two_accounts(
    monkeypatch: pytest.MonkeyPatch, queues: Queues, batch: BatchEmulator, second: BatchEmulator
) -> Iterator[Queues]:
    for name in (
        "ALERT_SELECT_JOB_ID_PREFIX",
        "ALERT_SELECT_POOL_ID",
        "ALERT_SELECT_METADATA",
        "ALERT_MAX_JOBS",
        "ALERT_RULES_ALLOWED",
        "SWEEP_ACCOUNTS",
        "SWEEP_MAX_AGE_HOURS",
        "SWEEP_JOB_ID_PREFIX",
        "SWEEP_DRY_RUN",
        "POISON_QUEUE_NAME",
        "BATCH_API_VERSION",
        "KILL_SWITCH_APPROVAL",
        "KILL_SWITCH_SCALE_POOLS",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("BATCH_ACCOUNT_URL", batch.url)
    monkeypatch.setenv("BATCH_ACCOUNTS", f"eu=http://localhost:{second.port}")
    monkeypatch.setenv("AzureWebJobsStorage", queues.connection_string)
    monkeypatch.setenv("TERMINATE_QUEUE_NAME", queues.trigger)
    monkeypatch.setenv("INCIDENT_QUEUE_NAME", f"{queues.trigger}-ks")
    monkeypatch.setenv("INCIDENT_TABLE_NAME", f"inc{queues.trigger.replace('-', '')}")
    queues.client(f"{queues.trigger}-ks").create_queue()
    wiring.install(wiring.Wiring(sleep=lambda _: None))
    yield queues
    wiring.reset()


def post(body: object) -> func.HttpResponse:
    request = func.HttpRequest(method="POST", url="/api/alert_terminate", body=json.dumps(body).encode(), headers={})
    return alert_terminate.main(request)


def about(account_name: str) -> dict[str, Any]:
    """A metric alert on the Batch account `account_name` that names no job."""
    alert = json.loads((PAYLOADS / "batch-account-metric-alert.json").read_text(encoding="utf-8"))
    alert["data"]["essentials"]["alertTargetIDs"] = [
        "/subscriptions/11111111-1111-1111-1111-111111111111/resourceGroups/rg-batch/providers/"
        f"Microsoft.Batch/batchAccounts/{account_name}"
    ]
    assert isinstance(alert, dict)
    return alert


def planned(queues: Queues, response: func.HttpResponse) -> str:
    """The incident a 202 opened, after kill_switch ran its plan command (as the host would deliver it)."""
    assert response.status_code == 202, response.get_body()
    document = json.loads(response.get_body())
    assert document["enqueued"] == []
    client = queues.client(f"{queues.trigger}-ks")
    for message in client.receive_messages(max_messages=32, visibility_timeout=5):
        kill_switch.main(QueueMessage(id=message.id, body=message.content.encode(), dequeue_count=1, pop_receipt="p"))
        client.delete_message(message)
    return str(document["incident"])


def received(queues: Queues) -> list[tuple[TerminateRequest, Any]]:
    client = QueueClient.from_connection_string(queues.connection_string, queues.trigger)
    found = []
    while batch := list(client.receive_messages(max_messages=32, visibility_timeout=60)):
        found.extend((TerminateRequest.parse(m.content), m) for m in batch)
    return found


def test_an_alert_about_the_second_account_selects_there_and_its_messages_name_it(
    two_accounts: Queues,
    batch: BatchEmulator,
    second: BatchEmulator,
    monkeypatch: pytest.MonkeyPatch,
    make_message: MessageFactory,
) -> None:
    batch.add_job("render-1")
    second.add_job("render-1")
    second.add_job("render-2")
    monkeypatch.setenv("ALERT_SELECT_JOB_ID_PREFIX", "render")

    incident = planned(two_accounts, post(about("LOCALHOST")))

    stored = wiring.current().incident_store().get(incident)
    assert stored is not None
    assert stored.account == "eu"
    assert not any(r.path == "/jobs" for r in batch.requests), "only the named account is listed"
    messages = received(two_accounts)
    assert sorted((m.job_id, m.account) for m, _ in messages) == [("render-1", "eu"), ("render-2", "eu")]
    assert {m.incident for m, _ in messages} == {incident}
    for request, raw in messages:
        terminate_job.main(make_message(json.dumps(request.to_message()), message_id=raw.id))
    assert {j.id for j in second.jobs() if j.state is not JobState.ACTIVE} == {"render-1", "render-2"}
    first = batch.job("render-1")
    assert first is not None
    assert first.state is JobState.ACTIVE, "the same id in the other account is untouched"


def test_an_alert_about_an_account_neither_url_names_is_refused(
    two_accounts: Queues, second: BatchEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    second.add_job("render-1")
    monkeypatch.setenv("ALERT_SELECT_JOB_ID_PREFIX", "render")

    response = post(about("contosoeu"))

    assert response.status_code == 400
    assert json.loads(response.get_body())["error"]["code"] == "UnknownAccount"
    assert received(two_accounts) == []
    assert second.requests == [], "no account is listed for an alert about another one"


def test_a_budget_names_no_account_and_acts_on_the_default(
    two_accounts: Queues, batch: BatchEmulator, second: BatchEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch.add_job("render-9")
    second.add_job("render-1")
    monkeypatch.setenv("ALERT_SELECT_JOB_ID_PREFIX", "render")
    budget = json.loads((PAYLOADS / "budget-test-action.json").read_text(encoding="utf-8"))

    planned(two_accounts, post(budget))

    assert [(m.job_id, m.account) for m, _ in received(two_accounts)] == [("render-9", "default")]


def test_a_plain_body_names_its_account_by_alias(two_accounts: Queues) -> None:
    assert post({"jobId": "job-7", "account": "EU"}).status_code == 202
    assert post({"jobId": "job-8", "account": "us"}).status_code == 400

    assert [(m.job_id, m.account) for m, _ in received(two_accounts)] == [("job-7", "eu")]


def test_the_sweep_covers_every_account_or_those_sweep_accounts_names(
    two_accounts: Queues, batch: BatchEmulator, second: BatchEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch.add_job("old-a", creation_time=OLD)
    second.add_job("old-b", creation_time=OLD)
    monkeypatch.setenv("SWEEP_MAX_AGE_HOURS", "1")

    sweep_jobs.main(TimerRequest())

    assert sorted((m.job_id, m.account) for m, _ in received(two_accounts)) == [("old-a", "default"), ("old-b", "eu")]
    monkeypatch.setenv("SWEEP_ACCOUNTS", "eu")
    wiring.install(wiring.Wiring(sleep=lambda _: None))

    sweep_jobs.main(TimerRequest())

    assert [(m.job_id, m.account) for m, _ in received(two_accounts)] == [("old-b", "eu")]
