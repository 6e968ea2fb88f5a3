"""Shared fixtures: tiny models built once per session, an isolated workspace per test."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ["HF_HUB_OFFLINE"] = "1"  # tests never reach the network
os.environ.setdefault("STUDIO_DEVICE", "cpu")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    from studio.tiny import build_tiny_models

    return build_tiny_models(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """accelerate keeps one process-wide state, fixed by the first Accelerator's mixed precision;
    in-process trainings of different tests may use different precisions (the product trains
    one run per process)."""
    yield
    state = sys.modules.get("accelerate.state")
    if state is not None:
        state.AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture()
def home(tmp_path, monkeypatch) -> Path:
    h = tmp_path / "home"
    monkeypatch.setenv("STUDIO_HOME", str(h))
    return h


@pytest.fixture()
def workspace(home):
    from studio.workspace import Workspace

    return Workspace(home)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 120, proc: subprocess.Popen | None = None) -> None:
    import urllib.request

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except Exception:
            time.sleep(0.5)
    raise TimeoutError(url)


class AppServer:
    def __init__(self, proc: subprocess.Popen, url: str, log: Path, home: Path):
        self.proc, self.url, self.log, self.home = proc, url, log, home

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def start_app(home: Path, tiny: dict[str, Path], *extra: str, env: dict | None = None,
              cwd: Path = ROOT) -> AppServer:
    """Start ``python app.py`` on the tiny models in a subprocess (working directory ``cwd``);
    wait until it answers."""
    port = free_port()
    log = home.parent / f"app-{port}.log"
    e = dict(os.environ)
    e.update({"STUDIO_HOME": str(home), "STUDIO_BASE_MODEL": str(tiny["base"]),
              "STUDIO_REFINER_MODEL": str(tiny["refiner"]),
              "STUDIO_CAPTION_MODEL": str(tiny["captioner"]), "PYTHONUNBUFFERED": "1"})
    e.update(env or {})
    fh = open(log, "w")
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--port", str(port), *extra],
                            cwd=cwd, env=e, stdout=fh, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/", proc=proc)
    except Exception:
        proc.kill()
        raise RuntimeError(f"app did not start:\n{log.read_text()[-3000:]}") from None
    return AppServer(proc, url, log, home)


@pytest.fixture()
def app_server(home, tiny_models):
    home.mkdir(parents=True, exist_ok=True)
    server = start_app(home, tiny_models)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def browser():
    """Headless Debian chromium through Playwright. In CI a missing browser is a failure."""
    chromium = os.environ.get("STUDIO_CHROMIUM") or next(
        (p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser") if Path(p).exists()), None)
    if chromium is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (apt-get install chromium); CI requires it")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=chromium, headless=True,
                               args=["--no-sandbox", "--disable-gpu",
                                     "--disable-background-networking", "--disable-dev-shm-usage"])
        yield b
        b.close()


@pytest.fixture()
def page(browser):
    ctx = browser.new_context(accept_downloads=True, viewport={"width": 1400, "height": 1000})
    p = ctx.new_page()
    p.set_default_timeout(60_000)
    yield p
    ctx.close()
