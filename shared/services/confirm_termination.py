"""Confirmation (docs/CONTRACT.md §5b): after a 202, later checks that the job really left `terminating`."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from shared.batch.client import BatchClient
from shared.batch.job_release import ReleaseStatus, read_release_status
from shared.batch.jobs import Job, JobReader
from shared.batch.nodes import ComputeNode, list_nodes
from shared.config.settings import Settings
from shared.contract.confirm_check import ConfirmCheck
from shared.contract.errors import (
    BatchCallFailed,
    BatchError,
    BatchErrorDetail,
    InvalidMessage,
    RetryLater,
)
from shared.contract.outcome import Outcome, Result
from shared.contract.poison_record import PoisonRecord
from shared.contract.terminate_request import TerminateRequest
from shared.rules.confirmation import DONE_STATES, GONE_CODES, stuck_values, terminating_seconds
from shared.storage.confirm_queue import ConfirmQueue
from shared.storage.poison_writer import PoisonWriter

log = logging.getLogger("batch_terminator")

# Job - Get with $select: what a check, a TerminationStuck record (its pool too) and the time to completion need.
CONFIRM_SELECT = "id,state,stateTransitionTime,previousState,previousStateTransitionTime,executionInfo,poolInfo"
_REQUEST_ID_NAMESPACE = uuid.UUID("0b8f3c52-0a7e-4c1e-9a57-4e1d2f6c9b31")


@dataclass(frozen=True)
class Pending:
    """A check that found the job not done yet and scheduled the next one (not a finished termination)."""

    job_id: str
    account: str
    state: str | None
    check: int
    forced: bool

    def describe(self) -> str:
        """The log line for this check."""
        return (
            f"confirm job={self.job_id} account={self.account} state={self.state} outcome=pending"
            f" check={self.check} forced={str(self.forced).lower()}"
        )


class Confirmer:
    """Runs one confirm message: read the job, then confirmed, another check, a forced terminate, or a record."""

    def __init__(
        self,
        settings: Settings,
        read_job: JobReader,
        clients: Mapping[str, BatchClient],
        queue: ConfirmQueue,
        poison: PoisonWriter,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._read_job = read_job
        self._clients = clients
        self._queue = queue
        self._poison = poison
        self._clock = clock

    def handle(self, body: bytes, message_id: str | None, dequeue_count: int) -> Result | Pending:
        """Finish the confirm message; raise RetryLater / PoisonWriteFailed / EnqueueFailed to have it again."""
        started = self._clock()
        attempt = max(dequeue_count, 1)
        try:
            check = ConfirmCheck.parse(body, accounts=self._settings.accounts)
        except InvalidMessage as exc:
            error = BatchError(
                "InvalidMessage", "The message does not follow the confirm message schema.", exc.problems
            )
            record = PoisonRecord(
                error=error,
                attempts=attempt,
                message_id=message_id,
                original_message=body,
                job_id=exc.job_id,
                reason=exc.reason,
                account=exc.account,
            )
            return self._poisoned(record, attempt, started)
        # Stable per confirm message, so retries of one check are recognisable at Batch.
        client_request_id = str(uuid.uuid5(_REQUEST_ID_NAMESPACE, message_id or check.to_json()))
        try:
            job = self._read_job(check.account, check.job_id, client_request_id, select=CONFIRM_SELECT)
        except BatchCallFailed as exc:
            if exc.error.code == "JobNotFound":
                return self._confirmed(check, exc.error, client_request_id, attempt, started)
            return self._failed(check, body, exc, attempt, started)
        if job.state in DONE_STATES:
            done = BatchError("", "", http_status=200, request_id=job.request_id)
            return self._confirmed(check, done, client_request_id, attempt, started, terminating_seconds(job))
        if check.check >= self._settings.confirm.max_checks:
            return self._stuck(check, body, job, attempt, started)
        forced = False
        if check.check == 1 and self._settings.confirm.force and self._settings.supports_force:
            # Check 1 is the first one that can find the job not done: later ones exist only because it did.
            request = TerminateRequest(job_id=check.job_id, reason=check.reason, account=check.account, force=True)
            try:
                answer = self._clients[request.account].terminate(
                    request, str(uuid.uuid5(_REQUEST_ID_NAMESPACE, f"force:{client_request_id}"))
                )
            except BatchCallFailed as exc:
                if exc.error.code in GONE_CODES:  # deleted, or being deleted, since the read: done
                    return self._confirmed(check, exc.error, client_request_id, attempt, started)
                return self._failed(check, body, exc, attempt, started)
            if answer.code == "JobCompleted":  # it completed since the read: done, no check left to wait for
                completed = BatchError("JobCompleted", "", http_status=answer.http_status, request_id=answer.request_id)
                return self._confirmed(check, completed, client_request_id, attempt, started)
            forced = True
        self._queue.schedule(check.following())
        return Pending(check.job_id, check.account, job.state, check.check, forced)

    def _failed(self, check: ConfirmCheck, body: bytes, exc: BatchCallFailed, attempt: int, started: float) -> Result:
        """§5's rule for a failed Batch call: raise while attempts are left, else a record with Batch's error."""
        if exc.transient and attempt < self._settings.max_dequeue_count:
            raise RetryLater(
                f"confirm job={check.job_id} outcome=retry_later code={exc.error.code}"
                f" status={exc.error.http_status} attempt={attempt}/{self._settings.max_dequeue_count}"
            ) from exc
        return self._poisoned(self._record(check, body, exc.error, attempt), attempt, started)

    def _stuck(self, check: ConfirmCheck, body: bytes, job: Job, attempt: int, started: float) -> Result:
        error = BatchError(
            "TerminationStuck",
            f"The job is still {job.state} after {check.check} check(s).",
            (
                BatchErrorDetail("state", str(job.state)),
                BatchErrorDetail("stateTransitionTime", str(job.state_transition_time)),
                BatchErrorDetail("checks", str(check.check)),
                *self._diagnosis(check, job),
            ),
        )
        return self._poisoned(self._record(check, body, error, check.check), attempt, started)

    def _diagnosis(self, check: ConfirmCheck, job: Job) -> tuple[BatchErrorDetail, ...]:
        """Why the job is stuck (docs/CONTRACT.md §5b): its release tasks and its pool's nodes; never raises."""
        client = self._clients[check.account]
        release: ReleaseStatus | None = None
        nodes: tuple[ComputeNode, ...] | None = None
        try:
            release = read_release_status(client, check.job_id)
            if job.pool_id is not None:
                nodes = list_nodes(client, job.pool_id)
        except BatchCallFailed as exc:
            # The record is written anyway: a failed read (after the client's own retries) is named, not retried.
            log.warning(
                "confirm job=%s diagnosis unavailable code=%s status=%s",
                check.job_id,
                exc.error.code,
                exc.error.http_status,
            )
            return stuck_values(release, nodes, exc.error.code)
        return stuck_values(release, nodes)

    @staticmethod
    def _record(check: ConfirmCheck, body: bytes, error: BatchError, attempts: int) -> PoisonRecord:
        return PoisonRecord(
            error=error,
            attempts=attempts,
            message_id=check.message_id,
            original_message=body,
            job_id=check.job_id,
            reason=check.reason,
            account=check.account,
            incident=check.incident,
        )

    def _poisoned(self, record: PoisonRecord, attempt: int, started: float) -> Result:
        self._poison.write(record)
        return Result(
            outcome=Outcome.POISONED,
            job_id=record.job_id,
            account=record.account,
            http_status=record.error.http_status,
            code=record.error.code,
            request_id=record.error.request_id,
            client_request_id=record.error.client_request_id,
            attempt=attempt,
            duration=self._clock() - started,
            message_id=record.message_id,
            incident=record.incident,
        )

    def _confirmed(
        self,
        check: ConfirmCheck,
        answer: BatchError,
        client_request_id: str,
        attempt: int,
        started: float,
        terminating: float | None = None,
    ) -> Result:
        """Done: the read found the job completed or deleting (answer 200), or gone (404 JobNotFound)."""
        return Result(
            outcome=Outcome.CONFIRMED,
            job_id=check.job_id,
            account=check.account,
            http_status=answer.http_status,
            code=answer.code or None,
            request_id=answer.request_id,
            client_request_id=client_request_id,
            attempt=attempt,
            duration=self._clock() - started,
            message_id=check.message_id,
            terminating_seconds=terminating,
            incident=check.incident,
        )
