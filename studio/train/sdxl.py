"""What is specific to SDXL: its five models, the LoRA layers on them, prompt encoding,
micro-conditioning, the LoRA file and the sampling pipeline.

Conditioning follows diffusers' ``train_dreambooth_lora_sdxl.py``: prompt embeddings are the
penultimate hidden states of both CLIP encoders concatenated, the pooled embedding comes from
the second encoder's projection, and ``add_time_ids`` are (original size, crop top-left, target
size).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from studio.config import LoraSection, ModelSection
from studio.lora.formats import DIFFUSERS_FILE

log = logging.getLogger(__name__)

# The names diffusers' save_lora_weights gives the LoRA of each trained model.
TEXT_ENCODER_NAMES = ("text_encoder", "text_encoder_2")


@dataclass
class SDXLModels:
    """The loaded base (the trainer swaps ``unet``/``text_encoders`` for their prepared,
    possibly distributed, wrappers)."""

    base: str  # the base as configured (Hub id or folder), for the manifest
    vae_src: str | None  # a separate VAE, None when the base's own is used
    tokenizers: list[Any]
    noise_scheduler: Any
    text_encoders: list[Any]
    unet: Any
    vae: Any
    vae_dtype: Any
    prediction_type: str
    pivotal: Any = None  # studio.train.pivotal.Pivotal: the trigger's new tokens, when trained


def load_models(m: ModelSection, device, weight_dtype) -> SDXLModels:
    """Load the frozen SDXL base (and VAE) onto ``device``; a ModelLoadError says what failed."""
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import AutoTokenizer, CLIPTextModel, CLIPTextModelWithProjection

    from studio.models import _expand, explain_load_error, model_source, vae_source
    from studio.singlefile import local_base

    base = model_source("base", m.base)
    src = local_base(_expand(base))  # a single-file base: its converted folder
    if not Path(src).exists() and Path(src).is_absolute():
        raise explain_load_error("base", base, FileNotFoundError(src))
    kw = {"revision": m.revision}
    try:
        tokenizers = [AutoTokenizer.from_pretrained(src, subfolder=s, revision=m.revision,
                                                    use_fast=False)
                      for s in ("tokenizer", "tokenizer_2")]
        noise_scheduler = DDPMScheduler.from_pretrained(src, subfolder="scheduler", **kw)
        te1 = CLIPTextModel.from_pretrained(src, subfolder="text_encoder", variant=m.variant, **kw)
        te2 = CLIPTextModelWithProjection.from_pretrained(src, subfolder="text_encoder_2",
                                                          variant=m.variant, **kw)
        unet = UNet2DConditionModel.from_pretrained(src, subfolder="unet", variant=m.variant, **kw)
    except Exception as exc:
        raise explain_load_error("base", base, exc) from exc
    vae_src = vae_source(base, m.vae)
    try:
        if vae_src:
            vae = AutoencoderKL.from_pretrained(_expand(vae_src))
        else:
            vae = AutoencoderKL.from_pretrained(src, subfolder="vae", variant=m.variant, **kw)
    except Exception as exc:
        raise explain_load_error("vae", vae_src or base, exc) from exc
    for mod in (te1, te2, unet, vae):
        mod.requires_grad_(False)
    # A VAE that needs upcasting (the original SDXL VAE overflows in fp16) stays in fp32.
    vae_dtype = torch.float32 if vae.config.get("force_upcast", True) else weight_dtype
    vae.to(device, dtype=vae_dtype)
    unet.to(device, dtype=weight_dtype)
    te1.to(device, dtype=weight_dtype)
    te2.to(device, dtype=weight_dtype)
    return SDXLModels(base, vae_src, tokenizers, noise_scheduler, [te1, te2], unet, vae, vae_dtype,
                      noise_scheduler.config.prediction_type)


def add_lora(models: SDXLModels, lc: LoraSection, gradient_checkpointing: bool,
             weight_dtype) -> list[Any]:
    """Add the LoRA layers (peft, gaussian init); returns the trained models (the UNet, then
    both text encoders when their LoRA or their new token rows train), their trained parameters
    in fp32."""
    import torch
    from diffusers.training_utils import cast_training_params
    from peft import LoraConfig

    common = dict(r=lc.rank, lora_alpha=lc.lora_alpha, lora_dropout=lc.dropout,
                  init_lora_weights="gaussian", use_dora=lc.use_dora)
    models.unet.add_adapter(LoraConfig(target_modules=list(lc.target_modules), **common))
    if lc.train_text_encoder:
        for te in models.text_encoders:
            te.add_adapter(LoraConfig(target_modules=list(lc.text_encoder_target_modules), **common))
    if gradient_checkpointing:
        models.unet.enable_gradient_checkpointing()
        if lc.train_text_encoder:
            for te in models.text_encoders:
                te.gradient_checkpointing_enable()
    te_train = lc.train_text_encoder or models.pivotal is not None
    trained = [models.unet] + (models.text_encoders if te_train else [])
    if weight_dtype != torch.float32:
        cast_training_params(trained, dtype=torch.float32)
    return trained


def compute_time_ids(original_size, crop_top_left, resolution, device, dtype):
    """SDXL micro-conditioning: (orig_h, orig_w, crop_top, crop_left, target_h, target_w);
    ``resolution``: the square side, or the (height, width) of an aspect-ratio bucket."""
    import torch

    target = [resolution, resolution] if isinstance(resolution, int) else list(resolution)
    ids = list(original_size) + list(crop_top_left) + target
    return torch.tensor([ids], device=device, dtype=dtype)


def pixel_size(vae, latents) -> tuple[int, int]:
    """(height, width) in pixels of a batch of latents (the VAE downsamples by 2 per block)."""
    f = 2 ** (len(vae.config.block_out_channels) - 1)
    return int(latents.shape[-2]) * f, int(latents.shape[-1]) * f


def encode_prompt(text_encoders, tokenizers, prompts: list[str]):
    """(prompt_embeds [B,77,D1+D2], pooled [B,P]) as in diffusers' SDXL training script."""
    import torch

    embeds = []
    pooled = None
    for tok, enc in zip(tokenizers, text_encoders, strict=True):
        ids = tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids.to(enc.device)
        out = enc(ids, output_hidden_states=True, return_dict=True)
        pooled = out[0]  # the last encoder's (projected) pooled output is kept
        h = out.hidden_states[-2]
        embeds.append(h.view(h.shape[0], h.shape[1], -1))
    prompt_embeds = torch.cat(embeds, dim=-1)
    return prompt_embeds, pooled.view(pooled.shape[0], -1)


# ---- latents ------------------------------------------------------------------------------------
def _latent_stats(vae, like):
    """The VAE config's ``latents_mean``/``latents_std`` as [1, C, 1, 1] tensors like ``like``;
    (None, None) when the config has none (the SDXL VAEs)."""
    import torch

    mean, std = vae.config.get("latents_mean"), vae.config.get("latents_std")
    if mean is None or std is None:
        return None, None
    return tuple(torch.tensor(v, device=like.device, dtype=like.dtype).view(1, -1, 1, 1)
                 for v in (mean, std))


def scale_latents(vae, latents):
    """VAE latents into the UNet's space, as diffusers' SDXL scripts do:
    ``(latents - mean) * scaling_factor / std`` with latents_mean/std, else
    ``latents * scaling_factor``."""
    mean, std = _latent_stats(vae, latents)
    sf = vae.config.scaling_factor
    return latents * sf if mean is None else (latents - mean) * sf / std


def unscale_latents(vae, latents):
    """The inverse of :func:`scale_latents`, before decoding."""
    mean, std = _latent_stats(vae, latents)
    sf = vae.config.scaling_factor
    return latents / sf if mean is None else latents * std / sf + mean


# ---- the LoRA file -----------------------------------------------------------------------------
def lora_state_dicts(modules: dict[str, Any]) -> dict[str, dict]:
    """{model name: its peft LoRA state dict} for the (unwrapped) trained models."""
    from peft.utils import get_peft_model_state_dict

    return {name: get_peft_model_state_dict(mod) for name, mod in modules.items()}


def save_lora(folder: Path, modules: dict[str, Any]) -> Path:
    """Write ``pytorch_lora_weights.safetensors`` (diffusers layout + adapter metadata) for the
    trained models ``{"unet": ..., "text_encoder": ..., "text_encoder_2": ...}`` (unwrapped).

    The tensors keep peft's ``lora_A``/``lora_B`` names. diffusers' older
    ``convert_state_dict_to_diffusers`` renames only the attention projections
    (``to_q.lora.down``...), so with any other target (conv1, proj_in, ff.net.2...) the file
    mixes both spellings, diffusers' loader takes it for a peft file, and the attention
    layers are silently skipped at load time. One spelling for every key loads whole.

    A text encoder's DoRA magnitudes are written ``lora_magnitude_vector.weight`` (the
    parameter's own name; the UNet's keep peft's ``lora_magnitude_vector``): diffusers hands the
    text encoders to transformers' adapter loader, which adds the adapter name after
    ``lora_magnitude_vector`` and, without the ``.weight``, finds no parameter and leaves the
    magnitude at its initial value. peft's own loader reads both spellings."""
    from diffusers import StableDiffusionXLPipeline

    states = lora_state_dicts(modules)
    kwargs: dict[str, Any] = {}
    for name, mod in modules.items():
        tensors = {k: v.detach().float().cpu() for k, v in states[name].items()}
        if name != "unet":
            tensors = {k + ".weight" if k.endswith(".lora_magnitude_vector") else k: v
                       for k, v in tensors.items()}
        kwargs[f"{name}_lora_layers"] = tensors
        kwargs[f"{name}_lora_adapter_metadata"] = mod.peft_config["default"].to_dict()
    StableDiffusionXLPipeline.save_lora_weights(str(folder), weight_name=DIFFUSERS_FILE, **kwargs)
    return folder / DIFFUSERS_FILE


# ---- sampling ----------------------------------------------------------------------------------
def sampling_scheduler(base: str, noise_scheduler):
    """The base's own inference scheduler (its scheduler config's class), else Euler."""
    from diffusers import EulerDiscreteScheduler

    from studio.models import _expand

    try:
        import diffusers
        from diffusers import SchedulerMixin

        from studio.singlefile import local_base

        cfg = EulerDiscreteScheduler.load_config(local_base(_expand(base)), subfolder="scheduler")
        cls = getattr(diffusers, cfg.get("_class_name", "EulerDiscreteScheduler"),
                      EulerDiscreteScheduler)
        if not issubclass(cls, SchedulerMixin):
            cls = EulerDiscreteScheduler
        return cls.from_config(cfg)
    except Exception:
        return EulerDiscreteScheduler.from_config(noise_scheduler.config)


def pipeline_image(pipe, autocast=None, **kwargs):
    """One image of ``pipe(**kwargs)``: denoised (under ``autocast()`` when given), then decoded
    outside autocast by the VAE in its own dtype. A force_upcast VAE stays fp32 beside a
    bf16/fp16 UNet; the pipeline's own decode hands it latents in the UNet's dtype (a crash
    without autocast) and under fp16 autocast runs it in fp16, where it overflows."""
    from contextlib import nullcontext

    import torch

    with torch.no_grad():
        with (autocast or nullcontext)():
            latents = pipe(**kwargs, output_type="latent").images
        vae = pipe.vae
        latents = unscale_latents(vae, latents.to(vae.device, vae.dtype))
        image = vae.decode(latents, return_dict=False)[0]
        if getattr(pipe, "watermark", None) is not None:
            image = pipe.watermark.apply_watermark(image)
    return pipe.image_processor.postprocess(image, output_type="pil")[0]


def build_pipeline(unet, text_encoders: list[Any], vae, tokenizers: list[Any], make_scheduler,
                   device):
    """A StableDiffusionXLPipeline over the (unwrapped) models being trained, on ``device``."""
    from diffusers import StableDiffusionXLPipeline

    for te in text_encoders:
        te.to(device)
    sched = make_scheduler()
    pipe = StableDiffusionXLPipeline(
        vae=vae.to(device), text_encoder=text_encoders[0], text_encoder_2=text_encoders[1],
        tokenizer=tokenizers[0], tokenizer_2=tokenizers[1], unet=unet, scheduler=sched)
    pipe.set_progress_bar_config(disable=True)
    return pipe
