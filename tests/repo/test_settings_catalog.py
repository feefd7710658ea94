"""The settings declaration (shared/config/catalog.py) against the spec's table, the docs, the sample and infra."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from shared.config import catalog
from tests.repo.test_infra import _app_settings, _sample_values, _spec_section, _spec_settings

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# The project's own setting names, by prefix; a backticked name with one of these in any doc must be declared.
PROJECT_PREFIXES = (
    "BATCH_",
    "TERMINATE_",
    "POISON_",
    "CONFIRM_",
    "INCIDENT_",
    "KILL_SWITCH_",
    "ALERT_",
    "SWEEP_",
    "PYTHON_",
    "AzureWebJobsStorage",
    "AzureFunctionsJobHost__",
)
# Names with those prefixes that are not app settings: azd environment values and Bicep parameters of infra/.
NOT_APP_SETTINGS = frozenset(
    {
        "ALERT_EMAIL",
        "BATCH_ACCOUNT_NAME",
        "BATCH_ACCOUNT_RESOURCE_GROUP",
        "KILL_SWITCH_RECEIVER",
        "KILL_SWITCH_ACTION_GROUP_ID",
    }
)
# What a deployment or Core Tools sets beside the app's own settings.
PLATFORM = frozenset(
    {
        "FUNCTIONS_WORKER_RUNTIME",
        "FUNCTIONS_EXTENSION_VERSION",
        "APPLICATIONINSIGHTS_CONNECTION_STRING",
        "APPLICATIONINSIGHTS_AUTHENTICATION_STRING",
        "AzureWebJobsStorage__blobServiceUri",
    }
)
DECLARED = {setting.name for setting in catalog.SETTINGS}
# Read by the worker or the host, an identity-based spelling of AzureWebJobsStorage, or an override of host.json.
OPTIONAL_IN_SAMPLE = frozenset(
    s.name
    for s in catalog.SETTINGS
    if set(s.readers) <= {"worker", "host"} or s.name.startswith(("AzureWebJobsStorage__", "AzureFunctionsJobHost__"))
)


def doc_setting_names(text: str) -> set[str]:
    """Backticked names in a document that look like one of the project's settings (wildcards such as X_* aside)."""
    names = set()
    for token in re.findall(r"`([A-Za-z][A-Za-z0-9_]*)(?:=[^`]*)?`", text):
        if token.startswith(PROJECT_PREFIXES) and not token.endswith("_"):
            names.add(token)
    return names


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_setting_a_doc_names_is_declared(doc: Path) -> None:
    undeclared = doc_setting_names(doc.read_text(encoding="utf-8")) - DECLARED - NOT_APP_SETTINGS - PLATFORM
    assert undeclared == set(), f"{doc.name} names settings the code does not declare"


def test_every_declared_setting_is_in_the_spec_table() -> None:
    section = _spec_section("2")
    missing = {name for name in DECLARED if f"`{name}`" not in section}
    assert missing == set(), "docs/CONTRACT.md §2 lacks these declared settings"


def test_every_row_of_the_spec_table_is_declared() -> None:
    assert set(_spec_settings()) - DECLARED == set()


def test_the_spec_table_states_each_declared_default() -> None:
    for name, (_, default) in _spec_settings().items():
        declared = catalog.declared(name).default
        if declared is not None and not declared.startswith("{"):
            assert f"`{declared}`" in default, f"{name}: the spec says {default!r}, the code {declared!r}"


def test_the_sample_lists_every_app_setting_and_nothing_undeclared() -> None:
    sample = set(_sample_values())
    assert sample - DECLARED - PLATFORM == set()
    assert DECLARED - OPTIONAL_IN_SAMPLE - sample == set()


def test_infra_sets_only_declared_or_platform_settings() -> None:
    assert set(_app_settings()) - DECLARED - PLATFORM == set()


def test_a_made_up_name_in_a_doc_is_caught() -> None:
    assert doc_setting_names("set `TERMINATE_DRY_RUNN=true` and `SWEEP_*`, not `Foo`") == {"TERMINATE_DRY_RUNN"}
    assert "TERMINATE_DRY_RUNN" not in DECLARED


def test_every_declared_setting_is_read_by_someone() -> None:
    assert all(setting.readers for setting in catalog.SETTINGS)
    assert len(DECLARED) == len(catalog.SETTINGS), "a setting is declared twice"
