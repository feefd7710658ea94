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

ROOT = Path(__file__).resolve().parent.parent
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
    values = json.loads(SAMPLE.read_text(encoding="utf-8"))["Values"]
    assert isinstance(values, dict)
    return values


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


def test_no_keys_or_connection_strings_with_secrets() -> None:
    for name, value in _app_settings().items():
        assert "AccountKey=" not in value, name
        assert "listKeys(" not in value, name
        assert "SharedAccessSignature" not in value, name
    for path, text in _all_bicep().items():
        assert "listKeys(" not in text, path
        assert "AccountKey=" not in text, path


def test_contract_defaults() -> None:
    main = _bicep("main.bicep")
    assert _param_default(main, "batchApiVersion") == "2023-11-01.18.0"
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
    assert queue_names == ["poisonQueueName", "terminateQueueName"]
    # main passes the same two values to the storage module and to the app settings.
    for module in ("storage", "functionApp"):
        (params,) = [
            _top_level_entries(_property_block(body, "params")) for symbol, body in _modules(main) if symbol == module
        ]
        assert params["terminateQueueName"] == "terminateQueueName", module
        assert params["poisonQueueName"] == "poisonQueueName", module
    assert settings["TERMINATE_QUEUE_NAME"] == "terminateQueueName"
    assert settings["POISON_QUEUE_NAME"] == "poisonQueueName"


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


def test_batch_job_submitter_is_assigned_on_the_existing_batch_account() -> None:
    ((path, _symbol, body),) = _assigned(BATCH_JOB_SUBMITTER)
    assert path == "modules/batch-role.bicep"
    assert re.search(r"^\s*scope:\s*batchAccount\s*$", body, re.M)
    assert re.search(r"^\s*name:\s*guid\(", body, re.M)
    text = _bicep(path)
    assert re.search(r"^resource batchAccount 'Microsoft\.Batch/batchAccounts@[^']+' existing = \{", text, re.M)
    (batch_module,) = [body for symbol, body in _modules(_bicep("main.bicep")) if symbol == "batchRole"]
    assert re.search(r"^\s*scope:\s*resourceGroup\(batchAccountResourceGroup\)\s*$", batch_module, re.M)
    assert "batchAccountName: batchAccountName" in batch_module


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
    assert site_config["ftpsState"] == "'Disabled'"
    assert site_config["minTlsVersion"] == "'1.2'"


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
