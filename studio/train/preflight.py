"""Memory pre-flight: the peak GPU memory a training config needs, before anything loads.

The estimate adds up, for each phase of a run (filling the caches, the training steps, the
validation samples), what is on the GPU then:

- the frozen models in their dtypes: sizes read from the safetensors headers of the base's local
  files (exact, no weights loaded), else the published SDXL base 1.0 configs (:data:`SDXL_SIZES`);
- the LoRA parameters (fp32), their gradients and the optimizer state (bytes per parameter by
  optimizer), counted on the targeted layers' shapes;
- activations, from :data:`CALIBRATION`: GiB per sample at 1024 px, scaled by the pixel count
  and the batch (prior preservation doubles it).

Where the calibration numbers come from is written next to each one. The training activations
are derived from SimpleTuner's published SDXL LoRA peaks at 1024 px, batch 1 on an H100
(13 GiB without and 6.5 GiB with gradient checkpointing), less the bf16 UNet (4.78 GiB) and a
rank-16 AdamW LoRA (0.35 GiB). ``benchmarks/bench_train.py`` prints, on a GPU, the activation
figures its measured peaks imply ("calibration"): paste them here to recalibrate.

``STUDIO_VRAM_GB`` forces the VRAM figure (GiB; tests, planning a rental); otherwise the total
memory of the CUDA GPU decides, and without one there is no limit.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

from studio.config import TrainConfig
from studio.errors import StudioError

VRAM_ENV = "STUDIO_VRAM_GB"
GIB = 2**30
CONTEXT_GIB = 0.5  # CUDA context and cuBLAS workspace, outside torch's allocator
HEADROOM = 1.10  # allocator fragmentation: reserved memory runs ~10% over the allocated peak

# Parameter counts of SDXL base 1.0 (its public unet/, vae/, text_encoder*/ configs, built on
# the meta device), and LoRA parameters per rank on the default attention targets.
SDXL_SIZES = {"unet": 2_567_463_684, "text_encoder": 123_060_480,
              "text_encoder_2": 694_659_840, "vae": 83_653_863}
SDXL_LORA_PER_RANK = {"unet": 1_451_520,  # to_q/to_k/to_v/to_out.0 of every attention
                      "text_encoders": 401_408}  # q/k/v/out_proj of both CLIP encoders

# GiB per sample at 1024 px (16-bit weights, SDPA attention); scaled by (resolution/1024)^2.
CALIBRATION: dict[str, tuple[float, str]] = {
    "train": (7.9, "SimpleTuner, H100, 1024 px batch 1: 13 GiB peak less weights and LoRA state"),
    "train_checkpointed": (1.4, "SimpleTuner, H100, 1024 px batch 1, gradient checkpointing: "
                                "6.5 GiB peak less weights and LoRA state"),
    "vae_encode_fp32": (2.0, "estimate: about four 128-channel fp32 feature maps at full size "
                             "live in the encoder's first block (0.5 GiB each)"),
    "vae_decode_fp32": (3.0, "estimate: the decoder's last up blocks at full size (256 and "
                             "128 channels, fp32)"),
    "unet_inference": (0.4, "estimate: one sample of a no-grad UNet pass (two with guidance)"),
}
OPTIMIZER_STATE_BYTES = {"adamw": 8, "adamw8bit": 2, "prodigy": 16}  # per LoRA parameter


class MemoryPreflightError(StudioError):
    """The config will not fit the GPU's memory; one sentence with the settings that would."""


@dataclass
class Estimate:
    """Peak GPU memory of a config, by phase (GiB), and the verdict for a VRAM figure."""

    phases: dict[str, float]
    parts: dict[str, float]  # the training phase, by part
    vram_gib: float | None
    vram_source: str
    sizes_source: str
    notes: list[str] = field(default_factory=list)

    @property
    def peak_gib(self) -> float:
        return max(self.phases.values())

    @property
    def peak_phase(self) -> str:
        return max(self.phases, key=self.phases.get)

    @property
    def fits(self) -> bool | None:
        """None without a VRAM figure (no GPU and no STUDIO_VRAM_GB)."""
        if self.vram_gib is None:
            return None
        return self.peak_gib * HEADROOM <= self.vram_gib - CONTEXT_GIB

    def summary(self) -> str:
        phases = ", ".join(f"{k} {v:.1f}" for k, v in self.phases.items())
        head = f"Estimated peak GPU memory {self.peak_gib:.1f} GiB ({self.peak_phase}; {phases} GiB)"
        if self.fits is None:
            return f"{head}; {self.vram_source}."
        verdict = "fits" if self.fits else "does NOT fit"
        return (f"{head}: {verdict} {self.vram_gib:.1f} GiB ({self.vram_source}, keeping "
                f"{CONTEXT_GIB} GiB for CUDA and {round((HEADROOM - 1) * 100)}% headroom).")

    def as_dict(self) -> dict:
        return {"peak_gib": round(self.peak_gib, 2), "peak_phase": self.peak_phase,
                "phases": {k: round(v, 2) for k, v in self.phases.items()},
                "parts": {k: round(v, 2) for k, v in self.parts.items()},
                "vram_gib": self.vram_gib, "vram_source": self.vram_source, "fits": self.fits,
                "sizes_source": self.sizes_source, "notes": self.notes}


# ---- model sizes ---------------------------------------------------------------------------
def _safetensors_shapes(path: Path) -> dict[str, list[int]]:
    """Tensor shapes from a safetensors file's header (no tensor data is read)."""
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(n))
    return {k: v["shape"] for k, v in header.items() if k != "__metadata__"}


def _component_shapes(root: Path, sub: str) -> dict[str, list[int]] | None:
    folder = root / sub
    files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    if not files:
        return None
    files = [f for f in files if ".fp16." in f.name] or files  # one variant, either will do
    shapes: dict[str, list[int]] = {}
    for f in files:
        shapes.update(_safetensors_shapes(f))
    return shapes


def _lora_params(shapes: dict[str, list[int]], targets: list[str], rank: int) -> int:
    """LoRA parameters on the 2-D (Linear) weights whose module name ends with a target."""
    total = 0
    for key, shape in shapes.items():
        mod = key[: -len(".weight")] if key.endswith(".weight") else None
        if mod and len(shape) == 2 and any(mod == t or mod.endswith("." + t) for t in targets):
            total += rank * (shape[0] + shape[1])
    return total


def _local_base(cfg: TrainConfig) -> Path | None:
    from studio.models import _expand, model_source

    src = Path(_expand(model_source("base", cfg.model.base)))
    return src if (src / "unet").is_dir() else None


def model_sizes(cfg: TrainConfig) -> tuple[dict[str, int], str]:
    """Parameter counts (unet, text_encoder, text_encoder_2, vae, lora) and where they came from."""
    lc = cfg.lora
    root = _local_base(cfg)
    shapes = {sub: _component_shapes(root, sub) for sub in SDXL_SIZES} if root else {}
    if root and all(shapes.values()):
        sizes = {sub: sum(math.prod(s) for s in sh.values()) for sub, sh in shapes.items()}
        lora = _lora_params(shapes["unet"], lc.target_modules, lc.rank)
        if lc.train_text_encoder:
            lora += sum(_lora_params(shapes[t], lc.text_encoder_target_modules, lc.rank)
                        for t in ("text_encoder", "text_encoder_2"))
        return {**sizes, "lora": lora}, f"the safetensors headers in {root}"
    per_target = SDXL_LORA_PER_RANK["unet"] / 4
    lora = round(per_target * len(lc.target_modules) * lc.rank)
    if lc.train_text_encoder:
        lora += round(SDXL_LORA_PER_RANK["text_encoders"] / 4 *
                      len(lc.text_encoder_target_modules) * lc.rank)
    return {**SDXL_SIZES, "lora": lora}, "the published SDXL base 1.0 configs"


def _vae_upcast(cfg: TrainConfig) -> bool:
    """Whether the VAE runs in fp32 (its config's force_upcast; the fp16-fix VAE does not)."""
    from studio.models import _expand, model_source, vae_source

    base = model_source("base", cfg.model.base)
    vae = vae_source(base, cfg.model.vae)
    folder = Path(_expand(vae)) if vae else Path(_expand(base)) / "vae"
    conf = folder / "config.json"
    if conf.is_file():
        try:
            return bool(json.loads(conf.read_text(encoding="utf-8")).get("force_upcast", True))
        except (OSError, ValueError):
            return True
    return vae is None  # the SDXL base's own VAE upcasts; the default fp16-fix one does not


# ---- the estimate --------------------------------------------------------------------------
def vram_gib() -> tuple[float | None, str]:
    """(VRAM in GiB, where the figure came from): STUDIO_VRAM_GB, else the CUDA GPU's total."""
    forced = os.environ.get(VRAM_ENV, "").strip()
    if forced:
        try:
            value = float(forced)
        except ValueError:
            raise MemoryPreflightError(f"{VRAM_ENV}={forced!r} is not a number of GB.") from None
        return value, f"{VRAM_ENV}={forced}"
    import torch

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return props.total_memory / GIB, props.name
    return None, "no CUDA GPU, so no memory limit (set STUDIO_VRAM_GB to plan for one)"


def estimate(cfg: TrainConfig, vram: tuple[float | None, str] | None = None) -> Estimate:
    """The peak memory of ``cfg`` by phase; ``vram`` (GiB, source) defaults to :func:`vram_gib`."""
    from studio.train.caches import latents_wanted

    sizes, sizes_source = model_sizes(cfg)
    t, d, v = cfg.train, cfg.data, cfg.validation
    wbytes = 4 if t.mixed_precision == "no" else 2
    vbytes = 4 if _vae_upcast(cfg) else wbytes
    scale = (d.resolution / 1024) ** 2
    batch = t.batch_size * (2 if d.with_prior_preservation else 1)
    cached = latents_wanted(d)
    te_on = cfg.lora.train_text_encoder or not d.cache_text_embeddings
    sampling = bool(v.every_n_steps or v.every_n_epochs or v.at_end)
    unet = sizes["unet"] * wbytes / GIB
    tes = (sizes["text_encoder"] + sizes["text_encoder_2"]) * wbytes / GIB
    vae = sizes["vae"] * vbytes / GIB
    lora = sizes["lora"] * (8 + OPTIMIZER_STATE_BYTES[t.optimizer]) / GIB  # params+grads+state
    act_key = "train_checkpointed" if t.gradient_checkpointing else "train"
    act = CALIBRATION[act_key][0] * scale * batch * (2 if wbytes == 4 else 1)
    encode = CALIBRATION["vae_encode_fp32"][0] * scale * vbytes / 4
    parts = {"unet": unet, "lora+optimizer": lora, "activations": act}
    if te_on:
        parts["text_encoders"] = tes
    if not cached or (sampling and (v.every_n_steps or v.every_n_epochs)):
        parts["vae"] = vae
    if not cached:
        parts["activations"] = max(act, encode * batch)
    phases = {"training": sum(parts.values())}
    # every frozen model is loaded onto the GPU before the caches let some of them leave
    phases["loading"] = unet + tes + vae + sizes["lora"] * 4 / GIB + (encode if cached else 0)
    if sampling:
        phases["sampling"] = (unet + tes + vae + lora + CALIBRATION["unet_inference"][0] * scale * 2
                              + CALIBRATION["vae_decode_fp32"][0] * scale * vbytes / 4)
    notes = [f"{k}: {val} GiB/sample at 1024 px ({src})" for k, (val, src) in CALIBRATION.items()]
    figure, source = vram if vram is not None else vram_gib()
    return Estimate(phases, parts, figure, source, sizes_source, notes)


# ---- what would fit ------------------------------------------------------------------------
FIXES: list[tuple[str, str]] = [  # tried in this order, each on top of the previous ones
    ("train.gradient_checkpointing", "true"),
    ("data.cache_text_embeddings", "true"),
    ("lora.train_text_encoder", "false"),
    ("train.optimizer", "adamw8bit"),
    ("validation.every_n_steps", "null"),
    ("validation.every_n_epochs", "null"),
    ("validation.at_end", "false"),
    ("data.with_prior_preservation", "false"),
    ("train.batch_size", "1"),
    ("lora.rank", "8"),
    ("data.resolution", "768"),
    ("data.resolution", "512"),
]


def _value(cfg: TrainConfig, key: str):
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


def _apply(cfg: TrainConfig, changes: list[str]) -> TrainConfig:
    from studio.config import apply_override, parse_override

    data = cfg.model_dump(mode="json")
    for text in changes:
        data = apply_override(data, *parse_override(text))
    return cfg.model_validate(data)


def fitting_changes(cfg: TrainConfig, vram: tuple[float, str]) -> list[str] | None:
    """The fewest overrides (``key=value``, from :data:`FIXES`) found that make ``cfg`` fit
    ``vram``, or None when none do: add them in order until it fits, then drop each one that
    is not needed."""
    changes: list[str] = []
    for key, raw in FIXES:
        current, wanted = _value(cfg, key), _value(_apply(cfg, [f"{key}={raw}"]), key)
        if current == wanted or (key == "data.resolution" and current <= wanted):
            continue
        changes = [c for c in changes if not c.startswith(key + "=")] + [f"{key}={raw}"]
        if estimate(_apply(cfg, changes), vram).fits:
            break
    else:
        return None
    for c in list(changes)[::-1]:
        fewer = [x for x in changes if x != c]
        if fewer and estimate(_apply(cfg, fewer), vram).fits:
            changes = fewer
    return changes


def check(cfg: TrainConfig, vram: tuple[float | None, str] | None = None) -> Estimate:
    """The estimate; raises :class:`MemoryPreflightError` (one sentence naming the settings that
    would fit) when it does not fit the VRAM figure."""
    est = estimate(cfg, vram)
    if est.fits is not False:
        return est
    fig = (est.vram_gib or 0.0, est.vram_source)
    changes = fitting_changes(cfg, fig)
    need = f"needs about {est.peak_gib:.1f} GiB of GPU memory ({est.peak_phase})"
    if changes:
        hint = f"set {', '.join(changes)} to fit"
    else:
        hint = "no setting of this studio makes it fit; use a GPU with more memory"
    raise MemoryPreflightError(f"This training config {need} but the GPU has "
                               f"{est.vram_gib:.1f} GiB ({est.vram_source}); {hint}.")
