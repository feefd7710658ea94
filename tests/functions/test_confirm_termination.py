"""Confirmation (docs/CONTRACT.md §5b) end to end: terminate_job schedules checks, confirm_termination runs them."""

from __future__ import annotations

import json
import math
import time
from typing import Any

import pytest
from azure.storage.queue import QueueClient

import confirm_termination
import terminate_job
from local.batch_emulator import BatchEmulator, Fault, JobState
from local.identity import IdentityEndpoint
from ops.__main__ import main as ops_main
from shared import telemetry, wiring
from shared.contract.confirm_check import ConfirmCheck
from shared.contract.errors import ConfigurationError, EnqueueFailed, RetryLater
from tests.conftest import Exported, MessageFactory, Queues, closed_port

pytestmark = pytest.mark.integration


@pytest.fixture
def confirm_queue(monkeypatch: pytest.MonkeyPatch, function_env: dict[str, str], queues: Queues) -> QueueClient:
    """Checks on, one second after a 202, on a fresh confirm queue."""
    name = f"{queues.trigger}-confirm"
    monkeypatch.setenv("CONFIRM_QUEUE_NAME", name)
    monkeypatch.setenv("CONFIRM_AFTER_SECONDS", "1")
    for setting in ("CONFIRM_MAX_CHECKS", "CONFIRM_FORCE"):
        monkeypatch.delenv(setting, raising=False)
    client = QueueClient.from_connection_string(queues.connection_string, name)
    client.create_queue()
    return client


def pending(queue: QueueClient) -> int:
    """Messages on the queue, visible or not."""
    return int(queue.get_queue_properties().approximate_message_count)


def visible_checks(queue: QueueClient, count: int, wait: float = 15.0) -> list[dict[str, Any]]:
    """Wait (bounded) until `count` checks are visible, then read them without removing them."""
    deadline = time.monotonic() + wait
    while True:
        messages = queue.peek_messages(max_messages=32)
        if len(messages) >= count or time.monotonic() > deadline:
            return [json.loads(m.content) for m in messages]
        time.sleep(0.1)


# ---- terminate_job's side


@pytest.mark.usefixtures("no_sleep")
def test_a_202_schedules_one_hidden_check(
    batch: BatchEmulator, make_message: MessageFactory, queues: Queues, confirm_queue: QueueClient
) -> None:
    batch.add_job("job-1")
    terminate_job.main(make_message({"jobId": "job-1", "reason": "budget"}, message_id="orig-1"))
    assert pending(confirm_queue) == 1
    assert confirm_queue.peek_messages() == []  # hidden until CONFIRM_AFTER_SECONDS have passed
    [check] = visible_checks(confirm_queue, 1)
    assert check == {"jobId": "job-1", "account": "default", "reason": "budget", "messageId": "orig-1", "check": 1}


@pytest.mark.usefixtures("no_sleep")
def test_job_being_terminated_schedules_a_check_and_job_completed_does_not(
    batch: BatchEmulator, make_message: MessageFactory, confirm_queue: QueueClient
) -> None:
    batch.add_job("terminating", state=JobState.TERMINATING)
    batch.add_job("completed", state=JobState.COMPLETED)
    terminate_job.main(make_message({"jobId": "terminating"}, message_id="m-1", dequeue_count=2))
    terminate_job.main(make_message({"jobId": "completed"}, message_id="m-2", dequeue_count=2))
    [check] = visible_checks(confirm_queue, 1)
    assert (check["jobId"], check["messageId"], check["check"]) == ("terminating", "m-1", 1)
    assert pending(confirm_queue) == 1


@pytest.mark.usefixtures("no_sleep")
def test_no_check_when_confirmation_is_off(
    monkeypatch: pytest.MonkeyPatch, batch: BatchEmulator, make_message: MessageFactory, confirm_queue: QueueClient
) -> None:
    monkeypatch.setenv("CONFIRM_AFTER_SECONDS", "0")
    batch.add_job("job-1")
    terminate_job.main(make_message({"jobId": "job-1"}))
    assert pending(confirm_queue) == 0


@pytest.mark.usefixtures("no_sleep")
def test_confirmation_on_without_a_confirm_queue_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch, batch: BatchEmulator, make_message: MessageFactory, confirm_queue: QueueClient
) -> None:
    monkeypatch.delenv("CONFIRM_QUEUE_NAME")
    batch.add_job("job-1")
    with pytest.raises(ConfigurationError, match="CONFIRM_QUEUE_NAME"):
        terminate_job.main(make_message({"jobId": "job-1"}))
    assert batch.requests == []


def test_a_failed_check_write_raises_so_the_message_comes_again(
    monkeypatch: pytest.MonkeyPatch,
    batch: BatchEmulator,
    make_message: MessageFactory,
    queues: Queues,
    confirm_queue: QueueClient,
) -> None:
    dead = f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;QueueEndpoint=http://127.0.0.1:{closed_port()}/devstoreaccount1"
    unreachable = QueueClient.from_connection_string(
        dead, confirm_queue.queue_name, connection_timeout=1, retry_total=0
    )
    wiring.install(wiring.Wiring(sleep=lambda _: None, confirm_queue_client=unreachable))
    batch.add_job("job-1")
    with pytest.raises(EnqueueFailed):
        terminate_job.main(make_message({"jobId": "job-1"}))
    assert queues.poison_records() == []


# ---- confirm_termination's side


def check_message(make_message: MessageFactory, check: int = 1, job_id: str = "job-1", **extra: Any):
    text = ConfirmCheck(job_id, "default", "budget", "orig-1", check).to_json()
    return make_message(text, **extra), text


@pytest.mark.usefixtures("no_sleep")
@pytest.mark.parametrize("state", [JobState.COMPLETED, JobState.DELETING])
def test_a_completed_or_deleting_job_is_confirmed(
    batch: BatchEmulator,
    make_message: MessageFactory,
    queues: Queues,
    confirm_queue: QueueClient,
    captured_logs,
    state: JobState,
) -> None:
    batch.add_job("job-1", state=state)
    message, _ = check_message(make_message)
    assert confirm_termination.main(message) is None
    [read] = batch.requests
    assert (read.method, read.path) == ("GET", "/jobs/job-1")
    assert "state" in read.query["$select"].split(",")
    assert pending(confirm_queue) == 0
    assert queues.poison_records() == []
    assert any("outcome=confirmed" in r.getMessage() and "job=job-1" in r.getMessage() for r in captured_logs.records)


@pytest.mark.usefixtures("no_sleep")
def test_a_job_that_no_longer_exists_is_confirmed(
    batch: BatchEmulator, make_message: MessageFactory, queues: Queues, confirm_queue: QueueClient, captured_logs
) -> None:
    message, _ = check_message(make_message, job_id="gone")
    confirm_termination.main(message)
    assert pending(confirm_queue) == 0
    assert queues.poison_records() == []
    assert any("outcome=confirmed" in r.getMessage() and "job=gone" in r.getMessage() for r in captured_logs.records)


@pytest.mark.usefixtures("no_sleep")
def test_a_job_still_terminating_gets_another_check(
    batch: BatchEmulator, make_message: MessageFactory, queues: Queues, confirm_queue: QueueClient
) -> None:
    batch.add_job("job-1", state=JobState.TERMINATING)
    message, _ = check_message(make_message, check=1)
    confirm_termination.main(message)
    [follow_up] = visible_checks(confirm_queue, 1)
    assert follow_up == {"jobId": "job-1", "account": "default", "reason": "budget", "messageId": "orig-1", "check": 2}
    assert [r.method for r in batch.requests] == ["GET"]  # CONFIRM_FORCE is off
    assert queues.poison_records() == []


@pytest.mark.usefixtures("no_sleep")
def test_still_not_done_at_the_last_check_is_a_termination_stuck_record(
    monkeypatch: pytest.MonkeyPatch,
    batch: BatchEmulator,
    make_message: MessageFactory,
    queues: Queues,
    confirm_queue: QueueClient,
) -> None:
    monkeypatch.setenv("CONFIRM_MAX_CHECKS", "3")
    job = batch.add_job("job-1", state=JobState.TERMINATING)
    message, text = check_message(make_message, check=3, dequeue_count=1)
    confirm_termination.main(message)
    [record] = queues.poison_records()
    assert record["error"]["code"] == "TerminationStuck"
    values = {v["key"]: v["value"] for v in record["error"]["values"]}
    assert values["state"] == "terminating"
    assert values["checks"] == "3"
    assert values["stateTransitionTime"].startswith(job.state_transition_time.strftime("%Y-%m-%dT%H:%M:%S"))
    assert record["error"]["httpStatus"] is None
    assert (record["messageId"], record["attempts"], record["originalMessage"]) == ("orig-1", 3, text)
    assert (record["jobId"], record["reason"], record["account"]) == ("job-1", "budget", "default")
    assert pending(confirm_queue) == 0


@pytest.mark.usefixtures("no_sleep")
def test_confirm_force_terminates_once_with_force_at_the_first_check(
    monkeypatch: pytest.MonkeyPatch,
    batch: BatchEmulator,
    make_message: MessageFactory,
    queues: Queues,
    confirm_queue: QueueClient,
    captured_logs,
) -> None:
    monkeypatch.setenv("CONFIRM_FORCE", "true")
    monkeypatch.setenv("BATCH_API_VERSION", "2024-07-01.20.0")
    batch.add_job("job-1", state=JobState.TERMINATING)
    confirm_termination.main(check_message(make_message, check=1)[0])
    posts = [r for r in batch.requests if r.method == "POST"]
    assert len(posts) == 1
    assert posts[0].query["force"] == "true"
    assert [c["check"] for c in visible_checks(confirm_queue, 1)] == [2]
    # Check 2 only reads: the forced terminate ended the job (the emulator, as Batch, lets force end terminating).
    confirm_termination.main(check_message(make_message, check=2)[0])
    assert len([r for r in batch.requests if r.method == "POST"]) == 1
    assert any("outcome=confirmed" in r.getMessage() for r in captured_logs.records)
    assert queues.poison_records() == []


@pytest.mark.usefixtures("no_sleep")
def test_confirm_force_is_not_repeated_after_the_first_check(
    monkeypatch: pytest.MonkeyPatch, batch: BatchEmulator, make_message: MessageFactory, confirm_queue: QueueClient
) -> None:
    monkeypatch.setenv("CONFIRM_FORCE", "true")
    monkeypatch.setenv("BATCH_API_VERSION", "2024-07-01.20.0")
    batch.add_job("job-1", state=JobState.TERMINATING)
    confirm_termination.main(check_message(make_message, check=2)[0])
    assert [r.method for r in batch.requests] == ["GET"]
    assert [c["check"] for c in visible_checks(confirm_queue, 1)] == [3]


@pytest.mark.usefixtures("no_sleep")
def test_confirm_force_needs_an_api_version_with_force(
    monkeypatch: pytest.MonkeyPatch, batch: BatchEmulator, make_message: MessageFactory, confirm_queue: QueueClient
) -> None:
    monkeypatch.setenv("CONFIRM_FORCE", "true")
    monkeypatch.setenv("BATCH_API_VERSION", "2024-02-01.19.0")  # before force (and retiring)
    batch.add_job("job-1", state=JobState.TERMINATING)
    confirm_termination.main(check_message(make_message, check=1)[0])
    assert [r.method for r in batch.requests] == ["GET"]
    assert [c["check"] for c in visible_checks(confirm_queue, 1)] == [2]


def test_a_transient_read_failure_raises_with_attempts_left_and_is_recorded_on_the_last(
    monkeypatch: pytest.MonkeyPatch, make_message: MessageFactory, queues: Queues, confirm_queue: QueueClient
) -> None:
    monkeypatch.setenv("BATCH_ACCOUNT_URL", f"http://127.0.0.1:{closed_port()}")
    wiring.install(wiring.Wiring(sleep=lambda _: None))
    with pytest.raises(RetryLater):
        confirm_termination.main(check_message(make_message, dequeue_count=1)[0])
    assert queues.poison_records() == []
    confirm_termination.main(check_message(make_message, dequeue_count=5)[0])
    [record] = queues.poison_records()
    assert (record["error"]["code"], record["error"]["httpStatus"]) == ("ServiceUnavailable", None)
    assert (record["messageId"], record["jobId"]) == ("orig-1", "job-1")
    assert pending(confirm_queue) == 0


@pytest.mark.usefixtures("no_sleep")
def test_a_confirm_message_that_is_not_one_is_recorded(
    batch: BatchEmulator, make_message: MessageFactory, queues: Queues, confirm_queue: QueueClient
) -> None:
    confirm_termination.main(make_message('{"jobId": "job-1", "check": "first"}', message_id="c-1"))
    [record] = queues.poison_records()
    assert record["error"]["code"] == "InvalidMessage"
    assert [v["key"] for v in record["error"]["values"]] == ["check"]
    assert batch.requests == []


@pytest.mark.usefixtures("no_sleep")
def test_the_whole_chain_over_the_queues(
    batch: BatchEmulator, make_message: MessageFactory, queues: Queues, confirm_queue: QueueClient
) -> None:
    """terminate → check 1 finds it terminating → check 2 finds it completed → confirmed."""
    batch.add_job("job-1")
    terminate_job.main(make_message({"jobId": "job-1"}, message_id="orig-9"))
    batch.set_state("job-1", JobState.TERMINATING)
    for expected in (1, 2):
        message = _receive(confirm_queue)
        assert message is not None, f"check {expected} was scheduled"
        assert json.loads(message.content)["check"] == expected
        if expected == 2:
            batch.set_state("job-1", JobState.COMPLETED)
        confirm_termination.main(make_message(message.content, message_id=message.id))
        confirm_queue.delete_message(message)
    assert pending(confirm_queue) == 0
    assert queues.poison_records() == []


def _receive(queue: QueueClient, wait: float = 15.0):
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        for message in queue.receive_messages(max_messages=1, visibility_timeout=30):
            return message
        time.sleep(0.1)
    return None


@pytest.mark.usefixtures("no_sleep")
def test_a_503_on_the_check_read_is_retried_then_recorded_on_the_last_attempt(
    batch: BatchEmulator, make_message: MessageFactory, queues: Queues, confirm_queue: QueueClient
) -> None:
    batch.add_job("job-1", state=JobState.TERMINATING)
    batch.inject(Fault.status(503, "ServerBusy"), times=100, operation="get")
    with pytest.raises(RetryLater):
        confirm_termination.main(check_message(make_message, dequeue_count=1)[0])
    assert queues.poison_records() == []
    confirm_termination.main(check_message(make_message, dequeue_count=5)[0])
    [record] = queues.poison_records()
    assert (record["error"]["code"], record["error"]["httpStatus"]) == ("ServerBusy", 503)
    assert (record["messageId"], record["attempts"]) == ("orig-1", 5)
    assert pending(confirm_queue) == 0


# ---- docs/CONTRACT.md §8: one record per finished message, with these outcomes


def test_a_confirmed_chain_ends_in_one_confirmed_record_and_a_pending_check_in_none(
    exported: Exported, batch: BatchEmulator, make_message: MessageFactory, confirm_queue: QueueClient
) -> None:
    batch.add_job("job-1", state=JobState.TERMINATING)
    confirm_termination.main(check_message(make_message, check=1)[0])
    assert [r for r in exported.records() if "outcome" in r] == []  # pending: the chain is not finished
    batch.set_state("job-1", JobState.COMPLETED)
    confirm_termination.main(check_message(make_message, check=2)[0])
    [record] = [r for r in exported.records() if "outcome" in r]
    assert (record["outcome"], record["jobId"], record["account"], record["messageId"]) == (
        "confirmed",
        "job-1",
        "default",
        "orig-1",
    )
    assert record["httpStatus"] == 200


def test_a_termination_stuck_record_is_a_poisoned_outcome(
    exported: Exported, batch: BatchEmulator, make_message: MessageFactory, confirm_queue: QueueClient
) -> None:
    batch.add_job("job-1", state=JobState.TERMINATING)
    confirm_termination.main(check_message(make_message, check=3)[0])
    [record] = [r for r in exported.records() if "outcome" in r]
    assert (record["outcome"], record["code"], record["httpStatus"]) == ("poisoned", "TerminationStuck", None)


# ---- each path end to end: terminate_job's 202, the checks on the confirm queue (Azurite), the emulator's hold


def run_checks(confirm_queue: QueueClient, make_message: MessageFactory, wait: float = 15.0) -> list[int]:
    """Deliver each check as the host would (id, dequeue count) until the queue is empty; the check numbers run."""
    seen: list[int] = []
    while pending(confirm_queue):
        message = _receive(confirm_queue, wait)
        assert message is not None, f"a check is pending but none became visible within {wait} s"
        seen.append(json.loads(message.content)["check"])
        confirm_termination.main(
            make_message(message.content, message_id=message.id, dequeue_count=message.dequeue_count)
        )
        confirm_queue.delete_message(message)
    return seen


def confirmed_records(exported: Exported) -> list[dict[str, Any]]:
    """The finished-message records with outcome confirmed."""
    return [r for r in exported.records() if r.get("outcome") == "confirmed"]


def test_a_job_its_release_task_held_is_confirmed_with_its_time_from_request_to_completion(
    exported: Exported, batch: BatchEmulator, make_message: MessageFactory, queues: Queues, confirm_queue: QueueClient
) -> None:
    # Held 0.5 s by its job release task; the first check is visible only after CONFIRM_AFTER_SECONDS (1 s).
    batch.add_job("job-1", job_release_seconds=0.5)
    terminate_job.main(make_message({"jobId": "job-1", "reason": "budget"}, message_id="orig-1"))
    assert run_checks(confirm_queue, make_message) == [1]
    [record] = confirmed_records(exported)
    assert (record["jobId"], record["messageId"], record["httpStatus"]) == ("job-1", "orig-1", 200)
    assert set(telemetry.RECORD_ATTRIBUTES) <= set(record)
    # Batch's own times: entering terminating (the 202) to entering completed, which the emulator puts 0.5 s apart.
    assert record["terminatingMs"] == 500.0
    [(attributes, point)] = exported.points(telemetry.CONFIRMATION_DURATION)
    assert (attributes, point.count, point.sum) == ({}, 1, 500.0)
    assert queues.poison_records() == []


def test_a_job_still_in_its_release_task_is_checked_again_and_recorded_stuck_at_the_last_check(
    monkeypatch: pytest.MonkeyPatch,
    exported: Exported,
    batch: BatchEmulator,
    make_message: MessageFactory,
    queues: Queues,
    confirm_queue: QueueClient,
) -> None:
    monkeypatch.setenv("CONFIRM_MAX_CHECKS", "2")
    batch.add_job("job-1", job_release_seconds=math.inf)  # a release task that never ends
    terminate_job.main(make_message({"jobId": "job-1", "reason": "budget"}, message_id="orig-1"))
    assert run_checks(confirm_queue, make_message) == [1, 2]
    # CONFIRM_FORCE off: no second terminate; the last check also reads the release status (the job has no pool).
    assert [r.operation for r in batch.requests] == [
        "job.terminate",
        "job.get",
        "job.get",
        "job.preparationandreleasestatus",
    ]
    [record] = queues.poison_records()
    assert record["error"]["code"] == "TerminationStuck"
    values = {v["key"]: v["value"] for v in record["error"]["values"]}
    assert (values["state"], values["checks"]) == ("terminating", "2")
    assert (record["messageId"], record["attempts"], record["jobId"]) == ("orig-1", 2, "job-1")
    assert json.loads(record["originalMessage"])["check"] == 2
    [finished] = [r for r in exported.records() if r.get("outcome") == "poisoned"]
    assert finished["code"] == "TerminationStuck"
    assert confirmed_records(exported) == []
    assert exported.points(telemetry.CONFIRMATION_DURATION) == []


def test_confirm_force_ends_a_job_stuck_in_its_release_task_with_one_forced_terminate(
    monkeypatch: pytest.MonkeyPatch,
    exported: Exported,
    batch: BatchEmulator,
    make_message: MessageFactory,
    queues: Queues,
    confirm_queue: QueueClient,
) -> None:
    monkeypatch.setenv("CONFIRM_FORCE", "true")
    monkeypatch.setenv("BATCH_API_VERSION", "2024-07-01.20.0")
    batch.add_job("job-1", job_release_seconds=math.inf)
    terminate_job.main(make_message({"jobId": "job-1"}, message_id="orig-1"))
    assert run_checks(confirm_queue, make_message) == [1, 2]
    assert [t.force for t in batch.terminations] == [False, True]
    forced = [r for r in batch.requests if r.method == "POST" and r.query.get("force") == "true"]
    assert len(forced) == 1
    [record] = confirmed_records(exported)
    assert record["jobId"] == "job-1"
    assert record["terminatingMs"] is not None  # it completed from terminating: Batch's times say when
    assert queues.poison_records() == []


def test_a_job_deleted_while_its_check_waited_is_confirmed_without_a_time_to_completion(
    exported: Exported, batch: BatchEmulator, make_message: MessageFactory, queues: Queues, confirm_queue: QueueClient
) -> None:
    batch.add_job("job-1", job_release_seconds=math.inf)
    terminate_job.main(make_message({"jobId": "job-1"}, message_id="orig-1"))
    batch.remove_job("job-1")
    assert run_checks(confirm_queue, make_message) == [1]
    [record] = confirmed_records(exported)
    assert (record["jobId"], record["httpStatus"], record["code"]) == ("job-1", 404, "JobNotFound")
    assert record.get("terminatingMs") is None
    assert exported.points(telemetry.CONFIRMATION_DURATION) == []
    assert queues.poison_records() == []


def test_a_forced_terminate_that_finds_the_job_completed_confirms_it(
    monkeypatch: pytest.MonkeyPatch,
    exported: Exported,
    batch: BatchEmulator,
    make_message: MessageFactory,
    confirm_queue: QueueClient,
) -> None:
    monkeypatch.setenv("CONFIRM_FORCE", "true")
    monkeypatch.setenv("BATCH_API_VERSION", "2024-07-01.20.0")
    batch.add_job("job-1", state=JobState.TERMINATING)
    # The job completes between the check's read and its forced terminate: Batch answers 409 JobCompleted.
    batch.inject(Fault.status(409, "JobCompleted"), operation="terminate")
    confirm_termination.main(check_message(make_message, check=1)[0])
    [record] = confirmed_records(exported)
    assert (record["code"], record["httpStatus"]) == ("JobCompleted", 409)
    assert pending(confirm_queue) == 0


def test_token_failures_on_a_check_raise_with_attempts_left_and_are_recorded_on_the_last(
    identity: IdentityEndpoint,
    batch: BatchEmulator,
    make_message: MessageFactory,
    queues: Queues,
    confirm_queue: QueueClient,
) -> None:
    wiring.install(wiring.Wiring(sleep=lambda _: None))
    batch.add_job("job-1", state=JobState.TERMINATING)
    identity.fail_next(1000)
    with pytest.raises(RetryLater):
        confirm_termination.main(check_message(make_message, dequeue_count=1)[0])
    assert queues.poison_records() == []
    confirm_termination.main(check_message(make_message, dequeue_count=5)[0])
    [record] = queues.poison_records()
    assert (record["error"]["code"], record["error"]["httpStatus"]) == ("CredentialUnavailable", None)
    assert (record["messageId"], record["attempts"]) == ("orig-1", 5)
    assert batch.requests == []  # no token, no read
    assert pending(confirm_queue) == 0


@pytest.mark.usefixtures("no_sleep")
def test_a_missing_confirm_queue_is_created_for_the_first_check(
    batch: BatchEmulator, make_message: MessageFactory, confirm_queue: QueueClient
) -> None:
    confirm_queue.delete_queue()
    batch.add_job("job-1")
    terminate_job.main(make_message({"jobId": "job-1"}, message_id="orig-1"))
    assert pending(confirm_queue) == 1


def test_an_operator_replays_a_stuck_job_with_force_and_it_ends(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    batch: BatchEmulator,
    make_message: MessageFactory,
    queues: Queues,
    confirm_queue: QueueClient,
) -> None:
    """TerminationStuck record → `batch-terminator poison replay --force` → a forced terminate ends the job."""
    monkeypatch.setenv("CONFIRM_MAX_CHECKS", "1")
    monkeypatch.setenv("BATCH_API_VERSION", "2024-07-01.20.0")
    wiring.install(wiring.Wiring(sleep=lambda _: None))
    batch.add_job("job-1", job_release_seconds=math.inf)
    terminate_job.main(make_message({"jobId": "job-1", "reason": "budget"}, message_id="orig-1"))
    assert run_checks(confirm_queue, make_message) == [1]
    assert [r["error"]["code"] for r in queues.poison_records()] == ["TerminationStuck"]

    assert ops_main(["poison", "replay", "--code", "TerminationStuck", "--force"]) == 0
    capsys.readouterr()
    [replayed] = queues.client(queues.trigger).receive_messages(max_messages=1)
    terminate_job.main(make_message(replayed.content, message_id=replayed.id))

    assert [t.force for t in batch.terminations] == [False, True]
    assert batch.job("job-1").state is JobState.COMPLETED
    assert queues.poison_records() == []
    assert run_checks(confirm_queue, make_message) == [1]  # the forced 202 is checked too, and confirmed
    assert queues.poison_records() == []


@pytest.mark.usefixtures("no_sleep", "confirm_queue")
def test_a_rejected_token_on_the_check_read_is_refreshed_once_as_for_terminate(
    identity: IdentityEndpoint, batch: BatchEmulator, make_message: MessageFactory, queues: Queues, captured_logs
) -> None:
    batch.add_job("job-1", state=JobState.COMPLETED)
    batch.inject(Fault.authentication(401), operation="get")
    confirm_termination.main(check_message(make_message)[0])
    first, second = batch.requests
    assert (first.fault, second.fault) == ("status:401 AuthenticationFailed", None)
    assert first.headers["authorization"] != second.headers["authorization"]  # a fresh token, not the rejected one
    assert len(identity.requests) == 2
    assert queues.poison_records() == []
    assert any("outcome=confirmed" in r.getMessage() for r in captured_logs.records)


# ---- an incident's job (docs/CONTRACT.md §3, §10): its checks and their records name the incident


@pytest.mark.usefixtures("no_sleep")
def test_an_incidents_job_is_checked_and_recorded_with_the_incident(
    monkeypatch: pytest.MonkeyPatch,
    batch: BatchEmulator,
    make_message: MessageFactory,
    queues: Queues,
    confirm_queue: QueueClient,
) -> None:
    monkeypatch.setenv("CONFIRM_MAX_CHECKS", "1")
    batch.add_job("job-1")
    batch.terminate_delay = 3600  # held in terminating past the one check
    terminate_job.main(make_message({"jobId": "job-1", "incident": "inc-42"}, message_id="orig-1"))
    [check] = visible_checks(confirm_queue, 1)
    assert check["incident"] == "inc-42"
    confirm_termination.main(make_message(json.dumps(check), message_id="c-1"))
    [record] = queues.poison_records()
    assert (record["error"]["code"], record["incident"]) == ("TerminationStuck", "inc-42")


def test_a_check_without_an_incident_has_no_incident_field() -> None:
    assert "incident" not in json.loads(ConfirmCheck("job-1").to_json())
    assert ConfirmCheck.parse(ConfirmCheck("job-1", incident="inc-1").to_json()).incident == "inc-1"
