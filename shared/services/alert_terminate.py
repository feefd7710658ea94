"""One parsed alert → terminate messages: its account, the selection, the blast-radius limit, then the queue."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from shared.contract.errors import AlertRejected, BatchCallFailed, BatchErrorDetail
from shared.rules.accounts import DEFAULT_ALIAS, account_for, alias_for, terminate_request
from shared.rules.alerts import AlertRequest, AlertSettings, too_many_jobs
from shared.rules.selection import JobLister, select_jobs
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
    """Acts on fired alerts; thread-safe, one per process."""

    def __init__(
        self,
        queue: TerminateQueue,
        accounts: Callable[[], Mapping[str, str]],
        reader: Callable[[str], JobLister],
    ) -> None:
        self._queue = queue
        self._accounts = accounts  # read only when an alert needs them (a ConfigurationError propagates)
        self._reader = reader

    def act(self, alert: AlertRequest, settings: AlertSettings) -> Answer:
        """Resolve the account, select when no job is named, refuse over the limit, enqueue: the HTTP answer."""
        try:
            alias = self._alias(alert)
            job_ids = self._select(alert, settings, alias) if alert.selects else list(alert.job_ids)
        except AlertRejected as exc:
            return Answer.error(exc, {"Retry-After": RETRY_AFTER_SECONDS} if exc.status == 503 else None)
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

    def _alias(self, alert: AlertRequest) -> str:
        """The alias the messages carry: the alert's Batch account, the body's `account`, or the default."""
        if not alert.batch_accounts and alert.account is None and not alert.selects:
            return DEFAULT_ALIAS  # nothing to match: the configuration is not even read
        accounts = self._accounts()
        if alert.account is not None:
            return alias_for(alert.account, accounts)
        return account_for(alert.batch_accounts, accounts)

    def _select(self, alert: AlertRequest, settings: AlertSettings, alias: str) -> list[str]:
        """The account's active jobs the ALERT_SELECT_* settings pick, within ALERT_MAX_JOBS."""
        try:
            selection = select_jobs(self._reader(alias), settings.selector)
        except BatchCallFailed as exc:
            detail = exc.error
            status = 503 if exc.transient else 502
            raise AlertRejected(
                status,
                "BatchUnavailable" if exc.transient else "BatchListFailed",
                f"Job - List failed on account {alias!r}; nothing was enqueued",
                (BatchErrorDetail("code", detail.code), BatchErrorDetail("httpStatus", str(detail.http_status))),
            ) from exc
        count = len(selection.jobs)
        log.info(
            "alert_terminate %s=%r account=%s selector %s: listed=%d selected=%d kept=%d",
            alert.source,
            alert.rule,
            alias,
            settings.selector.describe(),
            selection.listed,
            count,
            selection.kept,
        )
        if count > settings.max_jobs:
            log.error(
                "alert_terminate %s=%r account=%s refused: %d jobs selected, more than ALERT_MAX_JOBS=%d; "
                "nothing enqueued",
                alert.source,
                alert.rule,
                alias,
                count,
                settings.max_jobs,
            )
            raise too_many_jobs(count, settings.max_jobs)
        return selection.job_ids
