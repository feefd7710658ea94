"""Settings.from_env: docs/CONTRACT.md §2, defaults and the named error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.errors import ConfigurationError
from shared.settings import HOST_JSON, Settings, local_settings_values, parse_timespan, validate_batch_url

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
    assert loaded.batch_api_version == "2023-11-01.18.0"
    assert loaded.batch_timeout_seconds == 30
    assert loaded.poison_queue_name == "batch-terminate-poison"
    assert loaded.azure_client_id is None
    assert loaded.max_dequeue_count == 5
    assert loaded.queues.message_encoding == "base64"
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
