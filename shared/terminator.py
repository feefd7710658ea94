"""One queue message in, one finished outcome out: terminated, already done, or a poison record."""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from shared.batch import BatchClient, Verdict
from shared.errors import BatchCallFailed, ErrorDetail, InvalidMessage, RetryLater
from shared.message import JOB_ID_PATTERN, TerminateRequest
from shared.poison import PoisonRecord, PoisonWriter

log = logging.getLogger("batch_terminator")


class Result(enum.Enum):
    """How a message finished."""

    TERMINATED = "terminated"
    ALREADY_TERMINATED = "already_terminated"
    POISONED = "poisoned"


@dataclass(frozen=True)
class Delivery:
    """A queue message as the trigger received it."""

    body: bytes
    message_id: str | None = None
    dequeue_count: int = 1


@dataclass(frozen=True)
class Handled:
    """What happened to one message, with what the log line needs."""

    result: Result
    job_id: str | None
    http_status: int | None
    code: str | None
    request_id: str | None
    client_request_id: str | None
    attempt: int
    duration: float

    def describe(self) -> str:
        """The one log line for this outcome."""
        job = self.job_id
        if job is not None and not JOB_ID_PATTERN.fullmatch(job):
            job = repr(job[:100])  # an invalid id is the sender's text: escaped, so it cannot forge log lines
        return (
            f"terminate job={job} outcome={self.result.value} status={self.http_status}"
            f" code={self.code} request_id={self.request_id} client_request_id={self.client_request_id}"
            f" attempt={self.attempt} duration_ms={self.duration * 1000:.0f}"
        )


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

    def handle(self, delivery: Delivery) -> Handled:
        """Finish the delivery, or raise RetryLater / PoisonWriteFailed so the host delivers it again."""
        started = self._clock()
        attempt = max(delivery.dequeue_count, 1)
        try:
            request = TerminateRequest.parse(delivery.body)
        except InvalidMessage as exc:
            detail = ErrorDetail(
                "InvalidMessage", "The message does not follow the terminate message schema.", exc.problems
            )
            return self._poisoned(delivery, attempt, detail, exc.job_id, exc.reason, started)

        client_request_id = request.client_request_id(delivery.message_id)
        try:
            outcome = self._client.terminate(request, client_request_id)
        except BatchCallFailed as exc:
            if exc.transient and attempt < self._max_dequeue_count:
                raise RetryLater(
                    f"terminate job={request.job_id} outcome=retry_later code={exc.detail.code}"
                    f" status={exc.detail.http_status} client_request_id={client_request_id}"
                    f" attempt={attempt}/{self._max_dequeue_count}"
                ) from exc
            return self._poisoned(delivery, attempt, exc.detail, request.job_id, request.reason, started)

        return Handled(
            result=Result.TERMINATED if outcome.verdict is Verdict.SUCCEEDED else Result.ALREADY_TERMINATED,
            job_id=outcome.job_id,
            http_status=outcome.http_status,
            code=outcome.code,
            request_id=outcome.request_id,
            client_request_id=outcome.client_request_id,
            attempt=attempt,
            duration=self._clock() - started,
        )

    def _poisoned(
        self,
        delivery: Delivery,
        attempt: int,
        detail: ErrorDetail,
        job_id: str | None,
        reason: str | None,
        started: float,
    ) -> Handled:
        self._poison.write(
            PoisonRecord(
                error=detail,
                attempts=attempt,
                message_id=delivery.message_id,
                original_message=delivery.body,
                job_id=job_id,
                reason=reason,
            )
        )
        return Handled(
            result=Result.POISONED,
            job_id=job_id,
            http_status=detail.http_status,
            code=detail.code,
            request_id=detail.request_id,
            client_request_id=detail.client_request_id,
            attempt=attempt,
            duration=self._clock() - started,
        )
