"""The gallery's local vector index: faiss over unit templates, keyed by identity id.

Kinds (``kind="auto"`` picks ``flat`` up to ``approximate_above`` entries, ``ivf`` above):

* ``flat``: ``IndexIDMap2(IndexFlatIP)`` — exact inner product (= cosine on unit vectors); an
  update is ``remove_ids`` + ``add_with_ids`` in place.
* ``ivf``: ``IndexIVFFlat`` (inner product) with ``nlist ≈ √n`` lists trained by k-means on (at
  most ``64·nlist`` randomly sampled) templates, searched with ``nprobe`` lists, and a direct map
  so that ``remove_ids`` works: updates stay in place. It is re-trained when the entry count has
  grown 4× since the last training.
* ``hnsw``: ``IndexIDMap2(IndexHNSWFlat)`` (``M=32``, ``efSearch``) — fast queries, but an HNSW
  graph cannot delete, so changing or removing an entry rebuilds the graph from the stored vectors.

Persistence (:meth:`TemplateIndex.save`): the serialised faiss index, the kind and the gallery
``version`` it reflects go into one ``.npz`` written to a temporary file, fsynced and renamed over
the old one, so a reader sees the old index or the new one, never half of one. The gallery compares
that version with SQLite's on open and rebuilds the index when they differ.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from fuseface.errors import ConfigError, DataError

KINDS = ("auto", "flat", "ivf", "hnsw")
#: Entry count above which ``kind="auto"`` switches from the exact flat index to IVF.
APPROXIMATE_ABOVE = 200_000
#: IVF lists searched per query: ``None`` = half of the lists (at least 32). On structureless
#: synthetic templates (benchmarks/gallery_speed.py) recall@1 >= 0.99 needed 128 of 316 lists at
#: 100k x 512 and 512 of 1,000 at 1M x 512 (a quarter gave 0.985 there); HNSW search depth below.
DEFAULT_NPROBE: int | None = None
DEFAULT_EF_SEARCH = 128
#: k-means training points per IVF list (faiss warns below 39).
TRAIN_POINTS_PER_LIST = 64


def _faiss():
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - faiss is a declared extra
        raise ConfigError("the gallery index needs faiss: pip install 'fuseface[faiss]'") from exc
    return faiss


class TemplateIndex:
    """Unit templates keyed by int64 ids; ``upsert``, ``remove``, ``search``, ``save``/``load``."""

    def __init__(
        self,
        dim: int,
        kind: str = "auto",
        approximate_above: int = APPROXIMATE_ABOVE,
        nprobe: int | None = DEFAULT_NPROBE,
        ef_search: int = DEFAULT_EF_SEARCH,
    ) -> None:
        if kind not in KINDS:
            raise ConfigError(f"index kind must be one of {', '.join(KINDS)}, got {kind!r}")
        self.dim = dim
        self.requested = kind
        self.approximate_above = approximate_above
        self.nprobe = nprobe
        self.ef_search = ef_search
        self.version = 0
        self._trained_at = 0
        self.kind = "flat" if kind == "auto" else kind
        self.index = self._empty(self.kind, None)

    # -- construction -------------------------------------------------------------------------
    def _empty(self, kind: str, train: np.ndarray | None):
        faiss = _faiss()
        if kind == "flat":
            return faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))
        if kind == "hnsw":
            inner = faiss.IndexHNSWFlat(self.dim, 32, faiss.METRIC_INNER_PRODUCT)
            inner.hnsw.efSearch = self.ef_search
            return faiss.IndexIDMap2(inner)
        n = 0 if train is None else len(train)
        nlist = max(1, min(int(math.sqrt(max(n, 1))), max(1, n // 39)))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(self.dim), self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        if train is not None and n:
            sample = train
            if n > TRAIN_POINTS_PER_LIST * nlist:  # k-means on a fixed random sample bounds the build time
                rows = np.random.default_rng(0).choice(n, TRAIN_POINTS_PER_LIST * nlist, replace=False)
                sample = train[np.sort(rows)]
            index.train(np.ascontiguousarray(sample, dtype=np.float32))
        index.set_direct_map_type(faiss.DirectMap.Hashtable)
        index.nprobe = self._nprobe(nlist)
        self._trained_at = n
        return index

    def _nprobe(self, nlist: int) -> int:
        return min(nlist, self.nprobe if self.nprobe is not None else max(32, nlist // 2))

    def build(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Replace the content with ``vectors`` (n, D) (L2-normalised here) under ``ids`` (n,)."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        vecs = _unit_rows(vectors, self.dim)
        kind = self.requested
        if kind == "auto":
            kind = "ivf" if len(ids) > self.approximate_above else "flat"
        self.kind = kind
        self.index = self._empty(kind, vecs if kind == "ivf" else None)
        if len(ids):
            self.index.add_with_ids(vecs, ids)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def ids(self) -> np.ndarray:
        """The stored ids (sorted)."""
        faiss = _faiss()
        if self.kind == "ivf":
            invlists = self.index.invlists
            parts = [
                faiss.rev_swig_ptr(invlists.get_ids(i), invlists.list_size(i)).copy()
                for i in range(self.index.nlist)
                if invlists.list_size(i)
            ]
            return np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64)
        return np.sort(faiss.vector_to_array(self.index.id_map).astype(np.int64))

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        """The stored unit vectors of ``ids`` (n, D)."""
        return (
            np.stack([self.index.reconstruct(int(i)) for i in ids]) if len(ids) else np.zeros((0, self.dim), np.float32)
        )

    # -- updates ------------------------------------------------------------------------------
    def upsert(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Insert or replace entries (the index is rebuilt when its kind cannot update in place)."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if len(ids) == 0:
            return
        vecs = _unit_rows(vectors, self.dim)
        total_after = len(self) + len(ids)
        wants_ivf = self.requested == "auto" and total_after > self.approximate_above and self.kind == "flat"
        regrow = self.kind == "ivf" and total_after > 4 * max(self._trained_at, 1)
        if self.kind == "hnsw" or wants_ivf or regrow:
            keep = np.setdiff1d(self.ids(), ids)
            self.build(np.concatenate([keep, ids]), np.concatenate([self.vectors(keep), vecs]))
            return
        self.remove(ids)
        self.index.add_with_ids(vecs, ids)

    def remove(self, ids: np.ndarray) -> None:
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if len(ids) == 0 or len(self) == 0:
            return
        if self.kind == "hnsw":
            keep = np.setdiff1d(self.ids(), ids)
            self.build(keep, self.vectors(keep))
            return
        self.index.remove_ids(_faiss().IDSelectorArray(len(ids), _faiss().swig_ptr(ids)))

    # -- queries ------------------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(scores (Q, k), ids (Q, k))`` best first; missing neighbours have id -1, score -inf."""
        q = _unit_rows(queries, self.dim)
        k = max(1, min(k, len(self)))
        if len(self) == 0:
            return np.full((len(q), 1), -np.inf, np.float32), np.full((len(q), 1), -1, np.int64)
        scores, ids = self.index.search(q, k)
        scores = np.where(ids < 0, -np.inf, scores).astype(np.float32)
        return scores, ids

    # -- persistence --------------------------------------------------------------------------
    def save(self, path: str | Path, version: int) -> None:
        """Write atomically (temp file, fsync, rename) together with the gallery ``version``."""
        faiss = _faiss()
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            np.savez(
                f,
                index=faiss.serialize_index(self.index),
                kind=np.array(self.kind),
                version=np.array(version, dtype=np.int64),
                trained_at=np.array(self._trained_at, dtype=np.int64),
            )
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        self.version = version

    def load(self, path: str | Path) -> bool:
        """Read a saved index; ``False`` (content unchanged) when the file is missing or unreadable."""
        faiss = _faiss()
        try:
            with np.load(path, allow_pickle=False) as data:
                index = faiss.deserialize_index(data["index"])
                kind, version, trained = str(data["kind"]), int(data["version"]), int(data["trained_at"])
        except (OSError, ValueError, KeyError, RuntimeError):
            return False
        if index.d != self.dim or kind not in KINDS:
            return False
        if kind == "ivf":
            index.set_direct_map_type(faiss.DirectMap.Hashtable)
            index.nprobe = self._nprobe(index.nlist)
        self.index, self.kind, self.version, self._trained_at = index, kind, version, trained
        return True


def _unit_rows(x: np.ndarray, dim: int) -> np.ndarray:
    x = np.atleast_2d(np.asarray(x, dtype=np.float32))
    if x.shape[1] != dim:
        raise DataError(f"the index holds {dim}-d templates, got {x.shape[1]}-d vectors")
    if not np.isfinite(x).all():
        raise DataError("NaN/inf vectors cannot be indexed or searched")
    return np.ascontiguousarray(x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12))


class LocalBackend:
    """The gallery's local vector store: a :class:`TemplateIndex` persisted at ``path``."""

    name = "local"

    def __init__(self, path: str | Path, dim: int, kind: str = "auto", **index_options: int) -> None:
        self.path = Path(path)
        self.index = TemplateIndex(dim, kind=kind, **index_options)

    def matches(self, store, full: bool = False) -> bool:
        """Does the index reflect the store? Version and size; with ``full`` every id and vector."""
        ids, templates, _, _ = store.templates()
        if self.index.version != store.version or len(self.index) != len(ids):
            return False
        if not full:
            return True
        if not np.array_equal(self.index.ids(), np.sort(ids)):
            return False
        return bool(np.allclose(self.index.vectors(ids), _unit_rows(templates, self.index.dim), atol=1e-5))

    def sync(self, store) -> bool:
        """Load the saved index; rebuild it from the store when it is missing or disagrees. Returns
        whether it was rebuilt."""
        loaded = self.path.exists() and self.index.load(self.path)
        if loaded and self.matches(store):
            return False
        ids, templates, _, _ = store.templates()
        self.index.build(ids, templates)
        self.index.save(self.path, store.version)
        return True

    def apply(
        self, version: int, upserts: tuple[np.ndarray, np.ndarray, np.ndarray] | None, deletes: np.ndarray | None
    ) -> None:
        """Apply one committed change and persist the index with the store ``version`` it reflects."""
        if deletes is not None:
            self.index.remove(deletes)
        if upserts is not None:
            self.index.upsert(upserts[0], upserts[2])
        self.index.save(self.path, version)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.index.search(queries, k)

    def close(self) -> None:
        """Nothing to release (every change is already on disk)."""
