"""SDXL LoRA Studio: the web app. Also the Hugging Face Spaces entry point (app_file: app.py).

    python app.py [--host 127.0.0.1] [--port 7860] [--demo] [--base ID_OR_DIR] ...
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

log = logging.getLogger("studio.app")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="SDXL LoRA Studio web app")
    p.add_argument("--host", default=os.environ.get("STUDIO_HOST", "127.0.0.1"),
                   help="address to listen on (default 127.0.0.1, local only)")
    p.add_argument("--port", type=int, default=int(os.environ.get("STUDIO_PORT",
                                                                   os.environ.get("PORT", 7860))))
    p.add_argument("--demo", action="store_true",
                   help="run on tiny random models (built on first use): CPU, seconds, noise images")
    p.add_argument("--home", help="workspace folder (env STUDIO_HOME)")
    p.add_argument("--base", help="SDXL base model: Hub id or folder (env STUDIO_BASE_MODEL)")
    p.add_argument("--refiner", help="SDXL refiner: Hub id or folder (env STUDIO_REFINER_MODEL)")
    p.add_argument("--captioner", help="BLIP captioner: Hub id or folder (env STUDIO_CAPTION_MODEL)")
    p.add_argument("--vae", help="VAE: Hub id, folder, or 'base' (env STUDIO_VAE_MODEL)")
    p.add_argument("--debug", action="store_true")
    return p.parse_args(argv)


def make_context(args: argparse.Namespace):
    from studio.models import model_source
    from studio.ui.context import AppContext
    from studio.workspace import Workspace

    if args.home:
        os.environ["STUDIO_HOME"] = args.home
    ws = Workspace()
    base, refiner, captioner = args.base, args.refiner, args.captioner
    if args.demo:
        from studio.tiny import build_tiny_models

        paths = build_tiny_models(ws.models_dir / "tiny")
        base = base or str(paths["base"])
        refiner = refiner or str(paths["refiner"])
        captioner = captioner or str(paths["captioner"])
    for var, val in (("STUDIO_BASE_MODEL", base), ("STUDIO_REFINER_MODEL", refiner),
                     ("STUDIO_CAPTION_MODEL", captioner), ("STUDIO_VAE_MODEL", args.vae)):
        if val:
            os.environ[var] = val
    return AppContext(workspace=ws, base=model_source("base", base),
                      refiner=model_source("refiner", refiner),
                      captioner=model_source("captioner", captioner), vae=args.vae,
                      demo=args.demo, remote=args.host not in ("127.0.0.1", "localhost", "::1"))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.debug:
        from studio.models import quiet_libraries

        quiet_libraries()
    ctx = make_context(args)
    os.environ.setdefault("GRADIO_TEMP_DIR", str(ctx.workspace.tmp_dir))
    from studio.ui.app import build_app

    demo = build_app(ctx)
    demo.queue(default_concurrency_limit=2, max_size=64)
    log.info("workspace: %s", ctx.workspace.home)
    demo.launch(server_name=args.host, server_port=args.port, show_error=not ctx.remote,
                allowed_paths=[str(ctx.workspace.gallery_dir), str(ctx.workspace.exports_dir),
                               str(ctx.workspace.runs_dir)],
                max_file_size="50mb")
    return 0


if __name__ == "__main__":
    sys.exit(main())
