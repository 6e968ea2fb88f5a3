"""Tiny random-weight models saved in the real on-disk formats.

``python -m studio tiny-models DIR`` writes ``DIR/base`` (an SDXL pipeline), ``DIR/refiner`` (an
SDXL img2img refiner sharing the base's second text encoder and VAE, as the real refiner does)
and ``DIR/blip`` (a BLIP captioner with its processor). They load through exactly the same
``from_pretrained`` code as the real models, so tests and the demo mode (``python app.py --demo``)
exercise the real code paths on a CPU in seconds. Their images are noise and their captions are
random words: they are not for judging quality.
"""

from __future__ import annotations

import json
import logging
import string
from pathlib import Path

from studio.fsutil import atomic_write_text

log = logging.getLogger(__name__)

MARKER = "tiny-models.json"

_WORDS = [
    "a", "an", "the", "photo", "picture", "of", "man", "woman", "person", "smiling", "wearing",
    "shirt", "jacket", "in", "with", "standing", "front", "wall", "hat", "glasses", "outdoors",
    "blue", "red", "white", "black", "and", "on", "at", "street", "sitting", "looking", "camera",
    "close", "up", "face", "hair", "beach", "park", "room", "tok", "portrait", "young", "old",
]


def _clip_tokenizer_files(folder: Path) -> None:
    """A small but valid CLIP BPE vocabulary (characters + a few words)."""
    folder.mkdir(parents=True, exist_ok=True)
    tokens = ["<|startoftext|>", "<|endoftext|>"]
    chars = list(string.ascii_lowercase + string.digits + ",.!?'-:;()")
    tokens += chars + [c + "</w>" for c in chars]
    merges = []
    for w in _WORDS:
        if len(w) < 2:
            continue
        # Merge the word left to right: (w0 w1) -> w0w1, then (w0w1 w2) ... with </w> at the end.
        cur = w[0]
        for i, ch in enumerate(w[1:], start=1):
            last = i == len(w) - 1
            nxt = ch + ("</w>" if last else "")
            merges.append(f"{cur} {nxt}")
            cur = cur + nxt
            if cur not in tokens:
                tokens.append(cur)
    merges = list(dict.fromkeys(merges))
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n",
                                       encoding="utf-8")


def build_sdxl_components(seed: int = 0):
    """The tiny SDXL base components (dict for ``StableDiffusionXLPipeline(**components)``)."""
    import tempfile

    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8, block_out_channels=(32, 64), layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
        use_linear_projection=True, transformer_layers_per_block=(1, 2),
        cross_attention_dim=64, addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + 32,
    )
    vae = AutoencoderKL(
        block_out_channels=[16, 16, 16, 16], in_channels=3, out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
        latent_channels=4, norm_num_groups=16, sample_size=64, scaling_factor=0.13025,
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        timestep_spacing="leading", steps_offset=1, prediction_type="epsilon",
    )
    with tempfile.TemporaryDirectory() as tmp:
        _clip_tokenizer_files(Path(tmp))
        tokenizer = CLIPTokenizer.from_pretrained(tmp, model_max_length=77)
    vocab_size = len(tokenizer)
    common = dict(bos_token_id=0, eos_token_id=1, pad_token_id=1, vocab_size=max(vocab_size, 256),
                  layer_norm_eps=1e-5, num_attention_heads=4, max_position_embeddings=77,
                  hidden_act="gelu")
    te1 = CLIPTextModel(CLIPTextConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                       **common))
    te2 = CLIPTextModelWithProjection(CLIPTextConfig(hidden_size=32, intermediate_size=37,
                                                     num_hidden_layers=2, projection_dim=32,
                                                     **common))
    return {
        "unet": unet, "vae": vae, "scheduler": scheduler, "text_encoder": te1,
        "tokenizer": tokenizer, "text_encoder_2": te2, "tokenizer_2": tokenizer,
    }


def build_tiny_base(out: Path, seed: int = 0):
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline(**build_sdxl_components(seed))
    pipe.save_pretrained(out)
    return pipe


def build_tiny_refiner(out: Path, base_pipe, seed: int = 1) -> None:
    import torch
    from diffusers import StableDiffusionXLImg2ImgPipeline, UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8, block_out_channels=(32, 64), layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
        use_linear_projection=True, transformer_layers_per_block=(1, 2),
        cross_attention_dim=32, addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=5 * 8 + 32,
    )
    refiner = StableDiffusionXLImg2ImgPipeline(
        vae=base_pipe.vae, text_encoder=None, tokenizer=None,
        text_encoder_2=base_pipe.text_encoder_2, tokenizer_2=base_pipe.tokenizer_2, unet=unet,
        scheduler=base_pipe.scheduler, requires_aesthetics_score=True, force_zeros_for_empty_prompt=True,
    )
    refiner.save_pretrained(out)


def build_tiny_blip(out: Path, seed: int = 2) -> None:
    import torch
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessorPil,
        BlipProcessor,
    )

    torch.manual_seed(seed)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
    vocab = {t: i for i, t in enumerate(specials + _WORDS + list(",."))}
    tokenizer = BertTokenizer(vocab=vocab, do_lower_case=True, bos_token="[DEC]")
    text_config = dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=37,
                       num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64,
                       bos_token_id=vocab["[DEC]"], pad_token_id=vocab["[PAD]"],
                       sep_token_id=vocab["[SEP]"], eos_token_id=vocab["[SEP]"])
    vision_config = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=4, image_size=32, patch_size=8)
    config = BlipConfig(text_config=text_config, vision_config=vision_config, projection_dim=32)
    model = BlipForConditionalGeneration(config).eval()
    processor = BlipProcessor(image_processor=BlipImageProcessorPil(size={"height": 32, "width": 32}),
                              tokenizer=tokenizer)
    model.save_pretrained(out)
    processor.save_pretrained(out)


def build_tiny_models(out_dir: str | Path, force: bool = False) -> dict[str, Path]:
    """Write the three tiny models under ``out_dir`` (skipped when already complete)."""
    out = Path(out_dir).expanduser().resolve()
    paths = {"base": out / "base", "refiner": out / "refiner", "captioner": out / "blip"}
    if (out / MARKER).exists() and not force and all(p.is_dir() for p in paths.values()):
        return paths
    out.mkdir(parents=True, exist_ok=True)
    base = build_tiny_base(paths["base"])
    build_tiny_refiner(paths["refiner"], base)
    build_tiny_blip(paths["captioner"])
    atomic_write_text(out / MARKER, json.dumps({k: str(v) for k, v in paths.items()}, indent=2))
    log.info("tiny models written to %s", out)
    return paths
