"""The poison queue as the CLI reads it: records of docs/CONTRACT.md §6 and messages the host moved there."""

from __future__ import annotations

import base64
import binascii
import contextlib
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from azure.core.exceptions import AzureError, ResourceNotFoundError
from azure.storage.queue import QueueClient, QueueMessage

from ops.output import warn
from ops.storage_errors import storage_errors
from shared.contract.codec import load_object
from shared.contract.errors import InvalidMessage
from shared.contract.poison_record import PoisonRecord, record_in

PEEK_MAX = 32
HIDE_SECONDS = 300
REFRESH_AFTER_SECONDS = 120
RELEASE_WORKERS = 8
NEVER_YEAR = 9999  # a message put with time_to_live=-1 expires on 9999-12-31
DEFAULT_ACCOUNT = "default"


@dataclass
class PoisonEntry:
    """One message on the poison queue: a record of docs/CONTRACT.md §6, or a message the host moved there unchanged."""

    id: str
    pop_receipt: str | None
    held_since: float
    inserted_on: datetime | None
    expires_on: datetime | None
    document: dict[str, Any] | None
    original: bytes | None
    problem: str | None

    @property
    def kind(self) -> str:
        """`record` for the function's poison records, `message` for anything else (e.g. moved by the host)."""
        return "record" if self.document is not None else "message"

    @property
    def job_id(self) -> str | None:
        """The job id the record names, or that the moved message carries."""
        value = self.document.get("jobId") if self.document is not None else _json_field(self.original, "jobId")
        return value if isinstance(value, str) else None

    @property
    def account(self) -> str | None:
        """The account alias the record names; for a moved message its `account` field, else `default`."""
        if self.document is not None:
            value = self.document.get("account")
        else:
            value = _json_field(self.original, "account")
            if value is None and json_of(self.original) is not None:
                value = DEFAULT_ACCOUNT  # docs/CONTRACT.md §3: no account field means the default account
        return value if isinstance(value, str) else None

    @property
    def is_check(self) -> bool:
        """Whether the original is a confirmation check (docs/CONTRACT.md §5b), e.g. of a TerminationStuck record."""
        document = json_of(self.original)
        return document is not None and "check" in document

    @property
    def code(self) -> str | None:
        """The error code of a record; None for a moved message."""
        value = (self.document or {}).get("error", {}).get("code")
        return value if isinstance(value, str) else None

    @property
    def http_status(self) -> object:
        """Batch's HTTP status of a record, if any."""
        return (self.document or {}).get("error", {}).get("httpStatus")

    @property
    def attempts(self) -> object:
        """Attempts recorded by the function; unknown (None) for a moved message: the host does not record them."""
        return (self.document or {}).get("attempts")

    @property
    def failed_at(self) -> str | None:
        """When the record says it failed; for a moved message, when it arrived on the poison queue."""
        if self.document is not None:
            value = self.document.get("failedAt")
            return value if isinstance(value, str) else None
        return _timestamp(self.inserted_on)

    @property
    def expires(self) -> str | None:
        """When storage deletes this entry (the host moves messages with a 7-day expiry); None: never."""
        if self.expires_on is None or self.expires_on.year >= NEVER_YEAR:
            return None
        return _timestamp(self.expires_on)

    def matches(self, code: str | None, job_id: str | None, account: str | None = None) -> bool:
        """Filters compare case-insensitively (Batch codes, job ids and account aliases are case-insensitive)."""
        if code is not None and (self.code or "").casefold() != code.casefold():
            return False
        if account is not None and (self.account or "").casefold() != account.casefold():
            return False
        return job_id is None or (self.job_id or "").casefold() == job_id.casefold()

    def summary(self) -> dict[str, Any]:
        """The row of `poison list --json`."""
        return {
            "id": self.id,
            "kind": self.kind,
            "jobId": self.job_id,
            "account": self.account,
            "code": self.code,
            "httpStatus": self.http_status,
            "attempts": self.attempts,
            "failedAt": self.failed_at,
            "expiresOn": self.expires,
            "replayable": self.problem is None,
        }

    def detail(self) -> dict[str, Any]:
        """What `poison show` prints: the record as stored, or what is known of the moved message."""
        if self.document is not None:
            return self.document
        document: dict[str, Any] = {
            "kind": "message",
            "id": self.id,
            "jobId": self.job_id,
            "account": self.account,
            "insertedOn": self.failed_at,
            "expiresOn": self.expires,
            "attempts": None,  # the host moves the message as it was: its dequeue count is not kept
        }
        try:
            document["message"] = (self.original or b"").decode("utf-8")
        except UnicodeDecodeError:
            document["message"] = base64.b64encode(self.original or b"").decode("ascii")
            document["messageEncoding"] = "base64"
        return document


def _timestamp(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _unbase64(body: bytes) -> bytes | None:
    try:
        return base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        return None


def json_of(body: bytes | None) -> dict[str, Any] | None:
    """The JSON object a message holds, read by the function's own rule (text, or base64 of it); else None."""
    try:
        return load_object(body or b"")
    except InvalidMessage:
        return None


def _json_field(body: bytes | None, key: str) -> object:
    document = json_of(body)
    return None if document is None else document.get(key)


def parse_entry(message: QueueMessage, encoding: str) -> PoisonEntry:
    """Decode one poison queue message (fetched without a decode policy) into an entry."""
    # `original` is what the function is handed: the decoded bytes under messageEncoding base64, the text itself
    # (JSON, or base64 of it) under none. A record reads in either form whatever the setting, so records written
    # before messageEncoding changed still read.
    content = message.content if isinstance(message.content, str) else ""
    problem: str | None = None
    text = content.encode("utf-8")
    body = (_unbase64(text) or text) if encoding == "base64" else text
    document = record_in(body)
    original: bytes | None = body
    if document is not None:
        try:
            original = PoisonRecord.from_document(document).original_message
        except (ValueError, TypeError, AttributeError):
            original, problem = None, "the record's originalMessage cannot be decoded"
        if document.get("originalMessageTruncated"):
            original, problem = None, "the original message was truncated when the record was written"
    return PoisonEntry(
        id=str(message.id),
        pop_receipt=message.pop_receipt,
        held_since=time.monotonic(),
        inserted_on=message.inserted_on,
        expires_on=message.expires_on,
        document=document,
        original=original,
        problem=problem,
    )


class PoisonQueue:
    """The poison queue, read without changing it (peek) or by holding every record for a while (receive)."""

    def __init__(self, client: QueueClient, encoding: str) -> None:
        self.client = client
        self.encoding = encoding

    def peek(self) -> list[PoisonEntry]:
        """Up to 32 visible records, untouched."""
        with storage_errors(self.client):
            return [parse_entry(m, self.encoding) for m in self.client.peek_messages(max_messages=PEEK_MAX)]

    def approximate_count(self) -> int:
        """Storage's approximate message count."""
        with storage_errors(self.client):
            return int(self.client.get_queue_properties().approximate_message_count or 0)

    def read(self, *, enough: int | None = None) -> list[PoisonEntry]:
        """Every visible record (or at least `enough`), changing nothing visible: peek, else hold and release."""
        peeked = self.peek()
        if len(peeked) < PEEK_MAX or (enough is not None and len(peeked) >= enough):
            return peeked
        with self.held() as entries:
            return list(entries)

    @contextlib.contextmanager
    def held(self) -> Iterator[list[PoisonEntry]]:
        """Receive every visible record, hidden for HIDE_SECONDS; the ones not deleted are made visible again."""
        entries: dict[str, PoisonEntry] = {}
        try:
            with storage_errors(self.client):
                pages = self.client.receive_messages(messages_per_page=PEEK_MAX, visibility_timeout=HIDE_SECONDS)
                for page in pages.by_page():
                    batch = [parse_entry(m, self.encoding) for m in page]
                    fresh = [e for e in batch if e.id not in entries]
                    entries.update((e.id, e) for e in batch)  # a reappeared record: keep its new receipt
                    if not fresh:
                        break
            yield list(entries.values())
        finally:
            self.release(entries.values())

    def release(self, entries: Iterable[PoisonEntry]) -> None:
        """Make held records visible again; one that cannot be released reappears when its hide ends."""
        pending = [e for e in entries if e.pop_receipt is not None]
        if not pending:
            return
        failed = 0

        def show(entry: PoisonEntry) -> bool:
            try:
                self.client.update_message(entry.id, pop_receipt=entry.pop_receipt, visibility_timeout=0)
            except ResourceNotFoundError:
                return True  # already deleted, or our hide already ended
            except AzureError:
                return False
            entry.pop_receipt = None
            return True

        with ThreadPoolExecutor(max_workers=RELEASE_WORKERS, thread_name_prefix="release") as pool:
            failed = sum(not ok for ok in pool.map(show, pending))
        if failed:
            warn(f"{failed} poison record(s) stay hidden for up to {HIDE_SECONDS // 60} minutes")

    def refresh(self, entry: PoisonEntry) -> None:
        """Extend the hide of a record held for a while, so it is not handed to anyone else meanwhile."""
        if time.monotonic() - entry.held_since < REFRESH_AFTER_SECONDS:
            return
        with storage_errors(self.client):
            updated = self.client.update_message(
                entry.id, pop_receipt=entry.pop_receipt, visibility_timeout=HIDE_SECONDS
            )
        entry.pop_receipt = updated.pop_receipt
        entry.held_since = time.monotonic()

    def delete(self, entry: PoisonEntry) -> None:
        """Delete a held record."""
        with storage_errors(self.client):
            self.client.delete_message(entry.id, pop_receipt=entry.pop_receipt)
        entry.pop_receipt = None
