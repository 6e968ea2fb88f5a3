"""The typed training configuration, presets and dotted overrides.

A training job is described by one :class:`TrainConfig` (pydantic v2; unknown keys are errors at
every level). The final config of a run is built in layers::

    defaults  <-  preset (presets/ or STUDIO_HOME/presets/, sparse)  <-  --config FILE  <-  --set key=value ...

and saved as ``RUN/config.yaml`` so ``python -m studio train --config RUN/config.yaml`` reproduces
the run. Every error is a :class:`ConfigError` whose message is one line naming the key, e.g.
``train.learnin_rate: unknown setting`` or ``train.learning_rate: must be > 0 (got -1)``.

Versions (OneTrainer's pattern): a saved config carries ``config_version``. A config file is
migrated from the version it states to :data:`CONFIG_VERSION` before it is validated, one step
at a time (``MIGRATIONS[v]`` turns a version-v dict into a version-v+1 dict); a file without the
key is version 0, the format written before versions existed. So when a setting is renamed, bump
CONFIG_VERSION and append a migration that renames the old key: every run saved before still
loads and resumes. Presets are sparse and written against the current version: the bundled ones
change with the code, in the same commit as a migration, so a preset without ``config_version``
is taken as current and not migrated; a preset that states a version (a run's config.yaml used
as a preset) is migrated like a config file.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from studio.config_techniques import LikenessDataFields, PivotalLoraFields, PivotalTrainFields
from studio.overrides import ConfigError, apply_override, deep_merge, parse_override  # noqa: F401
from studio.workspace import user_presets_dir

log = logging.getLogger(__name__)

PRESETS_DIR = Path(__file__).resolve().parents[1] / "presets"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSection(_Section):
    base: str | None = Field(None, description="SDXL base model: Hub id or local folder; empty means "
                             "STUDIO_BASE_MODEL or stabilityai/stable-diffusion-xl-base-1.0.")
    vae: str | None = Field(None, description="VAE: Hub id or folder; empty means the fp16-fix VAE "
                            "(madebyollin/sdxl-vae-fp16-fix) for the default base, 'base' means the "
                            "base's own VAE (then kept in fp32, it overflows in fp16).")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) of the base.")
    variant: str | None = Field(None, description="Weight variant of the base files, e.g. 'fp16'.")


class DataSection(_Section, LikenessDataFields):
    dataset: str | None = Field(None, description="Dataset: a prepared DATASET folder, an imagefolder "
                                "with metadata.jsonl, a folder of images with .txt captions, or a "
                                "Hub dataset id.")
    image_column: str = Field("image", description="Image column of a Hub dataset.")
    caption_column: str | None = Field("text", description="Caption column (Hub dataset or "
                                       "metadata.jsonl); empty means no per-image captions.")
    instance_prompt: str | None = Field(None, description="Prompt for every image when captions are "
                                        "not used; empty means 'a photo of TRIGGER CLASS' from the "
                                        "dataset's dataset.json.")
    use_captions: bool = Field(True, description="Train on the per-image captions when present "
                               "(otherwise the instance prompt).")
    class_prompt: str | None = Field(None, description="Prompt of the class images (prior "
                                     "preservation); empty means 'a photo of CLASS'.")
    class_data_dir: str | None = Field(None, description="Folder of class images; empty means "
                                       "RUN/class_images. Missing images are generated with the base.")
    with_prior_preservation: bool = Field(False, description="Add the prior-preservation loss on "
                                          "class images (DreamBooth).")
    prior_loss_weight: float = Field(1.0, ge=0, description="Weight of the prior-preservation loss.")
    num_class_images: int = Field(100, ge=1, description="Class images wanted; missing ones are "
                                  "generated with the base model before training.")
    resolution: int = Field(1024, ge=8, description="Square training resolution in pixels "
                            "(multiple of 8).")
    crop: Literal["center", "random"] = Field("center", description="How images are cropped to the "
                                              "resolution after resizing the short side.")
    random_flip: bool = Field(False, description="Flip images horizontally with probability 0.5.")
    repeats: int = Field(1, ge=1, description="How many times each image appears per epoch.")
    cache_latents: bool | None = Field(None, description="Encode all images with the VAE once "
                                       "before training (freezes crop/flip augmentation; frees the "
                                       "VAE); empty means on unless crop=random or random_flip.")
    cache_text_embeddings: bool = Field(True, description="Encode each prompt once when the text "
                                        "encoders are frozen, then move the encoders off the GPU.")

    @field_validator("resolution")
    @classmethod
    def _multiple_of_8(cls, v: int) -> int:
        if v % 8:
            raise ValueError(f"must be a multiple of 8 (got {v})")
        return v


class LoraSection(_Section, PivotalLoraFields):
    rank: int = Field(16, ge=1, description="LoRA rank r (size of the low-rank update).")
    alpha: float | None = Field(None, gt=0, description="LoRA alpha (update scale alpha/r); "
                                "empty means alpha = rank.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA layers.")
    target_modules: list[str] = Field(default_factory=lambda: ["to_k", "to_q", "to_v", "to_out.0"],
                                      description="UNet modules that get LoRA layers.")
    text_encoder_target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "out_proj"],
        description="Text encoder modules that get LoRA layers (both encoders).")
    use_dora: bool = Field(False, description="Weight-decomposed LoRA (DoRA, peft); slower.")
    train_text_encoder: bool = Field(False, description="Also train LoRA layers on both text encoders.")

    @property
    def lora_alpha(self) -> float:
        return float(self.alpha if self.alpha is not None else self.rank)


class TrainSection(_Section, PivotalTrainFields):
    batch_size: int = Field(1, ge=1, description="Images per step per process.")
    gradient_accumulation_steps: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    max_train_steps: int | None = Field(500, ge=1, description="Optimizer steps; empty means "
                                        "num_train_epochs decides.")
    num_train_epochs: int = Field(1, ge=1, description="Epochs, used when max_train_steps is empty.")
    learning_rate: float = Field(1e-4, gt=0, description="UNet LoRA learning rate (Prodigy: use 1.0).")
    text_encoder_lr: float | None = Field(None, gt=0, description="Text encoder LoRA learning rate; "
                                          "empty means learning_rate (Prodigy always uses "
                                          "learning_rate).")
    lr_scheduler: Literal["constant", "constant_with_warmup", "cosine", "cosine_with_restarts",
                          "linear", "polynomial"] = Field("constant", description="LR schedule.")
    lr_warmup_steps: int = Field(0, ge=0, description="Warmup steps of the LR schedule.")
    lr_num_cycles: int = Field(1, ge=1, description="Hard restarts of cosine_with_restarts.")
    lr_power: float = Field(1.0, gt=0, description="Power of the polynomial schedule.")
    optimizer: Literal["adamw", "adamw8bit", "prodigy"] = Field(
        "adamw", description="adamw (torch), adamw8bit (bitsandbytes) or prodigy (prodigyopt).")
    adam_beta1: float = Field(0.9, ge=0, lt=1, description="Adam/Prodigy beta1.")
    adam_beta2: float = Field(0.999, ge=0, lt=1, description="Adam/Prodigy beta2.")
    adam_epsilon: float = Field(1e-8, gt=0, description="Adam/Prodigy epsilon.")
    weight_decay: float = Field(1e-4, ge=0, description="Weight decay of the UNet LoRA parameters.")
    text_encoder_weight_decay: float = Field(1e-3, ge=0, description="Weight decay of the text "
                                             "encoder LoRA parameters.")
    prodigy_beta3: float | None = Field(None, ge=0, lt=1, description="Prodigy beta3; empty means "
                                        "sqrt(beta2).")
    prodigy_d_coef: float = Field(1.0, gt=0, description="Prodigy d_coef (scales the estimated LR).")
    prodigy_decouple: bool = Field(True, description="Prodigy: AdamW-style decoupled weight decay.")
    prodigy_use_bias_correction: bool = Field(True, description="Prodigy: Adam bias correction.")
    prodigy_safeguard_warmup: bool = Field(True, description="Prodigy: safeguard the D estimate "
                                           "during warmup.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    snr_gamma: float | None = Field(None, gt=0, description="Min-SNR loss weighting gamma (5.0 is "
                                    "the usual value); empty means plain MSE.")
    noise_offset: float = Field(0.0, ge=0, description="Noise offset (0.05-0.1 helps very dark/bright "
                                "images).")
    mixed_precision: Literal["no", "fp16", "bf16"] = Field(
        "bf16", description="Mixed precision on GPU; a CPU trains in fp32 (a warning says so) "
        "unless STUDIO_CPU_PRECISION=bf16|fp16, a test aid that keeps a GPU's dtypes on it.")
    allow_tf32: bool = Field(True, description="Allow TF32 matmuls on Ampere+ GPUs.")
    compile_unet: bool = Field(False, description="torch.compile the UNet (also STUDIO_COMPILE=1): "
                               "faster steps after a slow first few while it compiles.")

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _yaml_no(cls, v):
        # YAML 1.1 reads a bare `no` (in a preset or `--set train.mixed_precision=no`) as False.
        return "no" if v is False else v
    gradient_checkpointing: bool = Field(False, description="Recompute activations in the backward "
                                         "pass: much less memory, ~20-30% slower.")
    seed: int = Field(42, description="Random seed (data order, augmentation, noise, LoRA init).")
    dataloader_num_workers: int = Field(0, ge=0, description="Data loading worker processes.")


class CheckpointSection(_Section):
    every_n_steps: int = Field(100, ge=1, description="Save a resumable checkpoint every N steps.")
    total_limit: int | None = Field(3, ge=1, description="Keep at most this many checkpoints (the "
                                    "newest complete one is never deleted); empty keeps all.")
    min_free_mb: int = Field(200, ge=0, description="Free disk (MiB) required on top of a "
                                  "checkpoint's size before writing it.")


class ValidationSection(_Section):
    prompts: list[str] = Field(default_factory=list, description="Validation prompts; empty means "
                               "the instance prompt. 'TOK' in a prompt is not replaced.")
    every_n_steps: int | None = Field(None, ge=1, description="Sample every N steps; empty disables "
                                      "step-based sampling.")
    every_n_epochs: int | None = Field(None, ge=1, description="Sample every N epochs.")
    at_end: bool = Field(True, description="Sample once more with the final LoRA (model card images).")
    num_images: int = Field(2, ge=1, description="Images per prompt.")
    seed: int = Field(0, description="Seed of the first image (the i-th uses seed + i).")
    steps: int = Field(25, ge=1, description="Denoising steps per validation image (also class "
                       "image generation).")
    guidance: float = Field(5.0, ge=0, description="Classifier-free guidance scale.")
    negative_prompt: str = Field("", description="Negative prompt of validation images.")
    likeness: bool | None = Field(None, description="Score face likeness and identity bleed at "
                                  "validations and checkpoints; empty: on when 3+ photos show one person.")
    bleed_prompts: list[str] = Field(default_factory=list, description="Prompts without the trigger "
                                     "for identity bleed; empty means the class prompt.")


class LoggingSection(_Section):
    tensorboard: bool = Field(False, description="Log to TensorBoard under RUN/logs.")
    wandb: bool = Field(False, description="Log to Weights & Biases (needs wandb and a login).")
    wandb_project: str = Field("sdxl-lora-studio", description="Weights & Biases project name.")


class TrainConfig(_Section):
    """One training job."""

    config_version: int = Field(default_factory=lambda: CONFIG_VERSION, description="Format "
                                "version of this config (files are migrated to it when they load).")
    output_dir: str | None = Field(None, description="Run folder (set by --out).")
    model: ModelSection = Field(default_factory=ModelSection, description="Base model and VAE.")
    data: DataSection = Field(default_factory=DataSection, description="Dataset and transforms.")
    lora: LoraSection = Field(default_factory=LoraSection, description="LoRA layers.")
    train: TrainSection = Field(default_factory=TrainSection, description="Optimisation.")
    checkpoints: CheckpointSection = Field(default_factory=CheckpointSection,
                                           description="Resumable checkpoints.")
    validation: ValidationSection = Field(default_factory=ValidationSection,
                                          description="Validation images.")
    logging: LoggingSection = Field(default_factory=LoggingSection, description="Experiment trackers.")

    @field_validator("config_version")
    @classmethod
    def _current_version(cls, v: int) -> int:
        if v != CONFIG_VERSION:
            raise ValueError(f"must be {CONFIG_VERSION}, the version this studio writes (got {v}); "
                             "a config file's own version is migrated when it loads")
        return v

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


# ---- versions ---------------------------------------------------------------------------------
CONFIG_VERSION = 1


def _v0_to_v1(data: dict[str, Any]) -> dict[str, Any]:
    """Version 1 only added ``config_version`` itself (stamped by :func:`migrate`)."""
    return data


# MIGRATIONS[v]: a config dict of version v -> the same settings in version v + 1.
MIGRATIONS: list[Callable[[dict[str, Any]], dict[str, Any]]] = [_v0_to_v1]


def migrate(data: dict[str, Any], default_version: int = 0) -> dict[str, Any]:
    """A raw config dict (read from a file) migrated to :data:`CONFIG_VERSION`; a dict without
    ``config_version`` is ``default_version``. The input is not changed."""
    version = data.get("config_version", default_version)
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise ConfigError(f"config_version: must be a whole number >= 0 (got {version!r})")
    if version > CONFIG_VERSION:
        raise ConfigError(f"config_version: {version} is newer than this studio reads "
                          f"({CONFIG_VERSION}); update the studio to load this config.")
    data = dict(data)
    while version < CONFIG_VERSION:
        data = MIGRATIONS[version](data)
        version += 1
        data["config_version"] = version
    return data


# ---- loading ---------------------------------------------------------------------------------
def _fmt_error(err: dict[str, Any]) -> str:
    loc = ".".join(str(p) for p in err.get("loc", ()))
    typ = err.get("type", "")
    ctx = err.get("ctx") or {}
    got = err.get("input")
    if typ == "extra_forbidden":
        return f"{loc}: unknown setting"
    if typ in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        op = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<",
              "less_than_equal": "<="}[typ]
        bound = next(iter(ctx.values())) if ctx else "?"
        return f"{loc}: must be {op} {bound} (got {got})"
    if typ == "literal_error":
        return f"{loc}: must be one of {ctx.get('expected', '?')} (got {got!r})"
    if typ == "value_error":
        return f"{loc}: {ctx.get('error', err.get('msg', ''))}"
    msg = err.get("msg", "invalid value")
    return f"{loc}: {msg[0].lower() + msg[1:] if msg else msg} (got {got!r})"


def validate_config(data: dict[str, Any]) -> TrainConfig:
    """Validate a plain dict into a TrainConfig; the first problem becomes a one-line ConfigError."""
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_fmt_error(exc.errors()[0])) from None


def _read_yaml(path: Path, what: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"Cannot read the {what} {path}: {exc.strerror or exc}.") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"The {what} {path} is not valid YAML{where}.") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"The {what} {path} must be a mapping of settings.")
    return data


def list_presets() -> list[str]:
    """Names of the bundled presets (presets/*.yaml), then of the workspace's saved ones."""
    bundled = sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))
    return bundled + sorted({p.stem for p in user_presets_dir().glob("[!.]*.yaml")} - {*bundled})


def preset_path(name_or_path: str) -> Path:
    """Resolve a preset name (presets/, else STUDIO_HOME/presets/) or a path to a YAML file."""
    p = Path(name_or_path).expanduser()
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.is_file():
            raise ConfigError(f"The preset file {name_or_path} does not exist.")
        return p
    for cand in (PRESETS_DIR / f"{p.name}.yaml", user_presets_dir() / f"{p.name}.yaml"):
        if cand.is_file() and p.name == name_or_path:
            return cand
    raise ConfigError(f"Unknown preset {name_or_path!r}; choose one of: {', '.join(list_presets())} "
                      "(or give a YAML path).")


def _checked(raw: dict[str, Any], label: str, default_version: int) -> dict[str, Any]:
    """One file's settings, migrated to the current version and validated on their own (so an
    error names the file)."""
    try:
        data = migrate(raw, default_version)
        validate_config(data)
    except ConfigError as exc:
        raise ConfigError(f"{label}: {exc}") from None
    return data


def load_config(preset: str | None = None, config_path: str | Path | None = None,
                overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Build the final config: defaults <- preset <- config file <- dotted overrides.

    Raises :class:`ConfigError` with one line naming the key on any problem.
    """
    data: dict[str, Any] = {}
    if preset:
        p = preset_path(preset)
        data = deep_merge(data, _checked(_read_yaml(p, "preset"), f"preset {p.name}",
                                         default_version=CONFIG_VERSION))
    if config_path:
        cp = Path(config_path).expanduser()
        data = deep_merge(data, _checked(_read_yaml(cp, "config file"), cp.name, default_version=0))
    for text in overrides:
        parts, value = parse_override(text)
        data = apply_override(data, parts, value)
    return validate_config(data)


def save_config(config: TrainConfig, path: str | Path) -> Path:
    from studio.fsutil import atomic_write_text

    return atomic_write_text(path, config.to_yaml())
