"""The Hub model card of a pushed LoRA, following the Hub's LoRA conventions.

The metadata (``base_model``, ``instance_prompt``, ``tags`` with ``template:sd-lora``,
``license``, ``widget`` with the sample prompts and images as uploaded) is always written here, so
the Hub shows the repo as an SDXL LoRA with its trigger. The body is the run's own ``README.md``
(the trainer's card) when it has one, plus a usage section for diffusers, A1111 and ComfyUI when
the run's card does not already have one. The card is parsed back with ``huggingface_hub``'s own
card parser before any upload (:func:`validate_card`).
"""

from __future__ import annotations

import re
from typing import Any

from studio.identity.runscore import card_lines
from studio.lora.formats import DIFFUSERS_FILE, EXPORT_FORMATS, KOHYA_FILE
from studio.models import ROLES, looks_like_path
from studio.share.runfiles import RunFiles, ShareError, trigger_info

REQUIRED_TAGS = ["text-to-image", "diffusers", "lora", "template:sd-lora", "stable-diffusion-xl",
                 "stable-diffusion-xl-diffusers"]
DEFAULT_LICENSE = "openrail++"  # the SDXL base model's license
_FRONT_MATTER = re.compile(r"\A---\s*\n.*?\n---\s*\n?", re.DOTALL)
_LIKENESS = re.compile(r"^## Likeness\n.*?(?=^## |\Z)", re.DOTALL | re.MULTILINE)


def _body_of(card_text: str | None) -> str:
    return _FRONT_MATTER.sub("", card_text or "", count=1).strip()


def usage_section(repo_id: str | None, info: dict[str, Any], has_kohya: bool) -> str:
    prompt = info["instance_prompt"] or "a photo of TOK person"
    lines = [
        "## How to use",
        "",
        "### diffusers",
        "",
        "```python",
        "import torch",
        "from diffusers import StableDiffusionXLPipeline",
        "",
        "pipe = StableDiffusionXLPipeline.from_pretrained(",
        f"    \"{info['base_model']}\", torch_dtype=torch.float16).to(\"cuda\")",
        f"pipe.load_lora_weights(\"{repo_id or 'path/to/this/folder'}\", "
        f"weight_name=\"{DIFFUSERS_FILE}\")",
        f"image = pipe(\"{prompt}, portrait, natural light\", num_inference_steps=30).images[0]",
        "```",
        "",
    ]
    if has_kohya:
        lines += [
            "### AUTOMATIC1111 / Forge",
            "",
            f"Download `{KOHYA_FILE}` into `models/Lora/`, then add "
            f"`<lora:{KOHYA_FILE.rsplit('.', 1)[0]}:1>` to a "
            f"prompt that contains the trigger: `{prompt}`.",
            "",
            "### ComfyUI",
            "",
            f"Put `{KOHYA_FILE}` into `models/loras/` and add a **LoraLoader** node between the "
            "SDXL checkpoint loader and the sampler (strength 1.0), with the trigger in the "
            "prompt.",
            "",
        ]
    return "\n".join(lines)


def _file_lines(rf: RunFiles) -> list[str]:
    """The shared files: the LoRA formats first (with who reads them), then the rest."""
    loras = {f.file_name: f.label for f in EXPORT_FORMATS if f.file_name in rf.files}
    return ([f"- `{name}`: {label}" for name, label in loras.items()]
            + [f"- `{p}`" for p in sorted(rf.files) if p not in loras])


def build_card(rf: RunFiles, repo_id: str | None, license: str | None = None) -> str:
    """The README.md text for ``rf`` pushed to ``repo_id`` (None: a local bundle)."""
    from huggingface_hub import ModelCardData

    info = trigger_info(rf)
    base = info["base_model"]
    local_base = None
    if looks_like_path(base):
        local_base, base = base, ROLES["base"].default
        info["base_model"] = base
    widget = [{"text": s.prompt or info["instance_prompt"] or "", "output": {"url": s.rel}}
              for s in rf.samples]
    data = ModelCardData(
        base_model=base, license=license or DEFAULT_LICENSE,
        tags=list(REQUIRED_TAGS), library_name="diffusers")
    # Keys the ModelCardData constructor does not know go in as extra metadata.
    extra: dict[str, Any] = {"instance_prompt": info["instance_prompt"] or None}
    if widget:
        extra["widget"] = widget
    for k, v in extra.items():
        if v is not None:
            setattr(data, k, v)

    name = repo_id.split("/")[-1] if repo_id else rf.run_dir.name
    body = _body_of(rf.card_text)
    what = f"checkpoint at step {rf.checkpoint}" if rf.checkpoint is not None else "final LoRA"
    if not body:
        trig = info["trigger"]
        body = "\n".join([
            f"# {name}",
            "",
            f"An SDXL DreamBooth LoRA ({what}) trained with SDXL LoRA Studio on {base}.",
            "",
            f"Trigger: `{trig}` — use the prompt `{info['instance_prompt']}`." if trig else
            f"Instance prompt: `{info['instance_prompt']}`." if info["instance_prompt"] else "",
        ]).strip()
    else:  # the trainer's card (studio/train/card.py) leaves the repo id as a placeholder
        body = body.replace("THIS_REPO_OR_FOLDER", repo_id or "path/to/this/folder")
    if rf.checkpoint is not None:
        body += f"\n\nThis repository holds the {what}, not the final LoRA of the run."
    likeness = card_lines(rf.run, rf.checkpoint)  # the scores of the LoRA pushed
    body = _LIKENESS.sub("", body).rstrip() + ("\n\n" + "\n".join(likeness).rstrip()
                                               if likeness else "")
    if local_base:
        body += (f"\n\nTrained on a local copy of the base model ({local_base.rsplit('/', 1)[-1]}); "
                 f"`base_model` names the public SDXL base.")
    if "comfyui" not in body.lower() or "a1111" not in body.lower().replace("automatic1111", "a1111"):
        body += "\n\n" + usage_section(repo_id, info, KOHYA_FILE in rf.files)
    body += "\n\n## Files\n\n" + "\n".join(_file_lines(rf)) + "\n"
    return f"---\n{data.to_yaml()}\n---\n\n{body}"


def validate_card(text: str, uploaded: set[str]) -> dict[str, Any]:
    """Parse ``text`` with huggingface_hub's card parser and check the LoRA metadata; returns the
    metadata dict. Raises :class:`ShareError` (one sentence) when something required is missing."""
    from huggingface_hub import ModelCard

    try:
        meta = ModelCard(text).data.to_dict()
    except Exception as exc:
        raise ShareError(f"The model card's metadata does not parse ({type(exc).__name__}); "
                         "fix the run's README.md.") from exc
    missing = [k for k in ("base_model", "instance_prompt", "license") if not meta.get(k)]
    if missing:
        raise ShareError(f"The model card lacks {', '.join(missing)}; the run's manifest.json or "
                         "config.yaml must name the trigger and base model.")
    tags = set(meta.get("tags") or [])
    if not set(REQUIRED_TAGS) <= tags:
        raise ShareError("The model card lacks the Hub LoRA tags "
                         f"({', '.join(sorted(set(REQUIRED_TAGS) - tags))}).")
    for w in meta.get("widget") or []:
        url = (w.get("output") or {}).get("url")
        if url not in uploaded:
            raise ShareError(f"The model card's widget image {url} is not among the uploaded files.")
    return meta
