"""Baseline set fusions behind the same interface as :class:`fuseface.nn.fusion.caface.CAFace`.

Every class is an ``nn.Module`` with ``fuse(features, styles=None, scores=None, chunk_size=None,
return_dropped=False) -> np.ndarray (D,)`` returning an L2-normalised template; NaN rows are dropped
and counted, an empty probe raises :class:`fuseface.errors.DataError`.

* :class:`AverageFusion`: mean of the unit-normalised features (norms discarded).
* :class:`NormWeightedFusion`: mean of the un-normalised features, i.e. ``Σ ‖f_n‖ f̂_n`` — the
  ``average`` baseline of the CAFace code (mean of ``f̂·‖f‖``, ``METHODS.md`` §3.11).
* :class:`ScoreWeightedFusion`: insightface's IJB template pooling (recognition/arcface_torch
  eval_ijbc.py ``image2template_feature`` with ``use_norm_score`` / ``use_detector_score``): each
  feature (un-normalised if ``keep_norm``) is multiplied by its detector (faceness) score, features
  of the same media are averaged, the media means are summed, and the sum is L2-normalised.
* :class:`SelfAttentionFusion`: plain quadratic self-attention over all N images (the design CAFace
  avoids): unit features projected to ``dim`` tokens, one multi-head self-attention layer, a scalar
  quality score per image, softmax over the N images, weighted mean of the unit features. Untrained,
  its weights are near-uniform (close to :class:`AverageFusion`); trainable with the set trainer.

``chunk_size`` is accepted for interface parity; the pooling baselines are order- and
chunk-independent sums, and :class:`SelfAttentionFusion` always attends over the whole probe.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fuseface.errors import DataError
from fuseface.ops import l2_normalize

__all__ = ["AverageFusion", "NormWeightedFusion", "ScoreWeightedFusion", "SelfAttentionFusion", "clean_rows"]


def clean_rows(features: Any, *extra: Any) -> tuple[np.ndarray, list[np.ndarray | None], int]:
    """Features (N, D) float32 and aligned extras with non-finite feature/extra rows dropped.

    Returns ``(features, extras, dropped)``; raises :class:`DataError` for an empty probe or
    when every row is NaN.
    """
    feats = np.asarray(features, dtype=np.float32)
    if feats.ndim != 2:
        raise DataError(f"features must be a 2-D array (N, D), got shape {feats.shape}")
    if len(feats) == 0:
        raise DataError("empty probe: no features to fuse")
    keep = np.isfinite(feats).all(1)
    arrays: list[np.ndarray | None] = []
    for e in extra:
        if e is None:
            arrays.append(None)
            continue
        arr = np.asarray(e)
        if len(arr) != len(feats):
            raise DataError(f"per-image array has {len(arr)} rows but features have {len(feats)}")
        if arr.dtype.kind == "f":
            keep &= np.isfinite(arr.reshape(len(arr), -1)).all(1)
        arrays.append(arr)
    if not keep.any():
        raise DataError(f"empty probe: all {len(feats)} rows contain NaN/inf")
    dropped = int((~keep).sum())
    return feats[keep], [None if a is None else a[keep] for a in arrays], dropped


def _finish(template: np.ndarray, dropped: int, return_dropped: bool, name: str) -> Any:
    template = np.asarray(template, dtype=np.float64)
    out = (template / (np.linalg.norm(template) + 1e-8)).astype(np.float32)
    if dropped and not return_dropped:
        warnings.warn(f"{name}.fuse: dropped {dropped} NaN rows", RuntimeWarning, stacklevel=3)
    return (out, dropped) if return_dropped else out


class _PoolingFusion(nn.Module):
    """Common ``fuse`` of the parameter-free pooling baselines."""

    def pool(self, feats: np.ndarray, scores: np.ndarray | None, media: np.ndarray | None) -> np.ndarray:
        raise NotImplementedError

    def fuse(
        self,
        features: Any,
        styles: Any = None,
        scores: Any = None,
        chunk_size: int | None = None,
        *,
        media: Any = None,
        return_dropped: bool = False,
    ) -> Any:
        """L2-normalised template (D,) of one probe (``styles`` and ``chunk_size`` are ignored)."""
        feats, (sc, md), dropped = clean_rows(features, scores, media)
        return _finish(self.pool(feats.astype(np.float64), sc, md), dropped, return_dropped, type(self).__name__)


class AverageFusion(_PoolingFusion):
    """Mean of the unit-normalised features."""

    def pool(self, feats: np.ndarray, scores: np.ndarray | None, media: np.ndarray | None) -> np.ndarray:
        return l2_normalize(feats, eps=1e-12).mean(0)


class NormWeightedFusion(_PoolingFusion):
    """Mean of the un-normalised features (each unit feature weighted by its norm)."""

    def pool(self, feats: np.ndarray, scores: np.ndarray | None, media: np.ndarray | None) -> np.ndarray:
        return feats.mean(0)


class ScoreWeightedFusion(_PoolingFusion):
    """insightface IJB media/template pooling with detector scores (see the module docstring).

    Args:
        keep_norm: keep the feature norms (``use_norm_score=True``); else unit features.
        detector_score: multiply by the faceness score (``use_detector_score=True``).
    """

    def __init__(self, keep_norm: bool = True, detector_score: bool = True) -> None:
        super().__init__()
        self.keep_norm = keep_norm
        self.detector_score = detector_score

    def pool(self, feats: np.ndarray, scores: np.ndarray | None, media: np.ndarray | None) -> np.ndarray:
        if not self.keep_norm:
            feats = l2_normalize(feats, eps=1e-12)
        if self.detector_score:
            if scores is None:
                raise ValueError("ScoreWeightedFusion with detector_score=True needs scores (N,)")
            feats = feats * np.asarray(scores, dtype=np.float64).reshape(-1, 1)
        if media is None:
            media = np.arange(len(feats))  # every image its own media: plain sum
        total = np.zeros(feats.shape[1])
        for m in np.unique(media):
            total += feats[media == m].mean(0)
        return total


class SelfAttentionFusion(nn.Module):
    """Quadratic self-attention quality pooling over the whole probe (see the module docstring)."""

    def __init__(self, feature_dim: int = 512, dim: int = 128, num_heads: int = 8) -> None:
        super().__init__()
        self.feature_dim = feature_dim
        self.num_heads = num_heads
        self.embed = nn.Linear(feature_dim + 1, dim)  # unit feature and log-norm
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.score = nn.Linear(dim, 1)
        nn.init.zeros_(self.score.weight)
        nn.init.zeros_(self.score.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``features`` (B, N, D) un-normalised -> fused (B, D) (weighted mean of unit features)."""
        norms = features.norm(dim=-1, keepdim=True)
        unit = features / (norms + 1e-5)
        h = self.embed(torch.cat([unit, torch.log1p(norms)], dim=-1))
        B, N, C = h.shape
        qkv = self.qkv(self.norm(h)).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        h = h + self.proj(F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2]).transpose(1, 2).reshape(B, N, C))
        weights = self.score(h).softmax(dim=1)  # softmax over the N images
        return (weights * unit).sum(1)

    @torch.inference_mode()
    def fuse(
        self,
        features: Any,
        styles: Any = None,
        scores: Any = None,
        chunk_size: int | None = None,
        *,
        return_dropped: bool = False,
    ) -> Any:
        """L2-normalised template (D,), attending over all N images at once (O(N²) memory)."""
        feats, _, dropped = clean_rows(features)
        fused = self(torch.from_numpy(feats)[None])[0].numpy()
        return _finish(fused, dropped, return_dropped, "SelfAttentionFusion")
