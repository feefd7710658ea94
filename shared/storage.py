"""Queue clients for the app's storage account, encoding messages the way host.json says the trigger decodes them."""

from __future__ import annotations

from typing import Any

import requests
from azure.core.credentials import TokenCredential
from azure.core.pipeline.transport import RequestsTransport
from azure.identity import DefaultAzureCredential, ManagedIdentityCredential
from azure.storage.queue import ExponentialRetry, QueueClient, TextBase64DecodePolicy, TextBase64EncodePolicy
from requests.adapters import HTTPAdapter

from shared.settings import StorageSettings


def queue_client(
    storage: StorageSettings,
    queue_name: str,
    message_encoding: str,
    *,
    credential: TokenCredential | None = None,
    pool_size: int | None = None,
    **client_options: Any,
) -> QueueClient:
    """A queue client that encodes messages the way host.json says the trigger decodes them."""
    options: dict[str, Any] = {
        # One quick retry: a write that still fails raises, and the host redelivers the message later anyway.
        "retry_policy": ExponentialRetry(initial_backoff=1, increment_base=2, retry_total=1),
        "connection_timeout": 10,
        **client_options,
    }
    if pool_size is not None:
        # requests keeps 10 connections per host; more concurrent callers would open and drop one per call.
        session = requests.Session()
        session.mount("https://", HTTPAdapter(pool_maxsize=pool_size))
        session.mount("http://", HTTPAdapter(pool_maxsize=pool_size))
        options["transport"] = RequestsTransport(session=session, session_owner=False)
    if message_encoding == "base64":
        options["message_encode_policy"] = TextBase64EncodePolicy()
        options["message_decode_policy"] = TextBase64DecodePolicy()
    if storage.connection_string:
        return QueueClient.from_connection_string(storage.connection_string, queue_name, **options)
    if credential is None and (storage.credential == "managedidentity" or storage.client_id):
        credential = ManagedIdentityCredential(client_id=storage.client_id)
    elif credential is None:
        credential = DefaultAzureCredential()
    assert storage.queue_service_uri is not None
    return QueueClient(storage.queue_service_uri, queue_name, credential=credential, **options)
