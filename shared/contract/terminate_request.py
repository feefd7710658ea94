"""The terminate message: parsed once at the edge into a frozen TerminateRequest."""

from __future__ import annotations

import re
import uuid
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared.contract.codec import format_http_date, json_type, load_object, parse_http_date
from shared.contract.errors import BatchErrorDetail, InvalidMessage

# The account a message names when it names none, and the form of every alias (docs/CONTRACT.md §2, §3).
DEFAULT_ACCOUNT = "default"
ALIAS_PATTERN = re.compile(r"[a-z0-9-]{1,32}", re.ASCII)
# Batch's id rule for jobs, job schedules and pools.
JOB_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}", re.ASCII)
# The id Batch gives a job it created for a job schedule: {scheduleId}:job-{n} (docs/CONTRACT.md §3).
SCHEDULED_JOB_ID_PATTERN = re.compile(r"([A-Za-z0-9_-]{1,64}):job-([0-9]{1,20})", re.ASCII)
# An incident id (docs/CONTRACT.md §10): safe as an Azure Table RowKey, in a URL and as a command-line argument.
INCIDENT_ID_PATTERN = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?", re.ASCII)
REQUEST_ID_PATTERN = re.compile(r"[0-9A-Fa-f]{8}(?:-[0-9A-Fa-f]{4}){3}-[0-9A-Fa-f]{12}", re.ASCII)
# ETags are quoted printable ASCII; anything else could smuggle header syntax.
HEADER_VALUE_PATTERN = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?", re.ASCII)
DEFAULT_REASON = "UserTerminate"
MAX_REASON_LENGTH = 1024
_REQUEST_ID_NAMESPACE = uuid.UUID("6f1d5c1e-4f0e-4a53-9c61-2b8f6d1c0a7e")
_STRING_HEADERS = {"ifMatch": "if_match", "ifNoneMatch": "if_none_match"}
_DATE_HEADERS = {"ifModifiedSince": "if_modified_since", "ifUnmodifiedSince": "if_unmodified_since"}
CONDITION_FIELDS = (*_STRING_HEADERS, *_DATE_HEADERS)
KNOWN_FIELDS = frozenset({"jobId", "reason", "account", "force", "requestId", "incident", *CONDITION_FIELDS})


@dataclass(frozen=True)
class TerminateRequest:
    """A valid terminate request: what the function asks Batch to do."""

    job_id: str
    reason: str | None = None  # as given; None when absent or empty
    account: str = DEFAULT_ACCOUNT  # an alias, lower-cased
    force: bool = False
    if_match: str | None = None
    if_none_match: str | None = None
    if_modified_since: datetime | None = None
    if_unmodified_since: datetime | None = None
    request_id: str | None = None
    incident: str | None = None  # the incident (docs/CONTRACT.md §10) that sent this request

    @property
    def terminate_reason(self) -> str:
        """The terminateReason sent to Batch."""
        return self.reason or DEFAULT_REASON

    @classmethod
    def parse(cls, body: bytes | str, *, accounts: Collection[str] | None = None) -> TerminateRequest:
        """Parse a queue message body (JSON, or base64 of it); raise InvalidMessage listing every problem found.

        `accounts` are the configured aliases; None (a producer that does not know them) checks the alias form only.
        """
        document = load_object(body)
        problems: list[BatchErrorDetail] = []
        fields: dict[str, Any] = {}
        raw_job_id = document.get("jobId")
        job_id = raw_job_id if isinstance(raw_job_id, str) else None
        raw_reason = document.get("reason")
        reason = raw_reason if isinstance(raw_reason, str) and raw_reason else None
        raw_account = document.get("account")
        account = DEFAULT_ACCOUNT if raw_account is None else raw_account if isinstance(raw_account, str) else None

        # Unknown fields are ignored, even twice; a known field given twice is ambiguous.
        for key in sorted(document.duplicates & KNOWN_FIELDS):
            problems.append(BatchErrorDetail(key, "appears more than once"))
        problem = job_id_problem(raw_job_id)
        if problem:
            problems.append(BatchErrorDetail("jobId", problem))
        else:
            fields["job_id"] = raw_job_id
        if raw_reason is not None:
            if not isinstance(raw_reason, str):
                problems.append(BatchErrorDetail("reason", f"must be a string, got {json_type(raw_reason)}"))
            elif len(raw_reason) > MAX_REASON_LENGTH:
                problems.append(BatchErrorDetail("reason", f"must be at most {MAX_REASON_LENGTH} characters"))
            elif raw_reason:
                fields["reason"] = raw_reason
        problem = account_problem(raw_account, accounts)
        if problem:
            problems.append(BatchErrorDetail("account", problem))
        elif raw_account is not None:
            account = fields["account"] = raw_account.lower()
        force = document.get("force")
        if force is not None and not isinstance(force, bool):
            problems.append(BatchErrorDetail("force", f"must be a boolean, got {json_type(force)}"))
        elif force:
            fields["force"] = True
        for key, attribute in _STRING_HEADERS.items():
            value = document.get(key)
            if value is None:
                continue
            if not isinstance(value, str) or not HEADER_VALUE_PATTERN.fullmatch(value):
                problems.append(BatchErrorDetail(key, "must be a non-empty string of printable ASCII"))
            else:
                fields[attribute] = value
        for key, attribute in _DATE_HEADERS.items():
            value = document.get(key)
            if value is None:
                continue
            parsed = parse_http_date(value) if isinstance(value, str) else None
            if parsed is None:
                problems.append(BatchErrorDetail(key, "must be an ISO 8601 or RFC 1123 date"))
            else:
                fields[attribute] = parsed
        given = [key for key in CONDITION_FIELDS if document.get(key) is not None]
        if len(given) > 1:
            # Batch answers MultipleConditionHeadersNotSupported; say so before sending anything.
            problems.append(
                BatchErrorDetail("conditions", f"at most one of {', '.join(CONDITION_FIELDS)}; got {', '.join(given)}")
            )
        request_id = document.get("requestId")
        if request_id is not None:
            if not isinstance(request_id, str) or not REQUEST_ID_PATTERN.fullmatch(request_id):
                problems.append(
                    BatchErrorDetail("requestId", "must be a UUID such as 9c4d50ee-2d56-4cd3-8152-34347dc9f2b0")
                )
            else:
                fields["request_id"] = request_id
        incident = document.get("incident")
        if incident is not None:
            problem = incident_id_problem(incident)
            if problem:
                problems.append(BatchErrorDetail("incident", problem))
            else:
                fields["incident"] = incident

        if problems:
            raise InvalidMessage(
                problems, job_id=job_id, reason=reason, account=account, incident=fields.get("incident")
            )
        return cls(**fields)

    def client_request_id(self, message_id: str | None) -> str:
        """The client-request-id to send: the one asked for, else one stable per queue message."""
        if self.request_id:
            return self.request_id
        return str(uuid.uuid5(_REQUEST_ID_NAMESPACE, message_id) if message_id else uuid.uuid4())

    def to_message(self) -> dict[str, Any]:
        """The message document for this request (what a producer enqueues)."""
        document: dict[str, Any] = {"jobId": self.job_id}
        if self.reason:
            document["reason"] = self.reason
        if self.account != DEFAULT_ACCOUNT:
            document["account"] = self.account
        if self.force:
            document["force"] = True
        for key, attribute in _STRING_HEADERS.items():
            if getattr(self, attribute) is not None:
                document[key] = getattr(self, attribute)
        for key, attribute in _DATE_HEADERS.items():
            if getattr(self, attribute) is not None:
                document[key] = format_http_date(getattr(self, attribute))
        if self.request_id:
            document["requestId"] = self.request_id
        if self.incident:
            document["incident"] = self.incident
        return document


def job_id_problem(value: object) -> str | None:
    """Say what is wrong with a job id, or None when Batch would accept it."""
    if value is None:
        return "is required"
    if not isinstance(value, str):
        return f"must be a string, got {json_type(value)}"
    if not value:
        return "must not be empty"
    if SCHEDULED_JOB_ID_PATTERN.fullmatch(value):
        return None
    if len(value) > 64:
        return f"must be at most 64 characters, got {len(value)}"
    if not JOB_ID_PATTERN.fullmatch(value):
        return "may contain only letters, digits, hyphens and underscores (or be a schedule's {scheduleId}:job-{n})"
    return None


def incident_id_problem(value: object) -> str | None:
    """Say what is wrong with an incident id, or None when it has the form the app gives incident ids."""
    if not isinstance(value, str):
        return f"must be a string, got {json_type(value)}"
    if not INCIDENT_ID_PATTERN.fullmatch(value):
        return "must be an incident id: 1-64 of lowercase letters, digits and inner hyphens"
    return None


def is_job_id(value: str) -> bool:
    """Whether Batch could have given a job this id: its id rule, or a job schedule's {scheduleId}:job-{n}."""
    return JOB_ID_PATTERN.fullmatch(value) is not None or SCHEDULED_JOB_ID_PATTERN.fullmatch(value) is not None


def schedule_of(job_id: str) -> str | None:
    """The job schedule that created a job with this id, or None for another id."""
    matched = SCHEDULED_JOB_ID_PATTERN.fullmatch(job_id)
    return matched.group(1) if matched else None


def account_problem(value: object, accounts: Collection[str] | None) -> str | None:
    """Say what is wrong with an `account` field, or None when it names a configured alias (absent: default)."""
    if value is None:
        return None
    if not isinstance(value, str):
        return f"must be a string, got {json_type(value)}"
    alias = value.lower()
    if accounts is None:
        return None if ALIAS_PATTERN.fullmatch(alias) else "must be an account alias (1-32 of a-z, 0-9 and -)"
    if alias in accounts:
        return None
    return f"is not a configured account (known: {', '.join(accounts)})"
