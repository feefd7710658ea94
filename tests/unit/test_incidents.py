"""Incident decisions on data (docs/CONTRACT.md §10): the state machine, the command message, selection, ids."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

import pytest

from shared.batch.job_schedules import JobSchedule
from shared.batch.jobs import Job
from shared.batch.pools import Pool
from shared.contract.errors import InvalidMessage
from shared.contract.incident import (
    Command,
    Incident,
    IncidentCommand,
    IncidentPool,
    PoolBefore,
    Selectors,
    Source,
    State,
)
from shared.contract.terminate_request import INCIDENT_ID_PATTERN
from shared.rules import incidents as rules

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def opened() -> Incident:
    return Incident.open("operator-1", source=Source.OPERATOR, reason="r", selectors=Selectors("x"), at=NOW)


@pytest.mark.parametrize(
    ("state", "commands"),
    [
        (State.ACCEPTED, (Command.PLAN,)),
        (State.AWAITING_APPROVAL, (Command.APPROVE, Command.CANCEL)),
        (State.FAILED, (Command.RETRY,)),
        (State.EXECUTED, (Command.UNDO,)),
        (State.REFUSED, ()),
        (State.CANCELLED, ()),
        (State.UNDONE, ()),
    ],
)
def test_each_state_takes_the_commands_of_the_table(state: State, commands: tuple[Command, ...]) -> None:
    assert rules.commands_in(state) == commands


def test_moves_follow_the_state_machine_and_are_recorded() -> None:
    incident = rules.move(opened(), State.EXECUTED, NOW)
    undone = rules.move(incident, State.UNDONE, NOW)
    assert [change.state for change in undone.history] == [State.ACCEPTED, State.EXECUTED, State.UNDONE]
    with pytest.raises(rules.NotAccepted):
        rules.move(undone, State.EXECUTED, NOW)
    with pytest.raises(rules.NotAccepted):
        rules.require(incident, Command.PLAN)


def test_a_document_round_trips_and_never_replaces_a_before() -> None:
    incident = opened()
    incident = incident.changed(NOW, pools=(IncidentPool("p1"),))
    first = PoolBefore(True, "$x=1;", "PT15M", 2, 1)
    incident = incident.with_pool("p1", NOW, before=first)
    incident = incident.with_pool("p1", NOW, before=PoolBefore(False))
    assert incident.pool("p1").before == first  # type: ignore[union-attr]
    assert Incident.from_document(json.loads(json.dumps(incident.to_document()))) == incident
    shown = incident.to_document()
    assert {"id", "state", "source", "rule", "account", "reason", "dryRun", "createdAt", "updatedAt", "jobs",
            "schedules", "pools", "error", "note", "history"} <= set(shown)  # fmt: skip
    assert shown["createdAt"] == "2026-01-02T03:04:05.000Z"


@pytest.mark.parametrize("encode", [lambda t: t, lambda t: base64.b64encode(t.encode()).decode()])
def test_a_command_message_is_json_or_base64(encode: object) -> None:
    text = json.dumps({"incident": "alert-0123", "command": "undo"})
    assert IncidentCommand.parse(encode(text)) == IncidentCommand("alert-0123", Command.UNDO)  # type: ignore[operator]


@pytest.mark.parametrize(
    ("body", "keys"),
    [
        ("{}", ["incident", "command"]),
        ('{"incident": "A B", "command": "plan"}', ["incident"]),
        ('{"incident": "a", "command": "nuke"}', ["command"]),
        ('{"incident": 1, "command": 2}', ["incident", "command"]),
        ("[]", ["message"]),
    ],
)
def test_a_malformed_command_names_each_problem(body: str, keys: list[str]) -> None:
    with pytest.raises(InvalidMessage) as raised:
        IncidentCommand.parse(body)
    assert [p.key for p in raised.value.problems] == keys


def test_ids_are_deterministic_for_alerts_and_budgets_and_safe_everywhere() -> None:
    alert = rules.alert_incident_id("/subscriptions/s/alerts/a1", "2026-01-01T00:00:00Z")
    assert alert == rules.alert_incident_id("/subscriptions/s/alerts/a1", "2026-01-01T00:00:00Z")
    assert alert != rules.alert_incident_id("/subscriptions/s/alerts/a1", "2026-01-02T00:00:00Z")
    budget = rules.body_incident_id(Source.BUDGET, b'{"a": 1}')
    assert budget == rules.body_incident_id(Source.BUDGET, b'{"a": 1}') != rules.body_incident_id(Source.BUDGET, b"{}")
    operator = rules.operator_incident_id()
    assert operator != rules.operator_incident_id()
    for made in (alert, budget, operator):
        assert INCIDENT_ID_PATTERN.fullmatch(made), made
    assert alert.startswith("alert-")
    assert budget.startswith("budget-")
    assert operator.startswith("operator-")


def test_schedules_are_selected_by_their_job_or_the_selectors_never_when_kept() -> None:
    schedules = [
        JobSchedule("nightly", "active", recent_job_id="nightly:job-3"),
        JobSchedule("render-weekly", "active"),
        JobSchedule("etl", "active", job_metadata={"Team": "render"}),
        JobSchedule("render-kept", "active", metadata={"batch-terminator-keep": "true"}),
        JobSchedule("render-off", "disabled"),
        JobSchedule("older", "active", recent_job_id="older:job-9"),
    ]
    picked = rules.select_schedules(schedules, Selectors("render"), ["nightly:job-3", "older:job-2"])
    assert [s.id for s in picked] == ["nightly", "render-weekly", "older"]
    by_metadata = rules.select_schedules(schedules, Selectors(metadata=("team", "render")), [])
    assert [s.id for s in by_metadata] == ["etl"]


def test_pools_are_skipped_as_auto_kept_or_in_use() -> None:
    selected = [
        Job("a", "active", execution_pool_id="free"),
        Job("b", "active", execution_pool_id="kept"),
        Job("c", "active", execution_pool_id="busy"),
        Job("d", "active", execution_pool_id="auto-1", auto_pool=True),
    ]
    active = [*selected, Job("other", "active", pool_info_pool_id="BUSY")]
    pools = {
        "free": Pool("free"),
        "kept": Pool("kept", metadata={"batch-terminator-keep": "True"}),
        "busy": Pool("busy"),
        "auto-1": Pool("auto-1"),
    }
    planned = rules.plan_pools(selected, active, pools)
    assert [(p.pool_id, p.skipped) for p in planned] == [
        ("free", None),
        ("kept", "PoolKept"),
        ("busy", "PoolInUse"),
        ("auto-1", "AutoPool"),
    ]


def test_too_many_jobs_names_count_and_limit() -> None:
    error = rules.too_many_jobs(5, 4)
    assert (error.code, [(v.key, v.value) for v in error.values]) == ("TooManyJobs", [("count", "5"), ("limit", "4")])
