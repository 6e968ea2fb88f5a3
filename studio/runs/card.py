"""``RUN/README.md``: a Hugging Face Hub model card following the Hub's LoRA conventions
(YAML front matter with base_model, instance_prompt, tags, license, widget), then the trigger,
the training settings and how to use the LoRA with diffusers, A1111 and ComfyUI. No secrets:
only the config, the manifest and sample paths relative to the run folder go in."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from studio.fsutil import atomic_write_text
from studio.identity.scores import card_section
from studio.lora.formats import DIFFUSERS_FILE, EXPORT_FORMATS, KOHYA_FILE
from studio.lora.verify import format_check
from studio.runs.folder import RunFolder

TAGS = ["text-to-image", "diffusers", "lora", "template:sd-lora", "stable-diffusion-xl"]


def render_model_card(cfg, manifest: dict[str, Any], samples: list[dict[str, Any]]) -> str:
    base = manifest.get("base_model") or "stabilityai/stable-diffusion-xl-base-1.0"
    prompt = manifest.get("instance_prompt") or ""
    trigger = manifest.get("trigger")
    front: dict[str, Any] = {
        "base_model": base,
        "instance_prompt": prompt,
        "tags": list(TAGS),
        "license": "openrail++",
        "library_name": "diffusers",
    }
    if samples:
        front["widget"] = [{"text": s["prompt"], "output": {"url": s["path"]}} for s in samples]
    t, lc = cfg.train, cfg.lora
    prior = f"yes (weight {cfg.data.prior_loss_weight:g})" if cfg.data.with_prior_preservation else "no"
    lines = ["---", yaml.safe_dump(front, sort_keys=False, allow_unicode=True).strip(), "---", "",
             f"# SDXL LoRA: {manifest.get('dataset', {}).get('name') or 'personal LoRA'}", "",
             f"A LoRA for [{base}](https://huggingface.co/{base}) trained with SDXL LoRA Studio "
             "(DreamBooth LoRA).", ""]
    if manifest.get("selected_checkpoint") is not None:
        lines += [f"This LoRA is the checkpoint at step {manifest['selected_checkpoint']} of the "
                  "run, chosen after comparing its checkpoints.", ""]
    lines += ["## Trigger words", ""]
    if trigger:
        lines.append(f"Use `{trigger}` in the prompt, e.g. `{prompt}`.")
    else:
        lines.append(f"Prompt with: `{prompt}`.")
    lines += ["", "## Training settings", "",
              "| setting | value |", "|---|---|",
              f"| steps | {manifest.get('steps')} |",
              f"| learning rate | {t.learning_rate} ({t.lr_scheduler}, warmup {t.lr_warmup_steps}) |",
              f"| optimizer | {t.optimizer} |",
              f"| LoRA rank / alpha | {lc.rank} / {lc.lora_alpha:g} |",
              f"| text encoder LoRA | {'yes' if lc.train_text_encoder else 'no'} |",
              f"| resolution | {cfg.data.resolution} |",
              f"| batch size x accumulation | {t.batch_size} x {t.gradient_accumulation_steps} |",
              f"| prior preservation | {prior} |",
              f"| SNR gamma | {t.snr_gamma if t.snr_gamma is not None else 'off'} |",
              f"| mixed precision | {t.mixed_precision} |",
              f"| seed | {t.seed} |",
              f"| dataset images | {manifest.get('dataset', {}).get('images')} |",
              f"| wall time | {manifest.get('wall_time_s')} s |", ""]
    lines += card_section(manifest.get("likeness") or {}, manifest.get("steps"))
    if samples:
        lines += ["## Samples", ""]
        lines += [f"![{s['prompt']}]({s['path']})" for s in samples]
        lines.append("")
    files = manifest.get("files") or {}
    lines += ["## LoRA files", ""]
    lines += [f"- `{f.file_name}`: {f.label}" for f in EXPORT_FORMATS if f.file_name in files]
    if manifest.get("lora_check"):
        lines += ["", "Loader check (`python -m studio verify-lora`): every key of each file is "
                  "matched against the key rules of ComfyUI, A1111/Forge and diffusers.", "",
                  format_check(manifest["lora_check"])]
    lines += ["", "## Use with diffusers", "", "```python", "import torch",
              "from diffusers import StableDiffusionXLPipeline", "",
              f'pipe = StableDiffusionXLPipeline.from_pretrained("{base}", torch_dtype=torch.float16).to("cuda")',
              f'pipe.load_lora_weights("THIS_REPO_OR_FOLDER", weight_name="{DIFFUSERS_FILE}")',
              f'image = pipe("{prompt}", num_inference_steps=30).images[0]', "```", "",
              "## Use with AUTOMATIC1111 / ComfyUI", "",
              f"Download `{KOHYA_FILE}` and put it in `models/Lora` (A1111) or `models/loras` "
              f"(ComfyUI). In A1111 add `<lora:{Path(KOHYA_FILE).stem}:1>` to the prompt; in ComfyUI "
              "use a *LoraLoader* node after the SDXL checkpoint loader. The file stores "
              f"alpha = {lc.lora_alpha:g} so its strength matches the diffusers file.", "",
              *_embedding_lines(manifest),
              "## License", "",
              "The LoRA inherits the CreativeML Open RAIL++-M license of SDXL (openrail++). Only train "
              "on photos you have the right to use, and do not use it to impersonate people.", ""]
    return "\n".join(lines)


def _embedding_lines(manifest: dict[str, Any]) -> list[str]:
    """Usage of the pivotal-tuning embeddings (none when the run has no embeddings file)."""
    name = RunFolder.EMBEDDINGS
    tokens = (manifest.get("lora") or {}).get("new_tokens")
    if name not in (manifest.get("files") or {}) or not tokens:
        return []
    trigger, joined, stem = manifest.get("trigger") or "the trigger", "".join(tokens), Path(name).stem
    return [
        "## Trigger embeddings (pivotal tuning)", "",
        f"The trigger `{trigger}` was trained as the new tokens `{joined}`: their embeddings for both "
        f"text encoders (`clip_l`, `clip_g`) are in `{name}`. Use it together with the LoRA.", "",
        f"- **SDXL LoRA Studio**: pick the run in Generate and type `{trigger}`; the studio loads "
        "the embeddings and maps the trigger to the tokens.",
        f"- **diffusers**: `state = safetensors.torch.load_file(\"{name}\")`, then "
        f"`pipe.load_textual_inversion(state[\"clip_l\"], token={tokens}, "
        "text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)` and the same with "
        "`clip_g`, `pipe.text_encoder_2`, `pipe.tokenizer_2`; write "
        f"`{joined}` where the trigger goes.",
        f"- **AUTOMATIC1111**: put `{name}` into `embeddings/` (rename it to name your subject: the "
        "file name is the word you type) and write that name where the trigger goes, e.g. "
        f"`a photo of {stem} ... <lora:{Path(KOHYA_FILE).stem}:1>`.",
        f"- **ComfyUI**: put `{name}` into `models/embeddings/` and write `embedding:{stem}` where "
        "the trigger goes, with the LoRA in a *LoraLoader* node.", ""]


def write_model_card(run_dir: Path, cfg, manifest: dict[str, Any],
                     samples: list[dict[str, Any]]) -> Path:
    return atomic_write_text(RunFolder(run_dir).card_path, render_model_card(cfg, manifest, samples))
