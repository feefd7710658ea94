"""Settings.from_env: docs/CONTRACT.md §2, defaults and the named error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ops.local_settings import local_settings_values
from shared.config.settings import (
    HOST_JSON,
    ConfirmSettings,
    GuardSettings,
    Settings,
    account_aliases,
    api_version_supports_force,
    parse_timespan,
    validate_batch_url,
)
from shared.contract.errors import ConfigurationError

BASE = {
    "BATCH_ACCOUNT_URL": "https://acct.westeurope.batch.azure.com",
    "TERMINATE_QUEUE_NAME": "batch-terminate",
    "AzureWebJobsStorage": "UseDevelopmentStorage=true",
}


def settings(host_json: Path = HOST_JSON, **overrides: str) -> Settings:
    return Settings.from_env({**BASE, **overrides}, host_json=host_json)


def test_defaults_follow_the_contract() -> None:
    loaded = settings()
    assert loaded.batch_account_url == "https://acct.westeurope.batch.azure.com"
    assert loaded.batch_api_version == "2025-06-01"
    assert loaded.batch_timeout_seconds == 30
    assert loaded.poison_queue_name == "batch-terminate-poison"
    assert loaded.azure_client_id is None
    assert loaded.max_dequeue_count == 5
    assert loaded.queues.message_encoding == "none"  # host.json: the host binds the text as it is
    assert loaded.http_timeout_seconds > loaded.batch_timeout_seconds


def test_optional_settings_are_read() -> None:
    loaded = settings(
        BATCH_API_VERSION="2024-07-01.20.0",
        BATCH_TIMEOUT_SECONDS="10",
        AZURE_CLIENT_ID="1111",
        POISON_QUEUE_NAME="dead-letters",
        AzureFunctionsJobHost__extensions__queues__maxDequeueCount="3",
    )
    assert (loaded.batch_api_version, loaded.batch_timeout_seconds) == ("2024-07-01.20.0", 10)
    assert (loaded.azure_client_id, loaded.poison_queue_name, loaded.max_dequeue_count) == ("1111", "dead-letters", 3)


def test_max_dequeue_count_comes_from_host_json_when_not_overridden(tmp_path: Path) -> None:
    host = tmp_path / "host.json"
    host.write_text(json.dumps({"version": "2.0", "extensions": {"queues": {"maxDequeueCount": 2}}}))
    assert settings(host_json=host).max_dequeue_count == 2


def test_max_dequeue_count_defaults_to_five_without_host_json(tmp_path: Path) -> None:
    assert settings(host_json=tmp_path / "missing.json").max_dequeue_count == 5


def test_trailing_slash_is_dropped() -> None:
    assert validate_batch_url("https://a.b.batch.azure.com/") == "https://a.b.batch.azure.com"


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:8045", "http://localhost:1", "http://[::1]:9", "https://127.0.0.1"],
)
def test_loopback_may_use_http(url: str) -> None:
    assert validate_batch_url(url) == url


@pytest.mark.parametrize(
    "url",
    [
        "http://acct.westeurope.batch.azure.com",
        "ftp://acct.batch.azure.com",
        "acct.westeurope.batch.azure.com",
        "https://user:pw@acct.batch.azure.com",
        "https://acct.batch.azure.com/jobs",
        "https://acct.batch.azure.com?x=1",
        "https://acct.batch.azure.com#frag",
        "https://",
        "http://10.0.0.1",
        "http://127.0.0.1.evil.com",
        "http://127.0.0.2:8045",
        "http://0.0.0.0:8045",
        "https://acct.batch.azure.com:notaport",
    ],
)
def test_unsafe_batch_url_is_refused_by_name(url: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        settings(BATCH_ACCOUNT_URL=url)
    assert caught.value.setting == "BATCH_ACCOUNT_URL"
    assert "BATCH_ACCOUNT_URL" in str(caught.value)


@pytest.mark.parametrize("missing", ["BATCH_ACCOUNT_URL", "TERMINATE_QUEUE_NAME", "AzureWebJobsStorage"])
def test_missing_required_setting_is_named(missing: str) -> None:
    env = {k: v for k, v in BASE.items() if k != missing}
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_env(env)
    assert caught.value.setting == missing


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("BATCH_TIMEOUT_SECONDS", "0"),
        ("BATCH_TIMEOUT_SECONDS", "31"),
        ("BATCH_TIMEOUT_SECONDS", "abc"),
        ("TERMINATE_QUEUE_NAME", "Batch_Terminate"),
        ("TERMINATE_QUEUE_NAME", "ab"),
        ("POISON_QUEUE_NAME", "batch-terminate"),
        ("BATCH_API_VERSION", "2023-11-01&x=1"),
        ("AzureFunctionsJobHost__extensions__queues__maxDequeueCount", "0"),
    ],
)
def test_invalid_setting_is_named(name: str, value: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        settings(**{name: value})
    assert caught.value.setting == name


def test_identity_based_storage_is_accepted() -> None:
    env = {k: v for k, v in BASE.items() if k != "AzureWebJobsStorage"}
    env["AzureWebJobsStorage__queueServiceUri"] = "https://acct.queue.core.windows.net/"
    env["AzureWebJobsStorage__clientId"] = "2222"
    loaded = Settings.from_env(env)
    assert loaded.storage.queue_service_uri == "https://acct.queue.core.windows.net"
    assert loaded.storage.client_id == "2222"


def test_storage_repr_hides_the_connection_string() -> None:
    loaded = settings(AzureWebJobsStorage="DefaultEndpointsProtocol=https;AccountName=a;AccountKey=SECRETKEY==")
    assert "SECRETKEY" not in repr(loaded)


@pytest.mark.parametrize(("text", "seconds"), [("00:00:30", 30), ("00:10:00", 600), ("1.00:00:01", 86401)])
def test_timespans_parse(text: str, seconds: float) -> None:
    assert parse_timespan(text) == seconds


def test_local_settings_file_wins_over_the_sample(tmp_path: Path) -> None:
    (tmp_path / "local.settings.sample.json").write_text(json.dumps({"Values": {"A": "sample"}}))
    assert local_settings_values(tmp_path) == (tmp_path / "local.settings.sample.json", {"A": "sample"})
    (tmp_path / "local.settings.json").write_text(json.dumps({"Values": {"A": "mine", "B": None}}))
    assert local_settings_values(tmp_path) == (tmp_path / "local.settings.json", {"A": "mine", "B": ""})


def test_unreadable_local_settings_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "local.settings.json").write_text("{not json")
    with pytest.raises(ConfigurationError) as caught:
        local_settings_values(tmp_path)
    assert caught.value.setting == "local.settings.json"


def test_empty_max_dequeue_override_means_not_set() -> None:
    assert settings(AzureFunctionsJobHost__extensions__queues__maxDequeueCount="").max_dequeue_count == 5


@pytest.mark.parametrize("document", ['{"extensions": null}', "[]", '{"extensions": {}}'])
def test_host_json_without_queue_options_uses_defaults(tmp_path: Path, document: str) -> None:
    host = tmp_path / "host.json"
    host.write_text(document)
    assert settings(host_json=host).max_dequeue_count == 5


def test_malformed_queue_options_in_host_json_are_named(tmp_path: Path) -> None:
    host = tmp_path / "host.json"
    host.write_text('{"extensions": {"queues": 5}}')
    with pytest.raises(ConfigurationError) as caught:
        settings(host_json=host)
    assert caught.value.setting == "host.json"


# ---- docs/CONTRACT.md §2: accounts, guards, confirmation, the poison queue's name


def test_new_settings_default_to_off() -> None:
    loaded = settings()
    assert loaded.accounts == {"default": "https://acct.westeurope.batch.azure.com"}
    assert loaded.guards == GuardSettings()
    assert (loaded.guards.allowed_job_id_prefixes, loaded.guards.honor_keep, loaded.guards.dry_run) == (
        (),
        False,
        False,
    )
    assert loaded.confirm == ConfirmSettings(after_seconds=0, queue_name=None, max_checks=3, force=False)
    assert not loaded.confirm.enabled


def test_batch_accounts_are_read_by_alias() -> None:
    loaded = settings(
        BATCH_ACCOUNTS=" eu=https://a.westeurope.batch.azure.com/ , us=https://b.eastus.batch.azure.com,emu-1=http://127.0.0.1:8045,"
    )
    assert loaded.accounts == {
        "default": "https://acct.westeurope.batch.azure.com",
        "eu": "https://a.westeurope.batch.azure.com",
        "us": "https://b.eastus.batch.azure.com",
        "emu-1": "http://127.0.0.1:8045",
    }
    assert loaded.account_url("EU") == "https://a.westeurope.batch.azure.com"
    with pytest.raises(KeyError):
        loaded.account_url("asia")


def test_default_may_be_repeated_but_not_redefined() -> None:
    assert settings(BATCH_ACCOUNTS="default=https://ACCT.westeurope.batch.azure.com").accounts == {
        "default": "https://acct.westeurope.batch.azure.com"
    }
    with pytest.raises(ConfigurationError) as caught:
        settings(BATCH_ACCOUNTS="default=https://other.westeurope.batch.azure.com")
    assert caught.value.setting == "BATCH_ACCOUNTS"


@pytest.mark.parametrize(
    "value",
    [
        "eu",  # no url
        "=https://a.westeurope.batch.azure.com",  # empty alias
        "e u=https://a.westeurope.batch.azure.com",
        "eu!=https://a.westeurope.batch.azure.com",
        f"{'a' * 33}=https://a.westeurope.batch.azure.com",
        "eu=https://a.westeurope.batch.azure.com,eu=https://b.westeurope.batch.azure.com",
        "eu=http://a.westeurope.batch.azure.com",  # http off loopback
        "eu=https://a.westeurope.batch.azure.com/jobs",
        "eu=https://user:pw@a.westeurope.batch.azure.com",
        "eu=",
    ],
)
def test_bad_batch_accounts_are_refused_by_name(value: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        settings(BATCH_ACCOUNTS=value)
    assert caught.value.setting == "BATCH_ACCOUNTS"


def test_a_32_character_alias_is_accepted() -> None:
    alias = "a" * 31 + "9"
    assert alias in settings(BATCH_ACCOUNTS=f"{alias}=https://a.westeurope.batch.azure.com").accounts


def test_guard_settings_are_read() -> None:
    loaded = settings(
        TERMINATE_ALLOWED_JOB_ID_PREFIXES=" Render-, nightly_ ,,render-",
        TERMINATE_HONOR_KEEP="TRUE",
        TERMINATE_DRY_RUN="true",
    )
    assert loaded.guards == GuardSettings(("render-", "nightly_"), honor_keep=True, dry_run=True)


def test_confirm_settings_are_read() -> None:
    loaded = settings(
        CONFIRM_AFTER_SECONDS="120",
        CONFIRM_QUEUE_NAME="batch-terminate-confirm",
        CONFIRM_MAX_CHECKS="5",
        CONFIRM_FORCE="True",
    )
    assert loaded.confirm == ConfirmSettings(120, "batch-terminate-confirm", 5, force=True)
    assert loaded.confirm.enabled
    assert loaded.confirm.queue() == "batch-terminate-confirm"


def test_confirm_queue_is_needed_only_when_checks_are_on() -> None:
    with pytest.raises(ConfigurationError) as caught:
        settings().confirm.queue()
    assert caught.value.setting == "CONFIRM_QUEUE_NAME"
    with pytest.raises(ConfigurationError) as caught:
        settings(CONFIRM_AFTER_SECONDS="60")
    assert caught.value.setting == "CONFIRM_QUEUE_NAME"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("TERMINATE_HONOR_KEEP", "sure"),
        ("TERMINATE_DRY_RUN", "2"),
        ("CONFIRM_FORCE", "enabled"),
        ("CONFIRM_AFTER_SECONDS", "-1"),
        ("CONFIRM_AFTER_SECONDS", "604801"),
        ("CONFIRM_AFTER_SECONDS", "soon"),
        ("CONFIRM_MAX_CHECKS", "0"),
        ("CONFIRM_QUEUE_NAME", "Confirm_Queue"),
        ("CONFIRM_QUEUE_NAME", "batch-terminate"),
        ("CONFIRM_QUEUE_NAME", "batch-terminate-poison"),
        ("BATCH_API_VERSION", "latest"),
        ("BATCH_API_VERSION", "2024-07-01.20"),
    ],
)
def test_invalid_new_setting_is_named(name: str, value: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        settings(**{name: value})
    assert caught.value.setting == name


@pytest.mark.parametrize(
    ("version", "force"),
    [
        ("2023-11-01.18.0", False),
        ("2024-02-01.19.0", False),
        ("2024-07-01.20.0", True),
        ("2025-06-01", True),
    ],
)
def test_force_is_known_from_2024_07_01(version: str, force: bool) -> None:
    assert settings(BATCH_API_VERSION=version).supports_force is force
    assert api_version_supports_force(version) is force


@pytest.mark.parametrize(
    "name",
    ["ab", "a" * 64, "Dead-Letters", "dead--letters", "-dead", "dead-", "dead_letters", "dead letters"],
)
def test_poison_queue_name_must_be_a_queue_name(name: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        settings(POISON_QUEUE_NAME=name)
    assert caught.value.setting == "POISON_QUEUE_NAME"


def test_a_default_poison_name_too_long_for_a_queue_is_named() -> None:
    trigger = "q" * 57  # valid itself; "-poison" makes it 64
    with pytest.raises(ConfigurationError) as caught:
        settings(TERMINATE_QUEUE_NAME=trigger)
    assert caught.value.setting == "POISON_QUEUE_NAME"
    assert settings(TERMINATE_QUEUE_NAME="q" * 56).poison_queue_name == "q" * 56 + "-poison"
    assert settings(TERMINATE_QUEUE_NAME=trigger, POISON_QUEUE_NAME="dead-letters").poison_queue_name == "dead-letters"


def test_63_character_poison_name_is_accepted() -> None:
    assert settings(POISON_QUEUE_NAME="p" * 63).poison_queue_name == "p" * 63


def test_aliases_can_be_read_without_a_batch_url() -> None:
    assert account_aliases({"BATCH_ACCOUNTS": "EU=https://a.westeurope.batch.azure.com,us=http://localhost:1"}) == (
        "default",
        "eu",
        "us",
    )
    assert account_aliases({}) == ("default",)
    with pytest.raises(ConfigurationError) as caught:
        account_aliases({"BATCH_ACCOUNTS": "eu=ftp://x"})
    assert caught.value.setting == "BATCH_ACCOUNTS"
