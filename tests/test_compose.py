"""The composition root: the API and the job scheduler run without the UI; the UI and the API
share one generation service whose models only the operator sets."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _train_support import make_dataset
from api_support import SMALL, bearer, keystore, request
from conftest import free_port, wait_http

from studio.jobs.process import process_alive

ROOT = Path(__file__).resolve().parents[1]
FAKE = str(Path(__file__).with_name("runner_fake_trainer.py"))

# The server process: gradio cannot be imported at all, the job service runs the fake trainer.
SERVER = r"""
import sys

class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "gradio" or name.startswith("gradio."):
            raise ImportError("gradio is not importable in this test")

sys.meta_path.insert(0, Block())
import dataclasses
import logging

import uvicorn

from studio.compose import build_services, create_http_app
from studio.jobs.service import JobService

home, port, fake = sys.argv[1], int(sys.argv[2]), sys.argv[3]
logging.basicConfig(level=logging.WARNING)
logging.getLogger("studio.compose").setLevel(logging.INFO)
services = build_services(home)
jobs = JobService(services.workspace, env=services.environment(),
                  trainer_cmd=[sys.executable, fake], base=services.models.base)
app = create_http_app(dataclasses.replace(services, jobs=jobs), ui=False)
assert not any(m == "gradio" or m.startswith("gradio.") for m in sys.modules)
print("serving without gradio", flush=True)
uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")
"""


def _wait_started(service, job_id: int, timeout: float = 60):
    """Poll the job table (never reconciling here: only the server's scheduler may start it)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = service.get(job_id)
        if job.state != "queued":
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} was never started by the server's scheduler")


def test_api_and_job_scheduler_run_without_the_ui(tmp_path, tiny_models):
    from studio.jobs.service import JobService
    from studio.workspace import Workspace

    home = tmp_path / "home"
    home.mkdir()
    dataset = make_dataset(tmp_path / "ds", n=1)
    port = free_port()
    log = tmp_path / "server.log"
    env = {**os.environ, "STUDIO_BASE_MODEL": str(tiny_models["base"]),
           "STUDIO_REFINER_MODEL": str(tiny_models["refiner"]), "PYTHONUNBUFFERED": "1"}
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-c", SERVER, str(home), str(port), FAKE],
                                cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    service = JobService(Workspace(home))  # this process only writes the queue
    job = None
    try:
        wait_http(url + "/health", timeout=120, proc=proc)
        assert "serving without gradio" in log.read_text()
        status, _, raw = request(url + "/")
        assert status == 404 and json.loads(raw)["error"] == "not_found"  # no UI mounted
        key, _ = keystore(home).create("no-ui")
        status, _, raw = request(url + "/generate_image", "POST", SMALL, bearer(key))
        assert status == 200 and len(json.loads(raw)["images"]) == 1, raw

        queued = service.submit(service.build_config(dataset), run_name="no-ui-run")
        assert queued.state == "queued"
        job = _wait_started(service, queued.id)
        assert job.started is not None and job.pid is not None
        assert FAKE in (job.command or ""), job.command  # the server's job service ran it
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = None
        if job is not None and job.pgid and process_alive(job.pid, job.proc_start):
            os.killpg(job.pgid, signal.SIGKILL)
    text = log.read_text()
    assert rc in (0, -signal.SIGTERM), text[-3000:]  # uvicorn re-raises SIGTERM after shutdown
    assert "training job scheduler started" in text
    assert "training job scheduler stopped" in text  # the app's shutdown stopped it


@pytest.fixture()
def services(tmp_path, tiny_models):
    from studio.compose import build_services

    return build_services(tmp_path / "home", base=str(tiny_models["base"]),
                          refiner=str(tiny_models["refiner"]),
                          captioner=str(tiny_models["captioner"]))


def test_only_the_operator_sets_the_models(services, tiny_models, monkeypatch):
    """The UI has no model input; what a UI user sends and what an API call sends run on the
    one generator with the operator's base."""
    import gradio as gr
    from fastapi.testclient import TestClient

    from studio.compose import create_http_app
    from studio.ui import generate_tab
    from studio.ui.app import build_app
    from studio.ui.server import context_for

    ctx = context_for(services)
    assert ctx.generation is services.generation and ctx.jobs is services.jobs
    blocks = build_app(ctx)
    model_labels = {"Base model", "Refiner model", "VAE"}
    for fn in blocks.fns.values():
        for comp in fn.inputs:
            assert getattr(comp, "label", None) not in model_labels, fn.name
    shown = [b for b in blocks.blocks.values() if getattr(b, "label", None) in model_labels]
    assert shown and all(b.interactive is False for b in shown)
    assert {b.value for b in shown} == {str(tiny_models["base"]), str(tiny_models["refiner"])}

    # Environment variables changed after start (by anything in the process) change nothing.
    monkeypatch.setenv("STUDIO_BASE_MODEL", "/somewhere/else")
    gen = services.generation.generator()
    gallery = generate_tab.Gallery(services.workspace.gallery_dir)
    _, status = generate_tab.run_generation(ctx, gallery, "a photo of TOK person", "", None, 1.0,
                                            "Euler", 2, 5.0, 64, 64, 3, 1, False, 0.8)
    assert status.startswith("Done: 1 image(s)"), status
    assert services.generation.generator() is gen
    assert gen.base_source == str(tiny_models["base"])

    key, _ = keystore(services.workspace.home).create("iso")
    with TestClient(create_http_app(services, ui=False)) as client:
        r = client.post("/generate_image", json=SMALL, headers=bearer(key))
    assert r.status_code == 200, r.text
    assert r.json()["images"][0]["params"]["base_model"] == "base"  # the tiny base folder
    assert services.generation.generator() is gen
    assert isinstance(blocks, gr.Blocks)


class _Refusing:
    """A generation service that refuses every request with a user error."""

    def generate(self, req, progress=None, cancelled=None):
        from studio.generate.request import GenerationError

        raise GenerationError("This server generates nothing today.")


def test_studio_errors_become_one_json_sentence(services):
    from fastapi.testclient import TestClient

    from studio.compose import create_http_app
    from studio.generate.service import GenerationService

    key, _ = keystore(services.workspace.home).create("errors")
    services.generation = GenerationService(base=str(services.workspace.home / "no-such-base"))
    with TestClient(create_http_app(services, ui=False)) as client:
        r = client.post("/generate_image", json=SMALL, headers=bearer(key))
        assert r.status_code == 503 and r.json()["error"] == "model_unavailable"
        assert "does not exist" in r.json()["message"] and "\n" not in r.json()["message"]
        services.generation = _Refusing()
        r = client.post("/generate_image", json=SMALL, headers=bearer(key))
        assert r.status_code == 422 and r.json() == {
            "error": "invalid_request", "message": "This server generates nothing today."}
        assert client.get("/health").json()["queue"]["active"] == 0
    assert keystore(services.workspace.home).get(1).images == 0
