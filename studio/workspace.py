"""Where things live on disk, and the embedded SQLite registry.

One data folder, ``STUDIO_HOME`` (default ``~/sdxl-lora-studio``), holds everything the app
makes::

    STUDIO_HOME/
      registry.sqlite     datasets, training jobs, API keys (embedded; no server)
      datasets/NAME/      prepared datasets (imagefolder layout)
      runs/NAME/          training runs
      gallery/            generated images (PNG with metadata)
      exports/            zips made for download
      models/             demo models built on this machine
      tmp/                the web server's upload/temp folder
      presets/            training presets saved from the Train tab (studio.config lists them)

Names that come from users are checked by :func:`safe_name` and joined with :func:`safe_join`,
so a user-supplied path never escapes the workspace.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from studio.errors import StudioError

log = logging.getLogger(__name__)

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$")

SUBDIRS = ("datasets", "runs", "gallery", "exports", "models", "tmp")


class WorkspaceError(StudioError, ValueError):
    """A user-supplied name or path that is not allowed."""


def default_home() -> Path:
    env = os.environ.get("STUDIO_HOME")
    if env:
        return Path(env).expanduser()
    return Path.home() / "sdxl-lora-studio"


def user_presets_dir() -> Path:
    """STUDIO_HOME/presets: the training presets saved from the Train tab."""
    return default_home() / "presets"


def safe_name(name: str, what: str = "name") -> str:
    """Return ``name`` if it is a safe single path component, else raise WorkspaceError."""
    name = (name or "").strip()
    if not _NAME_RE.match(name) or name in {".", ".."} or ".." in name:
        raise WorkspaceError(
            f"Invalid {what} {name!r}: use 1-80 letters, digits, '.', '_' or '-', starting with a "
            "letter or digit."
        )
    return name


def safe_join(root: Path, *parts: str) -> Path:
    """Join untrusted parts under ``root``; refuse anything that resolves outside it."""
    root = Path(root).resolve()
    target = root.joinpath(*parts).resolve()
    if target != root and not target.is_relative_to(root):
        raise WorkspaceError(f"Path {'/'.join(parts)!r} is outside the workspace.")
    return target


def slugify(text: str, default: str = "item") -> str:
    s = re.sub(r"[^A-Za-z0-9._-]+", "-", text.strip()).strip("-.")[:60]
    return s or default


# Each entry is applied once, in order; the index is the schema version.
_MIGRATIONS: list[str] = [
    """
    CREATE TABLE IF NOT EXISTS datasets (
        name TEXT PRIMARY KEY,
        path TEXT NOT NULL,
        created REAL NOT NULL,
        updated REAL NOT NULL,
        info TEXT NOT NULL DEFAULT '{}'
    );
    CREATE TABLE IF NOT EXISTS runs (
        name TEXT PRIMARY KEY,
        path TEXT NOT NULL,
        created REAL NOT NULL,
        updated REAL NOT NULL,
        info TEXT NOT NULL DEFAULT '{}'
    );
    """,
]


class Workspace:
    """The on-disk home of the studio. Cheap to construct; creates folders on first use."""

    def __init__(self, home: str | os.PathLike | None = None):
        self.home = Path(home).expanduser() if home else default_home()
        self.home.mkdir(parents=True, exist_ok=True)
        for sub in SUBDIRS:
            (self.home / sub).mkdir(exist_ok=True)
        self.db_path = self.home / "registry.sqlite"
        self._lock = threading.RLock()
        self._ensured: set[int] = set()
        self._migrate()

    # ---- folders -------------------------------------------------------------------------
    @property
    def datasets_dir(self) -> Path:
        return self.home / "datasets"

    @property
    def runs_dir(self) -> Path:
        return self.home / "runs"

    @property
    def gallery_dir(self) -> Path:
        return self.home / "gallery"

    @property
    def exports_dir(self) -> Path:
        return self.home / "exports"

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def tmp_dir(self) -> Path:
        return self.home / "tmp"

    def dataset_path(self, name: str) -> Path:
        return safe_join(self.datasets_dir, safe_name(name, "dataset name"))

    def run_path(self, name: str) -> Path:
        return safe_join(self.runs_dir, safe_name(name, "run name"))

    # ---- registry ------------------------------------------------------------------------
    @contextmanager
    def db(self) -> Iterator[sqlite3.Connection]:
        """A short-lived connection (safe across threads and processes; WAL, busy timeout)."""
        conn = sqlite3.connect(self.db_path, timeout=30, isolation_level=None)
        conn.row_factory = sqlite3.Row
        try:
            conn.execute("PRAGMA busy_timeout=30000")
            conn.execute("PRAGMA foreign_keys=ON")
            yield conn
        finally:
            conn.close()

    def _migrate(self) -> None:
        with self._lock, self.db() as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("BEGIN IMMEDIATE")
            try:
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                for i, script in enumerate(_MIGRATIONS[version:], start=version):
                    for stmt in [s for s in script.split(";") if s.strip()]:
                        conn.execute(stmt)
                    conn.execute(f"PRAGMA user_version={i + 1}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def ensure_tables(self, script: str) -> None:
        """Create a feature's tables (``CREATE TABLE IF NOT EXISTS ...;`` statements), once per
        workspace object. Features own their tables; the core schema lives in _MIGRATIONS."""
        key = hash(script)
        if key in self._ensured:
            return
        with self._lock, self.db() as conn:
            for stmt in [s for s in script.split(";") if s.strip()]:
                conn.execute(stmt)
        self._ensured.add(key)

    def _upsert(self, table: str, name: str, path: Path, info: dict[str, Any]) -> None:
        now = time.time()
        with self.db() as conn:
            conn.execute(
                f"INSERT INTO {table}(name, path, created, updated, info) VALUES (?,?,?,?,?) "
                "ON CONFLICT(name) DO UPDATE SET path=excluded.path, updated=excluded.updated, "
                "info=excluded.info",
                (name, str(path), now, now, json.dumps(info, default=str)),
            )

    def registered(self, table: str) -> list[dict[str, Any]]:
        """The raw registry rows of ``table`` ("datasets" or "runs"), newest first, whether or
        not their folder still exists. The dataset list is :func:`studio.dataset.store.
        list_datasets`, which reconciles these rows with the disk."""
        if table not in ("datasets", "runs"):
            raise ValueError(f"unknown registry table {table!r}")
        with self.db() as conn:
            rows = conn.execute(f"SELECT * FROM {table} ORDER BY updated DESC").fetchall()
        out = []
        for r in rows:
            d = dict(r)
            d["info"] = json.loads(d["info"] or "{}")
            out.append(d)
        return out

    def register_dataset(self, name: str, path: Path, info: dict[str, Any] | None = None) -> None:
        self._upsert("datasets", safe_name(name, "dataset name"), Path(path), info or {})

    def register_run(self, name: str, path: Path, info: dict[str, Any] | None = None) -> None:
        self._upsert("runs", safe_name(name, "run name"), Path(path), info or {})

    def unregister_run(self, name: str) -> None:
        """Forget a run in the registry (its folder was deleted)."""
        with self.db() as conn:
            conn.execute("DELETE FROM runs WHERE name=?", (name,))

    def list_runs(self) -> list[dict[str, Any]]:
        """Registered runs plus run folders found on disk (e.g. made by the CLI elsewhere)."""
        runs = {r["name"]: r for r in self.registered("runs") if Path(r["path"]).is_dir()}
        for p in sorted(self.runs_dir.iterdir()) if self.runs_dir.is_dir() else []:
            if p.is_dir() and p.name not in runs and not p.name.startswith(".") \
                    and (p / "config.yaml").exists():
                st = p.stat()
                runs[p.name] = {"name": p.name, "path": str(p), "created": st.st_ctime,
                                "updated": st.st_mtime, "info": {}}
        return sorted(runs.values(), key=lambda r: r["updated"], reverse=True)
