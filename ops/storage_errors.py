"""Azure SDK storage errors mapped to one-line CliErrors (exit 3) that carry no secret."""

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
from azure.storage.queue import QueueClient

from ops.errors import CliError
from ops.exit_codes import EXIT_STORAGE
from ops.target import STORAGE_SETTING


def endpoint_of(client: QueueClient) -> str:
    """The storage endpoint without path or query (a SAS token never leaves the client)."""
    parts = urlsplit(client.url)
    return f"{parts.scheme}://{parts.netloc}"


def storage_failure(exc: BaseException, client: QueueClient) -> CliError:
    """Turn an Azure SDK error into a one-line CliError (exit 3) that carries no secret."""
    where = endpoint_of(client)
    queue = client.queue_name
    if isinstance(exc, ResourceNotFoundError) and getattr(exc, "error_code", None) == "QueueNotFound":
        return CliError(f"queue {queue} does not exist at {where}", EXIT_STORAGE)
    if isinstance(exc, HttpResponseError) and exc.status_code is not None and not getattr(exc, "error_code", None):
        return CliError(f"{where} answered HTTP {exc.status_code}, not as Azure Queue Storage would", EXIT_STORAGE)
    if isinstance(exc, ClientAuthenticationError) and getattr(exc, "status_code", None) is None:
        return CliError(
            f"no credential for storage at {where} (sign in with `az login`, or set {STORAGE_SETTING})", EXIT_STORAGE
        )
    if isinstance(exc, HttpResponseError) and exc.status_code is not None:
        code = getattr(exc, "error_code", None)
        code = getattr(code, "value", code) or exc.reason or ""
        return CliError(
            f"storage at {where} refused access to queue {queue}: HTTP {exc.status_code} {code}", EXIT_STORAGE
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
def storage_errors(client: QueueClient) -> Iterator[None]:
    """Map any Azure SDK error raised inside to a one-line CliError."""
    try:
        yield
    except AzureError as exc:
        raise storage_failure(exc, client) from exc
