"""The latent and text-embedding caches, and the batch inputs read from them.

``data.cache_latents`` encodes every training (and class) image with the VAE once and keeps the
posterior's mean and std on the CPU (each step draws a latent from them on the device, from
the RNG the VAE's own sample() would use); the VAE can then leave the GPU.
``data.cache_text_embeddings`` (frozen text encoders only) encodes each prompt once and moves
both encoders off the GPU. Without a cache the inputs are computed per batch.
"""

from __future__ import annotations

import logging
from typing import Any

from studio.config import DataSection, TrainConfig
from studio.train.data import TrainDataset
from studio.train.sdxl import SDXLModels, encode_prompt

log = logging.getLogger(__name__)


def latents_wanted(d: DataSection) -> bool:
    """Whether the run caches latents: ``data.cache_latents``, or when it is empty, on unless a
    random crop or flip is asked for (the cache would freeze it)."""
    if d.cache_latents is not None:
        return d.cache_latents
    return d.crop == "center" and not d.random_flip


class Caches:
    """The caches of one training run. ``keep_vae``: the VAE stays on the device for sampling
    during training even when the latents are cached."""

    def __init__(self, models: SDXLModels, device, train_text_encoder: bool, keep_vae: bool):
        self.m = models
        self.device = device
        # New token rows (pivotal tuning) train through the encoders, like their LoRA.
        self.train_text_encoder = train_text_encoder or models.pivotal is not None
        self.prompt_map = models.pivotal.apply if models.pivotal is not None else None
        self.keep_vae = keep_vae
        self.latents: dict[tuple[str, int], Any] = {}
        self.masks: dict[tuple[str, int], Any] = {}  # face masks of the cached instance images
        self.embeds: dict[str, tuple[Any, Any]] = {}

    def encode_latents(self, pixel_values):
        """The VAE posterior of a batch of images."""
        import torch

        with torch.no_grad():
            return self.m.vae.encode(pixel_values.to(self.device, dtype=self.m.vae_dtype)).latent_dist

    # ---- filling -------------------------------------------------------------------------------
    def fill(self, cfg: TrainConfig, dataset: TrainDataset) -> list[str]:
        """Fill the caches the config asks for; returns warnings for the user."""
        warnings: list[str] = []
        d = cfg.data
        if latents_wanted(d):
            if d.crop == "random" or d.random_flip:
                warnings.append("data.cache_latents freezes one crop/flip per image.")
            self._cache_latents(dataset)
            dataset.drop_pixels()  # the steps read the cache, never the photos
            if not self.keep_vae:
                self.m.vae.to("cpu")
        if not self.train_text_encoder and d.cache_text_embeddings:
            prompts = set(dataset.prompts)
            if dataset.class_prompt:
                prompts.add(dataset.class_prompt)
            self._cache_embeddings(sorted(prompts))
        return warnings

    def _cache_latents(self, dataset: TrainDataset) -> None:
        """Every instance image (its epoch-0 crop and flip) and every class image."""
        for i in range(len(dataset.examples)):
            it = dataset.instance_item(i, 0)
            self._cache_latent(("instance", it["index"]), it["pixel_values"],
                               it["original_size"], it["crop_top_left"])
            if "mask" in it:
                self.masks[("instance", it["index"])] = it["mask"]
        for j in range(len(dataset.class_examples)):
            it = dataset.class_item(j)
            self._cache_latent(("class", j), it["class_pixel_values"],
                               it["class_original_size"], it["class_crop_top_left"])

    def _cache_latent(self, key: tuple[str, int], pixel_values, original_size, crop_top_left):
        dist = self.encode_latents(pixel_values[None])
        self.latents[key] = (dist.mean.cpu(), dist.std.cpu(), original_size, crop_top_left)

    def _cache_embeddings(self, prompts: list[str]) -> None:
        import torch

        with torch.no_grad():
            for p in prompts:
                e, pooled = encode_prompt(self.m.text_encoders, self.m.tokenizers, [p])
                self.embeds[p] = (e, pooled)
        for te in self.m.text_encoders:
            te.to("cpu")
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def offload(self) -> None:
        """Move what the caches replace off the device again (after sampling used it)."""
        if self.embeds:
            for te in self.m.text_encoders:
                te.to("cpu")
        if self.latents and not self.keep_vae:
            self.m.vae.to("cpu")

    # ---- batch inputs ------------------------------------------------------------------------
    def batch_latents(self, batch: dict[str, Any]):
        """(latents drawn from the posterior, original sizes, crop top-lefts) of a batch."""
        import torch

        if not self.latents:
            latents = self.encode_latents(batch["pixel_values"]).sample()
            return latents, batch["original_sizes"], batch["crop_top_lefts"]
        keys = batch["keys"]
        lat = []
        for k in keys:
            mean, std = (t.to(self.device) for t in self.latents[tuple(k)][:2])
            lat.append(mean + std * torch.randn_like(mean))
        latents = torch.cat(lat)
        osz = [self.latents[tuple(k)][2] for k in keys]
        ctl = [self.latents[tuple(k)][3] for k in keys]
        return latents, osz, ctl

    def batch_masks(self, batch: dict[str, Any]):
        """The uint8 face masks [B, 1, H, W] of a batch's instance half, None without masks."""
        import torch

        if not self.latents:
            return batch.get("masks")
        keys = [tuple(k) for k in batch["keys"] if k[0] == "instance"]
        if not self.masks or not keys:
            return None
        return torch.stack([self.masks[k] for k in keys])

    def batch_embeddings(self, prompts: list[str]):
        """(prompt embeddings, pooled embeddings) of a batch's prompts (with pivotal tuning, the
        trigger in them becomes the new tokens)."""
        import torch

        if self.prompt_map is not None:
            prompts = [self.prompt_map(p) for p in prompts]
        if self.embeds:
            embeds = torch.cat([self.embeds[p][0] for p in prompts]).to(self.device)
            pooled = torch.cat([self.embeds[p][1] for p in prompts]).to(self.device)
            return embeds, pooled
        if self.train_text_encoder:
            return encode_prompt(self.m.text_encoders, self.m.tokenizers, prompts)
        with torch.no_grad():
            return encode_prompt(self.m.text_encoders, self.m.tokenizers, prompts)
