"""The SDXL DreamBooth LoRA training loop.

``train(config, callbacks=None, stop=None)`` runs one job into ``config.output_dir`` following
the run-folder contract (:class:`studio.runs.folder.RunFolder`). The pieces live next door:
:mod:`.sdxl`, :mod:`.loss`, :mod:`.optimizers`, :mod:`.caches`, :mod:`.state` (checkpoints),
:mod:`.sampling` (validation images), :mod:`.callbacks`; likeness in :mod:`studio.identity.hook`.

It uses ``accelerate.Accelerator`` (``accelerate launch -m studio train`` runs it on several
processes; only the main process writes files) and reports through :class:`TrainCallbacks`;
``stop`` (``threading.Event``-like), checked every step, saves a checkpoint and ends "cancelled".
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from studio.config import ConfigError, TrainConfig
from studio.identity.hook import LikenessHook
from studio.runs import checkpoints as ckpt
from studio.runs.folder import RunFolder
from studio.train import pivotal, runtime, sdxl, state
from studio.train.caches import Caches
from studio.train.callbacks import EventCallbacks, Fanout, StopFlag, TrainCallbacks
from studio.train.data import ensure_class_images, training_data
from studio.train.errors import TrainingError, describe_failure
from studio.train.loss import training_loss
from studio.train.optimizers import build_optimizer, param_groups
from studio.train.sampling import sample, validation_prompts

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    status: str  # finished | cancelled | failed
    step: int
    message: str
    run_dir: Path
    loss_history: list[float] = field(default_factory=list)


@dataclass
class _Plan:
    """The step plan, fixed once the loader is prepared."""

    total: int
    steps_per_epoch: int
    num_epochs: int
    trained: list[Any]  # the trained models, as added (gradient accumulation, clipping)
    params_to_clip: list[Any]


class Trainer:
    def __init__(self, config: TrainConfig, callbacks: TrainCallbacks | None = None,
                 stop: StopFlag | None = None, resume: str | None = None):
        if not config.output_dir:
            raise ConfigError("output_dir: no run folder was given (--out RUN_DIR).")
        self.cfg = config
        self.folder = RunFolder(config.output_dir)
        self.run_dir = self.folder.path
        self.stop = stop
        self.resume = resume
        self.user_callbacks = callbacks
        self.loss_history: list[float] = []
        self.global_step = 0
        self.wall_time_before = 0.0

    # -- setup --------------------------------------------------------------------------------
    def _warn(self, message: str) -> None:
        self.cb.on_log("warning", message)

    def _load_models(self) -> sdxl.SDXLModels:
        return sdxl.load_models(self.cfg.model, self.acc.device, self.weight_dtype)

    def _sampling_scheduler(self):
        return sdxl.sampling_scheduler(self.m.base, self.m.noise_scheduler)

    def _pipeline(self):
        unwrap = self.acc.unwrap_model
        return sdxl.build_pipeline(unwrap(self.m.unet), [unwrap(te) for te in self.m.text_encoders],
                                   self.m.vae, self.m.tokenizers, self._sampling_scheduler,
                                   self.acc.device)

    def _lora_modules(self) -> dict[str, Any]:
        """The trained models by LoRA name, unwrapped."""
        unwrap = self.acc.unwrap_model
        modules = {"unet": unwrap(self.m.unet)}
        if self.cfg.lora.train_text_encoder:
            modules.update({name: unwrap(te) for name, te in
                            zip(sdxl.TEXT_ENCODER_NAMES, self.m.text_encoders, strict=True)})
        return modules

    def _ensure_class_images(self, folder: Path, prompt: str) -> None:
        """Generate the missing class images with the plain base (no LoRA layers yet)."""
        d = self.cfg.data
        if self.main:
            ensure_class_images(folder, d.num_class_images, prompt, self._pipeline, d.resolution,
                                self.cfg.validation.steps, self.cfg.train.seed,
                                str(self.acc.device), log_fn=lambda m: self.cb.on_log("info", m))
        self.acc.wait_for_everyone()

    def _build(self) -> list[Any]:
        """Models, data, LoRA layers, optimizer and caches; returns the trained models."""
        cfg = self.cfg
        self.m = self._load_models()
        data = training_data(cfg, self.folder.class_images_dir, self._ensure_class_images)
        self.ds, self.instance_prompt = data.source, data.instance_prompt
        self.dataset, self.sampler, self.loader = data.dataset, data.sampler, data.loader
        self.pivotal = self.m.pivotal = pivotal.setup(self.m, cfg, self.ds.trigger)
        trained = sdxl.add_lora(self.m, cfg.lora, cfg.train.gradient_checkpointing,
                                self.weight_dtype)
        groups = param_groups(self.m.unet, self.m.text_encoders, cfg)
        self.lora_bytes = sum(p.numel() * 4 for g in groups for p in g["params"])
        self.optimizer = build_optimizer(groups, cfg.train, self._warnings.append)
        v = cfg.validation
        self.caches = Caches(self.m, self.acc.device, cfg.lora.train_text_encoder,
                             keep_vae=bool(v.every_n_steps or v.every_n_epochs))
        self._warnings += self.caches.fill(cfg, self.dataset)
        return trained

    def _schedule(self, trained: list[Any]) -> _Plan:
        """The LR schedule and the step plan; hands the models, optimizer and loader to
        accelerate."""
        from diffusers.optimization import get_scheduler

        t = self.cfg.train
        n_proc = self.acc.num_processes
        steps_per_epoch = max(1, math.ceil(len(self.loader) / max(1, n_proc) /
                                           t.gradient_accumulation_steps))
        total = t.max_train_steps or t.num_train_epochs * steps_per_epoch
        self.lr_scheduler = get_scheduler(
            t.lr_scheduler, optimizer=self.optimizer, num_warmup_steps=t.lr_warmup_steps * n_proc,
            num_training_steps=total * n_proc, num_cycles=t.lr_num_cycles, power=t.lr_power)
        prepared = self.acc.prepare(*trained, self.optimizer, self.loader, self.lr_scheduler)
        self.m.unet = runtime.compiled(prepared[0], self.cfg)
        if len(trained) > 1:  # the text encoders train (their LoRA or new token rows)
            self.m.text_encoders = list(prepared[1:3])
        self.optimizer, self.loader, self.lr_scheduler = prepared[-3:]
        # Step counts depend on the sharded loader.
        steps_per_epoch = max(1, math.ceil(len(self.loader) / t.gradient_accumulation_steps))
        return _Plan(total, steps_per_epoch, math.ceil(total / steps_per_epoch), trained,
                     [p for m in trained for p in m.parameters() if p.requires_grad])

    # -- the run ------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        self.t_start = time.time()
        self.acc, self.weight_dtype, self._warnings = runtime.make_accelerator(self.cfg, self.folder)
        self.main = self.acc.is_main_process
        cbs: list[TrainCallbacks] = []
        if self.main:
            cbs.append(EventCallbacks(self.folder.event_writer(enabled=True)))
            if self.user_callbacks is not None:
                cbs.append(self.user_callbacks)
        self.cb = Fanout(cbs)
        try:
            return self._run()
        except BaseException as exc:
            status, msg, err = describe_failure(exc, self.global_step)
            self.cb.on_end({"status": status, "step": self.global_step, "message": msg})
            runtime.end_trackers(self.acc, self.cfg)
            if isinstance(err, TrainingError):
                raise err from None
            raise

    def _run(self) -> TrainResult:
        from accelerate.utils import set_seed

        resume_path = self._open_run_folder()
        set_seed(self.cfg.train.seed)
        plan = self._schedule(self._build())
        LikenessHook.attach(self)  # scores validations and checkpoints (studio.identity)
        start_step = self._begin(plan, resume_path)
        stopped, epoch = self._train_epochs(plan, start_step)
        return self._end(stopped, epoch, start_step)

    def _open_run_folder(self) -> Path | None:
        """Check the folder against ``resume``, clean it up and save the config; returns the
        checkpoint to resume from."""
        f = self.folder
        if self.main:
            f.path.mkdir(parents=True, exist_ok=True)
        resume_path = None
        if self.resume:
            resume_path = ckpt.resolve_resume(f.path, self.resume, self._warn if self.main else None)
        elif f.checkpoints():
            raise ckpt.CheckpointError(f"The run folder {f.path} already holds checkpoints; "
                                       "use --resume latest or another --out.")
        if self.main:
            ckpt.clean_partial(f.path)
            if not self.resume and f.events_path.exists():  # a fresh start without checkpoints
                os.replace(f.events_path, f.path / f"events-{int(time.time())}.jsonl.old")
            f.save_config(self.cfg)
        return resume_path

    def _begin(self, plan: _Plan, resume_path: Path | None) -> int:
        """Restore a checkpoint, start trackers and report the start; returns the first step."""
        cfg = self.cfg
        if resume_path is not None:
            self._load_checkpoint(resume_path)
            self.cb.on_log("info", f"Resumed from {resume_path.name} at step {self.global_step}.")
        resumed_rel = f"{RunFolder.CHECKPOINTS}/{resume_path.name}" if resume_path else None
        runtime.start_trackers(self.acc, cfg)
        self.cb.on_start({"step": self.global_step, "total_steps": plan.total,
                          "resumed_from": resumed_rel})
        for w in self._warnings:
            self.cb.on_log("warning", w)
        if self.acc.num_processes > 1:
            self.cb.on_log("info", f"Distributed training: num_processes={self.acc.num_processes} "
                                   f"({self.acc.distributed_type}).")
        self.m.unet.train()
        if cfg.lora.train_text_encoder:
            for te in self.m.text_encoders:
                te.train()
        return self.global_step

    def _train_epochs(self, plan: _Plan, start_step: int) -> tuple[bool, int]:
        """Train up to ``plan.total`` steps; returns (stopped by request, last epoch)."""
        first_epoch = self.global_step // plan.steps_per_epoch
        skip_batches = ((self.global_step % plan.steps_per_epoch) *
                        self.cfg.train.gradient_accumulation_steps)
        self._t_loop = time.time()
        self._accum_losses: list[float] = []
        epoch = first_epoch
        if self.global_step >= plan.total:  # resumed from the final checkpoint
            return False, epoch
        for epoch in range(first_epoch, plan.num_epochs):
            if hasattr(self.loader, "set_epoch"):
                self.loader.set_epoch(epoch)
            self.sampler.set_epoch(epoch)
            batches = self.loader
            if epoch == first_epoch and skip_batches:
                batches = self.acc.skip_first_batches(self.loader, skip_batches)
            ended = self._train_epoch(batches, epoch, plan, start_step)
            if ended is not None or self.global_step >= plan.total:
                return ended == "stopped", epoch
            v = self.cfg.validation
            if v.every_n_epochs and (epoch + 1) % v.every_n_epochs == 0:
                self._sample(self.global_step)
        return False, epoch

    def _train_epoch(self, batches, epoch: int, plan: _Plan, start_step: int) -> str | None:
        """One pass over ``batches``: "stopped" by request, "done" at the last step, else None."""
        cfg = self.cfg
        for batch in batches:
            if runtime.any_process(self.acc, self.stop is not None and self.stop.is_set()):
                return "stopped"
            self._optimize(batch, plan)
            if not self.acc.sync_gradients:
                continue
            self._record_step(epoch, plan, start_step)
            if self.global_step >= plan.total:
                return "done"
            if self.global_step % cfg.checkpoints.every_n_steps == 0:
                self._save_checkpoint(epoch)
                self.acc.wait_for_everyone()
            v = cfg.validation
            if v.every_n_steps and self.global_step % v.every_n_steps == 0:
                self._sample(self.global_step)
        return None

    def _optimize(self, batch, plan: _Plan) -> None:
        """Forward, backward and (on a synced micro-batch) clip; the optimizer steps every time
        (accelerate skips the accumulating ones)."""
        import torch

        pivotal.before_step(self.pivotal, self.global_step, plan.total)
        with self.acc.accumulate(*plan.trained):
            loss = training_loss(batch, self.m, self.caches, self.cfg, self.acc.device,
                                 self.weight_dtype)
            if not torch.isfinite(loss):
                raise TrainingError(
                    f"The loss became {loss.item()} at step {self.global_step + 1}; training "
                    "stopped (the last good checkpoint is kept). Lower train.learning_rate or "
                    "use train.mixed_precision=bf16/no.")
            self._accum_losses.append(loss.detach().float().item())
            self.acc.backward(loss)
            if self.acc.sync_gradients:
                self.acc.clip_grad_norm_(plan.params_to_clip, self.cfg.train.max_grad_norm)
            self.optimizer.step()
            self.lr_scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)

    def _record_step(self, epoch: int, plan: _Plan, start_step: int) -> None:
        import torch

        self.global_step += 1
        step_loss = float(sum(self._accum_losses) / len(self._accum_losses))
        self._accum_losses = []
        step_loss = runtime.mean_over_processes(self.acc, step_loss)
        self.loss_history.append(step_loss)
        sps = (self.global_step - start_step) / max(1e-9, time.time() - self._t_loop)
        mem = (torch.cuda.max_memory_allocated() / 2**30) if torch.cuda.is_available() else 0.0
        info = {"step": self.global_step, "total_steps": plan.total, "loss": step_loss,
                "lr": float(self.lr_scheduler.get_last_lr()[0]), "epoch": epoch,
                "steps_per_s": round(sps, 4),
                "eta_s": round((plan.total - self.global_step) / sps, 1) if sps > 0 else 0.0,
                "mem_gb": round(mem, 3)}
        self.cb.on_step(info)
        if runtime.tracking(self.cfg):
            self.acc.log({"loss": step_loss, "lr": info["lr"]}, step=self.global_step)

    def _end(self, stopped: bool, epoch: int, start_step: int) -> TrainResult:
        if stopped:
            status = "cancelled"
            saved = self.main and any(c.step == self.global_step for c in self.folder.checkpoints())
            if self.global_step > start_step and not saved:
                self._save_checkpoint(epoch)
            message = f"Stopped at step {self.global_step} by request; resume with --resume latest."
        else:
            status, message = "finished", "Training finished."
            if self.global_step > start_step:  # else resumed from the final checkpoint
                self._save_checkpoint(epoch)
            self.acc.wait_for_everyone()
            self._finish()
        self.acc.wait_for_everyone()
        self.cb.on_end({"status": status, "step": self.global_step, "message": message})
        runtime.end_trackers(self.acc, self.cfg)
        return TrainResult(status, self.global_step, message, self.run_dir, list(self.loss_history))

    # -- checkpoints, samples, the final LoRA --------------------------------------------------
    def _wall_time(self) -> float:
        return self.wall_time_before + (time.time() - self.t_start)

    def _save_checkpoint(self, epoch: int) -> Path | None:
        if not self.main:
            return None
        modules = self._lora_modules()

        def make_state() -> dict[str, Any]:
            return state.training_state(
                step=self.global_step, epoch=epoch, loss_history=self.loss_history,
                modules=modules, optimizer=self.optimizer, lr_scheduler=self.lr_scheduler,
                scaler=self.acc.scaler, wall_time=self._wall_time(), cfg=self.cfg, pivotal=self.pivotal)

        path = state.save_checkpoint(self.folder, self.cfg, self.global_step, modules, make_state,
                                     self.lora_bytes, self._warn, self.pivotal)
        self.cb.on_checkpoint({"step": self.global_step,
                               "path": f"{RunFolder.CHECKPOINTS}/{path.name}"})
        return path

    def _load_checkpoint(self, path: Path) -> None:
        st = state.load_checkpoint(path, self._lora_modules(), self.optimizer, self.lr_scheduler,
                                   self.acc.scaler, self.pivotal)
        self.global_step = int(st["step"])
        self.loss_history = list(st["loss_history"])
        self.wall_time_before = float(st.get("wall_time", 0.0))

    def _sample(self, step: int) -> list[dict[str, Any]]:
        if not self.main:
            return []
        unwrap = self.acc.unwrap_model
        models = [unwrap(self.m.unet), *(unwrap(te) for te in self.m.text_encoders)]
        results = sample(models, self._pipeline, self.folder, step,
                         validation_prompts(self.cfg, self.instance_prompt), self.cfg,
                         self.acc.autocast, self.cb.on_sample, pivotal.mapper(self.pivotal))
        self.caches.offload()
        return results

    def _finish(self) -> None:
        """Final LoRA (every export format), samples, model card and manifest (main process); a
        full disk is one sentence naming the intact checkpoints."""
        if self.main:
            with ckpt.disk_full_guard(self.run_dir, "the final LoRA"):
                self._write_final()

    def _write_final(self) -> None:
        from studio.runs.card import write_model_card
        from studio.runs.manifest import write_manifest

        state.write_lora(self.run_dir, self._lora_modules(), self.cfg.lora.lora_alpha, self._warn,
                         between=lambda: state.test_pause("in the final export", self.cb.on_log),
                         pivotal=self.pivotal)
        samples: list[dict[str, Any]] = []
        if self.cfg.validation.at_end:
            state.test_pause("in the end-of-run sampling", self.cb.on_log)
            samples = self._sample(self.global_step)
        manifest = write_manifest(self.run_dir, self.cfg, self.ds, base=self.m.base,
                                  vae=self.m.vae_src, instance_prompt=self.instance_prompt,
                                  steps=self.global_step, wall_time=self._wall_time(),
                                  loss_history=self.loss_history)
        for name, check in manifest["lora_check"].items():  # the loader self-test
            check["ok"] or self._warn(f"{name} fails the loader check: {check['summary']}")
        write_model_card(self.run_dir, self.cfg, manifest, samples)


def train(config: TrainConfig, callbacks: TrainCallbacks | None = None, stop: StopFlag | None = None,
          resume: str | None = None) -> TrainResult:
    """Run one training job into ``config.output_dir`` (see the module docs).

    Returns a TrainResult with status "finished" or "cancelled" (stop requested; a checkpoint was
    saved). On failure an "error" and an "end" event are written and the exception is re-raised
    (with a one-line message for user errors, :class:`studio.errors.StudioError`).
    """
    return Trainer(config, callbacks, stop, resume).run()
