"""`poison list | show | replay | purge`: inspect poison records, send originals back, delete them."""

from __future__ import annotations

import argparse
import base64
import json
import shlex
import sys

from ops.errors import CliError
from ops.exit_codes import EXIT_NOTHING, EXIT_OK, EXIT_STORAGE, EXIT_USAGE
from ops.output import cell, print_json, stuck_line, warn
from ops.poison_queue import PoisonEntry, PoisonQueue
from ops.storage_errors import storage_errors
from ops.target import Target, open_queue
from shared.contract.confirm_check import ConfirmCheck
from shared.contract.errors import InvalidMessage
from shared.contract.incident import IncidentCommand
from shared.contract.terminate_request import TerminateRequest
from shared.storage.terminate_queue import build_request

DEFAULT_LIST_LIMIT = 50
STUCK_CODE = "TerminationStuck"
CLI = "batch-terminator"


def _poison_queue(target: Target) -> PoisonQueue:
    return PoisonQueue(open_queue(target.storage, target.poison_queue), target.encoding)


def cmd_poison_list(args: argparse.Namespace, target: Target) -> int:
    """Print poison records as a table (or JSON), oldest first."""
    if args.limit < 0:
        raise CliError("--limit must be 0 (all) or more", EXIT_USAGE)
    poison = _poison_queue(target)
    filtered = _filtered(args)
    enough = args.limit if args.limit and not filtered else None
    entries = [e for e in poison.read(enough=enough) if _matches(e, args)]
    shown = entries[: args.limit] if args.limit else entries
    if len(shown) < len(entries) or (not filtered and enough is not None and len(shown) == enough):
        total = len(entries) if filtered else max(poison.approximate_count(), len(shown))
        if total > len(shown):
            print(f"showing {len(shown)} of about {total} record(s); --limit 0 shows all", file=sys.stderr)
    expiring = sorted(e.expires for e in entries if e.expires is not None)
    if expiring:
        if len(expiring) == 1:
            warn(f"1 entry expires at {expiring[0]}, when storage deletes it: replay it before then")
        else:
            warn(f"{len(expiring)} entries expire, the first at {expiring[0]}: replay them before then")
    if args.json:
        print_json([e.summary() for e in shown])
        return EXIT_OK
    if not shown:
        print(f"no matching poison records in {target.poison_queue}", file=sys.stderr)
        return EXIT_OK
    header = ("ID", "JOB ID", "ACCOUNT", "CODE", "HTTP", "ATTEMPTS", "FAILED AT", "EXPIRES")
    rows = [
        (
            cell(e.id),
            cell(e.job_id),
            cell(e.account),
            cell(e.code if e.kind == "record" else "(moved by host)"),
            cell(e.http_status),
            cell(e.attempts if e.kind == "record" else "unknown"),
            cell(e.failed_at),
            cell(e.expires or "never"),
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
            _print_why_stuck(entry)
            return EXIT_OK
    print(f"error: no poison record with id {cell(args.id)} in {target.poison_queue}", file=sys.stderr)
    return EXIT_NOTHING


def _print_why_stuck(entry: PoisonEntry) -> None:
    """A TerminationStuck record's diagnosis in one line on stderr (stdout stays one JSON document)."""
    if entry.code != STUCK_CODE:
        return
    pairs = (entry.document or {}).get("error", {}).get("values")
    values = {
        str(pair.get("key")): str(pair.get("value"))
        for pair in (pairs if isinstance(pairs, list) else [])
        if isinstance(pair, dict)
    }
    line = stuck_line(values)
    if line is None:
        return
    narrow = f" --job-id {shlex.quote(cell(entry.job_id, 200))}" if entry.job_id else ""
    if entry.account and entry.account != "default":
        narrow += f" --account {shlex.quote(cell(entry.account, 200))}"
    next_step = f"{CLI} poison replay --code {STUCK_CODE}{narrow} --force"
    sys.stdout.flush()  # after the record, on a terminal that shows both streams
    print(f"why stuck: {cell(line, 2000)} (to end it: {next_step})", file=sys.stderr)


def cmd_poison_replay(args: argparse.Namespace, target: Target) -> int:
    """Send matching records' original messages back to the trigger queue, deleting each record afterwards."""
    trigger = open_queue(target.storage, target.queue)
    poison = _poison_queue(target)
    with storage_errors(trigger):
        trigger.get_queue_properties()  # a missing trigger queue stops us before anything is touched
    if args.dry_run:
        matching = [e for e in poison.read() if _matches(e, args)]
        bodies, problems = _replay_bodies(matching, force=args.force)
        replayable: list[tuple[PoisonEntry, str | None]] = [(e, None) for e in matching if e.id not in problems]
        return _report_replay(args, target, replayable, matching, problems, bodies)
    replayed: list[tuple[PoisonEntry, str | None]] = []
    failure: CliError | None = None
    with poison.held() as entries:
        matching = [e for e in entries if _matches(e, args)]
        bodies, problems = _replay_bodies(matching, force=args.force)
        for entry in matching:
            if entry.id in problems:
                continue
            text = encode_for_trigger(bodies[entry.id], target.encoding)
            try:
                poison.refresh(entry)
                with storage_errors(trigger):
                    message_id = str(trigger.send_message(text, time_to_live=-1).id)
            except CliError as exc:
                failure = exc
                break
            replayed.append((entry, message_id))
            try:
                poison.delete(entry)
            except CliError as exc:
                warn(f"replayed {entry.id} but could not delete it ({exc}); it may be replayed twice")
                failure = failure or exc
    code = _report_replay(args, target, replayed, matching, problems, bodies)
    if failure is not None:
        raise CliError(f"{failure}; replayed {len(replayed)} record(s) before stopping", EXIT_STORAGE)
    return code


def _replay_bodies(entries: list[PoisonEntry], *, force: bool) -> tuple[dict[str, bytes], dict[str, str]]:
    """What replay sends for each entry (by id), and why each entry that cannot be replayed cannot."""
    bodies: dict[str, bytes] = {}
    problems: dict[str, str] = {}
    for entry in entries:
        if entry.problem is not None:
            problems[entry.id] = entry.problem
        elif _is_incident_command(entry.original):
            # Kept so that it never expires; it is no terminate request: the incident commands act on it.
            problems[entry.id] = "a kill-switch command: see batch-terminator incidents show, then retry or undo"
        elif entry.is_check:
            try:
                bodies[entry.id] = fresh_terminate(entry.original or b"", force=force)
            except InvalidMessage as exc:
                problems[entry.id] = f"the check names no job to terminate ({cell(str(exc), 120)})"
        else:
            bodies[entry.id] = entry.original or b""
    if force and any(entry.id in bodies and not entry.is_check for entry in entries):
        warn("--force applies to the records of checks (e.g. TerminationStuck); other originals are sent unchanged")
    return bodies, problems


def _is_incident_command(original: bytes | None) -> bool:
    """Whether a kept message is a kill-switch command (docs/CONTRACT.md §10) rather than a terminate request."""
    try:
        IncidentCommand.parse(original or b"")
    except InvalidMessage:
        return False
    return True


def fresh_terminate(check_text: bytes, *, force: bool) -> bytes:
    """A new terminate message for the job of a confirmation check (docs/CONTRACT.md §5b), force=true if asked."""
    # The check itself belongs on the confirm queue; the trigger queue gets what a producer would have sent.
    check = ConfirmCheck.parse(check_text)
    request = build_request(check.job_id, check.reason, account=check.account, force=force)
    return json.dumps(request.to_message(), ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def encode_for_trigger(body: bytes, encoding: str) -> str:
    """Queue text that hands the function exactly `body` under the trigger queue's messageEncoding."""
    if encoding != "base64":
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError:
            pass  # not text: base64 of it, which the function reads too (docs/CONTRACT.md §3)
    return base64.b64encode(body).decode("ascii")


def _filtered(args: argparse.Namespace) -> bool:
    return args.code is not None or args.job_id is not None or args.account is not None


def _matches(entry: PoisonEntry, args: argparse.Namespace) -> bool:
    return entry.matches(args.code, args.job_id, args.account)


def _report_replay(
    args: argparse.Namespace,
    target: Target,
    replayed: list[tuple[PoisonEntry, str | None]],
    matching: list[PoisonEntry],
    problems: dict[str, str],
    bodies: dict[str, bytes],
) -> int:
    done = {entry.id for entry, _ in replayed}
    skipped = [(e, problems[e.id]) for e in matching if e.id not in done and e.id in problems]
    for entry, problem in skipped:
        warn(f"skipped {entry.id} (job {cell(entry.job_id)}): {problem}")
    for entry, _ in replayed:
        if entry.original is not None and not entry.is_check:
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
                "replayed": [
                    {**e.summary(), "newMessageId": new_id, "freshTerminate": e.is_check} for e, new_id in replayed
                ],
                "skipped": [{"id": e.id, "jobId": e.job_id, "problem": p} for e, p in skipped],
            }
        )
    else:
        for entry, new_id in replayed:
            arrow = f" -> {new_id}" if new_id else ""
            fresh = f" as a fresh terminate {bodies[entry.id].decode('utf-8')}" if entry.is_check else ""
            print(f"{verb} {entry.id} job {cell(entry.job_id)} ({cell(entry.code or entry.kind)}){fresh}{arrow}")
        print(f"{verb} {len(replayed)} record(s) to {target.queue}; skipped {len(skipped)}")
    if not matching:
        print(f"no matching poison records in {target.poison_queue}", file=sys.stderr)
    return EXIT_OK if replayed else EXIT_NOTHING


def cmd_poison_purge(args: argparse.Namespace, target: Target) -> int:
    """Delete matching records (a filter, or --all)."""
    if args.all == _filtered(args):
        raise CliError("give --code, --job-id and/or --account, or --all to purge every record (not both)", EXIT_USAGE)
    poison = _poison_queue(target)
    purged = 0
    with poison.held() as entries:
        for entry in entries:
            if not args.all and not _matches(entry, args):
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
