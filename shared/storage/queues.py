"""Queue clients for the app's storage account, encoding messages the way host.json says the trigger decodes them."""

from __future__ import annotations

from typing import Any

import requests
from azure.core.credentials import TokenCredential
from azure.core.pipeline.transport import RequestsTransport
from azure.identity import DefaultAzureCredential, ManagedIdentityCredential
from azure.storage.queue import ExponentialRetry, QueueClient, TextBase64DecodePolicy, TextBase64EncodePolicy

from shared.config.settings import StorageSettings
from shared.transport.sessions import ca_bundle, pin_environment, pooled_session

# requests keeps 10 connections per host; a caller with more threads passes pool_size.
DEFAULT_POOL_SIZE = 10
# azure-storage-queue's own read timeout, kept when we hand it a transport.
STORAGE_READ_TIMEOUT = 60


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
    session: requests.Session | None = None
    if "transport" not in options:
        session = pooled_session(pool_size or DEFAULT_POOL_SIZE)
        # A transport of our own takes the timeouts itself: the client's keywords reach only one it builds.
        options["transport"] = RequestsTransport(
            session=session,
            session_owner=False,
            connection_timeout=options.pop("connection_timeout"),
            read_timeout=options.pop("read_timeout", STORAGE_READ_TIMEOUT),
            # verify is passed on every call, so the environment's CA bundle (if any) must be passed here.
            connection_verify=ca_bundle() or True,
        )
    if message_encoding == "base64":
        options["message_encode_policy"] = TextBase64EncodePolicy()
        options["message_decode_policy"] = TextBase64DecodePolicy()
    if storage.connection_string:
        client = QueueClient.from_connection_string(storage.connection_string, queue_name, **options)
    else:
        if credential is None and (storage.credential == "managedidentity" or storage.client_id):
            credential = ManagedIdentityCredential(client_id=storage.client_id)
        elif credential is None:
            credential = DefaultAzureCredential()
        assert storage.queue_service_uri is not None
        client = QueueClient(storage.queue_service_uri, queue_name, credential=credential, **options)
    if session is not None:
        # Every call pays requests' environment scan unless the answer is fixed once for the queue's host.
        pin_environment(session, client.url)
    return client
