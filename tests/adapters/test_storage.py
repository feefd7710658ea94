"""shared.storage.queues.queue_client: the app's queue clients read the environment once and keep their timeouts."""

from __future__ import annotations

import pytest
from azure.core.exceptions import ServiceRequestError
from azure.storage.queue import ExponentialRetry

from shared.config.settings import StorageSettings
from shared.storage.queues import queue_client
from tests.conftest import Queues, closed_port

pytestmark = pytest.mark.integration

NO_RETRY = ExponentialRetry(retry_total=0)


def test_a_proxy_in_the_environment_when_the_client_is_built_is_used(
    queues: Queues, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{closed_port()}")
    client = queue_client(
        StorageSettings(connection_string=queues.connection_string), queues.trigger, "none", retry_policy=NO_RETRY
    )

    with pytest.raises(ServiceRequestError):
        client.send_message("through the proxy")


def test_the_environment_is_read_once_not_on_every_call(queues: Queues, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NO_PROXY", "no_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    client = queue_client(
        StorageSettings(connection_string=queues.connection_string), queues.trigger, "none", retry_policy=NO_RETRY
    )
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{closed_port()}")  # too late: resolved at build time

    assert client.send_message("direct").id
    monkeypatch.delenv("HTTP_PROXY")  # the checking client below reads the environment on every call
    assert [m.content for m in queues.client(queues.trigger).peek_messages()] == ["direct"]
