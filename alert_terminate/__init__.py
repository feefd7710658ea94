"""HTTP trigger: Azure Monitor alerts, budget notifications or plain bodies → terminate requests on the queue."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import azure.functions as func

from shared import wiring
from shared.contract.errors import AlertRejected, ConfigurationError
from shared.rules.alerts import AlertRequest, AlertSettings, read_alert
from shared.services.alert_terminate import Answer
from shared.telemetry import Telemetry


def main(req: func.HttpRequest) -> func.HttpResponse:
    """Validate the whole request, pick the jobs (named, or selected), enqueue one request each; 202 with the ids."""
    telemetry = wiring.current().telemetry()
    if req.method.upper() != "POST":
        telemetry.alert_finished(outcome="rejected", http_status=405, code="MethodNotAllowed")
        return _answer(Answer.error(AlertRejected(405, "MethodNotAllowed", "use POST"), {"Allow": "POST"}))
    try:
        settings = AlertSettings.from_env()
        alert = read_alert(req.get_body(), settings)
    except ConfigurationError as exc:
        return _misconfigured(telemetry, exc)
    except AlertRejected as exc:
        telemetry.alert_finished(outcome="rejected", http_status=exc.status, code=exc.code, message=exc.message)
        return _answer(Answer.error(exc))
    if not alert.fired:
        telemetry.alert_finished(
            outcome="resolved", http_status=200, rule=alert.rule, source=alert.source, message="nothing to do"
        )
        return _answer(Answer(200, {"enqueued": []}))
    try:
        answer = wiring.current().alert_action().act(alert, settings, req.get_body())
    except ConfigurationError as exc:
        return _misconfigured(telemetry, exc)
    _record(telemetry, alert, answer)
    return _answer(answer)


def _record(telemetry: Telemetry, alert: AlertRequest, answer: Answer) -> None:
    """The request's one telemetry record, read off the answer."""
    error = answer.document.get("error")
    code = error.get("code") if isinstance(error, dict) else None
    if answer.status == 202:
        outcome, job_ids = "enqueued", list(answer.document.get("enqueued", []))
    elif code == "EnqueueFailed":
        values = error.get("values", []) if isinstance(error, dict) else []
        done = next((v["value"] for v in values if v.get("key") == "enqueued"), "")
        outcome, job_ids = "enqueue_failed", [job_id for job_id in done.split(",") if job_id]
    else:
        outcome, job_ids = "rejected", []
    message = error.get("message", "") if isinstance(error, dict) else ""
    telemetry.alert_finished(
        outcome=outcome,
        http_status=answer.status,
        code=code,
        rule=alert.rule,
        source=alert.source,
        job_ids=job_ids,
        message=message,
    )


def _misconfigured(telemetry: Telemetry, exc: ConfigurationError) -> func.HttpResponse:
    telemetry.alert_finished(outcome="misconfigured", http_status=500, code="ConfigurationError", message=str(exc))
    rejected = AlertRejected(500, "ConfigurationError", "the function app is misconfigured; see its logs")
    return _answer(Answer.error(rejected))


def _answer(answer: Answer) -> func.HttpResponse:
    return _json(answer.status, answer.document, answer.headers)


def _json(status: int, document: dict[str, Any], headers: Mapping[str, str]) -> func.HttpResponse:
    return func.HttpResponse(
        json.dumps(document, ensure_ascii=False),
        status_code=status,
        headers=dict(headers),
        mimetype="application/json",
    )
