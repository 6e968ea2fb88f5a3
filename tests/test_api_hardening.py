"""The API borrows nothing from the server: a request's LoRA is never looked up on the server's
disk (no existence oracle), Hub LoRAs are fetched without the operator's token unless the
operator allows it or the key is an admin key, and a client that disconnects stops its
generation and is charged nothing. Against the running app, with a stand-in Hub on 127.0.0.1."""

from __future__ import annotations

import json
import re
import socket
import time
from pathlib import Path

import pytest
from api_support import SMALL, bearer, keystore, request, start_api_app
from hub_standin import HubStandIn, Repo
from lora_utils import make_tiny_lora

OPERATOR_TOKEN = "hf_operator_token_not_a_secret"
PRIVATE, PUBLIC = "op/private-lora", "op/public-lora"

# Each reference names something in the server's working directory; its control has the same
# shape and names nothing. Both must get the same answer.
PLANTED = {"secret/passwd": "absent/passwd", "loot/sub": "absent/sub",
           "loot/w.safetensors": "absent/w.safetensors",
           "loot/sub:w.safetensors": "absent/sub:w.safetensors", "secret": "absent", "loot": "gone"}


@pytest.fixture(scope="module")
def lora_file(tmp_path_factory, tiny_models) -> Path:
    return make_tiny_lora(tiny_models["base"], tmp_path_factory.mktemp("lora"))["diffusers"]


@pytest.fixture(scope="module")
def hub(lora_file):
    server = HubStandIn()
    server.add_token(OPERATOR_TOKEN, "op")
    data = lora_file.read_bytes()
    for repo_id, private in ((PRIVATE, True), (PUBLIC, False)):
        server.state.repos[("model", repo_id)] = Repo(
            repo_id, "model", private, files={"pytorch_lora_weights.safetensors": data},
            sha="1" * 40)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def planted_cwd(tmp_path_factory, lora_file) -> Path:
    """A working directory for the server holding a text file, a folder and a real LoRA."""
    cwd = tmp_path_factory.mktemp("cwd")
    (cwd / "secret").mkdir()
    (cwd / "secret" / "passwd").write_text("root:x:0:0\n")
    (cwd / "loot" / "sub").mkdir(parents=True)
    (cwd / "loot" / "sub" / "w.safetensors").write_bytes(lora_file.read_bytes())
    (cwd / "loot" / "w.safetensors").write_bytes(lora_file.read_bytes())
    return cwd


def _hub_env(hub: HubStandIn, tmp: Path) -> dict[str, str]:
    return {"HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "HF_TOKEN": OPERATOR_TOKEN,
            "HF_HOME": str(tmp / "hf"), "HF_HUB_CACHE": str(tmp / "hf" / "hub")}


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_models, hub, planted_cwd):
    """Default settings: Hub LoRAs without the operator's token except for admin keys."""
    tmp = tmp_path_factory.mktemp("hardening")
    s = start_api_app(tmp / "home", tiny_models, env=_hub_env(hub, tmp), cwd=planted_cwd)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def token_server(tmp_path_factory, tiny_models, hub):
    """STUDIO_API_HUB_TOKEN=1, and limits that allow a long generation (8 x 150 steps)."""
    tmp = tmp_path_factory.mktemp("hardening-token")
    env = {**_hub_env(hub, tmp), "STUDIO_API_HUB_TOKEN": "1", "STUDIO_API_MAX_STEPS": "150",
           "STUDIO_API_MAX_SIDE": "256", "STUDIO_API_MAX_IMAGES": "8"}
    s = start_api_app(tmp / "home", tiny_models, env=env)
    yield s
    s.stop()


def _generate(server, key: str, **body) -> tuple[int, dict]:
    status, _, raw = request(server.url + "/generate_image", "POST", {**SMALL, **body}, bearer(key))
    return status, json.loads(raw)


def _usage(server, key: str) -> dict:
    status, _, raw = request(server.url + "/api_key_usage", headers=bearer(key))
    assert status == 200, raw
    return json.loads(raw)["key"]


def _hub_calls(hub: HubStandIn, repo_id: str) -> list[dict]:
    return [r for r in hub.state.requests if repo_id in r["path"]]


# ---- LoRA references ------------------------------------------------------------------------
def test_lora_references_never_look_at_the_server_disk(server, planted_cwd):
    key, _ = keystore(server.home).create("oracle")

    def answer(ref: str) -> tuple[int, str, str]:
        status, data = _generate(server, key, lora=ref)
        repo = ref.partition(":")[0]
        return status, data.get("error"), data.get("message", "").replace(ref, "REF").replace(
            repo, "REPO")

    for ref, control in PLANTED.items():
        got, expected = answer(ref), answer(control)
        assert got[0] != 200, (ref, got)  # the real LoRA in the working directory is not loaded
        assert got == expected, (ref, got, expected)
    assert _usage(server, key)["images"] == 0
    # a run of this studio with a LoRA is a reference, named by the run
    run = server.home / "runs" / "my-run"
    run.mkdir(parents=True)
    (run / "pytorch_lora_weights.safetensors").write_bytes(
        (planted_cwd / "loot" / "w.safetensors").read_bytes())
    status, data = _generate(server, key, lora="my-run")
    assert status == 200, data
    assert data["images"][0]["params"]["lora"] == "my-run"


# ---- the operator's Hub token ---------------------------------------------------------------
def test_private_hub_lora_needs_an_admin_key(server, hub):
    key, _ = keystore(server.home).create("user")
    admin, _ = keystore(server.home).create("root", admin=True)
    status, data = _generate(server, key, lora=PRIVATE)
    assert status == 503 and data["error"] == "model_unavailable", data
    assert "not public" in data["message"] and "\n" not in data["message"]
    calls = _hub_calls(hub, PRIVATE)
    assert calls and not any(c["authorized"] for c in calls)  # asked anonymously
    status, data = _generate(server, admin, lora=PRIVATE)
    assert status == 200, data
    assert data["images"][0]["params"]["lora"] == PRIVATE
    assert any(c["authorized"] for c in _hub_calls(hub, PRIVATE))
    # the admin's download is not served to others from the cache
    status, data = _generate(server, key, lora=PRIVATE)
    assert status == 503 and "not public" in data["message"], data
    assert _usage(server, key)["images"] == 0
    # a public LoRA works for everyone, fetched without the token
    before = len(hub.state.requests)
    status, data = _generate(server, key, lora=PUBLIC)
    assert status == 200, data
    new = [r for r in hub.state.requests[before:] if PUBLIC in r["path"]]
    assert new and not any(r["authorized"] for r in new)


def test_operator_can_lend_the_hub_token_to_every_key(token_server, hub):
    key, _ = keystore(token_server.home).create("user")
    status, data = _generate(token_server, key, lora=PRIVATE)
    assert status == 200, data
    assert _usage(token_server, key)["images"] == 1


# ---- clients that disconnect ----------------------------------------------------------------
def _queue_active(server) -> int:
    return json.loads(request(server.url + "/health")[2])["queue"]["active"]


def _wait_for(condition, what: str, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout  # a safety net only: nothing here measures time
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.1)


def test_client_that_disconnects_stops_the_generation_and_pays_nothing(token_server):
    key, _ = keystore(token_server.home).create("leaver")
    body = json.dumps({**SMALL, "steps": 150, "width": 128, "height": 128, "num_images": 8,
                       "seed": 1}).encode()
    head = (f"POST /generate_image HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: {key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    port = int(token_server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(head + body)
        _wait_for(lambda: _queue_active(token_server) == 1, "the request to be admitted")
    # the client is gone; the generation must end long before its 1200 steps
    _wait_for(lambda: _queue_active(token_server) == 0, "the generation to stop")
    log = token_server.log.read_text()
    stopped = [line for line in log.splitlines() if "the client disconnected" in line]
    assert len(stopped) == 1 and "nothing was counted" in stopped[0], stopped
    where = re.search(r"stopped at image (\d+)/8, (?:step (\d+)/150|before its first step)",
                      stopped[0])
    assert where and (where.group(1), where.group(2)) != ("8", "150"), stopped[0]
    usage = _usage(token_server, key)
    assert (usage["images"], usage["requests"]) == (0, 0)
    # the shared pipeline still works, and a delivered image is counted once
    status, data = _generate(token_server, key)
    assert status == 200, data
    usage = _usage(token_server, key)
    assert (usage["images"], usage["requests"]) == (1, 1)
