"""The training loss: noise a batch's latents, predict with the UNet, and compare with the
target (the noise for epsilon bases, the velocity for v-prediction bases, following the base's
scheduler config). Prior preservation adds the class half of the batch's loss, weighted by
``data.prior_loss_weight``; ``train.snr_gamma`` turns on min-SNR weighting.
"""

from __future__ import annotations

import logging

from studio.config import TrainConfig
from studio.train.caches import Caches
from studio.train.errors import TrainingError
from studio.train.masks import loss_weights
from studio.train.sdxl import SDXLModels, compute_time_ids, pixel_size, scale_latents

log = logging.getLogger(__name__)


def training_loss(batch, models: SDXLModels, caches: Caches, cfg: TrainConfig, device, weight_dtype):
    """The loss of one (micro-)batch; random draws in a fixed order (latents, noise, offset
    noise, timesteps) so a resumed run repeats them."""
    import torch

    t = cfg.train
    latents, osz, ctl = caches.batch_latents(batch)
    latents = scale_latents(models.vae, latents).to(weight_dtype)
    noise = torch.randn_like(latents)
    if t.noise_offset:
        noise = noise + t.noise_offset * torch.randn((latents.shape[0], latents.shape[1], 1, 1),
                                                     device=device, dtype=latents.dtype)
    bsz = latents.shape[0]
    timesteps = torch.randint(0, models.noise_scheduler.config.num_train_timesteps, (bsz,),
                              device=device).long()
    noisy = models.noise_scheduler.add_noise(latents, noise, timesteps)
    size = pixel_size(models.vae, latents)  # the batch's bucket, or the square resolution
    time_ids = torch.cat([compute_time_ids(o, c, size, device, weight_dtype)
                          for o, c in zip(osz, ctl, strict=True)])
    embeds, pooled = caches.batch_embeddings(batch["prompts"])
    pred = models.unet(noisy, timesteps, embeds.to(weight_dtype),
                       added_cond_kwargs={"time_ids": time_ids,
                                          "text_embeds": pooled.to(weight_dtype)},
                       return_dict=False)[0]
    target = prediction_target(models, latents, noise, timesteps)
    masks = caches.batch_masks(batch)
    weights = None if masks is None else loss_weights(masks, latents, cfg.data.mask_weight)
    return dreambooth_loss(pred, target, timesteps, models, t.snr_gamma,
                           cfg.data.with_prior_preservation, cfg.data.prior_loss_weight, weights)


def prediction_target(models: SDXLModels, latents, noise, timesteps):
    if models.prediction_type == "epsilon":
        return noise
    if models.prediction_type == "v_prediction":
        return models.noise_scheduler.get_velocity(latents, noise, timesteps)
    raise TrainingError(f"The base's scheduler has prediction_type {models.prediction_type!r}; "
                        "only epsilon and v_prediction train.")


def dreambooth_loss(pred, target, timesteps, models: SDXLModels, snr_gamma: float | None,
                    prior: bool, prior_loss_weight: float, weights=None):
    """MSE (min-SNR weighted with ``snr_gamma``) of the instance half, plus the weighted MSE of
    the class half with prior preservation (the batch is [instance..., class...]). ``weights``
    [B, 1, h, w] (face masks, :mod:`studio.train.masks`) weight the instance half's pixels."""
    import torch
    import torch.nn.functional as F

    prior_loss = None
    if prior:
        pred, pred_prior = torch.chunk(pred, 2, dim=0)
        target, target_prior = torch.chunk(target, 2, dim=0)
        timesteps = timesteps.chunk(2)[0]
        prior_loss = F.mse_loss(pred_prior.float(), target_prior.float(), reduction="mean")
    if snr_gamma is None and weights is None:
        loss = F.mse_loss(pred.float(), target.float(), reduction="mean")
    else:
        loss = F.mse_loss(pred.float(), target.float(), reduction="none")
        if weights is not None:
            loss = loss * weights
        loss = loss.mean(dim=list(range(1, loss.ndim)))
        if snr_gamma is not None:
            loss = loss * min_snr_weights(models.noise_scheduler, timesteps, snr_gamma,
                                          models.prediction_type)
        loss = loss.mean()
    if prior_loss is not None:
        loss = loss + prior_loss_weight * prior_loss
    return loss


def min_snr_weights(noise_scheduler, timesteps, gamma: float, prediction_type: str):
    """Min-SNR-gamma loss weights (Hang et al. 2023), as diffusers' train_text_to_image_sdxl
    and kohya's apply_snr_weight: ``min(snr, gamma) / snr`` for an epsilon target and
    ``min(snr, gamma) / (snr + 1)`` for a v target. At SNR 0 (the last step of a
    zero-terminal-SNR schedule) the epsilon weight is its limit 1, not 0/0."""
    import torch
    from diffusers.training_utils import compute_snr

    snr = compute_snr(noise_scheduler, timesteps)
    if prediction_type == "v_prediction":
        return torch.clamp(snr, max=gamma) / (snr + 1)
    return torch.clamp(gamma / snr, max=1.0)  # = min(snr, gamma) / snr, and 1 at snr = 0
