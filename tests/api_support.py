"""Helpers shared by the API/security tests: a running app with small limits, keys, requests."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from conftest import AppServer, start_app

# Small limits so that property-based runs stay fast on the tiny models.
API_ENV = {"STUDIO_API_MAX_STEPS": "3", "STUDIO_API_MAX_SIDE": "128", "STUDIO_API_MAX_IMAGES": "2",
           "STUDIO_API_QUEUE": "4", "STUDIO_API_RETRY_AFTER": "2"}

SMALL = {"prompt": "a photo of TOK person", "steps": 2, "width": 64, "height": 64, "seed": 1}


def start_api_app(home: Path, tiny: dict[str, Path], *extra: str,
                  env: dict[str, str] | None = None, **kw: Any) -> AppServer:
    home.mkdir(parents=True, exist_ok=True)
    return start_app(home, tiny, *extra, env={**API_ENV, **(env or {})}, **kw)


def keystore(home: Path):
    from studio.api.keys import KeyStore
    from studio.workspace import Workspace

    return KeyStore(Workspace(home))


def request(url: str, method: str = "GET", body: Any = None, headers: dict[str, str] | None = None,
            timeout: float = 120) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of one HTTP request; never raises for HTTP error statuses."""
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    h = {"Content-Type": "application/json"} if data is not None else {}
    h.update(headers or {})
    req = urllib.request.Request(url, data=data, method=method, headers=h)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}
