"""Generation speed and memory modes: which one runs, why, and setting the pipelines up for it.

Speed (default on CUDA; ``STUDIO_SPEED=0`` turns it off, ``=1`` on elsewhere): attention runs
through PyTorch's SDPA (diffusers' default processor on torch 2), the UNet and VAE use the
channels_last memory format, and the QKV projections are fused (one matmul instead of three)
while no LoRA is active: a LoRA sits on to_q/to_k/to_v, which fused attention bypasses, so they
are unfused while one is on (and the UNet goes back to the contiguous format, see
:func:`per_request`). ``STUDIO_COMPILE=1`` also compiles the UNet with ``torch.compile``
once per process (each new image size compiles once more; the first image is slow). Measured
with dynamo's counters on the tiny models: the same LoRA at the same scale again does not
recompile, but every other LoRA change (a new LoRA, a new scale, switching back) does; diffusers'
hotswap (``enable_lora_hotswap`` + ``load_lora_weights(..., hotswap=True)``) would avoid that
and is not used yet, so compile stays opt-in.

Memory (``STUDIO_MEMORY_MODE`` = auto | gpu | model-offload | sequential-offload): auto picks
from the free GPU memory: every model on the GPU when it holds them (about 10 GiB for the base,
17 GiB with the refiner, fp16 at 1024 px), else model CPU offload (one model on the GPU at a
time: base and refiner on a ~16 GB card), else sequential offload (layer by layer, slow; the
last resort). Offload modes decode with VAE slicing, and with VAE tiling above 1024x1024 px.
"""

from __future__ import annotations

import logging
import os
import weakref
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

MEMORY_ENV, SPEED_ENV, COMPILE_ENV = "STUDIO_MEMORY_MODE", "STUDIO_SPEED", "STUDIO_COMPILE"
MODES = ("gpu", "model-offload", "sequential-offload")
GPU_GIB = {False: 10.0, True: 17.0}  # free GiB to keep base (, refiner) on the GPU
MODEL_OFFLOAD_GIB = 6.0  # the largest model (the base UNet, fp16) and its activations
TILE_ABOVE_PX = 1024 * 1024

# pipeline -> what has been done to it: {"offload": mode, "channels_last", "compiled", "fused"}
_STATE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class Plan:
    """The modes of a generation: ``mode`` one of :data:`MODES`, and why."""

    mode: str
    speed: bool
    compile: bool
    reason: str

    @property
    def offload(self) -> bool:
        return self.mode != "gpu"

    def describe(self) -> str:
        """One line for the UI: the modes and why."""
        speed = "speed mode on (SDPA, channels_last, fused QKV" + (
            ", torch.compile: the first image of each size is slow)" if self.compile else ")") \
            if self.speed else "speed mode off"
        memory = {"gpu": "all models on the GPU", "model-offload": "model CPU offload",
                  "sequential-offload": "sequential CPU offload (slow)"}[self.mode]
        return f"Memory: {memory} ({self.reason}); {speed}."


def _flag(name: str) -> bool | None:
    value = os.environ.get(name, "").strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    return None


def free_vram_gib(device: str) -> float | None:
    """Free memory of the CUDA device plus what this process's allocator holds (the loaded
    pipelines can move); None off CUDA."""
    if not str(device).startswith("cuda"):
        return None
    import torch

    free, _total = torch.cuda.mem_get_info()
    return (free + torch.cuda.memory_reserved()) / 2**30


def choose(device: str, refiner: bool, free_gib: float | None = None) -> Plan:
    """The plan for a request on ``device`` (``free_gib`` defaults to :func:`free_vram_gib`)."""
    cuda = str(device).startswith("cuda")
    speed = _flag(SPEED_ENV)
    speed = cuda if speed is None else speed
    compile_unet = bool(_flag(COMPILE_ENV))
    forced = os.environ.get(MEMORY_ENV, "auto").strip().lower() or "auto"
    if forced != "auto":
        if forced not in MODES:
            from studio.generate.request import GenerationError

            raise GenerationError(f"{MEMORY_ENV}={forced!r} is not a memory mode; use auto, "
                                  f"{', '.join(MODES)}.")
        if forced != "gpu" and not cuda:
            return Plan("gpu", speed, compile_unet, f"{MEMORY_ENV}={forced} needs a CUDA GPU")
        return Plan(forced, speed, compile_unet, f"set by {MEMORY_ENV}")
    if not cuda:
        return Plan("gpu", speed, compile_unet, f"{device}: no GPU memory limit")
    free = free_vram_gib(device) if free_gib is None else free_gib
    what = "base and refiner" if refiner else "the base"
    if free >= GPU_GIB[refiner]:
        return Plan("gpu", speed, compile_unet, f"{free:.1f} GiB free holds {what}")
    if free >= MODEL_OFFLOAD_GIB:
        return Plan("model-offload", speed, compile_unet,
                    f"{free:.1f} GiB free is under the {GPU_GIB[refiner]:.0f} GiB {what} need")
    return Plan("sequential-offload", speed, compile_unet,
                f"{free:.1f} GiB free is under the {MODEL_OFFLOAD_GIB:.0f} GiB one model needs")


def load_device(device: str, plan: Plan) -> str:
    """Where a pipeline loads: on the CPU when it will be offloaded (the hooks move it)."""
    return "cpu" if plan.offload else device


# ---- setting a pipeline up -----------------------------------------------------------------
def prepare(pipe, plan: Plan, device: str, shared_vae: bool = False) -> None:
    """Put ``pipe`` in the plan's memory mode and apply the once-per-pipeline speed settings
    (channels_last, torch.compile). ``shared_vae``: the VAE is the base's (the refiner's)."""
    state = _STATE.setdefault(pipe, {"offload": "gpu"})
    if state["offload"] != plan.mode:
        _set_offload(pipe, plan.mode, device, state["offload"])
        state["offload"] = plan.mode
    if plan.speed and not state.get("channels_last") and not shared_vae:
        import torch

        pipe.vae.to(memory_format=torch.channels_last)
        state["channels_last"] = True
    if plan.compile and not state.get("compiled"):
        log.info("Compiling the UNet with torch.compile; the first image of each size is slow.")
        # in place (Module.compile): the UNet stays a diffusers model, so LoRA loading and
        # set_adapters still find it (a torch.compile wrapper hides its adapters)
        pipe.unet.compile(fullgraph=False)
        state["compiled"] = True


def _set_offload(pipe, mode: str, device: str, before: str) -> None:
    if before != "gpu":
        pipe.remove_all_hooks()
    if mode == "gpu":
        pipe.to(device)
    elif mode == "model-offload":
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.enable_sequential_cpu_offload(device=device)
    log.info("Generation memory mode: %s", mode)


def per_request(pipe, plan: Plan, width: int, height: int, lora_active: bool,
                shared_vae: bool = False) -> dict[str, Any]:
    """The per-request settings: VAE tiling/slicing in the offload modes (tiling above
    1024x1024), fused QKV in speed mode while no LoRA is active. Returns what is on."""
    state = _STATE.setdefault(pipe, {"offload": "gpu"})
    vae = pipe.vae
    tiling = plan.offload and width * height > TILE_ABOVE_PX
    if not shared_vae:
        (vae.enable_tiling if tiling else vae.disable_tiling)()
        (vae.enable_slicing if plan.offload else vae.disable_slicing)()
    fuse = plan.speed and not lora_active and not state.get("compiled")
    if fuse != bool(state.get("fused")):
        import torch

        if fuse:
            pipe.fuse_qkv_projections(unet=True, vae=not shared_vae)
        else:
            pipe.unfuse_qkv_projections(unet=True, vae=bool(state.get("fused_vae")))
        # A channels_last UNet with peft LoRA layers computed another output than the
        # contiguous one (torch 2.15, peft 0.21; checked in tests): the UNet is channels_last
        # only while no LoRA is on, like the fused projections.
        pipe.unet.to(memory_format=torch.channels_last if fuse else torch.contiguous_format)
        state["fused"], state["fused_vae"] = fuse, fuse and not shared_vae
    return {"vae_tiling": tiling, "vae_slicing": plan.offload, "fused_qkv": fuse,
            "unet_channels_last": fuse}


def ui_line(device: str | None = None) -> str:
    """The Generate tab's line: the modes without and with the refiner on this machine."""
    from studio.models import pick_device

    device = device or pick_device()
    base, both = choose(device, refiner=False), choose(device, refiner=True)
    if base == both:
        return base.describe()
    return f"{base.describe()} With the refiner: {both.describe()}"
