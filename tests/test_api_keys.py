"""API keys: format, hashing, constant-time lookup, revocation, limits, exact counting, CLI."""

from __future__ import annotations

import hashlib
import sqlite3
import subprocess
import sys
import threading

import pytest

from studio.api.keys import KEY_PREFIX, ApiKeyError, KeyStore, RateLimited, well_formed


@pytest.fixture()
def store(workspace) -> KeyStore:
    return KeyStore(workspace)


def test_key_shown_once_only_hash_stored(store, workspace):
    key, rec = store.create("alice")
    assert key.startswith(KEY_PREFIX) and well_formed(key)
    raw = sqlite3.connect(workspace.db_path).execute(
        "SELECT * FROM api_keys").fetchall()
    dump = repr(raw)
    assert key not in dump and key[len(KEY_PREFIX):] not in dump
    assert hashlib.sha256(key.encode()).hexdigest() in dump
    assert rec.display == key[:len(KEY_PREFIX) + 8] + "..."
    assert store.authenticate(key).id == rec.id


def test_missing_malformed_wrong_revoked_keys_are_refused(store):
    key, rec = store.create("bob")
    assert store.authenticate(None) is None
    assert store.authenticate("") is None
    assert store.authenticate("Bearer " + key) is None
    assert store.authenticate(key + "x") is None  # malformed: wrong length
    assert store.authenticate("sk-other-" + key[9:]) is None
    wrong = key[:-1] + ("A" if key[-1] != "A" else "B")  # same lookup prefix, wrong secret
    assert well_formed(wrong) and store.authenticate(wrong) is None
    store.revoke(rec.id)
    assert store.authenticate(key) is None
    assert store.get(rec.id).revoked is not None


def test_create_rejects_bad_limits(store):
    with pytest.raises(ApiKeyError, match="rate limit"):
        store.create("x", rate_limit=0)
    with pytest.raises(ApiKeyError, match="quota"):
        store.create("x", quota=-1)
    with pytest.raises(ApiKeyError, match="No API key with id 99"):
        store.revoke(99)


def test_rate_limit_per_minute(store):
    _, rec = store.create("r", rate_limit=2)
    store.reserve(rec, 1, now=1000.0)
    store.release(rec, 1)
    store.reserve(rec, 1, now=1001.0)
    store.release(rec, 1)
    with pytest.raises(RateLimited) as err:
        store.reserve(rec, 1, now=1030.0)
    assert err.value.retry_after == 31
    store.reserve(rec, 1, now=1060.5)  # the first request left the window


def test_quota_counts_in_flight_reservations(store):
    _, rec = store.create("q", quota=3)
    store.reserve(rec, 2)
    with pytest.raises(RateLimited, match="quota of 3 images"):
        store.reserve(rec, 2)  # 2 in flight + 2 > 3
    store.record(rec, 2)
    store.release(rec, 2)
    store.reserve(rec, 1)
    store.record(rec, 1)
    store.release(rec, 1)
    with pytest.raises(RateLimited) as err:
        store.reserve(rec, 1)
    assert err.value.retry_after is None
    assert store.get(rec.id).images == 3


def test_usage_is_exact_under_concurrency(workspace):
    store = KeyStore(workspace)
    _, rec = store.create("c")
    stores = [KeyStore(workspace) for _ in range(8)]  # separate connections, as in threads

    def work(s: KeyStore) -> None:
        for _ in range(25):
            s.record(rec, 2)

    threads = [threading.Thread(target=work, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    got = store.get(rec.id)
    assert (got.images, got.requests) == (8 * 25 * 2, 8 * 25)


def test_cli_create_list_revoke(home):
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "studio", "api-keys", *args],
                              capture_output=True, text=True, timeout=60)

    r = cli("create", "--name", "ci", "--admin", "--rate-limit", "30", "--quota", "100")
    assert r.returncode == 0, r.stderr
    key = r.stdout.strip()
    assert well_formed(key) and "not shown again" in r.stderr
    listing = cli("list")
    assert listing.returncode == 0
    assert key not in listing.stdout and key[:18] in listing.stdout and "active" in listing.stdout
    assert cli("revoke", "1").returncode == 0
    assert "revoked" in cli("list").stdout
    bad = cli("revoke", "7")
    assert bad.returncode == 2 and bad.stderr.strip() == \
        "error: No API key with id 7; see `python -m studio api-keys list`."
