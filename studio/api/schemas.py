"""The JSON shapes of the HTTP API: the request body (its ranges from
:data:`studio.generate.request.LIMITS`, narrowed by the server's :class:`ApiSettings`) and the
responses."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    create_model,
)

from studio.api.settings import ApiSettings
from studio.generate.request import LIMITS
from studio.generate.schedulers import DEFAULT_SCHEDULER, SCHEDULERS

SchedulerName = Literal[tuple(SCHEDULERS)]  # type: ignore[valid-type]

_HUB_LORA = (r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}"
             r"(:[A-Za-z0-9][A-Za-z0-9._/-]{0,200}\.safetensors)?")
_RUN_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,79}"
_LORA_PATTERN = f"^({_RUN_NAME}|{_HUB_LORA})$"
# At least one character that is not whitespace (str.isspace also counts \x1c-\x1f).
_NOT_BLANK = r"[^\s\x1c-\x1f]"

# Messages for fields whose pattern does not match (pydantic would quote the regex).
PATTERN_HELP = {
    "prompt": "the prompt is empty; describe the image to generate",
    "lora": "give the name of a training run of this studio or a Hub id like "
            "owner/name[:file.safetensors]",
}


def _whole(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


# JSON types are taken as they are: true is not 1 and "5" is not 5. As in JSON Schema, 5.0 is
# an integer and a number field takes 7.
WholeNumber = Annotated[StrictInt, BeforeValidator(_whole)]
STRICT: dict[type, Any] = {int: WholeNumber, float: StrictFloat}


def strict(name: str) -> Any:
    """The strict pydantic type of ``LIMITS[name]``'s kind."""
    return STRICT[LIMITS[name].kind]


def limit_field(name: str, hi: float | None = None, **extra: Any) -> Any:
    """A pydantic Field with the range of ``LIMITS[name]`` (its top lowered to ``hi``)."""
    lim = LIMITS[name]
    top = lim.hi if hi is None else hi
    bounds: dict[str, Any] = dict(gt=lim.lo, lt=top) if lim.exclusive else dict(ge=lim.lo, le=top)
    if lim.multiple_of:
        bounds["multiple_of"] = lim.multiple_of
    return Field(lim.kind(min(lim.default, top)), **bounds, **extra)


class GenerateImageRequest(BaseModel):
    """What to generate. Defaults are SDXL's usual settings. Numbers and switches are strict:
    ``true`` is not a step count and ``"5"`` is not a number (each numeric field's type is
    ``strict(name)``)."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=int(LIMITS["prompt"].lo), max_length=int(LIMITS["prompt"].hi),
                        pattern=_NOT_BLANK,
                        examples=["a photo of TOK person, portrait, natural light"])
    negative_prompt: str = Field("", max_length=int(LIMITS["negative_prompt"].hi))
    seed: WholeNumber = limit_field("seed", description="-1 for a random seed; image i uses seed + i")
    steps: WholeNumber = limit_field("steps")
    guidance: StrictFloat = limit_field("guidance", description="classifier-free guidance scale")
    width: WholeNumber = limit_field("width")
    height: WholeNumber = limit_field("height")
    num_images: WholeNumber = limit_field("num_images")
    scheduler: SchedulerName = Field(DEFAULT_SCHEDULER)  # type: ignore[valid-type]
    lora: str | None = Field(None, max_length=300, pattern=_LORA_PATTERN, description=(
        "a training run of this workspace (its name) or a Hub LoRA (owner/name or "
        "owner/name:file.safetensors); null for none"))
    lora_scale: StrictFloat = limit_field("lora_scale")
    refiner: StrictBool = Field(False, description="finish with the SDXL refiner (ensemble of "
                                "experts)")
    refiner_switch: StrictFloat = limit_field("refiner_switch", description="fraction of the "
                                              "denoising done by the base before the refiner "
                                              "takes over")
    save_to_gallery: StrictBool = Field(False, description="also keep the images in the app's "
                                        "gallery")


def request_model(settings: ApiSettings) -> type[GenerateImageRequest]:
    """:class:`GenerateImageRequest` narrowed to this server's limits, so that the OpenAPI
    schema tells clients exactly what is accepted."""
    caps = {"steps": settings.max_steps, "width": settings.max_side,
            "height": settings.max_side, "num_images": settings.max_images}
    fields: dict[str, Any] = {}
    for name, cap in caps.items():
        lim = LIMITS[name]
        top = min(lim.hi, cap)
        if lim.multiple_of:
            top = top // lim.multiple_of * lim.multiple_of
        fields[name] = (strict(name), limit_field(name, top))
    return create_model("GenerateImageRequest", __base__=GenerateImageRequest,
                        __doc__=GenerateImageRequest.__doc__, **fields)


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
