"""Group the tracks of a video into people: agglomerative clustering of their templates.

Average-linkage agglomerative clustering (``scipy.cluster.hierarchy.linkage(method="average")``)
on the cosine distance ``1 - cos`` between L2-normalised templates, cut at distance
``1 - threshold``: two groups merge while the mean cosine between their members is at least the
threshold. Without a gallery the threshold is the model's calibrated same-person cosine
(``extra["threshold"]`` of the model file, else :data:`fuseface.infer.embedder.DEFAULT_THRESHOLD`),
i.e. the operating point at which ``FaceModel.compare`` calls two faces the same person.
Tracks seen in the same frame can never be the same person: their distance is set to the maximum
(2) before clustering, which average linkage then weighs into every merge involving them. (Tracks
that merely overlap in span — one face whose track was split and restarted while the old one was
still waiting out its gap — do share no frame and can still be merged.)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["cluster_templates", "model_threshold"]


def model_threshold(model: object) -> float:
    """The calibrated cosine threshold of a FaceModel (its file's ``extra["threshold"]`` or the default)."""
    from fuseface.infer.embedder import DEFAULT_THRESHOLD

    meta = getattr(model, "meta", None)
    extra = getattr(meta, "extra", {}) or {}
    return float(extra.get("threshold", DEFAULT_THRESHOLD))


def cluster_templates(
    templates: np.ndarray, threshold: float, frames: Sequence[Sequence[int]] | None = None
) -> np.ndarray:
    """Cluster labels (N,) 0..P-1 (first appearance order) of N templates (N, D).

    ``frames``: optional frame indices per template; templates that share a frame are kept apart
    (one person cannot be two faces of the same frame).
    """
    t = np.asarray(templates, np.float64)
    n = len(t)
    if n == 0:
        return np.zeros(0, np.int64)
    if n == 1:
        return np.zeros(1, np.int64)
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    unit = t / (np.linalg.norm(t, axis=1, keepdims=True) + 1e-12)
    dist = np.clip(1.0 - unit @ unit.T, 0.0, 2.0)
    if frames is not None:
        sets = [set(int(f) for f in fr) for fr in frames]
        for i in range(n):
            for j in range(i + 1, n):
                if not sets[i].isdisjoint(sets[j]):
                    dist[i, j] = dist[j, i] = 2.0
    np.fill_diagonal(dist, 0.0)
    raw = fcluster(linkage(squareform(dist, checks=False), method="average"), t=1.0 - threshold, criterion="distance")
    # relabel in order of first appearance
    order: dict[int, int] = {}
    return np.array([order.setdefault(int(c), len(order)) for c in raw], np.int64)
