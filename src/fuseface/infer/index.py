"""Nearest-neighbour search over face embeddings: exact numpy, or faiss when it is installed.

Both indexes L2-normalise what they store and what they are asked, so the score is the cosine
similarity (the inner product of unit vectors, as in ArcFace verification). ``ExactIndex`` is a
matrix product plus ``argpartition`` — exact, fine up to a few hundred thousand faces;
``FaissIndex`` wraps ``faiss.IndexFlatIP`` (also exact, faster and multi-threaded). Use
:func:`create_index` to get faiss when importable and numpy otherwise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fuseface.errors import DataError
from fuseface.ops import l2_normalize  # the one owner; importable from here as before


def _unit_rows(x: np.ndarray) -> np.ndarray:
    """float32 unit rows (:func:`fuseface.ops.l2_normalize`), the layout the indexes store."""
    return l2_normalize(x, dtype=np.float32)


class ExactIndex:
    """Exact cosine search in numpy. ``add(embeddings, ids)``; ``search(queries, k)``."""

    backend = "numpy"

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.vectors = np.zeros((0, dim), np.float32)
        self.ids: list[Any] = []

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, embeddings: np.ndarray, ids: list[Any] | None = None) -> None:
        emb = np.atleast_2d(np.asarray(embeddings, dtype=np.float32))
        if emb.shape[1] != self.dim:
            raise DataError(f"index holds {self.dim}-d embeddings, got {emb.shape[1]}-d")
        if not np.isfinite(emb).all():
            raise DataError("cannot index NaN/inf embeddings (failed images must be left out)")
        ids = list(range(len(self.ids), len(self.ids) + len(emb))) if ids is None else list(ids)
        if len(ids) != len(emb):
            raise DataError(f"{len(ids)} ids for {len(emb)} embeddings")
        self._add_normalized(_unit_rows(emb))
        self.ids.extend(ids)

    def _add_normalized(self, emb: np.ndarray) -> None:
        self.vectors = np.concatenate([self.vectors, emb])

    def _scores(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        sims = q @ self.vectors.T
        idx = (
            np.argpartition(-sims, k - 1, axis=1)[:, :k]
            if k < sims.shape[1]
            else np.tile(np.arange(sims.shape[1]), (len(q), 1))
        )
        part = np.take_along_axis(sims, idx, axis=1)
        order = np.argsort(-part, axis=1, kind="stable")
        return np.take_along_axis(part, order, axis=1), np.take_along_axis(idx, order, axis=1)

    def search(self, queries: np.ndarray, k: int = 5) -> tuple[np.ndarray, list[list[Any]]]:
        """``(scores (Q, k') best first, ids (Q lists))`` with ``k' = min(k, len(index))``."""
        if len(self) == 0:
            raise DataError("the index is empty")
        q = _unit_rows(np.atleast_2d(queries))
        k = min(k, len(self))
        scores, idx = self._scores(q, k)
        return scores, [[self.ids[j] for j in row] for row in idx]

    def save(self, path: str | Path) -> None:
        np.savez(path, vectors=self.vectors, ids=np.asarray([str(i) for i in self.ids]))

    @classmethod
    def load(cls, path: str | Path) -> ExactIndex:
        with np.load(path, allow_pickle=False) as data:
            index = cls(int(data["vectors"].shape[1]))
            index.vectors = data["vectors"].astype(np.float32)
            index.ids = [str(i) for i in data["ids"]]
        return index


class FaissIndex(ExactIndex):
    """``faiss.IndexFlatIP`` on unit vectors (exact cosine), same API as :class:`ExactIndex`."""

    backend = "faiss"

    def __init__(self, dim: int) -> None:
        import faiss

        super().__init__(dim)
        self._index = faiss.IndexFlatIP(dim)

    def _add_normalized(self, emb: np.ndarray) -> None:
        super()._add_normalized(emb)
        self._index.add(np.ascontiguousarray(emb))

    def _scores(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores, idx = self._index.search(np.ascontiguousarray(q, dtype=np.float32), k)
        return scores, idx


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def create_index(dim: int, backend: str = "auto") -> ExactIndex:
    """``backend``: ``"auto"`` (faiss if importable), ``"numpy"`` or ``"faiss"``."""
    if backend == "faiss" or (backend == "auto" and faiss_available()):
        return FaissIndex(dim)
    if backend not in ("auto", "numpy"):
        raise ValueError(f"backend must be auto, numpy or faiss, got {backend!r}")
    return ExactIndex(dim)
