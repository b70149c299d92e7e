"""Open-set identification of track templates against a folder of enrolment photos.

The folder holds one sub-folder per person (the identity is the sub-folder name; photos directly
in the folder are identities named by their file stem). Every photo goes through the model's
photo path (:meth:`fuseface.infer.embedder.FaceModel.embed_photos`: detect, align, embed); the
photos of one person are fused with the average of unit features
(:func:`fuseface.nn.fusion.fuse_features`) into one gallery template. A track is given the identity
of the most similar gallery template when that cosine reaches the threshold, and ``None``
(unknown) otherwise: open-set, a person not enrolled must not be forced onto someone who is.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fuseface.errors import DataError

__all__ = ["PhotoGallery"]


@dataclass
class Match:
    """The identification of one template."""

    identity: str | None
    similarity: float
    best: str


class PhotoGallery:
    """Gallery templates (P, D) built from a photo folder; :meth:`identify` matches templates."""

    def __init__(
        self, names: list[str], templates: np.ndarray, skipped: dict[str, str] | None = None, source: str = ""
    ) -> None:
        self.names = names
        self.templates = np.asarray(templates, np.float32)
        self.skipped = skipped or {}
        self.source = source

    @classmethod
    def from_folder(cls, folder: str | Path, model: Any) -> PhotoGallery:
        from fuseface.align.pipeline import list_photos
        from fuseface.nn.fusion import fuse_features

        folder = Path(folder)
        if not folder.is_dir():
            raise DataError(f"{folder}: gallery folder not found")
        root, rels = list_photos(folder)
        if not rels:
            raise DataError(f"{folder}: no photos in the gallery folder")
        idents = [r.parts[0] if len(r.parts) > 1 else r.stem for r in rels]
        res = model.embed_photos([root / r for r in rels])
        skipped = {str(rels[i]): msg for i, msg in res.errors.items()}
        names: list[str] = []
        temps: list[np.ndarray] = []
        for name in sorted(set(idents)):
            rows = [i for i, ident in enumerate(idents) if ident == name and res.ok[i]]
            if rows:
                names.append(name)
                temps.append(fuse_features(res.embeddings[rows], method="average"))
        if not names:
            raise DataError(f"{folder}: no face found in any gallery photo")
        return cls(names, np.stack(temps), skipped, source=str(folder))

    def identify(self, template: np.ndarray, threshold: float) -> Match:
        """Best gallery identity if its cosine is >= ``threshold``, else unknown (``None``)."""
        t = np.asarray(template, np.float64)
        if not np.isfinite(t).all():
            return Match(None, float("nan"), "")
        t = t / (np.linalg.norm(t) + 1e-12)
        sims = self.templates.astype(np.float64) @ t
        best = int(np.argmax(sims))
        sim = float(sims[best])
        return Match(self.names[best] if sim >= threshold else None, sim, self.names[best])
