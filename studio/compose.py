"""The composition root: the one place that builds the services and the HTTP app.

:func:`build_services` resolves the operator's model choices once, and makes the workspace's
job service, the generation service and the API key store. :func:`create_http_app` serves them:
it starts the job scheduler with the app (and stops it on shutdown), mounts the API routers and,
when ``ui`` is true, the Gradio UI; outside Hugging Face Spaces it refuses cross-site requests
(:class:`studio.security.SiteGuard`). The API and the training scheduler work without the UI
being built (Gradio is imported only to mount the UI).
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from fastapi import FastAPI

from studio.api.keys import KeyStore
from studio.api.server import create_api
from studio.api.settings import ServerOptions
from studio.generate.service import GenerationService
from studio.jobs.service import JobService, get_service
from studio.models import ModelSources
from studio.security import SiteGuard
from studio.workspace import Workspace

log = logging.getLogger(__name__)


@dataclass
class Services:
    """Everything the front ends (UI, API, CLI) share in one process."""

    workspace: Workspace
    models: ModelSources
    jobs: JobService
    generation: GenerationService
    keys: KeyStore
    demo: bool = False
    remote: bool = False  # served beyond localhost: hide error details
    notices: list[str] = field(default_factory=list)  # Markdown warnings shown above the UI

    def environment(self) -> dict[str, str]:
        """The environment of subprocesses (training jobs): this workspace and these models."""
        return _environment(self.workspace, self.models)


def _environment(ws: Workspace, models: ModelSources) -> dict[str, str]:
    return {**os.environ, "STUDIO_HOME": str(ws.home), **models.environment()}


def build_services(workspace: Workspace | str | os.PathLike | None = None, *,
                   base: str | None = None, refiner: str | None = None, vae: str | None = None,
                   captioner: str | None = None, demo: bool = False,
                   remote: bool = False) -> Services:
    """The services of one workspace (default ``STUDIO_HOME``). A model not given comes from its
    environment variable, else its default; ``demo`` uses tiny random models (built on first
    use) for every model not given."""
    ws = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
    if demo:
        from studio.tiny import build_tiny_models

        tiny = build_tiny_models(ws.models_dir / "tiny")
        base, refiner = base or str(tiny["base"]), refiner or str(tiny["refiner"])
        captioner = captioner or str(tiny["captioner"])
    models = ModelSources.resolve(base=base, refiner=refiner, captioner=captioner, vae=vae)
    return Services(workspace=ws, models=models,
                    jobs=get_service(ws, env=_environment(ws, models), base=models.base),
                    generation=GenerationService(models.base, models.refiner, models.vae),
                    keys=KeyStore(ws), demo=demo, remote=remote)


def create_http_app(services: Services, *, ui: bool = True,
                    options: ServerOptions | None = None) -> FastAPI:
    """The one ASGI app: the HTTP API, the job scheduler (running while the app serves) and,
    when ``ui`` is true, the Gradio UI at ``/``."""
    options = options or ServerOptions()

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        services.jobs.start_scheduler()
        log.info("training job scheduler started")
        try:
            yield
        finally:
            services.jobs.stop_scheduler()
            log.info("training job scheduler stopped")

    app = create_api(services, options.api_settings, lifespan=lifespan)
    if ui:
        from studio.ui.server import mount_ui

        mount_ui(app, services, options)
    if not options.spaces:
        app.add_middleware(SiteGuard)  # outermost: a cross-site request reaches nothing
    return app
