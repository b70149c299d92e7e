"""The insightface 10-fold verification protocol (LFW, CFP-FP, AgeDB-30, CALFW, CPLFW, ...).

Reference: insightface ``recognition/arcface_torch/eval/verification.py`` (``evaluate``,
``calculate_roc``, ``calculate_accuracy``, ``calculate_val``, ``calculate_val_far``); AdaFace's
``evaluate_utils.py`` is the same code and also returns the best thresholds (PROTOCOLS.md §5.6, B §2.1).

The algorithm, reproduced number for number:

1. both embedding lists are L2-normalised (float64, as ``sklearn.preprocessing.normalize``:
   a zero row stays zero);
2. the distance of a pair is the squared Euclidean distance ``sum((e1 - e2) ** 2)``, in [0, 4];
3. accuracy: thresholds ``np.arange(0, 4, 0.01)`` (400 values); a pair is predicted "same" when
   ``dist < threshold`` (**strict**); folds are ``KFold(nfolds, shuffle=False)`` over the pair
   indices (contiguous blocks, the first ``P % nfolds`` folds one pair longer); for each fold the
   threshold with the best accuracy on the other folds is chosen (``np.argmax``: the **first**
   maximum) and the accuracy of the held-out fold at that threshold is recorded; the report is
   the mean and the population standard deviation (``ddof=0``) over folds;
4. VAL@FAR=1e-3: thresholds ``np.arange(0, 4, 0.001)``; for each fold, the FAR of the training
   folds at every threshold; if the largest FAR reaches 1e-3 the threshold is interpolated with
   ``scipy.interpolate.interp1d(far_train, thresholds, kind='slinear')(1e-3)``, otherwise it is 0;
   VAL and FAR of the held-out fold are measured at that threshold.

About step 4: ``far_train`` repeats values (it is a step function of the threshold), and since
scipy 1.11 ``interp1d(kind='slinear')`` raises "Expect x to not have duplicates" on it. Older
scipy built the degree-1 B-spline with knots ``[x0, x0, x1, ..., xn, xn]`` and coefficients
``y`` directly (``make_interp_spline``'s ``k == 1`` shortcut) without that check. We evaluate
exactly that spline (:class:`scipy.interpolate.BSpline`), which gives the reference's numbers:
inside a run of equal FARs the interpolation uses the **last** threshold of the run as its left
end point, so the result is ``y[j] + (y[j+1] - y[j]) * (t - x[j]) / (x[j+1] - x[j])`` with
``j`` the last index whose FAR is <= the target.

Speed: instead of 400 (and 4,000) passes over the distances per fold, the distances of each
fold's positives and negatives are sorted once and ``np.searchsorted(..., side='left')`` counts
the pairs strictly below every threshold at once; the training-fold counts are the totals minus
the held-out fold. Every count and every division is the reference's, so the results are equal
bit for bit (tests/test_verification.py checks it against a transcription of the reference).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fuseface.ops import l2_normalize as _l2_normalize

ACCURACY_THRESHOLDS_STEP = 0.01
VAL_THRESHOLDS_STEP = 0.001
FAR_TARGET = 1e-3


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation in float64, as ``sklearn.preprocessing.normalize`` (rows of norm 0
    are left unchanged): :func:`fuseface.ops.l2_normalize` on 2-D embeddings."""
    if np.ndim(x) != 2:
        raise ValueError(f"expected a 2-D array of embeddings, got shape {np.shape(x)}")
    return _l2_normalize(x)


def flip_sum(emb: np.ndarray, emb_flipped: np.ndarray) -> np.ndarray:
    """insightface's flip fusion: the sum of the raw embeddings of an image and of its mirror image
    (``embeddings_list[0] + embeddings_list[1]``), left un-normalised; :func:`evaluate` normalises.

    Because a raw embedding is unit vector x norm, this equals AdaFace's ``pre_norm_vector_add``.
    """
    emb = np.asarray(emb)
    emb_flipped = np.asarray(emb_flipped)
    if emb.shape != emb_flipped.shape:
        raise ValueError(f"embedding shapes differ: {emb.shape} vs {emb_flipped.shape}")
    return emb + emb_flipped


def kfold_slices(n: int, nfolds: int) -> list[tuple[int, int]]:
    """Contiguous test folds of ``sklearn.model_selection.KFold(nfolds, shuffle=False)``:
    the first ``n % nfolds`` folds have one extra element."""
    if nfolds < 2 or nfolds > n:
        raise ValueError(f"need 2 <= nfolds <= number of pairs, got nfolds={nfolds}, pairs={n}")
    sizes = np.full(nfolds, n // nfolds, dtype=int)
    sizes[: n % nfolds] += 1
    ends = np.cumsum(sizes)
    return [(int(e - s), int(e)) for s, e in zip(sizes, ends, strict=True)]


def _counts_below(dist: np.ndarray, issame: np.ndarray, folds: list[tuple[int, int]], thresholds: np.ndarray):
    """Per fold and threshold: number of positive / negative pairs with ``dist < threshold``,
    and the number of positives / negatives in the fold."""
    nf, nt = len(folds), len(thresholds)
    pos_below = np.zeros((nf, nt), dtype=np.int64)
    neg_below = np.zeros((nf, nt), dtype=np.int64)
    n_pos = np.zeros(nf, dtype=np.int64)
    n_neg = np.zeros(nf, dtype=np.int64)
    for k, (a, b) in enumerate(folds):
        d, s = dist[a:b], issame[a:b]
        pos, neg = np.sort(d[s]), np.sort(d[~s])
        pos_below[k] = np.searchsorted(pos, thresholds, side="left")
        neg_below[k] = np.searchsorted(neg, thresholds, side="left")
        n_pos[k], n_neg[k] = pos.size, neg.size
    return pos_below, neg_below, n_pos, n_neg


def _interp_slinear_legacy(x: np.ndarray, y: np.ndarray, target: float) -> float:
    """``interp1d(x, y, kind='slinear')(target)`` as scipy < 1.11 computed it, duplicates allowed."""
    from scipy.interpolate import BSpline

    order = np.argsort(x, kind="mergesort")  # interp1d(assume_sorted=False) sorts stably
    xs, ys = x[order], y[order]
    if not xs[0] <= target <= xs[-1]:
        raise ValueError(f"target {target} outside the interpolation range [{xs[0]}, {xs[-1]}]")
    spline = BSpline.construct_fast(np.r_[xs[0], xs, xs[-1]], ys, 1)
    return float(spline(target))


def evaluate(emb1: np.ndarray, emb2: np.ndarray, issame: np.ndarray, nfolds: int = 10) -> dict[str, Any]:
    """10-fold verification accuracy and VAL@FAR=1e-3 of pairs ``(emb1[i], emb2[i])``.

    ``emb1``/``emb2``: (P, D) embeddings (any norm; normalised here). ``issame``: (P,) bool.
    Returns ``accuracy`` (per-fold array), ``accuracy_mean``, ``accuracy_std`` (ddof=0),
    ``best_thresholds`` (per fold, squared-L2 units), ``val``, ``val_std``, ``far`` (means over folds),
    ``val_per_fold``, ``far_per_fold``, ``val_thresholds`` (the interpolated threshold of each fold),
    ``tpr``/``fpr`` (the reference's mean ROC over folds at the 400 thresholds) and ``num_pairs``.
    A fold without positives (or negatives) gives VAL (FAR) NaN where the reference would divide by zero.

    Invalid embeddings (NaN/inf or zero norm, :mod:`fuseface.eval.invalid`): a pair with one is
    kept in its fold and scored as a miss at every threshold (distance ``+inf`` for a genuine pair,
    ``-inf`` for an impostor pair); ``invalid_pairs`` counts them. Without them nothing changes.
    """
    from fuseface.eval.invalid import invalid_rows

    issame = np.asarray(issame).astype(bool).reshape(-1)
    emb1, emb2 = np.asarray(emb1), np.asarray(emb2)
    if emb1.ndim != 2 or emb1.shape != emb2.shape or emb1.shape[0] != issame.size:
        raise ValueError(f"shapes do not match: emb1 {emb1.shape}, emb2 {emb2.shape}, issame {issame.shape}")
    invalid = invalid_rows(emb1) | invalid_rows(emb2)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        e1, e2 = l2_normalize(emb1), l2_normalize(emb2)
        dist = np.sum(np.square(np.subtract(e1, e2)), 1)
    dist[invalid] = np.where(issame[invalid], np.inf, -np.inf)
    folds = kfold_slices(issame.size, nfolds)

    # accuracy (calculate_roc)
    thresholds = np.arange(0, 4, ACCURACY_THRESHOLDS_STEP)
    pos_b, neg_b, n_pos, n_neg = _counts_below(dist, issame, folds, thresholds)
    tp_test, fp_test = pos_b, neg_b
    tn_test = n_neg[:, None] - neg_b
    sizes = n_pos + n_neg
    correct_test = tp_test + tn_test
    correct_train = correct_test.sum(0, keepdims=True) - correct_test
    best = np.argmax(correct_train, axis=1)  # first maximum, as np.argmax(acc_train)
    rows = np.arange(len(folds))
    accuracy = correct_test[rows, best].astype(np.float64) / sizes.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        tprs = np.where(n_pos[:, None] == 0, 0.0, tp_test / np.maximum(n_pos, 1)[:, None])
        fprs = np.where(n_neg[:, None] == 0, 0.0, fp_test / np.maximum(n_neg, 1)[:, None])

    # VAL@FAR (calculate_val)
    vthresholds = np.arange(0, 4, VAL_THRESHOLDS_STEP)
    _, vneg_b, _, vn_neg = _counts_below(dist, issame, folds, vthresholds)
    val = np.zeros(len(folds))
    far = np.zeros(len(folds))
    val_thresholds = np.zeros(len(folds))
    for k, (a, b) in enumerate(folds):
        train_neg = vn_neg.sum() - vn_neg[k]
        far_train = (vneg_b.sum(0) - vneg_b[k]).astype(np.float64) / float(train_neg) if train_neg else None
        # far_train[0] (threshold 0) is 0 unless invalid impostor pairs (distance -inf) are
        # accepted at every threshold; when even it exceeds the target no threshold reaches it
        if far_train is not None and np.max(far_train) >= FAR_TARGET and far_train[0] <= FAR_TARGET:
            threshold = _interp_slinear_legacy(far_train, vthresholds, FAR_TARGET)
        else:
            threshold = 0.0
        val_thresholds[k] = threshold
        d, s = dist[a:b], issame[a:b]
        predict = np.less(d, threshold)
        ta = np.sum(np.logical_and(predict, s))
        fa = np.sum(np.logical_and(predict, np.logical_not(s)))
        ns, nd = int(np.sum(s)), int(np.sum(~s))
        val[k] = float(ta) / float(ns) if ns else float("nan")
        far[k] = float(fa) / float(nd) if nd else float("nan")

    return {
        "accuracy": accuracy,
        "accuracy_mean": float(np.mean(accuracy)),
        "accuracy_std": float(np.std(accuracy)),
        "best_thresholds": thresholds[best],
        "val": float(np.mean(val)),
        "val_std": float(np.std(val)),
        "far": float(np.mean(far)),
        "val_per_fold": val,
        "far_per_fold": far,
        "val_thresholds": val_thresholds,
        "tpr": np.mean(tprs, 0),
        "fpr": np.mean(fprs, 0),
        "num_pairs": int(issame.size),
        "invalid_pairs": int(invalid.sum()),
    }


def evaluate_interleaved(embeddings: np.ndarray, issame: np.ndarray, nfolds: int = 10) -> dict[str, Any]:
    """:func:`evaluate` on the ``.bin`` layout: rows ``2i`` and ``2i+1`` form pair ``i``; also counts
    the ``invalid_images``."""
    from fuseface.eval.invalid import invalid_rows

    embeddings = np.asarray(embeddings)
    result = evaluate(embeddings[0::2], embeddings[1::2], issame, nfolds=nfolds)
    result["invalid_images"] = int(invalid_rows(embeddings).sum())
    return result
