"""fuseface.align: face detection (MTCNN), 5-point similarity alignment, photos -> aligned crops.

Nothing heavy is imported here; use the submodules:

* :mod:`fuseface.align.similarity` — Umeyama fit to the ArcFace template, ``warpAffine`` crop;
* :mod:`fuseface.align.mtcnn` — P-/R-/O-Net and the cascade; :mod:`fuseface.align.nms`;
* :mod:`fuseface.align.weights` — ``fuseface models fetch mtcnn`` (explicit, checksummed);
* :mod:`fuseface.align.detector` — detector interface, landmarks from a file, face policies;
* :mod:`fuseface.align.pipeline` — ``align_folder`` (resumable), ``read_photo``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["align_face", "align_folder", "estimate_norm", "read_photo"]


def __getattr__(name: str) -> Any:
    if name in ("align_face", "estimate_norm"):
        from fuseface.align import similarity

        return getattr(similarity, name)
    if name in ("align_folder", "read_photo"):
        from fuseface.align import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'fuseface.align' has no attribute {name!r}")
