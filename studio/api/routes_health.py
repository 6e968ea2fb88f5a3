"""``GET /health``: liveness for Docker and Spaces health checks."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from studio import __version__
from studio.api.schemas import Health

router = APIRouter(tags=["service"])


@router.get("/health", response_model=Health)
def health(request: Request) -> dict[str, Any]:
    """Liveness for Docker/Spaces health checks (no authentication, no secrets)."""
    gate = request.app.state.gate
    return {"status": "ok", "version": __version__,
            "queue": {"active": gate.active, "size": gate.size}}
