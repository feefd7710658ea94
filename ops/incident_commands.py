"""`incidents list | show | approve | cancel | retry | undo` and `kill`: the kill switch by hand (docs/CONTRACT.md §10).

The CLI builds its own Incidents service (the incident table and the command queue) from the storage settings alone:
it needs no Batch account settings, and it never acts on Batch itself — kill_switch runs every command.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from azure.core.exceptions import AzureError
from azure.data.tables import TableClient
from azure.storage.queue import QueueClient

from ops.errors import CliError
from ops.exit_codes import EXIT_NOTHING, EXIT_OK, EXIT_STORAGE, EXIT_USAGE
from ops.output import cell, invalid_message_text, print_json, warn
from ops.storage_errors import StorageClient, storage_errors, storage_failure
from ops.target import ACCOUNTS_SETTING, IncidentTarget, open_queue, open_table
from shared.config import catalog
from shared.config.settings import account_aliases
from shared.contract.errors import ConfigurationError, EnqueueFailed, IncidentWriteFailed, InvalidMessage
from shared.contract.incident import Approval, Command, Incident, IncidentPool, Selectors, Source, State
from shared.contract.terminate_request import DEFAULT_ACCOUNT, incident_id_problem
from shared.rules.incidents import NotAccepted, commands_in, operator_incident_id
from shared.rules.selection import JobSelector
from shared.services.kill_switch import Incidents, UnknownIncident, utc_now
from shared.storage.incidents import IncidentQueue, IncidentStore
from shared.storage.terminate_queue import build_request
from shared.telemetry import Telemetry

CLI = "batch-terminator"
# The commands an operator sends by hand (plan is sent by `kill` and by alert_terminate).
OPERATOR_COMMANDS = (Command.APPROVE, Command.CANCEL, Command.RETRY, Command.UNDO)
# `incidents show` lists this many jobs; --json has them all.
SHOWN_JOBS = 50
_OPTION_OF_SETTING = {
    catalog.ALERT_SELECT_JOB_ID_PREFIX.name: "--prefix",
    catalog.ALERT_SELECT_POOL_ID.name: "--pool",
    catalog.ALERT_SELECT_METADATA.name: "--metadata",
}


@dataclass(frozen=True)
class Clients:
    """The clients a command's storage failures are reported against."""

    table: TableClient
    queue: QueueClient | None = None

    @contextlib.contextmanager
    def failures(self) -> Iterator[None]:
        """The table's and the queue's failures as the CLI's one storage line (exit 3, no secret)."""
        try:
            yield
        except IncidentWriteFailed as exc:
            raise _failure(exc, self.table) from exc
        except EnqueueFailed as exc:
            raise _failure(exc, self.queue or self.table) from exc
        except AzureError as exc:
            raise storage_failure(exc, self.table) from exc


def _store(target: IncidentTarget) -> tuple[IncidentStore, Clients]:
    """The incident table (list, show)."""
    table = open_table(target.storage, target.table)
    return IncidentStore(table), Clients(table)


def _incidents(target: IncidentTarget) -> tuple[Incidents, Clients, QueueClient]:
    """The Incidents service over the table and the command queue (INCIDENT_QUEUE_NAME is required)."""
    store, clients = _store(target)
    queue = open_queue(target.storage, target.queue(), text_base64=target.encoding == "base64")
    return Incidents(store, IncidentQueue(queue), Telemetry(), clock=utc_now), Clients(clients.table, queue), queue


def _failure(exc: Exception, client: StorageClient) -> CliError:
    cause = exc.__cause__
    if isinstance(cause, AzureError):
        return storage_failure(cause, client)
    return CliError(str(exc), EXIT_STORAGE)


def _checked_id(incident_id: str) -> str:
    problem = incident_id_problem(incident_id)
    if problem is not None:
        raise CliError(f"ID {cell(incident_id)} {problem}", EXIT_USAGE)
    return incident_id


# ---- incidents list | show


def cmd_incidents_list(args: argparse.Namespace, target: IncidentTarget) -> int:
    """Every incident, newest first: a table, or one JSON array."""
    store, clients = _store(target)
    with clients.failures():
        incidents = store.list_incidents()
    if args.json:
        print_json([incident.summary() for incident in incidents])
        return EXIT_OK
    if not incidents:
        print(f"no incidents in table {target.table}", file=sys.stderr)
        return EXIT_OK
    header = ("ID", "STATE", "SOURCE", "RULE", "ACCOUNT", "CREATED AT", "JOBS", "SCHEDULES", "POOLS")
    rows = []
    for incident in incidents:
        summary = incident.summary()
        rows.append(
            (
                cell(incident.id),
                cell(incident.state.value),
                cell(incident.source.value),
                cell(incident.rule),
                cell(incident.account),
                cell(summary["createdAt"]),
                cell(summary["jobs"]),
                cell(summary["schedules"]),
                cell(summary["pools"]),
            )
        )
    _print_table(header, rows)
    return EXIT_OK


def cmd_incidents_show(args: argparse.Namespace, target: IncidentTarget) -> int:
    """One incident: its plan, results, error, note and history; with --json the §10 object."""
    incident_id = _checked_id(args.id)
    store, clients = _store(target)
    with clients.failures():
        incident = store.get(incident_id)
    if incident is None:
        print(f"error: no incident with id {cell(incident_id)} in table {target.table}", file=sys.stderr)
        return EXIT_NOTHING
    if args.json:
        print_json(incident.to_document())
    else:
        for line in describe(incident):
            print(line)
    return EXIT_OK


def describe(incident: Incident) -> list[str]:
    """The readable view of `incidents show`."""
    document = incident.to_document()
    selectors = incident.selectors.to_document()
    approval = incident.approval.value if incident.approval is not None else "KILL_SWITCH_APPROVAL (when planned)"
    lines = [
        f"incident {incident.id}",
        *_fields(
            [
                ("state", incident.state.value),
                ("source", incident.source.value),
                ("rule", incident.rule),
                ("account", incident.account),
                ("reason", incident.reason or None),
                ("selectors", " ".join(f"{name}={cell(value)}" for name, value in selectors.items() if value)),
                ("approval", approval),
                ("dry run", "yes (no schedule or pool changed)" if incident.dry_run else "no"),
                ("created", document["createdAt"]),
                ("updated", document["updatedAt"]),
            ]
        ),
    ]
    lines.append("")
    lines.append(f"jobs ({len(incident.jobs)})" + ("" if incident.jobs else ": none selected (yet)"))
    jobs = [
        (cell(job.job_id, 64), f"pool {cell(job.pool_id)}", "enqueued" if job.enqueued else "") for job in incident.jobs
    ]
    lines.extend(_indented(jobs[:SHOWN_JOBS]))
    if len(jobs) > SHOWN_JOBS:
        lines.append(f"  ... and {len(jobs) - SHOWN_JOBS} more (--json lists them all)")
    lines.append(f"schedules ({len(incident.schedules)})" + ("" if incident.schedules else ": none"))
    lines.extend(
        _indented(
            [
                (
                    cell(item.job_schedule_id, 64),
                    _result(item.result),
                    _schedule_state(incident, item.disabled),
                )
                for item in incident.schedules
            ]
        )
    )
    lines.append(f"pools ({len(incident.pools)})" + ("" if incident.pools else ": none"))
    lines.extend(_indented([(cell(item.pool_id, 64), *_pool(item)) for item in incident.pools]))
    error = incident.error
    if error is not None:
        values = ", ".join(f"{v.key}={v.value}" for v in error.values)
        lines.append("")
        lines.append(f"error: {error.code}: {cell(error.message, 300)}" + (f" ({cell(values, 200)})" if values else ""))
    if incident.note:
        lines.append("")
        lines.append(f"note: {incident.note}")
    lines.append("")
    lines.append("history")
    lines.extend(_indented([(change["at"], change["state"]) for change in document["history"]]))
    steps = [command for command in commands_in(incident.state) if command in OPERATOR_COMMANDS]
    if steps:
        lines.append("")
        lines.append("next: " + " | ".join(f"{CLI} incidents {command.value} {incident.id}" for command in steps))
    return lines


def _fields(pairs: list[tuple[str, object]]) -> list[str]:
    width = max(len(name) for name, _ in pairs)
    return [f"  {name.ljust(width)}  {cell(value, 200)}" for name, value in pairs]


def _schedule_state(incident: Incident, disabled: bool) -> str:
    """What this incident did to a schedule, as of its state (undo enables what the incident disabled)."""
    if not disabled:
        return ""
    return "disabled by this incident, then undone" if incident.state is State.UNDONE else ("disabled by this incident")


def _indented(rows: Sequence[tuple[str, ...]]) -> list[str]:
    if not rows:
        return []
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  " + "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in rows]


def _result(result: object) -> str:
    """`HTTP 202`, `HTTP 404 PoolNotFound`, or `not acted on`."""
    status = getattr(result, "http_status", None)
    if result is None:
        return "not acted on"
    code = getattr(result, "code", None)
    return f"HTTP {status if status is not None else '-'}" + (f" {code}" if code else "")


def _pool(item: IncidentPool) -> tuple[str, str]:
    if item.skipped is not None:
        return f"skipped: {item.skipped}", ""
    before = item.before
    if before is None:
        shown = "before: not recorded yet"
    elif before.enable_auto_scale:
        shown = (
            f"before: autoscale every {before.auto_scale_evaluation_interval or '-'}"
            f" ({cell(before.auto_scale_formula, 60)})"
        )
    else:
        shown = f"before: {before.target_dedicated_nodes} dedicated, {before.target_low_priority_nodes} low-priority"
    return _result(item.result), shown


def _print_table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        print("  ".join(value.ljust(width) for value, width in zip(row, widths, strict=True)).rstrip())


# ---- incidents approve | cancel | retry | undo


def cmd_incidents_command(args: argparse.Namespace, target: IncidentTarget) -> int:
    """Put approve/cancel/retry/undo on the queue if the incident exists and its state takes the command."""
    command = Command(args.action)
    incident_id = _checked_id(args.id)
    incidents, clients, _ = _incidents(target)
    try:
        with clients.failures():
            incident = incidents.send(incident_id, command)
    except UnknownIncident:
        raise CliError(f"no incident with id {cell(incident_id)} in table {target.table}", EXIT_USAGE) from None
    except NotAccepted as exc:
        raise CliError(_refusal(exc.incident, command), EXIT_USAGE) from None
    queue = target.queue()
    if args.json:
        print_json({"incident": incident.id, "command": command.value, "state": incident.state.value, "queue": queue})
    else:
        print(f"{command.value} enqueued for incident {incident.id} ({incident.state.value}) on {queue}")
    return EXIT_OK


def _refusal(incident: Incident, command: Command) -> str:
    """Why the incident does not take the command, and what it does take."""
    needed = next(state for state in State if command in commands_in(state))
    takes = [c.value for c in commands_in(incident.state) if c in OPERATOR_COMMANDS]
    then = f"; it takes: {', '.join(takes)}" if takes else "; it takes no command now"
    return (
        f"incident {incident.id} is {incident.state.value}: {command.value} is accepted only when"
        f" {needed.value}{then}; nothing enqueued"
    )


# ---- kill


def cmd_kill(args: argparse.Namespace, target: IncidentTarget) -> int:
    """Open an operator incident with these selectors, put its plan on the queue, print its id."""
    if not args.reason.strip():
        raise CliError("--reason must say why (the incident's reason, every job's terminateReason)", EXIT_USAGE)
    accounts = account_aliases({ACCOUNTS_SETTING: target.batch_accounts}) if target.batch_accounts is not None else None
    try:  # the reason and the account, checked as `enqueue` checks them (they go into each terminate message)
        request = build_request("job", args.reason, account=args.account, accounts=accounts)
    except InvalidMessage as exc:
        given = {"reason": args.reason, "account": args.account}
        raise CliError(invalid_message_text(exc, given), EXIT_USAGE) from None
    selector = _selector(args)
    if not selector.configured:
        raise CliError(
            "give at least one selector: --prefix, --pool or --metadata (an incident without one would select"
            " every job); nothing stored",
            EXIT_USAGE,
        )
    if accounts is None and request.account != DEFAULT_ACCOUNT:
        warn(
            f"{ACCOUNTS_SETTING} is not set here, so --account {args.account} is checked for its form only"
            " (kill_switch fails an incident whose account it does not know)"
        )
    incidents, clients, queue = _incidents(target)
    with storage_errors(queue):
        queue.get_queue_properties()  # a missing queue stops us before an incident is stored
    incident = Incident.open(
        operator_incident_id(),
        source=Source.OPERATOR,
        reason=args.reason,
        selectors=Selectors(selector.job_id_prefix, selector.pool_id, selector.metadata),
        at=utc_now(),
        account=request.account,
        approval=Approval(args.approval) if args.approval else None,
    )
    try:
        with clients.failures():
            stored, _ = incidents.open(incident)
    except CliError as exc:
        if isinstance(exc.__cause__, EnqueueFailed):  # stored, then the plan command was refused
            raise CliError(
                f"{exc}; incident {incident.id} is stored as accepted but its plan command is not on"
                f" {target.queue()} (it will not be planned: run kill again when the queue takes messages)",
                exc.exit_code,
            ) from None
        raise
    if args.json:
        print_json(stored.to_document())
    else:
        print(stored.id)
    return EXIT_OK


def _selector(args: argparse.Namespace) -> JobSelector:
    """--prefix, --pool and --metadata read as ALERT_SELECT_* are (errors name the option)."""
    given = {
        catalog.ALERT_SELECT_JOB_ID_PREFIX.name: args.prefix or "",
        catalog.ALERT_SELECT_POOL_ID.name: args.pool or "",
        catalog.ALERT_SELECT_METADATA.name: args.metadata or "",
    }
    try:
        return JobSelector.from_env(given)
    except ConfigurationError as exc:
        option = _OPTION_OF_SETTING.get(exc.setting, exc.setting)
        raise CliError(f"{option}: {exc.problem}", EXIT_USAGE) from None
