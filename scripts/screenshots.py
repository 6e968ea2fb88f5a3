"""A full-page PNG of each tab of the app in demo mode, to look at the UI without clicking.

    python scripts/screenshots.py [--out screenshots] [--chromium /usr/bin/chromium]

Starts ``app.py --demo`` on a free port with a temporary workspace (tiny random models, built
on first use unless ``--base``/``--refiner``/``--captioner`` name existing ones), opens it in
headless Chromium through Playwright, and writes ``NN-TAB.png`` per tab into the output folder.
``make screenshots`` runs it (``OUT=dir`` chooses the folder).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TABS = ("Dataset", "Train", "Generate", "Share")
VIEWPORT = {"width": 1400, "height": 1000}


def find_chromium() -> str:
    """``STUDIO_CHROMIUM``, else Debian's chromium."""
    found = os.environ.get("STUDIO_CHROMIUM") or next(
        (p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser") if Path(p).exists()), None)
    if not found:
        raise SystemExit("chromium is not installed (apt-get install chromium)")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(url: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"app.py --demo exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"app.py --demo did not answer at {url} within {timeout:.0f} s")


def _start(home: Path, models: dict[str, str], log: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    cmd = [sys.executable, str(ROOT / "app.py"), "--demo", "--port", str(port), "--home",
           str(home)]
    for flag, value in models.items():
        cmd += [f"--{flag}", value]
    env = {**os.environ, "STUDIO_HOME": str(home), "HF_HUB_OFFLINE": "1",
           "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT)
    return proc, f"http://127.0.0.1:{port}"


def _shoot(url: str, out: Path, chromium: str) -> list[Path]:
    from playwright.sync_api import sync_playwright

    written = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True,
                                     args=["--no-sandbox", "--disable-gpu",
                                           "--disable-dev-shm-usage"])
        try:
            page = browser.new_page(viewport=VIEWPORT)
            page.set_default_timeout(60_000)
            page.goto(url)
            page.get_by_role("tab", name=TABS[0]).wait_for()
            for i, tab in enumerate(TABS, start=1):
                page.get_by_role("tab", name=tab).click()
                page.get_by_role("tabpanel").first.wait_for()
                page.wait_for_timeout(2000)  # page-load and tab-open events settle
                path = out / f"{i:02d}-{tab.lower()}.png"
                page.screenshot(path=str(path), full_page=True)
                written.append(path)
        finally:
            browser.close()
    return written


def take_screenshots(out: str | Path = "screenshots", chromium: str | None = None,
                     models: dict[str, str] | None = None, timeout: float = 600) -> list[Path]:
    """Write a full-page PNG of each tab into ``out``; returns their paths."""
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="studio-screens-") as tmp:
        home = Path(tmp) / "home"
        proc, url = _start(home, {k: str(v) for k, v in (models or {}).items()},
                           Path(tmp) / "app.log")
        try:
            try:
                _wait(url + "/", proc, timeout)
            except (RuntimeError, TimeoutError) as exc:
                tail = (Path(tmp) / "app.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{exc}\n{tail}") from None
            return _shoot(url, out, chromium or find_chromium())
        finally:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.environ.get("OUT") or "screenshots",
                   help="folder for the PNGs (default screenshots/, env OUT)")
    p.add_argument("--chromium", help="the browser (default: STUDIO_CHROMIUM or "
                                      "/usr/bin/chromium)")
    for flag in ("base", "refiner", "captioner"):
        p.add_argument(f"--{flag}", help=f"an existing {flag} folder instead of building one")
    args = p.parse_args(argv)
    models = {k: getattr(args, k) for k in ("base", "refiner", "captioner") if getattr(args, k)}
    for path in take_screenshots(args.out, args.chromium, models):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
