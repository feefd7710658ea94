"""Azure SDK storage errors (queues and the incident table) mapped to one-line CliErrors (exit 3) with no secret."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from urllib.parse import urlsplit

from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.data.tables import TableClient
from azure.storage.queue import QueueClient

from ops.errors import CliError
from ops.exit_codes import EXIT_STORAGE
from ops.target import STORAGE_SETTING

StorageClient = QueueClient | TableClient
_NOT_FOUND_CODES = ("QueueNotFound", "TableNotFound")


def endpoint_of(client: StorageClient) -> str:
    """The storage endpoint without path or query (a SAS token never leaves the client)."""
    parts = urlsplit(client.url)
    return f"{parts.scheme}://{parts.netloc}"


def _resource(client: StorageClient) -> tuple[str, str, str]:
    """(kind, name, service) of the client's queue or table."""
    if isinstance(client, TableClient):
        return "table", client.table_name, "Table"
    return "queue", client.queue_name, "Queue"


def storage_failure(exc: BaseException, client: StorageClient) -> CliError:
    """Turn an Azure SDK error into a one-line CliError (exit 3) that carries no secret."""
    where = endpoint_of(client)
    kind, name, service = _resource(client)
    if isinstance(exc, ResourceNotFoundError) and getattr(exc, "error_code", None) in _NOT_FOUND_CODES:
        return CliError(f"{kind} {name} does not exist at {where}", EXIT_STORAGE)
    if isinstance(exc, HttpResponseError) and exc.status_code is not None and not getattr(exc, "error_code", None):
        return CliError(f"{where} answered HTTP {exc.status_code}, not as Azure {service} Storage would", EXIT_STORAGE)
    if isinstance(exc, ClientAuthenticationError) and getattr(exc, "status_code", None) is None:
        return CliError(
            f"no credential for storage at {where} (sign in with `az login`, or set {STORAGE_SETTING})", EXIT_STORAGE
        )
    if isinstance(exc, HttpResponseError) and exc.status_code is not None:
        code = getattr(exc, "error_code", None)
        code = getattr(code, "value", code) or exc.reason or ""
        return CliError(
            f"storage at {where} refused access to {kind} {name}: HTTP {exc.status_code} {code}", EXIT_STORAGE
        )
    if isinstance(exc, ServiceRequestError):
        return CliError(f"cannot reach storage at {where} ({_network_reason(exc)})", EXIT_STORAGE)
    if isinstance(exc, ServiceResponseError):
        return CliError(f"storage at {where} did not answer ({_network_reason(exc)})", EXIT_STORAGE)
    return CliError(f"storage error at {where}: {type(exc).__name__}", EXIT_STORAGE)


def _network_reason(exc: BaseException) -> str:
    text = str(exc).lower()
    for needle, reason in (
        ("refused", "connection refused"),
        ("timed out", "timed out"),
        ("timeout", "timed out"),
        ("name or service not known", "host not found"),
        ("nodename nor servname", "host not found"),
        ("getaddrinfo", "host not found"),
        ("reset", "connection reset"),
    ):
        if needle in text:
            return reason
    return type(exc).__name__


@contextlib.contextmanager
def storage_errors(client: StorageClient) -> Iterator[None]:
    """Map any Azure SDK error raised inside to a one-line CliError."""
    try:
        yield
    except AzureError as exc:
        raise storage_failure(exc, client) from exc
