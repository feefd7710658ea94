"""A loopback App Service managed-identity endpoint (IDENTITY_ENDPOINT / IDENTITY_HEADER) issuing test tokens."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterable
from typing import Any

from local.batch_emulator.wire import BATCH_RESOURCE
from local.loopback import HttpRequest, HttpResponse, LoopbackService

APP_SERVICE_API_VERSION = "2019-08-01"
ENDPOINT_PATH = "/msi/token"
_ISSUED_PREFIX = "tok-"


class IdentityEndpoint(LoopbackService):
    """Serves App Service managed-identity token requests and remembers what it issued."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        secret: str | None = None,
        resources: Iterable[str] = (BATCH_RESOURCE,),
        client_id: str | None = None,
        lifetime: int = 3600,
    ) -> None:
        super().__init__(host, port)
        self.secret = secret if secret is not None else uuid.uuid4().hex
        self.resources = frozenset(resources)
        self.client_id = client_id
        # What a request without client_id (the system-assigned identity) is told its client id is.
        self.system_client_id = str(uuid.uuid4())
        self.lifetime = lifetime
        self._lock = threading.Lock()
        self._fetches = 0
        self._requests: list[tuple[dict[str, str], dict[str, str]]] = []
        self._issued: dict[str, tuple[str, float]] = {}
        self._revoked: set[str] = set()
        self._failures: list[int] = []

    @property
    def url(self) -> str:
        """The full token endpoint URL, as IDENTITY_ENDPOINT holds it."""
        return self.base_url + ENDPOINT_PATH

    def environ(self) -> dict[str, str]:
        """The environment variables that point azure-identity at this endpoint."""
        return {"IDENTITY_ENDPOINT": self.url, "IDENTITY_HEADER": self.secret}

    @property
    def fetches(self) -> int:
        """How many tokens were served."""
        with self._lock:
            return self._fetches

    @property
    def requests(self) -> list[tuple[dict[str, str], dict[str, str]]]:
        """(query, lower-cased headers) of every request received, oldest first."""
        with self._lock:
            return [(dict(query), dict(headers)) for query, headers in self._requests]

    @property
    def issued(self) -> list[str]:
        """Every token issued, oldest first."""
        with self._lock:
            return list(self._issued)

    def is_valid(self, token: str, resource: str | None = None) -> bool:
        """Whether the token was issued here (for `resource`, if given), is not revoked and has not expired."""
        with self._lock:
            grant = self._issued.get(token)
            if grant is None or token in self._revoked:
                return False
            granted_resource, expires_on = grant
            return time.time() < expires_on and resource in (None, granted_resource)

    def revoke(self, token: str) -> None:
        """Make one token invalid."""
        with self._lock:
            self._revoked.add(token)

    def revoke_all(self) -> None:
        """Make every token issued so far invalid."""
        with self._lock:
            self._revoked.update(self._issued)

    def fail_next(self, n: int = 1, status: int = 500) -> None:
        """Answer the next `n` token requests with an error `status`."""
        with self._lock:
            self._failures.extend([status] * n)

    def reset(self) -> None:
        """Forget requests, tokens, revocations, pending failures and the fetch count."""
        with self._lock:
            self._fetches = 0
            self._requests.clear()
            self._issued.clear()
            self._revoked.clear()
            self._failures.clear()

    def handle(self, request: HttpRequest) -> HttpResponse | None:
        """Answer one token request the way App Service's endpoint does."""
        query, headers = request.query, request.headers
        with self._lock:
            self._requests.append((dict(query), dict(headers)))
            failure = self._failures.pop(0) if self._failures else None
        if request.path != ENDPOINT_PATH:
            return _error(404, "not_found", f"No endpoint at {request.path}.")
        if request.method != "GET":
            return _error(405, "method_not_allowed", "Use GET.", {"Allow": "GET"})
        if failure is not None:
            return _error(failure, "injected_failure", "The identity endpoint failed (injected).")
        if headers.get("x-identity-header") != self.secret:
            return _error(401, "unauthorized", "The X-IDENTITY-HEADER header is missing or wrong.")
        version = query.get("api-version")
        if version != APP_SERVICE_API_VERSION:
            return _error(400, "invalid_request", f"Unsupported api-version {version!r}.")
        resource = query.get("resource")
        if resource is None or resource not in self.resources:
            return _error(400, "invalid_resource", f"Resource {resource!r} is not one this identity can get.")
        client_id = query.get("client_id")
        if client_id is not None and self.client_id is not None and client_id != self.client_id:
            return _error(400, "invalid_client", f"Unable to load the managed identity with client_id {client_id}.")
        token = _ISSUED_PREFIX + uuid.uuid4().hex
        expires_on = int(time.time()) + self.lifetime
        with self._lock:
            self._issued[token] = (resource, float(expires_on))
            self._fetches += 1
        payload = {
            "access_token": token,
            "expires_on": str(expires_on),
            "resource": resource,
            "token_type": "Bearer",
            "client_id": client_id or self.client_id or self.system_client_id,
        }
        return _json(200, payload)


def _json(status: int, payload: dict[str, Any], extra: dict[str, str] | None = None) -> HttpResponse:
    """A JSON answer."""
    return HttpResponse(status, {"Content-Type": "application/json", **(extra or {})}, json.dumps(payload).encode())


def _error(status: int, error: str, message: str, extra: dict[str, str] | None = None) -> HttpResponse:
    """An error in App Service's shape (statusCode/message, which msal reports) plus an OAuth-style code."""
    payload = {"statusCode": status, "message": message, "error": error, "correlationId": str(uuid.uuid4())}
    return _json(status, payload, extra)
