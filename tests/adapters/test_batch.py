"""The classification table, backoff and token cache of shared.batch, with hand-written fakes."""

from __future__ import annotations

import random
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests
from azure.core.credentials import AccessToken
from azure.core.exceptions import ClientAuthenticationError

from shared.batch.answers import error_detail
from shared.batch.client import BatchClient
from shared.batch.retry import RetryPolicy, Verdict, classify
from shared.batch.tokens import TokenProvider
from shared.config.settings import Settings
from shared.contract.errors import BatchCallFailed
from shared.contract.terminate_request import TerminateRequest


@pytest.mark.parametrize(
    ("status", "code", "verdict"),
    [
        (202, None, Verdict.SUCCEEDED),
        (409, "JobCompleted", Verdict.ALREADY_DONE),
        (409, "JobBeingTerminated", Verdict.ALREADY_DONE),
        (409, "JobBeingDeleted", Verdict.PERMANENT),
        (404, "JobNotFound", Verdict.PERMANENT),
        (400, "InvalidRequestBody", Verdict.PERMANENT),
        (403, "AuthorizationFailure", Verdict.PERMANENT),
        (412, "ConditionNotMet", Verdict.PERMANENT),
        (413, "RequestBodyTooLarge", Verdict.PERMANENT),
        (401, "AuthenticationFailed", Verdict.REFRESH_TOKEN),
        (401, None, Verdict.REFRESH_TOKEN),
        (403, "AuthenticationFailed", Verdict.REFRESH_TOKEN),
        (403, None, Verdict.PERMANENT),
        (403, "InsufficientAccountPermissions", Verdict.PERMANENT),
        (408, None, Verdict.TRANSIENT),
        (429, "TooManyRequests", Verdict.TRANSIENT),
        (500, "InternalError", Verdict.TRANSIENT),
        (502, None, Verdict.TRANSIENT),
        (503, "ServerBusy", Verdict.TRANSIENT),
        (504, None, Verdict.TRANSIENT),
        (507, None, Verdict.TRANSIENT),
        (405, None, Verdict.PERMANENT),
    ],
)
def test_classification_follows_the_contract(status: int, code: str | None, verdict: Verdict) -> None:
    assert classify(status, code) is verdict


def test_backoff_grows_with_jitter_and_is_capped() -> None:
    policy = RetryPolicy(base_delay=1.0, max_delay=4.0)
    rng = random.Random(7)
    delays = [policy.delay(n, None, rng) for n in (1, 2, 3, 4, 5)]
    assert 0.5 <= delays[0] <= 1.0
    assert 1.0 <= delays[1] <= 2.0
    assert all(2.0 <= d <= 4.0 for d in delays[2:])
    assert len({round(d, 6) for d in delays[2:]}) == 3, "jitter spreads retries"


def test_retry_after_wins_over_backoff_but_is_capped() -> None:
    policy = RetryPolicy(retry_after_cap=10.0)
    assert policy.delay(1, 4.0, random.Random()) == 4.0
    assert policy.delay(1, 99.0, random.Random()) == 10.0


class FakeCredential:
    """Counts token requests; hands out tok-1, tok-2, …"""

    def __init__(self, lifetime: float = 3600.0, now: float = 1000.0) -> None:
        self.calls: list[dict[str, Any]] = []
        self.lifetime = lifetime
        self.now = now
        self._lock = threading.Lock()

    def get_token(self, *scopes: str, claims: str | None = None, **kwargs: Any) -> AccessToken:
        with self._lock:
            self.calls.append({"scopes": scopes, "claims": claims})
            return AccessToken(f"tok-{len(self.calls)}", int(self.now + self.lifetime))


def test_token_is_fetched_once_and_reused() -> None:
    credential = FakeCredential()
    tokens = TokenProvider(credential, clock=lambda: credential.now)
    assert [tokens.get() for _ in range(5)] == ["tok-1"] * 5
    assert credential.calls == [{"scopes": ("https://batch.core.windows.net//.default",), "claims": None}]


def test_token_is_refreshed_before_it_expires() -> None:
    credential = FakeCredential(lifetime=600)
    now = [credential.now]
    tokens = TokenProvider(credential, clock=lambda: now[0], refresh_margin=300)
    assert tokens.get() == "tok-1"
    now[0] += 301
    assert tokens.get() == "tok-2"


def test_concurrent_callers_share_one_fetch() -> None:
    credential = FakeCredential()
    tokens = TokenProvider(credential, clock=lambda: credential.now)
    with ThreadPoolExecutor(16) as pool:
        assert set(pool.map(lambda _: tokens.get(), range(200))) == {"tok-1"}
    assert len(credential.calls) == 1


def test_refresh_after_401_bypasses_the_credential_cache_once() -> None:
    credential = FakeCredential()
    tokens = TokenProvider(credential, clock=lambda: credential.now)
    stale = tokens.get()
    with ThreadPoolExecutor(8) as pool:
        fresh = set(pool.map(lambda _: tokens.refresh(stale), range(32)))
    assert fresh == {"tok-2"}
    assert len(credential.calls) == 2
    assert credential.calls[1]["claims"], "a claims challenge makes MSAL skip its cache"


def response(status: int, body: bytes, headers: dict[str, str] | None = None) -> requests.Response:
    made = requests.Response()
    made.status_code = status
    made._content = body
    made.headers.update(headers or {})
    made.reason = "Reason"
    return made


def test_batch_error_body_is_read() -> None:
    body = (
        b'{"odata.metadata":"x","code":"JobNotFound","message":{"lang":"en-US","value":"The specified job does'
        b' not exist."},"values":[{"key":"k","value":"v"}]}'
    )
    detail = error_detail(response(404, body, {"request-id": "r-1"}), "c-1")
    assert (detail.code, detail.message, detail.http_status) == (
        "JobNotFound",
        "The specified job does not exist.",
        404,
    )
    assert [(v.key, v.value) for v in detail.values] == [("k", "v")]
    assert (detail.request_id, detail.client_request_id) == ("r-1", "c-1")


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (503, "ServiceUnavailable"),
        (500, "ServiceUnavailable"),
        (429, "ServiceUnavailable"),
        (599, "ServiceUnavailable"),
        (404, "NotFound"),
        (405, "MethodNotAllowed"),
        (499, "Http499"),
    ],
)
def test_error_without_batch_error_body_is_named_by_its_status(status: int, code: str) -> None:
    assert error_detail(response(status, b""), None).code == code


def test_error_without_batch_error_body_gets_a_code_and_keeps_the_body() -> None:
    detail = error_detail(response(502, b"<html>bad gateway</html>"), None)
    assert detail.code == "ServiceUnavailable"
    assert detail.message.startswith("HTTP 502")
    assert [(v.key, v.value) for v in detail.values] == [("body", "<html>bad gateway</html>")]


class FailingCredential:
    """A token endpoint that is down."""

    def get_token(self, *scopes: str, claims: str | None = None, **kwargs: Any) -> AccessToken:
        raise ClientAuthenticationError("token endpoint answered 500")


def test_token_failure_waits_out_msal_failure_cache_even_under_a_small_retry_after_cap() -> None:
    settings = Settings.from_env(
        {
            "BATCH_ACCOUNT_URL": "http://127.0.0.1:9",
            "TERMINATE_QUEUE_NAME": "batch-terminate",
            "AzureWebJobsStorage": "UseDevelopmentStorage=true",
        }
    )
    slept: list[float] = []
    policy = RetryPolicy(retry_after_cap=1.0, credential_delay=5.0, max_attempts=3)
    client = BatchClient(
        settings, TokenProvider(FailingCredential()), requests.Session(), policy=policy, sleep=slept.append
    )
    with pytest.raises(BatchCallFailed) as caught:
        client.terminate(TerminateRequest(job_id="job-1"), "c-1")
    assert caught.value.transient
    assert caught.value.error.code == "CredentialUnavailable"
    assert len(slept) == 2
    assert min(slept) >= 5.0


def test_short_lived_token_is_reused_for_half_its_life() -> None:
    credential = FakeCredential(lifetime=120)
    now = [credential.now]
    tokens = TokenProvider(credential, clock=lambda: now[0], refresh_margin=300)
    assert [tokens.get() for _ in range(3)] == ["tok-1"] * 3
    now[0] += 61
    assert tokens.get() == "tok-2"
