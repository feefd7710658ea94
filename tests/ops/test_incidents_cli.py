"""The operator CLI's incident commands (docs/CONTRACT.md §10, "Operator command line") over Azurite's queue and
table services: `incidents list | show | approve | cancel | retry | undo` and `kill`, then kill_switch itself."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from azure.functions.queue import QueueMessage
from azure.storage.queue import QueueClient

import kill_switch
from local.batch_emulator import BatchEmulator
from ops.__main__ import main
from ops.target import IncidentTarget, resolve_incident_target
from shared import wiring
from shared.config.settings import PROJECT_ROOT, StorageSettings
from shared.contract.errors import BatchError, BatchErrorDetail
from shared.contract.incident import (
    ActionResult,
    Approval,
    Incident,
    IncidentJob,
    IncidentPool,
    IncidentSchedule,
    PoolBefore,
    Selectors,
    Source,
    State,
)
from shared.rules.incidents import operator_incident_id
from shared.storage.incidents import IncidentStore
from tests.conftest import Queues

pytestmark = pytest.mark.integration

Run = Callable[..., tuple[int, str, str]]
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
# docs/CONTRACT.md §10: what `incidents show ID --json` prints at least, by name.
SPEC_KEYS = {
    "id",
    "state",
    "source",
    "rule",
    "account",
    "reason",
    "dryRun",
    "createdAt",
    "updatedAt",
    "jobs",
    "schedules",
    "pools",
    "error",
    "note",
    "history",
}
# What the stored document carries besides (the spec says "at least"): pinned, so a change is seen.
EXTRA_KEYS = {"selectors", "approval", "actingSince"}


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> Run:
    """Call main in-process; return (exit code, stdout, stderr)."""

    def invoke(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return invoke


class Table:
    """This test's incident table and command queue, read and written as kill_switch does."""

    def __init__(self, queues: Queues, queue_name: str, table_name: str) -> None:
        self.queues = queues
        self.queue_name = queue_name
        self.table_name = table_name
        self.store = IncidentStore.connect(StorageSettings(connection_string=queues.connection_string), table_name)
        self.queue = QueueClient.from_connection_string(queues.connection_string, queue_name)

    def put(
        self,
        state: State = State.ACCEPTED,
        *,
        at: datetime = T0,
        source: Source = Source.OPERATOR,
        rule: str | None = None,
        **changes: Any,
    ) -> Incident:
        """An incident in `state`, stored directly (its history: accepted, then `state`)."""
        incident = Incident.open(
            operator_incident_id() if source is Source.OPERATOR else f"{source.value}-{uuid.uuid4().hex[:20]}",
            source=source,
            reason="runaway spend",
            selectors=Selectors("render"),
            at=at,
            rule=rule,
        )
        if state is not State.ACCEPTED:
            incident = incident.entering(state, at + timedelta(minutes=1), **changes)
        elif changes:
            incident = incident.changed(at, **changes)
        stored, created = self.store.insert(incident)
        assert created
        return stored

    def commands(self) -> list[dict[str, Any]]:
        """The command messages on the queue (plain JSON, as host.json's messageEncoding none has them)."""
        return [json.loads(m.content) for m in self.queue.peek_messages(max_messages=32)]

    def get(self, incident_id: str) -> Incident:
        found = self.store.get(incident_id)
        assert found is not None
        return found


def clear_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """No app setting of the developer's shell leaks into a test."""
    for name in list(os.environ):
        if name.startswith(("AzureWebJobsStorage", "AzureFunctionsJobHost__", "INCIDENT_", "KILL_SWITCH_")) or name in (
            "TERMINATE_QUEUE_NAME",
            "POISON_QUEUE_NAME",
            "CONFIRM_QUEUE_NAME",
            "BATCH_ACCOUNTS",
            "ALERT_MAX_JOBS",
            "TERMINATE_DRY_RUN",
        ):
            monkeypatch.delenv(name)


def incident_settings(monkeypatch: pytest.MonkeyPatch, queues: Queues) -> Table:
    queue_name = f"{queues.trigger}-ks"
    table_name = f"inc{uuid.uuid4().hex[:16]}"
    monkeypatch.setenv("AzureWebJobsStorage", queues.connection_string)
    monkeypatch.setenv("INCIDENT_QUEUE_NAME", queue_name)
    monkeypatch.setenv("INCIDENT_TABLE_NAME", table_name)
    QueueClient.from_connection_string(queues.connection_string, queue_name).create_queue()
    return Table(queues, queue_name, table_name)


@pytest.fixture
def table(monkeypatch: pytest.MonkeyPatch, queues: Queues) -> Table:
    """Only the storage settings the incident commands read (no TERMINATE_QUEUE_NAME, no Batch account)."""
    clear_settings(monkeypatch)
    monkeypatch.delenv("BATCH_ACCOUNT_URL", raising=False)
    return incident_settings(monkeypatch, queues)


# ---- incidents list


def test_list_of_an_empty_table_is_empty_and_exits_0(table: Table, run: Run) -> None:
    assert run("incidents", "list", "--json") == (0, "[]\n", "")
    code, out, err = run("incidents", "list")
    assert (code, out) == (0, "")
    assert err == f"no incidents in table {table.table_name}\n"


def test_list_is_a_table_newest_first(table: Table, run: Run) -> None:
    old = table.put(State.EXECUTED, at=T0, jobs=(IncidentJob("render-1", "render", True),))
    new = table.put(
        State.AWAITING_APPROVAL,
        at=T0 + timedelta(hours=1),
        source=Source.ALERT,
        rule="spend-alert",
        jobs=(IncidentJob("render-1", "render"), IncidentJob("render-2", "render")),
        schedules=(IncidentSchedule("render-nightly"),),
        pools=(IncidentPool("render"), IncidentPool("shared", "PoolInUse")),
    )

    code, out, err = run("incidents", "list")

    assert (code, err) == (0, "")
    header, first, second = out.splitlines()
    assert header.split() == ["ID", "STATE", "SOURCE", "RULE", "ACCOUNT", "CREATED", "AT", "JOBS", "SCHEDULES", "POOLS"]
    assert first.split()[:6] == [
        new.id,
        "awaiting_approval",
        "alert",
        "spend-alert",
        "default",
        "2025-03-01T13:00:00.000Z",
    ]
    assert first.split()[6:] == ["2", "1", "1"]  # the pools it would scale: PoolInUse is skipped
    assert second.split() == [old.id, "executed", "operator", "-", "default", "2025-03-01T12:00:00.000Z", "1", "0", "0"]


def test_list_json_is_one_array_newest_first(table: Table, run: Run) -> None:
    ids = [table.put(at=T0 + timedelta(minutes=minutes)).id for minutes in (5, 0, 10)]

    code, out, err = run("incidents", "list", "--json")

    assert (code, err) == (0, "")
    listed = json.loads(out)
    assert [item["id"] for item in listed] == [ids[2], ids[0], ids[1]]
    for item in listed:
        assert {"id", "state", "source", "rule", "createdAt"} <= set(item)
        assert (item["state"], item["source"], item["rule"]) == ("accepted", "operator", None)


def test_incident_commands_need_no_trigger_queue_or_batch_setting(table: Table, run: Run) -> None:
    # the fixture set only AzureWebJobsStorage and INCIDENT_*: list works
    assert run("incidents", "list", "--json")[0] == 0


# ---- incidents show


def executed_incident(table: Table) -> Incident:
    before = PoolBefore(False, None, None, 3, 1)
    return table.put(
        State.EXECUTED,
        jobs=(IncidentJob("render-1", "render", True), IncidentJob("render-2", "render", True)),
        schedules=(IncidentSchedule("render-nightly", ActionResult(204), True),),
        pools=(
            IncidentPool("render", None, before, ActionResult(202)),
            IncidentPool("shared", "PoolInUse"),
        ),
    )


def test_show_json_has_every_spec_key_named_exactly(table: Table, run: Run) -> None:
    incident = executed_incident(table)

    code, out, err = run("incidents", "show", incident.id, "--json")

    assert (code, err) == (0, "")
    assert out.count("\n") == 1  # one JSON object on one line
    shown = json.loads(out)
    assert set(shown) == SPEC_KEYS | EXTRA_KEYS
    assert shown == incident.to_document()
    assert (shown["id"], shown["state"], shown["source"], shown["rule"]) == (incident.id, "executed", "operator", None)
    assert (shown["account"], shown["reason"], shown["dryRun"]) == ("default", "runaway spend", False)
    assert shown["createdAt"] == "2025-03-01T12:00:00.000Z"
    assert shown["updatedAt"] == "2025-03-01T12:01:00.000Z"
    assert [{k: job[k] for k in ("jobId", "poolId")} for job in shown["jobs"]] == [
        {"jobId": "render-1", "poolId": "render"},
        {"jobId": "render-2", "poolId": "render"},
    ]
    assert [{k: s[k] for k in ("jobScheduleId", "result")} for s in shown["schedules"]] == [
        {"jobScheduleId": "render-nightly", "result": {"httpStatus": 204, "code": None}}
    ]
    assert shown["pools"] == [
        {
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
        },
        {"poolId": "shared", "skipped": "PoolInUse", "before": None, "result": None},
    ]
    assert (shown["error"], shown["note"]) == (None, None)
    assert shown["history"] == [
        {"state": "accepted", "at": "2025-03-01T12:00:00.000Z"},
        {"state": "executed", "at": "2025-03-01T12:01:00.000Z"},
    ]


def test_show_json_of_a_refused_incident_carries_the_error(table: Table, run: Run) -> None:
    refusal = BatchError(
        "TooManyJobs", "too many", (BatchErrorDetail("count", "250"), BatchErrorDetail("limit", "100"))
    )
    incident = table.put(State.REFUSED, error=refusal)
    shown = json.loads(run("incidents", "show", incident.id, "--json")[1])
    assert shown["error"] == {
        "code": "TooManyJobs",
        "message": "too many",
        "values": [{"key": "count", "value": "250"}, {"key": "limit", "value": "100"}],
    }


def test_show_is_readable_with_the_plan_results_and_history(table: Table, run: Run) -> None:
    incident = executed_incident(table)

    code, out, err = run("incidents", "show", incident.id)

    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == f"incident {incident.id}"
    assert "  state      executed" in lines
    assert "  selectors  prefix=render" in lines
    assert "jobs (2)" in lines
    assert any(line.split() == ["render-1", "pool", "render", "enqueued"] for line in lines)
    assert any(line.split()[:3] == ["render-nightly", "HTTP", "204"] for line in lines)
    render = next(line for line in lines if line.strip().startswith("render "))
    assert "HTTP 202" in render
    assert "before: 3 dedicated, 1 low-priority" in render
    assert any(line.split() == ["shared", "skipped:", "PoolInUse"] for line in lines)
    assert "history" in lines
    assert any(line.split() == ["2025-03-01T12:01:00.000Z", "executed"] for line in lines)
    assert lines[-1] == f"next: batch-terminator incidents undo {incident.id}"


def test_show_of_an_unknown_incident_exits_1(table: Table, run: Run) -> None:
    code, out, err = run("incidents", "show", "operator-00000000000000000000")
    assert (code, out) == (1, "")
    assert err == f"error: no incident with id operator-00000000000000000000 in table {table.table_name}\n"


def test_show_of_a_malformed_id_exits_2(table: Table, run: Run) -> None:
    code, out, err = run("incidents", "show", "Not An Id")
    assert (code, out) == (2, "")
    assert err.startswith("error: ID Not An Id ")
    assert err.count("\n") == 1


# ---- incidents approve | cancel | retry | undo


@pytest.mark.parametrize(
    ("state", "command"),
    [
        (State.AWAITING_APPROVAL, "approve"),
        (State.AWAITING_APPROVAL, "cancel"),
        (State.FAILED, "retry"),
        (State.EXECUTED, "undo"),
    ],
)
def test_a_command_the_state_takes_is_enqueued(table: Table, run: Run, state: State, command: str) -> None:
    incident = table.put(state)

    code, out, err = run("incidents", command, incident.id)

    assert (code, err) == (0, "")
    assert out == f"{command} enqueued for incident {incident.id} ({state.value}) on {table.queue_name}\n"
    assert table.commands() == [{"incident": incident.id, "command": command}]
    assert table.get(incident.id) == incident  # the CLI changes no incident: kill_switch does


def test_approve_json(table: Table, run: Run) -> None:
    incident = table.put(State.AWAITING_APPROVAL)
    code, out, _ = run("incidents", "approve", incident.id, "--json")
    assert code == 0
    assert json.loads(out) == {
        "incident": incident.id,
        "command": "approve",
        "state": "awaiting_approval",
        "queue": table.queue_name,
    }


@pytest.mark.parametrize(
    ("state", "command", "reason"),
    [
        (State.EXECUTED, "approve", "approve is accepted only when awaiting_approval; it takes: undo"),
        (State.ACCEPTED, "undo", "undo is accepted only when executed; it takes no command now"),
        (State.EXECUTED, "retry", "retry is accepted only when failed; it takes: undo"),
        (State.EXECUTED, "cancel", "cancel is accepted only when awaiting_approval; it takes: undo"),
    ],
)
def test_a_command_the_state_does_not_take_exits_2_and_enqueues_nothing(
    table: Table, run: Run, state: State, command: str, reason: str
) -> None:
    incident = table.put(state)

    code, out, err = run("incidents", command, incident.id)

    assert (code, out) == (2, "")
    assert err == f"error: incident {incident.id} is {state.value}: {reason}; nothing enqueued\n"
    assert table.commands() == []


def test_a_command_for_an_unknown_incident_exits_2_and_enqueues_nothing(table: Table, run: Run) -> None:
    code, out, err = run("incidents", "approve", "operator-00000000000000000000")
    assert (code, out) == (2, "")
    assert err == f"error: no incident with id operator-00000000000000000000 in table {table.table_name}\n"
    assert table.commands() == []


def test_a_command_without_incident_queue_name_names_the_setting(
    table: Table, run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    incident = table.put(State.AWAITING_APPROVAL)
    monkeypatch.setenv("INCIDENT_QUEUE_NAME", "")
    monkeypatch.setenv("INCIDENT_TABLE_NAME", table.table_name)
    # the settings file's INCIDENT_QUEUE_NAME is not mixed in: INCIDENT_TABLE_NAME came from the environment
    code, out, err = run("incidents", "approve", incident.id)
    assert (code, out, err) == (2, "", "error: setting INCIDENT_QUEUE_NAME: is required\n")
    assert run("incidents", "show", incident.id, "--json")[0] == 0  # reading needs no queue


# ---- kill


@pytest.mark.parametrize(
    ("options", "selectors"),
    [
        (("--prefix", "render-"), {"prefix": "render-", "pool": None, "metadata": None}),
        (("--pool", "render"), {"prefix": None, "pool": "render", "metadata": None}),
        (("--metadata", "team=render"), {"prefix": None, "pool": None, "metadata": "team=render"}),
        (
            ("--prefix", "r", "--pool", "gpu_1", "--metadata", "team = render farm"),
            {"prefix": "r", "pool": "gpu_1", "metadata": "team=render farm"},
        ),
    ],
)
def test_kill_opens_an_operator_incident_and_enqueues_its_plan(
    table: Table, run: Run, options: tuple[str, ...], selectors: dict[str, Any]
) -> None:
    before = datetime.now(UTC)

    code, out, err = run("kill", "--reason", "runaway spend", *options)

    assert (code, err) == (0, "")
    assert out.endswith("\n")
    assert out.count("\n") == 1
    incident_id = out.strip()
    assert incident_id.startswith("operator-")
    stored = table.get(incident_id)
    assert (stored.state, stored.source, stored.rule, stored.account) == (
        State.ACCEPTED,
        Source.OPERATOR,
        None,
        "default",
    )
    assert stored.reason == "runaway spend"
    assert stored.selectors.to_document() == selectors
    assert stored.approval is None  # KILL_SWITCH_APPROVAL decides when the plan runs
    assert before - timedelta(seconds=1) <= stored.created_at <= datetime.now(UTC)
    assert table.commands() == [{"incident": incident_id, "command": "plan"}]


@pytest.mark.parametrize("approval", ["auto", "manual"])
def test_kill_records_the_approval_given(table: Table, run: Run, approval: str) -> None:
    code, out, _ = run("kill", "--reason", "r", "--prefix", "render", "--approval", approval)
    assert code == 0
    assert table.get(out.strip()).approval is Approval(approval)


def test_kill_with_an_account_alias_the_app_has(table: Table, run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCH_ACCOUNTS", "eu=https://eu.westeurope.batch.azure.com")
    code, out, err = run("kill", "--reason", "r", "--prefix", "render", "--account", "EU")
    assert (code, err) == (0, "")
    assert table.get(out.strip()).account == "eu"

    code, out, err = run("kill", "--reason", "r", "--prefix", "render", "--account", "us")
    assert (code, out) == (2, "")
    assert err == 'error: account (--account): is not a configured account (known: default, eu) (got "us")\n'


def test_kill_without_batch_accounts_checks_the_alias_form_and_warns(table: Table, run: Run) -> None:
    code, out, err = run("kill", "--reason", "r", "--prefix", "render", "--account", "eu")
    assert code == 0
    assert table.get(out.strip()).account == "eu"
    assert err.startswith("warning: BATCH_ACCOUNTS is not set here, so --account eu is checked for its form only")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ((), "give at least one selector: --prefix, --pool or --metadata"),
        (("--prefix", "  "), "give at least one selector: --prefix, --pool or --metadata"),
        (("--prefix", "render*"), "--prefix: may contain only letters, digits, hyphens and underscores"),
        (("--pool", "gpu pool"), "--pool: must be a Batch pool id"),
        (("--metadata", "team"), "--metadata: must be key=value, e.g. team=render"),
        (("--metadata", "=render"), "--metadata: must be key=value, e.g. team=render"),
        (("--prefix", "r", "--account", "Not An Alias"), "account (--account): must be an account alias"),
        (("--prefix", "r", "--reason", "x" * 1025), "reason (--reason): must be at most 1024 characters"),
    ],
)
def test_kill_with_bad_or_no_selectors_exits_2_and_stores_nothing(
    table: Table, run: Run, options: tuple[str, ...], message: str
) -> None:
    code, out, err = run("kill", "--reason", "runaway spend", *options)
    assert (code, out) == (2, "")
    assert err.startswith(f"error: {message}")
    assert err.count("\n") == 1
    assert table.store.list_incidents() == []
    assert table.commands() == []


def test_kill_without_reason_is_a_usage_error(table: Table, run: Run) -> None:
    code, out, err = run("kill", "--prefix", "render")
    assert (code, out) == (2, "")
    assert "--reason" in err
    assert run("kill", "--prefix", "render", "--reason", " ")[0] == 2
    assert table.store.list_incidents() == []


def test_kill_to_a_missing_queue_exits_3_and_stores_nothing(
    table: Table, run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INCIDENT_QUEUE_NAME", "no-such-queue")
    code, out, err = run("kill", "--reason", "r", "--prefix", "render")
    assert (code, out) == (3, "")
    assert err.startswith("error: queue no-such-queue does not exist at http://127.0.0.1:")
    assert table.store.list_incidents() == []


# ---- storage failures and settings


@pytest.mark.parametrize(
    "argv",
    [
        ("incidents", "list"),
        ("incidents", "show", "operator-00000000000000000000"),
        ("incidents", "approve", "operator-00000000000000000000"),
        ("kill", "--reason", "r", "--prefix", "render"),
    ],
)
def test_unreachable_storage_exits_3_fast_with_one_line(
    monkeypatch: pytest.MonkeyPatch, run: Run, argv: tuple[str, ...]
) -> None:
    clear_settings(monkeypatch)
    key = base64.b64encode(b"not-a-real-key").decode()
    dead = (
        f"DefaultEndpointsProtocol=http;AccountName=dead;AccountKey={key};"
        "QueueEndpoint=http://127.0.0.1:9/dead;TableEndpoint=http://127.0.0.1:9/dead;"
    )
    monkeypatch.setenv("AzureWebJobsStorage", dead)
    monkeypatch.setenv("INCIDENT_QUEUE_NAME", "batch-kill-switch")
    started = time.monotonic()
    code, out, err = run(*argv)
    assert time.monotonic() - started < 8
    assert (code, out) == (3, "")
    assert err == "error: cannot reach storage at http://127.0.0.1:9 (connection refused)\n"
    assert key not in err


def test_incident_settings_come_from_the_environment_then_the_settings_files(tmp_path: Path) -> None:
    sample = {
        "Values": {
            "AzureWebJobsStorage": "UseDevelopmentStorage=true",
            "INCIDENT_QUEUE_NAME": "from-sample",
            "INCIDENT_TABLE_NAME": "fromsample",
        }
    }
    (tmp_path / "local.settings.sample.json").write_text(json.dumps(sample), encoding="utf-8")
    (tmp_path / "host.json").write_text('{"extensions": {"queues": {"messageEncoding": "base64"}}}', encoding="utf-8")
    target = resolve_incident_target(environ={}, root=tmp_path)
    assert target == IncidentTarget(
        StorageSettings(connection_string="UseDevelopmentStorage=true"), "fromsample", "from-sample", "base64"
    )
    # the two INCIDENT_* settings come whole from one source: an environment queue means the default table
    target = resolve_incident_target(environ={"INCIDENT_QUEUE_NAME": "from-env"}, root=tmp_path)
    assert (target.queue_name, target.table) == ("from-env", "batchterminatorincidents")
    identity = {"AzureWebJobsStorage__accountName": "acct", "INCIDENT_QUEUE_NAME": "q-1"}
    target = resolve_incident_target(environ=identity, root=tmp_path)
    assert target.storage.table_service_uri == "https://acct.table.core.windows.net"
    with pytest.raises(Exception, match="INCIDENT_QUEUE_NAME"):
        resolve_incident_target(
            environ={"INCIDENT_QUEUE_NAME": "batch-terminate", "TERMINATE_QUEUE_NAME": "batch-terminate"}, root=tmp_path
        )


def test_identity_storage_without_a_table_service_names_the_setting(monkeypatch: pytest.MonkeyPatch, run: Run) -> None:
    clear_settings(monkeypatch)
    monkeypatch.setenv("AzureWebJobsStorage__queueServiceUri", "https://acct.queue.core.windows.net")
    code, out, err = run("incidents", "list")
    assert (code, out) == (2, "")
    assert err.startswith("error: setting AzureWebJobsStorage__tableServiceUri: is required for incidents")


# ---- end to end: kill, then kill_switch runs the plan


def test_kill_then_kill_switch_runs_the_plan_and_show_says_executed(
    monkeypatch: pytest.MonkeyPatch, function_env: dict[str, str], queues: Queues, batch: BatchEmulator, run: Run
) -> None:
    for name in ("KILL_SWITCH_APPROVAL", "ALERT_MAX_JOBS", "TERMINATE_DRY_RUN", "CONFIRM_QUEUE_NAME", "BATCH_ACCOUNTS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KILL_SWITCH_SCALE_POOLS", "true")
    monkeypatch.setenv("KILL_SWITCH_DISABLE_SCHEDULES", "true")
    table = incident_settings(monkeypatch, queues)
    batch.resize_seconds = 0
    batch.add_pool("render", dedicated=3, low_priority=1)
    batch.add_pool("shared", dedicated=2)
    batch.add_job("render-1", pool_id="render")
    batch.add_job("render-2", pool_id="render")
    batch.add_job("other-1", pool_id="shared")
    batch.add_schedule("render-nightly", pool_id="render", recurrence_seconds=86400)
    wiring.install(wiring.Wiring(sleep=lambda _: None))

    code, out, err = run("kill", "--reason", "runaway render", "--prefix", "render", "--approval", "manual")
    assert (code, err) == (0, "")
    incident_id = out.strip()

    def deliver() -> list[str]:
        ran = []
        for message in table.queue.receive_messages(max_messages=32, visibility_timeout=5):
            kill_switch.main(
                QueueMessage(
                    id=message.id, body=message.content.encode(), dequeue_count=1, pop_receipt=message.pop_receipt
                )
            )
            table.queue.delete_message(message)
            ran.append(json.loads(message.content)["command"])
        return ran

    assert deliver() == ["plan"]
    code, out, _ = run("incidents", "show", incident_id)
    assert "  state      awaiting_approval" in out.splitlines()
    assert out.splitlines()[-1] == (
        f"next: batch-terminator incidents approve {incident_id} | batch-terminator incidents cancel {incident_id}"
    )

    assert run("incidents", "approve", incident_id)[0] == 0
    assert deliver() == ["approve"]

    code, out, err = run("incidents", "show", incident_id)
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert "  state      executed" in lines
    assert "jobs (3)" in lines  # render-1, render-2 and the schedule's render-nightly:job-1
    render = next(line for line in lines if line.strip().startswith("render "))
    assert "HTTP 202" in render
    assert "before: 3 dedicated, 1 low-priority" in render
    shown = json.loads(run("incidents", "show", incident_id, "--json")[1])
    assert shown["state"] == "executed"
    assert [h["state"] for h in shown["history"]] == ["accepted", "awaiting_approval", "executed"]
    listed = json.loads(run("incidents", "list", "--json")[1])
    assert [(item["id"], item["state"], item["jobs"]) for item in listed] == [(incident_id, "executed", 3)]
    # a second approve is refused by the CLI: nothing enqueued
    code, _, err = run("incidents", "approve", incident_id)
    assert code == 2
    assert table.commands() == []
    # the terminate messages carry the incident
    terminate = QueueClient.from_connection_string(queues.connection_string, queues.trigger)
    messages = [json.loads(m.content) for m in terminate.peek_messages(max_messages=32)]
    assert {(m["reason"], m["incident"]) for m in messages} == {("runaway render", incident_id)}


def test_as_a_process_kill_prints_the_id_alone_and_a_refusal_exits_2(table: Table, tmp_path: Path) -> None:
    """Through entry() as `python -m ops` from another folder: what a script reading stdout and $? gets."""
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}

    def cli(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "ops", *argv], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
        )

    killed = cli("kill", "--reason", "runaway spend", "--prefix", "render")
    assert (killed.returncode, killed.stderr) == (0, "")
    incident_id = killed.stdout.strip()
    assert killed.stdout == f"{incident_id}\n"
    assert table.commands() == [{"incident": incident_id, "command": "plan"}]
    listed = cli("incidents", "list", "--json")
    assert [item["id"] for item in json.loads(listed.stdout)] == [incident_id]
    refused = cli("incidents", "undo", incident_id)
    assert (refused.returncode, refused.stdout) == (2, "")
    assert refused.stderr.count("\n") == 1
    assert len(table.commands()) == 1
