"""``POST /generate_image``: images from the operator's models, for an API key.

Generation runs in a worker thread; at most ``queue_size`` requests are admitted at once (the
:class:`~studio.api.deps.Gate`) and any request beyond that is answered at once with 503 and
``Retry-After``, never left hanging. Each successful image counts once towards the key's usage.

(No ``from __future__ import annotations``: the route's body type is a local of make_router.)
"""

import base64
import json
import logging
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from studio.api.deps import CallerKey, Gate
from studio.api.errors import ERROR_RESPONSES, ApiError
from studio.api.keys import ApiKey, KeyStore, RateLimited
from studio.api.schemas import (
    HUB_LORA_RE,
    ErrorOut,
    GenerateImageRequest,
    GenerateImageResponse,
    request_model,
)
from studio.api.settings import ApiSettings
from studio.errors import StudioError
from studio.generate.engine import GeneratedImage
from studio.generate.gallery import Gallery, png_bytes
from studio.generate.request import GenerationRequest
from studio.lora.formats import DIFFUSERS_FILE
from studio.models import looks_like_path
from studio.runs.folder import RunFolder
from studio.workspace import Workspace, WorkspaceError, safe_name

log = logging.getLogger(__name__)

RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
          "description": "JSON with base64 PNGs, or one raw PNG when the request's Accept "
                         "header is image/png"},
    **ERROR_RESPONSES,
    404: {"model": ErrorOut, "description": "no such LoRA run"},
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
    req = to_request(body, services.workspace)
    req.validate()
    _admit(gate, state.settings.retry_after_s)
    try:
        _reserve(store, key, req.num_images)
        try:
            results, encoded = await run_in_threadpool(generate, services, req,
                                                       body.save_to_gallery)
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


def to_request(body: GenerateImageRequest, workspace: Workspace) -> GenerationRequest:
    return GenerationRequest(
        prompt=body.prompt, negative_prompt=body.negative_prompt, seed=body.seed,
        steps=body.steps, guidance=body.guidance, width=body.width, height=body.height,
        num_images=body.num_images, scheduler=body.scheduler,
        lora=resolve_api_lora(body.lora, workspace), lora_scale=body.lora_scale,
        refiner=body.refiner, refiner_switch=body.refiner_switch)


def resolve_api_lora(ref: str | None, workspace: Workspace) -> str | None:
    """A run name of this workspace or a Hub id; never an arbitrary server path."""
    if ref is None or not ref.strip():
        return None
    ref = ref.strip()
    if HUB_LORA_RE.match(ref) and ".." not in ref:
        return ref
    try:
        run = workspace.run_path(safe_name(ref, "LoRA run name"))
    except WorkspaceError:
        raise ApiError(422, "invalid_lora", "The LoRA must be the name of a training run of "
                       "this studio or a Hub id like owner/name[:file.safetensors].") from None
    if not RunFolder(run).has_lora():
        raise ApiError(404, "unknown_lora", f"No finished training run named {ref!r} in this "
                       "studio.")
    return str(run)


def generate(services: Any, req: GenerationRequest, save: bool
             ) -> tuple[list[GeneratedImage], list[bytes]]:
    """Generate (in a worker thread); the images with public parameters and their PNG bytes."""
    try:
        results = services.generation.generate(req)
    except StudioError:
        raise  # one sentence: GenerationError -> 422, ModelLoadError -> 503
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
