"""The poison record (docs/CONTRACT.md §6): what an operator reads and replays, and what is one."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from shared.contract.codec import load_object
from shared.contract.errors import BatchError, BatchErrorDetail, InvalidMessage

# A queue message holds 64 KiB; base64 needs 4 bytes per 3, so the JSON must stay under 48 KiB.
MAX_RECORD_BYTES = 48 * 1024


# jobId and reason are echoed from the message; cut them to this when the record would not fit.
MAX_ECHOED_CHARS = 1024


@dataclass(frozen=True)
class PoisonRecord:
    """Why a terminate message failed, with the message itself so an operator can replay it."""

    error: BatchError
    attempts: int
    message_id: str | None
    original_message: bytes
    job_id: str | None = None
    reason: str | None = None
    account: str | None = None  # the alias; None when the message could not be read
    incident: str | None = None  # the incident (docs/CONTRACT.md §10) that sent the message, when it named one
    failed_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def to_document(self) -> dict[str, Any]:
        """The record as the JSON object of docs/CONTRACT.md §6."""
        document: dict[str, Any] = {
            "jobId": self.job_id,
            "reason": self.reason,
            "account": self.account,
            "error": {
                "code": self.error.code,
                "message": self.error.message,
                "values": [{"key": v.key, "value": v.value} for v in self.error.values],
                "httpStatus": self.error.http_status,
                "requestId": self.error.request_id,
                "clientRequestId": self.error.client_request_id,
            },
            "attempts": self.attempts,
            "messageId": self.message_id,
            "failedAt": self.failed_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        if self.incident is not None:
            document["incident"] = self.incident
        try:
            document["originalMessage"] = self.original_message.decode("utf-8")
        except UnicodeDecodeError:
            # Not text: keep it exact and say how it is stored, so replay restores the same bytes.
            document["originalMessage"] = base64.b64encode(self.original_message).decode("ascii")
            document["originalMessageEncoding"] = "base64"
        return document

    def to_json(self) -> str:
        """The record serialised for the poison queue, shortened to fit in one queue message."""
        document = self.to_document()
        text = _dumps(document)
        excess = len(text.encode("utf-8")) - MAX_RECORD_BYTES
        if excess > 0:
            # Only a message that is invalid anyway gets here; keep the diagnosis, flag the cut.
            for key in ("jobId", "reason", "account"):  # an over-long field is echoed back here too
                value = document[key]
                if isinstance(value, str) and len(value) > MAX_ECHOED_CHARS:
                    document[key] = value[:MAX_ECHOED_CHARS]
            document["originalMessageTruncated"] = True
            text = _dumps(document)
            excess = len(text.encode("utf-8")) - MAX_RECORD_BYTES
            while excess > 0 and document["originalMessage"]:
                # Each character dropped frees at least one byte, so this ends in one or two rounds.
                original = document["originalMessage"]
                keep = max(len(original) - excess, 0)
                if document.get("originalMessageEncoding") == "base64":
                    keep -= keep % 4  # stay decodable
                document["originalMessage"] = original[:keep]
                text = _dumps(document)
                excess = len(text.encode("utf-8")) - MAX_RECORD_BYTES
        return text

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> PoisonRecord:
        """Rebuild a record read back from the poison queue."""
        error = document.get("error") or {}
        original = document.get("originalMessage") or ""
        raw = (
            base64.b64decode(original)
            if document.get("originalMessageEncoding") == "base64"
            else str(original).encode("utf-8")
        )
        failed_at = document.get("failedAt")
        return cls(
            error=BatchError(
                code=str(error.get("code") or ""),
                message=str(error.get("message") or ""),
                values=tuple(
                    BatchErrorDetail(str(v.get("key")), str(v.get("value"))) for v in error.get("values") or ()
                ),
                http_status=error.get("httpStatus"),
                request_id=error.get("requestId"),
                client_request_id=error.get("clientRequestId"),
            ),
            attempts=int(document.get("attempts") or 0),
            message_id=document.get("messageId"),
            original_message=raw,
            job_id=document.get("jobId"),
            reason=document.get("reason"),
            account=document.get("account"),
            incident=document.get("incident") if isinstance(document.get("incident"), str) else None,
            failed_at=(datetime.fromisoformat(failed_at.replace("Z", "+00:00")) if failed_at else datetime.now(UTC)),
        )


def _dumps(document: Mapping[str, Any]) -> str:
    """Compact JSON that is always valid UTF-8 text."""
    text = json.dumps(document, ensure_ascii=False, separators=(",", ":"))
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate (a "\ud800" escape in the message) has no UTF-8 form: keep such text escaped.
        text = json.dumps(document, separators=(",", ":"))
    return text


def record_in(body: bytes | str | None) -> dict[str, Any] | None:
    """The poison record a queue message holds (as JSON text or base64 of it), or None when it holds none.

    The one rule for "is this a record?", shared by keep_poison and the CLI: a JSON object whose `error` is an object
    and which carries `originalMessage`. Anything else (e.g. a message the host moved unchanged) is not a record.
    """
    try:
        document = load_object(body or b"")
    except InvalidMessage:
        return None
    if isinstance(document.get("error"), dict) and "originalMessage" in document:
        return dict(document)
    return None
