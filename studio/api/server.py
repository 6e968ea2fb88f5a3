"""The HTTP API: ``POST /generate_image``, ``GET /api_key_usage``, ``GET /health``.

The API runs in the same process as the UI (the Gradio Blocks are mounted on this FastAPI app
by :mod:`studio.ui.server`), so both share one :class:`~studio.generate.engine.Generator` and
its GPU lock. Generation runs in a worker thread; at most ``queue_size`` requests are admitted
at once (one generating, the others waiting for the GPU lock) and any request beyond that is
answered at once with 503 and ``Retry-After``, never left hanging.

Every error is JSON ``{"error": CODE, "message": ONE_SENTENCE}``.
"""


import base64
import json
import logging
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, create_model
from starlette.exceptions import HTTPException as StarletteHTTPException

from studio import __version__
from studio.api.keys import ApiKey, KeyStore, RateLimited
from studio.generate.engine import MAX_SEED, GenerationError, GenerationRequest, get_generator
from studio.generate.gallery import Gallery, png_bytes
from studio.generate.schedulers import DEFAULT_SCHEDULER, SCHEDULERS
from studio.lora.formats import DIFFUSERS_FILE as LORA_FILE
from studio.models import ModelLoadError, looks_like_path
from studio.workspace import Workspace, WorkspaceError, safe_name

log = logging.getLogger(__name__)

SchedulerName = Literal[tuple(SCHEDULERS)]  # type: ignore[valid-type]

_HUB_LORA = (r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}"
             r"(:[A-Za-z0-9][A-Za-z0-9._/-]{0,200}\.safetensors)?")
_RUN_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,79}"
_HUB_LORA_RE = re.compile(f"^{_HUB_LORA}$")
_LORA_PATTERN = f"^({_RUN_NAME}|{_HUB_LORA})$"
# At least one character that is not whitespace (str.isspace also counts \x1c-\x1f).
_NOT_BLANK = r"[^\s\x1c-\x1f]"


# ---- settings -------------------------------------------------------------------------------
@dataclass(frozen=True)
class ApiSettings:
    """Server-side limits within the engine's own (set by the operator, e.g. via env); the
    OpenAPI schema of ``/generate_image`` states them."""

    queue_size: int = 4
    max_steps: int = 150
    max_side: int = 2048
    max_images: int = 8
    retry_after_s: int = 10

    @classmethod
    def from_env(cls) -> "ApiSettings":
        """Read ``STUDIO_API_QUEUE``, ``STUDIO_API_MAX_STEPS``, ``STUDIO_API_MAX_SIDE``,
        ``STUDIO_API_MAX_IMAGES``, ``STUDIO_API_RETRY_AFTER``."""
        def num(var: str, default: int) -> int:
            raw = os.environ.get(var)
            if not raw:
                return default
            try:
                v = int(raw)
            except ValueError:
                raise ValueError(f"{var} must be a whole number (got {raw!r}).") from None
            if v < 1:
                raise ValueError(f"{var} must be at least 1 (got {v}).")
            return v

        d = cls()
        return cls(queue_size=num("STUDIO_API_QUEUE", d.queue_size),
                   max_steps=num("STUDIO_API_MAX_STEPS", d.max_steps),
                   max_side=num("STUDIO_API_MAX_SIDE", d.max_side),
                   max_images=num("STUDIO_API_MAX_IMAGES", d.max_images),
                   retry_after_s=num("STUDIO_API_RETRY_AFTER", d.retry_after_s))


# ---- schemas --------------------------------------------------------------------------------
class GenerateImageRequest(BaseModel):
    """What to generate. Defaults are SDXL's usual settings."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, max_length=2000, pattern=_NOT_BLANK,
                        examples=["a photo of TOK person, portrait, natural light"])
    negative_prompt: str = Field("", max_length=2000)
    seed: int = Field(-1, ge=-1, le=MAX_SEED, description="-1 for a random seed; image i "
                      "uses seed + i")
    steps: int = Field(30, ge=1, le=150)
    guidance: float = Field(6.0, ge=0, le=30, description="classifier-free guidance scale")
    width: int = Field(1024, ge=64, le=2048, multiple_of=8)
    height: int = Field(1024, ge=64, le=2048, multiple_of=8)
    num_images: int = Field(1, ge=1, le=8)
    scheduler: SchedulerName = Field(DEFAULT_SCHEDULER)  # type: ignore[valid-type]
    lora: str | None = Field(None, max_length=300, pattern=_LORA_PATTERN, description=(
        "a training run of this workspace (its name) or a Hub LoRA (owner/name or "
        "owner/name:file.safetensors); null for none"))
    lora_scale: float = Field(1.0, ge=-4, le=4)
    refiner: bool = Field(False, description="finish with the SDXL refiner (ensemble of experts)")
    refiner_switch: float = Field(0.8, gt=0, lt=1, description="fraction of the denoising done "
                                  "by the base before the refiner takes over")
    save_to_gallery: bool = Field(False, description="also keep the images in the app's gallery")


def request_model(settings: "ApiSettings") -> type[GenerateImageRequest]:
    """:class:`GenerateImageRequest` narrowed to this server's limits, so that the OpenAPI
    schema tells clients exactly what is accepted."""
    side = min(2048, settings.max_side) // 8 * 8
    steps = min(150, settings.max_steps)
    images = min(8, settings.max_images)
    return create_model(
        "GenerateImageRequest", __base__=GenerateImageRequest, __doc__=GenerateImageRequest.__doc__,
        steps=(int, Field(min(30, steps), ge=1, le=steps)),
        width=(int, Field(min(1024, side), ge=64, le=side, multiple_of=8)),
        height=(int, Field(min(1024, side), ge=64, le=side, multiple_of=8)),
        num_images=(int, Field(1, ge=1, le=images)))


class GeneratedImageOut(BaseModel):
    png_base64: str = Field(description="the PNG file (with its parameters embedded), base64")
    seed: int
    params: dict[str, Any]


class GenerateImageResponse(BaseModel):
    images: list[GeneratedImageOut]
    usage: dict[str, int] = Field(description="the calling key's totals after this request")


class ErrorOut(BaseModel):
    error: str
    message: str


class KeyUsage(BaseModel):
    id: int
    name: str
    key: str = Field(description="the key's prefix only, never the secret")
    admin: bool
    rate_limit_per_min: int | None
    quota_images: int | None
    images: int
    requests: int
    created: float
    last_used: float | None
    revoked: bool


class UsageResponse(BaseModel):
    key: KeyUsage
    keys: list[KeyUsage] | None = Field(None, description="every key (admin keys only)")


class Health(BaseModel):
    status: Literal["ok"]
    version: str
    queue: dict[str, int]


# ---- errors ---------------------------------------------------------------------------------
class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None
           ) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status, headers=headers)


def _validation_message(exc: RequestValidationError) -> str:
    errors = exc.errors()
    if not errors:
        return "The request is not valid."
    e = errors[0]
    loc = [str(p) for p in e.get("loc", ()) if p not in ("body",)]
    if e.get("type") == "json_invalid":
        return "The request body is not valid JSON."
    where = f"Field '{'.'.join(loc)}': " if loc else ""
    msg = str(e.get("msg", "invalid value")).rstrip(".")
    if e.get("type") == "string_pattern_mismatch" and loc and loc[-1] in _PATTERN_HELP:
        msg = _PATTERN_HELP[loc[-1]]
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return f"{where}{msg}{more}."


_PATTERN_HELP = {
    "prompt": "the prompt is empty; describe the image to generate",
    "lora": "give the name of a training run of this studio or a Hub id like "
            "owner/name[:file.safetensors]",
}

_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "missing, malformed, unknown or revoked API key"},
    422: {"model": ErrorOut, "description": "invalid request (one-sentence message)"},
    429: {"model": ErrorOut, "description": "rate limit or quota of this key reached"},
}


# ---- the gate: a bounded queue in front of the GPU ---------------------------------------------
class Gate:
    """Admits at most ``size`` requests at once; the rest are refused immediately."""

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


# ---- the app --------------------------------------------------------------------------------
_bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer sk-studio-...")
_header_key = APIKeyHeader(name="X-API-Key", auto_error=False,
                           description="X-API-Key: sk-studio-...")


def create_api(workspace: Workspace, *, base: str | None = None, refiner: str | None = None,
               vae: str | None = None, settings: ApiSettings | None = None) -> FastAPI:
    """The FastAPI app with the studio's HTTP API (mount the UI on it afterwards)."""
    settings = settings or ApiSettings.from_env()
    store = KeyStore(workspace)
    gate = Gate(settings.queue_size)
    Body = request_model(settings)
    app = FastAPI(
        title="SDXL LoRA Studio API", version=__version__,
        description="Generate images with SDXL base (+ refiner, + your LoRA). Authenticate with "
                    "an API key (`python -m studio api-keys create`) in `Authorization: Bearer` "
                    "or `X-API-Key`.",
        docs_url="/docs", redoc_url=None, openapi_url="/openapi.json")
    app.state.keys = store
    app.state.gate = gate
    app.state.settings = settings

    @app.exception_handler(ApiError)
    async def _api_error(_req: Request, exc: ApiError):
        return _error(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_req: Request, exc: RequestValidationError):
        return _error(422, "invalid_request", _validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_req: Request, exc: StarletteHTTPException):
        if exc.status_code == 400:  # FastAPI could not decode the body at all
            return _error(422, "invalid_request", "The request body is not valid JSON text.")
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        detail = exc.detail if isinstance(exc.detail, str) else "The request was refused."
        return _error(exc.status_code, code, detail, getattr(exc, "headers", None))

    def require_key(request: Request,
                    _bearer_doc: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
                    _header_doc: Annotated[str | None, Depends(_header_key)]) -> ApiKey:
        """The caller's active key. Every credential sent must be that key: a second, different
        or non-Bearer credential is refused rather than ignored."""
        hdrs = {"WWW-Authenticate": "Bearer"}
        given: list[str] = []
        authz = request.headers.get("authorization")
        if authz is not None:
            scheme, _, cred = authz.strip().partition(" ")
            if scheme.lower() != "bearer" or not cred.strip():
                raise ApiError(401, "invalid_api_key", "The Authorization header must be "
                               "'Bearer KEY' with an API key.", hdrs)
            given.append(cred.strip())
        if request.headers.get("x-api-key") is not None:
            given.append(request.headers["x-api-key"].strip())
        if not given:
            raise ApiError(401, "missing_api_key", "An API key is required: send it as "
                           "'Authorization: Bearer KEY' or 'X-API-Key: KEY'.", hdrs)
        if len(set(given)) > 1:
            raise ApiError(401, "invalid_api_key", "Two different API keys were sent; send one.",
                           hdrs)
        key = store.authenticate(given[0])
        if key is None:
            raise ApiError(401, "invalid_api_key", "The API key is malformed, unknown or revoked.",
                           hdrs)
        return key

    @app.get("/health", response_model=Health, tags=["service"])
    def health() -> dict[str, Any]:
        """Liveness for Docker/Spaces health checks (no authentication, no secrets)."""
        return {"status": "ok", "version": __version__,
                "queue": {"active": gate.active, "size": gate.size}}

    @app.get("/api_key_usage", response_model=UsageResponse, tags=["keys"],
             responses={401: _ERROR_RESPONSES[401]})
    def api_key_usage(key: Annotated[ApiKey, Depends(require_key)]) -> dict[str, Any]:
        """The calling key's usage (successful images and requests); an admin key sees all."""
        me = store.get(key.id).public()
        out: dict[str, Any] = {"key": me, "keys": None}
        if key.admin:
            out["keys"] = [k.public() for k in store.list()]
        return out

    def _resolve_lora(ref: str | None) -> str | None:
        """A run name of this workspace or a Hub id; never an arbitrary server path."""
        if ref is None or not ref.strip():
            return None
        ref = ref.strip()
        if _HUB_LORA_RE.match(ref) and ".." not in ref:
            return ref
        try:
            run = workspace.run_path(safe_name(ref, "LoRA run name"))
        except WorkspaceError:
            raise ApiError(422, "invalid_lora", "The LoRA must be the name of a training run of "
                           "this studio or a Hub id like owner/name[:file.safetensors].") from None
        if not (run / "pytorch_lora_weights.safetensors").is_file():
            raise ApiError(404, "unknown_lora", f"No finished training run named {ref!r} in this "
                           "studio.")
        return str(run)

    @app.post("/generate_image", tags=["generate"],
              response_model=GenerateImageResponse,
              responses={200: {"content": {"image/png": {"schema": {"type": "string",
                                                                      "format": "binary"}}},
                               "description": "JSON with base64 PNGs, or one raw PNG when the "
                                              "request's Accept header is image/png"},
                         **_ERROR_RESPONSES,
                         404: {"model": ErrorOut, "description": "no such LoRA run"},
                         406: {"model": ErrorOut, "description": "image/png asked for several "
                               "images"},
                         503: {"model": ErrorOut, "description": "queue full (see Retry-After) "
                               "or a model could not be loaded"}})
    async def generate_image(body: Body, request: Request,  # type: ignore[valid-type]
                             key: Annotated[ApiKey, Depends(require_key)]):
        """Generate images; each successful image counts once towards the key's usage."""
        want_png = _wants_png(request.headers.get("accept", ""))
        if want_png and body.num_images != 1:
            raise ApiError(406, "not_acceptable", "A raw image/png response holds one image; ask "
                           "for JSON (Accept: application/json) to get several.")
        lora = _resolve_lora(body.lora)
        req = GenerationRequest(
            prompt=body.prompt, negative_prompt=body.negative_prompt, seed=body.seed,
            steps=body.steps, guidance=body.guidance, width=body.width, height=body.height,
            num_images=body.num_images, scheduler=body.scheduler, lora=lora,
            lora_scale=body.lora_scale, refiner=body.refiner, refiner_switch=body.refiner_switch)
        try:
            req.validate()
        except GenerationError as exc:
            raise ApiError(422, "invalid_request", str(exc)) from None
        retry = {"Retry-After": str(settings.retry_after_s)}
        if not gate.try_enter():
            raise ApiError(503, "busy", f"The server is busy ({gate.size} requests queued); "
                           f"retry in {settings.retry_after_s} s.", retry)
        try:
            try:
                store.reserve(key, req.num_images)
            except RateLimited as exc:
                hdrs = {"Retry-After": str(exc.retry_after)} if exc.retry_after else None
                raise ApiError(429, "rate_limited", str(exc), hdrs) from None
            try:
                results, encoded = await run_in_threadpool(_generate, req, body.save_to_gallery)
                await run_in_threadpool(store.record, key, len(results))
            finally:
                store.release(key, req.num_images)
        finally:
            gate.leave()
        if want_png:
            params = results[0].params
            headers = {"X-Seed": str(params["seed"])}
            meta = json.dumps(params, default=str)  # ASCII-only; the PNG embeds it as well
            if len(meta) <= 8192:
                headers["X-Studio-Params"] = meta
            return Response(encoded[0], media_type="image/png", headers=headers)
        usage = store.get(key.id)
        return {"images": [{"png_base64": base64.b64encode(b).decode("ascii"),
                            "seed": r.params["seed"], "params": r.params}
                           for r, b in zip(results, encoded, strict=True)],
                "usage": {"images": usage.images, "requests": usage.requests}}

    def _generate(req: GenerationRequest, save: bool):
        gen = get_generator(base, refiner, vae)
        try:
            results = gen.generate(req)
        except GenerationError as exc:
            raise ApiError(422, "invalid_request", str(exc)) from None
        except ModelLoadError as exc:
            raise ApiError(503, "model_unavailable", str(exc)) from None
        except Exception:
            log.exception("API generation failed")
            raise ApiError(500, "generation_failed", "Generation failed unexpectedly; the "
                           "server log has the details.") from None
        if save:
            gallery = Gallery(workspace.gallery_dir)
            for r in results:
                gallery.add(r.image, r.params)  # the local gallery keeps the full sources
        for r in results:
            r.params = public_params(r.params)
        encoded = [png_bytes(r.image, r.params) for r in results]
        return results, encoded

    return app


def public_params(params: dict[str, Any]) -> dict[str, Any]:
    """Image parameters for API clients: model sources that are server folders or files are
    reduced to their name (a run's LoRA to the run name), so no server path leaves the host."""
    out = dict(params)
    for key in ("base_model", "refiner", "lora"):
        value = out.get(key)
        if isinstance(value, str) and looks_like_path(value):
            p = Path(value)
            out[key] = p.parent.name if p.name == LORA_FILE else p.name
    return out


def _wants_png(accept: str) -> bool:
    """True when the client prefers image/png over JSON."""
    types = [t.split(";")[0].strip().lower() for t in accept.split(",") if t.strip()]
    if "image/png" not in types:
        return False
    return "application/json" not in types or types.index("image/png") < \
        types.index("application/json")
