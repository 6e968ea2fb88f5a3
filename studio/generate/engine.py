"""The generation core: SDXL base, optional refiner (ensemble of experts), LoRA switching.

The base pipeline loads once and stays loaded; LoRAs are attached as named adapters, so
switching, re-weighting or removing a LoRA between generations never reloads the base model.
Each image ``i`` of a request uses seed ``seed + i`` on a CPU generator, so the same seed and
settings give the same image on any machine and at any batch size.
"""

from __future__ import annotations

import itertools
import logging
import random
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from PIL import Image

from studio import __version__
from studio.errors import StudioError, first_line
from studio.generate import performance
from studio.generate.embeddings import apply_embeddings
from studio.generate.request import MAX_SEED, GenerationError, GenerationRequest
from studio.generate.schedulers import make_scheduler
from studio.lora.refs import LoraRef, resolve_lora
from studio.models import (
    GPU_LOCK,
    ModelLoadError,
    load_refiner,
    load_sdxl_pipeline,
    model_source,
    pick_device,
    pick_dtype,
)

log = logging.getLogger(__name__)

# pipeline -> OrderedDict[(file, mtime) -> adapter name], least recently used first.
_PIPE_ADAPTERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# pipeline -> its scheduler config as loaded, before any request replaced its scheduler.
_PIPE_SCHEDULERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_ADAPTER_IDS = itertools.count()
_LORA_NOTES: dict[tuple, list[str]] = {}  # (file, mtime) -> warnings of its load


@dataclass
class GeneratedImage:
    image: Image.Image
    params: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # sentences about the LoRA's load


ProgressFn = Callable[[int, int, int, int], None]  # (image index, n images, step, steps)
CancelledFn = Callable[[], bool]  # asked before every denoising step: True stops the generation


class GenerationCancelled(StudioError):
    """The generation was stopped between two denoising steps (its caller asked for it, e.g.
    because the client went away); ``where`` says how far it got."""

    def __init__(self, where: str):
        super().__init__(f"The generation was cancelled at {where}.")
        self.where = where


class Generator:
    """Holds the loaded pipelines and the attached LoRAs for one base model."""

    MAX_ADAPTERS = 4

    def __init__(self, base: str | None = None, refiner: str | None = None,
                 vae: str | None = None, device: str | None = None, dtype: Any = None,
                 base_pipe: Any = None, refiner_pipe: Any = None):
        """Sources are Hub ids or folders; ``base_pipe``/``refiner_pipe`` use already built
        pipelines instead (benchmarks with random full-size weights)."""
        self._base_pipe, self._refiner_pipe = base_pipe, refiner_pipe
        self.base_source = model_source("base", base)
        self.refiner_source = model_source("refiner", refiner)
        self.vae = vae
        self.device = device or pick_device()
        self.dtype = dtype or pick_dtype(self.device)
        self.lora_notes: list[str] = []  # warnings about the current LoRA's load
        self.plan: performance.Plan | None = None  # chosen per request (free memory, refiner)
        self.modes: dict[str, Any] = {}
        self._loads_on: str | None = None

    # ---- models ----------------------------------------------------------------------------
    def base_pipe(self):
        pipe = self._base_pipe or load_sdxl_pipeline(
            self.base_source, self.vae, self._load_device(), self.dtype)
        _PIPE_SCHEDULERS.setdefault(pipe, dict(pipe.scheduler.config))
        return pipe

    def _load_device(self) -> str:
        """Where the pipelines load, fixed by the first plan (offloaded ones load on the CPU;
        a later plan moves them)."""
        if self.plan is None:
            self.plan = performance.choose(self.device, refiner=False)
        if self._loads_on is None:
            self._loads_on = performance.load_device(self.device, self.plan)
        return self._loads_on

    def refiner_pipe(self):
        pipe = self._refiner_pipe or load_refiner(
            self.refiner_source, self.base_pipe(), self._load_device(), self.dtype)
        _PIPE_SCHEDULERS.setdefault(pipe, dict(pipe.scheduler.config))
        return pipe

    @staticmethod
    def _use_scheduler(pipe, name: str) -> None:
        """A fresh scheduler ``name`` from the pipeline's own scheduler config as loaded (the
        cached pipelines are shared: never from the one a previous request put there)."""
        pipe.scheduler = make_scheduler(name, _PIPE_SCHEDULERS[pipe])

    # ---- LoRA ------------------------------------------------------------------------------
    def _apply_lora(self, pipe, lora: str | LoraRef | None, scale: float) -> LoraRef | None:
        # Adapters are tracked per pipeline: the cached pipeline is shared by every Generator.
        adapters = _PIPE_ADAPTERS.setdefault(pipe, OrderedDict())
        if not lora:
            if adapters:
                pipe.disable_lora()
            return None
        ref = resolve_lora(lora)
        file = ref.path / (ref.weight_name or "")
        key = (str(file.resolve()), file.stat().st_mtime_ns if file.exists() else 0)
        name = adapters.get(key)
        if name is None:
            name = f"lora_{next(_ADAPTER_IDS)}"
            from studio.generate import lora_load

            try:
                folder, weight, notes = ref.path, ref.weight_name, []
                if weight:  # one layout diffusers loads whole (see lora_load)
                    use, notes = lora_load.prepare(file, ref.label, self.base_source)
                    folder, weight = use.parent, use.name
                pipe.load_lora_weights(str(folder), weight_name=weight, adapter_name=name)
            except Exception as exc:
                raise ModelLoadError(f"The LoRA {ref.label} could not be loaded into this base "
                                     f"model ({first_line(exc, 160)}); check that it is an SDXL "
                                     "LoRA.") from exc
            if weight:
                notes += lora_load.check_applied(pipe, folder / weight, name, ref.label,
                                                 self.base_source)
            for note in notes:
                log.warning("%s", note)
            _LORA_NOTES[key] = notes
            adapters[key] = name
            while len(adapters) > self.MAX_ADAPTERS:
                _, old = adapters.popitem(last=False)
                pipe.delete_adapters(old)
        else:
            adapters.move_to_end(key)
        self.lora_notes = _LORA_NOTES.get(key, [])
        pipe.enable_lora()
        pipe.set_adapters([name], adapter_weights=[float(scale)])
        return ref

    def _performance(self, pipe, refiner, req: GenerationRequest, lora_on: bool) -> dict:
        """Memory and speed modes (:mod:`studio.generate.performance`) for this request."""
        performance.prepare(pipe, self.plan, self.device)
        modes = performance.per_request(pipe, self.plan, int(req.width), int(req.height), lora_on)
        if refiner is not None:
            performance.prepare(refiner, self.plan, self.device, shared_vae=True)
            performance.per_request(refiner, self.plan, int(req.width), int(req.height), False,
                                    shared_vae=True)
        return {"memory_mode": self.plan.mode, "speed": self.plan.speed, **modes}

    def loaded_adapters(self) -> list[str]:
        return list(_PIPE_ADAPTERS.get(self.base_pipe(), {}).values())

    # ---- generation ------------------------------------------------------------------------
    @staticmethod
    def _refine(refiner, lora_on: bool, common: dict[str, Any], latents, gen, switch: float,
                on_step):
        """The refiner pass. It shares text_encoder_2 with the base, so a text-encoder LoRA
        there would condition it too; the refiner gets the plain encoder it was trained with
        (as in ComfyUI and A1111, where a LoRA patches the base's CLIP only) and the LoRA is
        switched back on for the next base pass."""
        from diffusers.loaders.lora_base import (
            disable_lora_for_text_encoder,
            enable_lora_for_text_encoder,
        )

        lora_on = lora_on and refiner.text_encoder_2 is not None
        if lora_on:
            disable_lora_for_text_encoder(refiner.text_encoder_2)
        try:
            return refiner(**common, image=latents, generator=gen, denoising_start=switch,
                           callback_on_step_end=on_step).images[0]
        finally:
            if lora_on:
                enable_lora_for_text_encoder(refiner.text_encoder_2)

    def generate(self, req: GenerationRequest, progress: ProgressFn | None = None,
                 cancelled: CancelledFn | None = None) -> list[GeneratedImage]:
        """The request's images. ``cancelled()`` is asked before each image and after each
        denoising step; when it answers True, :class:`GenerationCancelled` is raised."""
        import torch

        req.validate()
        base_seed = random.randint(0, MAX_SEED) if req.seed is None or int(req.seed) < 0 \
            else int(req.seed)
        out: list[GeneratedImage] = []
        with GPU_LOCK:
            self.plan = performance.choose(self.device, refiner=bool(req.refiner))
            pipe = self.base_pipe()
            refiner = self.refiner_pipe() if req.refiner else None
            lora_ref = self._apply_lora(pipe, req.lora, req.lora_scale)
            emb = apply_embeddings(pipe, lora_ref)  # pivotal tuning: the trigger's tokens
            self.modes = self._performance(pipe, refiner, req, lora_ref is not None)
            self._use_scheduler(pipe, req.scheduler)
            if refiner is not None:
                self._use_scheduler(refiner, req.scheduler)
            n, steps = int(req.num_images), int(req.steps)
            for i in range(n):
                seed = (base_seed + i) % (MAX_SEED + 1)
                t0 = time.perf_counter()
                _check(cancelled, f"image {i + 1}/{n}, before its first step")

                def on_step(_pipe, step, _t, kwargs, _i=i):
                    if progress:
                        progress(_i, n, step + 1, steps)
                    _check(cancelled, f"image {_i + 1}/{n}, step {step + 1}/{steps}")
                    return kwargs

                def on_refiner_step(_pipe, step, _t, kwargs, _i=i):
                    _check(cancelled, f"image {_i + 1}/{n}, refiner step {step + 1}")
                    return kwargs

                common = dict(prompt=emb.map_prompt(req.prompt) if emb else req.prompt,
                              negative_prompt=req.negative_prompt or None,
                              num_inference_steps=steps, guidance_scale=float(req.guidance))
                gen = torch.Generator("cpu").manual_seed(seed)
                try:
                    if refiner is None:
                        image = pipe(**common, width=int(req.width), height=int(req.height),
                                     generator=gen, callback_on_step_end=on_step).images[0]
                    else:
                        latents = pipe(**common, width=int(req.width), height=int(req.height),
                                       generator=gen, denoising_end=float(req.refiner_switch),
                                       output_type="latent", callback_on_step_end=on_step).images
                        image = self._refine(refiner, lora_ref is not None, common, latents,
                                             gen, float(req.refiner_switch), on_refiner_step)
                except torch.cuda.OutOfMemoryError as exc:
                    raise GenerationError(
                        "The GPU ran out of memory; lower the resolution or the number of images, "
                        "or turn off the refiner.") from exc
                params = {
                    **{k: v for k, v in asdict(req).items() if k not in ("lora", "refiner")},
                    "seed": seed, "num_images": n,
                    "lora": lora_ref.label if lora_ref else None,
                    "lora_scale": float(req.lora_scale) if lora_ref else None,
                    "embeddings": emb.record() if emb else None,
                    "refiner": self.refiner_source if refiner is not None else None,
                    "refiner_switch": float(req.refiner_switch) if refiner is not None else None,
                    "base_model": self.base_source, "device": self.device,
                    "dtype": str(self.dtype).replace("torch.", ""),
                    "studio_version": __version__,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "duration_s": round(time.perf_counter() - t0, 3),
                }
                notes = list(self.lora_notes) if lora_ref else []
                out.append(GeneratedImage(image, params, notes))
        return out


def _check(cancelled: CancelledFn | None, where: str) -> None:
    if cancelled is not None and cancelled():
        raise GenerationCancelled(where)
