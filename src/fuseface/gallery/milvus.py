"""The gallery's Milvus backend: identity templates in a Milvus collection, SQLite still the truth.

The collection has one entity per identity: ``id`` (int64, the SQLite identity id, primary key),
``vector`` (the unit template, metric ``IP`` = cosine) and ``version`` (the identity's template
version). Milvus replaces only the vector index; enrolment, fusion state and the photos stay in the
gallery's SQLite file, so both backends share one gallery implementation.

``uri`` selects the server: a path ending in ``.db`` starts **milvus-lite** (embedded Milvus, the
``milvus-lite`` pip package: since version 3 a pure-Python engine serving gRPC on 127.0.0.1 from a
thread of this process, holding a lock on the file until :meth:`MilvusBackend.close`);
``http://host:19530`` (with ``token`` ``user:password`` or an API key) a Milvus standalone or
cluster, or Zilliz Cloud — the same code.

Consistency: a change is committed to SQLite first, then upserted/deleted here. On open,
:meth:`MilvusBackend.sync` reads every ``(id, version)`` from the collection and repairs what
disagrees with SQLite (missing or stale entities upserted, extra ones deleted), so a crash between
the two writes is repaired on the next open. The collection is created with ``Strong``
consistency, so a search sees every write acknowledged before it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fuseface.errors import ConfigError


class MilvusBackend:
    """Templates in a Milvus collection (see the module docstring)."""

    name = "milvus"

    def __init__(self, uri: str, collection: str, dim: int, token: str | None = None) -> None:
        try:
            from pymilvus import MilvusClient
        except ImportError as exc:
            raise ConfigError(
                "the milvus backend needs pymilvus (and milvus-lite for a local .db): pip install 'fuseface[milvus]'"
            ) from exc
        self.uri = uri
        self.collection = collection
        self.dim = dim
        self.client = MilvusClient(uri=uri, token=token or "")
        if not self.client.has_collection(collection):
            self.client.create_collection(
                collection, dimension=dim, metric_type="IP", id_type="int", auto_id=False, consistency_level="Strong"
            )
        self.client.load_collection(collection)  # a reopened collection starts released

    def _entities(self, with_vectors: bool = False) -> dict[int, dict[str, Any]]:
        fields = ["version", "vector"] if with_vectors else ["version"]
        out: dict[int, dict[str, Any]] = {}
        iterator = self.client.query_iterator(self.collection, batch_size=4096, filter="id >= 0", output_fields=fields)
        try:
            while True:
                batch = iterator.next()
                if not batch:
                    break
                for row in batch:
                    out[int(row["id"])] = row
        finally:
            iterator.close()
        return out

    def matches(self, store: Any, full: bool = False) -> bool:
        """Does the collection hold exactly the store's templates (ids, versions; ``full``: vectors)?"""
        ids, templates, _, versions = store.templates()
        found = self._entities(with_vectors=full)
        if {int(i): versions[int(i)] for i in ids} != {i: int(r["version"]) for i, r in found.items()}:
            return False
        if full and len(ids):
            got = np.stack([np.asarray(found[int(i)]["vector"], np.float32) for i in ids])
            unit = templates / np.maximum(np.linalg.norm(templates, axis=1, keepdims=True), 1e-12)
            return bool(np.allclose(got, unit, atol=1e-5))
        return True

    def sync(self, store: Any) -> bool:
        """Repair the collection from the store; returns whether anything had to change."""
        ids, templates, _, versions = store.templates()
        found = {i: int(r["version"]) for i, r in self._entities().items()}
        want = {int(i): versions[int(i)] for i in ids}
        stale = [j for j, i in enumerate(ids) if found.get(int(i)) != want[int(i)]]
        extra = sorted(set(found) - set(want))
        if extra:
            self.client.delete(self.collection, ids=extra)
        if stale:
            sel = np.array(stale)
            self._upsert(ids[sel], np.array([want[int(i)] for i in ids[sel]]), templates[sel])
        return bool(stale or extra)

    def _upsert(self, ids: np.ndarray, versions: np.ndarray, vectors: np.ndarray) -> None:
        unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        rows = [
            {"id": int(i), "version": int(v), "vector": vec.astype(np.float32).tolist()}
            for i, v, vec in zip(ids, versions, unit, strict=True)
        ]
        for start in range(0, len(rows), 2048):
            self.client.upsert(self.collection, rows[start : start + 2048])

    def apply(
        self, version: int, upserts: tuple[np.ndarray, np.ndarray, np.ndarray] | None, deletes: np.ndarray | None
    ) -> None:
        """Apply one committed change (``version`` is the store's; per-entity versions are kept)."""
        if deletes is not None and len(deletes):
            self.client.delete(self.collection, ids=[int(i) for i in deletes])
        if upserts is not None:
            self._upsert(*upserts)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = np.atleast_2d(np.asarray(queries, np.float32))
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        hits = self.client.search(
            self.collection, data=q.tolist(), limit=max(1, k), search_params={"metric_type": "IP"}
        )
        width = max(1, max((len(h) for h in hits), default=1))
        scores = np.full((len(q), width), -np.inf, np.float32)
        ids = np.full((len(q), width), -1, np.int64)
        for r, row in enumerate(hits):
            for c, hit in enumerate(row):
                scores[r, c], ids[r, c] = float(hit["distance"]), int(hit["id"])
        return scores, ids

    def close(self) -> None:
        """Close the client; for milvus-lite also stop its in-process server, which holds the file lock."""
        self.client.close()
        if self.is_lite:
            from milvus_lite.server_manager import server_manager_instance

            server_manager_instance.release_server(self.uri)

    @property
    def is_lite(self) -> bool:
        return self.uri.endswith(".db") and "://" not in self.uri
