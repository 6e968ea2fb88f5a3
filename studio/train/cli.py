"""``python -m studio train``: the command-line entry of the trainer (also under
``accelerate launch -m studio train ...``).

Exit codes: 0 finished; 3 stopped by SIGTERM/SIGINT after saving a checkpoint (end event status
"cancelled"); 2 a user error (bad setting, dataset, checkpoint, model, diverged loss, GPU out of
memory); 1 an unexpected failure. On every failure the one-line cause is printed on stderr as
``error: <cause>`` and written as an "error" event (then an "end" event with status "failed").
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import traceback
from pathlib import Path

from studio.config import ConfigError
from studio.errors import StudioError, first_line
from studio.train.callbacks import TrainCallbacks

log = logging.getLogger(__name__)

EXIT_CANCELLED = 3


def add_cli(sub) -> None:
    p = sub.add_parser("train", help="train an SDXL DreamBooth LoRA into a run folder")
    p.add_argument("--dataset", help="dataset folder (prepared DATASET/, imagefolder, images+.txt) "
                   "or Hub dataset id")
    p.add_argument("--out", help="run folder (created); holds config.yaml, events.jsonl, "
                   "checkpoints/, samples/ and the final LoRA")
    p.add_argument("--preset", help="preset name (presets/NAME.yaml, or one saved in "
                   "STUDIO_HOME/presets from the Train tab) or YAML path")
    p.add_argument("--config", help="full or partial config YAML (e.g. RUN/config.yaml)")
    p.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[],
                   metavar="KEY=VALUE",
                   help="dotted overrides, e.g. --set train.learning_rate=2e-4 lora.rank=8 "
                        "(repeatable)")
    p.add_argument("--base", help="SDXL base model: Hub id, local folder or single .safetensors "
                   "file (original layout)")
    p.add_argument("--resume", help="'latest' or a checkpoint folder to continue from")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.add_argument("--check", action="store_true", help="only print the memory pre-flight "
                   "(estimated peak GPU memory and whether it fits; STUDIO_VRAM_GB sets the GPU's "
                   "memory) and exit: 0 fits, 2 does not")
    p.set_defaults(func=cmd_train)


class ProgressBar(TrainCallbacks):
    """A tqdm bar on stderr."""

    def __init__(self):
        self.bar = None

    def on_start(self, info):
        from tqdm import tqdm

        self.bar = tqdm(total=info["total_steps"], initial=info["step"], desc="train", unit="step",
                        file=sys.stderr, dynamic_ncols=True)

    def on_step(self, info):
        if self.bar is not None:
            self.bar.update(info["step"] - self.bar.n)
            self.bar.set_postfix(loss=f"{info['loss']:.4f}", lr=f"{info['lr']:.2e}")

    def on_log(self, level, message):
        (self.bar.write if self.bar is not None else print)(f"{level}: {message}", file=sys.stderr)

    def on_end(self, info):
        if self.bar is not None:
            self.bar.close()


class StderrWarnings(TrainCallbacks):
    """Without the bar (--no-progress): warnings still reach stderr, one line each."""

    def on_log(self, level, message):
        if level != "info":
            print(f"{level}: {message}", file=sys.stderr, flush=True)


def _resolve_local(path: str | None) -> str | None:
    if path and Path(path).expanduser().exists():
        return str(Path(path).expanduser().resolve())
    return path


def _write_failure(out: str | None, message: str) -> None:
    """Record a failure that happened before the trainer started (no events yet)."""
    if not out:
        return
    try:
        from studio.runs.folder import RunFolder

        w = RunFolder(out).event_writer()
        w.error(message)
        w.end("failed", 0, message)
    except OSError:
        pass


def _check(cfg) -> int:
    """``--check``: the pre-flight's estimate and verdict; 0 when it fits, 2 when it does not."""
    from studio.train import preflight

    est = preflight.estimate(cfg)
    print(est.summary())
    for name, gib in est.parts.items():
        print(f"  training: {name} {gib:.2f} GiB")
    print(f"  model sizes from {est.sizes_source}")
    preflight.check(cfg, (est.vram_gib, est.vram_source))  # raises when it does not fit
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from studio.config import load_config
    from studio.train.loop import Trainer

    overrides = list(args.overrides)
    if args.dataset:
        overrides.append(f"data.dataset={_resolve_local(args.dataset)}")
    if args.out:
        overrides.append(f"output_dir={Path(args.out).expanduser().resolve()}")
    if args.base:
        overrides.append(f"model.base={_resolve_local(args.base)}")
    stop = threading.Event()
    started = False
    try:
        cfg = load_config(args.preset, args.config, overrides)
        if args.check:
            return _check(cfg)
        if not cfg.output_dir:
            raise ConfigError("output_dir: give the run folder with --out RUN_DIR.")
        if not cfg.data.dataset:
            raise ConfigError("data.dataset: give the dataset with --dataset DATASET_DIR.")

        def on_signal(signum, frame):
            if stop.is_set():
                raise KeyboardInterrupt
            print(f"\nReceived {signal.Signals(signum).name}: saving a checkpoint and stopping.",
                  file=sys.stderr, flush=True)
            stop.set()

        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, on_signal)
            signal.signal(signal.SIGINT, on_signal)
        callbacks = StderrWarnings() if args.no_progress else ProgressBar()
        started = True
        result = Trainer(cfg, callbacks, stop, resume=args.resume).run()
    except StudioError as exc:  # a user error: exit 2, with or without --debug
        msg = first_line(exc)
        if not started and not args.check:
            _write_failure(args.out, msg)
        if getattr(args, "debug", False):
            traceback.print_exc()
        print(f"error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: Interrupted.", file=sys.stderr)
        return 130
    except Exception as exc:
        lines = str(exc).strip().splitlines()
        msg = f"{type(exc).__name__}: {lines[0] if lines else ''}".strip()
        if not started:
            _write_failure(args.out, msg)
        print(f"error: {msg}", file=sys.stderr)
        if getattr(args, "debug", False):
            raise
        log.debug("training failed", exc_info=True)
        return 1
    print(f"{result.status}: {result.message} Run folder: {result.run_dir}", file=sys.stderr)
    return 0 if result.status == "finished" else EXIT_CANCELLED
