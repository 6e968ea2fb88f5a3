"""``POST /generate_image``: images from the operator's models, for an API key.

Generation runs in a worker thread; at most ``queue_size`` requests are admitted at once (the
:class:`~studio.api.deps.Gate`) and any request beyond that is answered at once with 503 and
``Retry-After``, never left hanging. Each image delivered counts once towards the key's usage:
when the client disconnects, the generation stops before its next denoising step and nothing
is counted.

The request's ``lora`` is a training run of this studio (a run with a LoRA) or a Hub id;
nothing else is looked up on disk, and every reference that is neither gets the same answer.
Hub LoRAs are fetched without the operator's Hub token unless the key is an admin key or the
operator allows it (``STUDIO_API_HUB_TOKEN=1``).

(No ``from __future__ import annotations``: the route's body type is a local of make_router.)
"""

import asyncio
import base64
import json
import logging
import threading
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from studio.api.deps import CallerKey, Gate
from studio.api.errors import ERROR_RESPONSES, ApiError, error_response
from studio.api.keys import ApiKey, KeyStore, RateLimited
from studio.api.schemas import (
    ErrorOut,
    GenerateImageRequest,
    GenerateImageResponse,
    request_model,
)
from studio.api.settings import ApiSettings
from studio.errors import StudioError
from studio.generate.engine import GeneratedImage, GenerationCancelled
from studio.generate.gallery import Gallery, png_bytes
from studio.generate.request import GenerationRequest
from studio.lora.formats import DIFFUSERS_FILE
from studio.lora.refs import LoraRef, hub_lora, is_hub_id, no_such_run, run_loras
from studio.models import looks_like_path
from studio.runs.folder import RunFolder
from studio.workspace import Workspace, WorkspaceError, safe_name

log = logging.getLogger(__name__)

RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
          "description": "JSON with base64 PNGs, or one raw PNG when the request's Accept "
                         "header is image/png"},
    **ERROR_RESPONSES,
    404: {"model": ErrorOut, "description": "the LoRA is neither a run of this studio nor a "
          "Hub id"},
    406: {"model": ErrorOut, "description": "image/png asked for several images"},
    503: {"model": ErrorOut, "description": "queue full (see Retry-After) or a model could not "
          "be loaded"},
}


def make_router(settings: ApiSettings) -> APIRouter:
    """The route, its body narrowed to ``settings`` (so the OpenAPI schema states them)."""
    body_model = request_model(settings)
    router = APIRouter(tags=["generate"])

    @router.post("/generate_image", response_model=GenerateImageResponse, responses=RESPONSES)
    async def generate_image(body: body_model, request: Request,  # type: ignore[valid-type]
                             key: CallerKey):
        """Generate images; each successful image counts once towards the key's usage."""
        return await serve(request, body, key)

    return router


async def serve(request: Request, body: GenerateImageRequest, key: ApiKey):
    state = request.app.state
    services, gate, store = state.services, state.gate, state.keys
    want_png = wants_png(request.headers.get("accept", ""))
    if want_png and body.num_images != 1:
        raise ApiError(406, "not_acceptable", "A raw image/png response holds one image; ask "
                       "for JSON (Accept: application/json) to get several.")
    req = to_request(body)
    req.validate()
    lora = api_lora(body.lora, services.workspace)
    _admit(gate, state.settings.retry_after_s)
    try:
        _reserve(store, key, req.num_images)
        try:
            if isinstance(lora, str):  # a Hub id: fetched only once admitted
                anonymous = not (key.admin or state.settings.hub_token)
                lora = await run_in_threadpool(hub_lora, lora, anonymous=anonymous)
            req.lora = lora
            try:
                results, encoded = await generate_for(request, services, req,
                                                      body.save_to_gallery)
            except GenerationCancelled as exc:
                log.info("API generation for key id %s stopped at %s: the client disconnected; "
                         "nothing was counted.", key.id, exc.where)
                return _client_gone()
            if await request.is_disconnected():
                log.info("API generation for key id %s finished after the client disconnected; "
                         "nothing was counted.", key.id)
                return _client_gone()
            await run_in_threadpool(store.record, key, len(results))
        finally:
            store.release(key, req.num_images)
    finally:
        gate.leave()
    if want_png:
        return _png_response(results[0].params, encoded[0])
    usage = store.get(key.id)
    return {"images": [{"png_base64": base64.b64encode(b).decode("ascii"),
                        "seed": r.params["seed"], "params": r.params}
                       for r, b in zip(results, encoded, strict=True)],
            "usage": {"images": usage.images, "requests": usage.requests}}


DISCONNECT_POLL_S = 0.2


async def generate_for(request: Request, services: Any, req: GenerationRequest, save: bool
                       ) -> tuple[list[GeneratedImage], list[bytes]]:
    """:func:`generate` in a worker thread while the client is connected: when it disconnects,
    the generation stops before its next denoising step (raising GenerationCancelled)."""
    gone = threading.Event()

    async def watch() -> None:  # the body is read: the next message is the disconnect
        while (await request.receive())["type"] != "http.disconnect":
            await asyncio.sleep(DISCONNECT_POLL_S)
        gone.set()

    watcher = asyncio.create_task(watch())
    try:
        return await run_in_threadpool(generate, services, req, save, gone.is_set)
    finally:
        watcher.cancel()


def _client_gone() -> Response:
    # Nobody reads this answer (the client is gone); 499 as in nginx's "client closed request".
    return error_response(499, "client_closed_request", "The client disconnected before the "
                          "images were delivered, so the generation was stopped.")


def _admit(gate: Gate, retry_after_s: int) -> None:
    if not gate.try_enter():
        raise ApiError(503, "busy", f"The server is busy ({gate.size} requests queued); "
                       f"retry in {retry_after_s} s.", {"Retry-After": str(retry_after_s)})


def _reserve(store: KeyStore, key: ApiKey, images: int) -> None:
    try:
        store.reserve(key, images)
    except RateLimited as exc:
        hdrs = {"Retry-After": str(exc.retry_after)} if exc.retry_after else None
        raise ApiError(429, "rate_limited", str(exc), hdrs) from None


def _png_response(params: dict[str, Any], png: bytes) -> Response:
    headers = {"X-Seed": str(params["seed"])}
    meta = json.dumps(params, default=str)  # ASCII-only; the PNG embeds it as well
    if len(meta) <= 8192:
        headers["X-Studio-Params"] = meta
    return Response(png, media_type="image/png", headers=headers)


def to_request(body: GenerateImageRequest) -> GenerationRequest:
    """The generation request of ``body``, without its LoRA (see :func:`api_lora`)."""
    return GenerationRequest(
        prompt=body.prompt, negative_prompt=body.negative_prompt, seed=body.seed,
        steps=body.steps, guidance=body.guidance, width=body.width, height=body.height,
        num_images=body.num_images, scheduler=body.scheduler, lora=None,
        lora_scale=body.lora_scale, refiner=body.refiner, refiner_switch=body.refiner_switch)


UNKNOWN_LORA = ("No finished training run of this studio, and no Hub id, matches that LoRA; "
                "give the name of a run or a Hub id like owner/name[:file.safetensors].")


def api_lora(ref: str | None, workspace: Workspace) -> LoraRef | str | None:
    """The LoRA of an API request: a run of ``workspace`` with a LoRA (resolved here), or a Hub
    id that huggingface_hub validates (returned as text, fetched later). Nothing else is looked
    up on disk; a name that is no run gets the sentence that lists the runs, every other
    reference the same 404."""
    ref = (ref or "").strip()
    if not ref:
        return None
    if "/" in ref:
        if is_hub_id(ref):
            return ref
        raise ApiError(404, "unknown_lora", UNKNOWN_LORA)
    try:
        run = RunFolder(workspace.run_path(safe_name(ref, "LoRA run name")))
    except WorkspaceError:
        raise ApiError(404, "unknown_lora", UNKNOWN_LORA) from None
    if not run.has_lora():
        raise ApiError(404, "unknown_lora", str(no_such_run(ref, list(run_loras(workspace)))))
    return LoraRef(run.lora_path.parent, run.lora_path.name, run.name)


def generate(services: Any, req: GenerationRequest, save: bool,
             cancelled: Any = None) -> tuple[list[GeneratedImage], list[bytes]]:
    """Generate (in a worker thread); the images with public parameters and their PNG bytes.
    ``cancelled()`` is asked before every denoising step (GenerationCancelled when true)."""
    try:
        results = services.generation.generate(req, cancelled=cancelled)
    except StudioError:
        raise  # one sentence: GenerationError -> 422, ModelLoadError -> 503; GenerationCancelled
    except Exception:
        log.exception("API generation failed")
        raise ApiError(500, "generation_failed", "Generation failed unexpectedly; the "
                       "server log has the details.") from None
    if save:
        gallery = Gallery(services.workspace.gallery_dir)
        for r in results:
            gallery.add(r.image, r.params)  # the local gallery keeps the full sources
    for r in results:
        r.params = public_params(r.params)
    return results, [png_bytes(r.image, r.params) for r in results]


def public_params(params: dict[str, Any]) -> dict[str, Any]:
    """Image parameters for API clients: model sources that are server folders or files are
    reduced to their name (a run's LoRA to the run name), so no server path leaves the host."""
    out = dict(params)
    for key in ("base_model", "refiner", "lora"):
        value = out.get(key)
        if isinstance(value, str) and looks_like_path(value):
            p = Path(value)
            out[key] = p.parent.name if p.name == DIFFUSERS_FILE else p.name
    return out


def wants_png(accept: str) -> bool:
    """True when the client prefers image/png over JSON."""
    types = [t.split(";")[0].strip().lower() for t in accept.split(",") if t.strip()]
    if "image/png" not in types:
        return False
    return "application/json" not in types or types.index("image/png") < \
        types.index("application/json")
