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
# The request's numeric options: (field of GenerationRequest, what it means); ranges and defaults
# come from studio.generate.request.LIMITS.
_GENERATE_NUMBERS = [
    ("seed", "seed of the first image; image i uses seed + i"),
    ("steps", "denoising steps"),
    ("guidance", "classifier-free guidance scale"),
    ("width", "image width in pixels"),
    ("height", "image height in pixels"),
    ("num_images", "number of images"),
    ("lora_scale", "weight of the LoRA"),
    ("refiner_switch", "fraction of denoising done by the base before the refiner takes over"),
]


def add_limit_argument(p: argparse.ArgumentParser, name: str, what: str) -> None:
    """``--name`` with the type, default and range of ``LIMITS[name]``."""
    from studio.generate.request import LIMITS

    lim = LIMITS[name]
    default = lim.kind(lim.default)
    text = f"{what}: {lim.describe()}, default {default}" + (f" ({lim.hint})" if lim.hint else "")
    p.add_argument("--" + name.replace("_", "-"), type=lim.kind, default=default,
                   help=text.replace("%", "%%"))


def _add_generate(sub) -> None:
    from studio.generate.schedulers import DEFAULT_SCHEDULER, SCHEDULERS

    p = sub.add_parser("generate", help="generate images (base + optional LoRA and refiner)")
    p.add_argument("--base", help="SDXL base: Hub id, local folder or single .safetensors file "
                   "(env STUDIO_BASE_MODEL)")
    p.add_argument("--vae", help="VAE: Hub id, folder, or 'base' for the base's own VAE")
    p.add_argument("--prompt", required=True)
    p.add_argument("--negative", default="", help="negative prompt")
    p.add_argument("--out", type=Path, required=True, help="folder for the PNGs")
    for name, what in _GENERATE_NUMBERS:
        add_limit_argument(p, name, what)
    p.add_argument("--scheduler", default=DEFAULT_SCHEDULER, choices=list(SCHEDULERS))
    p.add_argument("--lora", help="LoRA: a run's name, a file/folder or a Hub id "
                                  "(owner/name[:file.safetensors])")
    p.add_argument("--refiner", nargs="?", const="", default=None,
                   help="use the refiner (optionally a Hub id or folder; env STUDIO_REFINER_MODEL)")
    p.set_defaults(func=_cmd_generate)


def _cmd_generate(args) -> int:
    from studio.generate.gallery import Gallery
    from studio.generate.request import GenerationRequest
    from studio.generate.service import GenerationService
    from studio.lora.refs import is_run_name, resolve_lora
    from studio.workspace import Workspace

    lora = args.lora
    if lora and is_run_name(lora.strip()) and not Path(lora.strip()).exists():
        lora = resolve_lora(lora, Workspace())  # a run of the workspace (STUDIO_HOME), by name
    req = GenerationRequest(
        prompt=args.prompt, negative_prompt=args.negative, seed=args.seed, steps=args.steps,
        guidance=args.guidance, width=args.width, height=args.height,
        num_images=args.num_images, scheduler=args.scheduler, lora=lora,
        lora_scale=args.lora_scale, refiner=args.refiner is not None,
        refiner_switch=args.refiner_switch)
    req.validate()
    service = GenerationService(base=args.base, refiner=args.refiner or None, vae=args.vae)
    gallery = Gallery(args.out)
    results = service.generate(req, progress=_progress_printer())
    for note in dict.fromkeys(w for r in results for w in r.warnings):
        print(f"warning: {note}", file=sys.stderr)
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
                               "studio.share.hub", "studio.api.keys", "studio.identity.cli",
                               "studio.lora.verify"]


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
