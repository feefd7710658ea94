"""The soak in miniature (200 messages, every fault, restarts) plus focused tests for what the soak relies on."""

from __future__ import annotations

import base64
import collections
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from azure.storage.queue import QueueClient

import terminate_job
from local.azurite import Azurite
from local.batch_emulator import BatchEmulator, Fault, HttpRequest, JobState
from shared import wiring
from shared.config.settings import PROJECT_ROOT
from soak.config import POISON_QUEUE_NAME, SoakConfig
from soak.reconcile import HOST_MOVED, AppRecord, Report, SentMessage, read_poison, reconcile
from soak.run import plan_jobs
from tests.conftest import MessageFactory, Queues

pytestmark = pytest.mark.integration


def test_soak_of_200_messages_loses_nothing() -> None:
    """`./dev soak --messages 200 --incidents 8`: exit 0 and `lost 0`, with Azurite restarted and the host killed
    midway; then the kill-switch phase, every incident ended and every undo restored."""
    result = subprocess.run(
        [sys.executable, "-m", "soak", "--messages", "200", "--timeout", "45", "--incidents", "8"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert re.search(r"^lost\s+0$", output, re.MULTILINE), output
    assert re.search(r"^sent\s+200$", output, re.MULTILINE), output
    assert "Azurite restarted" in output, output
    assert "host killed (SIGKILL) and restarted" in output, output
    # docs/CONTRACT.md §5b: every terminated job's checks end once. The jobs whose release task never ends are
    # the stuck ones, every other terminated job is confirmed — or was found completed by the redelivery of a
    # message whose 202 was lost, so no check was due.
    kinds = collections.Counter(kind for _, kind in plan_jobs(SoakConfig(messages=200, seed=1)))
    assert kinds["stuck"] >= 1, kinds  # the seed plans the fault
    stuck = re.search(r"^stuck\s+(\d+) \(TerminationStuck records\)$", output, re.MULTILINE)
    confirmed = re.search(r"^confirmed\s+(\d+)$", output, re.MULTILINE)
    unchecked = re.search(r"^unchecked\s+(\d+) ", output, re.MULTILINE)
    assert stuck, output
    assert confirmed, output
    assert unchecked, output
    assert int(stuck.group(1)) == kinds["stuck"], output
    assert int(confirmed.group(1)) + int(unchecked.group(1)) == kinds["active"] + kinds["releasing"], output
    assert int(confirmed.group(1)) >= kinds["releasing"], output
    assert "unexpected:" not in output, output
    _assert_kill_switch_phase(output)


def _row(output: str, name: str) -> str:
    """The value of one row of the soak's table (the phase's rows are indented by two spaces)."""
    found = re.search(rf"^{re.escape(name)}\s{{2,}}(.+)$", output, re.MULTILINE)
    assert found, f"no row {name!r} in:\n{output}"
    return found.group(1)


def _assert_kill_switch_phase(output: str) -> None:
    """docs/CONTRACT.md §10 under faults and kills: 8 incidents of every kind, each ended as planned — 6 executed
    then undone, one refused (TooManyJobs), one cancelled, none failed for good (the one made to fail was
    retried) — every job of an executed incident terminated once or recorded, every message carrying its
    incident, every scaled pool and disabled schedule put back as recorded, never a "before" of zero."""
    assert _row(output, "kill switch").startswith("8 incidents (2 budget, 6 operator; 1 delivered twice)"), output
    assert (_row(output, "  undone"), _row(output, "  refused"), _row(output, "  cancelled")) == ("6", "1", "1")
    assert _row(output, "  failed") == "0", output
    assert re.fullmatch(r"[1-9]\d* \(retried [1-9]\d*\)", _row(output, "  failed on the way")), output
    jobs = re.fullmatch(r"(\d+) selected: (\d+) terminated, (\d+) poisoned", _row(output, "  jobs"))
    assert jobs, output
    assert int(jobs.group(1)) > 0, output
    assert int(jobs.group(2)) + int(jobs.group(3)) == int(jobs.group(1)), output
    assert _row(output, "  messages").endswith(" 0 without the incident"), output
    pools = re.fullmatch(r"(\d+)/(\d+)", _row(output, "  pools restored"))
    assert pools, output
    assert pools.group(1) == pools.group(2), output
    assert int(pools.group(2)) > 0, output
    assert _row(output, "  pools scaled").startswith(f"{pools.group(2)} of {pools.group(2)} "), output
    for reason in ("AutoPool", "PoolInUse", "PoolKept"):
        assert reason in _row(output, "  pools scaled"), output
    schedules = re.fullmatch(r"(\d+)/(\d+)", _row(output, "  schedules restored"))
    assert schedules, output
    assert schedules.group(1) == schedules.group(2), output
    assert int(schedules.group(2)) > 0, output
    assert _row(output, "  zero before") == "0", output
    assert _row(output, "  host kills") == "3", output
    assert _row(output, "  incident problems") == "0", output
    # the lost answers and host kills the phase plans were played
    assert re.search(r"^kill switch faults: jobschedule\.disable: .*lost-answer", output, re.MULTILINE), output
    assert re.search(r"^kill switch faults: pool\.resize: .*held-for-kill", output, re.MULTILINE), output
    assert "KILL SWITCH PROBLEM" not in output, output


# --------------------------------------------------------------------------- the reconciliation itself


def _record(message: SentMessage, code: str) -> dict[str, object]:
    """A function poison record for this message."""
    return {"jobId": message.job_id, "error": {"code": code}, "messageId": message.message_id}


@pytest.fixture
def ledger_batch() -> Iterator[BatchEmulator]:
    """An emulator used only for its jobs and ledger (requests are handed to it directly)."""
    with BatchEmulator() as emulator:
        yield emulator


def _terminate(batch: BatchEmulator, job_id: str) -> None:
    """Apply a terminate the way a request would, through the emulator's own handler."""
    request = HttpRequest(
        method="POST",
        path=f"/jobs/{job_id}/terminate",
        query={"api-version": "2023-11-01.18.0"},
        headers={"authorization": "Bearer t", "content-type": "application/json"},
        body=b"{}",
    )
    batch.handle(request)


def test_reconcile_accounts_each_outcome_once(ledger_batch: BatchEmulator) -> None:
    """Terminated, already done and poisoned are counted; nothing is lost."""
    active = SentMessage("job-a", "active", "m-a")
    done = SentMessage("job-c", "completed", "m-c")
    missing = SentMessage("job-m", "missing", "m-m")
    ledger_batch.add_job("job-a")
    ledger_batch.add_job("job-c", JobState.COMPLETED)
    _terminate(ledger_batch, "job-a")
    _terminate(ledger_batch, "job-a")  # a redelivery: 409 JobBeingTerminated/JobCompleted
    _terminate(ledger_batch, "job-c")
    report = Report()

    reconcile([active, done, missing], ledger_batch, [_record(missing, "JobNotFound")], 0, report)

    assert (report.terminated, report.already_done, dict(report.poisoned)) == (1, 1, {"JobNotFound": 1})
    assert report.lost == []
    assert report.batch_duplicates == 1
    assert report.ok
    assert not report.unexpected


def test_reconcile_reports_lost_messages(ledger_batch: BatchEmulator) -> None:
    """An active job never terminated and without a poison record is lost, and the run fails."""
    ledger_batch.add_job("job-a")
    ledger_batch.add_job("job-c", JobState.COMPLETED)
    report = Report()

    reconcile(
        [SentMessage("job-a", "active", "m-a"), SentMessage("job-c", "completed", "m-c")], ledger_batch, [], 2, report
    )

    assert len(report.lost) == 2
    assert not report.ok
    assert re.search(r"^lost\s+2$", report.table(), re.MULTILINE)


def test_reconcile_counts_duplicate_and_host_moved_poison(ledger_batch: BatchEmulator) -> None:
    """Two records for one message count once (and as a duplicate); a message the host moved is accounted too."""
    first = SentMessage("job-1", "missing", "m-1")
    second = SentMessage("job-2", "missing", "m-2")
    moved = {"jobId": "job-2"}  # the original message, moved unchanged by the host
    report = Report()

    reconcile(
        [first, second], ledger_batch, [_record(first, "JobNotFound"), _record(first, "JobNotFound"), moved], 0, report
    )

    assert dict(report.poisoned) == {"JobNotFound": 1, HOST_MOVED: 1}
    assert report.duplicate_poison_records == 1
    assert report.ok


def _check(message: SentMessage, check: int) -> str:
    """A confirm message's text for this job (docs/CONTRACT.md §5b)."""
    document = {"jobId": message.job_id, "account": "default", "reason": None, "messageId": message.message_id}
    return json.dumps({**document, "check": check})


def test_reconcile_accounts_each_terminated_jobs_checks_once(ledger_batch: BatchEmulator) -> None:
    """Confirmed, stuck and completed-before-a-check are counted; a check chain that never ended is lost."""
    confirmed = SentMessage("job-ok", "active", "m-ok")
    stuck = SentMessage("job-stuck", "stuck", "m-stuck")
    unchecked = SentMessage("job-fast", "active", "m-fast")
    vanished = SentMessage("job-gone", "releasing", "m-gone")
    ledger_batch.add_job("job-ok")
    ledger_batch.add_job("job-stuck", job_release_seconds=float("inf"))
    ledger_batch.add_job("job-fast")
    ledger_batch.add_job("job-gone")
    for message in (confirmed, stuck, unchecked, vanished):
        _terminate(ledger_batch, message.job_id)
    stuck_record = {
        "jobId": "job-stuck",
        "error": {"code": "TerminationStuck"},
        "messageId": "m-stuck",
        "originalMessage": _check(stuck, 3),
    }
    app = [
        AppRecord("job-ok", "m-ok", "terminated"),
        AppRecord("job-ok", "m-ok", "confirmed", terminating_ms=0.0),
        AppRecord("job-stuck", "m-stuck", "terminated"),
        AppRecord("job-fast", "m-fast", "already_terminated", "JobCompleted"),  # 202 lost, redelivery: completed
        AppRecord("job-gone", "m-gone", "terminated"),  # a check was scheduled, and never ended
    ]
    report = Report()

    reconcile([confirmed, stuck, unchecked, vanished], ledger_batch, [stuck_record], 0, report, app)

    assert (report.terminated, report.confirmed, report.stuck, report.unchecked) == (4, 1, 1, 1)
    assert dict(report.poisoned) == {}  # a TerminationStuck record is the check's end, not the message's
    assert [entry.split()[0] for entry in report.lost] == ["m-gone"]
    assert not report.ok
    assert not report.unexpected
    assert re.search(r"^stuck\s+1 \(TerminationStuck records\)$", report.table(), re.MULTILINE)


def test_reconcile_flags_a_stuck_job_that_was_confirmed(ledger_batch: BatchEmulator) -> None:
    """A job whose release task never ends cannot be confirmed: the soak says so."""
    stuck = SentMessage("job-stuck", "stuck", "m-stuck")
    ledger_batch.add_job("job-stuck", job_release_seconds=float("inf"))
    _terminate(ledger_batch, "job-stuck")
    report = Report()

    reconcile([stuck], ledger_batch, [], 0, report, [AppRecord("job-stuck", "m-stuck", "confirmed")])

    assert report.confirmed == 1
    assert report.unexpected == {"a job whose release task never ends was confirmed": 1}


# --------------------------------------------------------------------------- focused tests of soak faults


def test_azurite_restart_keeps_queued_messages(tmp_path: Path) -> None:
    """Azurite restarted on the same port and location still has the messages, and their ids."""
    service = Azurite(location=tmp_path / "azurite").start()
    try:
        queue = QueueClient.from_connection_string(service.connection_string, "restart-me")
        queue.create_queue()
        sent = {queue.send_message(f"m{n}").id for n in range(3)}
        port = service.port
        service.stop()
        service.start()
        assert service.port == port
        received = {m.id for m in queue.receive_messages(messages_per_page=32)}
        assert received == sent
    finally:
        service.stop()


@pytest.fixture
def short_timeout(function_env: dict[str, str]) -> Iterator[list[float]]:
    """The production wiring with a 0.3 s client timeout and recorded sleeps, as in the soak."""
    slept: list[float] = []
    wiring.install(wiring.Wiring(sleep=slept.append, http_timeout=0.3))
    yield slept
    wiring.reset()


@pytest.mark.usefixtures("short_timeout")
def test_answer_slower_than_the_client_timeout_after_terminating_counts_as_done(
    batch: BatchEmulator, make_message: MessageFactory, queues: Queues
) -> None:
    """Batch terminates, answers after the timeout; the retry's 409 JobBeingTerminated finishes the message."""
    batch.add_job("slow-1")
    batch.inject(Fault.delay(0.6, apply=True))

    terminate_job.main(make_message({"jobId": "slow-1"}))

    assert queues.poison_records() == []
    assert [t.job_id for t in batch.terminations] == ["slow-1"]
    assert batch.job("slow-1").terminate_count == 2
    assert batch.job("slow-1").state is not JobState.ACTIVE


def test_soak_poison_reader_decodes_both_kinds_of_poison_message(queues: Queues) -> None:
    """The soak reads function records and host-moved originals from the same base64 poison queue."""
    client = QueueClient.from_connection_string(queues.connection_string, POISON_QUEUE_NAME)
    client.create_queue()
    try:
        for document in ({"jobId": "a", "error": {"code": "X"}, "messageId": "m"}, {"jobId": "b"}):
            client.send_message(base64.b64encode(json.dumps(document).encode()).decode())
        client.send_message("not base64 !")
        documents = read_poison(queues.connection_string)
    finally:
        client.delete_queue()
    assert {d.get("jobId") for d in documents} == {"a", "b", None}
    assert any("unreadable" in d for d in documents)
