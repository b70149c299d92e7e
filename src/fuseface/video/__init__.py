"""fuseface.video: faces in video, tracked and fused into one template per track, grouped into people.

Nothing heavy is imported here; use the submodules:

* :mod:`fuseface.video.decode` — OpenCV frames with a stride; damaged files reported, earlier frames kept;
* :mod:`fuseface.video.faces` — detection (up-sampling for small faces), alignment, embedding;
* :mod:`fuseface.video.track` — SORT-style IoU + appearance-gated Hungarian tracking;
* :mod:`fuseface.video.fuse` — per-track streamed fusion (average, norm-weighted, CAFace);
* :mod:`fuseface.video.cluster` — tracks into people (agglomerative, calibrated threshold);
* :mod:`fuseface.video.identify` — open-set identification against a photo folder;
* :mod:`fuseface.video.pipeline` — :func:`process_video`; :mod:`fuseface.video.outputs` — files;
* :mod:`fuseface.video.reference_plot` — the CAFace demo plot (per-frame vs fused cosine);
* :mod:`fuseface.video.synthetic` — synthetic videos from photos (tests, benchmarks).
"""

from __future__ import annotations

from typing import Any

__all__ = ["VideoOptions", "process_video", "write_outputs"]


def __getattr__(name: str) -> Any:
    if name in ("VideoOptions", "process_video"):
        from fuseface.video import pipeline

        return getattr(pipeline, name)
    if name == "write_outputs":
        from fuseface.video import outputs

        return outputs.write_outputs
    raise AttributeError(f"module 'fuseface.video' has no attribute {name!r}")
