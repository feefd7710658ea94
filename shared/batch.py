"""Batch *Job - Terminate* over REST: the request, the retry loop and the one classification table."""

from __future__ import annotations

import enum
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from http import HTTPStatus
from typing import Any, Protocol

import requests
from azure.core.credentials import AccessToken
from azure.core.exceptions import AzureError

from shared.errors import BatchCallFailed, BatchError, BatchErrorDetail
from shared.message import JOB_ID_PATTERN, TerminateRequest, format_http_date
from shared.outcome import Outcome, Result
from shared.settings import BATCH_SCOPE, Settings
from shared.telemetry import Telemetry

log = logging.getLogger("batch_terminator.batch")

CONTENT_TYPE = "application/json; odata=minimalmetadata"
USER_AGENT = "batch-terminator/0.1 python-requests"


class Verdict(enum.Enum):
    """What an answer from Batch means for the message."""

    SUCCEEDED = "succeeded"
    ALREADY_DONE = "already_terminated"
    REFRESH_TOKEN = "refresh_token"  # noqa: S105 - a verdict name, not a secret
    PERMANENT = "permanent"
    TRANSIENT = "transient"


# docs/CONTRACT.md §5 lives here and nowhere else.
ALREADY_DONE_CODES = frozenset({"JobCompleted", "JobBeingTerminated"})
PERMANENT_STATUSES = frozenset({400, 403, 404, 409, 412, 413})
TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


def classify(status: int, code: str | None) -> Verdict:
    """Map a Batch HTTP status and BatchError code to a verdict."""
    if 200 <= status < 300:
        return Verdict.SUCCEEDED
    if status == 409 and code in ALREADY_DONE_CODES:
        return Verdict.ALREADY_DONE
    if status == 401 or (status == 403 and code == "AuthenticationFailed"):
        # Batch answers a token it cannot authenticate either way; only a fresh token can help.
        return Verdict.REFRESH_TOKEN
    if status in TRANSIENT_STATUSES:
        return Verdict.TRANSIENT
    if status in PERMANENT_STATUSES:
        return Verdict.PERMANENT
    # Outside the documented set: a server-side 5xx may heal, anything else will not.
    return Verdict.TRANSIENT if status >= 500 else Verdict.PERMANENT


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry transient failures inside one invocation."""

    max_attempts: int = 4
    base_delay: float = 0.5
    max_delay: float = 8.0
    retry_after_cap: float = 15.0
    budget_seconds: float = 120.0
    # MSAL answers repeat token requests from a cached failure for 5 s after a 5xx; retrying sooner is wasted.
    credential_delay: float = 5.0

    def delay(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.retry_after_cap)
        ceiling = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
        return ceiling / 2 + rng.uniform(0, ceiling / 2)


class TokenCredential(Protocol):
    """The part of an azure-identity credential the client uses."""

    def get_token(self, *scopes: str, claims: str | None = None, **kwargs: Any) -> AccessToken: ...


class TokenProvider:
    """Caches one bearer token per process and refreshes it before expiry or after a 401."""

    def __init__(
        self,
        credential: TokenCredential,
        scope: str = BATCH_SCOPE,
        *,
        clock: Callable[[], float] = time.time,
        refresh_margin: float = 300.0,
    ) -> None:
        self._credential = credential
        self._scope = scope
        self._clock = clock
        self._margin = refresh_margin
        self._lock = threading.Lock()
        self._token: AccessToken | None = None
        self._refresh_at = 0.0

    def get(self) -> str:
        """A token that stays valid for the refresh margin (or half its life, when that is shorter)."""
        token = self._token
        if token is not None and self._clock() < self._refresh_at:
            return token.token
        with self._lock:
            token = self._token
            if token is None or self._clock() >= self._refresh_at:
                token = self._store(self._credential.get_token(self._scope))
            return token.token

    def refresh(self, rejected: str) -> str:
        """A new token after Batch rejected `rejected`; concurrent callers share one fetch."""
        with self._lock:
            current = self._token
            if current is not None and current.token != rejected:
                return current.token
            # A claims challenge makes MSAL skip its cache and ask the endpoint again.
            challenge = json.dumps({"access_token": {"nbf": {"essential": True, "value": str(int(self._clock()))}}})
            return self._store(self._credential.get_token(self._scope, claims=challenge)).token

    def _store(self, token: AccessToken) -> AccessToken:
        now = self._clock()
        # A short-lived token would otherwise be inside the margin from the start and fetched on every call.
        self._refresh_at = token.expires_on - min(self._margin, max(token.expires_on - now, 0) / 2)
        self._token = token
        return token


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


def error_detail(response: requests.Response, client_request_id: str | None) -> BatchError:
    """Read a BatchError body (or describe a body that is not one)."""
    code: str | None = None
    message = ""
    values: list[BatchErrorDetail] = []
    try:
        document = response.json() if response.content else None
    except ValueError:
        document = None
    if isinstance(document, dict):
        raw_code = document.get("code")
        code = raw_code if isinstance(raw_code, str) and raw_code else None
        raw_message = document.get("message")
        if isinstance(raw_message, dict):
            message = str(raw_message.get("value") or "")
        elif isinstance(raw_message, str):
            message = raw_message
        raw_values = document.get("values")
        if isinstance(raw_values, list):
            values = [
                BatchErrorDetail(str(item.get("key") or ""), str(item.get("value") or ""))
                for item in raw_values
                if isinstance(item, dict)
            ]
    if code is None and not 200 <= response.status_code < 300:
        code = _code_for_status(response.status_code)
        text = response.text[:512] if response.content else ""
        message = message or f"HTTP {response.status_code} {response.reason or ''} without a BatchError body".strip()
        if text:
            values.append(BatchErrorDetail("body", text))
    return BatchError(
        code=code or "",
        message=message,
        values=tuple(values),
        http_status=response.status_code,
        request_id=response.headers.get("request-id"),
        client_request_id=response.headers.get("client-request-id") or client_request_id,
    )


def _code_for_status(status: int) -> str:
    """A code for an answer without a BatchError: ServiceUnavailable when transient, else the status phrase."""
    if classify(status, None) is Verdict.TRANSIENT:
        return "ServiceUnavailable"  # docs/CONTRACT.md §5: Batch's code, else ServiceUnavailable
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        return f"Http{status}"
    return "".join(word[:1].upper() + word[1:] for word in phrase.replace("-", " ").split())


def _network_detail(what: str, exc: Exception, client_request_id: str) -> BatchError:
    return BatchError(
        code="ServiceUnavailable",
        message=f"{what}: {type(exc).__name__}",
        client_request_id=client_request_id,
    )


def _retry_after(headers: Mapping[str, str]) -> float | None:
    raw = headers.get("Retry-After")
    if not raw:
        return None
    try:
        return max(float(raw), 0.0)
    except ValueError:
        try:
            moment = parsedate_to_datetime(raw)
        except (TypeError, ValueError, IndexError):
            return None
        return max((moment - datetime.now(UTC)).total_seconds(), 0.0)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else 'no detail'}"[:512]
