"""The kill switch (docs/CONTRACT.md §10) end to end: kill_switch.main over Azurite's queues and table and the
Batch emulator, commands taken from the incident queue as the host would hand them over."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.functions.queue import QueueMessage
from azure.storage.queue import QueueClient

import kill_switch
import terminate_job
from local.batch_emulator import BatchEmulator, Fault
from shared import wiring
from shared.contract.errors import IncidentWriteFailed, RetryLater
from shared.contract.incident import Approval, Incident, Selectors, Source
from shared.rules.incidents import operator_incident_id
from shared.storage.incidents import IncidentStore
from tests.conftest import MessageFactory, Queues

pytestmark = pytest.mark.integration

FORMULA = "$TargetDedicatedNodes = min(4, $PendingTasks.GetSample(1));"


class Switch:
    """The kill switch's queue and table for one test, and how to run what is on the queue."""

    def __init__(self, queues: Queues, queue_name: str, table_name: str, slept: list[float]) -> None:
        self.queues = queues
        self.queue = QueueClient.from_connection_string(queues.connection_string, queue_name)
        self.table_name = table_name
        self.slept = slept

    @property
    def store(self) -> IncidentStore:
        return wiring.current().incident_store()

    def open(
        self,
        *,
        prefix: str = "",
        pool: str | None = None,
        metadata: tuple[str, str] | None = None,
        approval: Approval | None = None,
        account: str = "default",
    ) -> Incident:
        """An operator incident, stored with its plan command on the queue (as `batch-terminator kill` does)."""
        incident = Incident.open(
            operator_incident_id(),
            source=Source.OPERATOR,
            reason="runaway spend",
            selectors=Selectors(prefix, pool, metadata),
            at=datetime.now(UTC),
            account=account,
            approval=approval,
        )
        stored, created = wiring.current().incidents().open(incident)
        assert created
        return stored

    def send(self, incident_id: str, command: str) -> None:
        self.queue.send_message(json.dumps({"incident": incident_id, "command": command}))

    def run(self, *, dequeue_count: int = 1) -> list[str]:
        """Deliver every command now on the queue to kill_switch.main (deleting each that returns)."""
        ran: list[str] = []
        for message in self.queue.receive_messages(max_messages=32, visibility_timeout=1):
            delivered = QueueMessage(
                id=message.id,
                body=message.content.encode(),
                dequeue_count=dequeue_count,
                pop_receipt=message.pop_receipt,
            )
            kill_switch.main(delivered)
            self.queue.delete_message(message)
            ran.append(json.loads(message.content)["command"])
        return ran

    def get(self, incident_id: str) -> Incident:
        found = self.store.get(incident_id)
        assert found is not None
        return found

    def show(self, incident_id: str) -> dict[str, Any]:
        return self.get(incident_id).to_document()

    def terminate_messages(self) -> list[dict[str, Any]]:
        client = self.queues.client(self.queues.trigger)
        return [json.loads(m.content) for m in client.peek_messages(max_messages=32)]


@pytest.fixture
def switch(
    monkeypatch: pytest.MonkeyPatch, function_env: dict[str, str], queues: Queues, batch: BatchEmulator
) -> Switch:
    """kill_switch's settings on a fresh incident queue and table; sleeps recorded, not waited."""
    queue_name = f"{queues.trigger}-ks"
    table_name = f"inc{uuid.uuid4().hex[:16]}"
    monkeypatch.setenv("INCIDENT_QUEUE_NAME", queue_name)
    monkeypatch.setenv("INCIDENT_TABLE_NAME", table_name)
    for name in (
        "KILL_SWITCH_APPROVAL",
        "KILL_SWITCH_DISABLE_SCHEDULES",
        "KILL_SWITCH_SCALE_POOLS",
        "ALERT_MAX_JOBS",
        "TERMINATE_DRY_RUN",
        "CONFIRM_QUEUE_NAME",
        "CONFIRM_AFTER_SECONDS",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KILL_SWITCH_SCALE_POOLS", "true")
    QueueClient.from_connection_string(queues.connection_string, queue_name).create_queue()
    batch.resize_seconds = 0
    slept: list[float] = []
    wiring.install(wiring.Wiring(sleep=slept.append))
    return Switch(queues, queue_name, table_name, slept)


def fleet(batch: BatchEmulator) -> None:
    """render-* jobs and a render schedule on pool render (fixed, 3 nodes); other work on pool shared (autoscale)."""
    batch.add_pool("render", dedicated=3, low_priority=1)
    batch.add_pool("shared", dedicated=2, auto_scale_formula=FORMULA, auto_scale_evaluation_seconds=600)
    batch.add_job("render-1", pool_id="render")
    batch.add_job("render-2", pool_id="render")
    batch.add_job("other-1", pool_id="shared")
    batch.add_schedule("render-nightly", pool_id="render", recurrence_seconds=86400)


def operations(batch: BatchEmulator) -> list[str]:
    """The changes Batch received, in order (reads left out)."""
    return [
        f"{r.operation} {r.resource_id}"
        for r in batch.requests
        if r.method == "POST" and not r.operation.startswith("job.terminate")
    ]


# ---- plan → executed


def test_a_plan_disables_the_schedule_enqueues_the_jobs_and_scales_the_pool_to_zero(
    switch: Switch, batch: BatchEmulator
) -> None:
    fleet(batch)
    incident = switch.open(prefix="render")

    assert switch.run() == ["plan"]

    shown = switch.show(incident.id)
    assert shown["state"] == "executed"
    assert [h["state"] for h in shown["history"]] == ["accepted", "executed"]
    assert sorted(job["jobId"] for job in shown["jobs"]) == ["render-1", "render-2", "render-nightly:job-1"]
    assert all(job["poolId"] == "render" and job["enqueued"] for job in shown["jobs"])
    assert shown["schedules"] == [
        {"jobScheduleId": "render-nightly", "result": {"httpStatus": 204, "code": None}, "disabled": True}
    ]
    [pool] = shown["pools"]
    assert pool == {
        "poolId": "render",
        "skipped": None,
        "before": {
            "enableAutoScale": False,
            "autoScaleFormula": None,
            "autoScaleEvaluationInterval": None,
            "targetDedicatedNodes": 3,
            "targetLowPriorityNodes": 1,
        },
        "result": {"httpStatus": 202, "code": None},
    }
    # Batch: the schedule first, then the pool; the other pool untouched
    assert operations(batch) == ["jobschedule.disable render-nightly", "pool.resize render"]
    [resize] = [r for r in batch.requests if r.operation == "pool.resize"]
    assert resize.json() == {
        "targetDedicatedNodes": 0,
        "targetLowPriorityNodes": 0,
        "nodeDeallocationOption": "terminate",
    }
    render = batch.pool("render")
    assert render is not None
    assert (render.target_dedicated, render.target_low_priority) == (0, 0)
    assert batch.schedule("render-nightly").state == "disabled"  # type: ignore[union-attr]
    # one terminate message per job, with the incident's reason and id; terminate_job takes them
    messages = switch.terminate_messages()
    assert sorted(m["jobId"] for m in messages) == ["render-1", "render-2", "render-nightly:job-1"]
    assert {(m["reason"], m["incident"]) for m in messages} == {("runaway spend", incident.id)}
    assert batch.terminations == []  # the kill switch itself never terminates


def test_terminate_job_carries_the_incident_into_records(
    switch: Switch, batch: BatchEmulator, make_message: MessageFactory, queues: Queues
) -> None:
    message = make_message({"jobId": "gone-1", "incident": "operator-0123456789abcdef0123"})

    terminate_job.main(message)

    [record] = queues.poison_records()
    assert record["incident"] == "operator-0123456789abcdef0123"
    assert record["error"]["code"] == "JobNotFound"


def test_every_state_change_logs_one_incident_record(
    switch: Switch, batch: BatchEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    fleet(batch)
    caplog.set_level("INFO", logger="batch_terminator")
    incident = switch.open(prefix="render")
    switch.run()

    records = [r for r in caplog.records if getattr(r, "state", None) and getattr(r, "incident", None) == incident.id]
    assert [(r.state, r.levelname) for r in records] == [("accepted", "INFO"), ("executed", "INFO")]  # type: ignore[attr-defined]
    executed = records[-1]
    assert (executed.source, executed.account, executed.jobs, executed.schedules, executed.pools, executed.code) == (  # type: ignore[attr-defined]
        "operator",
        "default",
        3,
        1,
        1,
        None,
    )


# ---- approval, cancel, refusal


def test_manual_approval_waits_then_approve_acts(
    switch: Switch, batch: BatchEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    fleet(batch)
    monkeypatch.setenv("KILL_SWITCH_APPROVAL", "manual")
    wiring.install(wiring.Wiring(sleep=switch.slept.append))
    incident = switch.open(prefix="render")

    switch.run()
    waiting = switch.show(incident.id)
    assert waiting["state"] == "awaiting_approval"
    assert len(waiting["jobs"]) == 3
    assert operations(batch) == []
    assert switch.terminate_messages() == []

    switch.send(incident.id, "approve")
    switch.run()
    assert switch.show(incident.id)["state"] == "executed"
    assert operations(batch) == ["jobschedule.disable render-nightly", "pool.resize render"]
    assert len(switch.terminate_messages()) == 3


def test_an_operators_approval_wins_over_the_setting(switch: Switch, batch: BatchEmulator) -> None:
    fleet(batch)
    incident = switch.open(prefix="render", approval=Approval.MANUAL)
    switch.run()
    assert switch.show(incident.id)["state"] == "awaiting_approval"


def test_cancel_acts_on_nothing(switch: Switch, batch: BatchEmulator) -> None:
    fleet(batch)
    incident = switch.open(prefix="render", approval=Approval.MANUAL)
    switch.run()
    switch.send(incident.id, "cancel")
    switch.run()

    shown = switch.show(incident.id)
    assert [h["state"] for h in shown["history"]] == ["accepted", "awaiting_approval", "cancelled"]
    assert operations(batch) == []
    assert switch.terminate_messages() == []
    switch.send(incident.id, "approve")  # too late: cancelled is final
    switch.run()
    assert switch.show(incident.id)["state"] == "cancelled"


def test_more_jobs_than_alert_max_jobs_is_refused(
    switch: Switch, batch: BatchEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    fleet(batch)
    monkeypatch.setenv("ALERT_MAX_JOBS", "2")
    wiring.install(wiring.Wiring(sleep=switch.slept.append))
    incident = switch.open(prefix="render")
    switch.run()

    shown = switch.show(incident.id)
    assert shown["state"] == "refused"
    assert shown["error"]["code"] == "TooManyJobs"
    assert {v["key"]: v["value"] for v in shown["error"]["values"]} == {"count": "3", "limit": "2"}
    assert operations(batch) == []
    assert switch.terminate_messages() == []


# ---- what is never touched


def test_kept_jobs_schedules_and_pools_are_skipped_and_in_use_and_auto_pools_too(
    switch: Switch, batch: BatchEmulator
) -> None:
    keep = {"batch-terminator-keep": "true"}
    batch.add_pool("kept", dedicated=1, metadata=keep)
    batch.add_pool("busy", dedicated=1)
    batch.add_job("render-kept", pool_id="busy", metadata=keep)  # kept: not selected, and it keeps busy in use
    batch.add_job("render-a", pool_id="kept")
    batch.add_job("render-b", pool_id="busy")
    batch.add_job("render-auto", auto_pool={"poolLifetimeOption": "job"}, execution_pool_id="auto-1")
    batch.add_schedule("render-kept-schedule", pool_id="busy", metadata=keep, first_job=False)
    incident = switch.open(prefix="render")
    switch.run()

    shown = switch.show(incident.id)
    assert shown["state"] == "executed"
    assert sorted(job["jobId"] for job in shown["jobs"]) == ["render-a", "render-auto", "render-b"]
    assert shown["schedules"] == []
    assert {p["poolId"]: p["skipped"] for p in shown["pools"]} == {
        "kept": "PoolKept",
        "busy": "PoolInUse",
        "auto-1": "AutoPool",
    }
    assert all(p["before"] is None and p["result"] is None for p in shown["pools"])
    assert operations(batch) == []


def test_a_pool_that_became_busy_before_approval_is_skipped_as_in_use(switch: Switch, batch: BatchEmulator) -> None:
    fleet(batch)
    incident = switch.open(prefix="render", approval=Approval.MANUAL)
    switch.run()
    batch.add_job("late-1", pool_id="render")
    switch.send(incident.id, "approve")
    switch.run()

    [pool] = switch.show(incident.id)["pools"]
    assert (pool["skipped"], pool["before"]) == ("PoolInUse", None)
    assert operations(batch) == ["jobschedule.disable render-nightly"]


def test_dry_run_plans_and_records_but_changes_no_schedule_or_pool(
    switch: Switch, batch: BatchEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    fleet(batch)
    monkeypatch.setenv("TERMINATE_DRY_RUN", "true")
    wiring.install(wiring.Wiring(sleep=switch.slept.append))
    incident = switch.open(prefix="render")
    switch.run()

    shown = switch.show(incident.id)
    assert (shown["state"], shown["dryRun"]) == ("executed", True)
    assert operations(batch) == []
    assert len(switch.terminate_messages()) == 3  # §5a's dry run handles them


# ---- undo


def test_undo_enables_the_schedule_and_restores_both_kinds_of_pool(switch: Switch, batch: BatchEmulator) -> None:
    batch.add_pool("fixed", dedicated=2)
    batch.add_pool("elastic", dedicated=1, auto_scale_formula=FORMULA, auto_scale_evaluation_seconds=600)
    batch.add_job("render-1", pool_id="fixed")
    batch.add_job("render-2", pool_id="elastic")
    batch.add_schedule("render-nightly", pool_id="fixed", recurrence_seconds=86400, first_job=False)
    incident = switch.open(prefix="render")
    switch.run()
    elastic = batch.pool("elastic")
    assert elastic is not None
    assert not elastic.enable_auto_scale

    switch.send(incident.id, "undo")
    switch.run()

    shown = switch.show(incident.id)
    assert shown["state"] == "undone"
    assert "cannot be restarted" in shown["note"]
    assert batch.schedule("render-nightly").state == "active"  # type: ignore[union-attr]
    fixed, elastic = batch.pool("fixed"), batch.pool("elastic")
    assert fixed is not None
    assert elastic is not None
    assert (fixed.target_dedicated, fixed.target_low_priority, fixed.enable_auto_scale) == (2, 0, False)
    assert (elastic.enable_auto_scale, elastic.auto_scale_formula) == (True, FORMULA)
    assert elastic.auto_scale_evaluation_interval is not None
    assert elastic.auto_scale_evaluation_interval.total_seconds() == 600
    [enable] = [r for r in batch.requests if r.operation == "pool.enableautoscale"]
    assert enable.json() == {"autoScaleFormula": FORMULA, "autoScaleEvaluationInterval": "PT10M"}
    assert operations(batch)[-3:] == [
        "jobschedule.enable render-nightly",
        "pool.resize fixed",
        "pool.enableautoscale elastic",
    ]


def test_undo_records_what_is_gone_and_waits_out_the_30_second_refusal(switch: Switch, batch: BatchEmulator) -> None:
    batch.add_pool("gone", dedicated=2)
    batch.add_pool("elastic", dedicated=1, auto_scale_formula=FORMULA)
    batch.add_job("render-1", pool_id="gone")
    batch.add_job("render-2", pool_id="elastic")
    batch.add_schedule("render-nightly", pool_id="gone", recurrence_seconds=86400, first_job=False)
    incident = switch.open(prefix="render")
    switch.run()
    batch.remove_schedule("render-nightly")
    batch.remove_pool("gone")
    refusal = Fault.status(409, "AutoScaleTooManyRequestsToEnable")
    batch.inject(refusal, times=1, operation="pool.enableautoscale")

    switch.send(incident.id, "undo")
    switch.run()

    shown = switch.show(incident.id)
    assert shown["state"] == "undone"
    assert shown["schedules"][0]["result"] == {"httpStatus": 404, "code": "JobScheduleNotFound"}
    pools = {p["poolId"]: p["result"] for p in shown["pools"]}
    assert pools == {"gone": {"httpStatus": 404, "code": "PoolNotFound"}, "elastic": {"httpStatus": 200, "code": None}}
    assert 30.0 in switch.slept


# ---- commands that change nothing


def test_a_duplicate_plan_after_executed_does_nothing(switch: Switch, batch: BatchEmulator) -> None:
    fleet(batch)
    incident = switch.open(prefix="render")
    switch.run()
    before = len(batch.requests)

    switch.send(incident.id, "plan")
    switch.run()

    assert len(batch.requests) == before
    assert len(switch.terminate_messages()) == 3
    assert [h["state"] for h in switch.show(incident.id)["history"]] == ["accepted", "executed"]


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        json.dumps({"incident": "operator-1"}).encode(),
        json.dumps({"incident": "Bad Id!", "command": "plan"}).encode(),
        json.dumps({"incident": "operator-1", "command": "explode"}).encode(),
    ],
)
def test_malformed_commands_are_logged_and_finished(
    switch: Switch, body: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="batch_terminator")
    kill_switch.main(QueueMessage(id="m-1", body=body, dequeue_count=1, pop_receipt="p"))
    assert any("outcome=malformed" in r.getMessage() for r in caplog.records)


def test_an_unknown_incident_or_a_command_in_the_wrong_state_is_logged_and_finished(
    switch: Switch, batch: BatchEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="batch_terminator")
    fleet(batch)
    switch.send("operator-0000000000000000000a", "plan")
    incident = switch.open(prefix="render")
    switch.run()
    switch.send(incident.id, "approve")  # executed: approve is not taken
    switch.run()

    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("kill_switch")]
    assert any("outcome=unknown" in line for line in lines)
    assert any("command=approve" in line and "outcome=ignored state=executed" in line for line in lines)
    assert [h["state"] for h in switch.show(incident.id)["history"]] == ["accepted", "executed"]


# ---- failures


def test_a_batch_outage_while_planning_raises_then_fails_on_the_last_attempt_and_retry_executes(
    switch: Switch, batch: BatchEmulator
) -> None:
    fleet(batch)
    incident = switch.open(prefix="render")
    batch.inject(Fault.status(503, "ServerBusy"), times=8, operation="job.list")

    with pytest.raises(RetryLater):
        switch.run(dequeue_count=1)
    assert switch.show(incident.id)["state"] == "accepted"
    switch.queue.clear_messages()
    switch.send(incident.id, "plan")
    switch.run(dequeue_count=5)  # the last attempt
    failed = switch.show(incident.id)
    assert failed["state"] == "failed"
    assert failed["error"]["code"] == "ServerBusy"

    switch.send(incident.id, "retry")
    switch.run()
    shown = switch.show(incident.id)
    assert [h["state"] for h in shown["history"]] == ["accepted", "failed", "accepted", "executed"]
    assert shown["error"] is None
    assert len(switch.terminate_messages()) == 3


def test_a_crash_between_the_resize_and_the_incident_write_keeps_the_before(
    switch: Switch, batch: BatchEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    fleet(batch)
    incident = switch.open(prefix="render")
    original = IncidentStore.update
    crashed: list[bool] = []

    def dies_once_after_the_resize(
        self: IncidentStore, incident_id: str, change: Callable[[Incident], Incident]
    ) -> Incident:
        def watched(current: Incident) -> Incident:
            updated = change(current)
            if not crashed and any(p.result is not None for p in updated.pools):
                crashed.append(True)
                raise IncidentWriteFailed("the host was killed")
            return updated

        return original(self, incident_id, watched)

    monkeypatch.setattr(IncidentStore, "update", dies_once_after_the_resize)
    with pytest.raises(IncidentWriteFailed):
        switch.run(dequeue_count=1)
    render = batch.pool("render")
    assert render is not None
    assert render.target_dedicated == 0
    switch.queue.clear_messages()
    switch.send(incident.id, "plan")  # the host delivers it again
    switch.run(dequeue_count=2)

    shown = switch.show(incident.id)
    assert shown["state"] == "executed"
    [pool] = shown["pools"]
    assert (pool["before"]["targetDedicatedNodes"], pool["before"]["targetLowPriorityNodes"]) == (3, 1)
    assert shown["schedules"][0]["disabled"] is True  # its 409 JobScheduleDisabled came from the first delivery
    assert len(switch.terminate_messages()) == 3  # sent once

    switch.send(incident.id, "undo")
    switch.run()
    render = batch.pool("render")
    assert render is not None
    assert (render.target_dedicated, render.target_low_priority) == (3, 1)
    assert batch.schedule("render-nightly").state == "active"  # type: ignore[union-attr]


def test_the_incident_table_is_created_when_missing(switch: Switch) -> None:
    store = switch.store
    with pytest.raises(ResourceNotFoundError):
        store._table.get_entity("incident", "x")
    assert store.list_incidents() == []
    store.ensure_table()
    store.ensure_table()  # an existing table is no error


@pytest.mark.parametrize(("selectors", "lists"), [({"pool": "render"}, 1), ({"prefix": "render"}, 2)])
def test_planning_lists_the_active_jobs_once_when_the_selection_already_listed_them_all(
    switch: Switch, batch: BatchEmulator, selectors: dict[str, str], lists: int
) -> None:
    fleet(batch)
    incident = switch.open(**selectors)
    switch.run()
    assert switch.show(incident.id)["state"] == "executed"
    # without a prefix the selection's listing is every active job: the plan's in-use check reuses it (acting
    # lists once more, to see what runs on the pools now)
    made = [r.operation for r in batch.requests]
    planning = made[: made.index("jobschedule.disable")]
    assert planning.count("job.list") == lists
    assert [p["skipped"] for p in switch.show(incident.id)["pools"]] == [None]
