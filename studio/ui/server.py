"""The Gradio UI mounted on the HTTP API's app: one process, one port.

The composition root (:func:`studio.compose.create_http_app`) calls :func:`mount_ui`, which
applies the secure Gradio settings: login when configured, a finite queue
with a concurrency limit, the UI's internal events hidden from Gradio's API docs and clients,
no direct REST calls that skip the queue, error details hidden from remote users, uploads
capped, only the app's own outputs servable, and a throttle on login attempts.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any

import gradio as gr
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from studio.api.settings import ServerOptions
from studio.ui.context import AppContext

log = logging.getLogger(__name__)

MAX_UPLOAD = "50mb"
QUEUE_MAX_SIZE = 32
LOGIN_ATTEMPTS_PER_MIN = 10


def lock_down(blocks: gr.Blocks) -> None:
    """Hide every event of the UI from Gradio's API page and client libraries.

    The browser still calls them through the queue (after login when auth is on); nothing is
    advertised as a public API: the documented API is the studio's own ``/generate_image``."""
    for fn in blocks.fns.values():
        fn.api_visibility = "private"


class LoginThrottle:
    """At most ``limit`` login attempts per client address per minute (slows password guessing)."""

    def __init__(self, limit: int = LOGIN_ATTEMPTS_PER_MIN):
        self.limit = limit
        self._seen: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def allow(self, client: str, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        with self._lock:
            q = self._seen.setdefault(client, deque())
            while q and q[0] <= now - 60:
                q.popleft()
            if len(q) >= self.limit:
                return False
            q.append(now)
            if len(self._seen) > 10_000:  # forget idle clients
                for k in [k for k, v in self._seen.items() if not v]:
                    del self._seen[k]
            return True


class ThrottleLogins:
    """ASGI middleware answering 429 to a client's login attempts beyond its
    :class:`LoginThrottle` budget. The client is the connection's peer, or the address a
    trusted proxy forwarded (only proxies named by ``--forwarded-allow-ips``; see
    :func:`studio.security.forwarded_allow_ips`), never an address the client claims."""

    def __init__(self, app: Any, throttle: LoginThrottle):
        self.app, self.throttle = app, throttle

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and \
                scope["path"].rstrip("/").endswith("/login"):
            client = scope.get("client")
            if not self.throttle.allow(client[0] if client else "?"):
                answer = JSONResponse({"error": "rate_limited", "message": "Too many login "
                                       "attempts; wait a minute."}, status_code=429,
                                      headers={"Retry-After": "60"})
                return await answer(scope, receive, send)
        await self.app(scope, receive, send)


def context_for(services: Any) -> AppContext:
    """The UI's context over the composition root's services (a :class:`studio.compose.Services`):
    the operator's models, the shared job and generation services."""
    m = services.models
    return AppContext(workspace=services.workspace, base=m.base, refiner=m.refiner,
                      captioner=m.captioner, vae=m.vae, demo=services.demo,
                      remote=services.remote, notices=list(services.notices),
                      jobs=services.jobs, generation=services.generation)


def mount_ui(app: FastAPI, services: Any, opts: ServerOptions) -> gr.Blocks:
    """Build the UI on ``services`` and mount it at ``/`` of ``app`` (the API app), locked down:
    login throttle, private events, a finite queue, only the app's own outputs servable."""
    from studio.ui.app import build_app

    ctx = context_for(services)
    blocks = build_app(ctx)
    app.add_middleware(ThrottleLogins, throttle=LoginThrottle())
    lock_down(blocks)
    blocks.queue(default_concurrency_limit=2, max_size=QUEUE_MAX_SIZE, api_open=False)
    ws = ctx.workspace
    # What the UI may serve: the app's own outputs. Never model files or the key registry.
    allowed = [str(p.resolve()) for p in (ws.gallery_dir, ws.exports_dir, ws.runs_dir,
                                           ws.datasets_dir)]
    db = str(ws.db_path.resolve())
    blocked = [str(ws.models_dir.resolve()), db, db + "-wal", db + "-shm"]
    gr.mount_gradio_app(
        app, blocks, path="/", server_name=opts.host, server_port=opts.port,
        footer_links=["gradio", "settings"], run_history=False,
        auth=opts.auth or None,
        auth_message=opts.auth_message or "Log in to the SDXL LoRA Studio.",
        allowed_paths=allowed, blocked_paths=blocked, show_error=not ctx.remote,
        max_file_size=MAX_UPLOAD, ssr_mode=False, mcp_server=False,
        enable_monitoring=False, pwa=False)
    return blocks
