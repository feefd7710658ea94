"""The kill switch as infrastructure (docs/CONTRACT.md §9, §10): its queue, table, settings, roles, the action group
that calls alert_terminate, the optional budget, and the alert rules and workbook panels over incident records.
Also azd's principal type (main.parameters.json). The templates are read as text, as in test_infra.py.
"""

from __future__ import annotations

import json
import re

from .test_infra import (
    INFRA,
    ROOT,
    _app_settings,
    _bicep,
    _block,
    _modules,
    _param,
    _param_default,
    _property_block,
    _query_files,
    _query_text,
    _resources,
    _rule_condition,
    _rules,
    _spec_section,
    _top_level_entries,
)

INCIDENT_STATES = {"accepted", "refused", "awaiting_approval", "executed", "failed", "cancelled", "undone"}


def _parameters() -> dict[str, str]:
    data = json.loads((INFRA / "main.parameters.json").read_text(encoding="utf-8"))["parameters"]
    return {name: entry["value"] for name, entry in data.items()}


def _module_params(symbol: str) -> dict[str, str]:
    (body,) = [body for s, body in _modules(_bicep("main.bicep")) if s == symbol]
    return _top_level_entries(_property_block(body, "params"))


# --- azd: the deploying principal's type ------------------------------------------------------------------------


def test_principal_type_comes_from_azd_with_azds_default() -> None:
    # The form azd templates use: azd fills AZURE_PRINCIPAL_TYPE when it knows it, else User (an interactive login).
    assert _parameters()["principalType"] == "${AZURE_PRINCIPAL_TYPE=User}"
    assert _parameters()["principalId"] == "${AZURE_PRINCIPAL_ID}"
    main = _bicep("main.bicep")
    assert _param(main, "principalType") == ("string", "'User'")
    allowed = re.search(r"@allowed\(\[([^\]]*)\]\)\n(?:@[^\n]*\n)*param principalType\b", main)
    assert allowed
    assert set(re.findall(r"'(\w+)'", allowed.group(1))) == {"User", "Group", "ServicePrincipal"}
    assert _module_params("storage")["operatorPrincipalType"] == "principalType"
    assert "principalType: principalType" not in main  # nothing else hard-codes or reuses it for the app identity


# --- queue, table and settings ------------------------------------------------------------------------------------


def test_incident_queue_and_table_are_deployed_and_named_in_the_settings() -> None:
    main = _bicep("main.bicep")
    storage = _bicep("modules/storage.bicep")
    assert _param_default(main, "incidentQueueName") == "batch-kill-switch"
    assert _param_default(main, "incidentTableName") == "batchterminatorincidents"
    ((_, table),) = _resources(storage, "Microsoft.Storage/storageAccounts/tableServices/tables@")
    assert _top_level_entries(table)["name"] == "incidentTableName"
    assert _module_params("storage")["incidentTableName"] == "incidentTableName"
    app = _module_params("functionApp")
    assert app["incidentQueueName"] == "storage.outputs.incidentQueueName"
    assert app["incidentTableName"] == "storage.outputs.incidentTableName"
    settings = _app_settings()
    assert settings["INCIDENT_QUEUE_NAME"] == "incidentQueueName"
    assert settings["INCIDENT_TABLE_NAME"] == "incidentTableName"
    # Identity-based access to the table service (docs/CONTRACT.md §2 INCIDENT_TABLE_NAME).
    assert settings["AzureWebJobsStorage__tableServiceUri"] == "storageTableEndpoint"
    parameters = _parameters()
    assert parameters["incidentQueueName"] == "${INCIDENT_QUEUE_NAME=batch-kill-switch}"
    assert parameters["incidentTableName"] == "${INCIDENT_TABLE_NAME=batchterminatorincidents}"
    # A valid table name: 3-63 letters and digits, starting with a letter.
    assert re.fullmatch(r"[A-Za-z][A-Za-z0-9]{2,62}", _param_default(main, "incidentTableName"))


def test_kill_switch_settings_come_from_parameters_with_the_specs_defaults() -> None:
    main = _bicep("main.bicep")
    settings = _app_settings()
    assert settings["KILL_SWITCH_APPROVAL"] == "killSwitchApproval"
    assert settings["KILL_SWITCH_DISABLE_SCHEDULES"] == "killSwitchDisableSchedules ? 'true' : 'false'"
    assert settings["KILL_SWITCH_SCALE_POOLS"] == "killSwitchScalePools ? 'true' : 'false'"
    assert _param(main, "killSwitchApproval") == ("string", "'auto'")
    assert _param(main, "killSwitchDisableSchedules") == ("bool", "true")
    assert _param(main, "killSwitchScalePools") == ("bool", "false")
    allowed = re.search(r"@allowed\(\[([^\]]*)\]\)\n(?:@[^\n]*\n)*param killSwitchApproval\b", main)
    assert allowed
    assert set(re.findall(r"'(\w+)'", allowed.group(1))) == {"auto", "manual"}
    parameters = _parameters()
    assert parameters["killSwitchApproval"] == "${KILL_SWITCH_APPROVAL=auto}"
    assert parameters["killSwitchDisableSchedules"] == "${KILL_SWITCH_DISABLE_SCHEDULES=true}"
    assert parameters["killSwitchScalePools"] == "${KILL_SWITCH_SCALE_POOLS=false}"
    section = _spec_section("2")
    for name in ("KILL_SWITCH_APPROVAL", "KILL_SWITCH_DISABLE_SCHEDULES", "KILL_SWITCH_SCALE_POOLS"):
        assert f"`{name}`" in section, name


# --- the Batch role -------------------------------------------------------------------------------------------------

# What the app calls (docs/DEPLOY.md "Permissions by feature"). Names: Microsoft's Batch RBAC operations list.
BATCH_ACTIONS = {"Microsoft.Batch/batchAccounts/read", "Microsoft.Batch/batchAccounts/pools/read"}
BATCH_SCALE_ACTIONS = {"Microsoft.Batch/batchAccounts/pools/write"}
BATCH_DATA_ACTIONS = {
    "Microsoft.Batch/batchAccounts/jobs/read",
    "Microsoft.Batch/batchAccounts/jobs/write",
    "Microsoft.Batch/batchAccounts/jobSchedules/read",
    "Microsoft.Batch/batchAccounts/jobSchedules/write",
}


def _list_var(text: str, name: str) -> set[str]:
    m = re.search(r"^var " + name + r" = \[(.*?)^\]", text, re.M | re.S)
    assert m, f"var {name} not found"
    return set(re.findall(r"'([^']+)'", m.group(1)))


def test_batch_role_has_exactly_what_the_app_calls_and_pools_write_only_when_scaling() -> None:
    text = _bicep("modules/batch-role.bicep")
    assert _list_var(text, "readActions") == BATCH_ACTIONS
    assert _list_var(text, "poolWriteActions") == BATCH_SCALE_ACTIONS
    assert _list_var(text, "dataActions") == BATCH_DATA_ACTIONS
    ((_, role),) = _resources(text, "Microsoft.Authorization/roleDefinitions@")
    assert "actions: scalePools ? concat(readActions, poolWriteActions) : readActions" in role
    assert "dataActions: dataActions" in role
    assert re.search(r"notActions:\s*\[\]", role)
    assert re.search(r"notDataActions:\s*\[\]", role)
    assert "'*'" not in role
    assert "/*'" not in text
    assert re.search(r"^\s*name:\s*guid\(batchAccount\.id, principalId,", role, re.M)
    assert re.search(r"assignableScopes:\s*\[\s*resourceGroup\(\)\.id\s*\]", role)
    assert _param(text, "scalePools") == ("bool", "false")
    # Create and delete of jobs and schedules, pools beyond scaling, keys: never.
    assert not re.search(r"/(delete|listKeys/action|regenerateKeys)", text, re.I)


# --- the action group that calls alert_terminate ---------------------------------------------------------------------


def _kill_switch_group() -> str:
    text = _bicep("modules/alerts.bicep")
    (group,) = [body for symbol, body in _resources(text, "Microsoft.Insights/actionGroups@") if symbol == "killSwitch"]
    assert re.search(
        r"^resource killSwitch 'Microsoft\.Insights/actionGroups@[^']+' = if \(killSwitchReceiver\) \{", text, re.M
    )
    return group


def test_kill_switch_action_group_calls_alert_terminate_as_an_azure_function_receiver() -> None:
    group = _kill_switch_group()
    m = re.search(r"azureFunctionReceivers:\s*\[\s*\{", group)
    assert m, "the kill switch must be an Azure Function receiver"
    receiver = _top_level_entries(_block(group, m.end() - 1))
    assert receiver["functionAppResourceId"] == "functionAppId"
    assert receiver["functionName"] == "alertFunctionName"
    assert receiver["useCommonAlertSchema"] == "true"
    assert receiver["httpTriggerUrl"].startswith("'https://${functionAppHostName}/api/${alertFunctionName}?code=")
    assert "webhookReceivers" not in group
    alerts = _bicep("modules/alerts.bicep")
    assert _param(alerts, "alertFunctionName") == ("string", "'alert_terminate'")
    assert _param(alerts, "killSwitchReceiver") == ("bool", "false")
    # The function it names exists, is HTTP POST, and needs a function key (docs/CONTRACT.md §9).
    binding = json.loads((ROOT / "alert_terminate" / "function.json").read_text(encoding="utf-8"))["bindings"][0]
    assert binding["type"] == "httpTrigger"
    assert binding["authLevel"] == "function"
    assert "post" in binding["methods"]
    params = _module_params("alerts")
    assert params["functionAppId"] == "functionApp.outputs.id"
    assert params["functionAppHostName"] == "functionApp.outputs.defaultHostName"
    assert params["killSwitchReceiver"] == "killSwitchReceiver"
    assert _parameters()["killSwitchReceiver"] == "${KILL_SWITCH_RECEIVER=false}"


def test_no_template_pastes_a_function_key_into_a_webhook() -> None:
    for path in INFRA.rglob("*.bicep"):
        text = path.read_text(encoding="utf-8")
        for _symbol, group in _resources(text, "Microsoft.Insights/actionGroups@"):
            assert "webhookReceivers" not in group or "code=" not in group, path
        assert not re.search(r"@secure\(\)\s*\n(?:@[^\n]*\n)*param \w*[Kk]ey\b", text), path


def test_no_alert_rule_calls_the_kill_switch() -> None:
    # An alert that names no job opens an incident: a rule about incidents wired to the kill switch would loop.
    for symbol, body in _rules().items():
        props = _property_block(body, "properties")
        assert re.search(r"actionGroups:\s*actionGroups\b", props), symbol
        assert "killSwitch" not in body, symbol
    assert re.search(
        r"^var actionGroups = empty\(alertEmail\) \? \[\] : \[operators\.id\]$", _bicep("modules/alerts.bicep"), re.M
    )


# --- the budget ---------------------------------------------------------------------------------------------------


def test_budget_is_optional_watches_the_batch_account_and_its_kill_notification_calls_the_kill_switch() -> None:
    main = _bicep("main.bicep")
    assert _param(main, "budgetAmount") == ("int", "0")
    m = re.search(r"^module budget 'modules/budget\.bicep' = if \(budgetAmount > 0\) \{", main, re.M)
    assert m
    module = _block(main, m.end() - 1)
    params = _top_level_entries(_property_block(module, "params"))
    assert re.search(r"^\s*scope:\s*resourceGroup\(batchAccountResourceGroup\)\s*$", module, re.M)
    assert params["killSwitchActionGroupId"] == "alerts.outputs.killSwitchActionGroupId"
    assert params["amount"] == "budgetAmount"
    text = _bicep("modules/budget.bicep")
    ((_, budget),) = _resources(text, "Microsoft.Consumption/budgets@")
    props = _property_block(budget, "properties")
    entries = _top_level_entries(props)
    assert entries["category"] == "'Cost'"
    assert entries["amount"] == "amount"
    assert entries["timeGrain"] == "'Monthly'"
    notifications = _property_block(props, "notifications")
    kill = _top_level_entries(_property_block(notifications, "kill"))
    assert kill["thresholdType"] == "'Actual'"
    assert kill["threshold"] == "killThreshold"
    assert kill["contactGroups"] == "killGroups"
    assert kill["contactEmails"] == "contactEmails"
    warning = _top_level_entries(_property_block(notifications, "warning"))
    assert warning["contactGroups"] == "[]", "only the kill notification may call the kill switch"
    assert re.search(
        r"^var killGroups = empty\(killSwitchActionGroupId\) \? \[\] : \[killSwitchActionGroupId\]$", text, re.M
    )
    assert re.search(
        r"^output killSwitchActionGroupId string = killSwitchReceiver \? killSwitch\.id : ''$",
        _bicep("modules/alerts.bicep"),
        re.M,
    )
    parameters = _parameters()
    assert parameters["budgetAmount"] == "${BUDGET_AMOUNT=0}"
    for name, env in (
        ("budgetKillThreshold", "BUDGET_KILL_THRESHOLD"),
        ("budgetWarningThreshold", "BUDGET_WARNING_THRESHOLD"),
        ("budgetContactEmails", "BUDGET_CONTACT_EMAILS"),
        ("budgetStartDate", "BUDGET_START_DATE"),
    ):
        assert parameters[name].startswith("${" + env), name


# --- alert rules and workbook panels over incident records ---------------------------------------------------------


def test_spec_names_the_incident_states_and_record_attributes() -> None:
    section = _spec_section("10")
    for state in INCIDENT_STATES:
        assert f"`{state}`" in section, state
    telemetry = _spec_section("8")
    for attribute in ("incident", "state", "source", "account", "jobs", "schedules", "pools", "code"):
        assert f"`{attribute}`" in telemetry, attribute


def _states_compared(query: str) -> set[str]:
    states = set(re.findall(r'state\s*==\s*"(\w+)"', query))
    for listed in re.findall(r"state\s+in\s*\(([^)]*)\)", query):
        states |= set(re.findall(r'"(\w+)"', listed))
    return states


def test_incident_rules_fire_per_incident_on_refused_or_failed_and_on_executed() -> None:
    rules = _rules()
    expected = {
        "incidentFailedRule": ({"refused", "failed"}, "1"),
        "incidentExecutedRule": ({"executed"}, "2"),
    }
    for symbol, (states, severity) in expected.items():
        query_file, condition, dimensions = _rule_condition(rules[symbol])
        query = _query_text(_query_files()[query_file])
        assert _states_compared(query) == states, symbol
        assert "customDimensions.incident" in query
        assert re.findall(r"name:\s*'(\w+)'", dimensions) == ["incident"], symbol
        assert "incident" in re.findall(r"\| project ([^\n]+)", query)[-1], symbol
        assert condition["threshold"] == "0", symbol
        props = _top_level_entries(_property_block(rules[symbol], "properties"))
        assert props["severity"] == severity, symbol


def test_incident_panels_count_by_state_over_time_and_list_the_latest() -> None:
    files = _query_files()
    over_time = _query_text(files["incidents-over-time.kql"])
    assert _states_compared(over_time) == INCIDENT_STATES
    assert re.search(r"by bin\(timestamp, \w+\), state", over_time)
    latest = _query_text(files["incidents-latest.kql"])
    assert re.search(r"arg_max\(timestamp, state\b", latest)
    assert re.search(r"\bby incident\b", latest)
    assert "order by lastChange desc" in latest
    for name in (
        "alert-incident-failed.kql",
        "alert-incident-executed.kql",
        "incidents-over-time.kql",
        "incidents-latest.kql",
    ):
        assert _states_compared(_query_text(files[name])) <= INCIDENT_STATES, name


def test_the_operator_may_read_and_write_incidents() -> None:
    storage = _bicep("modules/storage.bicep")
    operator_roles = re.findall(
        r"resource \w+ 'Microsoft\.Authorization/roleAssignments@[^']+' = if \(!empty\(operatorPrincipalId\)\) \{"
        r".*?roleDefinitions', (\w+)\)",
        storage,
        re.S,
    )
    assert "storageTableDataContributorRoleId" in operator_roles
    assert "storageQueueDataContributorRoleId" in operator_roles
