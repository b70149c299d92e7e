"""ROC curve and TAR@FAR exactly as the IJB reference scripts compute them, fast at 15 M scores.

The references (insightface ``arcface_torch/eval_ijbc.py``, AdaFace ``eval_helper``, CAFace
``calc_tpr_fpr``; PROTOCOLS.md B §2.2) call ``sklearn.metrics.roc_curve(label, score)`` with its
default ``drop_intermediate=True``, flip both arrays (``np.flipud``) and, for each target FAR, take
the TPR at the FPR **nearest** to the target (``min(zip(abs(fpr - x), range(len(fpr))))``: ties go
to the smallest index of the flipped arrays). AUC is ``sklearn.metrics.auc(fpr, tpr)``.

:func:`roc_curve` returns the same arrays as scikit-learn (checked against it in
``tests/test_ijb.py``) but avoids its stable ``argsort`` of all scores: the scores are sorted with
``np.sort`` (ties need no stable order, because only the counts at the end of each group of equal
scores are used), the distinct values are the group starts, the number of scores >= each value
is read from the group positions, and the positives (few: 19,557 of 15.66 M at IJB-C) are placed
into their groups with ``np.searchsorted``; ``fps = count - tps``. Then the ``drop_intermediate``
rule of scikit-learn: keep a point when the second difference of ``fps`` or of ``tps`` is non-zero,
plus both ends; prepend (0, 0) with threshold +inf; ``fpr = fps / fps[-1]``, ``tpr = tps / tps[-1]``.
"""

from __future__ import annotations

import numpy as np

DEFAULT_FARS: tuple[float, ...] = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


def roc_curve(
    labels: np.ndarray, scores: np.ndarray, drop_intermediate: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fpr, tpr, thresholds)`` equal to ``sklearn.metrics.roc_curve(labels, scores)``.

    ``labels``: truthy = genuine. ``scores``: finite floats (higher = more similar).
    """
    labels = np.asarray(labels).reshape(-1).astype(bool)
    scores = np.asarray(scores).reshape(-1)
    if labels.size != scores.size:
        raise ValueError(f"labels ({labels.size}) and scores ({scores.size}) differ in length")
    if scores.size == 0:
        raise ValueError("no scores")
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or infinite values")
    if scores.dtype.kind != "f":
        scores = scores.astype(np.float64)
    n = scores.size
    s_asc = np.sort(scores)
    new_group = np.empty(n, dtype=bool)
    new_group[0] = True
    np.not_equal(s_asc[1:], s_asc[:-1], out=new_group[1:])
    starts = np.flatnonzero(new_group)
    del new_group
    values_asc = s_asc[starts]
    del s_asc
    # descending order of distinct values, as sklearn's thresholds
    thresholds = values_asc[::-1]
    count_ge = (n - starts[::-1]).astype(np.float64)
    pos_groups = np.searchsorted(values_asc, scores[labels])
    hist = np.bincount(pos_groups, minlength=values_asc.size)[::-1]
    tps = np.cumsum(hist).astype(np.float64)
    fps = count_ge - tps
    if drop_intermediate and fps.size > 2:
        keep = np.empty(fps.size, dtype=bool)
        keep[0] = keep[-1] = True
        np.logical_or(np.diff(fps, 2) != 0, np.diff(tps, 2) != 0, out=keep[1:-1])
        fps, tps, thresholds = fps[keep], tps[keep], thresholds[keep]
    tps = np.r_[0.0, tps]
    fps = np.r_[0.0, fps]
    thresholds = np.r_[np.inf, thresholds.astype(np.float64)]
    with np.errstate(divide="ignore", invalid="ignore"):
        fpr = fps / fps[-1] if fps[-1] > 0 else np.full(fps.shape, np.nan)
        tpr = tps / tps[-1] if tps[-1] > 0 else np.full(tps.shape, np.nan)
    return fpr, tpr, thresholds


def tar_at_far_from_roc(fpr: np.ndarray, tpr: np.ndarray, fars: tuple[float, ...] = DEFAULT_FARS) -> dict[float, float]:
    """Reference rule: flip both arrays, take the TPR at the nearest FPR (first index on ties)."""
    fpr_f, tpr_f = np.flipud(fpr), np.flipud(tpr)
    return {float(x): float(tpr_f[int(np.argmin(np.abs(fpr_f - x)))]) for x in fars}


def auc(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """Area under the ROC curve (trapezoids, as ``sklearn.metrics.auc`` on an increasing fpr)."""
    return float(np.trapezoid(tpr, fpr))


def tar_at_far(labels: np.ndarray, scores: np.ndarray, fars: tuple[float, ...] = DEFAULT_FARS) -> dict[float, float]:
    """TAR at each target FAR by the nearest-FPR rule on the default ROC (see module docstring)."""
    fpr, tpr, _ = roc_curve(labels, scores)
    return tar_at_far_from_roc(fpr, tpr, fars)
