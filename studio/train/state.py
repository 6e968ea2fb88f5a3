"""The training state a checkpoint carries, and saving and restoring it.

A checkpoint (written atomically by :mod:`studio.runs.checkpoints`) holds the LoRA in every
export format (:mod:`studio.lora.formats`: the diffusers file, the Kohya file with its SDXL
metadata) and ``training_state.pt``: the LoRA in peft format, optimizer, LR scheduler, the fp16
gradient scaler (its loss scale and growth tracker), RNG states (python, numpy, torch, cuda),
step, epoch, loss history, wall time and the config.
Resuming restores all of it, so a resumed run draws the same random numbers as an unbroken one.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from studio.config import TrainConfig
from studio.errors import first_line
from studio.lora.formats import write_exports
from studio.runs import checkpoints as ckpt
from studio.runs.folder import RunFolder
from studio.train.sdxl import lora_state_dicts, save_lora

log = logging.getLogger(__name__)

# Test hook (kill -9 tests): seconds to pause inside the final export (after the diffusers file)
# and before the end-of-run samples, each announced by a log event.
FINISH_DELAY_ENV = "STUDIO_TEST_FINISH_DELAY"


def test_pause(where: str, on_log: Callable[[str, str], None]) -> None:
    delay = float(os.environ.get(FINISH_DELAY_ENV) or 0)
    if delay > 0:
        on_log("info", f"test hook: pausing {delay:g} s {where}.")
        time.sleep(delay)


def rng_state() -> dict[str, Any]:
    import numpy as np
    import torch

    st = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict[str, Any]) -> None:
    import numpy as np
    import torch

    random.setstate(st["python"])
    np.random.set_state(st["numpy"])
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def write_lora(folder: Path, modules: dict[str, Any], lora_alpha: float,
               warn: Callable[[str], None], what: str = "",
               between: Callable[[], None] | None = None, pivotal: Any = None) -> Path:
    """The LoRA of ``modules`` (unwrapped trained models by name) in every export format into
    ``folder`` (``between``: called after the diffusers file), with the new tokens' embeddings
    when ``pivotal`` (:class:`studio.train.pivotal.Pivotal`) is given. A failed export is a
    warning (the diffusers file is what loading and resuming need), a full disk an error."""
    path = save_lora(folder, modules)
    if pivotal is not None:
        pivotal.save(folder / RunFolder.EMBEDDINGS)
    if between is not None:
        between()
    try:
        write_exports(folder, lora_alpha)
    except Exception as exc:
        if ckpt.is_disk_full(exc):
            raise
        warn(f"The Kohya/A1111 export{what} failed: {first_line(exc, limit=300)}.")
    return path


def check_lora(folder: Path, base: str | None, warn: Callable[[str], None], what: str) -> None:
    """The loader self-test (:mod:`studio.lora.verify`) of the LoRA files in ``folder``; a file
    that ComfyUI, A1111 or diffusers would not load whole is a warning."""
    from studio.lora.formats import export_files
    from studio.lora.verify import check_files
    from studio.models import model_source
    from studio.runs.folder import companion_files

    files = {**export_files(folder), **companion_files(folder)}
    for name, check in check_files(files, model_source("base", base)).items():
        if not check["ok"]:
            warn(f"{name} of {what} fails the loader check: {check['summary']}")


def training_state(*, step: int, epoch: int, loss_history: list[float], modules: dict[str, Any],
                   optimizer, lr_scheduler, scaler, wall_time: float,
                   cfg: TrainConfig, pivotal: Any = None) -> dict[str, Any]:
    """What ``training_state.pt`` holds (the RNG states as they are now); ``scaler``: the
    accelerator's GradScaler (fp16), else None; ``pivotal``: the new tokens' rows."""
    return {
        "embeddings": pivotal.state() if pivotal is not None else None,
        "step": step, "epoch": epoch, "loss_history": list(loss_history),
        "lora": {k: {n: t.detach().cpu() for n, t in v.items()}
                 for k, v in lora_state_dicts(modules).items()},
        "optimizer": optimizer.state_dict(), "scheduler": lr_scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": rng_state(), "wall_time": wall_time,
        "config": cfg.model_dump(mode="json"),
    }


def save_checkpoint(run: RunFolder, cfg: TrainConfig, step: int, modules: dict[str, Any],
                    make_state: Callable[[], dict[str, Any]], lora_bytes: int,
                    warn: Callable[[str], None], pivotal: Any = None) -> Path:
    """Write ``checkpoints/checkpoint-<step>/`` (pruning beyond ``checkpoints.total_limit``);
    ``lora_bytes``: the LoRA parameters' size, for the free-disk check."""
    import torch

    def write(tmp: Path) -> None:
        write_lora(tmp, modules, cfg.lora.lora_alpha, warn, f" of {ckpt.checkpoint_name(step)}",
                   pivotal=pivotal)
        check_lora(tmp, cfg.model.base, warn, ckpt.checkpoint_name(step))
        torch.save(make_state(), tmp / ckpt.STATE_FILE)

    # LoRA files (diffusers + Kohya), peft state, Adam's two moments: about 5x the parameters.
    need = int(lora_bytes * 5 + cfg.checkpoints.min_free_mb * 2**20)
    return ckpt.save_checkpoint(run.path, step, write, cfg.checkpoints.total_limit, need)


def load_checkpoint(path: Path, modules: dict[str, Any], optimizer, lr_scheduler,
                    scaler=None, pivotal: Any = None) -> dict[str, Any]:
    """Restore the LoRA of ``modules``, the new tokens' rows (``pivotal``), the optimizer, the LR
    scheduler, the GradScaler (fp16) and the RNG states from the checkpoint folder ``path``;
    returns its training state (step, loss history, ...)."""
    import torch
    from peft.utils import set_peft_model_state_dict

    state = torch.load(path / ckpt.STATE_FILE, map_location="cpu", weights_only=False)
    for name, mod in modules.items():
        if name not in state["lora"]:
            raise ckpt.CheckpointError(f"Cannot resume from {path.name}: it has no text encoder "
                                       "LoRA but lora.train_text_encoder is on.")
        set_peft_model_state_dict(mod, state["lora"][name])
    if pivotal is not None:
        if not state.get("embeddings"):
            raise ckpt.CheckpointError(f"Cannot resume from {path.name}: it has no token "
                                       "embeddings but lora.train_text_embeddings is on.")
        pivotal.load_state(state["embeddings"])
    optimizer.load_state_dict(state["optimizer"])
    lr_scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state.get("scaler"):  # a checkpoint of an fp16 run
        scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])
    return state
