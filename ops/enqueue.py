"""`enqueue`: one terminate request, or one per job id of a file (all lines validated before any is sent)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ops.errors import CliError
from ops.exit_codes import EXIT_OK, EXIT_STORAGE, EXIT_USAGE
from ops.output import Progress, invalid_message_text, print_json, warn
from ops.storage_errors import storage_failure
from ops.target import ACCOUNTS_SETTING, Target, open_queue
from shared.config.settings import account_aliases
from shared.contract.errors import EnqueueFailed, InvalidMessage
from shared.contract.terminate_request import DEFAULT_ACCOUNT, TerminateRequest
from shared.storage.terminate_queue import TerminateQueue, build_request

PROGRESS_ALWAYS_ABOVE = 100
MAX_LISTED_PROBLEMS = 20


def _request_options(args: argparse.Namespace, target: Target) -> dict[str, Any]:
    return {
        "account": args.account,
        "accounts": _known_accounts(args.account, target),
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
        "account": args.account,
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
        request = build_request(args.job_id, args.reason, **_request_options(args, target))
    except InvalidMessage as exc:
        raise CliError(invalid_message_text(exc, _given(args.job_id, args)), EXIT_USAGE) from None
    queue = _trigger_queue(target)
    message_id = _send(queue, request)
    if args.json:
        print_json({"messageId": message_id, "queue": queue.queue_name, "message": request.to_message()})
    else:
        print(message_id)
    return EXIT_OK


def _known_accounts(alias: str | None, target: Target) -> tuple[str, ...] | None:
    """The app's aliases when BATCH_ACCOUNTS is visible here; else None, and a word that only the form is checked."""
    if target.batch_accounts is not None:
        return account_aliases({ACCOUNTS_SETTING: target.batch_accounts})
    if alias is not None and alias.lower() != DEFAULT_ACCOUNT:
        warn(
            f"{ACCOUNTS_SETTING} is not set here, so --account {alias} is checked for its form only"
            " (the function refuses an alias it does not know)"
        )
    return None


def _trigger_queue(target: Target) -> TerminateQueue:
    return TerminateQueue(open_queue(target.storage, target.queue, text_base64=target.encoding == "base64"))


def _send(queue: TerminateQueue, request: TerminateRequest) -> str:
    try:
        return queue.enqueue(request)
    except EnqueueFailed as exc:
        raise _cli_error(queue, exc) from exc


def _cli_error(queue: TerminateQueue, exc: EnqueueFailed) -> CliError:
    """The operator's words for a send the queue refused."""
    cause = exc.__cause__
    return (
        storage_failure(cause, queue.client) if isinstance(cause, BaseException) else CliError(str(exc), EXIT_STORAGE)
    )


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
    options = _request_options(args, target)
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

    def advance(_index: int, _message_id: str) -> None:
        if progress:
            progress.advance()

    try:
        result = queue.enqueue_many([request for _, request in requests], on_sent=advance)
    finally:
        if progress:
            progress.close()
    numbered = zip(requests, result.message_ids, strict=True)
    sent = {number: message_id for (number, _), message_id in numbered if message_id is not None}
    if result.failure is not None:
        failure = _cli_error(queue, result.failure)
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
