"""ROC curve and TAR@FAR exactly as the IJB reference scripts compute them, fast at 15 M scores.

The references (insightface ``arcface_torch/eval_ijbc.py``, AdaFace ``eval_helper``, CAFace
``calc_tpr_fpr``; PROTOCOLS.md B §2.2) call ``sklearn.metrics.roc_curve(label, score)`` with its
default ``drop_intermediate=True``, flip both arrays (``np.flipud``) and, for each target FAR, take
the TPR at the FPR **nearest** to the target (``min(zip(abs(fpr - x), range(len(fpr))))``: ties go
to the smallest index of the flipped arrays). AUC is ``sklearn.metrics.auc(fpr, tpr)``.

:func:`roc_curve` returns the same arrays as scikit-learn (checked against it in
``tests/test_ijb.py``, ties included) without any full-length intermediate besides one sorted copy
of the scores (none with ``overwrite_scores=True``): at 15.66 M scores every fresh 125 MB array
costs more than the arithmetic on it. The scores are sorted with ``np.sort`` (ties need no stable
order); a *group* is a run of equal scores. sklearn keeps an interior ROC point when the second
difference of ``fps`` or ``tps`` is non-zero, which is when a group's (negatives, positives)
composition differs from its neighbour's. A group of one untied negative looks like every other such
group, so only groups that hold a tie or a positive (few: 19,557 positives at IJB-C) and their
neighbours can be kept; their start positions, sizes and counts come from ``np.searchsorted`` over
the tied positions and the positives' groups. Then ``fps = count(scores >= t) - tps``, (0, 0) is
prepended with threshold +inf, ``fpr = fps / fps[-1]``, ``tpr = tps / tps[-1]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

DEFAULT_FARS: tuple[float, ...] = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


def roc_curve(
    labels: np.ndarray, scores: np.ndarray, drop_intermediate: bool = True, *, overwrite_scores: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fpr, tpr, thresholds)`` equal to ``sklearn.metrics.roc_curve(labels, scores)``.

    ``labels``: truthy = genuine. ``scores``: floats (higher = more similar), no NaN; ``+inf`` /
    ``-inf`` are allowed (the invalid-pair scores of :mod:`fuseface.eval.invalid`).
    ``overwrite_scores=True`` sorts a writeable float ``scores`` array in place (its order is lost)
    instead of sorting a copy: at 15.66 M scores that saves a 125 MB temporary.
    """
    labels = np.asarray(labels).reshape(-1).astype(bool)
    scores = np.asarray(scores).reshape(-1)
    if labels.size != scores.size:
        raise ValueError(f"labels ({labels.size}) and scores ({scores.size}) differ in length")
    if scores.size == 0:
        raise ValueError("no scores")
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN")
    if scores.dtype.kind != "f":
        scores = scores.astype(np.float64)
        overwrite_scores = True
    n = scores.size
    pos_sorted = np.sort(scores[labels])
    n_pos = pos_sorted.size
    if overwrite_scores and scores.flags.writeable and scores.flags.c_contiguous:
        scores.sort()
        s_asc = scores
    else:
        s_asc = np.sort(scores)
    # tied elements: position p with s_asc[p] == s_asc[p - 1]; the element's group (distinct value,
    # ascending) is p - (number of tied elements up to and including p)
    tied = np.empty(n, dtype=bool)
    tied[0] = False
    np.equal(s_asc[1:], s_asc[:-1], out=tied[1:])
    tied_pos = np.flatnonzero(tied)
    del tied
    tied_group = tied_pos - np.arange(1, tied_pos.size + 1)
    n_groups = n - tied_pos.size
    first = np.searchsorted(s_asc, pos_sorted, side="left")  # group starts
    pos_group = first - np.searchsorted(tied_pos, first, side="left")

    def starts(a: np.ndarray) -> np.ndarray:
        return a + np.searchsorted(tied_group, a, side="left")

    def composition(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        size = 1 + np.searchsorted(tied_group, a, side="right") - np.searchsorted(tied_group, a, side="left")
        pos = np.searchsorted(pos_group, a, side="right") - np.searchsorted(pos_group, a, side="left")
        return size - pos, pos

    if drop_intermediate and n_groups > 2:
        # sklearn keeps an interior point when the second difference of fps or tps is non-zero, i.e.
        # when a group's (negatives, positives) differ from its neighbour's; a group that holds one
        # negative and no tie matches its neighbour unless that neighbour is tied or holds a positive
        special = np.union1d(tied_group, pos_group)
        cand = np.union1d(special, special + 1)
        cand = cand[(cand >= 1) & (cand <= n_groups - 2)]
        neg_a, pos_a = composition(cand)
        neg_b, pos_b = composition(cand - 1)
        cand = cand[(neg_a != neg_b) | (pos_a != pos_b)]
        kept = np.r_[n_groups - 1, cand[::-1], 0]
    else:
        kept = np.arange(n_groups - 1, -1, -1)
    start = starts(kept)
    tps = (n_pos - np.searchsorted(pos_group, kept, side="left")).astype(np.float64)
    fps = (n - start).astype(np.float64) - tps
    thresholds = s_asc[start].astype(np.float64)
    tps = np.r_[0.0, tps]
    fps = np.r_[0.0, fps]
    thresholds = np.r_[np.inf, thresholds]
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


def tar_at_far(labels: np.ndarray, scores: np.ndarray, fars: Sequence[float] = DEFAULT_FARS) -> dict[float, float]:
    """TAR at each target FAR by the nearest-FPR rule on the default ROC (see module docstring)."""
    fpr, tpr, _ = roc_curve(labels, scores)
    return tar_at_far_from_roc(fpr, tpr, tuple(fars))
