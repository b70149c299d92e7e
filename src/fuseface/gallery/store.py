"""The gallery's source of truth: one SQLite file (``gallery.sqlite``) in the gallery directory.

Tables:

* ``meta``: key/value settings fixed at creation (model fingerprint, architecture, embedding size,
  alignment, fusion, threshold, backend) and ``version``, a counter increased by every change;
* ``identities``: name, fusion state (npz blob of the summed contributions), current template
  (float32 blob) and its ``template_version``;
* ``images``: one row per enrolled photo: identity, SHA-256 of its content, source name, the
  un-normalised embedding, its norm, CAFace styles (when the fusion uses them), detector score,
  the model fingerprint and alignment that produced it;
* ``template_versions``: the history of every identity's template (version, photo count, reason).

Every change runs in one ``BEGIN IMMEDIATE`` transaction (:meth:`GalleryStore.transaction`), so a
crash leaves either the whole change or none of it. The vector index (``index.py`` / ``milvus.py``)
is derived data: it records the ``version`` it reflects and is rebuilt from here when it disagrees.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fuseface.errors import DataError

SCHEMA_VERSION = "1"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS identities (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    created REAL NOT NULL,
    state BLOB NOT NULL,
    template BLOB NOT NULL,
    template_version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS images (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    identity_id INTEGER NOT NULL REFERENCES identities(id) ON DELETE CASCADE,
    sha256 TEXT NOT NULL,
    source TEXT NOT NULL,
    feature BLOB NOT NULL,
    norm REAL NOT NULL,
    styles BLOB,
    det_score REAL,
    model_id TEXT NOT NULL,
    alignment TEXT NOT NULL,
    added REAL NOT NULL,
    UNIQUE (identity_id, sha256)
);
CREATE INDEX IF NOT EXISTS images_identity ON images(identity_id);
CREATE TABLE IF NOT EXISTS template_versions (
    identity_id INTEGER NOT NULL,
    version INTEGER NOT NULL,
    n_images INTEGER NOT NULL,
    reason TEXT NOT NULL,
    changed REAL NOT NULL,
    PRIMARY KEY (identity_id, version)
);
"""


@dataclass
class ImageRow:
    """One enrolled photo as stored."""

    id: int
    identity_id: int
    sha256: str
    source: str
    feature: np.ndarray
    norm: float
    styles: np.ndarray | None
    det_score: float | None


@dataclass
class IdentityRow:
    id: int
    name: str
    state: bytes
    template: np.ndarray
    template_version: int


class GalleryStore:
    """SQLite access for one gallery directory; thread-safe (one connection behind a lock)."""

    FILENAME = "gallery.sqlite"

    def __init__(self, directory: str | Path, create: bool = False) -> None:
        self.directory = Path(directory)
        self.path = self.directory / self.FILENAME
        if create:
            self.directory.mkdir(parents=True, exist_ok=True)
            if self.path.exists():
                raise DataError(f"{self.path}: a gallery already exists here")
        elif not self.path.is_file():
            raise DataError(
                f"{self.directory}: not a gallery (no {self.FILENAME}); create one with `fuseface gallery create`"
            )
        self.lock = threading.RLock()
        self.conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30.0)
        self.conn.execute("PRAGMA foreign_keys = ON")
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute("PRAGMA synchronous = FULL")
        if create:
            self.conn.executescript("BEGIN;" + _SCHEMA + "COMMIT;")

    def close(self) -> None:
        with self.lock:
            self.conn.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Cursor]:
        """One atomic change: ``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on any exception)."""
        with self.lock:
            cur = self.conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                yield cur
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            cur.execute("COMMIT")

    # -- meta ----------------------------------------------------------------------------------
    def set_meta(self, cur: sqlite3.Cursor, values: dict[str, Any]) -> None:
        cur.executemany(
            "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", [(k, str(v)) for k, v in values.items()]
        )

    def meta(self) -> dict[str, str]:
        with self.lock:
            return dict(self.conn.execute("SELECT key, value FROM meta").fetchall())

    @property
    def version(self) -> int:
        with self.lock:
            row = self.conn.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()
        return int(row[0]) if row else 0

    def bump_version(self, cur: sqlite3.Cursor) -> int:
        row = cur.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()
        version = (int(row[0]) if row else 0) + 1
        cur.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('version', ?)", (str(version),))
        return version

    # -- identities ----------------------------------------------------------------------------
    def identity(self, name: str, cur: sqlite3.Cursor | None = None) -> IdentityRow | None:
        with self.lock:
            row = (
                (cur or self.conn)
                .execute("SELECT id, name, state, template, template_version FROM identities WHERE name = ?", (name,))
                .fetchone()
            )
        return None if row is None else IdentityRow(row[0], row[1], row[2], np.frombuffer(row[3], np.float32), row[4])

    def identities(self) -> list[tuple[int, str, int, int]]:
        """``(id, name, n_images, template_version)`` of every identity, by name."""
        with self.lock:
            return self.conn.execute(
                "SELECT i.id, i.name, COUNT(m.id), i.template_version FROM identities i "
                "LEFT JOIN images m ON m.identity_id = i.id GROUP BY i.id ORDER BY i.name"
            ).fetchall()

    def templates(self) -> tuple[np.ndarray, np.ndarray, dict[int, str], dict[int, int]]:
        """``(ids (n,) int64, templates (n, D) float32, id -> name, id -> template_version)``."""
        with self.lock:
            rows = self.conn.execute(
                "SELECT id, name, template, template_version FROM identities ORDER BY id"
            ).fetchall()
        ids = np.array([r[0] for r in rows], dtype=np.int64)
        dim = int(self.meta().get("dim", "0"))
        mat = np.stack([np.frombuffer(r[2], np.float32) for r in rows]) if rows else np.zeros((0, dim), np.float32)
        return ids, mat, {r[0]: r[1] for r in rows}, {r[0]: r[3] for r in rows}

    def names(self, ids: list[int]) -> dict[int, str]:
        if not ids:
            return {}
        with self.lock:
            marks = ",".join("?" * len(ids))
            return dict(self.conn.execute(f"SELECT id, name FROM identities WHERE id IN ({marks})", ids).fetchall())

    def upsert_identity(
        self, cur: sqlite3.Cursor, name: str, state: bytes, template: np.ndarray, n_images: int, reason: str
    ) -> tuple[int, int]:
        """Write an identity's new state and template; returns ``(id, template_version)``."""
        now = time.time()
        blob = np.ascontiguousarray(template, dtype=np.float32).tobytes()
        row = cur.execute("SELECT id, template_version FROM identities WHERE name = ?", (name,)).fetchone()
        if row is None:
            cur.execute(
                "INSERT INTO identities(name, created, state, template, template_version) VALUES (?, ?, ?, ?, 1)",
                (name, now, state, blob),
            )
            ident, version = int(cur.lastrowid or 0), 1
        else:
            ident, version = int(row[0]), int(row[1]) + 1
            cur.execute(
                "UPDATE identities SET state = ?, template = ?, template_version = ? WHERE id = ?",
                (state, blob, version, ident),
            )
        cur.execute(
            "INSERT INTO template_versions(identity_id, version, n_images, reason, changed) VALUES (?, ?, ?, ?, ?)",
            (ident, version, n_images, reason, now),
        )
        return ident, version

    def delete_identity(self, cur: sqlite3.Cursor, ident: int) -> None:
        cur.execute("DELETE FROM images WHERE identity_id = ?", (ident,))
        cur.execute("DELETE FROM template_versions WHERE identity_id = ?", (ident,))
        cur.execute("DELETE FROM identities WHERE id = ?", (ident,))

    def template_history(self, name: str) -> list[tuple[int, int, str]]:
        """``(version, n_images, reason)`` of an identity's templates, oldest first."""
        with self.lock:
            return self.conn.execute(
                "SELECT v.version, v.n_images, v.reason FROM template_versions v "
                "JOIN identities i ON i.id = v.identity_id WHERE i.name = ? ORDER BY v.version",
                (name,),
            ).fetchall()

    # -- images --------------------------------------------------------------------------------
    def insert_image(
        self,
        cur: sqlite3.Cursor,
        ident: int,
        sha256: str,
        source: str,
        feature: np.ndarray,
        styles: np.ndarray | None,
        det_score: float | None,
        model_id: str,
        alignment: str,
    ) -> int:
        feat = np.ascontiguousarray(feature, dtype=np.float32)
        cur.execute(
            "INSERT INTO images(identity_id, sha256, source, feature, norm, styles, det_score, model_id, "
            "alignment, added) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                ident,
                sha256,
                source,
                feat.tobytes(),
                float(np.linalg.norm(feat)),
                None if styles is None else np.ascontiguousarray(styles, dtype=np.float32).tobytes(),
                det_score,
                model_id,
                alignment,
                time.time(),
            ),
        )
        return int(cur.lastrowid or 0)

    def has_image(self, cur: sqlite3.Cursor, ident: int, sha256: str) -> bool:
        return (
            cur.execute("SELECT 1 FROM images WHERE identity_id = ? AND sha256 = ?", (ident, sha256)).fetchone()
            is not None
        )

    def images(self, ident: int | None = None, cur: sqlite3.Cursor | None = None) -> list[ImageRow]:
        """The stored photos of one identity (or all), in insertion order."""
        meta = self.meta()
        channels = int(meta.get("style_channels", "0"))
        sql = "SELECT id, identity_id, sha256, source, feature, norm, styles, det_score FROM images"
        args: tuple[Any, ...] = ()
        if ident is not None:
            sql, args = sql + " WHERE identity_id = ?", (ident,)
        with self.lock:
            rows = (cur or self.conn).execute(sql + " ORDER BY id", args).fetchall()
        return [
            ImageRow(
                r[0],
                r[1],
                r[2],
                r[3],
                np.frombuffer(r[4], np.float32),
                r[5],
                None if r[6] is None else np.frombuffer(r[6], np.float32).reshape(channels, 2),
                r[7],
            )
            for r in rows
        ]

    def delete_images(self, cur: sqlite3.Cursor, image_ids: list[int]) -> None:
        cur.executemany("DELETE FROM images WHERE id = ?", [(i,) for i in image_ids])
