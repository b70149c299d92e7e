"""Margin losses: values and gradients against hand-derived formulas, boundaries, AdaFace EMA."""

from __future__ import annotations

import math

import pytest
import torch

from fuseface import registry
from fuseface.nn.losses.margin import AdaFaceLoss, ArcFace, CombinedMarginLoss, CosFace, build_margin_loss

S = 16.0


def _setup(n: int = 6, c: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    cos = torch.rand(n, c, generator=g, dtype=torch.float64) * 1.96 - 0.98
    labels = torch.randint(0, c, (n,), generator=g)
    return cos.float(), labels


def _targets(out: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return out[torch.arange(len(labels)), labels]


def test_arcface_value_and_true_gradient() -> None:
    cos, labels = _setup()
    m = 0.5
    x = cos.clone().requires_grad_(True)
    out = ArcFace(s=S, m=m)(x, labels)
    c = _targets(cos, labels).double()
    theta = torch.arccos(c)
    expected = torch.where(theta + m < math.pi, torch.cos(theta + m), c - math.sin(math.pi - m) * m)
    torch.testing.assert_close(_targets(out, labels).double(), S * expected, atol=1e-4, rtol=1e-5)
    # non-target logits are only scaled
    mask = torch.ones_like(cos, dtype=torch.bool)
    mask[torch.arange(len(labels)), labels] = False
    torch.testing.assert_close(out[mask], S * cos[mask])
    # d/dc s*cos(acos(c) + m) = s * (cos m + c sin m / sqrt(1 - c^2))  (inside the monotone range)
    out.sum().backward()
    grad_t = _targets(x.grad, labels).double()
    inside = theta + m < math.pi
    expected_grad = S * (math.cos(m) + c * math.sin(m) / torch.sqrt(1 - c * c))
    torch.testing.assert_close(grad_t[inside], expected_grad[inside], atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(grad_t[~inside], torch.full_like(grad_t[~inside], S))
    torch.testing.assert_close(x.grad[mask], torch.full_like(x.grad[mask], S))


def test_no_grad_margin_matches_insightface_value_and_plain_gradient() -> None:
    cos, labels = _setup(seed=1)
    cos[0, labels[0]] = -0.99  # theta + m > pi: insightface keeps cos(theta + m), no fallback
    m = 0.5
    x = cos.clone().requires_grad_(True)
    out = ArcFace(s=S, m=m, no_grad_margin=True)(x, labels)
    c = _targets(cos, labels).double()
    torch.testing.assert_close(_targets(out, labels).double(), S * torch.cos(torch.arccos(c) + m), atol=1e-4, rtol=1e-5)
    out.sum().backward()
    # the gradient is that of plain s * cos(theta) everywhere
    torch.testing.assert_close(x.grad, torch.full_like(x.grad, S))


def test_cosface_and_combined() -> None:
    cos, labels = _setup(seed=2)
    x = cos.clone().requires_grad_(True)
    out = CosFace(s=S, m=0.4)(x, labels)
    torch.testing.assert_close(_targets(out, labels), S * (_targets(cos, labels) - 0.4))
    out.sum().backward()
    torch.testing.assert_close(x.grad, torch.full_like(x.grad, S))

    m1, m2, m3 = 1.5, 0.1, 0.2
    x = cos.clone().double().requires_grad_(True)
    out = CombinedMarginLoss(S, m1, m2, m3)(x, labels)
    c = _targets(cos, labels).double()
    theta = torch.arccos(c)
    inside = m1 * theta + m2 < math.pi
    val = torch.where(inside, torch.cos(m1 * theta + m2), c - math.sin(math.pi - m2) * m2) - m3
    torch.testing.assert_close(_targets(out, labels).double(), S * val, atol=1e-4, rtol=1e-5)
    out.sum().backward()
    # d/dc cos(m1 acos c + m2) = m1 sin(m1 theta + m2) / sqrt(1 - c^2)
    g = S * m1 * torch.sin(m1 * theta + m2) / torch.sqrt(1 - c * c)
    torch.testing.assert_close(_targets(x.grad, labels)[inside].double(), g[inside], atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize("no_grad", [False, True])
@pytest.mark.parametrize("loss", ["arcface", "cosface", "combined", "adaface"])
def test_boundaries_are_finite(loss: str, no_grad: bool) -> None:
    cos = torch.tensor([[1.0, -1.0, 0.0], [-1.0, 1.0, 0.5], [0.999999, -0.999999, 1.0]])
    labels = torch.tensor([0, 0, 2])
    fn = build_margin_loss(loss, s=S, m1=1.2 if loss == "combined" else 1.0, m2=0.5, m3=0.1, no_grad_margin=no_grad)
    x = cos.clone().requires_grad_(True)
    out = fn(x, labels, torch.ones(3) * 20) if loss == "adaface" else fn(x, labels)
    out.sum().backward()
    assert torch.isfinite(out).all()
    assert torch.isfinite(x.grad).all()


def test_rows_without_local_target_are_only_scaled() -> None:
    cos, labels = _setup(seed=3)
    labels[::2] = -1
    out = ArcFace(s=S)(cos, labels)
    torch.testing.assert_close(out[::2], S * cos[::2])
    assert not torch.allclose(out[1::2], S * cos[1::2])


def test_adaface_ema_scaler_and_margins() -> None:
    cos, labels = _setup(n=8, seed=4)
    norms = torch.linspace(5.0, 40.0, 8)
    loss = AdaFaceLoss(m=0.4, h=0.333, s=S, t_alpha=0.01, eps=1e-3)
    assert float(loss.batch_mean) == 20.0 and float(loss.batch_std) == 100.0
    x = cos.clone().requires_grad_(True)
    out = loss(x, labels, norms)
    mean = 0.99 * 20.0 + 0.01 * float(norms.mean())
    std = 0.99 * 100.0 + 0.01 * float(norms.std())
    assert float(loss.batch_mean) == pytest.approx(mean, rel=1e-6)
    assert float(loss.batch_std) == pytest.approx(std, rel=1e-6)
    scaler = torch.clamp(0.333 * (norms.double() - mean) / (std + 1e-3), -1, 1)
    c = _targets(cos, labels).double().clamp(-1 + 1e-3, 1 - 1e-3)
    theta_m = (torch.arccos(c) - 0.4 * scaler).clamp(1e-3, math.pi - 1e-3)
    expected = torch.cos(theta_m) - (0.4 + 0.4 * scaler)
    torch.testing.assert_close(_targets(out, labels).double(), S * expected, atol=1e-4, rtol=1e-5)
    out.sum().backward()
    grad = S * torch.sin(theta_m) / torch.sqrt(1 - c * c)
    torch.testing.assert_close(_targets(x.grad, labels).double(), grad, atol=1e-3, rtol=1e-4)
    # extreme norms clip the scaler to +-1; eval mode does not update the statistics
    loss.eval()
    before = loss.batch_mean.clone()
    sc = loss.margin_scaler(torch.tensor([0.0, 1e4]))
    torch.testing.assert_close(
        sc,
        torch.tensor(
            [
                -0.333 * (before.item() - 0.001) / (loss.batch_std.item() + 1e-3),
                0.333 * (100 - before.item()) / (loss.batch_std.item() + 1e-3),
            ]
        ),
    )
    loss(cos, labels, norms)
    assert torch.equal(loss.batch_mean, before)
    big = AdaFaceLoss(h=10.0)
    torch.testing.assert_close(big.margin_scaler(torch.tensor([0.0, 100.0])), torch.tensor([-1.0, 1.0]))


def test_registry_names_resolve() -> None:
    assert registry.resolve("loss", "arcface") is ArcFace
    assert registry.resolve("loss", "cosface") is CosFace
    assert registry.resolve("loss", "combined") is CombinedMarginLoss
    assert registry.resolve("loss", "adaface") is AdaFaceLoss
    with pytest.raises(ValueError):
        CombinedMarginLoss(64, 0.5, 0.5, 0.0)
