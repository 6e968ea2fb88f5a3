"""The HTTP API against the running app on 127.0.0.1 (tiny models): keys, images, usage,
limits, the bounded queue, and JSON errors."""

from __future__ import annotations

import base64
import io
import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from api_support import SMALL, bearer, keystore, request, start_api_app
from PIL import Image


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_models):
    home = tmp_path_factory.mktemp("api") / "home"
    s = start_api_app(home, tiny_models)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def store(server):
    return keystore(server.home)


def usage(server, key) -> dict:
    status, _, body = request(server.url + "/api_key_usage", headers=bearer(key))
    assert status == 200, body
    return json.loads(body)


def test_health_needs_no_key_and_shows_no_secrets(server):
    status, headers, body = request(server.url + "/health")
    data = json.loads(body)
    assert status == 200 and data["status"] == "ok"
    assert set(data) == {"status", "version", "queue"}
    assert str(server.home) not in body.decode()


@pytest.mark.parametrize("headers, code", [
    ({}, "missing_api_key"),
    ({"Authorization": "Bearer sk-studio-" + "A" * 43}, "invalid_api_key"),  # wrong
    ({"X-API-Key": "not-a-key"}, "invalid_api_key"),  # malformed
    ({"Authorization": "Basic dXNlcjpwYXNz"}, "invalid_api_key"),  # not a Bearer key
])
def test_bad_keys_get_401_json(server, headers, code):
    for path, method, body in (("/generate_image", "POST", SMALL), ("/api_key_usage", "GET", None)):
        status, h, raw = request(server.url + path, method, body, headers)
        assert status == 401, raw
        assert h["content-type"] == "application/json"
        assert json.loads(raw)["error"] == code
        assert h.get("www-authenticate") == "Bearer"


def _raw_exchange(server, data: bytes, chunk: int = 4096) -> bytes:
    """Send ``data`` in small pieces (as a slow network would) and return the raw answer."""
    port = int(server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        for i in range(0, len(data), chunk):
            sock.sendall(data[i:i + chunk])
        answer = b""
        while not answer.endswith(b"}"):
            part = sock.recv(65536)
            if not part:
                break
            answer += part
    return answer


def test_long_or_broken_requests_get_json(server):
    key = "sk-studio-" + "A" * (64 * 1024)
    head = f"GET /api_key_usage HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\n\r\n".encode()
    answer = _raw_exchange(server, head)
    status, _, rest = answer.partition(b"\r\n")
    headers, _, body = rest.partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 401"), answer[:200]
    assert b"content-type: application/json" in headers.lower()
    assert json.loads(body)["error"] == "invalid_api_key"
    answer = _raw_exchange(server, b"NOT HTTP AT ALL\r\n\r\n")
    status, _, rest = answer.partition(b"\r\n")
    assert status.startswith(b"HTTP/1.1 400"), answer[:200]
    body = json.loads(rest.partition(b"\r\n\r\n")[2])
    assert body["error"] == "bad_request" and body["message"].endswith(".")


def test_conflicting_credentials_get_401(server, store):
    key, _ = store.create("two-headers")
    for extra in ({"Authorization": "Bearer sk-studio-" + "B" * 43}, {"Authorization": "Basic x"}):
        status, _, raw = request(server.url + "/api_key_usage", headers={"X-API-Key": key, **extra})
        assert status == 401, raw
    both = {"X-API-Key": key, **bearer(key)}
    assert request(server.url + "/api_key_usage", headers=both)[0] == 200


def test_revoked_key_gets_401(server, store):
    key, rec = store.create("soon-revoked")
    assert request(server.url + "/api_key_usage", headers=bearer(key))[0] == 200
    store.revoke(rec.id)
    status, _, raw = request(server.url + "/generate_image", "POST", SMALL, bearer(key))
    assert status == 401 and json.loads(raw)["error"] == "invalid_api_key"


def test_valid_key_gets_image_and_usage_counts_it(server, store):
    key, _ = store.create("valid")
    before = usage(server, key)["key"]["images"]
    status, _, raw = request(server.url + "/generate_image", "POST", SMALL,
                             {"X-API-Key": key})
    assert status == 200, raw
    data = json.loads(raw)
    assert len(data["images"]) == 1
    img = data["images"][0]
    png = base64.b64decode(img["png_base64"])
    with Image.open(io.BytesIO(png)) as im:
        assert im.size == (64, 64) and im.format == "PNG"
        assert json.loads(im.text["studio"])["seed"] == 1
    assert img["seed"] == 1 and img["params"]["prompt"] == SMALL["prompt"]
    # no server path leaves the host: the tiny base folder is reported by its name only
    assert img["params"]["base_model"] == "base"
    with Image.open(io.BytesIO(png)) as im:
        assert "Model: base," in im.text["parameters"]
        assert json.loads(im.text["studio"])["base_model"] == "base"
    assert data["usage"]["images"] == before + 1
    assert usage(server, key)["key"]["images"] == before + 1
    # a float field takes a whole number
    assert request(server.url + "/generate_image", "POST", {**SMALL, "guidance": 7},
                   bearer(key))[0] == 200
    before += 1
    # the same seed and settings give the same pixels
    again = json.loads(request(server.url + "/generate_image", "POST", SMALL, bearer(key))[2])
    a = Image.open(io.BytesIO(png)).tobytes()
    b = Image.open(io.BytesIO(base64.b64decode(again["images"][0]["png_base64"]))).tobytes()
    assert a == b
    assert usage(server, key)["key"]["images"] == before + 2


def test_raw_png_and_batch(server, store):
    key, _ = store.create("png")
    status, h, raw = request(server.url + "/generate_image", "POST",
                             {**SMALL, "seed": 5, "refiner": True, "scheduler": "Euler"},
                             {**bearer(key), "Accept": "image/png"})
    assert status == 200 and h["content-type"] == "image/png" and h["x-seed"] == "5"
    assert json.loads(h["x-studio-params"])["refiner"]
    assert Image.open(io.BytesIO(raw)).size == (64, 64)
    status, _, raw = request(server.url + "/generate_image", "POST",
                             {**SMALL, "num_images": 2}, {**bearer(key), "Accept": "image/png"})
    assert status == 406 and json.loads(raw)["error"] == "not_acceptable"
    status, _, raw = request(server.url + "/generate_image", "POST", {**SMALL, "num_images": 2},
                             bearer(key))
    assert status == 200
    assert [i["seed"] for i in json.loads(raw)["images"]] == [1, 2]
    assert usage(server, key)["key"]["images"] == 3


@pytest.mark.parametrize("body, fragment", [
    ({**SMALL, "prompt": "   "}, "prompt is empty"),
    ({**SMALL, "steps": 0}, "Field 'steps'"),
    ({**SMALL, "width": 65}, "Field 'width'"),
    ({**SMALL, "steps": 9}, "Field 'steps': Input should be less than or equal to 3"),
    ({**SMALL, "width": 512}, "Field 'width'"),
    ({**SMALL, "num_images": 3}, "Field 'num_images'"),
    ({**SMALL, "scheduler": "nope"}, "Field 'scheduler'"),
    ({**SMALL, "unknown": 1}, "Field 'unknown'"),
    ({**SMALL, "lora": "/etc/passwd"}, "Field 'lora': give the name of a training run"),
    ({**SMALL, "lora": "../runs/x"}, "Field 'lora': give the name of a training run"),
    ({**SMALL, "steps": True}, "Field 'steps': Input should be a valid integer"),
    ({**SMALL, "width": "64"}, "Field 'width': Input should be a valid integer"),
    ({**SMALL, "guidance": True}, "Field 'guidance': Input should be a valid number"),
    ({**SMALL, "refiner": 1}, "Field 'refiner': Input should be a valid boolean"),
    (b"{not json", "not valid JSON"),
    (b"\xff\xfe{", "not valid JSON"),
])
def test_bad_requests_get_422_with_one_sentence(server, store, body, fragment):
    key, _ = store.create("bad")
    status, h, raw = request(server.url + "/generate_image", "POST", body, bearer(key))
    assert status == 422, raw
    msg = json.loads(raw)["message"]
    assert fragment in msg and msg.endswith(".") and "\n" not in msg
    assert usage(server, key)["key"]["images"] == 0


def test_unknown_lora_run_is_404(server, store):
    key, _ = store.create("run")
    status, _, raw = request(server.url + "/generate_image", "POST",
                             {**SMALL, "lora": "no-such-run"}, bearer(key))
    assert status == 404 and "No trained run is named 'no-such-run'" in json.loads(raw)["message"]


def test_unreachable_hub_lora_is_503_not_500(server, store):
    key, _ = store.create("hub")
    status, _, raw = request(server.url + "/generate_image", "POST",
                             {**SMALL, "lora": "someone/missing-lora"}, bearer(key))
    assert status == 503 and json.loads(raw)["error"] == "model_unavailable"
    assert "LoRA" in json.loads(raw)["message"]
    assert usage(server, key)["key"]["images"] == 0


def test_rate_limit_and_quota_answer_429(server, store):
    key, _ = store.create("limited", rate_limit=2)
    codes = [request(server.url + "/generate_image", "POST", SMALL, bearer(key))[:2]
             for _ in range(3)]
    assert [c for c, _ in codes] == [200, 200, 429]
    assert int(codes[2][1]["retry-after"]) >= 1
    qkey, _ = store.create("quota", quota=3)
    assert request(server.url + "/generate_image", "POST", {**SMALL, "num_images": 2},
                   bearer(qkey))[0] == 200
    status, _, raw = request(server.url + "/generate_image", "POST", {**SMALL, "num_images": 2},
                             bearer(qkey))
    assert status == 429 and "quota of 3 images" in json.loads(raw)["message"]
    assert usage(server, qkey)["key"]["images"] == 2


def test_admin_sees_all_keys_others_only_their_own(server, store):
    admin, _ = store.create("root", admin=True)
    user, urec = store.create("someone")
    mine = usage(server, user)
    assert mine["keys"] is None and mine["key"]["id"] == urec.id
    everyone = usage(server, admin)["keys"]
    assert urec.id in {k["id"] for k in everyone} and len(everyone) >= 2
    assert all(k["key"].endswith("...") and len(k["key"]) < 25 for k in everyone)
    assert user not in json.dumps(everyone)


def test_50_concurrent_requests_all_answered_and_counted_exactly(server, store):
    key, _ = store.create("burst")
    body = {**SMALL, "seed": -1}

    def one(_):
        t0 = time.perf_counter()
        status, h, raw = request(server.url + "/generate_image", "POST", body, bearer(key),
                                 timeout=120)
        return status, h, raw, time.perf_counter() - t0

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(one, range(50)))
    wall = time.perf_counter() - t0
    statuses = [r[0] for r in results]
    assert set(statuses) <= {200, 429, 503}, statuses
    images = sum(len(json.loads(r[2])["images"]) for r in results if r[0] == 200)
    busy = [r for r in results if r[0] in (429, 503)]
    assert images >= 1 and busy, statuses  # the queue (size 4) must turn some away
    assert all(r[1].get("retry-after") == "2" for r in busy)
    assert max(r[3] for r in busy) < 10  # refused at once, never left hanging
    assert usage(server, key)["key"]["images"] == images
    assert usage(server, key)["key"]["requests"] == images
    print(f"50 concurrent: {images} images, {len(busy)} refused, wall {wall:.1f} s")
