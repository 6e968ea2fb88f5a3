"""The HTTP API app: ``POST /generate_image``, ``GET /api_key_usage``, ``GET /health``.

:func:`create_api` assembles the routers (``routes_*``) around the services of the composition
root (:mod:`studio.compose`): routes read the workspace, the key store and the generation
service from ``request.app.state``. The UI, when wanted, is mounted on the same app afterwards
(:mod:`studio.ui.server`), so both share one generation service and its GPU lock.

Every error is JSON ``{"error": CODE, "message": ONE_SENTENCE}`` (:mod:`studio.api.errors`).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from studio import __version__
from studio.api import routes_generate, routes_health, routes_keys
from studio.api.deps import Gate
from studio.api.errors import install_handlers
from studio.api.settings import ApiSettings

DESCRIPTION = ("Generate images with SDXL base (+ refiner, + your LoRA). Authenticate with an API "
               "key (`python -m studio api-keys create`) in `Authorization: Bearer` or "
               "`X-API-Key`.")


def create_api(services: Any, settings: ApiSettings | None = None, *,
               lifespan: Any = None) -> FastAPI:
    """The FastAPI app with the studio's HTTP API.

    ``services`` is a :class:`studio.compose.Services` (``workspace``, ``keys``,
    ``generation``); ``settings`` default to :meth:`ApiSettings.from_env`."""
    settings = settings or ApiSettings.from_env()
    app = FastAPI(title="SDXL LoRA Studio API", version=__version__, description=DESCRIPTION,
                  docs_url="/docs", redoc_url=None, openapi_url="/openapi.json",
                  lifespan=lifespan)
    app.state.services = services
    app.state.keys = services.keys
    app.state.gate = Gate(settings.queue_size)
    app.state.settings = settings
    install_handlers(app)
    app.include_router(routes_health.router)
    app.include_router(routes_keys.router)
    app.include_router(routes_generate.make_router(settings))
    return app
