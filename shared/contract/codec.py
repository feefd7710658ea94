"""The wire forms the contract uses, one copy each: JSON objects (or base64 of them) and HTTP dates."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime
from typing import Any

from shared.contract.errors import BatchErrorDetail, InvalidMessage

# .NET's Convert.FromBase64String, which the host uses for messageEncoding base64, skips these.
_BASE64_WHITESPACE = str.maketrans("", "", " \t\r\n")


def parse_http_date(text: str) -> datetime | None:
    """Parse an ISO 8601 or RFC 1123 date into an aware UTC datetime; None when it is neither."""
    text = text.strip()
    if not text:
        return None
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        try:
            parsed = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except OverflowError:  # e.g. 9999-12-31T23:59:59-01:00 is past datetime.max in UTC
        return None


def format_http_date(moment: datetime) -> str:
    """Format a datetime as RFC 1123 in GMT, as HTTP date headers want."""
    return format_datetime(moment.astimezone(UTC), usegmt=True)


class _Document(dict[str, Any]):
    """A JSON object that remembers which keys it saw twice."""

    duplicates: frozenset[str] = frozenset()


def _object_pairs(pairs: list[tuple[str, Any]]) -> _Document:
    document = _Document(pairs)
    if len(document) != len(pairs):
        seen: set[str] = set()
        document.duplicates = frozenset(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
    return document


def _refuse_constant(name: str) -> None:
    # Python's json reads NaN and Infinity; JSON (RFC 8259) has no such values.
    raise ValueError(f"{name} is not a JSON value")


def load_object(body: bytes | str) -> _Document:
    """The JSON object a message holds, given as JSON text or as base64 of it (docs/CONTRACT.md §3)."""
    if isinstance(body, bytes):
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidMessage([BatchErrorDetail("message", f"is not UTF-8 text (byte {exc.start})")]) from exc
    else:
        text = body
    text = text.removeprefix("\ufeff")
    if not text.strip():
        raise InvalidMessage([BatchErrorDetail("message", "is empty")])
    if text.lstrip().startswith("{"):
        return _json_object(text)
    # A JSON object starts with "{", which is not in base64's alphabet: anything else may be base64 of one.
    inner = _base64_text(text)
    if inner is not None:
        return _json_object(inner.removeprefix("\ufeff"), "is base64, but not of a JSON object")
    try:
        document = json.loads(text, parse_constant=_refuse_constant)
    except RecursionError as exc:
        raise InvalidMessage([BatchErrorDetail("message", "is nested too deeply")]) from exc
    except ValueError as exc:
        raise InvalidMessage([BatchErrorDetail("message", "is neither a JSON object nor base64 of one")]) from exc
    raise InvalidMessage([BatchErrorDetail("message", f"must be a JSON object, got {json_type(document)}")])


def _base64_text(text: str) -> str | None:
    """The UTF-8 text `text` is the base64 of, or None."""
    try:
        return base64.b64decode(text.translate(_BASE64_WHITESPACE), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):  # UnicodeDecodeError is a ValueError
        return None


def _json_object(text: str, what: str = "is not JSON") -> _Document:
    try:
        document = json.loads(text, object_pairs_hook=_object_pairs, parse_constant=_refuse_constant)
    except RecursionError as exc:
        raise InvalidMessage([BatchErrorDetail("message", "is nested too deeply")]) from exc
    except ValueError as exc:
        raise InvalidMessage([BatchErrorDetail("message", f"{what} ({exc})")]) from exc
    if not isinstance(document, _Document):
        raise InvalidMessage([BatchErrorDetail("message", f"must be a JSON object, got {json_type(document)}")])
    return document


def json_type(value: object) -> str:
    """The JSON name of a parsed value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"
