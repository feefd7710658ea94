"""The producer API: same rules as the function, same encoding as the trigger."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import pytest
from azure.storage.queue import QueueClient

from shared.contract.errors import EnqueueFailed, InvalidMessage
from shared.contract.terminate_request import TerminateRequest
from shared.storage.terminate_queue import TerminateQueue, build_request
from tests.conftest import Queues

pytestmark = pytest.mark.integration


def test_enqueued_message_is_plain_json_the_function_parses(queues: Queues) -> None:
    queue = TerminateQueue.connect(queues.trigger, connection_string=queues.connection_string)
    message_id = queue.enqueue_terminate(
        "job-1", "budget exceeded", force=True, if_modified_since=datetime(2026, 11, 25, 12, tzinfo=UTC)
    )
    [raw] = QueueClient.from_connection_string(queues.connection_string, queues.trigger).receive_messages()
    assert message_id
    assert raw.expires_on - datetime.now(UTC) > timedelta(days=365), "a request outlives a long outage"
    document = json.loads(raw.content)
    assert document == {
        "jobId": "job-1",
        "reason": "budget exceeded",
        "force": True,
        "ifModifiedSince": "Wed, 25 Nov 2026 12:00:00 GMT",
    }
    assert TerminateRequest.parse(raw.content).force is True


def test_a_base64_host_can_be_asked_for(queues: Queues) -> None:
    queue = TerminateQueue.connect(
        queues.trigger, connection_string=queues.connection_string, message_encoding="base64"
    )
    queue.enqueue_terminate("job-1")
    [raw] = QueueClient.from_connection_string(queues.connection_string, queues.trigger).peek_messages()
    assert json.loads(base64.b64decode(raw.content)) == {"jobId": "job-1"}


def test_the_account_alias_is_sent_and_checked_for_form(queues: Queues) -> None:
    queue = TerminateQueue.connect(queues.trigger, connection_string=queues.connection_string)
    queue.enqueue_terminate("job-1", account="EU")
    queue.enqueue_terminate("job-2", account="default")
    with pytest.raises(InvalidMessage) as caught:
        queue.enqueue_terminate("job-3", account="https://evil.example.com")
    assert [p.key for p in caught.value.problems] == ["account"]
    documents = [json.loads(m.content) for m in queue.client.peek_messages(max_messages=5)]
    assert documents == [{"jobId": "job-1", "account": "eu"}, {"jobId": "job-2"}]
    assert [r.account for r in queues.enqueued()] == ["eu", "default"]


@pytest.mark.parametrize(
    ("job_id", "options"),
    [("a/b", {}), ("x" * 65, {}), ("ok", {"request_id": "nope"}), ("ok", {"if_match": "bad\r\nheader"})],
)
def test_invalid_request_is_refused_before_the_queue(queues: Queues, job_id: str, options: dict) -> None:
    queue = TerminateQueue.connect(queues.trigger, connection_string=queues.connection_string)
    with pytest.raises(InvalidMessage):
        queue.enqueue_terminate(job_id, **options)
    assert list(queue.client.peek_messages()) == []


def test_enqueue_reads_the_app_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch, queues: Queues) -> None:
    monkeypatch.setenv("AzureWebJobsStorage", queues.connection_string)
    monkeypatch.setenv("TERMINATE_QUEUE_NAME", queues.trigger)
    TerminateQueue.from_env().enqueue_terminate("job-7")
    [raw] = queues.client(queues.trigger).peek_messages()
    assert json.loads(raw.content) == {"jobId": "job-7"}


def test_missing_queue_is_a_clear_error(queues: Queues) -> None:
    queue = TerminateQueue.connect("no-such-queue", connection_string=queues.connection_string)
    with pytest.raises(EnqueueFailed, match="no-such-queue"):
        queue.enqueue(build_request("job-1"))


def test_known_accounts_are_checked_when_given() -> None:
    assert build_request("job-1", account="EU", accounts=("default", "eu")).account == "eu"
    with pytest.raises(InvalidMessage) as caught:
        build_request("job-1", account="us", accounts=("default", "eu"))
    assert [p.key for p in caught.value.problems] == ["account"]


def test_enqueue_many_sends_every_request_and_keeps_their_order(queues: Queues) -> None:
    queue = TerminateQueue.connect(queues.trigger, connection_string=queues.connection_string)
    requests = [build_request(f"job-{n:03d}", "incident") for n in range(30)]  # peek shows at most 32
    seen: list[int] = []

    result = queue.enqueue_many(requests, threads=8, on_sent=lambda index, _id: seen.append(index))

    assert result.failure is None
    assert result.count == 30
    assert all(result.message_ids)
    assert sorted(seen) == list(range(30))
    assert sorted(r.job_id for r in queues.enqueued()) == [r.job_id for r in requests]


def test_enqueue_many_starts_no_send_after_the_queue_refuses_one(queues: Queues) -> None:
    queue = TerminateQueue.connect(queues.trigger, connection_string=queues.connection_string)
    requests = [build_request(f"job-{n:03d}") for n in range(10)]

    def gone_after_the_fourth(index: int, _message_id: str) -> None:
        if index == 3:
            queue.client.delete_queue()

    result = queue.enqueue_many(requests, threads=1, on_sent=gone_after_the_fourth)

    assert isinstance(result.failure, EnqueueFailed)
    assert "does not exist" in str(result.failure)
    assert result.count == 4
    assert [m is not None for m in result.message_ids] == [True] * 4 + [False] * 6
    assert result.sent([r.job_id for r in requests]) == ["job-000", "job-001", "job-002", "job-003"]


def test_enqueue_many_of_nothing_sends_nothing(queues: Queues) -> None:
    queue = TerminateQueue.connect(queues.trigger, connection_string=queues.connection_string)

    result = queue.enqueue_many([])

    assert (result.message_ids, result.failure, result.count) == ((), None, 0)
    assert queues.enqueued() == []
