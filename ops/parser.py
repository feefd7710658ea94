"""The argparse tree: global options before or after the subcommand, one handler per command."""

from __future__ import annotations

import argparse
from typing import Any

from ops.enqueue import cmd_enqueue
from ops.incident_commands import (
    OPERATOR_COMMANDS,
    cmd_incidents_command,
    cmd_incidents_list,
    cmd_incidents_show,
    cmd_kill,
)
from ops.poison_commands import (
    DEFAULT_LIST_LIMIT,
    cmd_poison_list,
    cmd_poison_purge,
    cmd_poison_replay,
    cmd_poison_show,
)
from shared.contract.incident import Approval


def build_parser() -> argparse.ArgumentParser:
    """The argparse tree; global options are accepted before or after the subcommand."""
    common = argparse.ArgumentParser(add_help=False)
    _add_globals(common, argparse.SUPPRESS)  # after the subcommand too; absent unless given there
    root = argparse.ArgumentParser(
        prog="batch-terminator",
        description=(
            "Enqueue terminate requests, manage poison records, and run the kill switch's incidents"
            " (docs/CONTRACT.md §10) of batch-terminator."
        ),
        epilog=(
            "Settings: the function's own (AzureWebJobsStorage, TERMINATE_QUEUE_NAME, POISON_QUEUE_NAME, "
            "INCIDENT_QUEUE_NAME, INCIDENT_TABLE_NAME, host.json messageEncoding), falling back to "
            "local.settings.json, else local.settings.sample.json. "
            "Exit codes: 0 ok, 1 nothing matched / not found, 2 usage or invalid input, or a command the "
            "incident's state does not accept, 3 storage unreachable / access denied / queue missing."
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
        "--account", metavar="ALIAS", help="the account, by its alias in BATCH_ACCOUNTS (default: BATCH_ACCOUNT_URL)"
    )
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
    replay.add_argument(
        "--force",
        action="store_true",
        help="a check's record (e.g. TerminationStuck) is replayed as a fresh terminate: send it with force=true"
        " (needs BATCH_API_VERSION 2024-07-01.20.0 or later)",
    )
    replay.set_defaults(handler=cmd_poison_replay)
    purge = actions.add_parser("purge", parents=[common], help="delete records")
    _add_filters(purge)
    purge.add_argument("--all", action="store_true", help="delete every record")
    purge.set_defaults(handler=cmd_poison_purge)

    incident_common = argparse.ArgumentParser(add_help=False)
    _add_globals(incident_common, argparse.SUPPRESS, queues=False)  # the trigger queues play no part here
    _add_incident_commands(commands, incident_common)
    return root


def _add_incident_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    """`incidents ...` and `kill` (docs/CONTRACT.md §10); they read the incident table and command queue only."""
    incidents = commands.add_parser(
        "incidents", parents=[common], help="list, show, approve, cancel, retry or undo kill-switch incidents"
    )
    actions = incidents.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", parents=[common], help="table of incidents, newest first")
    listing.set_defaults(handler=cmd_incidents_list, settings="incidents")
    show = actions.add_parser("show", parents=[common], help="one incident: its plan, results, error and history")
    show.add_argument("id", metavar="ID", help="the incident id (first column of list)")
    show.set_defaults(handler=cmd_incidents_show, settings="incidents")
    helps = {
        "approve": "carry out an incident awaiting approval",
        "cancel": "cancel an incident awaiting approval",
        "retry": "plan a failed incident again",
        "undo": "re-enable the schedules and restore the pools an executed incident changed",
    }
    for command in OPERATOR_COMMANDS:
        action = actions.add_parser(command.value, parents=[common], help=helps[command.value])
        action.add_argument("id", metavar="ID", help="the incident id")
        action.set_defaults(handler=cmd_incidents_command, settings="incidents")

    kill = commands.add_parser(
        "kill",
        parents=[common],
        help="open an operator incident: stop the matching active jobs of one account (prints its id)",
        description=(
            "Open an operator incident (docs/CONTRACT.md §10) and put its plan command on INCIDENT_QUEUE_NAME: "
            "kill_switch selects the active jobs all given selectors match (at least one), then disables their "
            "schedules, terminates them and (KILL_SWITCH_SCALE_POOLS) scales their pools to zero, or waits for "
            "`incidents approve`. Prints the incident id."
        ),
    )
    kill.add_argument("--reason", required=True, metavar="TEXT", help="why: the incident's reason and terminateReason")
    kill.add_argument(
        "--account", metavar="ALIAS", help="the account, by its alias in BATCH_ACCOUNTS (default: BATCH_ACCOUNT_URL)"
    )
    kill.add_argument("--prefix", metavar="P", help="jobs (and schedules) whose id starts with P (case-insensitive)")
    kill.add_argument("--pool", metavar="ID", help="jobs running on (and schedules targeting) this pool")
    kill.add_argument("--metadata", metavar="KEY=VALUE", help="jobs (and schedules) with this metadata pair")
    kill.add_argument(
        "--approval",
        choices=[approval.value for approval in Approval],
        help="auto: act when planned; manual: wait for `incidents approve` (default: KILL_SWITCH_APPROVAL)",
    )
    kill.set_defaults(handler=cmd_kill, settings="incidents")


def _add_globals(parser: argparse.ArgumentParser, default: Any, *, queues: bool = True) -> None:
    parser.add_argument(
        "--connection-string",
        metavar="CS",
        default=default,
        help="storage connection string (default: AzureWebJobsStorage; prefer the variable, it stays out of ps)",
    )
    if queues:
        parser.add_argument("--queue", metavar="NAME", default=default, help="trigger queue (TERMINATE_QUEUE_NAME)")
        parser.add_argument(
            "--poison-queue",
            metavar="NAME",
            default=default,
            help="poison queue (POISON_QUEUE_NAME, else <queue>-poison)",
        )
    parser.add_argument(
        "--json", action="store_true", default=default if default is not None else False, help="print JSON"
    )


def _add_filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--code", metavar="CODE", help="only records with this error code (case-insensitive)")
    parser.add_argument("--job-id", metavar="JOB_ID", help="only records for this job (case-insensitive)")
    parser.add_argument("--account", metavar="ALIAS", help="only records for this account alias (case-insensitive)")
