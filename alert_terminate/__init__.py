"""HTTP trigger: Azure Monitor alerts (common alert schema) or plain bodies → terminate requests on the queue."""

from __future__ import annotations

import json
import logging
from typing import Any

import azure.functions as func

from shared import wiring
from shared.alerts import AlertSettings, read_alert
from shared.errors import AlertRejected, ConfigurationError, EnqueueFailed

log = logging.getLogger("batch_terminator.alerts")


def main(req: func.HttpRequest) -> func.HttpResponse:
    """Validate the whole request, then enqueue one terminate request per job id; answer 202 with the ids."""
    if req.method.upper() != "POST":
        return _error(AlertRejected(405, "MethodNotAllowed", "use POST"), {"Allow": "POST"})
    try:
        settings = AlertSettings.from_env()
        alert = read_alert(req.get_body(), settings)
    except ConfigurationError as exc:
        log.error("alert_terminate misconfigured: %s", exc)
        return _error(AlertRejected(500, "ConfigurationError", "the function app is misconfigured; see its logs"))
    except AlertRejected as exc:
        log.warning("alert_terminate rejected: status=%d code=%s %s", exc.status, exc.code, exc.message)
        return _error(exc)
    if not alert.fired:
        log.info("alert_terminate rule=%r condition=%s: nothing to do", alert.rule, alert.monitor_condition)
        return _json(200, {"enqueued": [], "monitorCondition": alert.monitor_condition})
    try:
        queue = wiring.current().terminate_queue()
    except ConfigurationError as exc:
        log.error("alert_terminate misconfigured: %s", exc)
        return _error(AlertRejected(500, "ConfigurationError", "the function app is misconfigured; see its logs"))
    enqueued: list[str] = []
    for request in alert.requests:
        try:
            queue.enqueue(request)
        except EnqueueFailed as exc:
            # 503 makes the action group retry; terminating twice is harmless (409 JobBeingTerminated is done).
            log.error("alert_terminate rule=%r enqueue failed after %s: %s", alert.rule, enqueued, exc)
            body = AlertRejected(503, "EnqueueFailed", "the terminate queue did not take the request").document()
            return _json(503, {**body, "enqueued": enqueued}, {"Retry-After": "30"})
        enqueued.append(request.job_id)
    log.info(
        "alert_terminate source=%s rule=%r severity=%r enqueued=%s",
        alert.source,
        alert.rule,
        alert.severity,
        enqueued,
    )
    return _json(202, {"enqueued": enqueued})


def _error(exc: AlertRejected, headers: dict[str, str] | None = None) -> func.HttpResponse:
    return _json(exc.status, exc.document(), headers)


def _json(status: int, document: dict[str, Any], headers: dict[str, str] | None = None) -> func.HttpResponse:
    return func.HttpResponse(
        json.dumps(document, ensure_ascii=False), status_code=status, headers=headers, mimetype="application/json"
    )
