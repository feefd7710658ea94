"""Batch's answer to each operation once the request passed the common checks (query, auth, headers).

Paths, methods and success statuses follow the 2025-06-01 spec and azure-batch 15.1.0's request builders
(azure/batch/_operations/_operations.py, which check each status):

    GET  /jobs                                          200  job.list
    GET  /jobs/{jobId}                                  200  job.get
    GET  /jobs/{jobId}/taskcounts                       200  job.taskcounts
    POST /jobs/{jobId}/terminate                        202  job.terminate
    GET  /jobs/{jobId}/jobpreparationandreleasetaskstatus  200  job.preparationandreleasestatus
    GET  /jobschedules                                  200  jobschedule.list
    GET  /jobschedules/{jobScheduleId}                  200  jobschedule.get
    POST /jobschedules/{jobScheduleId}/disable          204  jobschedule.disable
    POST /jobschedules/{jobScheduleId}/enable           204  jobschedule.enable
    POST /jobschedules/{jobScheduleId}/terminate        202  jobschedule.terminate
    GET  /pools/{poolId}                                200  pool.get
    POST /pools/{poolId}/resize                         202  pool.resize
    POST /pools/{poolId}/stopresize                     202  pool.stopresize
    POST /pools/{poolId}/disableautoscale               200  pool.disableautoscale
    POST /pools/{poolId}/enableautoscale                200  pool.enableautoscale
    GET  /pools/{poolId}/nodes                          200  node.list
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlencode

from local.batch_emulator.fleet import (
    DEALLOCATION_OPTIONS,
    MAX_EVALUATION_INTERVAL,
    MIN_EVALUATION_INTERVAL,
    MIN_RESIZE_TIMEOUT,
    parse_duration,
)
from local.batch_emulator.model import DEFAULT_TERMINATE_REASON, Account, Refusal
from local.batch_emulator.odata import JOB_SCHEDULES, JOBS, NODES, PREP_RELEASE, FilterError, Schema, parse_filter
from local.batch_emulator.wire import (
    JOB_FIELDS,
    NODE_FIELDS,
    POOL_FIELDS,
    PREP_RELEASE_FIELDS,
    SCHEDULE_FIELDS,
    Reply,
    http_date,
    job_document,
    node_document,
    parse_http_date,
    pool_document,
    prep_release_document,
    schedule_document,
)
from local.loopback import HttpResponse

MAX_RESULTS = 1000
_DIGITS = re.compile(r"\d{1,9}")

# A list's page: (documents, key to continue from), None for an unknown $skiptoken, or a Refusal.
Pager = Callable[[str | None, int, Callable[[Any], bool]], tuple[list[dict[str, Any]], str | None] | Refusal | None]


class Routes:
    """The operations of one account at one URL."""

    def __init__(self, account: Account, url: Callable[[], str]) -> None:
        self.account = account
        self._url = url

    @property
    def url(self) -> str:
        """The account URL (known once the server is listening)."""
        return self._url()

    def answer(self, operation: str, reply: Reply, resource_id: str | None) -> HttpResponse:
        """Answer a checked request for `operation` on `resource_id`."""
        rid = str(resource_id)
        match operation:
            case "job.terminate":
                return self._terminate(reply, rid)
            case "job.list":
                return self._list(reply, "/jobs", "jobs", JOBS, JOB_FIELDS, self._jobs)
            case "job.get":
                return self._job(reply, rid)
            case "job.taskcounts":
                return self._task_counts(reply, rid)
            case "job.preparationandreleasestatus":
                path = f"/jobs/{quote(rid, safe='')}/jobpreparationandreleasetaskstatus"
                pager = self._prep_release(rid)
                return self._list(
                    reply, path, "jobpreparationandreleasetaskstatus", PREP_RELEASE, PREP_RELEASE_FIELDS, pager
                )
            case "jobschedule.list":
                return self._list(
                    reply, "/jobschedules", "jobschedules", JOB_SCHEDULES, SCHEDULE_FIELDS, self._schedules
                )
            case "jobschedule.get":
                return self._schedule(reply, rid)
            case "jobschedule.disable" | "jobschedule.enable" | "jobschedule.terminate":
                return self._change_schedule(reply, rid, operation.split(".")[1])
            case "pool.get":
                return self._pool(reply, rid)
            case "node.list":
                path = f"/pools/{quote(rid, safe='')}/nodes"
                return self._list(reply, path, "nodes", NODES, NODE_FIELDS, self._nodes(rid))
            case _:
                return self._change_pool(reply, rid, operation.split(".")[1])

    # ---- jobs

    def _terminate(self, reply: Reply, job_id: str) -> HttpResponse:
        """Job - Terminate (the body is optional: terminateReason defaults to UserTerminate)."""
        request = reply.request
        body = json_body(reply)
        if isinstance(body, HttpResponse):
            return body
        given = body.get("terminateReason")
        if given is not None and not isinstance(given, str):
            values = [("PropertyName", "terminateReason"), ("Reason", "terminateReason must be a string.")]
            return reply.error(400, "InvalidRequestBody", values=values)
        reason = given if given is not None else DEFAULT_TERMINATE_REASON
        outcome = self.account.terminate(
            job_id,
            reason,
            client_request_id=request.headers.get("client-request-id"),
            force=reply.query.get("force") == "true",
            failed_condition=lambda job: failed_condition(request.headers, job.etag, job.last_modified),
        )
        if isinstance(outcome, Refusal):
            return reply.error(outcome.http_status, outcome.code, values=outcome.values)
        return reply.empty(202, self._written(outcome.etag, outcome.last_modified, f"/jobs/{outcome.id}"))

    def _job(self, reply: Reply, job_id: str) -> HttpResponse:
        """Job - Get."""
        selected = selection(reply, JOB_FIELDS)
        if isinstance(selected, HttpResponse):
            return selected
        job = self.account.job(job_id)
        if job is None:
            return reply.error(404, "JobNotFound")
        return self._read_one(reply, job.etag, job.last_modified, "jobs", job_document(job, self.url, selected))

    def _task_counts(self, reply: Reply, job_id: str) -> HttpResponse:
        """Job - Get Task Counts."""
        counts = self.account.task_counts(job_id)
        if counts is None:
            return reply.error(404, "JobNotFound")
        return reply.json(
            {
                "odata.metadata": f"{self.url}/$metadata#taskcounts/@Element",
                "taskCounts": counts,
                "taskSlotCounts": dict(counts),
            }
        )

    def _jobs(
        self, after: str | None, limit: int, keep: Callable[[Any], bool]
    ) -> tuple[list[dict[str, Any]], str | None] | None:
        paged = self.account.page(after, limit, keep)
        return None if paged is None else ([{"item": job, "key": job.id.lower()} for job in paged[0]], paged[1])

    def _prep_release(self, job_id: str) -> Pager:
        def pager(after: str | None, limit: int, keep: Callable[[Any], bool]) -> Any:
            rows = self.account.preparation_and_release(job_id)
            if isinstance(rows, Refusal):
                return rows
            items = [{"item": row, "key": row.node_id.lower(), "nodeId": row.node_id} for row in rows]
            return _slice(items, after, limit, keep)

        return pager

    # ---- job schedules

    def _schedule(self, reply: Reply, schedule_id: str) -> HttpResponse:
        """Job Schedule - Get."""
        selected = selection(reply, SCHEDULE_FIELDS)
        if isinstance(selected, HttpResponse):
            return selected
        schedule = self.account.schedule(schedule_id)
        if schedule is None:
            return reply.error(404, "JobScheduleNotFound")
        document = schedule_document(schedule, self.url, selected)
        return self._read_one(reply, schedule.etag, schedule.last_modified, "jobschedules", document)

    def _schedules(self, after: str | None, limit: int, keep: Callable[[Any], bool]) -> Any:
        paged = self.account.schedule_page(after, limit, keep)
        return None if paged is None else ([{"item": item, "key": item.id.lower()} for item in paged[0]], paged[1])

    def _change_schedule(self, reply: Reply, schedule_id: str, action: str) -> HttpResponse:
        """Job Schedule - Disable (204), Enable (204), Terminate (202)."""
        headers = reply.request.headers
        outcome = self.account.change_schedule(
            schedule_id,
            action,
            force=reply.query.get("force") == "true",
            failed_condition=lambda etag, modified: failed_condition(headers, etag, modified),
        )
        if isinstance(outcome, Refusal):
            return reply.error(outcome.http_status, outcome.code, values=outcome.values)
        status = 202 if action == "terminate" else 204
        written = self._written(outcome.etag, outcome.last_modified, f"/jobschedules/{outcome.id}")
        return reply.empty(status, written)

    # ---- pools and nodes

    def _pool(self, reply: Reply, pool_id: str) -> HttpResponse:
        """Pool - Get."""
        selected = selection(reply, POOL_FIELDS)
        if isinstance(selected, HttpResponse):
            return selected
        pool = self.account.pool(pool_id)
        if pool is None:
            return reply.error(404, "PoolNotFound")
        return self._read_one(reply, pool.etag, pool.last_modified, "pools", pool_document(pool, self.url, selected))

    def _nodes(self, pool_id: str) -> Pager:
        def pager(after: str | None, limit: int, keep: Callable[[Any], bool]) -> Any:
            paged = self.account.node_page(pool_id, after, limit, keep)
            if paged is None or isinstance(paged, Refusal):
                return paged
            return [{"item": node, "key": node.id.lower(), "pool": pool_id} for node in paged[0]], paged[1]

        return pager

    def _change_pool(self, reply: Reply, pool_id: str, action: str) -> HttpResponse:
        """Pool - Resize (202), Stop Resize (202), Disable Auto Scale (200), Enable Auto Scale (200)."""
        body: Mapping[str, Any] = {}
        if action in ("resize", "enableautoscale"):
            parsed = json_body(reply)
            if isinstance(parsed, HttpResponse):
                return parsed
            checked = (_resize_body if action == "resize" else _autoscale_body)(reply, parsed)
            if isinstance(checked, HttpResponse):
                return checked
            body = checked
        headers = reply.request.headers
        outcome = self.account.change_pool(
            pool_id, action, body, lambda etag, modified: failed_condition(headers, etag, modified)
        )
        if isinstance(outcome, Refusal):
            return reply.error(outcome.http_status, outcome.code, values=outcome.values)
        status = 202 if action in ("resize", "stopresize") else 200
        return reply.empty(status, self._written(outcome.etag, outcome.last_modified, f"/pools/{outcome.id}"))

    # ---- shared

    def _written(self, etag: str, last_modified: datetime, path: str) -> dict[str, str]:
        """The headers of an accepted write."""
        return {"ETag": etag, "Last-Modified": http_date(last_modified), "DataServiceId": f"{self.url}{path}"}

    def _read_one(
        self, reply: Reply, etag: str, last_modified: datetime, kind: str, document: dict[str, Any]
    ) -> HttpResponse:
        """A Get's answer, honouring one If-* header (304 for a read's failed condition, Batch's table)."""
        headers = {"ETag": etag, "Last-Modified": http_date(last_modified)}
        failed = failed_condition(reply.request.headers, etag, last_modified)
        if failed in ("If-None-Match", "If-Modified-Since"):
            return reply.empty(304, headers)
        if failed is not None:
            return reply.error(412, "ConditionNotMet", values=[("HeaderName", failed)])
        response = reply.json({"odata.metadata": f"{self.url}/$metadata#{kind}/@Element", **document})
        response.headers.update(headers)
        return response

    def _list(
        self, reply: Reply, path: str, kind: str, schema: Schema, fields: tuple[str, ...], pager: Pager
    ) -> HttpResponse:
        """A list with $filter (the schema's subset), $select, maxresults and $skiptoken paging (odata.nextLink)."""
        query = reply.query
        selected = selection(reply, fields)
        if isinstance(selected, HttpResponse):
            return selected
        keep: Callable[[Any], bool] = _every
        filter_text = query.get("$filter")
        if filter_text is not None:
            try:
                keep = parse_filter(filter_text, schema)
            except FilterError as exc:
                return reply.bad_query("$filter", filter_text, str(exc))
        raw_max = query.get("maxresults", str(MAX_RESULTS))
        if not (_DIGITS.fullmatch(raw_max) and 1 <= int(raw_max) <= MAX_RESULTS):
            return reply.bad_query("maxresults", raw_max, f"maxresults must be from 1 to {MAX_RESULTS}.")
        token = query.get("$skiptoken")
        # Each pager filters what its rows are made of: jobs, schedules and nodes, or preparation/release rows.
        paged = pager(token, int(raw_max), keep)
        if isinstance(paged, Refusal):
            return reply.error(paged.http_status, paged.code, values=paged.values)
        if paged is None:
            return reply.bad_query("$skiptoken", str(token), "Unknown continuation token.")
        entries, next_key = paged
        documents = [self._render(kind, entry, selected) for entry in entries]
        payload: dict[str, Any] = {"odata.metadata": f"{self.url}/$metadata#{kind}", "value": documents}
        if next_key is not None:
            params = {name: value for name, value in reply.request.query.items() if name.lower() != "$skiptoken"}
            params["$skiptoken"] = next_key
            payload["odata.nextLink"] = f"{self.url}{path}?" + urlencode(params, quote_via=quote, safe="$,'")
        return reply.json(payload)

    def _render(self, kind: str, entry: dict[str, Any], selected: tuple[str, ...]) -> dict[str, Any]:
        item = entry["item"]
        match kind:
            case "jobs":
                return job_document(item, self.url, selected)
            case "jobschedules":
                return schedule_document(item, self.url, selected)
            case "nodes":
                return node_document(item, entry["pool"], self.url, selected)
            case _:
                return prep_release_document(item, self.url, selected)


def _every(item: Any) -> bool:
    """The predicate of a list without $filter."""
    return True


def _slice(
    items: list[dict[str, Any]], after: str | None, limit: int, keep: Callable[[Any], bool]
) -> tuple[list[dict[str, Any]], str | None] | None:
    """Page a list that is computed whole (preparation/release rows): up to `limit` kept items after `after`."""
    keys = [item["key"] for item in items]
    start = 0
    if after is not None:
        if after not in keys:
            return None
        start = keys.index(after) + 1
    kept = [item for item in items[start:] if keep(item)]
    page = kept[:limit]
    return page, (page[-1]["key"] if len(kept) > limit else None)


def json_body(reply: Reply) -> dict[str, Any] | HttpResponse:
    """The request's JSON object body ({} when there is none), or Batch's 400 for a bad one."""
    request = reply.request
    if not request.body:
        return {}
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("application/json"):
        return reply.bad_header("Content-Type", content_type)
    try:
        payload = json.loads(request.body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return reply.error(400, "InvalidRequestBody", values=[("Reason", "The body is not UTF-8 JSON.")])
    if not isinstance(payload, dict):
        return reply.error(400, "InvalidRequestBody", values=[("Reason", "The body is not a JSON object.")])
    return payload


def _bad_property(reply: Reply, name: str, value: Any, reason: str) -> HttpResponse:
    """400 InvalidPropertyValue (Batch's error table) naming the property."""
    values = [("PropertyName", name), ("PropertyValue", json.dumps(value)), ("Reason", reason)]
    return reply.error(400, "InvalidPropertyValue", values=values)


def _resize_body(reply: Reply, body: dict[str, Any]) -> dict[str, Any] | HttpResponse:
    """BatchPoolResizeOptions: node counts (non-negative integers), resizeTimeout, nodeDeallocationOption."""
    checked: dict[str, Any] = {}
    for name in ("targetDedicatedNodes", "targetLowPriorityNodes"):
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            return _bad_property(reply, name, value, f"{name} must be a non-negative integer.")
        checked[name] = value
    timeout = body.get("resizeTimeout")
    if timeout is not None:
        parsed = parse_duration(timeout) if isinstance(timeout, str) else None
        if parsed is None or parsed < MIN_RESIZE_TIMEOUT:
            return _bad_property(
                reply, "resizeTimeout", timeout, "resizeTimeout must be a duration of 5 minutes or more."
            )
        checked["resizeTimeout"] = parsed
    option = body.get("nodeDeallocationOption")
    if option is not None and option not in DEALLOCATION_OPTIONS:
        return _bad_property(reply, "nodeDeallocationOption", option, f"One of {', '.join(DEALLOCATION_OPTIONS)}.")
    return checked


def _autoscale_body(reply: Reply, body: dict[str, Any]) -> dict[str, Any] | HttpResponse:
    """BatchPoolEnableAutoScaleOptions: autoScaleFormula, autoScaleEvaluationInterval (5 minutes to 168 hours)."""
    checked: dict[str, Any] = {}
    formula = body.get("autoScaleFormula")
    if formula is not None:
        if not isinstance(formula, str) or not formula.strip():
            return _bad_property(reply, "autoScaleFormula", formula, "autoScaleFormula must be a formula.")
        checked["autoScaleFormula"] = formula
    interval = body.get("autoScaleEvaluationInterval")
    if interval is not None:
        parsed = parse_duration(interval) if isinstance(interval, str) else None
        if parsed is None or not MIN_EVALUATION_INTERVAL <= parsed <= MAX_EVALUATION_INTERVAL:
            reason = "autoScaleEvaluationInterval must be a duration from 5 minutes to 168 hours."
            return _bad_property(reply, "autoScaleEvaluationInterval", interval, reason)
        checked["autoScaleEvaluationInterval"] = parsed
    return checked


def selection(reply: Reply, fields: tuple[str, ...]) -> tuple[str, ...] | HttpResponse:
    """The $select fields (empty = all), or 400 InvalidQueryParameterValue naming the first unknown one."""
    value = reply.query.get("$select")
    names = tuple(name.strip() for name in (value or "").split(",") if name.strip())
    unknown = [name for name in names if name not in fields]
    if unknown:
        return reply.bad_query("$select", str(value), f"Unknown property {unknown[0]!r}.")
    return names


def failed_condition(headers: Mapping[str, str], etag: str, last_modified: datetime) -> str | None:
    """The name of the If-* header a resource with this ETag and Last-Modified fails, or None."""

    def tags(value: str) -> set[str]:
        return {tag.strip().removeprefix("W/").strip('"') for tag in value.split(",")}

    if_match = headers.get("if-match")
    if if_match is not None and if_match.strip() != "*" and etag not in tags(if_match):
        return "If-Match"
    if_none_match = headers.get("if-none-match")
    if if_none_match is not None and (if_none_match.strip() == "*" or etag in tags(if_none_match)):
        return "If-None-Match"
    # HTTP dates have whole seconds, so compare at that resolution.
    modified = last_modified.replace(microsecond=0)
    since = parse_http_date(headers.get("if-modified-since", ""))
    if since is not None and modified <= since:
        return "If-Modified-Since"
    unmodified_since = parse_http_date(headers.get("if-unmodified-since", ""))
    if unmodified_since is not None and modified > unmodified_since:
        return "If-Unmodified-Since"
    return None


__all__ = ["MAX_RESULTS", "Routes", "failed_condition", "json_body", "selection"]
