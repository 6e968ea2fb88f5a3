"""Secure serving: login beyond localhost, Gradio's own routes closed to strangers, no path
traversal through the file routes, login throttling that a client cannot dodge by claiming
another address, no cross-site requests, Pillow's bomb limit, user errors exit 2."""

from __future__ import annotations

import http.cookiejar
import json
import os
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from api_support import SMALL, bearer, keystore, request, start_api_app

from studio.security import (
    SPACE_PROXY_NETWORKS,
    SecurityError,
    check_exposure,
    forwarded_allow_ips,
    harden_pillow,
    is_local_host,
    parse_auth,
    same_origin,
)

ROOT = Path(__file__).resolve().parents[1]
USER, PASSWORD = "admin", "correct-horse-battery"

TRAVERSAL = [
    "/gradio_api/file=/etc/passwd",
    "/gradio_api/file=%2fetc%2fpasswd",
    "/gradio_api/file=..%2f..%2f..%2f..%2fetc%2fpasswd",
    "/gradio_api/file=%2e%2e%2f%2e%2e%2f%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "/gradio_api/file=%252e%252e%252fetc%252fpasswd",
    "/gradio_api/file=....//....//etc/passwd",
    "/gradio_api/file=/proc/self/environ",
    "/gradio_api/file=app.py",
    "/gradio_api/file/../../../../etc/passwd",
    "/gradio_api/file/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "/file=/etc/passwd",
    "/file=..%2f..%2fetc%2fpasswd",
    "/gradio_api/proxy=http://127.0.0.1:1/",
]


def _app_cmd(*args: str, env: dict[str, str] | None = None, timeout: float = 60):
    e = {k: v for k, v in os.environ.items() if k not in ("STUDIO_AUTH", "STUDIO_AUTH_FILE",
                                                          "SPACE_ID", "SYSTEM")}
    e.update(env or {})
    return subprocess.run([sys.executable, str(ROOT / "app.py"), *args], capture_output=True,
                          text=True, env=e, timeout=timeout, cwd=ROOT)


# ---- policy units ---------------------------------------------------------------------------
def test_local_hosts():
    assert all(is_local_host(h) for h in ("127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2"))
    assert not any(is_local_host(h) for h in ("0.0.0.0", "::", "192.168.1.5", "example.com", ""))


def test_parse_auth_sources(tmp_path):
    f = tmp_path / "users.txt"
    f.write_text("# team\ncarol:pass:with:colons\n\n")
    got = parse_auth(["alice:password1"], "bob:password2, dave:password4", f)
    assert got == [("alice", "password1"), ("bob", "password2"), ("dave", "password4"),
                   ("carol", "pass:with:colons")]
    for bad in ("nocolon", ":password9", "user:", "user:short"):
        with pytest.raises(SecurityError):
            parse_auth([bad])
    with pytest.raises(SecurityError, match="does not exist"):
        parse_auth(file=tmp_path / "missing.txt")


def test_exposure_policy():
    assert check_exposure("127.0.0.1", False) is None
    assert check_exposure("0.0.0.0", True) is None
    assert "WITHOUT a login" in check_exposure("0.0.0.0", False, insecure_no_auth=True)
    assert "Space" in check_exposure("0.0.0.0", False, on_spaces=True)
    with pytest.raises(SecurityError, match="Refusing to listen on 0.0.0.0 without a login"):
        check_exposure("0.0.0.0", False)


def test_forwarded_headers_are_believed_only_from_named_proxies():
    assert forwarded_allow_ips(None) is None  # the default: X-Forwarded-For is ignored
    assert forwarded_allow_ips(None, on_spaces=True) == list(SPACE_PROXY_NETWORKS)
    assert forwarded_allow_ips("none", on_spaces=True) is None
    assert forwarded_allow_ips(" 127.0.0.1, 10.0.0.0/8 ,::1") == ["127.0.0.1", "10.0.0.0/8", "::1"]
    with pytest.raises(SecurityError, match="any client choose"):
        forwarded_allow_ips("*")
    with pytest.raises(SecurityError, match="not an IP address or network"):
        forwarded_allow_ips("127.0.0.1,proxy.example")


@pytest.mark.parametrize("headers, same", [
    ({}, True),  # API clients and curl name no page
    ({"host": "127.0.0.1:7860", "origin": "http://127.0.0.1:7860"}, True),
    ({"host": "Studio.example", "origin": "https://studio.example"}, True),
    ({"host": "studio.example:443", "origin": "https://studio.example"}, True),
    ({"host": "[::1]:7860", "origin": "http://[::1]:7860"}, True),
    ({"host": "127.0.0.1:7860", "referer": "http://127.0.0.1:7860/?view=api"}, True),
    ({"host": "127.0.0.1:7860", "origin": "http://evil.example"}, False),
    ({"host": "127.0.0.1:7860", "origin": "http://127.0.0.1:7861"}, False),
    ({"host": "127.0.0.1:7860", "origin": "http://localhost:7860"}, False),
    ({"host": "127.0.0.1:7860", "origin": "null"}, False),
    ({"host": "127.0.0.1:7860", "referer": "https://evil.example/page"}, False),
    ({"host": "127.0.0.1:7860", "origin": "http://evil.example",
      "referer": "http://127.0.0.1:7860/"}, False),  # the Origin decides
    ({"origin": "http://127.0.0.1:7860"}, False),  # no Host to compare with
])
def test_same_origin(headers, same):
    assert same_origin(headers) is same


def test_pillow_bomb_limit(tmp_path):
    from PIL import Image

    old = Image.MAX_IMAGE_PIXELS
    try:
        harden_pillow(max_pixels=10_000)
        p = tmp_path / "big.png"
        Image.new("L", (120, 100)).save(p)  # 12,000 px: above the limit, below 2x
        with pytest.raises(Image.DecompressionBombWarning):  # a warning turned into an error
            Image.open(p).load()
        Image.new("L", (100, 100)).save(p)
        Image.open(p).load()  # at the limit: fine
    finally:
        Image.MAX_IMAGE_PIXELS = old


# ---- the app refuses an open port without login ---------------------------------------------
def test_host_0000_without_auth_refuses_with_clear_message():
    r = _app_cmd("--host", "0.0.0.0", "--port", "1")
    assert r.returncode == 2
    assert r.stderr.strip().startswith("error: Refusing to listen on 0.0.0.0 without a login, "
                                       "because anyone who can reach this port")
    assert "--auth" in r.stderr and "Traceback" not in r.stderr


def test_bad_auth_value_refuses():
    r = _app_cmd("--host", "0.0.0.0", "--port", "1", env={"STUDIO_AUTH": "admin:short"})
    assert r.returncode == 2 and "shorter than 8 characters" in r.stderr


@pytest.mark.parametrize("debug", [False, True])
def test_user_errors_exit_2_even_with_debug(tmp_path, debug):
    """A refused setting is one sentence and exit code 2; --debug adds the traceback only."""
    flags = ["--debug"] if debug else []
    cases = [(["--forwarded-allow-ips", "*"], {}, "error: --forwarded-allow-ips '*' would"),
             ([], {"STUDIO_API_MAX_STEPS": "lots"},
              "error: STUDIO_API_MAX_STEPS must be a whole number (got 'lots')."),
             ([], {"STUDIO_API_HUB_TOKEN": "maybe"}, "error: STUDIO_API_HUB_TOKEN must be 1")]
    for args, env, first in cases:
        r = _app_cmd(*flags, "--port", "1", *args, env={"STUDIO_HOME": str(tmp_path), **env})
        errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
        assert r.returncode == 2, r.stderr[-2000:]
        assert len(errors) == 1 and errors[0].startswith(first), r.stderr[-2000:]
        assert ("Traceback" in r.stderr) is debug


# ---- a running app with login ---------------------------------------------------------------
@pytest.fixture(scope="module")
def auth_server(tmp_path_factory, tiny_models):
    home = tmp_path_factory.mktemp("sec") / "home"
    s = start_api_app(home, tiny_models, "--demo", env={"STUDIO_AUTH": f"{USER}:{PASSWORD}"})
    yield s
    s.stop()


def _login(url: str) -> urllib.request.OpenerDirector:
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    data = urllib.parse.urlencode({"username": USER, "password": PASSWORD}).encode()
    with opener.open(urllib.request.Request(url + "/login", data=data), timeout=30) as r:
        assert json.loads(r.read()) == {"success": True}
    return opener


def _status(opener, url: str, method: str = "GET", body: bytes | None = None) -> int:
    req = urllib.request.Request(url, data=body, method=method,
                                 headers={"Content-Type": "application/json"} if body else {})
    try:
        with opener.open(req, timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_gradio_routes_refuse_strangers(auth_server):
    url = auth_server.url
    anon = urllib.request.build_opener()
    join = json.dumps({"data": [], "fn_index": 0, "session_hash": "x" * 10}).encode()
    assert _status(anon, url + "/config") == 401
    assert _status(anon, url + "/gradio_api/info") == 401
    assert _status(anon, url + "/gradio_api/openapi.json") == 401
    assert _status(anon, url + "/gradio_api/queue/join", "POST", join) == 401
    assert _status(anon, url + "/gradio_api/queue/data?session_hash=xxxxxxxxxx") == 401
    assert _status(anon, url + "/gradio_api/call/predict", "POST", b'{"data": []}') == 401
    assert _status(anon, url + "/gradio_api/run/predict", "POST", b'{"data": []}') == 401
    assert _status(anon, url + "/gradio_api/upload", "POST", b"x") == 401
    for path in TRAVERSAL:
        assert _status(anon, url + path) in (401, 403, 404), path
    # the API's own health check stays open
    assert _status(anon, url + "/health") == 200


def test_ui_asks_for_login_then_works(auth_server):
    url = auth_server.url
    status, _, raw = request(url + "/config")
    assert status == 401 and "Log in to the SDXL LoRA Studio" in raw.decode()
    opener = _login(url)
    with opener.open(url + "/config", timeout=30) as r:
        config = json.loads(r.read())
    assert r.status == 200 and config.get("auth_required") is not True
    assert any(c.get("props", {}).get("elem_id") == "gen-prompt" for c in config["components"])
    # even logged in, Gradio lists no API endpoints and refuses direct REST calls
    with opener.open(url + "/gradio_api/info", timeout=30) as r:
        assert json.loads(r.read()) == {"named_endpoints": {}, "unnamed_endpoints": {}}


def test_file_routes_refuse_traversal_even_after_login(auth_server):
    url = auth_server.url
    opener = _login(url)
    for path in TRAVERSAL:
        assert _status(opener, url + path) in (400, 403, 404), path
    for p in (auth_server.home / "registry.sqlite", auth_server.home / "models"):
        assert _status(opener, url + "/gradio_api/file=" + str(p)) in (403, 404), p
    # positive control: an image in the app's gallery is served to the logged-in user
    key, _ = keystore(auth_server.home).create("gal")
    status, _, raw = request(url + "/generate_image", "POST", {**SMALL, "save_to_gallery": True},
                             bearer(key))
    assert status == 200, raw
    png = next((auth_server.home / "gallery").rglob("*.png"))
    assert _status(opener, url + "/gradio_api/file=" + str(png)) == 200
    assert _status(urllib.request.build_opener(), url + "/gradio_api/file=" + str(png)) == 401


@pytest.mark.browser
def test_browser_shows_login_form(auth_server, page):
    page.goto(auth_server.url + "/")
    page.get_by_label("username").wait_for()
    assert page.get_by_text("Log in to the SDXL LoRA Studio").is_visible()
    assert page.locator("#gen-prompt").count() == 0
    page.get_by_label("username").fill(USER)
    page.get_by_label("password").fill(PASSWORD)
    page.get_by_role("button", name="Login").click()
    page.get_by_role("tab", name="Generate").click()
    page.locator("#gen-prompt textarea").fill("a photo of TOK person")
    # the UI's events are private to Gradio's API, yet the logged-in browser still runs them
    page.locator("#gen-button").click()
    page.locator("#gen-status").get_by_text("image(s) in").wait_for(timeout=120_000)


def test_cross_site_requests_are_refused(auth_server):
    url = auth_server.url
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    data = urllib.parse.urlencode({"username": USER, "password": PASSWORD}).encode()
    with opener.open(urllib.request.Request(url + "/login", data=data), timeout=30) as r:
        cookies = r.headers.get_all("set-cookie")
    assert cookies and all("samesite=lax" in c.lower() for c in cookies), cookies
    assert not any("samesite=none" in c.lower() for c in cookies)
    boundary = "studio-test-boundary"
    upload = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; "
              f"filename=\"note.txt\"\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
              f"--{boundary}--\r\n").encode()
    form = {"Content-Type": f"multipart/form-data; boundary={boundary}"}

    def post(path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        req = urllib.request.Request(url + path, data=body, method="POST", headers=headers)
        try:
            with opener.open(req, timeout=60) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    for forged in ({"Origin": "http://evil.example"}, {"Referer": "http://evil.example/x"},
                   {"Origin": "null"}):
        status, raw = post("/gradio_api/upload", upload, {**form, **forged})
        assert status == 403, (forged, raw)
        msg = json.loads(raw)
        assert msg["error"] == "cross_site_request" and msg["message"].count(".") == 1
    status, raw = post("/gradio_api/upload", upload, {**form, "Origin": url})
    assert status == 200 and json.loads(raw)[0].endswith("note.txt"), raw
    # a forged login is refused too; API clients (no Origin, a key) are not affected
    status, _ = post("/login", data, {"Origin": "http://evil.example"})
    assert status == 403
    key, _ = keystore(auth_server.home).create("no-origin")
    status, _, raw = request(url + "/generate_image", "POST", SMALL, {"X-API-Key": key})
    assert status == 200, raw
    status, _, raw = request(url + "/generate_image", "POST", SMALL,
                             {"X-API-Key": key, "Origin": "http://evil.example"})
    assert status == 403 and json.loads(raw)["error"] == "cross_site_request"


def _login_attempt(url: str, headers: dict[str, str] | None = None) -> int:
    data = urllib.parse.urlencode({"username": USER, "password": "wrong-password"}).encode()
    form = {"Content-Type": "application/x-www-form-urlencoded", **(headers or {})}
    try:
        with urllib.request.urlopen(urllib.request.Request(url + "/login", data, headers=form),
                                    timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_login_attempts_are_throttled_whatever_address_the_client_claims(auth_server):
    from studio.ui.server import LOGIN_ATTEMPTS_PER_MIN

    # runs last: earlier logins of this module count towards the same per-minute budget
    codes = [_login_attempt(auth_server.url, {"X-Forwarded-For": f"203.0.113.{i}",
                                              "Forwarded": f"for=198.51.100.{i}"})
             for i in range(100)]
    first = codes.index(429)
    assert codes[0] == 400 and set(codes[:first]) == {400} and set(codes[first:]) == {429}
    assert first <= LOGIN_ATTEMPTS_PER_MIN, codes


def test_forwarded_addresses_are_believed_from_a_named_proxy(tmp_path, tiny_models):
    """Behind a reverse proxy the operator names, each client has its own login budget."""
    from studio.ui.server import LOGIN_ATTEMPTS_PER_MIN

    server = start_api_app(tmp_path / "home", tiny_models, "--forwarded-allow-ips", "127.0.0.1",
                           env={"STUDIO_AUTH": f"{USER}:{PASSWORD}"})
    try:
        one = {"X-Forwarded-For": "203.0.113.7"}
        codes = [_login_attempt(server.url, one) for _ in range(LOGIN_ATTEMPTS_PER_MIN + 1)]
        assert codes == [400] * LOGIN_ATTEMPTS_PER_MIN + [429], codes
        # the proxy appends the real client: what the client wrote before it does not count
        assert _login_attempt(server.url, {"X-Forwarded-For": "203.0.113.8, 203.0.113.7"}) == 429
        assert _login_attempt(server.url, {"X-Forwarded-For": "203.0.113.8"}) == 400
        assert "forwarded headers believed from: 127.0.0.1" in server.log.read_text()
    finally:
        server.stop()
