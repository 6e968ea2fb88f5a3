"""``python -m studio <command>``: the same core the UI calls.

Each command prints one clear sentence on a user error and exits non-zero; ``--debug`` shows
the traceback as well.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

from studio.errors import StudioError, first_line

log = logging.getLogger("studio")

# ---- tiny-models ------------------------------------------------------------------------------
def _add_tiny(sub) -> None:
    p = sub.add_parser("tiny-models", help="write tiny random-weight models (tests, demo mode)")
    p.add_argument("out", type=Path, help="folder to write base/, refiner/ and blip/ into")
    p.add_argument("--force", action="store_true", help="rebuild even if present")
    p.set_defaults(func=_cmd_tiny)


def _cmd_tiny(args) -> int:
    from studio.tiny import build_tiny_models

    paths = build_tiny_models(args.out, force=args.force)
    for k, v in paths.items():
        print(f"{k}: {v}")
    return 0


# ---- generate ---------------------------------------------------------------------------------
def _add_generate(sub) -> None:
    from studio.generate.schedulers import DEFAULT_SCHEDULER, SCHEDULERS

    p = sub.add_parser("generate", help="generate images (base + optional LoRA and refiner)")
    p.add_argument("--base", help="SDXL base: Hub id or local folder (env STUDIO_BASE_MODEL)")
    p.add_argument("--vae", help="VAE: Hub id, folder, or 'base' for the base's own VAE")
    p.add_argument("--prompt", required=True)
    p.add_argument("--negative", default="", help="negative prompt")
    p.add_argument("--out", type=Path, required=True, help="folder for the PNGs")
    p.add_argument("--seed", type=int, default=-1, help="-1 for random")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--guidance", type=float, default=6.0)
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--height", type=int, default=1024)
    p.add_argument("--num-images", type=int, default=1)
    p.add_argument("--scheduler", default=DEFAULT_SCHEDULER, choices=list(SCHEDULERS))
    p.add_argument("--lora", help="LoRA file/folder or Hub id (owner/name[:file.safetensors])")
    p.add_argument("--lora-scale", type=float, default=1.0)
    p.add_argument("--refiner", nargs="?", const="", default=None,
                   help="use the refiner (optionally a Hub id or folder; env STUDIO_REFINER_MODEL)")
    p.add_argument("--refiner-switch", type=float, default=0.8,
                   help="fraction of denoising done by the base before the refiner takes over")
    p.set_defaults(func=_cmd_generate)


def _cmd_generate(args) -> int:
    from studio.generate.engine import GenerationRequest, Generator
    from studio.generate.gallery import Gallery

    gen = Generator(base=args.base, refiner=args.refiner or None, vae=args.vae)
    req = GenerationRequest(
        prompt=args.prompt, negative_prompt=args.negative, seed=args.seed, steps=args.steps,
        guidance=args.guidance, width=args.width, height=args.height,
        num_images=args.num_images, scheduler=args.scheduler, lora=args.lora,
        lora_scale=args.lora_scale, refiner=args.refiner is not None,
        refiner_switch=args.refiner_switch)
    req.validate()
    gallery = Gallery(args.out)
    results = gen.generate(req, progress=_progress_printer())
    for r in results:
        path = gallery.add(r.image, r.params)
        print(f"{path}  seed={r.params['seed']}")
    return 0


def _progress_printer() -> Callable[[int, int, int, int], None]:
    def show(i: int, n: int, step: int, steps: int) -> None:
        if sys.stderr.isatty():
            end = "\n" if step == steps else ""
            print(f"\rimage {i + 1}/{n}  step {step}/{steps}", end=end, file=sys.stderr,
                  flush=True)
    return show


# ---- registry of commands ---------------------------------------------------------------------
# Functions adding a subcommand to the parser; order is the help order.
COMMANDS: list[Callable] = [_add_tiny, _add_generate]


def _load_feature_commands() -> None:
    """Import feature CLIs that register themselves (kept out of import time of this module)."""
    for mod in _FEATURE_MODULES:
        try:
            m = __import__(mod, fromlist=["add_cli"])
        except ImportError as exc:  # pragma: no cover - a broken install
            log.debug("feature %s unavailable: %s", mod, exc)
            continue
        if hasattr(m, "add_cli") and m.add_cli not in COMMANDS:
            COMMANDS.append(m.add_cli)


# Modules providing ``add_cli(subparsers)``.
_FEATURE_MODULES: list[str] = ["studio.dataset.cli", "studio.train.cli", "studio.jobs.cli",
                               "studio.share.hub", "studio.api.keys"]


def build_parser() -> argparse.ArgumentParser:
    _load_feature_commands()
    parser = argparse.ArgumentParser(prog="python -m studio",
                                     description="SDXL LoRA Studio command line")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not args.debug:
        from studio.models import quiet_libraries

        quiet_libraries()
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        return 130
    except StudioError as exc:  # one sentence for the user; --debug adds the traceback
        if args.debug:
            traceback.print_exc()
        print(f"error: {first_line(exc)}", file=sys.stderr)
        return 2
