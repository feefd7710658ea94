"""Keeps what the host moved to a poison queue (docs/CONTRACT.md §6): each expiring entry becomes a full record."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from azure.core.exceptions import AzureError, ResourceNotFoundError
from azure.storage.queue import QueueClient, QueueMessage

from shared.contract.errors import BatchError, BatchErrorDetail, InvalidMessage, PoisonWriteFailed
from shared.contract.outcome import Outcome, Result
from shared.contract.poison_record import PoisonRecord, record_in
from shared.contract.terminate_request import TerminateRequest
from shared.storage.poison_writer import PoisonWriter
from shared.telemetry import Telemetry

log = logging.getLogger("batch_terminator.keeper")

HOST_GAVE_UP = "HostGaveUp"
HOST_GAVE_UP_MESSAGE = (
    "The Functions host moved this message to its poison queue after maxDequeueCount failed deliveries"
    " (a configuration error, a failed poison write, a timeout or a crash); the keeper kept it before it expired."
)
# A record written with time_to_live=-1 expires in year 9999; anything due sooner is at risk of being lost.
AT_RISK_WITHIN = timedelta(days=3650)


@dataclass
class KeepReport:
    """What one run did."""

    kept: int = 0
    skipped: int = 0
    outcome: str = "ok"
    sources: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """The run's one log line."""
        return (
            f"keep_poison outcome={self.outcome} kept={self.kept} already_kept={self.skipped}"
            f" sources={','.join(self.sources)}"
        )


class PoisonKeeper:
    """Rewrites each expiring entry of the host's poison queues as a never-expiring record, then deletes it."""

    def __init__(
        self,
        sources: Sequence[QueueClient],
        writer: PoisonWriter,
        *,
        max_dequeue_count: int,
        visibility_timeout: int = 300,
        budget_seconds: float = 120.0,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        telemetry: Telemetry | None = None,
    ) -> None:
        # Sources must read the stored text as it is (no decode policy): the record keeps it exactly.
        self._sources = tuple(sources)
        self._writer = writer
        self._max_dequeue_count = max_dequeue_count
        self._visibility_timeout = visibility_timeout
        # The pass must end before the held entries' visibility timeout does (and well under functionTimeout).
        self._budget = min(budget_seconds, visibility_timeout / 2)
        self._clock = clock
        self._now = now
        self._telemetry = telemetry or Telemetry()

    def run(self) -> KeepReport:
        """One pass over every source; a failed write stops the run and leaves that entry in place."""
        report = KeepReport(sources=[s.queue_name for s in self._sources])
        for source in self._sources:
            try:
                self._keep(source, report)
            except PoisonWriteFailed as exc:
                report.outcome = "poison_write_failed"
                log.error("keep_poison stopped: %s", exc)
                break
            except AzureError as exc:
                report.outcome = "storage_error"
                log.error("keep_poison stopped on %s: %s", source.queue_name, type(exc).__name__)
                break
        level = logging.INFO if report.outcome == "ok" else logging.ERROR
        extra = {"run": "keep_poison", "outcome": report.outcome, "kept": report.kept, "alreadyKept": report.skipped}
        log.log(level, "%s", report.summary(), extra=extra)
        return report

    def _keep(self, source: QueueClient, report: KeepReport) -> None:
        # Never-expiring records stay hidden until the pass ends, so the pass reaches every entry once.
        held: list[QueueMessage] = []
        try:
            deadline = self._clock() + self._budget
            # Every entry is read, however many records are in front of the host's: they are all held until the end.
            while self._clock() < deadline:
                try:
                    page = source.receive_messages(
                        messages_per_page=32, max_messages=32, visibility_timeout=self._visibility_timeout
                    )
                    messages = list(page)
                except ResourceNotFoundError:
                    return  # the host never moved anything here
                if not messages:
                    return
                for message in messages:
                    if not self._at_risk(message):
                        held.append(message)
                        report.skipped += 1
                        continue
                    record = self._record(message, source.queue_name)
                    try:
                        self._writer.write(record)
                    except PoisonWriteFailed:
                        held.append(message)  # visible again at once: nothing deleted, nothing lost
                        raise
                    # Deleted only after the record is written: a crash in between leaves a duplicate, not a loss.
                    source.delete_message(message)
                    report.kept += 1
                    # The message is finished now, as a poison record: its one §8 record, like any other.
                    self._telemetry.finished(
                        Result(
                            Outcome.POISONED,
                            record.job_id,
                            None,
                            record.error.code,
                            None,
                            None,
                            attempt=record.attempts,
                            message_id=record.message_id,
                        )
                    )
        finally:
            for message in held:
                # Failing that, it becomes visible on its own when the visibility timeout ends.
                with contextlib.suppress(AzureError):
                    source.update_message(message, visibility_timeout=0)

    def _at_risk(self, message: QueueMessage) -> bool:
        expires = message.expires_on
        return expires is not None and expires - self._now() < AT_RISK_WITHIN

    def _record(self, message: QueueMessage, queue_name: str) -> PoisonRecord:
        """The full record for one raw entry (or the record it already is, when it was one with an expiry)."""
        text = str(message.content or "")
        raw = text.encode("utf-8")
        document = record_in(raw)
        if document is not None:
            return PoisonRecord.from_document(document)
        job_id, reason = _request_fields(raw)
        values = [
            BatchErrorDetail("queue", queue_name),
            BatchErrorDetail("dequeueCount", str(self._max_dequeue_count)),
        ]
        if message.inserted_on is not None:
            values.append(BatchErrorDetail("insertedOn", _iso(message.inserted_on)))
        if message.expires_on is not None:
            values.append(BatchErrorDetail("expiresOn", _iso(message.expires_on)))
        return PoisonRecord(
            error=BatchError(HOST_GAVE_UP, HOST_GAVE_UP_MESSAGE, tuple(values)),
            attempts=self._max_dequeue_count,
            message_id=message.id,
            original_message=raw,
            job_id=job_id,
            reason=reason,
        )


def _request_fields(raw: bytes) -> tuple[str | None, str | None]:
    """jobId and reason when the entry is a readable terminate (or confirm) message; else nulls."""
    try:
        request = TerminateRequest.parse(raw)
    except InvalidMessage:
        return None, None
    return request.job_id, request.reason


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
