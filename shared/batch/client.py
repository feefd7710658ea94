"""One Batch account over REST: Job - Terminate, reads and actions, all through one retry loop."""

from __future__ import annotations

import json
import logging
import random
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import requests
from azure.core.exceptions import AzureError

from shared.batch.answers import _first_line, _network_detail, _retry_after, error_detail, unexpected
from shared.batch.retry import RetryPolicy, Verdict, classify
from shared.batch.tokens import TokenProvider
from shared.batch.urls import BatchUrls, encode
from shared.config.settings import Settings
from shared.contract.codec import format_http_date
from shared.contract.errors import BatchCallFailed, BatchError
from shared.contract.outcome import Outcome, Result
from shared.contract.terminate_request import DEFAULT_ACCOUNT, TerminateRequest
from shared.telemetry import Telemetry

log = logging.getLogger("batch_terminator.batch")

CONTENT_TYPE = "application/json; odata=minimalmetadata"
USER_AGENT = "batch-terminator/0.1 python-requests"
# A safety net against a service that keeps answering with a nextLink: 1000 pages of up to 1000 items.
MAX_PAGES = 1000


class BatchClient:
    """One configured account's requests with retries; one instance per account and process, safe across threads."""

    def __init__(
        self,
        settings: Settings,
        tokens: TokenProvider,
        session: requests.Session,
        *,
        account: str = DEFAULT_ACCOUNT,
        policy: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        http_timeout: float | None = None,
        telemetry: Telemetry | None = None,
    ) -> None:
        self._settings = settings
        self._telemetry = telemetry or Telemetry()
        self._http_timeout = http_timeout or settings.http_timeout_seconds
        self._tokens = tokens
        self._session = session
        self._policy = policy or RetryPolicy()
        self._sleep = sleep
        self._clock = clock
        self._rng = rng or random.Random()
        self.account = account
        self.urls = BatchUrls.of(settings, account)

    @property
    def account_url(self) -> str:
        """The Batch account URL every request goes to (no trailing slash)."""
        return self.urls.account_url

    def terminate(self, request: TerminateRequest, client_request_id: str) -> Result:
        """Ask Batch to terminate the job: a Result with Batch's answer, or BatchCallFailed when it did not happen."""
        if request.account != self.account:
            raise ValueError(f"a request for account {request.account!r} sent to {self.account!r}")
        url = self.urls.job(request.job_id, "terminate", query={"force": "true"} if request.force else None)
        body = json.dumps({"terminateReason": request.terminate_reason}).encode("utf-8")
        response, detail, verdict = self._send(
            "POST",
            url,
            body=body,
            headers={"Content-Type": CONTENT_TYPE, **_conditional_headers(request)},
            client_request_id=client_request_id,
            accept=_TERMINATE_ACCEPTS,
            label=f"terminate job={request.job_id}",
        )
        return Result(
            outcome=Outcome.TERMINATED if verdict is Verdict.SUCCEEDED else Outcome.ALREADY_TERMINATED,
            job_id=request.job_id,
            http_status=response.status_code,
            code=None if verdict is Verdict.SUCCEEDED else detail.code,
            request_id=response.headers.get("request-id"),
            client_request_id=response.headers.get("client-request-id") or client_request_id,
        )

    def get(self, url: str, client_request_id: str, *, label: str) -> requests.Response:
        """GET a Batch resource with terminate's token, retry and classification; a 2xx answer or BatchCallFailed."""
        self._own(url)
        response, _, _ = self._send(
            "GET",
            url,
            body=None,
            headers={},
            client_request_id=client_request_id,
            accept=_READ_ACCEPTS,
            label=label,
        )
        return response

    def get_json(self, url: str, *, label: str) -> dict[str, Any]:
        """GET a JSON object (a fresh client-request-id); BatchCallFailed when it fails or is not an object."""
        response = self.get(url, str(uuid.uuid4()), label=label)
        try:
            document = response.json()
        except ValueError as exc:
            raise unexpected(f"{label}: the answer is not JSON", ("body", response.text[:200])) from exc
        if not isinstance(document, dict):
            raise unexpected(f"{label}: the answer is not a JSON object")
        return document

    def pages(self, url: str, *, label: str, max_pages: int = MAX_PAGES) -> Iterator[dict[str, Any]]:
        """Every `value` entry of a list operation, following odata.nextLink only within this account and path."""
        path = urlsplit(url).path.rstrip("/")
        seen: set[str] = set()
        next_url: str | None = url
        while next_url is not None:
            seen.add(next_url)
            document = self.get_json(next_url, label=label)
            values = document.get("value")
            if not isinstance(values, list):
                raise unexpected(f"{label}: the answer has no value array")
            yield from (item for item in values if isinstance(item, dict))
            next_url = self._next_url(document.get("odata.nextLink"), path)
            if next_url is not None and (next_url in seen or len(seen) >= max_pages):
                raise unexpected(f"paging did not end after {len(seen)} page(s)", ("odata.nextLink", next_url))

    def post(self, url: str, body: Mapping[str, Any] | None, *, operation: str, label: str) -> requests.Response:
        """POST an action (a job schedule's or a pool's); its 2xx answer, or BatchCallFailed with Batch's error."""
        self._own(url)
        data = json.dumps(body).encode("utf-8") if body is not None else None
        response, _, _ = self._send(
            "POST",
            url,
            body=data,
            headers={"Content-Type": CONTENT_TYPE} if data is not None else {},
            client_request_id=str(uuid.uuid4()),
            accept=_READ_ACCEPTS,
            label=label,
            operation=operation,
        )
        return response

    def _own(self, url: str) -> None:
        if not url.startswith(f"{self.urls.account_url}/"):
            raise ValueError("refusing to send the Batch token outside the configured account")

    def _next_url(self, link: object, path: str) -> str | None:
        """The next page's URL, only if it stays on this account and the listed path."""
        if link is None or link == "":
            return None
        if not isinstance(link, str):
            raise unexpected("odata.nextLink is not a string")
        try:
            parts = urlsplit(link)
            origin = _origin(link)
        except ValueError as exc:
            raise unexpected("odata.nextLink is not a URL", ("odata.nextLink", link[:200])) from exc
        if (
            origin != _origin(self.urls.account_url)
            or parts.path.rstrip("/") != path
            or parts.username
            or parts.fragment
        ):
            # Following it would hand the Batch token to whoever the link names.
            raise unexpected("odata.nextLink leaves the configured Batch account", ("odata.nextLink", link[:200]))
        params = dict(parse_qsl(parts.query, keep_blank_values=True))
        params.setdefault("api-version", self.urls.api_version)
        return f"{self.urls.account_url}{path}?{encode(params)}"

    def _send(
        self,
        method: str,
        url: str,
        *,
        body: bytes | None,
        headers: Mapping[str, str],
        client_request_id: str,
        accept: frozenset[Verdict],
        label: str,
        operation: str | None = None,
    ) -> tuple[requests.Response, BatchError, Verdict]:
        """The one retry loop: token, 401 refresh, transient backoff; returns an answer whose verdict is accepted."""
        started = self._clock()
        operation = operation or ("terminate" if method == "POST" else "read")
        attempt = 0
        refreshed = False
        sent = False  # whether any request reached the wire: a record names a client-request-id only then
        rejected: str | None = None  # a token Batch answered 401 to, while its refresh has not succeeded
        while True:
            attempt += 1
            retry_after: float | None = None
            floor = 0.0
            try:
                if rejected is None:
                    token = self._tokens.get()
                else:  # the refresh failed last time: ask again rather than resend the rejected token
                    token = self._tokens.refresh(rejected)
                    rejected = None
            except AzureError as exc:
                detail = BatchError(
                    "CredentialUnavailable", _first_line(exc), client_request_id=client_request_id if sent else None
                )
                floor = self._policy.credential_delay
            else:
                sent = True
                call_started = self._clock()
                try:
                    response = self._session.request(
                        method,
                        url,
                        data=body,
                        headers={**self._headers(token, client_request_id), **headers},
                        timeout=self._http_timeout,
                        allow_redirects=False,
                    )
                except requests.Timeout as exc:
                    detail = _network_detail("timed out waiting for Batch", exc, client_request_id)
                    self._telemetry.batch_call(operation, self._clock() - call_started, None, detail.code)
                except requests.RequestException as exc:
                    detail = _network_detail("could not reach Batch", exc, client_request_id)
                    self._telemetry.batch_call(operation, self._clock() - call_started, None, detail.code)
                else:
                    detail = error_detail(response, client_request_id)
                    self._telemetry.batch_call(
                        operation, self._clock() - call_started, response.status_code, detail.code
                    )
                    verdict = classify(response.status_code, detail.code)
                    if verdict in accept:
                        return response, detail, verdict
                    if verdict is Verdict.REFRESH_TOKEN and not refreshed:
                        refreshed = True
                        rejected = token
                        log.warning("%s got %d %s; fetching a fresh token", label, response.status_code, detail.code)
                        try:
                            self._tokens.refresh(token)
                            rejected = None
                        except AzureError as exc:
                            detail = BatchError(
                                "CredentialUnavailable", _first_line(exc), client_request_id=client_request_id
                            )
                            floor = self._policy.credential_delay
                        else:
                            self._telemetry.retried(operation, detail.code)
                            continue
                    elif verdict is Verdict.TRANSIENT:
                        retry_after = _retry_after(response.headers)
                    else:
                        raise BatchCallFailed(detail, attempts=attempt, transient=False)
            elapsed = self._clock() - started
            delay = max(self._policy.delay(attempt, retry_after, self._rng), floor)
            if attempt >= self._policy.max_attempts or elapsed + delay > self._policy.budget_seconds:
                raise BatchCallFailed(detail, attempts=attempt, transient=True)
            log.warning(
                "%s retry attempt=%d code=%s status=%s delay=%.2fs",
                label,
                attempt,
                detail.code,
                detail.http_status,
                delay,
            )
            self._telemetry.retried(operation, detail.code)
            self._sleep(delay)

    @staticmethod
    def _headers(token: str, client_request_id: str) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {token}",
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
            "client-request-id": client_request_id,
            "return-client-request-id": "true",
            "ocp-date": format_http_date(datetime.now(UTC)),
        }


# Terminate is done when Batch accepted it or the job already is where it was asked to go; a read only on 2xx.
_TERMINATE_ACCEPTS = frozenset({Verdict.SUCCEEDED, Verdict.ALREADY_DONE})
_READ_ACCEPTS = frozenset({Verdict.SUCCEEDED})


_DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or _DEFAULT_PORTS.get(scheme)


def _conditional_headers(request: TerminateRequest) -> dict[str, str]:
    headers: dict[str, str] = {}
    if request.if_match is not None:
        headers["If-Match"] = request.if_match
    if request.if_none_match is not None:
        headers["If-None-Match"] = request.if_none_match
    if request.if_modified_since is not None:
        headers["If-Modified-Since"] = format_http_date(request.if_modified_since)
    if request.if_unmodified_since is not None:
        headers["If-Unmodified-Since"] = format_http_date(request.if_unmodified_since)
    return headers
