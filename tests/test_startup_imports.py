"""Start-up: the app's quiet_libraries(lazy=True) does not import torch or diffusers before the
first page; the first model load (models.cached) silences them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CODE = """
import sys
from studio.models import cached, quiet_libraries
quiet_libraries(lazy=True)
assert "torch" not in sys.modules and "diffusers" not in sys.modules, "imported too early"
cached(("probe",), lambda: 1)
from diffusers.utils import logging as dlog
assert dlog.get_verbosity() == dlog.ERROR and not dlog.is_progress_bar_enabled()
print("ok")
"""


def test_lazy_quiet_libraries_defers_the_heavy_imports_to_the_first_model_load():
    r = subprocess.run([sys.executable, "-c", CODE], cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


UI_CODE = """
import sys
from studio.compose import build_services, create_http_app
services = build_services(sys.argv[1], demo=True)
create_http_app(services, ui=True)
heavy = [m for m in ("torch", "diffusers", "transformers") if m in sys.modules]
assert not heavy, f"building the UI imported {heavy}"
print("ok")
"""


def test_building_the_ui_imports_no_torch_once_the_demo_models_exist(tmp_path, tiny_models):
    """The first page does not wait for torch: with the demo models built (the fixture plays
    that part here), the services and the whole UI build without importing torch, diffusers or
    transformers (the GPU recommendation is filled on page load)."""
    from studio.compose import build_services

    home = tmp_path / "home"
    build_services(home, demo=True)  # builds the demo's tiny models in this workspace
    r = subprocess.run([sys.executable, "-c", UI_CODE, str(home)], cwd=ROOT, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]
