"""One queue message in, one finished outcome out: terminated, already done, or a poison record."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from shared.batch import BatchClient
from shared.errors import BatchCallFailed, BatchError, InvalidMessage, RetryLater
from shared.message import TerminateRequest
from shared.outcome import Outcome, Result
from shared.poison import PoisonRecord, PoisonWriter

log = logging.getLogger("batch_terminator")


@dataclass(frozen=True)
class Delivery:
    """A queue message as the trigger received it."""

    body: bytes
    message_id: str | None = None
    dequeue_count: int = 1


class Terminator:
    """Runs one delivery through parse → Batch → outcome, writing poison records where due."""

    def __init__(
        self,
        client: BatchClient,
        poison: PoisonWriter,
        *,
        max_dequeue_count: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._poison = poison
        self._max_dequeue_count = max_dequeue_count
        self._clock = clock

    def handle(self, delivery: Delivery) -> Result:
        """Finish the delivery, or raise RetryLater / PoisonWriteFailed so the host delivers it again."""
        started = self._clock()
        attempt = max(delivery.dequeue_count, 1)
        try:
            request = TerminateRequest.parse(delivery.body)
        except InvalidMessage as exc:
            error = BatchError(
                "InvalidMessage", "The message does not follow the terminate message schema.", exc.problems
            )
            return self._poisoned(delivery, attempt, error, exc.job_id, exc.reason, started)

        client_request_id = request.client_request_id(delivery.message_id)
        try:
            answer = self._client.terminate(request, client_request_id)
        except BatchCallFailed as exc:
            if exc.transient and attempt < self._max_dequeue_count:
                raise RetryLater(
                    f"terminate job={request.job_id} outcome=retry_later code={exc.error.code}"
                    f" status={exc.error.http_status} client_request_id={client_request_id}"
                    f" attempt={attempt}/{self._max_dequeue_count}"
                ) from exc
            return self._poisoned(
                delivery, attempt, exc.error, request.job_id, request.reason, started, account="default"
            )

        # account: the one account there is (a message naming another is a later feature).
        done = self._clock() - started
        return replace(answer, attempt=attempt, duration=done, message_id=delivery.message_id, account="default")

    def _poisoned(
        self,
        delivery: Delivery,
        attempt: int,
        error: BatchError,
        job_id: str | None,
        reason: str | None,
        started: float,
        *,
        account: str | None = None,
    ) -> Result:
        self._poison.write(
            PoisonRecord(
                error=error,
                attempts=attempt,
                message_id=delivery.message_id,
                original_message=delivery.body,
                job_id=job_id,
                reason=reason,
            )
        )
        return Result(
            outcome=Outcome.POISONED,
            job_id=job_id,
            http_status=error.http_status,
            code=error.code,
            request_id=error.request_id,
            client_request_id=error.client_request_id,
            attempt=attempt,
            duration=self._clock() - started,
            message_id=delivery.message_id,
            account=account,
        )
