"""HTTP trigger: Azure Monitor alerts (common alert schema) or plain bodies → terminate requests on the queue."""

from __future__ import annotations

import json
from typing import Any

import azure.functions as func

from shared import wiring
from shared.alerts import AlertSettings, read_alert
from shared.errors import AlertRejected, ConfigurationError, EnqueueFailed
from shared.telemetry import Telemetry


def main(req: func.HttpRequest) -> func.HttpResponse:
    """Validate the whole request, then enqueue one terminate request per job id; answer 202 with the ids."""
    telemetry = wiring.current().telemetry()
    if req.method.upper() != "POST":
        telemetry.alert_finished(outcome="rejected", http_status=405, code="MethodNotAllowed")
        return _error(AlertRejected(405, "MethodNotAllowed", "use POST"), {"Allow": "POST"})
    try:
        settings = AlertSettings.from_env()
        alert = read_alert(req.get_body(), settings)
    except ConfigurationError as exc:
        return _misconfigured(telemetry, exc)
    except AlertRejected as exc:
        telemetry.alert_finished(outcome="rejected", http_status=exc.status, code=exc.code, message=exc.message)
        return _error(exc)
    if not alert.fired:
        telemetry.alert_finished(
            outcome="resolved", http_status=200, rule=alert.rule, source=alert.source, message="nothing to do"
        )
        return _json(200, {"enqueued": [], "monitorCondition": alert.monitor_condition})
    try:
        queue = wiring.current().terminate_queue()
    except ConfigurationError as exc:
        return _misconfigured(telemetry, exc)
    enqueued: list[str] = []
    for request in alert.requests:
        try:
            queue.enqueue(request)
        except EnqueueFailed as exc:
            # 503 makes the action group retry; terminating twice is harmless (409 JobBeingTerminated is done).
            telemetry.alert_finished(
                outcome="enqueue_failed",
                http_status=503,
                code="EnqueueFailed",
                rule=alert.rule,
                source=alert.source,
                job_ids=enqueued,
                message=f"enqueue failed: {exc}",
            )
            body = AlertRejected(503, "EnqueueFailed", "the terminate queue did not take the request").document()
            return _json(503, {**body, "enqueued": enqueued}, {"Retry-After": "30"})
        enqueued.append(request.job_id)
    telemetry.alert_finished(
        outcome="enqueued", http_status=202, rule=alert.rule, source=alert.source, job_ids=enqueued
    )
    return _json(202, {"enqueued": enqueued})


def _misconfigured(telemetry: Telemetry, exc: ConfigurationError) -> func.HttpResponse:
    telemetry.alert_finished(outcome="misconfigured", http_status=500, code="ConfigurationError", message=str(exc))
    return _error(AlertRejected(500, "ConfigurationError", "the function app is misconfigured; see its logs"))


def _error(exc: AlertRejected, headers: dict[str, str] | None = None) -> func.HttpResponse:
    return _json(exc.status, exc.document(), headers)


def _json(status: int, document: dict[str, Any], headers: dict[str, str] | None = None) -> func.HttpResponse:
    return func.HttpResponse(
        json.dumps(document, ensure_ascii=False), status_code=status, headers=headers, mimetype="application/json"
    )
