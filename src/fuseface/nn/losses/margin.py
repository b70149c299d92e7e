"""Margin losses acting on cosine logits: insightface's combined margin and AdaFace.

Every loss here is a module ``loss(cos_logits, labels[, norms]) -> scaled logits``: it takes the
cosines between L2-normalised embeddings and L2-normalised class centres (``(N, C)``, values in
[-1, 1]) and the column of each row's true class (``-1`` when the true class is not among the
columns, e.g. it lives on another rank's Partial FC shard), modifies the target logit and multiplies
everything by the scale ``s``. The cross-entropy is done by the caller
(:class:`fuseface.nn.losses.partial_fc.PartialFC`, which may be distributed), as in insightface
``arcface_torch`` (losses.py + partial_fc_v2.py).

Combined margin (insightface ``CombinedMarginLoss(s, m1, m2, m3)``; ArcFace ``(1, 0.5, 0)``,
CosFace ``(1, 0, 0.4)``, SphereFace-style ``m1 > 1``): the target logit becomes
``cos(m1 * theta + m2) - m3`` with ``theta = arccos(cos)``.

* Gradient. insightface applies the ArcFace margin **in place under ``torch.no_grad()``**
  (arccos -> +m2 -> cos), so the forward value is ArcFace but the gradient is that of plain
  ``s * cos(theta)`` (METHODS.md §1.2). ``no_grad_margin=True`` reproduces that exactly
  (implemented as ``cos + (target - cos).detach()``). The default, ``no_grad_margin=False``, is the
  true gradient of ``s * (cos(m1*theta + m2) - m3)``, i.e. the ArcFace paper's loss.
* Boundaries. The true-gradient path never differentiates ``arccos`` at +-1: for ``m1 == 1`` it
  uses ``cos*cos(m2) - sin*sin(m2)`` with ``sin = sqrt(clamp(1 - cos^2, eps))`` (zero gradient where
  clamped), for ``m1 != 1`` the cosine is clamped to ``[-1 + eps, 1 - eps]`` before ``arccos``.
  When ``m1*theta + m2 > pi`` the function ``cos(m1*theta + m2)`` would turn back up (the target
  would be *rewarded* for moving away); like insightface's original ``ArcFace`` class
  (``th = cos(pi - m)``, ``mm = sin(pi - m) * m``) the target then becomes ``cos - mm - m3``, a
  monotone continuation. ``easy_margin=True`` instead applies the margin only where ``cos > 0``.
  With ``no_grad_margin=True`` the current insightface ``CombinedMarginLoss`` is reproduced
  bit-for-bit, which has no such fallback (``cos(theta + m2)`` for every theta).

AdaFace (Kim et al. 2022; mk-minchul/AdaFace head.py; METHODS.md §1.3): the margin adapts to the
image quality proxied by the feature norm ``||f||``. Batch statistics of the (detached, clipped to
[0.001, 100]) norms are kept as EMA buffers ``batch_mean`` / ``batch_std`` (initial 20 / 100,
momentum ``t_alpha`` = 0.01, updated *before* use), then

    scaler   = clip(h * (||f|| - batch_mean) / (batch_std + eps), -1, 1)
    theta'   = clip(theta - m * scaler, eps, pi - eps)          (angular margin g_angle = -m*scaler)
    target   = cos(theta') - (m + m * scaler)                     (additive margin g_add = m + m*scaler)

for the target column only, then everything times ``s``; the gradient flows through ``arccos`` of
the cosine clamped to ``[-1 + eps, 1 - eps]`` as in the official head. Under Partial FC the norms of
the whole global batch are used for the statistics (the official code uses each GPU's batch).
"""

from __future__ import annotations

import math

import torch
from torch import nn

_SIN_EPS = 1e-7


def _target_index(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    rows = torch.nonzero(labels != -1, as_tuple=False).squeeze(1)
    return rows, labels[rows].long()


class CombinedMarginLoss(nn.Module):
    """insightface combined margin ``s * (cos(m1*theta + m2) - m3)`` on the target logit.

    Args:
        s: scale; m1: multiplicative angular margin; m2: additive angular margin; m3: additive
        cosine margin. no_grad_margin: insightface's margin-without-gradient behaviour (see the
        module docstring). easy_margin: apply the angular margin only where ``cos > 0``.
    """

    needs_norms = False

    def __init__(
        self,
        s: float = 64.0,
        m1: float = 1.0,
        m2: float = 0.5,
        m3: float = 0.0,
        no_grad_margin: bool = False,
        easy_margin: bool = False,
    ) -> None:
        super().__init__()
        if m1 < 1.0 or m2 < 0.0 or m3 < 0.0:
            raise ValueError(f"margins must satisfy m1 >= 1, m2 >= 0, m3 >= 0; got {(m1, m2, m3)}")
        self.s, self.m1, self.m2, self.m3 = float(s), float(m1), float(m2), float(m3)
        self.no_grad_margin = no_grad_margin
        self.easy_margin = easy_margin
        self.cos_m, self.sin_m = math.cos(m2), math.sin(m2)
        # insightface ArcFace: below cos(pi - m) the target continues as cos - sin(pi - m) * m
        self.th = math.cos(math.pi - m2)
        self.mm = math.sin(math.pi - m2) * m2

    def extra_repr(self) -> str:
        return f"s={self.s}, m1={self.m1}, m2={self.m2}, m3={self.m3}, no_grad_margin={self.no_grad_margin}"

    def target_logit(self, cos: torch.Tensor) -> torch.Tensor:
        """``cos(m1*theta + m2) - m3`` for target cosines (unscaled), boundary-safe."""
        if self.no_grad_margin:
            # insightface CombinedMarginLoss: arccos -> (+m2) -> cos, no fallback (value only)
            theta = torch.arccos(cos.clamp(-1.0, 1.0))
            return torch.cos(self.m1 * theta + self.m2) - self.m3
        if self.m1 == 1.0:
            if self.m2 == 0.0:
                return cos - self.m3
            sin = torch.sqrt((1.0 - cos * cos).clamp_min(_SIN_EPS))
            phi = cos * self.cos_m - sin * self.sin_m
            past_pi = cos <= self.th
        else:
            theta = torch.arccos(cos.clamp(-1.0 + _SIN_EPS, 1.0 - _SIN_EPS))
            phi = torch.cos(self.m1 * theta + self.m2)
            past_pi = self.m1 * theta + self.m2 >= math.pi
        if self.easy_margin:
            phi = torch.where(cos > 0, phi, cos)
        else:
            phi = torch.where(past_pi, cos - self.mm, phi)
        return phi - self.m3

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        rows, cols = _target_index(labels)
        logits = logits.float()
        cos_t = logits[rows, cols]
        target = self.target_logit(cos_t)
        if self.no_grad_margin:
            target = cos_t + (target - cos_t).detach()
        out = logits.index_put((rows, cols), target)
        return out * self.s


class ArcFace(CombinedMarginLoss):
    """ArcFace: target ``cos(theta + m)`` (insightface ``(s, 1.0, m, 0.0)``)."""

    def __init__(self, s: float = 64.0, m: float = 0.5, no_grad_margin: bool = False, easy_margin: bool = False):
        super().__init__(s, 1.0, m, 0.0, no_grad_margin=no_grad_margin, easy_margin=easy_margin)


class CosFace(CombinedMarginLoss):
    """CosFace: target ``cos(theta) - m`` (insightface ``(s, 1.0, 0.0, m)``)."""

    def __init__(self, s: float = 64.0, m: float = 0.4, no_grad_margin: bool = False):
        super().__init__(s, 1.0, 0.0, m, no_grad_margin=no_grad_margin)


class AdaFaceLoss(nn.Module):
    """AdaFace quality-adaptive margin (see the module docstring); ``forward(logits, labels, norms)``."""

    needs_norms = True

    def __init__(self, m: float = 0.4, h: float = 0.333, s: float = 64.0, t_alpha: float = 0.01, eps: float = 1e-3):
        super().__init__()
        self.m, self.h, self.s, self.t_alpha, self.eps = float(m), float(h), float(s), float(t_alpha), float(eps)
        self.register_buffer("batch_mean", torch.ones(1) * 20.0)
        self.register_buffer("batch_std", torch.ones(1) * 100.0)

    def extra_repr(self) -> str:
        return f"m={self.m}, h={self.h}, s={self.s}, t_alpha={self.t_alpha}, eps={self.eps}"

    @torch.no_grad()
    def update_statistics(self, norms: torch.Tensor) -> None:
        """EMA of the batch mean / std of the (clipped, detached) feature norms."""
        safe = norms.detach().float().clamp(0.001, 100.0)
        mean = safe.mean()
        std = safe.std() if safe.numel() > 1 else self.batch_std[0]
        self.batch_mean.mul_(1.0 - self.t_alpha).add_(mean * self.t_alpha)
        self.batch_std.mul_(1.0 - self.t_alpha).add_(std * self.t_alpha)

    def margin_scaler(self, norms: torch.Tensor) -> torch.Tensor:
        safe = norms.detach().float().clamp(0.001, 100.0).reshape(-1)
        return ((safe - self.batch_mean) / (self.batch_std + self.eps) * self.h).clamp(-1.0, 1.0)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.update_statistics(norms)
        scaler = self.margin_scaler(norms)
        rows, cols = _target_index(labels)
        logits = logits.float().clamp(-1.0 + self.eps, 1.0 - self.eps)
        cos_t = logits[rows, cols]
        sc = scaler[rows]
        theta = torch.arccos(cos_t)
        theta_m = (theta - self.m * sc).clamp(self.eps, math.pi - self.eps)
        target = torch.cos(theta_m) - (self.m + self.m * sc)
        out = logits.index_put((rows, cols), target)
        return out * self.s


def build_margin_loss(name: str, **kw: float | bool) -> nn.Module:
    """``arcface`` / ``cosface`` / ``combined`` / ``adaface`` from a flat set of keywords
    (``s, m1, m2, m3, m, h, t_alpha, no_grad_margin``); irrelevant keywords are ignored."""
    if name == "adaface":
        return AdaFaceLoss(
            m=kw.get("m", 0.4), h=kw.get("h", 0.333), s=kw.get("s", 64.0), t_alpha=kw.get("t_alpha", 0.01)
        )
    ng = bool(kw.get("no_grad_margin", False))
    if name == "arcface":
        return ArcFace(s=kw.get("s", 64.0), m=kw.get("m2", 0.5), no_grad_margin=ng)
    if name == "cosface":
        return CosFace(s=kw.get("s", 64.0), m=kw.get("m3", 0.4), no_grad_margin=ng)
    if name == "combined":
        return CombinedMarginLoss(
            kw.get("s", 64.0), kw.get("m1", 1.0), kw.get("m2", 0.5), kw.get("m3", 0.0), no_grad_margin=ng
        )
    raise ValueError(f"unknown margin loss {name!r}; expected arcface, cosface, combined or adaface")
