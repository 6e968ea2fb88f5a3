"""Where the loop runs: the ``accelerate.Accelerator`` (device, mixed precision, gradient
accumulation, several processes) and the optional experiment trackers (TensorBoard, W&B)."""

from __future__ import annotations

import logging
from typing import Any

from studio.config import TrainConfig
from studio.runs.folder import RunFolder

log = logging.getLogger(__name__)


def make_accelerator(cfg: TrainConfig, run: RunFolder) -> tuple[Any, Any, list[str]]:
    """(accelerator, dtype of the frozen weights, warnings for the user)."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    from studio.models import pick_device

    cpu = pick_device() == "cpu"
    mp = cfg.train.mixed_precision
    warnings: list[str] = []
    if cpu and mp != "no":
        warnings.append(f"train.mixed_precision={mp} is ignored on a CPU (training in fp32).")
        mp = "no"
    log_with = [n for n, on in (("tensorboard", cfg.logging.tensorboard),
                                ("wandb", cfg.logging.wandb)) if on]
    acc = Accelerator(
        gradient_accumulation_steps=cfg.train.gradient_accumulation_steps,
        mixed_precision=mp, cpu=cpu, log_with=log_with or None,
        project_config=ProjectConfiguration(project_dir=str(run.path),
                                            logging_dir=str(run.path / RunFolder.LOGS)))
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mp, torch.float32)
    if cfg.train.allow_tf32 and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
    return acc, weight_dtype, warnings


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
