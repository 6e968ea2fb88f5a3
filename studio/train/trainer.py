"""The SDXL DreamBooth LoRA training loop.

``train(config, callbacks=None, stop=None)`` runs one job into ``config.output_dir`` following
the run-folder contract (config.yaml, events.jsonl, checkpoints/, samples/, final LoRA files,
model card, manifest). Conditioning follows diffusers' ``train_dreambooth_lora_sdxl.py``: prompt
embeddings are the penultimate hidden states of both CLIP encoders concatenated, the pooled
embedding comes from the second encoder's projection, and ``add_time_ids`` are
(original size, crop top-left, target size). The target is the noise (epsilon) or the velocity
(v-prediction), following the base's scheduler config.

The loop uses ``accelerate.Accelerator`` (so ``accelerate launch -m studio train`` runs it on
several processes); only the main process writes files. It imports nothing from Gradio and
reports through :class:`TrainCallbacks`; ``stop`` (a ``threading.Event``-like object) is checked
every step: the trainer saves a checkpoint and ends with status "cancelled".
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from studio.config import ConfigError, TrainConfig, save_config
from studio.dataset import DatasetError
from studio.dataset.sources import load_dataset
from studio.errors import StudioError
from studio.runs import checkpoints as ckpt
from studio.runs.events import EventWriter, read_events
from studio.train.data import (
    EpochSampler,
    TrainDataset,
    class_prompt,
    collate,
    ensure_class_images,
    example_prompts,
    instance_prompt,
)

log = logging.getLogger(__name__)

LORA_FILE = "pytorch_lora_weights.safetensors"


class TrainingError(StudioError, RuntimeError):
    """A training failure meant for the user; ``str()`` is one line."""


class StopFlag(Protocol):
    def is_set(self) -> bool: ...


# ---- callbacks -------------------------------------------------------------------------------
class TrainCallbacks:
    """Override what you need; every method is a no-op here."""

    def on_start(self, info: dict[str, Any]) -> None: ...
    def on_step(self, info: dict[str, Any]) -> None: ...
    def on_sample(self, info: dict[str, Any]) -> None: ...
    def on_checkpoint(self, info: dict[str, Any]) -> None: ...
    def on_log(self, level: str, message: str) -> None: ...
    def on_end(self, info: dict[str, Any]) -> None: ...


class _Fanout(TrainCallbacks):
    def __init__(self, items: list[TrainCallbacks]):
        self.items = items

    def __getattribute__(self, name):
        if name.startswith("on_"):
            def call(*a, **k):
                for cb in object.__getattribute__(self, "items"):
                    try:
                        getattr(cb, name)(*a, **k)
                    except Exception:  # a broken observer never stops training
                        log.exception("callback %s failed", name)
            return call
        return object.__getattribute__(self, name)


class EventCallbacks(TrainCallbacks):
    """Writes the run-folder events (main process only)."""

    def __init__(self, writer: EventWriter):
        self.w = writer

    def on_start(self, info):
        self.w.start(info["step"], info["total_steps"], info["resumed_from"])

    def on_step(self, info):
        self.w.step(info["step"], info["total_steps"], info["loss"], info["lr"], info["epoch"],
                    info["steps_per_s"], info["eta_s"], info["mem_gb"])

    def on_sample(self, info):
        self.w.sample(info["step"], info["prompt"], info["seed"], info["path"])

    def on_checkpoint(self, info):
        self.w.checkpoint(info["step"], info["path"])

    def on_log(self, level, message):
        self.w.log(message, level)

    def on_end(self, info):
        if info["status"] == "failed":
            self.w.error(info["message"])
        self.w.end(info["status"], info["step"], info["message"])


@dataclass
class TrainResult:
    status: str  # finished | cancelled | failed
    step: int
    message: str
    run_dir: Path
    loss_history: list[float] = field(default_factory=list)


# ---- helpers ---------------------------------------------------------------------------------
def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:300]


def _is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


OOM_MESSAGE = ("The GPU ran out of memory at step {step}; lower data.resolution, train.batch_size or "
               "lora.rank, or turn on train.gradient_checkpointing, data.cache_latents, "
               "train.optimizer=adamw8bit and train.mixed_precision=fp16 (or use --preset low-vram).")


def _rng_state() -> dict[str, Any]:
    import numpy as np
    import torch

    st = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: dict[str, Any]) -> None:
    import numpy as np
    import torch

    random.setstate(st["python"])
    np.random.set_state(st["numpy"])
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def compute_time_ids(original_size, crop_top_left, resolution: int, device, dtype):
    """SDXL micro-conditioning: (orig_h, orig_w, crop_top, crop_left, target_h, target_w)."""
    import torch

    ids = list(original_size) + list(crop_top_left) + [resolution, resolution]
    return torch.tensor([ids], device=device, dtype=dtype)


def encode_prompt(text_encoders, tokenizers, prompts: list[str]):
    """(prompt_embeds [B,77,D1+D2], pooled [B,P]) as in diffusers' SDXL training script."""
    embeds = []
    pooled = None
    for tok, enc in zip(tokenizers, text_encoders, strict=True):
        ids = tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids.to(enc.device)
        out = enc(ids, output_hidden_states=True, return_dict=True)
        pooled = out[0]  # the last encoder's (projected) pooled output is kept
        h = out.hidden_states[-2]
        embeds.append(h.view(h.shape[0], h.shape[1], -1))
    import torch

    prompt_embeds = torch.cat(embeds, dim=-1)
    return prompt_embeds, pooled.view(pooled.shape[0], -1)


# ---- the job ---------------------------------------------------------------------------------
class Trainer:
    def __init__(self, config: TrainConfig, callbacks: TrainCallbacks | None = None,
                 stop: StopFlag | None = None, resume: str | None = None):
        if not config.output_dir:
            raise ConfigError("output_dir: no run folder was given (--out RUN_DIR).")
        self.cfg = config
        self.run_dir = Path(config.output_dir).expanduser().resolve()
        self.stop = stop
        self.resume = resume
        self.user_callbacks = callbacks
        self.loss_history: list[float] = []
        self.global_step = 0
        self.wall_time_before = 0.0

    # -- setup --------------------------------------------------------------------------------
    def _setup_accelerator(self):
        import torch
        from accelerate import Accelerator
        from accelerate.utils import ProjectConfiguration

        from studio.models import pick_device

        device = pick_device()
        cpu = device == "cpu"
        mp = self.cfg.train.mixed_precision
        self._warnings: list[str] = []
        if cpu and mp != "no":
            self._warnings.append(f"train.mixed_precision={mp} is ignored on a CPU (training in fp32).")
            mp = "no"
        log_with = [n for n, on in (("tensorboard", self.cfg.logging.tensorboard),
                                    ("wandb", self.cfg.logging.wandb)) if on]
        self.acc = Accelerator(
            gradient_accumulation_steps=self.cfg.train.gradient_accumulation_steps,
            mixed_precision=mp, cpu=cpu, log_with=log_with or None,
            project_config=ProjectConfiguration(project_dir=str(self.run_dir),
                                                logging_dir=str(self.run_dir / "logs")))
        self.main = self.acc.is_main_process
        self.weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mp, torch.float32)
        if self.cfg.train.allow_tf32 and torch.cuda.is_available():
            torch.backends.cuda.matmul.allow_tf32 = True

    def _load_models(self):
        import torch
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from transformers import AutoTokenizer, CLIPTextModel, CLIPTextModelWithProjection

        from studio.models import _expand, explain_load_error, model_source, vae_source

        m = self.cfg.model
        self.base = model_source("base", m.base)
        src = _expand(self.base)
        if not Path(src).exists() and Path(src).is_absolute():
            raise explain_load_error("base", self.base, FileNotFoundError(src))
        kw = {"revision": m.revision}
        try:
            self.tokenizers = [AutoTokenizer.from_pretrained(src, subfolder=s, revision=m.revision,
                                                             use_fast=False)
                               for s in ("tokenizer", "tokenizer_2")]
            self.noise_scheduler = DDPMScheduler.from_pretrained(src, subfolder="scheduler", **kw)
            te1 = CLIPTextModel.from_pretrained(src, subfolder="text_encoder", variant=m.variant, **kw)
            te2 = CLIPTextModelWithProjection.from_pretrained(src, subfolder="text_encoder_2",
                                                              variant=m.variant, **kw)
            unet = UNet2DConditionModel.from_pretrained(src, subfolder="unet", variant=m.variant, **kw)
        except Exception as exc:
            raise explain_load_error("base", self.base, exc) from exc
        self.vae_src = vae_source(self.base, m.vae)
        try:
            if self.vae_src:
                vae = AutoencoderKL.from_pretrained(_expand(self.vae_src))
            else:
                vae = AutoencoderKL.from_pretrained(src, subfolder="vae", variant=m.variant, **kw)
        except Exception as exc:
            raise explain_load_error("vae", self.vae_src or self.base, exc) from exc
        for mod in (te1, te2, unet, vae):
            mod.requires_grad_(False)
        dev = self.acc.device
        # A VAE that needs upcasting (the original SDXL VAE overflows in fp16) stays in fp32.
        self.vae_dtype = torch.float32 if vae.config.get("force_upcast", True) else self.weight_dtype
        vae.to(dev, dtype=self.vae_dtype)
        unet.to(dev, dtype=self.weight_dtype)
        te1.to(dev, dtype=self.weight_dtype)
        te2.to(dev, dtype=self.weight_dtype)
        self.unet, self.vae, self.text_encoders = unet, vae, [te1, te2]
        self.prediction_type = self.noise_scheduler.config.prediction_type

    def _add_lora(self):
        from peft import LoraConfig

        lc = self.cfg.lora
        common = dict(r=lc.rank, lora_alpha=lc.lora_alpha, lora_dropout=lc.dropout,
                      init_lora_weights="gaussian", use_dora=lc.use_dora)
        self.unet.add_adapter(LoraConfig(target_modules=list(lc.target_modules), **common))
        if lc.train_text_encoder:
            for te in self.text_encoders:
                te.add_adapter(LoraConfig(target_modules=list(lc.text_encoder_target_modules),
                                          **common))
        if self.cfg.train.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
            if lc.train_text_encoder:
                for te in self.text_encoders:
                    te.gradient_checkpointing_enable()
        from diffusers.training_utils import cast_training_params

        models = [self.unet] + (self.text_encoders if lc.train_text_encoder else [])
        if self.weight_dtype != __import__("torch").float32:
            cast_training_params(models, dtype=__import__("torch").float32)

    def _make_optimizer(self):
        import torch

        t = self.cfg.train
        unet_params = [p for p in self.unet.parameters() if p.requires_grad]
        groups = [{"params": unet_params, "lr": t.learning_rate, "weight_decay": t.weight_decay}]
        if self.cfg.lora.train_text_encoder:
            te_params = [p for te in self.text_encoders for p in te.parameters() if p.requires_grad]
            groups.append({"params": te_params, "lr": t.text_encoder_lr or t.learning_rate,
                           "weight_decay": t.text_encoder_weight_decay})
        self.lora_bytes = sum(p.numel() * 4 for g in groups for p in g["params"])
        betas = (t.adam_beta1, t.adam_beta2)
        if t.optimizer == "adamw":
            return torch.optim.AdamW(groups, lr=t.learning_rate, betas=betas, eps=t.adam_epsilon)
        if t.optimizer == "adamw8bit":
            try:
                import bitsandbytes as bnb
            except Exception as exc:
                raise TrainingError(f"train.optimizer=adamw8bit needs bitsandbytes, which failed to "
                                    f"load ({_first_line(exc)}); use train.optimizer=adamw.") from None
            return bnb.optim.AdamW8bit(groups, lr=t.learning_rate, betas=betas, eps=t.adam_epsilon)
        try:
            from prodigyopt import Prodigy
        except ImportError:
            raise TrainingError("train.optimizer=prodigy needs the prodigyopt package "
                                "(pip install prodigyopt).") from None
        if t.learning_rate <= 0.1:
            self._warnings.append(f"Prodigy works best with train.learning_rate around 1.0 (got "
                                  f"{t.learning_rate}).")
        return Prodigy(groups, lr=t.learning_rate, betas=betas, beta3=t.prodigy_beta3,
                       eps=t.adam_epsilon, decouple=t.prodigy_decouple,
                       use_bias_correction=t.prodigy_use_bias_correction,
                       safeguard_warmup=t.prodigy_safeguard_warmup, d_coef=t.prodigy_d_coef)

    def _prepare_data(self):
        d = self.cfg.data
        self.ds = load_dataset(d.dataset or "", d.image_column, d.caption_column)
        prompts = example_prompts(self.cfg, self.ds)
        self.instance_prompt = instance_prompt(self.cfg, self.ds) or prompts[0]
        class_examples, cprompt = None, None
        if d.with_prior_preservation:
            cprompt = class_prompt(self.cfg, self.ds)
            folder = Path(d.class_data_dir).expanduser() if d.class_data_dir else \
                self.run_dir / "class_images"
            if self.main:
                class_examples = ensure_class_images(
                    folder, d.num_class_images, cprompt, self._class_pipeline, d.resolution,
                    self.cfg.validation.steps, self.cfg.train.seed, str(self.acc.device),
                    log_fn=lambda m: self.cb.on_log("info", m))
            self.acc.wait_for_everyone()
            from studio.train.data import class_images

            class_examples = class_images(folder)[: d.num_class_images]
            if not class_examples:
                raise DatasetError(f"data.class_data_dir: no class images in {folder}.")
        self.dataset = TrainDataset(self.ds.examples, prompts, d.resolution, d.crop, d.random_flip,
                                    d.repeats, self.cfg.train.seed, class_examples, cprompt)
        import torch

        self.sampler = EpochSampler(len(self.dataset), self.cfg.train.seed)
        self.loader = torch.utils.data.DataLoader(
            self.dataset, batch_size=self.cfg.train.batch_size, sampler=self.sampler,
            collate_fn=collate, num_workers=self.cfg.train.dataloader_num_workers)

    def _class_pipeline(self):
        # Called before the LoRA layers are added: the plain base model.
        return self._pipeline()

    def _pipeline(self):
        from diffusers import StableDiffusionXLPipeline

        unet = self.acc.unwrap_model(self.unet)
        tes = [self.acc.unwrap_model(te) for te in self.text_encoders]
        for te in tes:
            te.to(self.acc.device)
        sched = self._sampling_scheduler()
        pipe = StableDiffusionXLPipeline(
            vae=self.vae.to(self.acc.device), text_encoder=tes[0], text_encoder_2=tes[1],
            tokenizer=self.tokenizers[0], tokenizer_2=self.tokenizers[1], unet=unet, scheduler=sched)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def _sampling_scheduler(self):
        from diffusers import EulerDiscreteScheduler

        from studio.models import _expand

        try:
            from diffusers import SchedulerMixin

            cfg = EulerDiscreteScheduler.load_config(_expand(self.base), subfolder="scheduler")
            cls_name = cfg.get("_class_name", "EulerDiscreteScheduler")
            import diffusers

            cls = getattr(diffusers, cls_name, EulerDiscreteScheduler)
            if not issubclass(cls, SchedulerMixin):
                cls = EulerDiscreteScheduler
            return cls.from_config(cfg)
        except Exception:
            return EulerDiscreteScheduler.from_config(self.noise_scheduler.config)

    # -- caches -------------------------------------------------------------------------------
    def _encode_latents(self, pixel_values):
        import torch

        with torch.no_grad():
            dist = self.vae.encode(pixel_values.to(self.acc.device, dtype=self.vae_dtype)).latent_dist
        return dist

    def _build_caches(self):
        import torch

        self.latent_cache: dict[tuple[str, int], Any] = {}
        self.embed_cache: dict[str, tuple[Any, Any]] = {}
        d = self.cfg.data
        if d.cache_latents:
            if d.crop == "random" or d.random_flip:
                self._warnings.append("data.cache_latents freezes one crop/flip per image.")
            for i in range(len(self.ds.examples)):
                it = self.dataset.item(i, 0)
                keys = [("instance", it["index"], it["pixel_values"], it["original_size"],
                         it["crop_top_left"])]
                if "class_pixel_values" in it:
                    keys.append(("class", it["class_index"], it["class_pixel_values"],
                                 it["class_original_size"], it["class_crop_top_left"]))
                for kind, idx, px, osz, ctl in keys:
                    if (kind, idx) not in self.latent_cache:
                        dist = self._encode_latents(px[None])
                        self.latent_cache[(kind, idx)] = (dist.mean.cpu(), dist.std.cpu(), osz, ctl)
            for j in range(len(self.dataset.class_examples)):
                if ("class", j) not in self.latent_cache:
                    it = self.dataset.item(j, 0)
                    dist = self._encode_latents(it["class_pixel_values"][None])
                    self.latent_cache[("class", it["class_index"])] = (
                        dist.mean.cpu(), dist.std.cpu(), it["class_original_size"],
                        it["class_crop_top_left"])
            if not self._needs_vae_on_device():
                self.vae.to("cpu")
        if not self.cfg.lora.train_text_encoder and d.cache_text_embeddings:
            prompts = set(self.dataset.prompts)
            if self.dataset.class_prompt:
                prompts.add(self.dataset.class_prompt)
            with torch.no_grad():
                for p in sorted(prompts):
                    e, pooled = encode_prompt(self.text_encoders, self.tokenizers, [p])
                    self.embed_cache[p] = (e, pooled)
            for te in self.text_encoders:
                te.to("cpu")
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    def _needs_vae_on_device(self) -> bool:
        v = self.cfg.validation
        return bool(v.every_n_steps or v.every_n_epochs)

    # -- checkpoints --------------------------------------------------------------------------
    def _peft_states(self) -> dict[str, dict]:
        from peft.utils import get_peft_model_state_dict

        out = {"unet": get_peft_model_state_dict(self.acc.unwrap_model(self.unet))}
        if self.cfg.lora.train_text_encoder:
            for name, te in zip(("text_encoder", "text_encoder_2"), self.text_encoders, strict=True):
                out[name] = get_peft_model_state_dict(self.acc.unwrap_model(te))
        return out

    def save_lora(self, folder: Path) -> Path:
        """Write ``pytorch_lora_weights.safetensors`` (diffusers layout + adapter metadata).

        The tensors keep peft's ``lora_A``/``lora_B`` names. diffusers' older
        ``convert_state_dict_to_diffusers`` renames only the attention projections
        (``to_q.lora.down``...), so with any other target (conv1, proj_in, ff.net.2...) the file
        mixes both spellings, diffusers' loader takes it for a peft file, and the attention
        layers are silently skipped at load time. One spelling for every key loads whole."""
        from diffusers import StableDiffusionXLPipeline

        states = self._peft_states()
        unwrap = self.acc.unwrap_model
        kwargs: dict[str, Any] = {
            "unet_lora_layers": {k: v.detach().float().cpu() for k, v in states["unet"].items()},
            "unet_lora_adapter_metadata": unwrap(self.unet).peft_config["default"].to_dict(),
        }
        if self.cfg.lora.train_text_encoder:
            for name, te in zip(("text_encoder", "text_encoder_2"), self.text_encoders, strict=True):
                kwargs[f"{name}_lora_layers"] = {k: v.detach().float().cpu()
                                                 for k, v in states[name].items()}
                kwargs[f"{name}_lora_adapter_metadata"] = unwrap(te).peft_config["default"].to_dict()
        StableDiffusionXLPipeline.save_lora_weights(str(folder), weight_name=LORA_FILE, **kwargs)
        return folder / LORA_FILE

    def _save_checkpoint(self, epoch: int) -> Path | None:
        import torch

        if not self.main:
            return None

        def write(tmp: Path) -> None:
            self.save_lora(tmp)
            state = {
                "step": self.global_step, "epoch": epoch, "loss_history": list(self.loss_history),
                "lora": {k: {n: t.detach().cpu() for n, t in v.items()}
                         for k, v in self._peft_states().items()},
                "optimizer": self.optimizer.state_dict(), "scheduler": self.lr_scheduler.state_dict(),
                "rng": _rng_state(), "wall_time": self._wall_time(),
                "config": self.cfg.model_dump(mode="json"),
            }
            torch.save(state, tmp / ckpt.STATE_FILE)

        need = int(self.lora_bytes * 4 + self.cfg.checkpoints.min_free_mb * 2**20)
        path = ckpt.save_checkpoint(self.run_dir, self.global_step, write,
                                    self.cfg.checkpoints.total_limit, need)
        rel = f"{ckpt.CKPT_DIR}/{path.name}"
        self.cb.on_checkpoint({"step": self.global_step, "path": rel})
        return path

    def _load_checkpoint(self, path: Path) -> dict[str, Any]:
        import torch
        from peft.utils import set_peft_model_state_dict

        state = torch.load(path / ckpt.STATE_FILE, map_location="cpu", weights_only=False)
        set_peft_model_state_dict(self.acc.unwrap_model(self.unet), state["lora"]["unet"])
        if self.cfg.lora.train_text_encoder:
            for name, te in zip(("text_encoder", "text_encoder_2"), self.text_encoders, strict=True):
                if name not in state["lora"]:
                    raise ckpt.CheckpointError(f"Cannot resume from {path.name}: it has no text "
                                               "encoder LoRA but lora.train_text_encoder is on.")
                set_peft_model_state_dict(self.acc.unwrap_model(te), state["lora"][name])
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"])
        self.global_step = int(state["step"])
        self.loss_history = list(state["loss_history"])
        self.wall_time_before = float(state.get("wall_time", 0.0))
        return state

    def _wall_time(self) -> float:
        return self.wall_time_before + (time.time() - self.t_start)

    # -- sampling -----------------------------------------------------------------------------
    def validation_prompts(self) -> list[str]:
        return list(self.cfg.validation.prompts) or [self.instance_prompt]

    def _sample(self, step: int) -> list[dict[str, Any]]:
        import torch

        if not self.main:
            return []
        v = self.cfg.validation
        unet = self.acc.unwrap_model(self.unet)
        was_training = unet.training
        unet.eval()
        pipe = self._pipeline()
        out_dir = self.run_dir / "samples" / f"step-{step:06d}"
        out_dir.mkdir(parents=True, exist_ok=True)
        results = []
        from PIL.PngImagePlugin import PngInfo

        from studio.fsutil import atomic_write

        k = 0
        for prompt in self.validation_prompts():
            for i in range(v.num_images):
                seed = v.seed + i
                g = torch.Generator(device="cpu").manual_seed(seed)
                with torch.no_grad(), self.acc.autocast():
                    img = pipe(prompt=prompt, negative_prompt=v.negative_prompt or None,
                               num_inference_steps=v.steps, guidance_scale=v.guidance,
                               height=self.cfg.data.resolution, width=self.cfg.data.resolution,
                               generator=g).images[0]
                info = PngInfo()
                for key, val in (("prompt", prompt), ("seed", str(seed)), ("step", str(step)),
                                 ("negative_prompt", v.negative_prompt), ("steps", str(v.steps)),
                                 ("guidance", str(v.guidance))):
                    info.add_text(key, val)
                name = f"{k}.png"
                atomic_write(out_dir / name, lambda p, im=img, inf=info: im.save(p, "PNG", pnginfo=inf))
                rec = {"step": step, "prompt": prompt, "seed": seed,
                       "path": f"samples/step-{step:06d}/{name}"}
                self.cb.on_sample(rec)
                results.append(rec)
                k += 1
        if was_training:
            unet.train()
        if self.embed_cache:
            for te in self.text_encoders:
                te.to("cpu")
        if self.latent_cache and not self._needs_vae_on_device():
            self.vae.to("cpu")
        del pipe
        return results

    # -- the loop -----------------------------------------------------------------------------
    def run(self) -> TrainResult:
        self.t_start = time.time()
        self._setup_accelerator()
        self.writer = EventWriter(self.run_dir, enabled=self.main)
        cbs: list[TrainCallbacks] = [EventCallbacks(self.writer)] if self.main else []
        if self.user_callbacks is not None and self.main:
            cbs.append(self.user_callbacks)
        self.cb = _Fanout(cbs)
        try:
            return self._run()
        except BaseException as exc:
            status = "failed"
            if isinstance(exc, KeyboardInterrupt):
                msg = "Interrupted."
                status = "cancelled"
            elif _is_oom(exc):
                msg = OOM_MESSAGE.format(step=self.global_step + 1)
                exc = TrainingError(msg)
            else:
                msg = _first_line(exc)
                if not isinstance(exc, (TrainingError, ConfigError, DatasetError,
                                        ckpt.CheckpointError)) and \
                        type(exc).__name__ not in ("ModelLoadError",):
                    msg = f"{type(exc).__name__}: {msg}"
            self.cb.on_end({"status": status, "step": self.global_step, "message": msg})
            self._end_trackers()
            if isinstance(exc, TrainingError) and not isinstance(exc, KeyboardInterrupt):
                raise exc from None
            raise

    def _end_trackers(self) -> None:
        try:
            if self.cfg.logging.tensorboard or self.cfg.logging.wandb:
                self.acc.end_training()
        except Exception:
            log.debug("end_training failed", exc_info=True)

    def _run(self) -> TrainResult:
        import torch
        from accelerate.utils import set_seed
        from diffusers.optimization import get_scheduler
        from diffusers.training_utils import compute_snr

        cfg, t = self.cfg, self.cfg.train
        resume_path: Path | None = None
        if self.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.resume:
            resume_path = ckpt.resolve_resume(self.run_dir, self.resume)
        elif ckpt.list_checkpoints(self.run_dir):
            raise ckpt.CheckpointError(f"The run folder {self.run_dir} already holds checkpoints; "
                                       "use --resume latest or another --out.")
        if self.main:
            ckpt.clean_partial(self.run_dir)
            events = self.run_dir / "events.jsonl"
            if not self.resume and events.exists():  # a fresh start in a folder without checkpoints
                os.replace(events, self.run_dir / f"events-{int(time.time())}.jsonl.old")
            save_config(cfg, self.run_dir / "config.yaml")
        set_seed(t.seed)
        self._load_models()
        self._prepare_data()
        self._add_lora()
        self.optimizer = self._make_optimizer()
        self._build_caches()

        n_proc = self.acc.num_processes
        steps_per_epoch = max(1, math.ceil(len(self.loader) / max(1, n_proc) /
                                           t.gradient_accumulation_steps))
        total = t.max_train_steps or t.num_train_epochs * steps_per_epoch
        num_epochs = math.ceil(total / steps_per_epoch)
        self.total_steps = total
        self.lr_scheduler = get_scheduler(
            t.lr_scheduler, optimizer=self.optimizer, num_warmup_steps=t.lr_warmup_steps * n_proc,
            num_training_steps=total * n_proc, num_cycles=t.lr_num_cycles, power=t.lr_power)
        trained = [self.unet] + (self.text_encoders if cfg.lora.train_text_encoder else [])
        prepared = self.acc.prepare(*trained, self.optimizer, self.loader, self.lr_scheduler)
        self.unet = prepared[0]
        if cfg.lora.train_text_encoder:
            self.text_encoders = list(prepared[1:3])
        self.optimizer, self.loader, self.lr_scheduler = prepared[-3:]
        # Step counts depend on the sharded loader.
        steps_per_epoch = max(1, math.ceil(len(self.loader) / t.gradient_accumulation_steps))
        num_epochs = math.ceil(total / steps_per_epoch)

        if resume_path is not None:
            self._load_checkpoint(resume_path)
            self.cb.on_log("info", f"Resumed from {resume_path.name} at step {self.global_step}.")
        start_step = self.global_step
        resumed_rel = f"{ckpt.CKPT_DIR}/{resume_path.name}" if resume_path else None
        if self.main and (cfg.logging.tensorboard or cfg.logging.wandb):
            self.acc.init_trackers(cfg.logging.wandb_project if cfg.logging.wandb else "train",
                                   config={"lr": t.learning_rate, "rank": cfg.lora.rank})
        self.cb.on_start({"step": start_step, "total_steps": total, "resumed_from": resumed_rel})
        for w in self._warnings:
            self.cb.on_log("warning", w)
        if n_proc > 1:
            self.cb.on_log("info", f"Distributed training: num_processes={n_proc} "
                                   f"({self.acc.distributed_type}).")
        self.unet.train()
        if cfg.lora.train_text_encoder:
            for te in self.text_encoders:
                te.train()

        first_epoch = self.global_step // steps_per_epoch
        skip_batches = (self.global_step % steps_per_epoch) * t.gradient_accumulation_steps
        dev = self.acc.device
        res = cfg.data.resolution
        prior = cfg.data.with_prior_preservation
        t_loop = time.time()
        accum_losses: list[float] = []
        status, message = "finished", "Training finished."
        params_to_clip = [p for m in trained for p in m.parameters() if p.requires_grad]
        stopped = False

        for epoch in range(first_epoch, num_epochs):
            if hasattr(self.loader, "set_epoch"):
                self.loader.set_epoch(epoch)
            self.sampler.set_epoch(epoch)
            batches = self.loader
            if epoch == first_epoch and skip_batches:
                batches = self.acc.skip_first_batches(self.loader, skip_batches)
            for batch in batches:
                if self._stop_requested():
                    stopped = True
                    break
                with self.acc.accumulate(*trained):
                    loss = self._loss(batch, dev, res, prior, compute_snr)
                    if not torch.isfinite(loss):
                        raise TrainingError(
                            f"The loss became {loss.item()} at step {self.global_step + 1}; training "
                            "stopped (the last good checkpoint is kept). Lower train.learning_rate or "
                            "use train.mixed_precision=bf16/no.")
                    accum_losses.append(loss.detach().float().item())
                    self.acc.backward(loss)
                    if self.acc.sync_gradients:
                        self.acc.clip_grad_norm_(params_to_clip, t.max_grad_norm)
                    self.optimizer.step()
                    self.lr_scheduler.step()
                    self.optimizer.zero_grad(set_to_none=True)
                if not self.acc.sync_gradients:
                    continue
                self.global_step += 1
                step_loss = float(sum(accum_losses) / len(accum_losses))
                accum_losses = []
                if n_proc > 1:
                    step_loss = float(self.acc.reduce(torch.tensor(step_loss, device=dev),
                                                      "mean").item())
                self.loss_history.append(step_loss)
                done = self.global_step - start_step
                sps = done / max(1e-9, time.time() - t_loop)
                mem = (torch.cuda.max_memory_allocated() / 2**30) if torch.cuda.is_available() else 0.0
                info = {"step": self.global_step, "total_steps": total, "loss": step_loss,
                        "lr": float(self.lr_scheduler.get_last_lr()[0]), "epoch": epoch,
                        "steps_per_s": round(sps, 4),
                        "eta_s": round((total - self.global_step) / sps, 1) if sps > 0 else 0.0,
                        "mem_gb": round(mem, 3)}
                self.cb.on_step(info)
                if cfg.logging.tensorboard or cfg.logging.wandb:
                    self.acc.log({"loss": step_loss, "lr": info["lr"]}, step=self.global_step)
                if self.global_step >= total:
                    break
                if self.global_step % cfg.checkpoints.every_n_steps == 0:
                    self._save_checkpoint(epoch)
                    self.acc.wait_for_everyone()
                v = cfg.validation
                if v.every_n_steps and self.global_step % v.every_n_steps == 0:
                    self._sample(self.global_step)
            if stopped or self.global_step >= total:
                break
            v = cfg.validation
            if v.every_n_epochs and (epoch + 1) % v.every_n_epochs == 0:
                self._sample(self.global_step)

        if stopped:
            status = "cancelled"
            if self.global_step > start_step and not (
                    self.main and (self.run_dir / ckpt.CKPT_DIR / ckpt.checkpoint_name(
                        self.global_step) / ckpt.MARKER).exists()):
                self._save_checkpoint(epoch)
            message = f"Stopped at step {self.global_step} by request; resume with --resume latest."
        else:
            self._save_checkpoint(epoch)
            self.acc.wait_for_everyone()
            self._finish()
        self.acc.wait_for_everyone()
        self.cb.on_end({"status": status, "step": self.global_step, "message": message})
        self._end_trackers()
        return TrainResult(status, self.global_step, message, self.run_dir, list(self.loss_history))

    def _stop_requested(self) -> bool:
        flag = bool(self.stop is not None and self.stop.is_set())
        if self.acc.num_processes > 1:
            import torch

            t = torch.tensor(1.0 if flag else 0.0, device=self.acc.device)
            flag = bool(self.acc.reduce(t, "sum").item() > 0)
        return flag

    def _loss(self, batch, dev, res: int, prior: bool, compute_snr):
        import torch
        import torch.nn.functional as F

        t = self.cfg.train
        keys = batch["keys"]
        if self.latent_cache:
            lat = []
            for k in keys:
                mean, std, _, _ = self.latent_cache[tuple(k)]
                lat.append(mean + std * torch.randn_like(mean))
            latents = torch.cat(lat).to(dev)
            osz = [self.latent_cache[tuple(k)][2] for k in keys]
            ctl = [self.latent_cache[tuple(k)][3] for k in keys]
        else:
            latents = self._encode_latents(batch["pixel_values"]).sample()
            osz, ctl = batch["original_sizes"], batch["crop_top_lefts"]
        latents = (latents * self.vae.config.scaling_factor).to(self.weight_dtype)
        noise = torch.randn_like(latents)
        if t.noise_offset:
            noise = noise + t.noise_offset * torch.randn((latents.shape[0], latents.shape[1], 1, 1),
                                                         device=dev, dtype=latents.dtype)
        bsz = latents.shape[0]
        timesteps = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (bsz,),
                                  device=dev).long()
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        time_ids = torch.cat([compute_time_ids(o, c, res, dev, self.weight_dtype)
                              for o, c in zip(osz, ctl, strict=True)])
        prompts = batch["prompts"]
        if self.embed_cache:
            embeds = torch.cat([self.embed_cache[p][0] for p in prompts]).to(dev)
            pooled = torch.cat([self.embed_cache[p][1] for p in prompts]).to(dev)
        elif self.cfg.lora.train_text_encoder:
            embeds, pooled = encode_prompt(self.text_encoders, self.tokenizers, prompts)
        else:
            with torch.no_grad():
                embeds, pooled = encode_prompt(self.text_encoders, self.tokenizers, prompts)
        pred = self.unet(noisy, timesteps, embeds.to(self.weight_dtype),
                         added_cond_kwargs={"time_ids": time_ids,
                                            "text_embeds": pooled.to(self.weight_dtype)},
                         return_dict=False)[0]
        if self.prediction_type == "epsilon":
            target = noise
        elif self.prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(latents, noise, timesteps)
        else:
            raise TrainingError(f"The base's scheduler has prediction_type "
                                f"{self.prediction_type!r}; only epsilon and v_prediction train.")
        prior_loss = None
        if prior:
            pred, pred_prior = torch.chunk(pred, 2, dim=0)
            target, target_prior = torch.chunk(target, 2, dim=0)
            timesteps = timesteps.chunk(2)[0]
            prior_loss = F.mse_loss(pred_prior.float(), target_prior.float(), reduction="mean")
        if t.snr_gamma is None:
            loss = F.mse_loss(pred.float(), target.float(), reduction="mean")
        else:
            snr = compute_snr(self.noise_scheduler, timesteps)
            base_w = torch.stack([snr, t.snr_gamma * torch.ones_like(timesteps)], dim=1).min(
                dim=1)[0] / snr
            weights = base_w + 1 if self.prediction_type == "v_prediction" else base_w
            loss = F.mse_loss(pred.float(), target.float(), reduction="none")
            loss = (loss.mean(dim=list(range(1, loss.ndim))) * weights).mean()
        if prior_loss is not None:
            loss = loss + self.cfg.data.prior_loss_weight * prior_loss
        return loss

    def _finish(self) -> None:
        """Final LoRA (diffusers + Kohya), samples, model card and manifest (main process)."""
        if not self.main:
            return
        from studio.lora.kohya import write_kohya
        from studio.runs.card import write_model_card
        from studio.runs.manifest import write_manifest

        self.save_lora(self.run_dir)
        extra = sorted(set(self.cfg.lora.target_modules) - {"to_q", "to_k", "to_v", "to_out.0"})
        if extra:
            self.cb.on_log("warning", "lora_kohya.safetensors keeps diffusers names for "
                           f"{', '.join(extra)}; some Kohya readers only map attention layers.")
        try:
            write_kohya(self.run_dir / LORA_FILE, self.run_dir / "lora_kohya.safetensors",
                        self.cfg.lora.lora_alpha)
        except Exception as exc:
            self.cb.on_log("warning", f"The Kohya/A1111 export failed: {_first_line(exc)}.")
        samples: list[dict[str, Any]] = []
        if self.cfg.validation.at_end:
            samples = self._sample(self.global_step)
        manifest = write_manifest(self.run_dir, self.cfg, self.ds, base=self.base, vae=self.vae_src,
                                  instance_prompt=self.instance_prompt, steps=self.global_step,
                                  wall_time=self._wall_time(), loss_history=self.loss_history)
        write_model_card(self.run_dir, self.cfg, manifest, samples)


def train(config: TrainConfig, callbacks: TrainCallbacks | None = None, stop: StopFlag | None = None,
          resume: str | None = None) -> TrainResult:
    """Run one training job into ``config.output_dir`` (see the module docs).

    Returns a TrainResult with status "finished" or "cancelled" (stop requested; a checkpoint was
    saved). On failure an "error" and an "end" event are written and the exception is re-raised
    (one-line message for user errors: ConfigError, DatasetError, CheckpointError, TrainingError,
    ModelLoadError).
    """
    return Trainer(config, callbacks, stop, resume).run()


def last_step_in_events(run_dir: str | os.PathLike) -> int:
    """Highest step reported in a run's events (0 when none)."""
    steps = [e.get("step", 0) for e in read_events(run_dir) if e.get("type") == "step"]
    return max(steps, default=0)
