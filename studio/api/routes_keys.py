"""``GET /api_key_usage``: the calling key's usage (every key's for an admin key)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from studio.api.deps import CallerKey
from studio.api.errors import ERROR_RESPONSES
from studio.api.schemas import UsageResponse

router = APIRouter(tags=["keys"])


@router.get("/api_key_usage", response_model=UsageResponse,
            responses={401: ERROR_RESPONSES[401]})
def api_key_usage(request: Request, key: CallerKey) -> dict[str, Any]:
    """The calling key's usage (successful images and requests); an admin key sees all."""
    store = request.app.state.keys
    out: dict[str, Any] = {"key": store.get(key.id).public(), "keys": None}
    if key.admin:
        out["keys"] = [k.public() for k in store.list()]
    return out
