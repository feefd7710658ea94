"""One parsed alert → terminate messages for the jobs it names, or an incident (docs/CONTRACT.md §9, §10)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from shared.contract.errors import AlertRejected, BatchErrorDetail, EnqueueFailed, IncidentWriteFailed
from shared.contract.incident import Incident, Source
from shared.rules.accounts import DEFAULT_ALIAS, account_for, alias_for, terminate_request
from shared.rules.alerts import AlertRequest, AlertSettings
from shared.rules.incidents import alert_incident_id, body_incident_id, selectors_of
from shared.services.kill_switch import Incidents
from shared.storage.terminate_queue import TerminateQueue

log = logging.getLogger("batch_terminator.alerts")

RETRY_AFTER_SECONDS = "30"


@dataclass(frozen=True)
class Answer:
    """The HTTP answer: status, JSON document, extra headers."""

    status: int
    document: dict[str, Any]
    headers: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def error(cls, exc: AlertRejected, headers: Mapping[str, str] | None = None) -> Answer:
        """docs/CONTRACT.md §9's error body: {"error": {"code", "message", "values"}}."""
        return cls(exc.status, exc.document(), dict(headers or {}))


class AlertAction:
    """Acts on fired alerts; thread-safe, one per process. Never calls Batch."""

    def __init__(
        self,
        queue: TerminateQueue,
        accounts: Callable[[], Mapping[str, str]],
        incidents: Callable[[], Incidents],
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._queue = queue
        self._accounts = accounts  # read only when an alert needs them (a ConfigurationError propagates)
        self._incidents = incidents  # built only when an alert opens an incident (INCIDENT_QUEUE_NAME)
        self._clock = clock

    def act(self, alert: AlertRequest, settings: AlertSettings, body: bytes = b"") -> Answer:
        """Resolve the account; enqueue the named jobs, or open an incident when none is named: the HTTP answer."""
        try:
            alias = self._alias(alert)
        except AlertRejected as exc:
            return Answer.error(exc)
        if alert.selects:
            return self._open(alert, settings, alias, body)
        job_ids = list(alert.job_ids)
        requests = [terminate_request(job_id, alert.reason, alias) for job_id in job_ids]
        # Azure Monitor waits about 10 s for a webhook: 1,000 sends one after another would not fit.
        sent = self._queue.enqueue_many(requests)
        enqueued = sent.sent(job_ids)
        failure = sent.failure
        if failure is not None:
            # 503 makes the action group retry; terminating twice is harmless (409 JobBeingTerminated is done).
            log.error(
                "alert_terminate %s=%r account=%s enqueue failed after %d of %d: %s",
                alert.source,
                alert.rule,
                alias,
                len(enqueued),
                len(requests),
                failure,
            )
            refused = AlertRejected(
                503,
                "EnqueueFailed",
                f"the terminate queue did not take the requests ({len(enqueued)} of {len(requests)} enqueued)",
                (BatchErrorDetail("enqueued", ",".join(enqueued)),),
            )
            return Answer.error(refused, {"Retry-After": RETRY_AFTER_SECONDS})
        return Answer(202, {"enqueued": enqueued})

    def _open(self, alert: AlertRequest, settings: AlertSettings, alias: str, body: bytes) -> Answer:
        """Store the incident (accepted) and its plan command; 202 with its id at once (docs/CONTRACT.md §9)."""
        source = Source.BUDGET if alert.source == "budget" else Source.ALERT
        incident_id = (
            alert_incident_id(alert.alert_id, alert.fired_at, source)
            if alert.alert_id
            else body_incident_id(source, body)
        )
        incident = Incident.open(
            incident_id,
            source=source,
            reason=alert.reason or "",
            selectors=selectors_of(settings.selector),
            at=self._clock(),
            account=alias,
            rule=alert.rule,
        )
        try:
            stored, created = self._incidents().open(incident)
        except (IncidentWriteFailed, EnqueueFailed) as exc:
            log.error(
                "alert_terminate %s=%r could not open incident %s: %s", alert.source, alert.rule, incident_id, exc
            )
            refused = AlertRejected(
                503,
                "EnqueueFailed",
                "the incident or its plan command could not be stored; nothing was acted on",
                (BatchErrorDetail("incident", incident_id),),
            )
            return Answer.error(refused, {"Retry-After": RETRY_AFTER_SECONDS})
        log.info(
            "alert_terminate %s=%r account=%s incident=%s %s",
            alert.source,
            alert.rule,
            alias,
            stored.id,
            "opened" if created else f"already open ({stored.state.value})",
        )
        return Answer(202, {"incident": stored.id, "enqueued": []})

    def _alias(self, alert: AlertRequest) -> str:
        """The alias the messages carry: the alert's Batch account, the body's `account`, or the default."""
        if not alert.batch_accounts and alert.account is None and not alert.selects:
            return DEFAULT_ALIAS  # nothing to match: the configuration is not even read
        accounts = self._accounts()
        if alert.account is not None:
            return alias_for(alert.account, accounts)
        return account_for(alert.batch_accounts, accounts)
