"""Telemetry (docs/CONTRACT.md §8): one log record per finished message, and the app's metrics, over OpenTelemetry."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence, Sized
from typing import TYPE_CHECKING, Any, Protocol

from opentelemetry import metrics

from shared.contract.errors import (
    BatchCallFailed,
    ConfigurationError,
    EnqueueFailed,
    IncidentWriteFailed,
    PoisonWriteFailed,
    RetryLater,
    TerminatorError,
)
from shared.contract.outcome import Outcome, Result

if TYPE_CHECKING:  # only for type checks: a terminate_job cold start loads neither
    from shared.contract.incident import Incident

    class SweepSummary(Protocol):
        """What a sweep run reports (the sweep service's report has these); telemetry imports no service."""

        outcome: str
        listed: int
        kept: int
        dry_run: bool
        duration: float

        @property
        def matched(self) -> Sized: ...

        @property
        def enqueued(self) -> Sized: ...

        def summary(self) -> str: ...


LOGGER_NAME = "batch_terminator"
METER_NAME = "batch_terminator"

# The §8 attribute names, in the contract's order; each finished message's record carries exactly these.
RECORD_ATTRIBUTES = (
    "jobId",
    "account",
    "outcome",
    "code",
    "httpStatus",
    "requestId",
    "clientRequestId",
    "attempt",
    "durationMs",
    "messageId",
    "incident",
)

TERMINATIONS = "batch_terminator.terminations"
BATCH_DURATION = "batch_terminator.batch.duration"
BATCH_RETRIES = "batch_terminator.batch.retries"
POISON_WRITES = "batch_terminator.poison.writes"
SWEEP_RUNS = "batch_terminator.sweep.runs"
SWEEP_JOBS = "batch_terminator.sweep.jobs"
ALERT_REQUESTS = "batch_terminator.alert.requests"
ALERT_JOBS = "batch_terminator.alert.jobs"
CONFIRMATION_DURATION = "batch_terminator.confirmation.duration"
# A confirmed record's extra attribute (docs/CONTRACT.md §5b, §8): the terminate request to completion, by Batch.
TERMINATING_ATTRIBUTE = "terminatingMs"
# Boundaries for Batch latency in ms: a loopback emulator answers in ~1 ms, Batch in tens to hundreds.
LATENCY_BOUNDARIES_MS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000)
# Request-to-completion boundaries in ms: Batch ends a job in seconds, release tasks take minutes, stuck nodes hours.
COMPLETION_BOUNDARIES_MS = (
    1000,
    5000,
    15000,
    30000,
    60000,
    120000,
    300000,
    600000,
    900000,
    1800000,
    3600000,
    7200000,
    21600000,
    86400000,
)


def record_attributes(result: Result) -> dict[str, Any]:
    """The §8 `extra` attributes of one finished message (None where unknown: Azure Monitor leaves it out)."""
    return {
        "jobId": result.job_id,
        "account": result.account,
        "outcome": result.outcome.value,
        "code": result.code or None,
        "httpStatus": result.http_status,
        "requestId": result.request_id,
        "clientRequestId": result.client_request_id,
        "attempt": result.attempt,
        "durationMs": round(result.duration * 1000, 1),
        "messageId": result.message_id,
        "incident": result.incident,
    }


class Telemetry:
    """The records and metrics of one process; thread-safe (OpenTelemetry instruments are)."""

    def __init__(
        self,
        meter_provider: metrics.MeterProvider | None = None,
        *,
        logger: logging.Logger | None = None,
    ) -> None:
        # Without a provider the global one: the worker's Azure Monitor distro in Azure, a no-op elsewhere.
        provider = meter_provider or metrics.get_meter_provider()
        meter = provider.get_meter(METER_NAME)
        self._log = logger or logging.getLogger(LOGGER_NAME)
        if self._log.level == logging.NOTSET:
            # The records are the product's output: not left to whatever level the root logger happens to have.
            self._log.setLevel(logging.INFO)
        self._sweep_log = self._log.getChild("sweep")
        self._alert_log = self._log.getChild("alerts")
        self._incident_log = self._log
        self._terminations = meter.create_counter(
            TERMINATIONS, unit="{message}", description="Finished terminate messages by outcome and code"
        )
        self._batch_duration = meter.create_histogram(
            BATCH_DURATION,
            unit="ms",
            description="Duration of one Batch HTTP call (one attempt)",
            explicit_bucket_boundaries_advisory=LATENCY_BOUNDARIES_MS,
        )
        self._retries = meter.create_counter(
            BATCH_RETRIES, unit="{retry}", description="Batch calls retried inside an invocation"
        )
        self._poison_writes = meter.create_counter(
            POISON_WRITES, unit="{record}", description="Poison records written, by code"
        )
        self._sweep_runs = meter.create_counter(SWEEP_RUNS, unit="{run}", description="Sweep runs by outcome")
        self._sweep_jobs = meter.create_counter(
            SWEEP_JOBS, unit="{job}", description="Jobs a sweep listed, matched, enqueued or kept"
        )
        self._alert_requests = meter.create_counter(
            ALERT_REQUESTS, unit="{request}", description="alert_terminate requests by outcome and code"
        )
        self._alert_jobs = meter.create_counter(
            ALERT_JOBS, unit="{job}", description="Terminate requests enqueued by alert_terminate"
        )
        self._confirmation_duration = meter.create_histogram(
            CONFIRMATION_DURATION,
            unit="ms",
            description="Terminate request to job completion (Batch's state transition times), per confirmed job",
            explicit_bucket_boundaries_advisory=COMPLETION_BOUNDARIES_MS,
        )

    def finished(self, result: Result) -> None:
        """The one record of a finished message, and its count (and a confirmed job's time to completion)."""
        attributes: dict[str, Any] = record_attributes(result)
        seconds = result.terminating_seconds  # set on confirmed results only
        if result.outcome is Outcome.CONFIRMED:
            attributes[TERMINATING_ATTRIBUTE] = None if seconds is None else round(seconds * 1000, 1)
        level = logging.ERROR if result.outcome is Outcome.POISONED else logging.INFO
        self._log.log(level, "%s", result.describe(), extra=attributes)
        self._terminations.add(1, _clean({"outcome": attributes["outcome"], "code": attributes["code"]}))
        if seconds is not None:
            self._confirmation_duration.record(seconds * 1000)

    def handed_back(self, exc: TerminatorError, *, message_id: str | None, attempt: int) -> None:
        """The record of a message handed back to the host: not finished, so no outcome (the host delivers it again)."""
        setting = exc.setting if isinstance(exc, ConfigurationError) else None
        if isinstance(exc, RetryLater):
            cause = exc.__cause__
            event, code, text = (
                "retry_later",
                cause.error.code if isinstance(cause, BatchCallFailed) else None,
                str(exc),
            )
        elif isinstance(exc, PoisonWriteFailed):
            event, code = "poison_write_failed", "PoisonWriteFailed"
            text = f"terminate message_id={message_id} outcome=poison_write_failed: {exc}"
        elif isinstance(exc, IncidentWriteFailed):  # the incident table did not take a change (docs/CONTRACT.md §10)
            event, code = "incident_write_failed", "IncidentWriteFailed"
            text = f"kill_switch message_id={message_id} outcome=incident_write_failed: {exc}"
        elif isinstance(exc, EnqueueFailed):  # a confirmation check (docs/CONTRACT.md §5b) could not be scheduled
            event, code = "confirm_write_failed", "EnqueueFailed"
            text = f"terminate message_id={message_id} outcome=confirm_write_failed: {exc}"
        else:
            event, code = "configuration_error", "ConfigurationError"
            text = f"terminate message_id={message_id} outcome=configuration_error: {exc}"
        extra = {"event": event, "code": code, "messageId": message_id, "attempt": attempt, "setting": setting}
        self._log.log(logging.WARNING if event == "retry_later" else logging.ERROR, "%s", text, extra=extra)

    def incident_changed(self, incident: Incident) -> None:
        """The one record of an incident entering a state (docs/CONTRACT.md §8, §10); refused and failed at ERROR."""
        failed = incident.state.value in ("refused", "failed")
        code = incident.error.code if failed and incident.error is not None else None
        extra = {
            "incident": incident.id,
            "state": incident.state.value,
            "source": incident.source.value,
            "account": incident.account,
            "jobs": len(incident.jobs),
            "schedules": len(incident.schedules),
            "pools": len(incident.pools_to_scale),
            "code": code,
        }
        text = (
            f"incident {incident.id} state={incident.state.value} source={incident.source.value}"
            f" account={incident.account} jobs={extra['jobs']} schedules={extra['schedules']} pools={extra['pools']}"
            f" code={code}"
        )
        if failed and incident.error is not None and incident.error.message:
            text += f": {incident.error.message}"
        self._incident_log.log(logging.ERROR if failed else logging.INFO, "%s", text, extra=extra)

    def batch_call(self, operation: str, duration: float, http_status: int | None, code: str | None) -> None:
        """One Batch HTTP attempt took `duration` seconds (no status: it never answered)."""
        self._batch_duration.record(
            duration * 1000, _clean({"operation": operation, "httpStatus": http_status, "code": code or None})
        )

    def retried(self, operation: str, code: str | None) -> None:
        """A Batch call is about to be tried again."""
        self._retries.add(1, _clean({"operation": operation, "code": code or None}))

    def poison_written(self, code: str) -> None:
        """A poison record reached the poison queue."""
        self._poison_writes.add(1, {"code": code})

    def sweep_finished(self, report: SweepSummary) -> None:
        """The one record of a sweep run, and its counts."""
        extra = {
            "run": "sweep",
            "outcome": report.outcome,
            "listed": report.listed,
            "matched": len(report.matched),
            "enqueued": len(report.enqueued),
            "kept": report.kept,
            "dryRun": report.dry_run,
            "durationMs": round(report.duration * 1000, 1),
        }
        level = logging.INFO if report.outcome == "ok" else logging.ERROR
        self._sweep_log.log(level, "%s", report.summary(), extra=extra)
        self._sweep_runs.add(1, {"outcome": report.outcome})
        stages = {"listed": report.listed, "matched": len(report.matched), "enqueued": len(report.enqueued)}
        for stage, count in {**stages, "kept": report.kept}.items():
            if count:
                self._sweep_jobs.add(count, {"stage": stage})

    def alert_finished(
        self,
        *,
        outcome: str,
        http_status: int,
        code: str | None = None,
        rule: str | None = None,
        source: str | None = None,
        job_ids: Sequence[str] = (),
        message: str = "",
    ) -> None:
        """The one record of an alert_terminate request, and its counts."""
        extra = {
            "run": "alert",
            "outcome": outcome,
            "code": code,
            "httpStatus": http_status,
            "rule": rule,
            "source": source,
            "enqueued": len(job_ids),
            "jobIds": ",".join(job_ids),
        }
        text = (
            f"alert_terminate outcome={outcome} status={http_status} code={code} rule={rule!r} source={source}"
            f" enqueued={list(job_ids)}" + (f": {message}" if message else "")
        )
        level = logging.ERROR if http_status >= 500 else logging.WARNING if http_status >= 400 else logging.INFO
        self._alert_log.log(level, "%s", text, extra=extra)
        self._alert_requests.add(1, _clean({"outcome": outcome, "code": code}))
        if job_ids:
            self._alert_jobs.add(len(job_ids), _clean({"rule": rule}))


def _clean(attributes: Mapping[str, Any]) -> dict[str, Any]:
    """Metric attributes without the unknown ones (OpenTelemetry attribute values cannot be None)."""
    return {key: value for key, value in attributes.items() if value is not None}


# ---- the local run's view: a periodic one-line summary of the same metrics
