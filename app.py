"""SDXL LoRA Studio: the web app and its HTTP API, one process on one port (uvicorn).
Also the Hugging Face Spaces entry point (app_file: app.py).

    python app.py [--host 127.0.0.1] [--port 7860] [--demo] [--base ID_OR_DIR] ...
                  [--auth user:password ...] [--insecure-no-auth] [--forwarded-allow-ips IPS]

Beyond localhost a login is required (``--auth`` or ``STUDIO_AUTH``), except on a Hugging Face
Space, where the Space's own visibility applies. A user error (a refused setting) prints one
sentence and exits with code 2; ``--debug`` prints its traceback as well.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback

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
    p.add_argument("--base", help="SDXL base model: Hub id, folder or single .safetensors file "
                   "(env STUDIO_BASE_MODEL)")
    p.add_argument("--refiner", help="SDXL refiner: Hub id or folder (env STUDIO_REFINER_MODEL)")
    p.add_argument("--captioner", help="BLIP captioner: Hub id or folder (env STUDIO_CAPTION_MODEL)")
    p.add_argument("--vae", help="VAE: Hub id, folder, or 'base' (env STUDIO_VAE_MODEL)")
    p.add_argument("--auth", action="append", metavar="USER:PASSWORD", default=[],
                   help="require this login for the UI (repeatable; env STUDIO_AUTH=\"u1:p1,u2:p2\" "
                        "or STUDIO_AUTH_FILE with one user:password per line)")
    p.add_argument("--insecure-no-auth", action="store_true",
                   help="allow listening beyond localhost without a login (not recommended)")
    p.add_argument("--forwarded-allow-ips", metavar="IPS",
                   default=os.environ.get("STUDIO_FORWARDED_ALLOW_IPS"),
                   help="comma-separated addresses or networks of your reverse proxy, whose "
                        "X-Forwarded-For/-Proto headers are then believed (default: none, "
                        "except the Space proxy on a Hugging Face Space; 'none' turns it off)")
    p.add_argument("--debug", action="store_true", help="debug logging and tracebacks")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.debug:
        from studio.models import quiet_libraries

        quiet_libraries(lazy=True)  # diffusers loads with the first model, not the first page
    from studio.errors import StudioError, first_line

    try:
        return serve(args)
    except StudioError as exc:  # one sentence for the operator; --debug adds the traceback
        if args.debug:
            traceback.print_exc()
        print(f"error: {first_line(exc)}", file=sys.stderr)
        return 2


def serve(args: argparse.Namespace) -> int:
    from studio import spaces
    from studio.security import (
        check_exposure,
        forwarded_allow_ips,
        harden_pillow,
        is_local_host,
        parse_auth,
    )

    space = spaces.configure()  # on a Space: workspace and HF cache on /data when present
    if space.on_spaces and args.host == "127.0.0.1" and "STUDIO_HOST" not in os.environ:
        args.host = "0.0.0.0"
        log.info("On a Hugging Face Space: listening on 0.0.0.0 (the Space proxy is the only "
                 "way in; the Space's visibility and STUDIO_AUTH decide who can use it).")
    auth = parse_auth(args.auth, os.environ.get("STUDIO_AUTH"), os.environ.get("STUDIO_AUTH_FILE"))
    warning = check_exposure(args.host, bool(auth), args.insecure_no_auth, space.on_spaces)
    forwarded = forwarded_allow_ips(args.forwarded_allow_ips, space.on_spaces)
    if warning:
        log.warning(warning)
    harden_pillow()
    from studio.compose import build_services, create_http_app

    if args.home:  # one home for everything that reads STUDIO_HOME (e.g. the saved presets)
        os.environ["STUDIO_HOME"] = args.home

    services = build_services(args.home or None, base=args.base, refiner=args.refiner,
                              vae=args.vae, captioner=args.captioner, demo=args.demo,
                              remote=not is_local_host(args.host))
    if space.storage_warning:
        services.notices.append(space.storage_warning)
    os.environ.setdefault("GRADIO_TEMP_DIR", str(services.workspace.tmp_dir))
    from studio.api.serve import run_server
    from studio.api.settings import ServerOptions

    server = create_http_app(services, ui=True, options=ServerOptions(
        auth=auth, host=args.host, port=args.port, spaces=space.on_spaces))
    log.info("workspace: %s; UI login: %s; API docs at /docs; forwarded headers believed from: "
             "%s", services.workspace.home, f"{len(auth)} user(s)" if auth else "off",
             ", ".join(forwarded) if forwarded else "nobody")
    run_server(server, args.host, args.port, forwarded, debug=args.debug)
    return 0


if __name__ == "__main__":
    sys.exit(main())
