"""Batch's answers and failures mapped to BatchError at the edge: bodies, network errors, Retry-After."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from http import HTTPStatus

import requests

from shared.batch.retry import Verdict, classify
from shared.contract.errors import BatchCallFailed, BatchError, BatchErrorDetail


def error_detail(response: requests.Response, client_request_id: str | None) -> BatchError:
    """Read a BatchError body (or describe a body that is not one)."""
    code: str | None = None
    message = ""
    values: list[BatchErrorDetail] = []
    try:
        document = response.json() if response.content else None
    except ValueError:
        document = None
    if isinstance(document, dict):
        raw_code = document.get("code")
        code = raw_code if isinstance(raw_code, str) and raw_code else None
        raw_message = document.get("message")
        if isinstance(raw_message, dict):
            message = str(raw_message.get("value") or "")
        elif isinstance(raw_message, str):
            message = raw_message
        raw_values = document.get("values")
        if isinstance(raw_values, list):
            values = [
                BatchErrorDetail(str(item.get("key") or ""), str(item.get("value") or ""))
                for item in raw_values
                if isinstance(item, dict)
            ]
    if code is None and not 200 <= response.status_code < 300:
        code = _code_for_status(response.status_code)
        text = response.text[:512] if response.content else ""
        message = message or f"HTTP {response.status_code} {response.reason or ''} without a BatchError body".strip()
        if text:
            values.append(BatchErrorDetail("body", text))
    return BatchError(
        code=code or "",
        message=message,
        values=tuple(values),
        http_status=response.status_code,
        request_id=response.headers.get("request-id"),
        client_request_id=response.headers.get("client-request-id") or client_request_id,
    )


def _code_for_status(status: int) -> str:
    """A code for an answer without a BatchError: ServiceUnavailable when transient, else the status phrase."""
    if classify(status, None) is Verdict.TRANSIENT:
        return "ServiceUnavailable"  # docs/CONTRACT.md §5: Batch's code, else ServiceUnavailable
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        return f"Http{status}"
    return "".join(word[:1].upper() + word[1:] for word in phrase.replace("-", " ").split())


def _network_detail(what: str, exc: Exception, client_request_id: str) -> BatchError:
    return BatchError(
        code="ServiceUnavailable",
        message=f"{what}: {type(exc).__name__}",
        client_request_id=client_request_id,
    )


def _retry_after(headers: Mapping[str, str]) -> float | None:
    raw = headers.get("Retry-After")
    if not raw:
        return None
    try:
        return max(float(raw), 0.0)
    except ValueError:
        try:
            moment = parsedate_to_datetime(raw)
        except (TypeError, ValueError, IndexError):
            return None
        return max((moment - datetime.now(UTC)).total_seconds(), 0.0)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else 'no detail'}"[:512]


def unexpected(
    message: str, *values: tuple[str, str], operation: str | None = None, request_id: str | None = None
) -> BatchCallFailed:
    """An answer the app cannot read, as a permanent failure (code UnexpectedResponse) naming the operation."""
    named = ((("operation", operation),) if operation else ()) + values
    details = tuple(BatchErrorDetail(key, value) for key, value in named)
    error = BatchError("UnexpectedResponse", message, details, None, request_id)
    return BatchCallFailed(error, attempts=1, transient=False)
