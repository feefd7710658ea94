"""The Batch bearer token: one cached token per process, refreshed before expiry or after a 401."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from azure.core.credentials import AccessToken

BATCH_SCOPE = "https://batch.core.windows.net//.default"


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
