"""Where the loop runs: the ``accelerate.Accelerator`` (device, mixed precision, gradient
accumulation, several processes) and the optional experiment trackers (TensorBoard, W&B).

A CPU trains in fp32. ``STUDIO_CPU_PRECISION=bf16`` (or ``fp16``) is a test aid: on a CPU the
trainer then keeps every dtype a GPU keeps with that mixed precision (bf16/fp16 frozen UNet and
text encoders, an fp32 VAE when its config says force_upcast, fp32 LoRA parameters, autocast,
and for fp16 a GradScaler), so CI runs the GPU's number formats, slowly.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from studio.config import ConfigError, TrainConfig
from studio.runs.folder import RunFolder

log = logging.getLogger(__name__)

CPU_PRECISION_ENV = "STUDIO_CPU_PRECISION"
CPU_PRECISIONS = ("bf16", "fp16", "no")


def cpu_precision() -> str | None:
    """The mixed precision ``STUDIO_CPU_PRECISION`` asks a CPU to emulate; None when unset."""
    value = os.environ.get(CPU_PRECISION_ENV, "").strip()
    if not value:
        return None
    if value not in CPU_PRECISIONS:
        raise ConfigError(f"{CPU_PRECISION_ENV}={value!r} is not a precision; use bf16, fp16 or "
                          "no (unset, a CPU trains in fp32).")
    if value == "fp16":
        _check_cpu_fp16()
    return value


def _check_cpu_fp16() -> None:
    """The fp16 kernels an SDXL step needs exist on this CPU (older torch builds lack some)."""
    import torch
    import torch.nn.functional as F

    x = torch.ones(1, 4, 4, 4, dtype=torch.float16)
    try:
        F.group_norm(F.conv2d(x, torch.ones(4, 4, 1, 1, dtype=torch.float16)), 2)
        q = x.view(1, 1, 4, 16)
        F.layer_norm(F.scaled_dot_product_attention(q, q, q), (16,))
        F.linear(q, torch.ones(16, 16, dtype=torch.float16)).softmax(-1)
    except RuntimeError as exc:
        raise ConfigError(f"{CPU_PRECISION_ENV}=fp16: this CPU's torch lacks fp16 kernels "
                          f"({str(exc).splitlines()[0][:120]}); use bf16.") from None


def _emulate_fp16_amp(acc) -> None:
    """What accelerate does for fp16 on a GPU, on the CPU: accelerate turns fp16 off for a CPU
    (no autocast, no GradScaler), so switch on native autocast and a CPU GradScaler before
    ``prepare`` (the prepared optimizer, ``backward`` and ``clip_grad_norm_`` then use it)."""
    import torch

    acc.native_amp = True
    acc.scaler = torch.amp.GradScaler("cpu")


def _allow_precision(mp: str) -> None:
    """accelerate keeps one mixed precision per process and refuses another; a second run in
    the same process (tests, a notebook) with another precision gets a fresh AcceleratorState
    (the process state, devices and process group, stays)."""
    from accelerate.state import AcceleratorState

    if AcceleratorState._shared_state and AcceleratorState().mixed_precision != mp:
        AcceleratorState._reset_state()


def make_accelerator(cfg: TrainConfig, run: RunFolder) -> tuple[Any, Any, list[str]]:
    """(accelerator, dtype of the frozen weights, warnings for the user)."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration

    from studio.models import pick_device

    cpu = pick_device() == "cpu"
    mp = cfg.train.mixed_precision
    emulated = cpu_precision()
    warnings: list[str] = []
    if cpu and emulated is not None:
        if emulated != mp:
            warnings.append(f"{CPU_PRECISION_ENV}={emulated} replaces train.mixed_precision={mp} "
                            "on this CPU.")
        mp = emulated
    elif cpu and mp != "no":
        warnings.append(f"train.mixed_precision={mp} is ignored on a CPU (training in fp32).")
        mp = "no"
    _allow_precision(mp)
    log_with = [n for n, on in (("tensorboard", cfg.logging.tensorboard),
                                ("wandb", cfg.logging.wandb)) if on]
    # Several processes wrap each trained model in DDP, which by default fails at the second
    # step when a parameter got no gradient: CLIP-L's last layer gets none (the UNet is
    # conditioned on its penultimate hidden state), so a trained text encoder needs this.
    ddp = ([DistributedDataParallelKwargs(find_unused_parameters=True)]
           if cfg.lora.train_text_encoder else [])
    acc = Accelerator(
        gradient_accumulation_steps=cfg.train.gradient_accumulation_steps,
        mixed_precision=mp, cpu=cpu, log_with=log_with or None, kwargs_handlers=ddp,
        project_config=ProjectConfiguration(project_dir=str(run.path),
                                            logging_dir=str(run.path / RunFolder.LOGS)))
    if cpu and mp == "fp16":
        _emulate_fp16_amp(acc)
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mp, torch.float32)
    if cfg.train.allow_tf32 and torch.cuda.is_available():  # TF32 tensor cores (Ampere+)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.set_float32_matmul_precision("high")
    return acc, weight_dtype, warnings


COMPILE_ENV = "STUDIO_COMPILE"
COMPILE_BACKEND = "inductor"


def compile_wanted(cfg: TrainConfig) -> bool:
    """train.compile_unet, or STUDIO_COMPILE=1 in the environment."""
    return cfg.train.compile_unet or os.environ.get(COMPILE_ENV, "").strip() == "1"


def compiled(unet, cfg: TrainConfig):
    """The (prepared) UNet under ``torch.compile`` when :func:`compile_wanted`; the LoRA
    parameters stay the module's own, so checkpoints and the unwrapped model are unchanged."""
    if not compile_wanted(cfg):
        return unet
    import torch

    log.info("Compiling the UNet (%s); the first steps are slow.", COMPILE_BACKEND)
    return torch.compile(unet, backend=COMPILE_BACKEND)


def tracking(cfg: TrainConfig) -> bool:
    return cfg.logging.tensorboard or cfg.logging.wandb


def start_trackers(acc, cfg: TrainConfig) -> None:
    if acc.is_main_process and tracking(cfg):
        acc.init_trackers(cfg.logging.wandb_project if cfg.logging.wandb else "train",
                          config={"lr": cfg.train.learning_rate, "rank": cfg.lora.rank})


def end_trackers(acc, cfg: TrainConfig) -> None:
    try:
        if tracking(cfg):
            acc.end_training()
    except Exception:
        log.debug("end_training failed", exc_info=True)


def any_process(acc, flag: bool) -> bool:
    """True when ``flag`` is set on any process (every process gets the same answer)."""
    if acc.num_processes > 1:
        import torch

        t = torch.tensor(1.0 if flag else 0.0, device=acc.device)
        flag = bool(acc.reduce(t, "sum").item() > 0)
    return flag


def mean_over_processes(acc, value: float) -> float:
    if acc.num_processes > 1:
        import torch

        value = float(acc.reduce(torch.tensor(value, device=acc.device), "mean").item())
    return value
