"""HTTP trigger: Azure Monitor alerts, budget notifications or plain bodies → terminate requests on the queue."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

import azure.functions as func

from shared import wiring
from shared.alert_action import Answer
from shared.alerts import AlertSettings, read_alert
from shared.errors import AlertRejected, ConfigurationError

log = logging.getLogger("batch_terminator.alerts")


def main(req: func.HttpRequest) -> func.HttpResponse:
    """Validate the whole request, pick the jobs (named, or selected), enqueue one request each; 202 with the ids."""
    if req.method.upper() != "POST":
        return _answer(Answer.error(AlertRejected(405, "MethodNotAllowed", "use POST"), {"Allow": "POST"}))
    try:
        settings = AlertSettings.from_env()
        alert = read_alert(req.get_body(), settings)
    except ConfigurationError as exc:
        return _misconfigured(exc)
    except AlertRejected as exc:
        log.warning("alert_terminate rejected: status=%d code=%s %s", exc.status, exc.code, exc.message)
        return _answer(Answer.error(exc))
    if not alert.fired:
        log.info("alert_terminate rule=%r condition=%s: nothing to do", alert.rule, alert.monitor_condition)
        return _answer(Answer(200, {"enqueued": []}))
    try:
        return _answer(wiring.current().alert_action().act(alert, settings))
    except ConfigurationError as exc:
        return _misconfigured(exc)


def _misconfigured(exc: ConfigurationError) -> func.HttpResponse:
    log.error("alert_terminate misconfigured: %s", exc)
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
