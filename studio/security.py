"""Secure defaults for serving the studio: who may log in, where it may listen, Pillow's limits.

No Gradio import: :mod:`studio.ui.server` and ``app.py`` apply these.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import warnings
from pathlib import Path

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
