"""API keys: creation, lookup, revocation, rate limits, quotas and exact usage counts.

A key looks like ``sk-studio-<43 url-safe characters>`` (32 random bytes). It is shown once, when
it is created; the registry stores only its SHA-256 hash (a key has 256 bits of entropy, so a
slow password hash adds nothing) and its first characters, used to find the row and to show the
key in listings. Checking a key finds the rows with that lookup prefix and compares hashes with
:func:`hmac.compare_digest`. Keys are never logged.

Usage (successful images and requests) is counted in the workspace's SQLite registry, each
increment in one transaction, so concurrent requests never lose a count. Rate limits (requests
per minute) and in-flight quota reservations are kept in memory by the serving process.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from studio.errors import StudioError
from studio.workspace import Workspace

log = logging.getLogger(__name__)

KEY_PREFIX = "sk-studio-"
_SECRET_LEN = 43  # secrets.token_urlsafe(32)
LOOKUP_LEN = 8  # characters of the secret stored in clear to find the row
KEY_RE = re.compile(r"^sk-studio-[A-Za-z0-9_-]{43}$")

SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    lookup TEXT NOT NULL,
    hash TEXT NOT NULL UNIQUE,
    admin INTEGER NOT NULL DEFAULT 0,
    rate_limit INTEGER,
    quota INTEGER,
    created REAL NOT NULL,
    revoked REAL,
    last_used REAL,
    images INTEGER NOT NULL DEFAULT 0,
    requests INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS api_keys_lookup ON api_keys(lookup);
"""


class ApiKeyError(StudioError, ValueError):
    """A key-management request the user must change (one sentence)."""


@dataclass(frozen=True)
class ApiKey:
    """A stored key (never the secret itself)."""

    id: int
    name: str
    lookup: str
    admin: bool
    rate_limit: int | None
    quota: int | None
    created: float
    revoked: float | None
    last_used: float | None
    images: int
    requests: int

    @property
    def display(self) -> str:
        """How the key is shown in listings: its prefix and first characters only."""
        return f"{KEY_PREFIX}{self.lookup}..."

    def public(self) -> dict[str, Any]:
        """The fields an API caller may see about a key."""
        return {"id": self.id, "name": self.name, "key": self.display, "admin": self.admin,
                "rate_limit_per_min": self.rate_limit, "quota_images": self.quota,
                "images": self.images, "requests": self.requests,
                "created": self.created, "last_used": self.last_used,
                "revoked": self.revoked is not None}


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def well_formed(key: str | None) -> bool:
    """True when ``key`` has the shape of a studio key (cheap check before any lookup)."""
    return bool(key) and len(key) == len(KEY_PREFIX) + _SECRET_LEN and bool(KEY_RE.match(key))


class RateLimited(Exception):
    """The key is over its rate limit or quota; ``retry_after`` is in seconds (None: never)."""

    def __init__(self, message: str, retry_after: int | None):
        super().__init__(message)
        self.retry_after = retry_after


class KeyStore:
    """API keys of one workspace."""

    def __init__(self, workspace: Workspace):
        self.ws = workspace
        self.ws.ensure_tables(SCHEMA)
        self._lock = threading.Lock()
        self._recent: dict[int, deque[float]] = {}
        self._reserved: dict[int, int] = {}

    # ---- management -------------------------------------------------------------------------
    def create(self, name: str = "", admin: bool = False, rate_limit: int | None = None,
               quota: int | None = None) -> tuple[str, ApiKey]:
        """Create a key; returns (the secret, shown once, and its record)."""
        name = (name or "").strip() or "key"
        if len(name) > 80 or any(ord(c) < 32 for c in name):
            raise ApiKeyError("A key name is 1-80 printable characters.")
        for label, v in (("rate limit", rate_limit), ("quota", quota)):
            if v is not None and v < 1:
                raise ApiKeyError(f"The {label} must be a positive whole number (or left out).")
        secret = secrets.token_urlsafe(32)
        key = KEY_PREFIX + secret
        assert well_formed(key)
        with self.ws.db() as conn:
            cur = conn.execute(
                "INSERT INTO api_keys(name, lookup, hash, admin, rate_limit, quota, created) "
                "VALUES (?,?,?,?,?,?,?)",
                (name, secret[:LOOKUP_LEN], hash_key(key), int(admin), rate_limit, quota,
                 time.time()))
            key_id = cur.lastrowid
        log.info("created API key id=%s name=%s admin=%s", key_id, name, admin)
        return key, self.get(int(key_id))

    def get(self, key_id: int) -> ApiKey:
        with self.ws.db() as conn:
            row = conn.execute("SELECT * FROM api_keys WHERE id=?", (int(key_id),)).fetchone()
        if row is None:
            raise ApiKeyError(f"No API key with id {key_id}; see `python -m studio api-keys list`.")
        return _row(row)

    def list(self) -> list[ApiKey]:
        with self.ws.db() as conn:
            rows = conn.execute("SELECT * FROM api_keys ORDER BY id").fetchall()
        return [_row(r) for r in rows]

    def revoke(self, key_id: int) -> ApiKey:
        key = self.get(key_id)
        if key.revoked is None:
            with self.ws.db() as conn:
                conn.execute("UPDATE api_keys SET revoked=? WHERE id=? AND revoked IS NULL",
                             (time.time(), key.id))
            log.info("revoked API key id=%s", key.id)
        return self.get(key_id)

    # ---- authentication -----------------------------------------------------------------------
    def authenticate(self, key: str | None) -> ApiKey | None:
        """The active key matching ``key``, or None (missing, malformed, unknown or revoked)."""
        if not well_formed(key):
            return None
        assert key is not None
        digest = hash_key(key)
        lookup = key[len(KEY_PREFIX):len(KEY_PREFIX) + LOOKUP_LEN]
        with self.ws.db() as conn:
            rows = conn.execute("SELECT * FROM api_keys WHERE lookup=?", (lookup,)).fetchall()
        found = None
        for r in rows:  # compare every candidate in constant time
            if hmac.compare_digest(r["hash"], digest):
                found = r
        if found is None or found["revoked"] is not None:
            return None
        return _row(found)

    # ---- limits and usage ---------------------------------------------------------------------
    def reserve(self, key: ApiKey, images: int, now: float | None = None) -> None:
        """Admit one request for ``images`` images or raise :class:`RateLimited`.

        Call :meth:`release` afterwards (always), and :meth:`record` when images were made."""
        now = time.time() if now is None else now
        with self._lock:
            if key.rate_limit:
                q = self._recent.setdefault(key.id, deque())
                while q and q[0] <= now - 60:
                    q.popleft()
                if len(q) >= key.rate_limit:
                    retry = max(1, int(q[0] + 60 - now) + 1)
                    raise RateLimited(f"This key is limited to {key.rate_limit} requests per "
                                      f"minute; retry in {retry} s.", retry)
            if key.quota is not None:
                used = self.get(key.id).images + self._reserved.get(key.id, 0)
                if used + images > key.quota:
                    left = max(0, key.quota - used)
                    raise RateLimited(f"This key's quota of {key.quota} images is used up "
                                      f"({left} left, {images} asked).", None)
            if key.rate_limit:
                self._recent[key.id].append(now)
            self._reserved[key.id] = self._reserved.get(key.id, 0) + images

    def release(self, key: ApiKey, images: int) -> None:
        with self._lock:
            left = self._reserved.get(key.id, 0) - images
            if left > 0:
                self._reserved[key.id] = left
            else:
                self._reserved.pop(key.id, None)

    def record(self, key: ApiKey, images: int) -> None:
        """Count one successful request that made ``images`` images (one SQL transaction)."""
        with self.ws.db() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute("UPDATE api_keys SET images = images + ?, requests = requests + 1, "
                             "last_used = ? WHERE id = ?", (int(images), time.time(), key.id))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise


def _row(r) -> ApiKey:
    return ApiKey(id=r["id"], name=r["name"], lookup=r["lookup"], admin=bool(r["admin"]),
                  rate_limit=r["rate_limit"], quota=r["quota"], created=r["created"],
                  revoked=r["revoked"], last_used=r["last_used"], images=r["images"],
                  requests=r["requests"])


# ---- CLI ------------------------------------------------------------------------------------


def add_cli(sub) -> None:
    p = sub.add_parser("api-keys", help="create, list and revoke keys for the HTTP API")
    p.add_argument("--home", help="workspace folder (env STUDIO_HOME)")
    s = p.add_subparsers(dest="action", required=True)
    c = s.add_parser("create", help="create a key (printed once; only its hash is stored)")
    c.add_argument("--name", default="", help="a label for the key (who or what uses it)")
    c.add_argument("--admin", action="store_true", help="may read every key's usage")
    c.add_argument("--rate-limit", type=int, metavar="PER_MIN", help="requests per minute")
    c.add_argument("--quota", type=int, metavar="N", help="total images this key may generate")
    s.add_parser("list", help="list keys with their usage")
    r = s.add_parser("revoke", help="revoke a key (it stops working at once)")
    r.add_argument("id", type=int, help="the key's id (see list)")
    p.set_defaults(func=_cmd)


def _cmd(args) -> int:
    store = KeyStore(Workspace(args.home) if args.home else Workspace())
    if args.action == "create":
        key, rec = store.create(args.name, args.admin, args.rate_limit, args.quota)
        print(key)
        import sys

        print(f"Key id {rec.id} ({rec.name}{', admin' if rec.admin else ''}) created. Store it "
              "now: it is not shown again.", file=sys.stderr)
        return 0
    if args.action == "list":
        keys = store.list()
        if not keys:
            print("No API keys yet: create one with `python -m studio api-keys create`.")
            return 0
        print(f"{'id':>4}  {'key':<22}  {'name':<20}  {'admin':<5}  {'rate/min':>8}  "
              f"{'quota':>7}  {'images':>7}  {'requests':>8}  status")
        for k in keys:
            print(f"{k.id:>4}  {k.display:<22}  {k.name[:20]:<20}  {'yes' if k.admin else 'no':<5}  "
                  f"{k.rate_limit or '-':>8}  {k.quota if k.quota is not None else '-':>7}  "
                  f"{k.images:>7}  {k.requests:>8}  {'revoked' if k.revoked else 'active'}")
        return 0
    rec = store.revoke(args.id)
    print(f"Key id {rec.id} ({rec.name}) is revoked.")
    return 0
