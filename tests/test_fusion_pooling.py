"""Baseline fusions: values by hand, NaN handling, the fuse_features dispatch and the registry."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fuseface
from fuseface.errors import DataError
from fuseface.nn.fusion import fuse_features
from fuseface.nn.fusion.pooling import AverageFusion, NormWeightedFusion, ScoreWeightedFusion, SelfAttentionFusion

A = np.array([[3.0, 4.0, 0.0], [0.0, 0.0, 2.0]], np.float32)  # norms 5 and 2


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x)


def test_average_and_norm_weighted_by_hand() -> None:
    np.testing.assert_allclose(fuse_features(A, "average"), _unit(np.array([0.3, 0.4, 0.5])), atol=1e-6)
    np.testing.assert_allclose(fuse_features(A, "norm_weighted"), _unit(np.array([1.5, 2.0, 1.0])), atol=1e-6)
    np.testing.assert_allclose(fuseface.fuse(A, method="average"), fuse_features(A, "average"))


def test_score_weighted_insightface_media_pooling_by_hand() -> None:
    feats = np.array([[1.0, 0, 0], [3.0, 0, 0], [0, 2.0, 0]], np.float32)
    scores = np.array([1.0, 0.5, 0.25])
    media = np.array([7, 7, 9])
    # media 7: mean(1*[1,0,0], 0.5*[3,0,0]) = [1.25,0,0]; media 9: 0.25*[0,2,0] = [0,0.5,0]; sum, L2
    expected = _unit(np.array([1.25, 0.5, 0.0]))
    np.testing.assert_allclose(fuse_features(feats, "score_weighted", scores=scores, media=media), expected, atol=1e-6)
    no_norm = ScoreWeightedFusion(keep_norm=False).fuse(feats, scores=scores, media=media)
    np.testing.assert_allclose(no_norm, _unit(np.array([0.75, 0.25, 0.0])), atol=1e-6)
    with pytest.raises(ValueError, match="scores"):
        fuse_features(feats, "score_weighted")


def test_nan_rows_and_empty_probe() -> None:
    with_nan = np.concatenate([A, np.full((1, 3), np.nan, np.float32)])
    out, dropped = NormWeightedFusion().fuse(with_nan, return_dropped=True)
    assert dropped == 1
    np.testing.assert_allclose(out, fuse_features(A, "norm_weighted"), atol=1e-7)
    with pytest.warns(RuntimeWarning, match="dropped 1"):
        fuse_features(with_nan, "average")
    for method in ("average", "norm_weighted", "self_attention"):
        with pytest.raises(DataError, match="empty probe"):
            fuse_features(np.zeros((0, 3), np.float32), method)
    with pytest.raises(DataError, match="empty probe"):
        AverageFusion().fuse(np.full((2, 3), np.nan, np.float32))
    with pytest.raises(ValueError, match="unknown fusion"):
        fuse_features(A, "median")
    with pytest.raises(ValueError, match="needs model"):
        fuse_features(A, "caface")


def test_self_attention_is_quadratic_pooling_and_permutation_invariant() -> None:
    torch.manual_seed(0)
    module = SelfAttentionFusion(feature_dim=16, dim=32, num_heads=4).eval()
    feats = np.random.default_rng(0).normal(size=(9, 16)).astype(np.float32)
    out = module.fuse(feats)
    # untrained: zero score layer -> uniform weights -> the average of unit features
    np.testing.assert_allclose(out, AverageFusion().fuse(feats), atol=1e-6)
    with torch.no_grad():
        module.score.weight.normal_()
    out = module.fuse(feats)
    np.testing.assert_allclose(module.fuse(feats[::-1].copy()), out, atol=1e-6)
    assert not np.allclose(out, AverageFusion().fuse(feats), atol=1e-3)


def test_registry_builds_every_fusion() -> None:
    for name in ("average", "norm_weighted", "score_weighted", "self_attention", "caface"):
        assert isinstance(fuseface.create_fusion(name), torch.nn.Module)
