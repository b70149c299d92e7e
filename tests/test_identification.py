"""Identification metrics: hand cases for CMC (TinyFace semantics), DIR_FAR and TPIR@FPIR."""

from __future__ import annotations

import numpy as np
import pytest

from fuseface.eval.identification import cmc, dir_far, mate_ranks, tpir_at_fpir, two_gallery_identification


def _onehot(i: int, d: int = 6) -> np.ndarray:
    v = np.zeros(d)
    v[i] = 1.0
    return v


def test_cmc_hand_case_with_distractors_and_unmated_probe() -> None:
    gallery = np.stack([_onehot(0), _onehot(1), _onehot(2), _onehot(3)])
    g_labels = np.array([10, 11, -100, 12])
    probes = np.stack(
        [
            _onehot(0),  # mate 10 at rank 1
            0.9 * _onehot(2) + 0.5 * _onehot(1),  # distractor first, mate 11 at rank 2
            _onehot(2) + 0.1 * _onehot(0),  # label 99: no mate, ignored
            0.2 * _onehot(3) + _onehot(2) + 0.5 * _onehot(1),  # mate 12 at rank 3
        ]
    )
    p_labels = np.array([10, 11, 99, 12])
    assert cmc(probes, p_labels, gallery, g_labels, ranks=(1, 2, 3)) == {1: 1 / 3, 2: 2 / 3, 3: 1.0}
    ranks, mated = mate_ranks(probes, p_labels, gallery, g_labels)
    np.testing.assert_array_equal(ranks, [1, 2, 3])
    np.testing.assert_array_equal(mated, [True, True, False, True])


def test_distractor_label_never_matches_and_best_mate_counts() -> None:
    gallery = np.stack([_onehot(0), _onehot(1), _onehot(2)])
    g_labels = np.array([-100, 5, 5])
    probes = np.stack([_onehot(0) + 0.3 * _onehot(2)])
    assert cmc(probes, np.array([-100]), gallery, g_labels, ranks=(1,)) == {1: pytest.approx(float("nan"), nan_ok=True)}
    assert cmc(probes, np.array([5]), gallery, g_labels, ranks=(1, 2)) == {1: 0.0, 2: 1.0}


def test_dir_far_closed_and_open_set_hand_case() -> None:
    scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.6], [0.5, 0.3], [0.4, 0.45]])
    labels = np.array([[1, 0], [0, 1], [0, 1], [0, 0], [0, 0]], dtype=bool)
    closed, th = dir_far(scores, labels, ranks=(1, 2))
    np.testing.assert_allclose(closed[0], [2 / 3, 1.0])
    assert th[0] == pytest.approx(0.1 - 1e-10)
    # non-mated best scores sorted: 0.5, 0.45; FAR 0.5 -> k = 1 -> threshold 0.5; FAR 0.1 -> k = 0 -> 0.5 + 1e-8
    dirs, th = dir_far(scores, labels, ranks=(1,), fars=(0.5, 0.1))
    np.testing.assert_allclose(th, [0.5, 0.5 + 1e-8])
    np.testing.assert_allclose(dirs[:, 0], [2 / 3, 2 / 3])


def test_tpir_at_fpir_ijb_evals_rule() -> None:
    gallery = np.eye(3)
    g_labels = np.array([1, 2, 3])
    probes = np.array([[0.9, 0.1, 0], [0.2, 0.5, 0], [0, 0, 0.3], [0.6, 0, 0], [0, 0.4, 0]])
    p_labels = np.array([1, 2, 3, 7, 8])  # two non-mated probes with best scores 0.6, 0.4
    r = tpir_at_fpir(probes, p_labels, gallery, g_labels, fpirs=(0.5, 1.0))
    # fpir 0.5: index max(int(2*0.5)-1, 0) = 0 -> threshold 0.6 -> only 0.9 passes
    # fpir 1.0: index 1 -> threshold 0.4 -> 0.9 and 0.5 pass
    assert r == {0.5: pytest.approx(1 / 3), 1.0: pytest.approx(2 / 3)}


def test_two_gallery_identification_shapes() -> None:
    rng = np.random.default_rng(0)
    c = rng.normal(size=(6, 8))
    c /= np.linalg.norm(c, axis=1, keepdims=True)  # inner products of unit vectors: cosine
    probes, labels = c + 0.01 * rng.normal(size=(6, 8)), np.arange(6)
    res = two_gallery_identification(probes, labels, [(c[::2], labels[::2]), (c[1::2], labels[1::2])])
    assert res["cmc"] == {1: 1.0, 5: 1.0, 10: 1.0}
    assert set(res["tpir_at_fpir"]) == {0.01, 0.1}
