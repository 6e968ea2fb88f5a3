"""What the routes depend on: the caller's API key, and the gate in front of the GPU."""

from __future__ import annotations

import threading
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from studio.api.errors import ApiError
from studio.api.keys import ApiKey, KeyStore


class Gate:
    """A bounded queue in front of the GPU: admits at most ``size`` requests at once (one
    generating, the others waiting for the GPU lock); the rest are refused immediately."""

    def __init__(self, size: int):
        self.size = size
        self._lock = threading.Lock()
        self.active = 0

    def try_enter(self) -> bool:
        with self._lock:
            if self.active >= self.size:
                return False
            self.active += 1
            return True

    def leave(self) -> None:
        with self._lock:
            self.active -= 1


# Declared for the OpenAPI page only: require_key reads the headers itself.
_bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer sk-studio-...")
_header_key = APIKeyHeader(name="X-API-Key", auto_error=False,
                           description="X-API-Key: sk-studio-...")
_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def _credentials(request: Request) -> list[str]:
    """Every API key the request sends (Authorization: Bearer, X-API-Key)."""
    given: list[str] = []
    authz = request.headers.get("authorization")
    if authz is not None:
        scheme, _, cred = authz.strip().partition(" ")
        if scheme.lower() != "bearer" or not cred.strip():
            raise ApiError(401, "invalid_api_key", "The Authorization header must be "
                           "'Bearer KEY' with an API key.", _CHALLENGE)
        given.append(cred.strip())
    if request.headers.get("x-api-key") is not None:
        given.append(request.headers["x-api-key"].strip())
    return given


def require_key(request: Request,
                _bearer_doc: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
                _header_doc: Annotated[str | None, Depends(_header_key)]) -> ApiKey:
    """The caller's active key. Every credential sent must be that key: a second, different
    or non-Bearer credential is refused rather than ignored."""
    given = _credentials(request)
    if not given:
        raise ApiError(401, "missing_api_key", "An API key is required: send it as "
                       "'Authorization: Bearer KEY' or 'X-API-Key: KEY'.", _CHALLENGE)
    if len(set(given)) > 1:
        raise ApiError(401, "invalid_api_key", "Two different API keys were sent; send one.",
                       _CHALLENGE)
    store: KeyStore = request.app.state.keys
    key = store.authenticate(given[0])
    if key is None:
        raise ApiError(401, "invalid_api_key", "The API key is malformed, unknown or revoked.",
                       _CHALLENGE)
    return key


CallerKey = Annotated[ApiKey, Depends(require_key)]
