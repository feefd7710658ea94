"""One queue message in, one finished outcome out: terminated, already done, dry run, or a poison record."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from shared.batch.client import BatchClient
from shared.config.settings import Settings
from shared.contract.errors import BatchCallFailed, BatchError, InvalidMessage, JobRefused, RetryLater
from shared.contract.outcome import Outcome, Result
from shared.contract.terminate_request import TerminateRequest
from shared.rules.guards import Clearance, Guards
from shared.storage.poison_writer import PoisonWriter

if TYPE_CHECKING:  # loaded only where checks are on (docs/CONTRACT.md §5b)
    from shared.storage.confirm_queue import ConfirmQueue

log = logging.getLogger("batch_terminator")


@dataclass(frozen=True)
class Delivery:
    """A queue message as the trigger received it."""

    body: bytes
    message_id: str | None = None
    dequeue_count: int = 1


class Terminator:
    """Runs one delivery through parse → guards → Batch → outcome, writing poison records and checks where due."""

    def __init__(
        self,
        settings: Settings,
        clients: Mapping[str, BatchClient],
        poison: PoisonWriter,
        guards: Guards,
        confirm: ConfirmQueue | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._clients = clients
        self._poison = poison
        self._guards = guards
        self._confirm = confirm
        self._max_dequeue_count = settings.max_dequeue_count
        self._clock = clock

    def handle(self, delivery: Delivery) -> Result:
        """Finish the delivery, or raise RetryLater / PoisonWriteFailed / EnqueueFailed to have it delivered again."""
        started = self._clock()
        attempt = max(delivery.dequeue_count, 1)
        try:
            request = TerminateRequest.parse(delivery.body, accounts=self._settings.accounts)
        except InvalidMessage as exc:
            error = BatchError(
                "InvalidMessage", "The message does not follow the terminate message schema.", exc.problems
            )
            return self._poisoned(delivery, attempt, error, exc.job_id, exc.reason, exc.account, started, exc.incident)

        client_request_id = request.client_request_id(delivery.message_id)
        try:
            cleared = self._guards.check(request, client_request_id)
            if cleared.clearance is Clearance.TERMINATE:
                answer = self._clients[request.account].terminate(request, client_request_id)
            else:
                answer = self._skipped(request, cleared.clearance, cleared.request_id, client_request_id)
        except JobRefused as exc:
            return self._poisoned(
                delivery, attempt, exc.error, request.job_id, request.reason, request.account, started, request.incident
            )
        except BatchCallFailed as exc:
            if exc.transient and attempt < self._max_dequeue_count:
                raise RetryLater(
                    f"terminate job={request.job_id} outcome=retry_later code={exc.error.code}"
                    f" status={exc.error.http_status} client_request_id={client_request_id}"
                    f" attempt={attempt}/{self._max_dequeue_count}"
                ) from exc
            return self._poisoned(
                delivery, attempt, exc.error, request.job_id, request.reason, request.account, started, request.incident
            )

        if self._confirm is not None and _needs_check(answer):
            # Before returning: if this write fails the message comes again and is checked then (docs/CONTRACT.md §5b).
            from shared.contract.confirm_check import ConfirmCheck

            self._confirm.schedule(
                ConfirmCheck(
                    request.job_id, request.account, request.reason, delivery.message_id, incident=request.incident
                )
            )
        return replace(
            answer,
            account=request.account,
            attempt=attempt,
            duration=self._clock() - started,
            message_id=delivery.message_id,
            incident=request.incident,
        )

    @staticmethod
    def _skipped(
        request: TerminateRequest, clearance: Clearance, request_id: str | None, client_request_id: str
    ) -> Result:
        """The outcome of a request the guards finished without Job - Terminate."""
        if clearance is Clearance.ALREADY_COMPLETED:
            # docs/CONTRACT.md §5a: done, as Job - Terminate would have answered a completed job.
            return Result(
                Outcome.ALREADY_TERMINATED, request.job_id, 409, "JobCompleted", request_id, client_request_id
            )
        return Result(Outcome.DRY_RUN, request.job_id, None, None, request_id, None)

    def _poisoned(
        self,
        delivery: Delivery,
        attempt: int,
        error: BatchError,
        job_id: str | None,
        reason: str | None,
        account: str | None,
        started: float,
        incident: str | None = None,
    ) -> Result:
        from shared.contract.poison_record import PoisonRecord  # the failure path: most messages never load it

        self._poison.write(
            PoisonRecord(
                error=error,
                attempts=attempt,
                message_id=delivery.message_id,
                original_message=delivery.body,
                job_id=job_id,
                reason=reason,
                account=account,
                incident=incident,
            )
        )
        return Result(
            outcome=Outcome.POISONED,
            job_id=job_id,
            account=account,
            http_status=error.http_status,
            code=error.code,
            request_id=error.request_id,
            client_request_id=error.client_request_id,
            attempt=attempt,
            duration=self._clock() - started,
            message_id=delivery.message_id,
            incident=incident,
        )


def _needs_check(answer: Result) -> bool:
    """A 202, or a 409 JobBeingTerminated (a redelivery whose first attempt died after the 202)."""
    return answer.outcome is Outcome.TERMINATED or (
        answer.outcome is Outcome.ALREADY_TERMINATED and answer.code == "JobBeingTerminated"
    )
