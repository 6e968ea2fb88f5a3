"""Full-size SDXL components built from their public configs with random weights.

Speed and memory do not depend on weight values, so benchmarks run on machines that cannot
download the real weights. Configs follow stabilityai/stable-diffusion-xl-base-1.0 and
stabilityai/stable-diffusion-xl-refiner-1.0 (unet/, vae/, text_encoder/, text_encoder_2/).
"""

from __future__ import annotations

from typing import Any

UNET_BASE = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=(5, 10, 20), transformer_layers_per_block=(1, 2, 10),
    cross_attention_dim=2048, use_linear_projection=True, addition_embed_type="text_time",
    addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
)
UNET_REFINER = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(384, 768, 1536, 1536),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=(6, 12, 24, 24), transformer_layers_per_block=4,
    cross_attention_dim=1280, use_linear_projection=True, addition_embed_type="text_time",
    addition_time_embed_dim=256, projection_class_embeddings_input_dim=2560,
)
VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
    block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, sample_size=1024, scaling_factor=0.13025,
    force_upcast=False,
)
CLIP_L = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
              num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
              projection_dim=768)
CLIP_BIGG = dict(vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                 num_attention_heads=20, max_position_embeddings=77, hidden_act="gelu",
                 projection_dim=1280)
SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                 timestep_spacing="leading", steps_offset=1, prediction_type="epsilon")


def build_full_sdxl(dtype, device: str, refiner: bool = False) -> dict[str, Any]:
    """Pipelines with random full-size weights: {"base": pipe, "refiner": pipe or None}."""
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLImg2ImgPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from studio.tiny import build_sdxl_components

    tok = build_sdxl_components()["tokenizer"]  # a real CLIP BPE; vocab does not affect speed
    with torch.device(device):
        unet = UNet2DConditionModel(**UNET_BASE).to(dtype)
        vae = AutoencoderKL(**VAE).to(dtype)
        te1 = CLIPTextModel(CLIPTextConfig(**CLIP_L)).to(dtype)
        te2 = CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_BIGG)).to(dtype)
    base = StableDiffusionXLPipeline(vae=vae, text_encoder=te1, text_encoder_2=te2, tokenizer=tok,
                                     tokenizer_2=tok, unet=unet,
                                     scheduler=EulerDiscreteScheduler(**SCHEDULER))
    base.set_progress_bar_config(disable=True)
    ref = None
    if refiner:
        with torch.device(device):
            runet = UNet2DConditionModel(**UNET_REFINER).to(dtype)
        ref = StableDiffusionXLImg2ImgPipeline(
            vae=vae, text_encoder=None, tokenizer=None, text_encoder_2=te2, tokenizer_2=tok,
            unet=runet, scheduler=EulerDiscreteScheduler(**SCHEDULER),
            requires_aesthetics_score=True)
        ref.set_progress_bar_config(disable=True)
    return {"base": base, "refiner": ref}
