"""Model ids, local overrides, device/dtype choice, lazy cached loading and the GPU lock.

Every model the studio uses has a default Hub id that the operator can replace by an environment
variable (or a command-line option) holding another Hub id or a local folder:

==========  ===============================================  ========================
role        default                                          environment variable
==========  ===============================================  ========================
base        stabilityai/stable-diffusion-xl-base-1.0         STUDIO_BASE_MODEL
vae         madebyollin/sdxl-vae-fp16-fix                    STUDIO_VAE_MODEL
refiner     stabilityai/stable-diffusion-xl-refiner-1.0      STUDIO_REFINER_MODEL
captioner   Salesforce/blip-image-captioning-large           STUDIO_CAPTION_MODEL
==========  ===============================================  ========================

The fp16-fix VAE replaces the VAE bundled with the default SDXL base (the original one overflows
in fp16). A custom base keeps its own VAE unless ``STUDIO_VAE_MODEL`` is set; the value ``base``
always means "the VAE inside the base model".

Nothing loads at import. Loaders are cached per (role, source, device, dtype); GPU work is
serialised by :data:`GPU_LOCK`. A model that cannot be loaded raises :class:`ModelLoadError`
whose message is one sentence naming the model, the cause and the fix.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from studio.errors import StudioError, first_line

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelRole:
    key: str
    label: str
    default: str
    env: str


ROLES: dict[str, ModelRole] = {
    "base": ModelRole("base", "SDXL base model", "stabilityai/stable-diffusion-xl-base-1.0",
                      "STUDIO_BASE_MODEL"),
    "vae": ModelRole("vae", "SDXL VAE", "madebyollin/sdxl-vae-fp16-fix", "STUDIO_VAE_MODEL"),
    "refiner": ModelRole("refiner", "SDXL refiner", "stabilityai/stable-diffusion-xl-refiner-1.0",
                         "STUDIO_REFINER_MODEL"),
    "captioner": ModelRole("captioner", "BLIP captioning model",
                           "Salesforce/blip-image-captioning-large", "STUDIO_CAPTION_MODEL"),
}

GPU_LOCK = threading.RLock()
"""Held around every piece of GPU work (generation, captioning) in this process."""


class ModelLoadError(StudioError, RuntimeError):
    """A model could not be loaded; ``str(err)`` is one sentence meant for the user."""


def model_source(role: str, override: str | os.PathLike | None = None) -> str:
    """The Hub id or local folder for ``role``: explicit override, then env var, then default."""
    r = ROLES[role]
    if override not in (None, ""):
        return str(override)
    return os.environ.get(r.env) or r.default


@dataclass(frozen=True)
class ModelSources:
    """The operator's model choices, resolved once at start (option, else environment
    variable, else default). In-process code gets them from here; only subprocesses (training
    jobs) receive them, as environment variables (:meth:`environment`)."""

    base: str
    refiner: str
    captioner: str
    vae: str | None = None

    @classmethod
    def resolve(cls, base: str | None = None, refiner: str | None = None,
                captioner: str | None = None, vae: str | None = None) -> ModelSources:
        return cls(base=model_source("base", base), refiner=model_source("refiner", refiner),
                   captioner=model_source("captioner", captioner),
                   vae=str(vae) if vae else os.environ.get(ROLES["vae"].env) or None)

    def environment(self) -> dict[str, str]:
        """The environment variables that hand these choices to a subprocess."""
        env = {ROLES[r].env: getattr(self, r) for r in ("base", "refiner", "captioner")}
        if self.vae:
            env[ROLES["vae"].env] = self.vae
        return env


def vae_source(base: str, override: str | None = None) -> str | None:
    """The VAE to load for ``base``, or None to keep the VAE inside the base model."""
    value = override if override not in (None, "") else os.environ.get(ROLES["vae"].env)
    if value:
        return None if value == "base" else value
    return ROLES["vae"].default if base == ROLES["base"].default else None


def looks_like_path(source: str) -> bool:
    """True when ``source`` is meant as a local path rather than a Hub id ("user/name")."""
    s = str(source)
    if s.startswith(("/", "./", "../", "~", "\\")) or (len(s) > 1 and s[1] == ":"):
        return True
    if Path(s).expanduser().exists():
        return True
    # A Hub id is "name" or "owner/name" with no more slashes.
    return s.count("/") > 1


# ---- device and dtype ----------------------------------------------------------------------
def pick_device(preference: str | None = None) -> str:
    """``cuda`` when available, else ``mps``, else ``cpu``; ``STUDIO_DEVICE`` overrides."""
    import torch

    pref = preference or os.environ.get("STUDIO_DEVICE") or "auto"
    if pref != "auto":
        if pref.startswith("cuda") and not torch.cuda.is_available():
            raise ModelLoadError(f"Device {pref!r} was requested but no CUDA GPU is available; "
                                 "set STUDIO_DEVICE=cpu or auto.")
        return pref
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


_DTYPES = {"fp32": "float32", "float32": "float32", "fp16": "float16", "float16": "float16",
           "bf16": "bfloat16", "bfloat16": "bfloat16"}


def pick_dtype(device: str, preference: str | None = None):
    """bf16 on GPUs that support it, else fp16 on CUDA/MPS, fp32 on CPU; ``STUDIO_DTYPE`` overrides."""
    import torch

    pref = preference or os.environ.get("STUDIO_DTYPE") or "auto"
    if pref != "auto":
        if pref not in _DTYPES:
            raise ModelLoadError(f"Unknown dtype {pref!r}; use auto, fp32, fp16 or bf16.")
        return getattr(torch, _DTYPES[pref])
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device == "mps":
        return torch.float16
    return torch.float32


# ---- errors ---------------------------------------------------------------------------------
def explain_load_error(role: str, source: str, exc: BaseException) -> ModelLoadError:
    """Turn any loading exception into one user-facing sentence."""
    label = ROLES[role].label if role in ROLES else role
    env = ROLES[role].env if role in ROLES else None
    fix_var = f"set {env} (or the matching option) to a local folder with the model" if env else \
        "point the option at a local folder with the model"
    text = f"{type(exc).__name__}: {exc}"
    low = text.lower()
    if looks_like_path(source) and not Path(source).expanduser().exists():
        msg = f"The {label} folder {source} does not exist; check the path or {fix_var}."
    elif "outofmemory" in low.replace(" ", "") or "out of memory" in low:
        msg = (f"Not enough GPU memory to load the {label} ({source}); close other GPU programs, "
               "turn off the refiner, or use a smaller resolution.")
    elif "gated" in low or "401" in low or "403" in low or "unauthorized" in low:
        msg = (f"The {label} {source} is gated or private; accept its license on the Hub and set "
               "HF_TOKEN, or " + fix_var + ".")
    elif looks_like_path(source):
        msg = (f"The folder {source} is not a valid {label} ({_first_line(exc)}); it must hold "
               "the model saved in diffusers/transformers format.")
    elif not _hub_offline() and ("not a valid model identifier" in low or "404" in low
                                 or "repository not found" in low or "repositorynotfound" in low):
        msg = f"The {label} {source} was not found on the Hub; check the id or {fix_var}."
    elif _hub_offline() or any(k in low for k in (
            "connect", "offline", "resolve", "timed out", "network", "max retries",
            "cannot find the requested files", "localentrynotfound", "couldn't find",
            "can't load", "don't have a local directory")):
        msg = (f"Could not download the {label} {source} (no network or not in the local cache); "
               f"connect to the internet once, or {fix_var}.")
    else:
        msg = f"Could not load the {label} {source}: {_first_line(exc)}."
    err = ModelLoadError(msg)
    err.__cause__ = exc
    return err


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}


def _first_line(exc: BaseException) -> str:
    return first_line(exc).rstrip(".")[:200]


# ---- the cache ------------------------------------------------------------------------------
_CACHE: dict[tuple, Any] = {}
_CACHE_LOCK = threading.Lock()


def cached(key: tuple, loader: Callable[[], Any]) -> Any:
    """Return the cached object for ``key``, loading it once (thread-safe)."""
    with _CACHE_LOCK:
        if key in _CACHE:
            return _CACHE[key]
    if _QUIET["wanted"]:
        _silence()
    obj = loader()
    with _CACHE_LOCK:
        return _CACHE.setdefault(key, obj)


def _check_local(role: str, source: str) -> None:
    if looks_like_path(source) and not Path(source).expanduser().exists():
        raise explain_load_error(role, source, FileNotFoundError(source))


def load_sdxl_pipeline(base: str | None = None, vae: str | None = None, device: str | None = None,
                       dtype: Any = None):
    """The SDXL text-to-image pipeline (cached)."""
    source = model_source("base", base)
    _check_local("base", source)
    device = device or pick_device()
    dtype = dtype or pick_dtype(device)
    vae_src = vae_source(source, vae)

    def load():
        from diffusers import AutoencoderKL, StableDiffusionXLPipeline

        kwargs: dict[str, Any] = {"dtype": dtype}
        if vae_src:
            _check_local("vae", vae_src)
            try:
                kwargs["vae"] = AutoencoderKL.from_pretrained(_expand(vae_src), dtype=dtype)
            except Exception as exc:
                raise explain_load_error("vae", vae_src, exc) from exc
        if dtype is not None and str(dtype).endswith("float16") and not looks_like_path(source):
            kwargs["variant"] = "fp16"
        from studio.singlefile import local_base

        path = local_base(_expand(source))  # a single-file base: its converted folder
        try:
            try:
                pipe = StableDiffusionXLPipeline.from_pretrained(path, **kwargs)
            except (OSError, ValueError) as exc:
                if "variant" not in kwargs or "variant" not in str(exc):
                    raise
                kwargs.pop("variant")
                pipe = StableDiffusionXLPipeline.from_pretrained(path, **kwargs)
            pipe.to(device)
        except ModelLoadError:
            raise
        except Exception as exc:
            raise explain_load_error("base", source, exc) from exc
        pipe.set_progress_bar_config(disable=True)
        log.info("loaded SDXL base %s on %s (%s)", source, device, dtype)
        return pipe

    return cached(("base", source, vae_src, device, str(dtype)), load)


def load_refiner(refiner: str | None = None, base_pipe=None, device: str | None = None,
                 dtype: Any = None):
    """The SDXL img2img refiner (cached); shares the base's VAE and second text encoder."""
    source = model_source("refiner", refiner)
    _check_local("refiner", source)
    device = device or pick_device()
    dtype = dtype or pick_dtype(device)

    def load():
        from diffusers import StableDiffusionXLImg2ImgPipeline

        kwargs: dict[str, Any] = {"dtype": dtype}
        if base_pipe is not None:
            kwargs["text_encoder_2"] = base_pipe.text_encoder_2
            kwargs["vae"] = base_pipe.vae
        try:
            pipe = StableDiffusionXLImg2ImgPipeline.from_pretrained(_expand(source), **kwargs)
            pipe.to(device)
        except Exception as exc:
            raise explain_load_error("refiner", source, exc) from exc
        pipe.set_progress_bar_config(disable=True)
        log.info("loaded SDXL refiner %s on %s", source, device)
        return pipe

    return cached(("refiner", source, id(base_pipe), device, str(dtype)), load)


def load_captioner(captioner: str | None = None, device: str | None = None, dtype: Any = None):
    """(processor, model) of the BLIP captioner (cached)."""
    source = model_source("captioner", captioner)
    _check_local("captioner", source)
    device = device or pick_device()
    dtype = dtype or pick_dtype(device)

    def load():
        from transformers import BlipForConditionalGeneration, BlipProcessor

        try:
            processor = BlipProcessor.from_pretrained(_expand(source))
            model = BlipForConditionalGeneration.from_pretrained(_expand(source), dtype=dtype)
            model.to(device).eval()
        except Exception as exc:
            raise explain_load_error("captioner", source, exc) from exc
        return processor, model

    return cached(("captioner", source, device, str(dtype)), load)


def _not_optional_kernels(record: logging.LogRecord) -> bool:
    """False for bitsandbytes' import-time note that the optional Hub 'kernels' package is
    missing (it then uses its own CPU code); every other record passes."""
    return not (record.getMessage().startswith("Failed to load CPU gemm_4bit_forward from "
                                               "kernels-community: No module named 'kernels'"))


_QUIET = {"wanted": False}


def quiet_libraries(lazy: bool = False) -> None:
    """Silence third-party progress bars and advice-level warnings in the CLI and the app.
    ``lazy`` (the app): only set the environment now; diffusers and transformers (seconds of
    imports) are silenced when the first model loads (:func:`cached`), not before the first page."""
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    bnb = logging.getLogger("bitsandbytes.backends.cpu.ops")  # filters work before its import
    if _not_optional_kernels not in bnb.filters:
        bnb.addFilter(_not_optional_kernels)
    _QUIET["wanted"] = True
    if not lazy:
        _silence()


def _silence() -> None:
    try:
        from diffusers.utils import logging as dlog

        dlog.set_verbosity_error()
        dlog.disable_progress_bar()
        from transformers.utils import logging as tlog

        tlog.set_verbosity_error()
        tlog.disable_progress_bar()
    except Exception:  # pragma: no cover - libraries missing
        pass


def _expand(source: str) -> str:
    return str(Path(source).expanduser()) if looks_like_path(source) else source


# ---- the Hub ---------------------------------------------------------------------------------
def hub_endpoint() -> str:
    """The Hub URL: ``HF_ENDPOINT`` read now (a mirror or a local stand-in), else huggingface_hub's
    default. Passed explicitly to every Hub call, so the value is the same for all of them even
    when the variable was set after huggingface_hub was imported."""
    env = os.environ.get("HF_ENDPOINT")
    if env:
        return env.rstrip("/")
    from huggingface_hub import constants

    return constants.ENDPOINT.rstrip("/")
