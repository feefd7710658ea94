"""keep_poison over Azurite: what the host moved to its poison queue becomes a never-expiring record (§6)."""

from __future__ import annotations

import base64
import contextlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.functions.timer import TimerRequest
from azure.storage.queue import QueueClient

import keep_poison
from shared import telemetry, wiring
from shared.contract.errors import BatchError
from shared.contract.poison_record import PoisonRecord
from shared.services.keep_poison import HOST_GAVE_UP
from shared.storage.poison_writer import PoisonWriter
from tests.conftest import Exported, Queues

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
NEVER = timedelta(days=365 * 100)


def raw(queues: Queues, name: str) -> QueueClient:
    """The queue's stored text exactly, as the host reads and writes it."""
    return QueueClient.from_connection_string(queues.connection_string, name)


def host_moves(queues: Queues, text: str) -> str:
    """Put `text` on the poison queue the way the host moves a message there: unchanged, default 7-day expiry."""
    client = raw(queues, queues.poison)
    with contextlib.suppress(ResourceExistsError):
        client.create_queue()
    return str(client.send_message(text).id)


def entries(queues: Queues) -> list[tuple[str, datetime]]:
    """(stored text, expiry) of every visible entry of the poison queue."""
    return [(str(m.content), m.expires_on) for m in raw(queues, queues.poison).peek_messages(max_messages=32)]


@pytest.fixture
def keeper_env(function_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.delenv("CONFIRM_QUEUE_NAME", raising=False)
    return function_env


def run() -> None:
    assert keep_poison.main(TimerRequest(past_due=False)) is None


@pytest.mark.usefixtures("keeper_env")
def test_a_host_moved_entry_becomes_a_never_expiring_record_and_the_raw_entry_goes(queues: Queues) -> None:
    original = base64.b64encode(b'{"jobId": "job-1", "reason": "budget"}').decode()
    raw_id = host_moves(queues, original)
    [(_, expiry)] = entries(queues)
    assert expiry - datetime.now(UTC) < timedelta(days=8), "the host's copy keeps the 7-day default"

    run()

    [(text, expires)] = entries(queues)
    assert expires - datetime.now(UTC) > NEVER
    record = json.loads(text)  # the app's poison encoding (host.json messageEncoding none: plain JSON)
    assert record["error"]["code"] == HOST_GAVE_UP
    assert record["error"]["httpStatus"] is None
    assert record["originalMessage"] == original, "the text exactly as the host stored it"
    assert (record["jobId"], record["reason"], record["attempts"], record["messageId"]) == (
        "job-1",
        "budget",
        5,
        raw_id,
    )
    values = {v["key"]: v["value"] for v in record["error"]["values"]}
    assert values["dequeueCount"] == "5"
    assert values["queue"] == queues.poison
    assert {"insertedOn", "expiresOn"} <= set(values)


@pytest.mark.usefixtures("keeper_env")
def test_an_unreadable_entry_is_kept_with_nulls_and_its_text(queues: Queues) -> None:
    host_moves(queues, "not json, not base64!")

    run()

    [(text, _)] = entries(queues)
    record = json.loads(text)
    assert (record["jobId"], record["reason"], record["originalMessage"]) == (None, None, "not json, not base64!")


@pytest.mark.usefixtures("keeper_env")
def test_records_that_never_expire_are_left_as_they_are_and_stay_visible(queues: Queues) -> None:
    writer = wiring.current().poison_writer()
    writer.write(PoisonRecord(BatchError("JobNotFound", "gone", http_status=404), 1, "m-1", b'{"jobId":"ghost"}'))
    before = entries(queues)

    run()
    run()

    after = entries(queues)
    assert after == before, "same text and expiry, visible again when the pass ends"


@pytest.mark.usefixtures("keeper_env")
def test_the_raw_entry_is_not_deleted_when_the_record_cannot_be_written(queues: Queues) -> None:
    raw_text = base64.b64encode(b'{"jobId": "job-2"}').decode()
    host_moves(queues, raw_text)
    unreachable = QueueClient.from_connection_string(
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;"
        "QueueEndpoint=http://127.0.0.1:9/devstoreaccount1;",
        "nowhere-poison",
        retry_total=0,
    )
    wiring.install(wiring.Wiring(poison=PoisonWriter(unreachable)))

    run()

    [(text, expiry)] = entries(queues)
    assert text == raw_text, "still there, unchanged, and visible at once for the next run"
    assert expiry - datetime.now(UTC) < timedelta(days=8)

    wiring.reset()
    run()
    [(text, expiry)] = entries(queues)
    assert json.loads(text)["error"]["code"] == HOST_GAVE_UP
    assert expiry - datetime.now(UTC) > NEVER


@pytest.mark.usefixtures("keeper_env")
def test_a_record_with_an_expiry_is_rewritten_as_itself_without_one(queues: Queues) -> None:
    record = PoisonRecord(BatchError("JobNotFound", "gone", http_status=404), 2, "m-9", b'{"jobId":"ghost"}')
    host_moves(queues, base64.b64encode(record.to_json().encode()).decode())

    run()

    [(text, expiry)] = entries(queues)
    kept = json.loads(text)
    assert (kept["error"]["code"], kept["attempts"], kept["messageId"]) == ("JobNotFound", 2, "m-9")
    assert expiry - datetime.now(UTC) > NEVER


@pytest.mark.usefixtures("keeper_env")
def test_nothing_to_keep_when_the_host_never_made_a_poison_queue(queues: Queues) -> None:
    run()

    with pytest.raises(ResourceNotFoundError):  # the keeper created nothing
        raw(queues, queues.poison).peek_messages()


def test_function_json_is_a_timer_with_a_fixed_schedule() -> None:
    [binding] = json.loads((ROOT / "keep_poison" / "function.json").read_text())["bindings"]
    assert (binding["type"], binding["direction"], binding["name"]) == ("timerTrigger", "in", "timer")
    assert binding["schedule"] == "0 */10 * * * *"
    assert binding["runOnStartup"] is False


@pytest.mark.usefixtures("keeper_env")
def test_a_kept_entry_is_a_finished_poisoned_message_in_the_telemetry(queues: Queues, exported: Exported) -> None:
    raw_id = host_moves(queues, base64.b64encode(b'{"jobId": "job-3"}').decode())

    run()

    [record] = [r for r in exported.records() if r.get("messageId") == raw_id]
    assert (record["outcome"], record["code"], record["jobId"], record["attempt"]) == (
        "poisoned",
        HOST_GAVE_UP,
        "job-3",
        5,
    )
    assert exported.counts(telemetry.POISON_WRITES) == {(("code", HOST_GAVE_UP),): 1}
    assert exported.counts(telemetry.TERMINATIONS) == {(("code", HOST_GAVE_UP), ("outcome", "poisoned")): 1}


@pytest.mark.usefixtures("keeper_env")
def test_an_entry_behind_more_than_a_page_of_records_is_still_kept(queues: Queues) -> None:
    writer = wiring.current().poison_writer()
    for n in range(40):  # more than one receive page (32) of records the keeper must leave alone
        writer.write(PoisonRecord(BatchError("JobNotFound", "gone", http_status=404), 1, f"m-{n}", b"{}"))
    host_moves(queues, base64.b64encode(b'{"jobId": "late-1"}').decode())

    run()

    client = raw(queues, queues.poison)
    texts = [str(m.content) for m in client.receive_messages(messages_per_page=32, max_messages=64)]
    codes = sorted(json.loads(t)["error"]["code"] for t in texts)
    assert codes == ["HostGaveUp"] + ["JobNotFound"] * 40, "all visible again, the late raw entry kept"


def test_a_kill_switch_command_the_host_gave_up_on_is_kept_too(
    queues: Queues, keeper_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # docs/CONTRACT.md §6, §10: a command that failed every delivery (e.g. the incident table refused the write)
    # becomes a never-expiring record beside the others, naming the queue it came from.
    incident_queue = f"{queues.trigger}-ks"
    monkeypatch.setenv("INCIDENT_QUEUE_NAME", incident_queue)
    host_poison = raw(queues, f"{incident_queue}-poison")
    host_poison.create_queue()
    command = '{"incident": "budget-0123456789abcdef0123", "command": "plan"}'
    host_poison.send_message(command)

    run()

    [(text, expires)] = entries(queues)
    assert expires - datetime.now(UTC) > NEVER
    record = json.loads(text)
    assert record["originalMessage"] == command
    assert {v["key"]: v["value"] for v in record["error"]["values"]}["queue"] == f"{incident_queue}-poison"
    assert host_poison.peek_messages() == []
