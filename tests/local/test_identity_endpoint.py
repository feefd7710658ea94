"""The loopback App Service managed-identity endpoint, over real sockets and through real azure-identity."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from azure.identity import CredentialUnavailableError, ManagedIdentityCredential

from local.batch_emulator import BatchEmulator
from local.identity import APP_SERVICE_API_VERSION, IdentityEndpoint

pytestmark = pytest.mark.integration

BATCH_RESOURCE = "https://batch.core.windows.net/"
BATCH_SCOPE = "https://batch.core.windows.net//.default"
OTHER_ENVIRONMENT = ("IDENTITY_SERVER_THUMBPRINT", "MSI_ENDPOINT", "MSI_SECRET", "IMDS_ENDPOINT", "AZURE_CLIENT_ID")


@pytest.fixture
def identity() -> Iterator[IdentityEndpoint]:
    """A running endpoint with default settings."""
    with IdentityEndpoint() as endpoint:
        yield endpoint


@pytest.fixture
def app_service_env(identity: IdentityEndpoint, monkeypatch: pytest.MonkeyPatch) -> IdentityEndpoint:
    """The environment App Service gives a Function, pointing at the endpoint."""
    for name in OTHER_ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    for name, value in identity.environ().items():
        monkeypatch.setenv(name, value)
    return identity


def fetch(
    endpoint: IdentityEndpoint,
    *,
    secret: str | None = None,
    api_version: str | None = APP_SERVICE_API_VERSION,
    resource: str | None = BATCH_RESOURCE,
    **extra: str,
) -> requests.Response:
    """Ask for a token the way msal's App Service path does."""
    params: dict[str, Any] = {"api-version": api_version, "resource": resource, **extra}
    headers = {"X-IDENTITY-HEADER": endpoint.secret if secret is None else secret, "Metadata": "true"}
    return requests.get(
        endpoint.url,
        params={name: value for name, value in params.items() if value is not None},
        headers=headers,
        timeout=10,
    )


# ---------------------------------------------------------------- protocol


def test_environ_points_at_the_token_url_with_the_secret(identity: IdentityEndpoint) -> None:
    assert identity.url == f"http://127.0.0.1:{identity.port}/msi/token"
    assert identity.environ() == {"IDENTITY_ENDPOINT": identity.url, "IDENTITY_HEADER": identity.secret}
    assert len(identity.secret) >= 16
    assert IdentityEndpoint().secret != IdentityEndpoint().secret


def test_token_response_has_the_app_service_shape(identity: IdentityEndpoint) -> None:
    before = int(time.time())
    response = fetch(identity)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    body = response.json()
    assert set(body) == {"access_token", "expires_on", "resource", "token_type", "client_id"}
    assert body["access_token"].startswith("tok-")
    assert isinstance(body["expires_on"], str)
    assert before + 3600 <= int(body["expires_on"]) <= int(time.time()) + 3600
    assert (body["resource"], body["token_type"]) == (BATCH_RESOURCE, "Bearer")
    assert body["client_id"] == identity.system_client_id
    assert identity.issued == [body["access_token"]]
    assert identity.fetches == 1


def test_each_fetch_issues_a_new_valid_token(identity: IdentityEndpoint) -> None:
    tokens = [fetch(identity).json()["access_token"] for _ in range(3)]
    assert len(set(tokens)) == 3
    assert identity.issued == tokens
    assert all(identity.is_valid(token) for token in tokens)
    assert identity.fetches == 3


def test_requests_are_recorded_with_query_and_lowercase_headers(identity: IdentityEndpoint) -> None:
    fetch(identity, client_id="abc")
    [(query, headers)] = identity.requests
    assert query == {"api-version": APP_SERVICE_API_VERSION, "resource": BATCH_RESOURCE, "client_id": "abc"}
    assert headers["x-identity-header"] == identity.secret


@pytest.mark.parametrize("secret", ["", "wrong-secret"])
def test_missing_or_wrong_identity_header_is_401(identity: IdentityEndpoint, secret: str) -> None:
    response = fetch(identity, secret=secret)
    assert response.status_code == 401
    assert response.json()["statusCode"] == 401
    assert identity.fetches == 0


def test_no_identity_header_at_all_is_401(identity: IdentityEndpoint) -> None:
    response = requests.get(
        identity.url, params={"api-version": APP_SERVICE_API_VERSION, "resource": BATCH_RESOURCE}, timeout=10
    )
    assert response.status_code == 401


@pytest.mark.parametrize("api_version", [None, "2018-02-01", "2017-09-01"])
def test_wrong_api_version_is_400(identity: IdentityEndpoint, api_version: str | None) -> None:
    assert fetch(identity, api_version=api_version).status_code == 400


@pytest.mark.parametrize("resource", [None, "https://storage.azure.com/", "https://batch.core.windows.net"])
def test_resource_outside_the_allowed_set_is_400_with_json_error(
    identity: IdentityEndpoint, resource: str | None
) -> None:
    response = fetch(identity, resource=resource)
    assert response.status_code == 400
    body = response.json()
    assert body["statusCode"] == 400
    assert body["error"] == "invalid_resource"
    assert body["message"]
    assert identity.issued == []


def test_allowed_resources_are_configurable() -> None:
    with IdentityEndpoint(resources=["https://storage.azure.com/"]) as endpoint:
        assert fetch(endpoint, resource="https://storage.azure.com/").status_code == 200
        assert fetch(endpoint).status_code == 400


def test_user_assigned_identity_rejects_other_client_ids() -> None:
    client_id = str(uuid.uuid4())
    with IdentityEndpoint(client_id=client_id) as endpoint:
        assert fetch(endpoint, client_id=str(uuid.uuid4())).status_code == 400
        response = fetch(endpoint, client_id=client_id)
        assert response.status_code == 200
        assert response.json()["client_id"] == client_id


def test_unknown_path_and_method_are_rejected(identity: IdentityEndpoint) -> None:
    headers = {"X-IDENTITY-HEADER": identity.secret}
    assert requests.get(f"{identity.base_url}/other", headers=headers, timeout=10).status_code == 404
    response = requests.post(identity.url, headers=headers, timeout=10)
    assert response.status_code == 405
    assert response.headers["Allow"] == "GET"


# ---------------------------------------------------------------- validity, revocation, faults


def test_unknown_tokens_are_not_valid(identity: IdentityEndpoint) -> None:
    assert not identity.is_valid("tok-made-up")


def test_tokens_are_valid_for_the_resource_they_were_issued_for(identity: IdentityEndpoint) -> None:
    token = fetch(identity).json()["access_token"]
    assert identity.is_valid(token, BATCH_RESOURCE)
    assert not identity.is_valid(token, "https://storage.azure.com/")


def test_expired_tokens_are_not_valid() -> None:
    with IdentityEndpoint(lifetime=0) as endpoint:
        token = fetch(endpoint).json()["access_token"]
        assert not endpoint.is_valid(token)


def test_revoke_invalidates_one_token(identity: IdentityEndpoint) -> None:
    first, second = (fetch(identity).json()["access_token"] for _ in range(2))
    identity.revoke(first)
    assert not identity.is_valid(first)
    assert identity.is_valid(second)


def test_revoke_all_invalidates_every_issued_token_but_not_later_ones(identity: IdentityEndpoint) -> None:
    old = [fetch(identity).json()["access_token"] for _ in range(2)]
    identity.revoke_all()
    new = fetch(identity).json()["access_token"]
    assert not any(identity.is_valid(token) for token in old)
    assert identity.is_valid(new)


def test_fail_next_answers_errors_then_recovers(identity: IdentityEndpoint) -> None:
    identity.fail_next(2, status=503)
    statuses = [fetch(identity).status_code for _ in range(3)]
    assert statuses == [503, 503, 200]
    assert identity.fetches == 1
    assert len(identity.requests) == 3


def test_fail_next_defaults_to_one_500(identity: IdentityEndpoint) -> None:
    identity.fail_next()
    failed = fetch(identity)
    assert failed.status_code == 500
    assert failed.json()["statusCode"] == 500
    assert fetch(identity).status_code == 200


def test_reset_forgets_tokens_and_counts(identity: IdentityEndpoint) -> None:
    token = fetch(identity).json()["access_token"]
    identity.fail_next(3)
    identity.reset()
    assert (identity.fetches, identity.issued, identity.requests) == (0, [], [])
    assert not identity.is_valid(token)
    assert fetch(identity).status_code == 200


def test_stop_releases_the_port() -> None:
    with IdentityEndpoint() as endpoint:
        url = endpoint.url
        assert fetch(endpoint).status_code == 200
    with pytest.raises(requests.ConnectionError):
        requests.get(url, timeout=2)


# ---------------------------------------------------------------- the real azure-identity path


def test_managed_identity_credential_gets_a_token_this_endpoint_issued(app_service_env: IdentityEndpoint) -> None:
    token = ManagedIdentityCredential().get_token(BATCH_SCOPE)
    assert token.token in app_service_env.issued
    assert app_service_env.is_valid(token.token, BATCH_RESOURCE)
    assert token.expires_on > time.time() + 3000
    [(query, headers)] = app_service_env.requests
    assert query == {"api-version": APP_SERVICE_API_VERSION, "resource": BATCH_RESOURCE}
    assert headers["x-identity-header"] == app_service_env.secret


def test_second_get_token_is_served_from_azure_identity_cache(app_service_env: IdentityEndpoint) -> None:
    credential = ManagedIdentityCredential()
    first = credential.get_token(BATCH_SCOPE)
    second = credential.get_token(BATCH_SCOPE)
    assert second.token == first.token
    assert app_service_env.fetches == 1


def test_user_assigned_client_id_is_sent_and_checked(
    monkeypatch: pytest.MonkeyPatch, app_service_env: IdentityEndpoint
) -> None:
    client_id = str(uuid.uuid4())
    with IdentityEndpoint(client_id=client_id) as endpoint:
        for name, value in endpoint.environ().items():
            monkeypatch.setenv(name, value)
        token = ManagedIdentityCredential(client_id=client_id).get_token(BATCH_SCOPE)
        assert endpoint.is_valid(token.token)
        assert endpoint.requests[0][0]["client_id"] == client_id
        with pytest.raises(CredentialUnavailableError):
            ManagedIdentityCredential(client_id=str(uuid.uuid4())).get_token(BATCH_SCOPE)


def test_azure_identity_retries_a_single_endpoint_failure(app_service_env: IdentityEndpoint) -> None:
    app_service_env.fail_next(1, status=500)
    token = ManagedIdentityCredential().get_token(BATCH_SCOPE)
    assert app_service_env.is_valid(token.token)
    assert len(app_service_env.requests) == 2


def test_azure_identity_reports_a_client_error_without_retrying(app_service_env: IdentityEndpoint) -> None:
    app_service_env.fail_next(1, status=400)
    with pytest.raises(CredentialUnavailableError):
        ManagedIdentityCredential().get_token(BATCH_SCOPE)
    assert len(app_service_env.requests) == 1


def test_batch_emulator_accepts_issued_tokens_and_rejects_revoked_ones(app_service_env: IdentityEndpoint) -> None:
    token = ManagedIdentityCredential().get_token(BATCH_SCOPE).token
    with BatchEmulator(authorize=app_service_env.is_valid) as batch, requests.Session() as http:
        batch.terminate_delay = 60
        batch.add_job("render")
        batch.add_job("other")

        def terminate(job_id: str, bearer: str) -> requests.Response:
            return http.post(
                f"{batch.url}/jobs/{job_id}/terminate",
                params={"api-version": "2023-11-01.18.0"},
                headers={"Authorization": f"Bearer {bearer}", "Content-Type": "application/json"},
                json={"terminateReason": "test"},
                timeout=10,
            )

        assert terminate("render", token).status_code == 202
        assert terminate("other", "tok-forged").status_code == 401
        app_service_env.revoke(token)
        assert terminate("other", token).status_code == 401
        fresh = ManagedIdentityCredential().get_token(BATCH_SCOPE).token
        assert terminate("other", fresh).status_code == 202
