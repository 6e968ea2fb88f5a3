"""Secure defaults for serving the studio: who may log in, where it may listen, whose forwarded
headers are believed, cross-site requests, Pillow's limits.

No Gradio import: :mod:`studio.ui.server` and ``app.py`` apply these.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from studio.errors import StudioError

log = logging.getLogger(__name__)

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}

# Largest image Pillow opens (pixels): above a 64 MP phone photo, far below a decompression bomb.
MAX_IMAGE_PIXELS = 100_000_000


class SecurityError(StudioError, ValueError):
    """A serving configuration that is refused (one sentence saying why and what to do)."""


def is_local_host(host: str) -> bool:
    """True when ``host`` only accepts connections from this machine (loopback)."""
    h = (host or "").strip().strip("[]").lower()
    if h in LOCAL_HOSTS:
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def parse_auth(pairs: list[str] | None = None, env: str | None = None,
               file: str | os.PathLike | None = None) -> list[tuple[str, str]]:
    """Login pairs from ``--auth user:pass`` flags, ``STUDIO_AUTH="u1:p1,u2:p2"`` and a file of
    ``user:pass`` lines (``STUDIO_AUTH_FILE``; '#' starts a comment). The password is everything
    after the first ':'; in the env form it cannot contain ','."""
    items: list[tuple[str, str]] = []
    for raw in pairs or []:
        items.append(_pair(raw, "--auth"))
    if env:
        for raw in env.split(","):
            if raw.strip():
                items.append(_pair(raw, "STUDIO_AUTH"))
    if file:
        p = Path(file).expanduser()
        if not p.is_file():
            raise SecurityError(f"The auth file {p} does not exist.")
        for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1):
            line = line.strip()
            if line and not line.startswith("#"):
                items.append(_pair(line, f"{p.name} line {n}"))
    users: dict[str, str] = {}
    for user, pw in items:
        users[user] = pw  # a later entry for the same user wins
    return list(users.items())


def _pair(raw: str, where: str) -> tuple[str, str]:
    user, sep, pw = raw.strip().partition(":")
    user = user.strip()
    if not sep or not user or not pw:
        raise SecurityError(f"Each login in {where} must look like user:password (got an entry "
                            "without a user name or password).")
    if len(pw) < 8:
        raise SecurityError(f"The password for {user!r} in {where} is shorter than 8 characters; "
                            "use a longer one.")
    return user, pw


def check_exposure(host: str, has_auth: bool, insecure_no_auth: bool = False,
                   on_spaces: bool = False) -> str | None:
    """Refuse to serve beyond localhost without a login; returns a warning to log, or None.

    Raises :class:`SecurityError` when ``host`` is reachable from other machines, no login is
    configured, the app is not on a Hugging Face Space and ``--insecure-no-auth`` was not given.
    """
    if is_local_host(host) or has_auth:
        return None
    if on_spaces:
        return ("Serving on a Hugging Face Space without a login: the Space's own visibility "
                "(private or public) decides who can use it; set STUDIO_AUTH as a Space secret "
                "to require a login.")
    if insecure_no_auth:
        return (f"Serving on {host} WITHOUT a login (--insecure-no-auth): anyone who can reach "
                "this port can use the GPU and read the workspace.")
    raise SecurityError(
        f"Refusing to listen on {host} without a login, because anyone who can reach this port "
        "could use your GPU and read your photos; pass --auth user:password (or set "
        "STUDIO_AUTH), use an SSH tunnel to 127.0.0.1, or pass --insecure-no-auth.")


def harden_pillow(max_pixels: int = MAX_IMAGE_PIXELS) -> None:
    """Cap the size of images Pillow opens: anything above ``max_pixels`` is an error."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = max_pixels
    warnings.simplefilter("error", Image.DecompressionBombWarning)


# ---- forwarded headers ----------------------------------------------------------------------
# On a Hugging Face Space the only way in is the Space proxy, which connects from the Space's
# private network and appends the real client to X-Forwarded-For. Trusting these networks (and
# no others) takes the client as the last address the proxy added, never one the client sent.
SPACE_PROXY_NETWORKS = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10",
                        "fc00::/7")


def forwarded_allow_ips(value: str | None, on_spaces: bool = False) -> list[str] | None:
    """The proxy addresses whose X-Forwarded-For/-Proto headers are believed, or None (off).

    ``value`` is ``--forwarded-allow-ips``: comma-separated addresses or networks, or "none".
    Without it, forwarded headers are ignored (a client could otherwise pick its address and
    dodge the login throttle), except on a Space, where :data:`SPACE_PROXY_NETWORKS` is used."""
    if value is None:
        return list(SPACE_PROXY_NETWORKS) if on_spaces else None
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items or [i.lower() for i in items] == ["none"]:
        return None
    for item in items:
        if item == "*":
            raise SecurityError("--forwarded-allow-ips '*' would let any client choose the "
                                "address it is throttled by; list your proxy's addresses or "
                                "networks instead (e.g. 127.0.0.1 or 10.0.0.0/8).")
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise SecurityError(f"--forwarded-allow-ips: {item!r} is not an IP address or "
                                "network (e.g. 127.0.0.1 or 10.0.0.0/8).") from None
    return items


# ---- cross-site requests --------------------------------------------------------------------
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
CROSS_SITE_MESSAGE = ("Cross-site requests are refused: this request came from a page of "
                      "another site (its Origin or Referer is not this app's own address).")


def _site(netloc: str) -> tuple[str, int | None] | None:
    """(host, port) of a ``host[:port]``, default ports dropped; None when malformed."""
    try:
        parts = urlsplit("//" + netloc.strip())
        host, port = (parts.hostname or "").lower(), parts.port
    except ValueError:
        return None
    return (host, None if port in (80, 443) else port) if host else None


def same_origin(headers: dict[str, str]) -> bool:
    """False when the request names a page of another site: its Origin (or, without one, its
    Referer) is not the address the request was sent to (its Host). Requests naming no page at
    all (API clients, curl) are not cross-site."""
    source = headers.get("origin")
    if source is None:
        source = headers.get("referer")
        if not source:
            return True
    if source.strip().lower() == "null":  # sandboxed frames, file:// pages
        return False
    try:
        netloc = urlsplit(source.strip()).netloc
    except ValueError:
        return False
    own = _site(headers.get("host", ""))
    return own is not None and _site(netloc) == own


class SiteGuard:
    """ASGI middleware for serving outside Hugging Face Spaces (where the app is not framed by
    another site): refuses state-changing requests that come from another site's page with 403
    and a one-sentence JSON error, and turns Gradio's ``SameSite=None`` session cookies into
    ``SameSite=Lax``, so other sites' pages cannot send them along."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if scope["method"] in STATE_CHANGING:
            headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                       for k, v in scope["headers"]}
            if not same_origin(headers):
                log.warning("refused a cross-site %s %s (Origin %r, Referer %r)", scope["method"],
                            scope["path"], headers.get("origin"), headers.get("referer"))
                return await _send_json(send, 403, {"error": "cross_site_request",
                                                    "message": CROSS_SITE_MESSAGE})

        async def lax_cookies(message: dict) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [
                    (k, _SAMESITE_NONE.sub(b"SameSite=Lax", v) if k.lower() == b"set-cookie"
                     else v) for k, v in message.get("headers", [])]
            await send(message)

        await self.app(scope, receive, lax_cookies)


_SAMESITE_NONE = re.compile(rb"(?i)samesite\s*=\s*none")


async def _send_json(send: Any, status: int, body: dict) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})
