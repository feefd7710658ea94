"""The deployment templates (infra/*.bicep) against the settings contract.

The Bicep compiler is not available here, so the templates are read as text: enough to find the app settings
object, the role assignments and the queues, and to keep them in step with `local.settings.sample.json`
(the list of every setting the app reads). checkov (scripts/check-infra.sh) covers the security rules.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
SAMPLE = ROOT / "local.settings.sample.json"

# Names in local.settings.sample.json that are deliberately NOT app settings in Azure, and what replaces them.
NOT_APP_SETTINGS = {
    # Flex Consumption sets the language in functionAppConfig.runtime (name 'python', version '3.11');
    # the FUNCTIONS_WORKER_RUNTIME app setting is not allowed on that plan.
    "FUNCTIONS_WORKER_RUNTIME",
    # Local: an Azurite connection string. Azure: the identity-based AzureWebJobsStorage__* settings.
    "AzureWebJobsStorage",
    # Injected by the platform for managed identity; set locally only for the loopback identity endpoint.
    "IDENTITY_ENDPOINT",
    "IDENTITY_HEADER",
    "MSI_ENDPOINT",
    "MSI_SECRET",
}

IDENTITY_BASED_STORAGE = {
    "AzureWebJobsStorage__blobServiceUri",
    "AzureWebJobsStorage__queueServiceUri",
    "AzureWebJobsStorage__tableServiceUri",
    "AzureWebJobsStorage__credential",
    "AzureWebJobsStorage__clientId",
}

BATCH_JOB_SUBMITTER = "48e5e92e-a480-4e71-aa9c-2778f4c13781"
STORAGE_BLOB_DATA_OWNER = "b7e6dc6d-f1e8-4753-8033-0f276bb0955b"
STORAGE_QUEUE_DATA_CONTRIBUTOR = "974c5e8b-45b9-4653-ba55-5f855dd0fb88"
STORAGE_TABLE_DATA_CONTRIBUTOR = "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3"
MONITORING_METRICS_PUBLISHER = "3913510d-42f4-4e42-8a64-420c390055eb"


# --- reading Bicep as text ------------------------------------------------------------------------------------


def _strip_comments(text: str) -> str:
    """Bicep without // line comments and /* */ blocks (no template string here contains '//' or '/*')."""
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return "\n".join(re.sub(r"(^|\s)//.*$", "", line) for line in text.splitlines())


def _bicep(name: str) -> str:
    return _strip_comments((INFRA / name).read_text(encoding="utf-8"))


def _all_bicep() -> dict[str, str]:
    return {str(p.relative_to(INFRA)): _strip_comments(p.read_text(encoding="utf-8")) for p in INFRA.rglob("*.bicep")}


def _block(text: str, open_brace: int) -> str:
    """The text between the brace at `open_brace` and its matching close brace."""
    assert text[open_brace] == "{"
    depth = 0
    for i in range(open_brace, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[open_brace + 1 : i]
    raise AssertionError("unbalanced braces in Bicep")


def _resources(text: str, type_prefix: str) -> list[tuple[str, str]]:
    """(symbolic name, body) of every resource whose type starts with `type_prefix`."""
    found = []
    pattern = re.compile(r"^resource\s+(\w+)\s+'" + re.escape(type_prefix) + r"[^']*'[^=\n]*=[^{\n]*\{", re.M)
    for m in pattern.finditer(text):
        found.append((m.group(1), _block(text, m.end() - 1)))
    return found


def _top_level_entries(body: str) -> dict[str, str]:
    """`key: value` lines of an object body at its own nesting level (values may be expressions)."""
    entries: dict[str, str] = {}
    depth = 0
    for line in body.splitlines():
        if depth == 0:
            m = re.match(r"^\s*'?([A-Za-z_][A-Za-z0-9_\-]*)'?\s*:\s*(.*?)\s*$", line)
            if m:
                entries[m.group(1)] = m.group(2)
        depth += line.count("{") + line.count("[") - line.count("}") - line.count("]")
    return entries


def _property_block(body: str, key: str) -> str:
    m = re.search(r"^\s*" + re.escape(key) + r"\s*:\s*\{", body, re.M)
    assert m, f"no '{key}:' object in resource"
    return _block(body, m.end() - 1)


def _app_settings() -> dict[str, str]:
    """The function app's app settings: name -> Bicep value expression (one appsettings resource in infra/)."""
    found = []
    for path, text in _all_bicep().items():
        for _symbol, body in _resources(text, "Microsoft.Web/sites/config@"):
            if re.search(r"^\s*name:\s*'appsettings'\s*$", body, re.M):
                found.append((path, _top_level_entries(_property_block(body, "properties"))))
    assert len(found) == 1, f"expected exactly one appsettings resource, found {[p for p, _ in found]}"
    return found[0][1]


def _sample_values() -> dict[str, str]:
    assert SAMPLE.is_file(), (
        "local.settings.sample.json is missing: it lists every setting the app reads (docs/CONTRACT.md §2) and the "
        "templates are checked against it"
    )
    values = json.loads(SAMPLE.read_text(encoding="utf-8"), object_pairs_hook=_no_duplicate_keys)["Values"]
    assert isinstance(values, dict)
    return values


def _no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    """A JSON object, refusing a key given twice (two branches adding one setting merge into two lines)."""
    names = [name for name, _ in pairs]
    repeated = sorted({name for name in names if names.count(name) > 1})
    assert not repeated, f"local.settings.sample.json names these twice: {repeated}"
    return dict(pairs)


def _param_default(text: str, name: str) -> str:
    m = re.search(r"^param\s+" + re.escape(name) + r"\s+string\s*=\s*'([^']*)'\s*$", text, re.M)
    assert m, f"param {name} with a string default not found"
    return m.group(1)


# --- app settings ----------------------------------------------------------------------------------------------


def test_every_sample_setting_is_an_app_setting() -> None:
    settings = _app_settings()
    wanted = set(_sample_values()) - NOT_APP_SETTINGS
    missing = sorted(wanted - set(settings))
    assert not missing, f"settings in local.settings.sample.json with no app setting in infra/: {missing}"


def test_identity_based_host_storage_replaces_the_connection_string() -> None:
    settings = _app_settings()
    assert IDENTITY_BASED_STORAGE.issubset(settings)
    assert "AzureWebJobsStorage" not in settings
    assert settings["AzureWebJobsStorage__credential"] == "'managedidentity'"
    # The same user-assigned identity for host storage, Batch tokens and telemetry.
    assert settings["AzureWebJobsStorage__clientId"] == settings["AZURE_CLIENT_ID"] == "identityClientId"
    assert "ClientId=${identityClientId};Authorization=AAD" in settings["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"]


def test_runtime_is_set_by_flex_function_app_config_not_an_app_setting() -> None:
    text = _bicep("modules/function-app.bicep")
    assert "FUNCTIONS_WORKER_RUNTIME" not in _app_settings()
    ((_, site),) = _resources(text, "Microsoft.Web/sites@")
    runtime = _top_level_entries(_property_block(_property_block(site, "functionAppConfig"), "runtime"))
    assert runtime == {"name": "'python'", "version": "'3.11'"}
    ((_, plan),) = _resources(text, "Microsoft.Web/serverfarms@")
    assert _top_level_entries(_property_block(plan, "sku")) == {"name": "'FC1'", "tier": "'FlexConsumption'"}


# The one key the templates read: alert_terminate's own function key, which the kill-switch action group's Azure
# Function receiver keeps in its trigger URL (it is never a parameter, an app setting or an output).
KILL_SWITCH_KEY = "listKeys('${functionAppId}/functions/${alertFunctionName}', '2023-12-01').default"


def test_no_keys_or_connection_strings_with_secrets() -> None:
    for name, value in _app_settings().items():
        assert "AccountKey=" not in value, name
        assert "listKeys(" not in value, name
        assert "SharedAccessSignature" not in value, name
    for path, text in _all_bicep().items():
        assert "AccountKey=" not in text, path
        assert not re.search(r"^output .*list\w*\(", text, re.M | re.I), path
        reads = re.findall(r"\blist\w*\(", text, re.I)
        if path != "modules/alerts.bicep":
            assert not reads, path
            continue
        assert reads == ["listKeys("], path
        ((_, group),) = [r for r in _resources(text, "Microsoft.Insights/actionGroups@") if r[0] == "killSwitch"]
        assert KILL_SWITCH_KEY in group


def test_contract_defaults() -> None:
    main = _bicep("main.bicep")
    assert _param_default(main, "batchApiVersion") == "2025-06-01"
    assert re.search(r"^param batchTimeoutSeconds int = 30$", main, re.M)
    assert re.search(r"^param maxDequeueCount int = 5$", main, re.M)
    assert re.search(r"^param sweepDryRun bool = true$", main, re.M)
    assert _param_default(main, "sweepSchedule") == "0 */15 * * * *"
    # BATCH_ACCOUNT_URL comes from the existing account's endpoint, https only.
    assert "batchAccountUrl: 'https://${batchRole.outputs.accountEndpoint}'" in main
    assert "output accountEndpoint string = batchAccount.properties.accountEndpoint" in _bicep(
        "modules/batch-role.bicep"
    )


# --- queues ----------------------------------------------------------------------------------------------------


def test_queues_match_terminate_queue_name_and_its_poison_queue() -> None:
    sample = _sample_values()
    main = _bicep("main.bicep")
    storage = _bicep("modules/storage.bicep")
    settings = _app_settings()

    assert _param_default(main, "terminateQueueName") == sample["TERMINATE_QUEUE_NAME"]
    assert re.search(r"^var poisonQueueName = '\$\{terminateQueueName\}-poison'$", main, re.M)
    if "POISON_QUEUE_NAME" in sample:
        assert sample["POISON_QUEUE_NAME"] == f"{sample['TERMINATE_QUEUE_NAME']}-poison"

    queue_names = sorted(
        _top_level_entries(body)["name"]
        for _, body in _resources(storage, "Microsoft.Storage/storageAccounts/queueServices/queues@")
    )
    assert queue_names == ["confirmQueueName", "incidentQueueName", "poisonQueueName", "terminateQueueName"]
    # main passes the same values to the storage module and to the app settings.
    for module in ("storage", "functionApp"):
        (params,) = [
            _top_level_entries(_property_block(body, "params")) for symbol, body in _modules(main) if symbol == module
        ]
        assert params["terminateQueueName"] == "terminateQueueName", module
        assert params["poisonQueueName"] == "poisonQueueName", module
        assert params["confirmQueueName"] == "confirmQueueName", module
        expected = "incidentQueueName" if module == "storage" else "storage.outputs.incidentQueueName"
        assert params["incidentQueueName"] == expected, module
    assert settings["TERMINATE_QUEUE_NAME"] == "terminateQueueName"
    assert settings["POISON_QUEUE_NAME"] == "poisonQueueName"
    assert settings["CONFIRM_QUEUE_NAME"] == "confirmQueueName"
    assert settings["INCIDENT_QUEUE_NAME"] == "incidentQueueName"
    assert _param_default(main, "confirmQueueName") == sample["CONFIRM_QUEUE_NAME"]
    assert sample["CONFIRM_QUEUE_NAME"] not in (sample["TERMINATE_QUEUE_NAME"], sample["POISON_QUEUE_NAME"])
    if "INCIDENT_QUEUE_NAME" in sample:
        assert _param_default(main, "incidentQueueName") == sample["INCIDENT_QUEUE_NAME"]
    names = [_param_default(main, n) for n in ("terminateQueueName", "confirmQueueName", "incidentQueueName")]
    assert len({n.lower() for n in names} | {f"{names[0]}-poison"}) == 4, names


def _modules(text: str) -> list[tuple[str, str]]:
    pattern = re.compile(r"^module\s+(\w+)\s+'[^']+'\s*=\s*\{", re.M)
    return [(m.group(1), _block(text, m.end() - 1)) for m in pattern.finditer(text)]


# --- identity and roles ----------------------------------------------------------------------------------------


def _role_assignments() -> list[tuple[str, str, str]]:
    """(file, symbol, body) of every role assignment, with role-id variables resolved into the body."""
    found = []
    for path, text in _all_bicep().items():
        variables = dict(re.findall(r"^var\s+(\w+)\s*=\s*'([0-9a-f-]{36})'\s*$", text, re.M))
        for symbol, body in _resources(text, "Microsoft.Authorization/roleAssignments@"):
            for var, role_id in variables.items():
                body = re.sub(r"\b" + var + r"\b", role_id, body)
            found.append((path, symbol, body))
    return found


def _assigned(role_id: str) -> list[tuple[str, str, str]]:
    return [
        (path, symbol, body)
        for path, symbol, body in _role_assignments()
        if re.search(r"roleDefinitionId:.*" + role_id, body)
    ]


def test_the_apps_batch_role_is_assigned_on_the_existing_batch_account() -> None:
    # A custom role with exactly the operations the app calls (tests/repo/test_infra_kill_switch.py), not a built-in.
    assert not _assigned(BATCH_JOB_SUBMITTER)
    ((_, body),) = _resources(_bicep("modules/batch-role.bicep"), "Microsoft.Authorization/roleAssignments@")
    assert re.search(r"^\s*roleDefinitionId:\s*terminatorRole\.id\s*$", body, re.M)
    assert re.search(r"^\s*scope:\s*batchAccount\s*$", body, re.M)
    assert re.search(r"^\s*name:\s*guid\(", body, re.M)
    text = _bicep("modules/batch-role.bicep")
    assert re.search(r"^resource batchAccount 'Microsoft\.Batch/batchAccounts@[^']+' existing = \{", text, re.M)
    (batch_module,) = [body for symbol, body in _modules(_bicep("main.bicep")) if symbol == "batchRole"]
    assert re.search(r"^\s*scope:\s*resourceGroup\(batchAccountResourceGroup\)\s*$", batch_module, re.M)
    assert "batchAccountName: batchAccountName" in batch_module
    assert "scalePools: killSwitchScalePools" in batch_module


@pytest.mark.parametrize(
    "role_id",
    [STORAGE_BLOB_DATA_OWNER, STORAGE_QUEUE_DATA_CONTRIBUTOR, STORAGE_TABLE_DATA_CONTRIBUTOR],
    ids=["blob-data-owner", "queue-data-contributor", "table-data-contributor"],
)
def test_app_identity_has_storage_data_roles(role_id: str) -> None:
    app_grants = [
        (path, body) for path, _s, body in _assigned(role_id) if re.search(r"principalId:\s*appPrincipalId", body)
    ]
    assert len(app_grants) == 1
    path, body = app_grants[0]
    assert path == "modules/storage.bicep"
    assert re.search(r"^\s*scope:\s*storage\s*$", body, re.M)


def test_app_identity_may_publish_telemetry() -> None:
    ((path, _s, body),) = _assigned(MONITORING_METRICS_PUBLISHER)
    assert path == "modules/monitoring.bicep"
    assert re.search(r"^\s*scope:\s*applicationInsights\s*$", body, re.M)
    assert re.search(r"^\s*DisableLocalAuth:\s*true\s*$", _bicep(path), re.M)


def test_every_role_assignment_has_a_deterministic_guid_name() -> None:
    assignments = _role_assignments()
    assert len(assignments) >= 6
    for path, symbol, body in assignments:
        assert re.search(r"^\s*name:\s*guid\(", body, re.M), f"{path}:{symbol}"


def test_storage_account_is_locked_to_entra_id() -> None:
    ((_, account),) = _resources(_bicep("modules/storage.bicep"), "Microsoft.Storage/storageAccounts@")
    props = _top_level_entries(_property_block(account, "properties"))
    assert props["allowSharedKeyAccess"] == "false"
    assert props["allowBlobPublicAccess"] == "false"
    assert props["minimumTlsVersion"] == "'TLS1_2'"
    assert props["supportsHttpsTrafficOnly"] == "true"


def test_flex_deployment_storage_uses_the_user_assigned_identity() -> None:
    ((_, site),) = _resources(_bicep("modules/function-app.bicep"), "Microsoft.Web/sites@")
    auth = _top_level_entries(
        _property_block(_property_block(_property_block(site, "functionAppConfig"), "deployment"), "authentication")
    )
    assert auth == {"type": "'UserAssignedIdentity'", "userAssignedIdentityResourceId": "identityId"}
    props = _top_level_entries(_property_block(site, "properties"))
    assert props["httpsOnly"] == "true"
    site_config = _top_level_entries(_property_block(site, "siteConfig"))
    assert "ftpsState" not in site_config  # Flex rejects it (tests/repo/test_infra_flex.py); FTP is off below
    assert site_config["minTlsVersion"] == "'1.2'"
    (ftp,) = [
        b
        for s, b in _resources(_bicep("modules/function-app.bicep"), "Microsoft.Web/sites/basicPublishing")
        if s == "ftpPublishing"
    ]
    assert _top_level_entries(_property_block(ftp, "properties")) == {"allow": "false"}


# --- azd and checkov configuration -----------------------------------------------------------------------------


def test_azure_yaml_declares_one_python_function_service() -> None:
    text = (ROOT / "azure.yaml").read_text(encoding="utf-8")
    assert re.search(r"^services:\n  terminator:\n(    .*\n)+", text, re.M)
    assert re.search(r"^    project: \.$", text, re.M)
    assert re.search(r"^    language: python$", text, re.M)
    assert re.search(r"^    host: function$", text, re.M)
    assert "azd-service-name': serviceName" in _bicep("modules/function-app.bicep")
    assert re.search(r"^var serviceName = 'terminator'$", _bicep("main.bicep"), re.M)


def test_every_checkov_skip_has_a_reason() -> None:
    lines = (ROOT / ".checkov.yaml").read_text(encoding="utf-8").splitlines()
    skips = [line for line in lines if re.match(r"^\s*-\s*CKV", line)]
    assert skips
    for line in skips:
        assert re.match(r"^\s*-\s*CKV2?_[A-Z]+_\d+\s+#\s*reason:\s*\S.{10,}$", line), line
    # ... and a skip inside one resource (scripts/check-infra.sh) says why on its own line.
    for path in INFRA.rglob("*.bicep"):
        for line in path.read_text(encoding="utf-8").splitlines():
            if "checkov:skip" in line:
                assert re.match(r"^\s*// checkov:skip=CKV2?_[A-Z]+_\d+:\S.{20,}$", line), f"{path}: {line}"


# --- the spec (docs/CONTRACT.md) against the templates ---------------------------------------------------------

SPEC = ROOT / "docs" / "CONTRACT.md"
HOST_JSON = ROOT / "host.json"
QUERIES = INFRA / "queries"

# Spec settings deliberately not in local.settings.sample.json: they only mean something to the deployed worker.
DEPLOYED_ONLY = {"PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY", "PYTHON_APPLICATIONINSIGHTS_LOGGER_NAME"}

# Where the template's default differs from the spec's, on purpose.
DEPLOYED_DEFAULTS = {
    # A first deployment only logs what the sweep would do; switching it on is the operator's choice.
    "SWEEP_DRY_RUN": "true",
    # The worker's own default depends on the instance's cpus; infra derives it from host.json (docs/SCALE.md,
    # tests/repo/test_infra_scale.py).
    "PYTHON_THREADPOOL_THREAD_COUNT": "26",
    # The spec's default is off; the deployed app confirms every termination (README, "Choices where the contract
    # is silent": 300 s covers Batch killing tasks and running job release tasks).
    "CONFIRM_AFTER_SECONDS": "300",
}


def _spec_section(number: str) -> str:
    text = SPEC.read_text(encoding="utf-8")
    m = re.search(r"^#{2,3} §" + re.escape(number) + r"\..*?(?=^## )", text + "\n## ", re.M | re.S)
    assert m, f"docs/CONTRACT.md has no §{number}"
    return m.group(0)


def _table_rows(section: str) -> list[list[str]]:
    """The cells of every table row of a section (header and separator rows left out)."""
    rows = []
    for line in section.splitlines():
        if line.startswith("|") and not re.match(r"^\|[-| ]+\|$", line):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return [row for row in rows if row[0] not in ("name", "attribute")]


def _spec_settings() -> dict[str, tuple[str, str]]:
    """Setting name -> (required, default) from the tables of docs/CONTRACT.md §2."""
    settings = {}
    for row in _table_rows(_spec_section("2")):
        m = re.match(r"^`([A-Za-z_][A-Za-z0-9_]*)`", row[0])
        assert m, f"unexpected settings row in docs/CONTRACT.md §2: {row}"
        assert len(row) == 4, f"unexpected settings row in docs/CONTRACT.md §2: {row}"
        settings[m.group(1)] = (row[1], row[2])
    assert len(settings) >= 30, "the settings tables of docs/CONTRACT.md §2 were not found"
    return settings


def _spec_default(default: str) -> str | None:
    """The literal default a spec cell states ('' for none), or None when it names no single literal."""
    if default.startswith("—") or default.startswith("empty"):
        return ""
    m = re.match(r"^(?:host\.json, else )?`([^`]*)`", default)
    return m.group(1) if m else None


def _param(text: str, name: str) -> tuple[str, str | None]:
    """(type, default expression or None) of a Bicep parameter."""
    m = re.search(r"^param\s+" + re.escape(name) + r"\s+(\w+)(?:\s*=\s*(.+?))?\s*$", text, re.M)
    assert m, f"param {name} not found"
    return m.group(1), m.group(2)


def _as_setting_value(bicep_type: str, default: str) -> str:
    """A Bicep parameter default as the app setting string it becomes."""
    if bicep_type == "string":
        m = re.fullmatch(r"'([^']*)'", default)
        assert m, f"not a string literal: {default}"
        return m.group(1)
    assert bicep_type in ("int", "bool"), bicep_type
    return default


def _setting_param(expression: str) -> str | None:
    """The parameter an app setting expression is built from (`x`, `string(x)`, `x ? 'true' : 'false'`)."""
    m = re.fullmatch(r"(?:string\()?([a-z]\w*)\)?(?: \? 'true' : 'false')?", expression)
    return m.group(1) if m else None


def _main_param_for(module_param: str) -> str | None:
    """The main.bicep parameter main passes to the function-app module's parameter of that name, if any."""
    (params,) = [
        _top_level_entries(_property_block(body, "params"))
        for symbol, body in _modules(_bicep("main.bicep"))
        if symbol == "functionApp"
    ]
    value = params.get(module_param)
    if value is None or not re.search(r"^param\s+" + re.escape(value) + r"\s", _bicep("main.bicep"), re.M):
        return None  # a var or an expression: derived from deployed resources
    return value


def test_every_spec_setting_is_an_app_setting_and_in_the_sample() -> None:
    settings = _app_settings()
    sample = _sample_values()
    spec = set(_spec_settings())
    assert not sorted(spec - NOT_APP_SETTINGS - set(settings)), "settings in docs/CONTRACT.md §2 not deployed"
    assert not sorted(spec - DEPLOYED_ONLY - set(sample)), "settings in docs/CONTRACT.md §2 not in the sample"
    # ... and the sample names nothing the spec does not describe (platform names aside).
    assert not sorted(set(sample) - spec - NOT_APP_SETTINGS), "settings in the sample but not in docs/CONTRACT.md §2"


def test_deployed_defaults_are_the_specs() -> None:
    main = _bicep("main.bicep")
    settings = _app_settings()
    checked = []
    for name, (required, default) in _spec_settings().items():
        param = _setting_param(settings.get(name, ""))
        main_param = _main_param_for(param) if param else None
        if main_param is None:
            continue  # derived from deployed resources (URLs, names, the identity), not a parameter
        bicep_type, expression = _param(main, main_param)
        assert expression is not None, f"{main_param} ({name}) has no default"
        deployed = _as_setting_value(bicep_type, expression)
        spec_default = _spec_default(default)
        if name in DEPLOYED_DEFAULTS:
            assert deployed == DEPLOYED_DEFAULTS[name], name
        elif required.startswith("yes"):
            assert deployed, f"{name} is required: the template must give it a value"
        else:
            assert spec_default is not None, f"docs/CONTRACT.md §2 states no literal default for {name}: {default}"
            assert deployed == spec_default, f"{name}: template default {deployed!r}, spec {spec_default!r}"
        checked.append(name)
    assert len(checked) >= 20, checked


def test_worker_exports_opentelemetry_to_application_insights() -> None:
    settings = _app_settings()
    assert settings["PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY"] == "'true'"
    # Only the app's own logger (docs/CONTRACT.md §8), not every library's, and not the exporter's own records.
    (logger,) = re.findall(r"on logger `(\w+)`", _spec_section("8"))
    assert settings["PYTHON_APPLICATIONINSIGHTS_LOGGER_NAME"] == f"'{logger}'"
    # With Entra auth only (local auth is off on the component), as the same identity.
    assert settings["APPLICATIONINSIGHTS_CONNECTION_STRING"] == "applicationInsightsConnectionString"
    assert "Authorization=AAD" in settings["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"]


def test_further_batch_accounts_get_the_apps_batch_role_too() -> None:
    main = _bicep("main.bicep")
    assert _param(main, "batchAccounts") == ("string", "''")
    assert _app_settings()["BATCH_ACCOUNTS"] == "batchAccounts"
    header = r"^module additionalBatchRoles 'modules/batch-role\.bicep' = "
    m = re.search(header + r"\[for \(account, i\) in additionalBatchAccounts: \{", main, re.M)
    assert m, "no Job Submitter grant per additional Batch account"
    loop = _block(main, m.end() - 1)
    assert "scope: resourceGroup(account.resourceGroup)" in loop
    assert "batchAccountName: account.name" in loop
    assert "principalId: identity.properties.principalId" in loop
    assert "scalePools: killSwitchScalePools" in loop
    parameters = json.loads((INFRA / "main.parameters.json").read_text(encoding="utf-8"))["parameters"]
    assert parameters["batchAccounts"]["value"] == "${BATCH_ACCOUNTS}"


# --- alert rules and the workbook: their queries name what the app writes -------------------------------------


def _spec_metrics() -> dict[str, set[str]]:
    """Metric name -> its attributes, from the metrics table of docs/CONTRACT.md §8."""
    metrics = {}
    for row in _table_rows(_spec_section("8")):
        m = re.fullmatch(r"`(batch_terminator\.[\w.]+)`", row[0])
        if m:
            metrics[m.group(1)] = set(re.findall(r"`(\w+)`", row[2])) - _attribute_values(row[2])
    assert "batch_terminator.batch.duration" in metrics, metrics
    return metrics


def _attribute_values(cell: str) -> set[str]:
    """The example values a cell lists in parentheses, e.g. `terminate` in "`operation` (`terminate`, `read`)"."""
    return {value for group in re.findall(r"\(([^)]*)\)", cell) for value in re.findall(r"`(\w+)`", group)}


def _spec_attributes() -> set[str]:
    """Every attribute docs/CONTRACT.md §8 says a log record may carry."""
    section = _spec_section("8")
    rows = [row for row in _table_rows(section) if not row[0].startswith("`batch_terminator.")]
    names = {name for row in rows for name in re.findall(r"`(\w+)`", row[0])}
    assert {"jobId", "outcome", "code", "durationMs", "run"} <= names, names
    assert "`setting`" in section
    return names | {"setting"}


def _spec_outcomes() -> tuple[set[str], set[str]]:
    """(message outcomes, run outcomes) of docs/CONTRACT.md §8."""
    rows = [row for row in _table_rows(_spec_section("8")) if row[0] == "`outcome`"]
    assert len(rows) == 2, rows
    message, run = (set(re.findall(r"`(\w+)`", row[1])) for row in rows)
    assert message == {"terminated", "already_terminated", "poisoned", "dry_run", "confirmed"}
    assert not message & run
    return message, run


def _query_files() -> dict[str, str]:
    files = {p.name: p.read_text(encoding="utf-8") for p in sorted(QUERIES.glob("*.kql"))}
    assert files, "no queries in infra/queries"
    return files


def _query_text(kql: str) -> str:
    return "\n".join(line for line in kql.splitlines() if not line.lstrip().startswith("//"))


def _loaded_queries(bicep_name: str) -> list[str]:
    return re.findall(r"loadTextContent\('\.\./queries/([\w.-]+\.kql)'\)", _bicep(bicep_name))


@pytest.mark.parametrize("name", sorted(p.name for p in QUERIES.glob("*.kql")))
def test_query_names_only_attributes_the_app_writes(name: str) -> None:
    query = _query_text(_query_files()[name])
    assert "customDimensions[" not in query, "use customDimensions.<name> so this test can read the query"
    used = set(re.findall(r"customDimensions\.(\w+)", query))
    metrics = set(re.findall(r'name == "([\w.]+)"', query))
    if query.lstrip().startswith("customMetrics"):
        known = _spec_metrics()
        assert metrics, f"{name} reads customMetrics without naming a metric"
        assert metrics <= set(known), f"{name} reads metrics docs/CONTRACT.md §8 does not define"
        unknown = used - set().union(*(known[m] for m in metrics))
        assert not unknown, f"{name} reads metric attributes §8 does not define: {sorted(unknown)}"
        return
    unknown = used - _spec_attributes()
    assert not unknown, f"{name} reads attributes docs/CONTRACT.md §8 does not define: {sorted(unknown)}"
    message, run = _spec_outcomes()
    literals = set(re.findall(r'outcome\)?\s*==\s*"(\w+)"', query))
    for listed in re.findall(r"outcome\s+in\s*\(([^)]*)\)", query):
        literals |= set(re.findall(r'"(\w+)"', listed))
    assert literals <= message | run, f"{name} compares outcome with unknown values: {sorted(literals - message - run)}"


def test_every_query_file_is_used_by_a_template() -> None:
    used = set(_loaded_queries("modules/alerts.bicep")) | set(_loaded_queries("modules/workbook.bicep"))
    assert used == set(_query_files())


def _rules() -> dict[str, str]:
    rules = dict(_resources(_bicep("modules/alerts.bicep"), "Microsoft.Insights/scheduledQueryRules@"))
    assert set(rules) == {"poisonedRule", "hostGaveUpRule", "incidentFailedRule", "incidentExecutedRule"}
    return rules


def _rule_condition(body: str) -> tuple[str, dict[str, str], str]:
    """(query file, condition entries, dimensions block) of a rule's single condition."""
    criteria = _property_block(_property_block(body, "properties"), "criteria")
    m = re.search(r"allOf:\s*\[\s*\{", criteria)
    assert m
    condition = _block(criteria, m.end() - 1)
    (query_file,) = re.findall(r"loadTextContent\('\.\./queries/([\w.-]+\.kql)'\)", condition)
    dimensions = re.search(r"dimensions:\s*\[(.*?)\n\s{10}\]", condition, re.S)
    assert dimensions
    return query_file, _top_level_entries(condition), dimensions.group(1)


def test_poisoned_rule_counts_poison_records_per_code() -> None:
    query_file, condition, dimensions = _rule_condition(_rules()["poisonedRule"])
    query = _query_text(_query_files()[query_file])
    assert re.search(r'customDimensions\.outcome\)\s*==\s*"poisoned"', query)
    assert re.search(r"\bcode = tostring\(customDimensions\.code\)", query)
    assert re.findall(r"name:\s*'(\w+)'", dimensions) == ["code"]
    assert condition["timeAggregation"] == "'Count'"
    assert condition["operator"] == "'GreaterThan'"
    assert condition["threshold"] == "poisonedThreshold"
    assert re.search(r"^param poisonedThreshold int = 0$", _bicep("modules/alerts.bicep"), re.M)
    assert re.search(r"^param poisonedAlertThreshold int = 0$", _bicep("main.bicep"), re.M)


def test_host_gave_up_rule_counts_configuration_errors_and_host_moved_messages() -> None:
    query_file, condition, dimensions = _rule_condition(_rules()["hostGaveUpRule"])
    query = _query_text(_query_files()[query_file])
    assert re.search(r'customDimensions\.code\)\s*==\s*"ConfigurationError"', query)
    assert "exceptions" in query
    assert "ConfigurationError" in query
    # The Storage Queues extension's warning when it moves a message (QueueProcessor.CopyMessageToPoisonQueueAsync).
    assert '"MaxDequeueCount"' in query
    assert '"Moving message to queue"' in query
    assert re.findall(r"name:\s*'(\w+)'", dimensions) == ["kind"]
    assert "kind" in re.findall(r"\| project ([^\n]+)", query)[-1]
    assert condition["threshold"] == "hostGaveUpThreshold"


def test_rules_query_application_insights_and_notify_the_optional_operator() -> None:
    text = _bicep("modules/alerts.bicep")
    for symbol, body in _rules().items():
        props = _property_block(body, "properties")
        assert re.search(r"scopes:\s*\[\s*applicationInsightsId\s*\]", props), symbol
        assert re.search(r"actionGroups:\s*actionGroups\b", props), symbol
        assert _top_level_entries(props)["enabled"] == "true", symbol
    (group,) = [body for symbol, body in _resources(text, "Microsoft.Insights/actionGroups@") if symbol == "operators"]
    assert re.search(
        r"^resource operators 'Microsoft\.Insights/actionGroups@[^']+' = if \(!empty\(alertEmail\)\) \{", text, re.M
    )
    assert "emailAddress: alertEmail" in group
    assert re.search(r"^var actionGroups = empty\(alertEmail\) \? \[\] : \[operators\.id\]$", text, re.M)
    assert re.search(r"^param alertEmail string = ''$", _bicep("main.bicep"), re.M)
    (alerts,) = [body for s, body in _modules(_bicep("main.bicep")) if s == "alerts"]
    params = _top_level_entries(_property_block(alerts, "params"))
    assert params["alertEmail"] == "alertEmail"
    assert params["applicationInsightsId"] == "monitoring.outputs.applicationInsightsId"
    parameters = json.loads((INFRA / "main.parameters.json").read_text(encoding="utf-8"))["parameters"]
    assert parameters["alertEmail"]["value"] == "${ALERT_EMAIL}"


WORKBOOK_PANELS = {
    "outcomes-over-time",
    "poison-by-code",
    "batch-latency",
    "batch-call-duration",
    "confirmation-duration",
    "sweep-runs",
    "alert-requests",
    "incidents-over-time",
    "incidents-latest",
}


def test_workbook_shows_outcomes_poison_latency_sweeps_and_alerts() -> None:
    text = _bicep("modules/workbook.bicep")
    assert {name.removesuffix(".kql") for name in _loaded_queries("modules/workbook.bicep")} == WORKBOOK_PANELS
    for panel in WORKBOOK_PANELS:
        assert re.search(
            r"name: '" + panel + r"'\n\s*content: \{[^}]*query: loadTextContent\('\.\./queries/" + panel, text
        )
    queries = {name: _query_text(_query_files()[f"{name}.kql"]) for name in WORKBOOK_PANELS}
    message, _run = _spec_outcomes()
    (listed,) = re.findall(r"outcome\s+in\s*\(([^)]*)\)", queries["outcomes-over-time"])
    assert set(re.findall(r'"(\w+)"', listed)) == message
    assert re.search(r"by bin\(timestamp, \w+\), outcome", queries["outcomes-over-time"])
    assert re.search(r"\bby code\b", queries["poison-by-code"])
    assert "percentile(durationMs, 50)" in queries["batch-latency"]
    assert "percentile(durationMs, 95)" in queries["batch-latency"]
    assert 'customDimensions.run) == "sweep"' in queries["sweep-runs"]
    assert 'customDimensions.run) == "alert"' in queries["alert-requests"]
    ((_, workbook),) = _resources(text, "Microsoft.Insights/workbooks@")
    assert re.search(r"^\s*name:\s*guid\(", workbook, re.M)
    props = _top_level_entries(_property_block(workbook, "properties"))
    assert props["sourceId"] == "applicationInsightsId"
    assert props["serializedData"] == "string(workbook)"
    assert props["category"] == "'workbook'"


# --- docs/DEPLOY.md follows the templates and the spec ----------------------------------------------------------

DEPLOY = ROOT / "docs" / "DEPLOY.md"


def _deploy_kql_blocks() -> list[str]:
    blocks = re.findall(r"```kusto\n(.*?)```", DEPLOY.read_text(encoding="utf-8"), re.S)
    assert len(blocks) >= 3, "docs/DEPLOY.md lost its KQL examples"
    return blocks


def test_deploy_doc_queries_read_customdimensions_the_app_writes() -> None:
    attributes = _spec_attributes()
    message, run = _spec_outcomes()
    text = "\n".join(_query_text(block) for block in _deploy_kql_blocks())
    assert not re.search(r"\bextract\(", text), "parse customDimensions, not the message text"
    assert not sorted(set(re.findall(r"customDimensions\.(\w+)", text)) - attributes)
    compared = set(re.findall(r'customDimensions\.outcome\)\s*==\s*"(\w+)"', text))
    assert message <= compared, f"docs/DEPLOY.md has no query for outcomes {sorted(message - compared)}"
    for listed in re.findall(r"outcome\)?\s+in\s*\(([^)]*)\)", text):
        assert set(re.findall(r'"(\w+)"', listed)) <= message | run
    assert 'customDimensions.run) == "sweep"' in text
    assert 'customDimensions.run) == "alert"' in text


# App settings that are not the app's own settings: the platform's and the worker's (docs/DEPLOY.md names them).
PLATFORM_SETTINGS = IDENTITY_BASED_STORAGE | {
    "APPLICATIONINSIGHTS_CONNECTION_STRING",
    "APPLICATIONINSIGHTS_AUTHENTICATION_STRING",
    "PYTHON_THREADPOOL_THREAD_COUNT",
}


def test_deploy_doc_points_to_the_spec_for_settings_instead_of_copying_them() -> None:
    text = DEPLOY.read_text(encoding="utf-8")
    assert "CONTRACT.md#2-settings" in text, "docs/DEPLOY.md should link to docs/CONTRACT.md §2 for the settings"
    rows = set(re.findall(r"^\| `([A-Z][A-Z0-9_]+)` \|", text, re.M)) & set(_spec_settings())
    assert not rows, f"docs/DEPLOY.md has its own table rows for spec settings: {sorted(rows)}"
    # Every deployed setting is one the spec describes, or a platform setting DEPLOY.md explains.
    unknown = sorted(set(_app_settings()) - set(_spec_settings()) - PLATFORM_SETTINGS)
    assert not unknown, f"app settings neither in docs/CONTRACT.md §2 nor known platform settings: {unknown}"
    for name in sorted(PLATFORM_SETTINGS - IDENTITY_BASED_STORAGE):
        assert f"`{name}`" in text, name


PRODUCERS = ROOT / "docs" / "PRODUCERS.md"


def test_budget_walkthrough_uses_the_templates_function_receiver_not_a_pasted_key() -> None:
    text = PRODUCERS.read_text(encoding="utf-8")
    section = text[text.index("## A budget kill switch") :]
    assert "?code=" not in section
    assert "webhookReceivers" not in section
    assert "KILL_SWITCH_RECEIVER" in section
    assert "BUDGET_AMOUNT" in section


def test_budget_walkthrough_names_the_selection_settings() -> None:
    text = PRODUCERS.read_text(encoding="utf-8")
    section = text[text.index("## A budget kill switch") :]
    main = _bicep("main.bicep")
    for setting in ("ALERT_SELECT_JOB_ID_PREFIX", "ALERT_SELECT_POOL_ID", "ALERT_SELECT_METADATA", "ALERT_MAX_JOBS"):
        assert setting in _spec_settings(), setting
        param = _setting_param(_app_settings()[setting])
        assert param is not None
        assert f"`{setting}` (`{param}`)" in section, f"{setting} and its template parameter {param}"
        assert re.search(r"^param " + param + r"\s", main, re.M)


# --- the spec's telemetry names are the code's ----------------------------------------------------------------


def _spec_message_attributes() -> list[str]:
    """The attribute names of the first table of docs/CONTRACT.md §8 (the finished-message record), in order."""
    section = _spec_section("8")
    first_table = re.search(r"^\| attribute \| value \|\n\|[-| ]+\|\n((?:\|.*\n)+)", section, re.M)
    assert first_table, "docs/CONTRACT.md §8 has no attribute table"
    return re.findall(r"^\| `(\w+)` \|", first_table.group(1), re.M)


# The last four tests compare the spec with the app's code (not the templates); they import it lazily, so a
# module that moves breaks only them.


def test_spec_record_attributes_are_the_ones_the_code_writes() -> None:
    from shared import telemetry

    assert tuple(_spec_message_attributes()) == telemetry.RECORD_ATTRIBUTES
    (logger,) = re.findall(r"on logger `(\w+)`", _spec_section("8"))
    assert logger == telemetry.LOGGER_NAME


def test_spec_metrics_are_the_ones_the_code_records() -> None:
    from shared import telemetry

    names = {
        value
        for name, value in vars(telemetry).items()
        if name.isupper() and str(value).startswith("batch_terminator.")
    }
    assert names == set(_spec_metrics())


def test_every_outcome_the_code_knows_is_in_the_spec() -> None:
    from shared.contract.outcome import Outcome

    message, _run = _spec_outcomes()
    assert {outcome.value for outcome in Outcome} <= message


def test_the_keepers_code_is_in_the_spec() -> None:
    from shared.services.keep_poison import HOST_GAVE_UP

    assert f"`{HOST_GAVE_UP}`" in _spec_section("6")
