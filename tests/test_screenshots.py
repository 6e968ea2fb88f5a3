"""`make screenshots`: the script writes a full-page PNG of each tab of the demo app."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image, ImageStat

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("screenshots", ROOT / "scripts" / "screenshots.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_screenshots_writes_a_png_per_tab(tiny_models, tmp_path):
    mod = _script()
    try:
        chromium = mod.find_chromium()
    except SystemExit:
        if os.environ.get("CI"):
            raise
        pytest.skip("chromium is not installed (apt-get install chromium)")
    # In its own process, as `make screenshots` runs it (Playwright's sync API refuses to start
    # inside the asyncio loop the session's browser fixture leaves in this process).
    args = [sys.executable, str(ROOT / "scripts" / "screenshots.py"), "--out",
            str(tmp_path / "shots"), "--chromium", chromium]
    for flag in ("base", "refiner", "captioner"):
        args += [f"--{flag}", str(tiny_models[flag])]
    r = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    written = [Path(line) for line in r.stdout.split()]
    assert [p.name for p in written] == ["01-dataset.png", "02-train.png", "03-generate.png",
                                         "04-share.png"]
    for path in written:
        with Image.open(path) as im:
            assert im.width >= 1000 and im.height >= 800, path
            # not a blank page: many distinct shades, and the tab's widgets drawn
            assert len(im.convert("L").getcolors(256) or []) > 20, path
            assert max(ImageStat.Stat(im.convert("L")).stddev) > 10, path
