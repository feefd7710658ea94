"""A pending check of a terminated job (docs/CONTRACT.md §5b): the confirm queue's message."""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass, replace
from typing import Any

from shared.contract.codec import load_object
from shared.contract.errors import BatchErrorDetail, InvalidMessage
from shared.contract.terminate_request import DEFAULT_ACCOUNT, account_problem, incident_id_problem, job_id_problem


@dataclass(frozen=True)
class ConfirmCheck:
    """One pending check: the confirm queue's message."""

    job_id: str
    account: str = DEFAULT_ACCOUNT
    reason: str | None = None
    message_id: str | None = None  # the original trigger message's id
    check: int = 1
    incident: str | None = None  # (project) the incident the terminate message came from, for the records

    def to_json(self) -> str:
        """The confirm message's text."""
        document: dict[str, Any] = {
            "jobId": self.job_id,
            "account": self.account,
            "reason": self.reason,
            "messageId": self.message_id,
            "check": self.check,
        }
        if self.incident:
            document["incident"] = self.incident
        return json.dumps(document, ensure_ascii=False, separators=(",", ":"))

    def following(self) -> ConfirmCheck:
        """The next check of the same job."""
        return replace(self, check=self.check + 1)

    @classmethod
    def parse(cls, body: bytes | str, *, accounts: Collection[str] | None = None) -> ConfirmCheck:
        """Read a confirm message (JSON or base64 of it, as any message); raise InvalidMessage."""
        document = load_object(body)
        problems: list[BatchErrorDetail] = []
        job_id = document.get("jobId")
        account = document.get("account")
        reason = document.get("reason")
        message_id = document.get("messageId")
        check = document.get("check")
        incident = document.get("incident")
        problem = job_id_problem(job_id)
        if problem:
            problems.append(BatchErrorDetail("jobId", problem))
        problem = account_problem(account, accounts)
        if problem:
            problems.append(BatchErrorDetail("account", problem))
        if reason is not None and not isinstance(reason, str):
            problems.append(BatchErrorDetail("reason", "must be a string"))
        if message_id is not None and not isinstance(message_id, str):
            problems.append(BatchErrorDetail("messageId", "must be a string"))
        if not isinstance(check, int) or isinstance(check, bool) or check < 1:
            problems.append(BatchErrorDetail("check", "must be a whole number from 1"))
        problem = incident_id_problem(incident) if incident is not None else None
        if problem:
            problems.append(BatchErrorDetail("incident", problem))
        if problems:
            raise InvalidMessage(
                problems,
                job_id=job_id if isinstance(job_id, str) else None,
                reason=reason if isinstance(reason, str) and reason else None,
                account=account.lower() if isinstance(account, str) else DEFAULT_ACCOUNT if account is None else None,
            )
        assert isinstance(job_id, str)
        assert isinstance(check, int)
        return cls(
            job_id=job_id,
            account=account.lower() if isinstance(account, str) else DEFAULT_ACCOUNT,
            reason=reason or None,
            message_id=message_id,
            check=check,
            incident=incident if isinstance(incident, str) else None,
        )
