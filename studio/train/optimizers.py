"""The optimizers, by name: ``train.optimizer`` picks a builder from :data:`OPTIMIZERS`.

A new optimizer is one builder and one table entry here, plus its name in the
``train.optimizer`` field of :class:`studio.config.TrainSection` (a test keeps the two equal).
A builder takes the parameter groups (UNet LoRA, then text-encoder LoRA, each with its own
learning rate and weight decay), the ``train`` settings and a ``warn(message)`` callback, and
raises a :class:`TrainingError` when its package is missing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from studio.config import TrainConfig, TrainSection
from studio.errors import first_line
from studio.train.errors import TrainingError
from studio.train.pivotal import ROWS, rows_group

log = logging.getLogger(__name__)

Builder = Callable[[list[dict[str, Any]], TrainSection, Callable[[str], None]], Any]


def param_groups(unet, text_encoders: list[Any], cfg: TrainConfig) -> list[dict[str, Any]]:
    """The trainable parameters: the UNet LoRA's group, then both text encoders' LoRA when
    trained, then the new token rows of pivotal tuning when there are any."""
    t = cfg.train
    unet_params = [p for p in unet.parameters() if p.requires_grad]
    groups = [{"params": unet_params, "lr": t.learning_rate, "weight_decay": t.weight_decay}]
    if cfg.lora.train_text_encoder:
        te_params = [p for te in text_encoders for n, p in te.named_parameters()
                     if p.requires_grad and not n.endswith(ROWS)]
        groups.append({"params": te_params, "lr": t.text_encoder_lr or t.learning_rate,
                       "weight_decay": t.text_encoder_weight_decay})
    return groups + rows_group(text_encoders, cfg)


def fused_adamw(groups: list[dict[str, Any]]) -> bool:
    """torch's fused AdamW (one kernel for all parameters) applies: every parameter is a CUDA
    floating-point tensor. Elsewhere the default (foreach) implementation runs."""
    params = [p for g in groups for p in g["params"]]
    return bool(params) and all(p.is_cuda and p.dtype.is_floating_point for p in params)


def _adamw(groups, t: TrainSection, warn):
    import torch

    extra = {"fused": True} if fused_adamw(groups) else {}
    return torch.optim.AdamW(groups, lr=t.learning_rate, betas=(t.adam_beta1, t.adam_beta2),
                             eps=t.adam_epsilon, **extra)


def _adamw8bit(groups, t: TrainSection, warn):
    try:
        import bitsandbytes as bnb
    except Exception as exc:
        raise TrainingError(f"train.optimizer=adamw8bit needs bitsandbytes, which failed to "
                            f"load ({first_line(exc, limit=300)}); use train.optimizer=adamw.") from None
    return bnb.optim.AdamW8bit(groups, lr=t.learning_rate, betas=(t.adam_beta1, t.adam_beta2),
                               eps=t.adam_epsilon)


def _prodigy(groups, t: TrainSection, warn):
    try:
        from prodigyopt import Prodigy
    except ImportError:
        raise TrainingError("train.optimizer=prodigy needs the prodigyopt package "
                            "(pip install prodigyopt).") from None
    if t.learning_rate <= 0.1:
        warn(f"Prodigy works best with train.learning_rate around 1.0 (got {t.learning_rate}).")
    # Prodigy's step is d * lr with one estimate d for all groups (prodigyopt 1.1 refuses
    # different rates; older releases took a text-encoder rate of 5e-5 as 5e-5 of the UNet's
    # step, which froze that LoRA): every group gets train.learning_rate, as diffusers does.
    if any(g["lr"] != t.learning_rate for g in groups[1:]):
        ignored = [f"train.{k}={getattr(t, k)}" for k in ("text_encoder_lr", "text_embeddings_lr")
                   if any(g["lr"] == getattr(t, k) != t.learning_rate for g in groups[1:])]
        warn(f"Prodigy uses train.learning_rate ({t.learning_rate}) for the text encoders too; "
             f"{' and '.join(ignored)} {'is' if len(ignored) == 1 else 'are'} ignored.")
        groups = [{**g, "lr": t.learning_rate} for g in groups]
    return Prodigy(groups, lr=t.learning_rate, betas=(t.adam_beta1, t.adam_beta2),
                   beta3=t.prodigy_beta3, eps=t.adam_epsilon, decouple=t.prodigy_decouple,
                   use_bias_correction=t.prodigy_use_bias_correction,
                   safeguard_warmup=t.prodigy_safeguard_warmup, d_coef=t.prodigy_d_coef)


OPTIMIZERS: dict[str, Builder] = {
    "adamw": _adamw,  # torch
    "adamw8bit": _adamw8bit,  # bitsandbytes: 8-bit optimizer state
    "prodigy": _prodigy,  # prodigyopt: estimates the learning rate (use train.learning_rate=1.0)
}


def build_optimizer(groups: list[dict[str, Any]], t: TrainSection, warn: Callable[[str], None]):
    """The optimizer ``train.optimizer`` names, over ``groups``."""
    return OPTIMIZERS[t.optimizer](groups, t, warn)
