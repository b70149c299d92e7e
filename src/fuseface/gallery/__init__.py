"""Persistent face galleries: enrolment with incremental templates, open-set search, faiss or Milvus.

``Gallery.create(dir, model)`` / ``Gallery.open(dir, model)``; see :mod:`fuseface.gallery.gallery`.
Nothing is imported until used.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Gallery", "SearchResult"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from fuseface.gallery import gallery

        return getattr(gallery, name)
    raise AttributeError(name)
