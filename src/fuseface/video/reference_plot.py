"""The CAFace video demo, reproduced: each frame's cosine to a reference of the person, coloured by
its fusion weight, and the fused template's cosine for each fusion method.

The CAFace repository's README plots, for its low-quality clip, the cosine of every frame to a
photo of the person and the cosine of the fused template (frame averaging vs CAFace). No photo of
that person is available here, so the reference is taken from the clip itself
(:func:`split_reference`):

* **reference**: the ``fraction`` of the track's frames with the highest feature norm (the
  quality the models learn; at least ``min_count`` frames); its template is the mean of their unit
  features, normalised, standing in for the photo;
* **probe**: every other frame more than ``exclusion`` frame indices away from all reference frames
  (neighbouring frames of a 30 fps clip are near-duplicates of the reference).

The probe frames are then fused with each method through :class:`fuseface.video.fuse.TrackStream`
(the same streamed fusion as ``fuseface video``), giving each method's template and per-frame
weights. A method helps when its template is closer to the reference than the frames' mean cosine
and than plain averaging.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fuseface.errors import DataError
from fuseface.video.fuse import TrackStream

__all__ = ["ReferenceComparison", "compare_to_reference", "plot_reference", "split_reference"]


def split_reference(
    norms: np.ndarray, frames: np.ndarray, fraction: float = 0.1, min_count: int = 3, exclusion: int = 5
) -> tuple[np.ndarray, np.ndarray]:
    """``(reference indices, probe indices)`` into a track's frames (see the module docstring)."""
    norms = np.asarray(norms, np.float64)
    frames = np.asarray(frames, np.int64)
    count = min(len(norms) - 1, max(min_count, round(fraction * len(norms))))
    if count < 1:
        raise DataError(f"a track of {len(norms)} frames is too short to split into reference and probe")
    ref = np.sort(np.argsort(-norms, kind="stable")[:count])
    dist = np.abs(frames[:, None] - frames[ref][None, :]).min(axis=1)
    probe = np.flatnonzero(dist > exclusion)
    if len(probe) == 0:
        raise DataError("no probe frame left after excluding the reference frames and their neighbours")
    return ref, probe


@dataclass
class ReferenceComparison:
    """Per probe frame: frame index, cosine to the reference; per method: fused cosine and weights."""

    frames: np.ndarray
    cosines: np.ndarray
    norms: np.ndarray
    reference_frames: np.ndarray
    fused: dict[str, float] = field(default_factory=dict)
    weights: dict[str, np.ndarray] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "reference": "top-norm frames of the clip itself (mean of their unit features)",
            "reference_frames": [int(f) for f in self.reference_frames],
            "probe_frames": len(self.frames),
            "mean_frame_cosine": float(self.cosines.mean()),
            "min_frame_cosine": float(self.cosines.min()),
            "max_frame_cosine": float(self.cosines.max()),
            "fused_cosine": {k: float(v) for k, v in self.fused.items()},
            "frames": [int(f) for f in self.frames],
            "frame_cosine": [round(float(c), 5) for c in self.cosines],
            "weights": {k: [round(float(x), 6) for x in w] for k, w in self.weights.items()},
        }


def compare_to_reference(
    features: np.ndarray,
    frames: np.ndarray,
    styles: np.ndarray | None = None,
    caface: Any = None,
    chunk_size: int = 64,
    fraction: float = 0.1,
    min_count: int = 3,
    exclusion: int = 5,
) -> ReferenceComparison:
    """Split one track into reference and probe and fuse the probe with every available method.

    ``features`` (N, D) un-normalised, ``frames`` (N,) their frame indices, ``styles`` (N, C, 2) and
    ``caface`` (a CAFace module) to include CAFace.
    """
    feats = np.asarray(features, np.float32)
    norms = np.linalg.norm(feats, axis=1)
    ref, probe = split_reference(norms, frames, fraction, min_count, exclusion)
    unit = feats / (norms[:, None] + 1e-12)
    reference = unit[ref].mean(0)
    reference /= np.linalg.norm(reference) + 1e-12
    out = ReferenceComparison(
        frames=np.asarray(frames)[probe],
        cosines=unit[probe] @ reference,
        norms=norms[probe],
        reference_frames=np.asarray(frames)[ref],
    )
    methods = ["average", "norm_weighted"] + (["caface"] if caface is not None and styles is not None else [])
    for method in methods:
        stream = TrackStream(method, caface=caface, chunk_size=chunk_size, keep_best=0)
        for i in probe:
            stream.add(int(frames[i]), [0, 0, 0, 0], 1.0, feats[i], style=None if styles is None else styles[i])
        out.weights[method] = stream.weights()
        out.fused[method] = float(stream.template() @ reference)
    return out


def plot_reference(comp: ReferenceComparison, path: str | Path, title: str = "") -> Path:
    """One panel per weighted method: frame cosine vs frame index coloured by that method's weight
    (relative to uniform), with the fused cosines of every method as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    weighted = [m for m in comp.weights if m != "average"] or ["average"]
    fig, axes = plt.subplots(len(weighted), 1, figsize=(9, 3.4 * len(weighted)), squeeze=False)
    styles = {"average": ("tab:blue", "--"), "norm_weighted": ("tab:green", "-."), "caface": ("tab:red", "-")}
    for ax, method in zip(axes[:, 0], weighted, strict=True):
        rel = comp.weights[method] * len(comp.frames)
        sc = ax.scatter(comp.frames, comp.cosines, c=rel, cmap="viridis", s=9)
        fig.colorbar(sc, ax=ax, label=f"{method} weight (x uniform)")
        mean = float(comp.cosines.mean())
        ax.axhline(mean, color="grey", lw=1, ls=":", label=f"mean frame cosine {mean:.3f}")
        for m, value in comp.fused.items():
            color, ls = styles.get(m, ("black", "-"))
            ax.axhline(value, color=color, ls=ls, lw=1.5, label=f"fused {m}: {value:.3f}")
        values = [*comp.fused.values(), float(comp.cosines.min()), float(comp.cosines.max())]
        pad = 0.08 * (max(values) - min(values) + 1e-3)
        ax.set_ylim(min(values) - pad, max(values) + 4 * pad)  # room for the legend above the lines
        ax.set_xlabel("frame")
        ax.set_ylabel("cosine to reference")
        ax.set_title(f"coloured by {method} weight")
        ax.legend(loc="upper left", fontsize=8, ncol=2)
    if title:
        fig.suptitle(title, fontsize=10)
    from fuseface.eval.report import save_figure

    return save_figure(fig, path, dpi=110)
