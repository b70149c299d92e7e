"""10-fold verification: the vectorised counts equal a loop-by-loop restatement, hand cases, properties.

``loop_transcription`` restates insightface's loops to check our sorted-count shortcut; it is not
the official code, and its VAL interpolation uses the same spline construction as ours, so it
cannot check that step. Parity with the official numbers (accuracies, thresholds, VAL) is in
``tests/test_official_parity_metrics.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.interpolate import BSpline, interp1d
from sklearn.model_selection import KFold
from sklearn.preprocessing import normalize

from fuseface.eval.verification import _interp_slinear_legacy, evaluate, evaluate_interleaved, flip_sum, kfold_slices


def loop_transcription(emb1: np.ndarray, emb2: np.ndarray, issame: np.ndarray, nfolds: int = 10) -> dict:
    """insightface eval/verification.py (calculate_roc / calculate_val), loops as written; the
    slinear interpolation is scipy<1.11's spline (BSpline, knots [x0, x, xn], coefficients y)."""
    e1, e2 = normalize(emb1), normalize(emb2)
    dist = np.sum(np.square(np.subtract(e1, e2)), 1)
    kf = KFold(n_splits=nfolds, shuffle=False)
    idx = np.arange(len(issame))

    def acc(th, d, s):
        p = np.less(d, th)
        return float(np.sum(p & s) + np.sum(~p & ~s)) / d.size

    thresholds = np.arange(0, 4, 0.01)
    accuracy, best = np.zeros(nfolds), np.zeros(nfolds)
    for k, (tr, te) in enumerate(kf.split(idx)):
        p_tr = dist[tr][None, :] < thresholds[:, None]  # every threshold at once, same formula
        a = np.array([float(np.sum(p & issame[tr]) + np.sum(~p & ~issame[tr])) / len(tr) for p in p_tr])
        best[k] = thresholds[np.argmax(a)]
        accuracy[k] = acc(best[k], dist[te], issame[te])
    thresholds = np.arange(0, 4, 0.001)
    val, far = np.zeros(nfolds), np.zeros(nfolds)

    def vf(th, d, s):
        p = np.less(d, th)
        return float(np.sum(p & s)) / float(np.sum(s)), float(np.sum(p & ~s)) / float(np.sum(~s))

    for k, (tr, te) in enumerate(kf.split(idx)):
        s_tr = issame[tr]
        fa = np.sum((dist[tr][None, :] < thresholds[:, None]) & ~s_tr[None, :], axis=1)
        far_train = np.array([float(x) / float(np.sum(~s_tr)) for x in fa])
        if np.max(far_train) >= 1e-3:
            th = float(BSpline.construct_fast(np.r_[far_train[0], far_train, far_train[-1]], thresholds, 1)(1e-3))
        else:
            th = 0.0
        val[k], far[k] = vf(th, dist[te], issame[te])
    return {"accuracy": accuracy, "best": best, "val": np.mean(val), "val_std": np.std(val), "far": np.mean(far)}


@pytest.mark.parametrize("seed,n,noise", [(0, 600, 1.0), (1, 1234, 1.4), (2, 300, 0.3)])
def test_vectorised_counts_equal_loop_transcription(seed: int, n: int, noise: float) -> None:
    rng = np.random.default_rng(seed)
    issame = rng.random(n) < 0.5
    e1 = rng.normal(size=(n, 32))
    e2 = np.where(issame[:, None], e1 + noise * rng.normal(size=(n, 32)), rng.normal(size=(n, 32)))
    ours = evaluate(e1 * 3.0, e2, issame)
    ref = loop_transcription(e1, e2, issame)
    np.testing.assert_array_equal(ours["accuracy"], ref["accuracy"])
    np.testing.assert_array_equal(ours["best_thresholds"], ref["best"])
    assert ours["accuracy_mean"] == np.mean(ref["accuracy"])
    assert ours["accuracy_std"] == np.std(ref["accuracy"])
    assert (ours["val"], ours["val_std"], ours["far"]) == (ref["val"], ref["val_std"], ref["far"])


def test_perfectly_separated_pairs_give_accuracy_one() -> None:
    rng = np.random.default_rng(3)
    e1 = rng.normal(size=(200, 8))
    issame = np.arange(200) % 2 == 0
    e2 = np.where(issame[:, None], e1, -e1)  # same: distance 0; different: distance 4
    r = evaluate(e1, e2, issame)
    assert r["accuracy_mean"] == 1.0 and r["accuracy_std"] == 0.0
    np.testing.assert_array_equal(r["accuracy"], np.ones(10))


def test_hand_computed_case_strict_threshold_and_first_argmax() -> None:
    # distances exactly 0 (same) and 2 (orthogonal unit vectors, different): every threshold in
    # (0, 2] separates them; the first maximum is 0.01 (strict <: dist 0 < 0.01).
    e1 = np.tile(np.eye(2)[0], (20, 1))
    issame = np.array([True, False] * 10)
    e2 = np.where(issame[:, None], e1, np.eye(2)[1])
    r = evaluate(e1, e2, issame, nfolds=2)
    np.testing.assert_allclose(r["best_thresholds"], [0.01, 0.01])
    assert r["accuracy_mean"] == 1.0


def test_kfold_slices_equal_sklearn() -> None:
    for n, k in [(6000, 10), (7, 3), (605, 10)]:
        ours = kfold_slices(n, k)
        ref = [(int(te[0]), int(te[-1]) + 1) for _, te in KFold(k, shuffle=False).split(np.arange(n))]
        assert ours == ref


def test_legacy_interpolation_equals_interp1d_without_duplicates_and_handles_repeats() -> None:
    x = np.array([0.0, 0.001, 0.003, 0.01])
    y = np.array([0.5, 0.7, 0.9, 1.3])
    for t in (0.0, 0.0005, 0.002, 0.01):
        assert _interp_slinear_legacy(x, y, t) == pytest.approx(float(interp1d(x, y, kind="slinear")(t)), abs=0)
    # repeated FARs: the last threshold of the run is the left end point
    x = np.array([0.0, 0.0, 0.0005, 0.0005, 0.0015])
    y = np.array([0.0, 0.1, 0.2, 0.3, 0.4])
    assert _interp_slinear_legacy(x, y, 0.001) == pytest.approx(0.35)


def test_flip_sum_and_interleaved_layout() -> None:
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(20, 4)), rng.normal(size=(20, 4))
    np.testing.assert_array_equal(flip_sum(a, b), a + b)
    issame = np.arange(10) % 2 == 0
    r1 = evaluate_interleaved(a, issame, nfolds=5)
    r2 = evaluate(a[0::2], a[1::2], issame, nfolds=5)
    np.testing.assert_array_equal(r1["accuracy"], r2["accuracy"])
    with pytest.raises(ValueError):
        flip_sum(a, b[:3])
