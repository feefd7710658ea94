"""Process-wide objects, built once on first use: settings, credential, HTTP session, clients."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import requests
from azure.core.credentials import TokenCredential
from azure.core.pipeline.transport import RequestsTransport
from azure.identity import DefaultAzureCredential, ManagedIdentityCredential
from azure.storage.queue import ExponentialRetry, QueueClient, TextBase64DecodePolicy, TextBase64EncodePolicy
from requests.adapters import HTTPAdapter
from requests.utils import get_environ_proxies

from shared.batch import BatchClient, RetryPolicy, TokenProvider
from shared.poison import PoisonWriter
from shared.settings import ENCODING_ENV, MAX_DEQUEUE_ENV, Settings, StorageSettings
from shared.terminator import Terminator

log = logging.getLogger("batch_terminator")
_lock = threading.Lock()


def batch_credential(client_id: str | None) -> TokenCredential:
    """Managed identity where the platform provides one; the developer's chain elsewhere."""
    if os.environ.get("IDENTITY_ENDPOINT") or os.environ.get("MSI_ENDPOINT") or os.environ.get("WEBSITE_INSTANCE_ID"):
        # Our own loop retries token failures with backoff; a second layer would only stretch them.
        return ManagedIdentityCredential(client_id=client_id, retry_total=0)
    return DefaultAzureCredential(managed_identity_client_id=client_id)


def http_session(account_url: str | None = None, *, pool_size: int = 24) -> requests.Session:
    """A pooled session for Batch calls; requests retries nothing on its own (we do)."""
    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=4, pool_maxsize=pool_size, max_retries=0)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    if account_url is not None:
        pin_environment(session, account_url)
    return session


def pin_environment(session: requests.Session, url: str) -> None:
    """Resolve once what requests reads from the environment on every request to this URL's host."""
    # requests scans os.environ twice per request for proxy settings (~140 us a call with 36 variables, more
    # with a Function App's); the answer depends only on the host and the environment, both fixed for the process.
    session.proxies.update(get_environ_proxies(url))
    session.verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
    # trust_env=False also drops ~/.netrc basic auth, which would overwrite the bearer token anyway.
    session.trust_env = False


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


def batch_client(
    settings: Settings,
    *,
    pool_size: int = 24,
    sleep: Callable[[float], None] = time.sleep,
    http_timeout: float | None = None,
    policy: RetryPolicy | None = None,
) -> BatchClient:
    """A Batch client with the app's identity, a pooled session and the retry policy."""
    tokens = TokenProvider(batch_credential(settings.azure_client_id))
    session = http_session(settings.batch_account_url, pool_size=pool_size)
    return BatchClient(settings, tokens, session, policy=policy, sleep=sleep, http_timeout=http_timeout)


def build_terminator(
    settings: Settings,
    *,
    sleep: Callable[[float], None] = time.sleep,
    http_timeout: float | None = None,
    policy: RetryPolicy | None = None,
    poison: PoisonWriter | None = None,
) -> Terminator:
    """Wire the production objects together for these settings."""
    # The host runs up to batchSize + newBatchThreshold invocations at once: pool that many connections.
    concurrency = settings.queues.batch_size + settings.queues.new_batch_threshold
    client = batch_client(settings, pool_size=concurrency, sleep=sleep, http_timeout=http_timeout, policy=policy)
    if poison is None:
        encoding = settings.queues.message_encoding
        poison = PoisonWriter(
            queue_client(settings.storage, settings.poison_queue_name, encoding, pool_size=concurrency)
        )
    return Terminator(client, poison, max_dequeue_count=settings.max_dequeue_count)


# What the process-wide objects are built from. They are read on the first invocation and reused while these
# stay the same; a change (in Azure that means a restart anyway; in a test harness, a new emulator) rebuilds them.
WATCHED_SETTINGS = (
    "BATCH_ACCOUNT_URL",
    "BATCH_API_VERSION",
    "BATCH_TIMEOUT_SECONDS",
    "AZURE_CLIENT_ID",
    "TERMINATE_QUEUE_NAME",
    "POISON_QUEUE_NAME",
    "AzureWebJobsStorage",
    "AzureWebJobsStorage__queueServiceUri",
    "AzureWebJobsStorage__accountName",
    "AzureWebJobsStorage__clientId",
    "AzureWebJobsStorage__credential",
    MAX_DEQUEUE_ENV,
    ENCODING_ENV,
    "IDENTITY_ENDPOINT",
    "IDENTITY_HEADER",
    "MSI_ENDPOINT",
)

_installed: Terminator | None = None
_current: tuple[tuple[str | None, ...], Terminator] | None = None


def _fingerprint() -> tuple[str | None, ...]:
    return tuple(os.environ.get(name) for name in WATCHED_SETTINGS)


def get_terminator() -> Terminator:
    """The process's Terminator, built on first use from the settings (a failure is not cached)."""
    global _current
    installed, current, seen = _installed, _current, _fingerprint()
    if installed is not None:
        return installed
    if current is not None and current[0] == seen:
        return current[1]
    with _lock:
        if _installed is not None:
            return _installed
        if _current is None or _current[0] != seen:
            settings = Settings.from_env()
            log.info(
                "batch-terminator ready: batch=%s api-version=%s queue=%s poison=%s maxDequeueCount=%d",
                settings.batch_account_url,
                settings.batch_api_version,
                settings.terminate_queue_name,
                settings.poison_queue_name,
                settings.max_dequeue_count,
            )
            _current = (seen, build_terminator(settings))
        return _current[1]


def install(terminator: Terminator | None) -> None:
    """Use this Terminator for the process (a host that wires its own); None goes back to settings."""
    global _installed, _current
    with _lock:
        _installed = terminator
        _current = None


def reset() -> None:
    """Forget the process's objects so the next call re-reads settings (tests, reconfiguration)."""
    install(None)
