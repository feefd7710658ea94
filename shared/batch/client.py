"""Batch *Job - Terminate* over REST: the request, the retry loop and the one classification table."""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

import requests
from azure.core.exceptions import AzureError

from shared.batch.answers import _first_line, _network_detail, _retry_after, error_detail
from shared.batch.retry import RetryPolicy, Verdict, classify
from shared.batch.tokens import TokenProvider
from shared.config.settings import Settings
from shared.contract.codec import format_http_date
from shared.contract.errors import BatchCallFailed, BatchError
from shared.contract.outcome import Outcome, Result
from shared.contract.terminate_request import JOB_ID_PATTERN, TerminateRequest
from shared.telemetry import Telemetry

log = logging.getLogger("batch_terminator.batch")

CONTENT_TYPE = "application/json; odata=minimalmetadata"
USER_AGENT = "batch-terminator/0.1 python-requests"


class BatchClient:
    """Calls Job - Terminate with retries; one instance per process, safe across threads."""

    def __init__(
        self,
        settings: Settings,
        tokens: TokenProvider,
        session: requests.Session,
        *,
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
        self._base = settings.batch_account_url
        self._query = f"?api-version={settings.batch_api_version}&timeout={settings.batch_timeout_seconds}"

    @property
    def account_url(self) -> str:
        """The Batch account URL every request goes to (no trailing slash)."""
        return self._base

    def terminate(self, request: TerminateRequest, client_request_id: str) -> Result:
        """Ask Batch to terminate the job: a Result with Batch's answer, or BatchCallFailed when it did not happen."""
        if not JOB_ID_PATTERN.fullmatch(request.job_id):
            raise ValueError("job id failed validation")  # parse() guarantees this; never build a bad URL
        url = f"{self._settings.account_url(request.account)}/jobs/{request.job_id}/terminate{self._query}"
        if request.force:
            url += "&force=true"
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
        if not any(url.startswith(f"{base}/") for base in self._settings.accounts.values()):
            raise ValueError("refusing to send the Batch token outside the configured accounts")
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
    ) -> tuple[requests.Response, BatchError, Verdict]:
        """The one retry loop: token, 401 refresh, transient backoff; returns an answer whose verdict is accepted."""
        started = self._clock()
        operation = "terminate" if method == "POST" else "read"
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
