"""Operator command line: enqueue terminate requests and manage poison records (`python -m shared.cli`).

Settings are the function's own: AzureWebJobsStorage (or AzureWebJobsStorage__queueServiceUri, used with
DefaultAzureCredential), TERMINATE_QUEUE_NAME, POISON_QUEUE_NAME (default `<queue>-poison`) and host.json's
messageEncoding. What the environment lacks comes from the `Values` of local.settings.json, or of
local.settings.sample.json when there is no local.settings.json. The AzureWebJobsStorage* settings, and the two queue
names, are each taken whole from one source, never mixed. `UseDevelopmentStorage=true` is left to azure-storage-queue,
which maps it to Azurite's well-known devstoreaccount1 on http://127.0.0.1:10001 (the local run command's Azurite).
`--connection-string`, `--queue` and `--poison-queue` override; `--queue` alone implies `<queue>-poison`.

Reading the poison queue: Azure Storage peeks at most 32 messages per call. `list`, `show` and `replay --dry-run`
peek; only when the peek comes back full (32) and more are needed does the CLI receive every visible record with a
5-minute visibility timeout and then make them visible again at once (update_message with visibility_timeout=0).
`replay` and `purge` always receive (they need pop receipts to delete) and release whatever they did not delete.
While records are held other readers do not see them; if the CLI is killed they reappear on their own after
5 minutes. Reading never loses a record; it does raise the poison messages' dequeue count, which nothing uses.

Exit codes: 0 ok; 1 nothing matched (`poison show` of an unknown id; `poison replay`/`purge` that replayed/deleted
nothing); 2 usage error, invalid job id or option, bad or missing settings; 3 storage unreachable, access denied or
queue missing; 130 interrupted.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO, TypeVar
from urllib.parse import urlsplit

from azure.core.credentials import TokenCredential
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.storage.queue import LinearRetry, QueueClient, QueueMessage

from shared.errors import ConfigurationError, EnqueueFailed, InvalidMessage
from shared.message import TerminateRequest
from shared.poison import PoisonRecord
from shared.producer import TerminateQueue, build_request
from shared.settings import (
    PROJECT_ROOT,
    StorageSettings,
    local_settings_values,
    queue_name_setting,
    queue_options,
    storage_from_env,
)
from shared.storage import queue_client

T = TypeVar("T")

EXIT_OK = 0
EXIT_NOTHING = 1
EXIT_USAGE = 2
EXIT_STORAGE = 3
EXIT_INTERRUPTED = 130

STORAGE_SETTING = "AzureWebJobsStorage"
DEV_STORAGE = "UseDevelopmentStorage=true"
CONNECT_TIMEOUT_SECONDS = 3
READ_TIMEOUT_SECONDS = 20
PEEK_MAX = 32
HIDE_SECONDS = 300
REFRESH_AFTER_SECONDS = 120
ENQUEUE_WORKERS = 8
PROGRESS_ALWAYS_ABOVE = 100
DEFAULT_LIST_LIMIT = 50
MAX_LISTED_PROBLEMS = 20
CELL_WIDTH = 40
_OPTION_OF_FIELD = {
    "jobId": "JOB_ID",
    "reason": "--reason",
    "ifMatch": "--if-match",
    "ifNoneMatch": "--if-none-match",
    "ifModifiedSince": "--if-modified-since",
    "ifUnmodifiedSince": "--if-unmodified-since",
    "requestId": "--request-id",
}


class CliError(Exception):
    """A failure reported as one line on stderr with a specific exit code."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# --- settings -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """Where the CLI works: storage, the trigger queue, its poison queue and their message encoding."""

    storage: StorageSettings
    queue: str
    poison_queue: str
    encoding: str


def file_settings(root: Path) -> dict[str, str]:
    """The non-empty `Values` of local.settings.json, else of local.settings.sample.json, else nothing."""
    _, values = local_settings_values(root)
    return {name: value for name, value in values.items() if value.strip()}


def merged_settings(environ: Mapping[str, str], root: Path) -> dict[str, str]:
    """The environment over the settings file; each group (storage, queue names) comes whole from one of them."""
    env = {k: v for k, v in environ.items() if v.strip()}
    merged = file_settings(root)
    for in_group in (_is_storage_setting, _is_queue_name_setting):
        if any(in_group(name) for name in env):
            merged = {k: v for k, v in merged.items() if not in_group(k)}
    merged.update(env)
    return merged


def _is_storage_setting(name: str) -> bool:
    return name == STORAGE_SETTING or name.startswith(f"{STORAGE_SETTING}__")


def _is_queue_name_setting(name: str) -> bool:
    return name in ("TERMINATE_QUEUE_NAME", "POISON_QUEUE_NAME")


def resolve_target(
    connection_string: str | None = None,
    queue: str | None = None,
    poison_queue: str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    root: Path = PROJECT_ROOT,
) -> Target:
    """Settings from options, environment and settings file; raises ConfigurationError naming the setting."""
    settings = merged_settings(os.environ if environ is None else environ, root)
    if connection_string is not None:
        storage = _renamed(lambda: storage_from_env({STORAGE_SETTING: connection_string}), "--connection-string")
    else:
        storage = storage_from_env(settings)
    if storage.connection_string and storage.connection_string.replace(" ", "").lower() == DEV_STORAGE.lower():
        storage = StorageSettings(connection_string=DEV_STORAGE)  # azure-storage-queue: 127.0.0.1:10001
    if queue is not None:
        name = _renamed(lambda: queue_name_setting({"Q": queue}, "Q"), "--queue")
        default_poison = f"{name}-poison"
    else:
        name = queue_name_setting(settings, "TERMINATE_QUEUE_NAME")
        default_poison = settings.get("POISON_QUEUE_NAME", "").strip() or f"{name}-poison"
    if poison_queue is not None:
        poison = _renamed(lambda: queue_name_setting({"Q": poison_queue}, "Q"), "--poison-queue")
    else:
        poison = _renamed(lambda: queue_name_setting({"Q": default_poison}, "Q"), "POISON_QUEUE_NAME")
    if poison == name:
        raise ConfigurationError("--poison-queue", "must differ from the trigger queue")
    encoding = queue_options(settings, root / "host.json").message_encoding
    return Target(storage=storage, queue=name, poison_queue=poison, encoding=encoding)


def _renamed(call: Callable[[], T], setting: str) -> T:
    try:
        return call()
    except ConfigurationError as exc:
        raise ConfigurationError(setting, exc.problem) from None


def open_queue(
    storage: StorageSettings, name: str, *, text_base64: bool = False, credential: TokenCredential | None = None
) -> QueueClient:
    """A queue client that fails fast: short connect timeout, one retry; base64 text encoding when asked."""
    if storage.queue_service_uri and credential is None:
        from azure.identity import DefaultAzureCredential  # an operator's az login, or the managed identity

        credential = DefaultAzureCredential(managed_identity_client_id=storage.client_id)
    try:
        return queue_client(
            storage,
            name,
            "base64" if text_base64 else "none",
            credential=credential,
            retry_policy=LinearRetry(backoff=1, random_jitter_range=1, retry_total=1),
            connection_timeout=CONNECT_TIMEOUT_SECONDS,
            read_timeout=READ_TIMEOUT_SECONDS,
        )
    except ValueError:
        raise ConfigurationError(
            f"{STORAGE_SETTING} / --connection-string", "is not a valid storage connection string"
        ) from None


# --- storage errors -----------------------------------------------------------------------------------------


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
        return CliError(f"no credential for storage at {where} (sign in with `az login`, or set {STORAGE_SETTING})", 3)
    if isinstance(exc, HttpResponseError) and exc.status_code is not None:
        code = getattr(exc, "error_code", None)
        code = getattr(code, "value", code) or exc.reason or ""
        return CliError(f"storage at {where} refused access to queue {queue}: HTTP {exc.status_code} {code}", 3)
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


# --- output helpers ----------------------------------------------------------------------------------------


def cell(value: object, width: int = CELL_WIDTH) -> str:
    """A table cell: `-` for nothing, control characters escaped, long text shortened."""
    text = "-" if value is None else str(value)
    text = "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)
    return text if len(text) <= width else text[: width - 3] + "..."


def print_json(document: object, *, pretty: bool = False) -> None:
    """Print one JSON document on stdout."""
    print(json.dumps(document, ensure_ascii=False, indent=2 if pretty else None))


def warn(message: str) -> None:
    """One warning line on stderr."""
    print(f"warning: {message}", file=sys.stderr)


def invalid_message_text(exc: InvalidMessage, given: Mapping[str, object]) -> str:
    """One line naming each bad field (and the option it came from) with the value given."""
    parts = []
    for problem in exc.problems:
        option = _OPTION_OF_FIELD.get(problem.key)
        label = f"{problem.key} ({option})" if option and option != "JOB_ID" else problem.key
        value = given.get(problem.key)
        shown = f" (got {cell(json.dumps(value, ensure_ascii=False))})" if value is not None else ""
        parts.append(f"{label}: {problem.value}{shown}")
    return "; ".join(parts)


class Progress:
    """A stdlib progress line on stderr: redrawn in place on a TTY, every 10% otherwise."""

    def __init__(self, total: int, stream: TextIO, label: str = "enqueued") -> None:
        self.total = total
        self.stream = stream
        self.label = label
        self.done = 0
        self._tty = bool(getattr(stream, "isatty", lambda: False)())
        self._lock = threading.Lock()
        self._last_draw = 0.0
        self._last_step = 0

    def advance(self) -> None:
        """Count one item and redraw when due."""
        with self._lock:
            self.done += 1
            if self._tty:
                now = time.monotonic()
                if now - self._last_draw >= 0.1 or self.done == self.total:
                    self._last_draw = now
                    self.stream.write(f"\r{self._text()}")
                    self.stream.flush()
            else:
                step = self.done * 10 // max(self.total, 1)
                if step > self._last_step:
                    self._last_step = step
                    self.stream.write(f"{self._text()}\n")
                    self.stream.flush()

    def close(self) -> None:
        """End the in-place line on a TTY."""
        if self._tty:
            self.stream.write("\n")
            self.stream.flush()

    def _text(self) -> str:
        percent = self.done * 100 // max(self.total, 1)
        return f"{self.label} {self.done}/{self.total} ({percent}%)"


# --- enqueue -----------------------------------------------------------------------------------------------


def _request_options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "force": args.force,
        "if_match": args.if_match,
        "if_none_match": args.if_none_match,
        "if_modified_since": args.if_modified_since,
        "if_unmodified_since": args.if_unmodified_since,
        "request_id": args.request_id,
    }


def _given(job_id: str | None, args: argparse.Namespace) -> dict[str, object]:
    return {
        "jobId": job_id,
        "reason": args.reason,
        "ifMatch": args.if_match,
        "ifNoneMatch": args.if_none_match,
        "ifModifiedSince": args.if_modified_since,
        "ifUnmodifiedSince": args.if_unmodified_since,
        "requestId": args.request_id,
    }


def cmd_enqueue(args: argparse.Namespace, target: Target) -> int:
    """Enqueue one terminate request, or every job id of a file."""
    if args.file is not None:
        return _enqueue_file(args, target)
    try:
        request = build_request(args.job_id, args.reason, **_request_options(args))
    except InvalidMessage as exc:
        raise CliError(invalid_message_text(exc, _given(args.job_id, args)), EXIT_USAGE) from None
    queue = _trigger_queue(target)
    message_id = _send(queue, request)
    if args.json:
        print_json({"messageId": message_id, "queue": queue.queue_name, "message": request.to_message()})
    else:
        print(message_id)
    return EXIT_OK


def _trigger_queue(target: Target) -> TerminateQueue:
    return TerminateQueue(open_queue(target.storage, target.queue, text_base64=target.encoding == "base64"))


def _send(queue: TerminateQueue, request: TerminateRequest) -> str:
    try:
        return queue.enqueue(request)
    except EnqueueFailed as exc:
        cause = exc.__cause__
        if isinstance(cause, BaseException):
            raise storage_failure(cause, queue.client) from exc
        raise CliError(str(exc), EXIT_STORAGE) from exc


def read_job_ids(path: str) -> list[tuple[int, str]]:
    """(line number, job id) for each line that is not blank or a `#` comment; `-` reads stdin."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise CliError(f"{path}: not UTF-8 text (byte {exc.start})", EXIT_USAGE) from None
    except OSError as exc:
        raise CliError(f"{path}: {exc.strerror or type(exc).__name__}", EXIT_USAGE) from None
    entries = []
    for number, line in enumerate(text.removeprefix("\ufeff").splitlines(), start=1):
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            entries.append((number, stripped))
    return entries


def _enqueue_file(args: argparse.Namespace, target: Target) -> int:
    for option, value in (("--if-match", args.if_match), ("--if-none-match", args.if_none_match)):
        if value is not None:
            raise CliError(f"{option} names one job's ETag; it cannot be used with --file", EXIT_USAGE)
    if args.request_id is not None:
        raise CliError("--request-id identifies one request; it cannot be used with --file", EXIT_USAGE)
    options = _request_options(args)
    try:  # the options once, so a bad --reason is one line rather than one per job
        build_request("job", args.reason, **options)
    except InvalidMessage as exc:
        raise CliError(invalid_message_text(exc, _given(None, args)), EXIT_USAGE) from None
    entries = read_job_ids(args.file)
    if not entries:
        raise CliError(f"{args.file}: no job ids (blank lines and # comments are skipped)", EXIT_USAGE)
    requests: list[tuple[int, TerminateRequest]] = []
    bad: list[str] = []
    for number, job_id in entries:
        try:
            requests.append((number, build_request(job_id, args.reason, **options)))
        except InvalidMessage as exc:
            bad.append(f"  line {number}: {invalid_message_text(exc, {'jobId': job_id})}")
    if bad:
        print(f"error: {args.file}: {len(bad)} invalid line(s); nothing was enqueued", file=sys.stderr)
        for line in bad[:MAX_LISTED_PROBLEMS]:
            print(line, file=sys.stderr)
        if len(bad) > MAX_LISTED_PROBLEMS:
            print(f"  ... and {len(bad) - MAX_LISTED_PROBLEMS} more", file=sys.stderr)
        return EXIT_USAGE

    queue = _trigger_queue(target)
    stderr = sys.stderr
    show_progress = len(requests) > PROGRESS_ALWAYS_ABOVE or bool(getattr(stderr, "isatty", lambda: False)())
    progress = Progress(len(requests), stderr) if show_progress else None
    stop = threading.Event()
    sent: dict[int, str] = {}
    failure: CliError | None = None

    def send(number: int, request: TerminateRequest) -> tuple[int, str | None]:
        if stop.is_set():
            return number, None
        return number, _send(queue, request)

    with ThreadPoolExecutor(max_workers=ENQUEUE_WORKERS, thread_name_prefix="enqueue") as pool:
        futures = [pool.submit(send, number, request) for number, request in requests]
        try:
            for future in as_completed(futures):
                try:
                    number, message_id = future.result()
                except CliError as exc:
                    stop.set()
                    failure = failure or exc
                    continue
                if message_id is not None:
                    sent[number] = message_id
                    if progress:
                        progress.advance()
        except KeyboardInterrupt:
            stop.set()
            raise
        finally:
            if progress:
                progress.close()
    if failure is not None:
        missing = [number for number, _ in requests if number not in sent]
        listed = ", ".join(str(n) for n in missing[:MAX_LISTED_PROBLEMS])
        more = f" and {len(missing) - MAX_LISTED_PROBLEMS} more" if len(missing) > MAX_LISTED_PROBLEMS else ""
        raise CliError(
            f"{failure}; enqueued {len(sent)} of {len(requests)}, not enqueued: line(s) {listed}{more}", EXIT_STORAGE
        )
    if args.json:
        ids = [{"line": n, "jobId": r.job_id, "messageId": sent[n]} for n, r in requests]
        print_json({"enqueued": len(sent), "queue": queue.queue_name, "messages": ids})
    else:
        print(f"enqueued {len(sent)} terminate request(s) to {queue.queue_name}")
    return EXIT_OK


# --- poison queue ------------------------------------------------------------------------------------------


@dataclass
class PoisonEntry:
    """One message on the poison queue: a record of CONTRACT §6, or a message the host moved there unchanged."""

    id: str
    pop_receipt: str | None
    held_since: float
    inserted_on: datetime | None
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
        """Attempts recorded by the function."""
        return (self.document or {}).get("attempts")

    @property
    def failed_at(self) -> str | None:
        """When the record says it failed; for a moved message, when it arrived on the poison queue."""
        if self.document is not None:
            value = self.document.get("failedAt")
            return value if isinstance(value, str) else None
        if self.inserted_on is None:
            return None
        return self.inserted_on.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    def matches(self, code: str | None, job_id: str | None) -> bool:
        """Filters compare case-insensitively (Batch codes and job ids are case-insensitive)."""
        if code is not None and (self.code or "").casefold() != code.casefold():
            return False
        return job_id is None or (self.job_id or "").casefold() == job_id.casefold()

    def summary(self) -> dict[str, Any]:
        """The row of `poison list --json`."""
        return {
            "id": self.id,
            "kind": self.kind,
            "jobId": self.job_id,
            "code": self.code,
            "httpStatus": self.http_status,
            "attempts": self.attempts,
            "failedAt": self.failed_at,
            "replayable": self.problem is None,
        }

    def detail(self) -> dict[str, Any]:
        """What `poison show` prints: the record as stored, or the moved message."""
        if self.document is not None:
            return self.document
        document: dict[str, Any] = {"kind": "message", "id": self.id, "insertedOn": self.failed_at}
        try:
            document["message"] = (self.original or b"").decode("utf-8")
        except UnicodeDecodeError:
            document["message"] = base64.b64encode(self.original or b"").decode("ascii")
            document["messageEncoding"] = "base64"
        return document


def _json_field(body: bytes | None, key: str) -> object:
    try:
        document = json.loads(body or b"")
    except ValueError:
        return None
    return document.get(key) if isinstance(document, dict) else None


def parse_entry(message: QueueMessage, encoding: str) -> PoisonEntry:
    """Decode one poison queue message (fetched without a decode policy) into an entry."""
    content = message.content if isinstance(message.content, str) else ""
    problem: str | None = None
    if encoding == "base64":
        try:
            body = base64.b64decode(content, validate=True)
        except (binascii.Error, ValueError):
            body = content.encode("utf-8")
    else:
        body = content.encode("utf-8")
    document: dict[str, Any] | None = None
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict) and "originalMessage" in parsed:
        document = parsed
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

        with ThreadPoolExecutor(max_workers=ENQUEUE_WORKERS, thread_name_prefix="release") as pool:
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


def _poison_queue(target: Target) -> PoisonQueue:
    return PoisonQueue(open_queue(target.storage, target.poison_queue), target.encoding)


def cmd_poison_list(args: argparse.Namespace, target: Target) -> int:
    """Print poison records as a table (or JSON), oldest first."""
    if args.limit < 0:
        raise CliError("--limit must be 0 (all) or more", EXIT_USAGE)
    poison = _poison_queue(target)
    filtered = args.code is not None or args.job_id is not None
    enough = args.limit if args.limit and not filtered else None
    entries = [e for e in poison.read(enough=enough) if e.matches(args.code, args.job_id)]
    shown = entries[: args.limit] if args.limit else entries
    if len(shown) < len(entries) or (not filtered and enough is not None and len(shown) == enough):
        total = len(entries) if filtered else max(poison.approximate_count(), len(shown))
        if total > len(shown):
            print(f"showing {len(shown)} of about {total} record(s); --limit 0 shows all", file=sys.stderr)
    if args.json:
        print_json([e.summary() for e in shown])
        return EXIT_OK
    if not shown:
        print(f"no matching poison records in {target.poison_queue}", file=sys.stderr)
        return EXIT_OK
    header = ("ID", "JOB ID", "CODE", "HTTP", "ATTEMPTS", "FAILED AT")
    rows = [
        (
            cell(e.id),
            cell(e.job_id),
            cell(e.code if e.kind == "record" else "(moved by host)"),
            cell(e.http_status),
            cell(e.attempts),
            cell(e.failed_at),
        )
        for e in shown
    ]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        print("  ".join(value.ljust(width) for value, width in zip(row, widths, strict=True)).rstrip())
    return EXIT_OK


def cmd_poison_show(args: argparse.Namespace, target: Target) -> int:
    """Print one record in full as JSON."""
    poison = _poison_queue(target)
    for entry in poison.read():
        if entry.id == args.id:
            print_json(entry.detail(), pretty=not args.json)
            return EXIT_OK
    print(f"error: no poison record with id {cell(args.id)} in {target.poison_queue}", file=sys.stderr)
    return EXIT_NOTHING


def cmd_poison_replay(args: argparse.Namespace, target: Target) -> int:
    """Send matching records' original messages back to the trigger queue, deleting each record afterwards."""
    trigger = open_queue(target.storage, target.queue)
    poison = _poison_queue(target)
    with storage_errors(trigger):
        trigger.get_queue_properties()  # a missing trigger queue stops us before anything is touched
    if args.dry_run:
        matching = [e for e in poison.read() if e.matches(args.code, args.job_id)]
        return _report_replay(
            args, target, [(e, None) for e in matching if _replay_problem(e, target) is None], matching
        )
    replayed: list[tuple[PoisonEntry, str | None]] = []
    failure: CliError | None = None
    with poison.held() as entries:
        matching = [e for e in entries if e.matches(args.code, args.job_id)]
        for entry in matching:
            if _replay_problem(entry, target) is not None:
                continue
            try:
                poison.refresh(entry)
                with storage_errors(trigger):
                    message_id = str(
                        trigger.send_message(_encode(entry.original or b"", target.encoding), time_to_live=-1).id
                    )
            except CliError as exc:
                failure = exc
                break
            replayed.append((entry, message_id))
            try:
                poison.delete(entry)
            except CliError as exc:
                warn(f"replayed {entry.id} but could not delete it ({exc}); it may be replayed twice")
                failure = failure or exc
    code = _report_replay(args, target, replayed, matching)
    if failure is not None:
        raise CliError(f"{failure}; replayed {len(replayed)} record(s) before stopping", EXIT_STORAGE)
    return code


def _replay_problem(entry: PoisonEntry, target: Target) -> str | None:
    problem = entry.problem
    if problem is None and target.encoding != "base64":
        try:
            (entry.original or b"").decode("utf-8")
        except UnicodeDecodeError:
            problem = "the original message is not UTF-8 and the trigger queue's messageEncoding is none"
    return problem


def _encode(body: bytes, encoding: str) -> str:
    return base64.b64encode(body).decode("ascii") if encoding == "base64" else body.decode("utf-8")


def _report_replay(
    args: argparse.Namespace,
    target: Target,
    replayed: list[tuple[PoisonEntry, str | None]],
    matching: list[PoisonEntry],
) -> int:
    done = {entry.id for entry, _ in replayed}
    skipped = [(e, _replay_problem(e, target)) for e in matching if e.id not in done and _replay_problem(e, target)]
    for entry, problem in skipped:
        warn(f"skipped {entry.id} (job {cell(entry.job_id)}): {problem}")
    for entry, _ in replayed:
        if entry.original is not None:
            try:
                TerminateRequest.parse(entry.original)
            except InvalidMessage as exc:
                warn(f"{entry.id}: the original message is invalid ({cell(str(exc), 120)}); it will fail again")
    verb = "would replay" if args.dry_run else "replayed"
    if args.json:
        print_json(
            {
                "dryRun": bool(args.dry_run),
                "queue": target.queue,
                "replayed": [{**e.summary(), "newMessageId": new_id} for e, new_id in replayed],
                "skipped": [{"id": e.id, "jobId": e.job_id, "problem": p} for e, p in skipped],
            }
        )
    else:
        for entry, new_id in replayed:
            arrow = f" -> {new_id}" if new_id else ""
            print(f"{verb} {entry.id} job {cell(entry.job_id)} ({cell(entry.code or entry.kind)}){arrow}")
        print(f"{verb} {len(replayed)} record(s) to {target.queue}; skipped {len(skipped)}")
    if not matching:
        print(f"no matching poison records in {target.poison_queue}", file=sys.stderr)
    return EXIT_OK if replayed else EXIT_NOTHING


def cmd_poison_purge(args: argparse.Namespace, target: Target) -> int:
    """Delete matching records (a filter, or --all)."""
    if args.all == (args.code is not None or args.job_id is not None):
        raise CliError("give --code and/or --job-id, or --all to purge every record (not both)", EXIT_USAGE)
    poison = _poison_queue(target)
    purged = 0
    with poison.held() as entries:
        for entry in entries:
            if not args.all and not entry.matches(args.code, args.job_id):
                continue
            poison.refresh(entry)
            try:
                poison.delete(entry)
            except CliError as exc:
                raise CliError(f"{exc}; purged {purged} record(s) before stopping", EXIT_STORAGE) from None
            purged += 1
    if args.json:
        print_json({"purged": purged, "queue": target.poison_queue})
    else:
        print(f"purged {purged} record(s) from {target.poison_queue}")
    return EXIT_OK if purged else EXIT_NOTHING


# --- argument parsing --------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The argparse tree; global options are accepted before or after the subcommand."""
    common = argparse.ArgumentParser(add_help=False)
    _add_globals(common, argparse.SUPPRESS)  # after the subcommand too; absent unless given there
    root = argparse.ArgumentParser(
        prog="python -m shared.cli",
        description="Enqueue terminate requests and manage poison records of batch-terminator.",
        epilog=(
            "Settings: the function's own (AzureWebJobsStorage, TERMINATE_QUEUE_NAME, POISON_QUEUE_NAME, host.json "
            "messageEncoding), falling back to local.settings.json, else local.settings.sample.json. "
            "Exit codes: 0 ok, 1 nothing matched / not found, 2 usage or invalid input, "
            "3 storage unreachable / access denied / queue missing."
        ),
    )
    _add_globals(root, None)
    commands = root.add_subparsers(dest="command", required=True, metavar="COMMAND")

    enqueue = commands.add_parser(
        "enqueue", parents=[common], help="enqueue a terminate request (or one per line of --file)"
    )
    enqueue.add_argument("job_id", nargs="?", metavar="JOB_ID", help="the Batch job to terminate")
    enqueue.add_argument(
        "--file", metavar="PATH", help="one job id per line (# comments, blank lines skipped; - = stdin)"
    )
    enqueue.add_argument("--reason", help="terminateReason (default UserTerminate)")
    enqueue.add_argument(
        "--force",
        action="store_true",
        help="send force=true: terminate even if nodes have not fully processed it (newer api-versions)",
    )
    enqueue.add_argument("--if-match", metavar="ETAG")
    enqueue.add_argument("--if-none-match", metavar="ETAG")
    enqueue.add_argument("--if-modified-since", metavar="DATE", help="ISO 8601 or RFC 1123")
    enqueue.add_argument("--if-unmodified-since", metavar="DATE", help="ISO 8601 or RFC 1123")
    enqueue.add_argument("--request-id", metavar="UUID", help="client-request-id to send")
    enqueue.set_defaults(handler=cmd_enqueue)

    poison = commands.add_parser("poison", parents=[common], help="inspect, replay or purge poison records")
    actions = poison.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", parents=[common], help="table of records")
    _add_filters(listing)
    listing.add_argument("--limit", type=int, default=DEFAULT_LIST_LIMIT, help="0 = all (default %(default)s)")
    listing.set_defaults(handler=cmd_poison_list)
    show = actions.add_parser("show", parents=[common], help="one record in full, as JSON")
    show.add_argument("id", metavar="ID", help="the poison queue message id (first column of list)")
    show.set_defaults(handler=cmd_poison_show)
    replay = actions.add_parser("replay", parents=[common], help="send original messages back to the trigger queue")
    _add_filters(replay)
    replay.add_argument("--dry-run", action="store_true", help="say what would be replayed; change nothing")
    replay.set_defaults(handler=cmd_poison_replay)
    purge = actions.add_parser("purge", parents=[common], help="delete records")
    _add_filters(purge)
    purge.add_argument("--all", action="store_true", help="delete every record")
    purge.set_defaults(handler=cmd_poison_purge)
    return root


def _add_globals(parser: argparse.ArgumentParser, default: Any) -> None:
    parser.add_argument(
        "--connection-string",
        metavar="CS",
        default=default,
        help="storage connection string (default: AzureWebJobsStorage; prefer the variable, it stays out of ps)",
    )
    parser.add_argument("--queue", metavar="NAME", default=default, help="trigger queue (TERMINATE_QUEUE_NAME)")
    parser.add_argument(
        "--poison-queue", metavar="NAME", default=default, help="poison queue (POISON_QUEUE_NAME, else <queue>-poison)"
    )
    parser.add_argument(
        "--json", action="store_true", default=default if default is not None else False, help="print JSON"
    )


def _add_filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--code", metavar="CODE", help="only records with this error code (case-insensitive)")
    parser.add_argument("--job-id", metavar="JOB_ID", help="only records for this job (case-insensitive)")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE
    if args.command == "enqueue" and (args.file is None) == (args.job_id is None):
        print(f"{parser.prog} enqueue: error: give JOB_ID or --file (exactly one)", file=sys.stderr)
        return EXIT_USAGE
    try:
        target = resolve_target(args.connection_string, args.queue, args.poison_queue)
        return int(args.handler(args, target))
    except ConfigurationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _entry() -> int:
    """Console entry: keep the Azure SDK's own log lines off the terminal, survive a closed pipe."""
    import logging

    logging.getLogger("azure").addHandler(logging.NullHandler())
    logging.getLogger("azure").propagate = False
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = EXIT_OK
    return code


if __name__ == "__main__":
    sys.exit(_entry())


__all__ = ["CliError", "PoisonEntry", "PoisonQueue", "Target", "build_parser", "main", "resolve_target"]
