"""MSConv module: shapes, gradients, the MO/SO algebra, ablation switches, official key layout.

Output parity with the official module: ``tests/test_official_parity_models.py``.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fuseface.nn.layers.msconv import MSConv, msconv_factory

BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def official_msconv_layout(C: int, d: int) -> dict[str, tuple[int, ...]]:
    """State-dict keys/shapes of the official ``MSConv(features=C)`` (Zoey-SiZhou/MSConv
    backbones/model.py): ``convs`` = ModuleList of Sequential(Conv2d(C, C, 3, groups=32), BN, PReLU()),
    ``gap``, ``fc`` = Sequential(Conv2d(C, d, 1), BN, PReLU()), ``fcs`` = 2 x Sequential(Conv2d(d, C, 1), BN,
    PReLU()), ``fc_d`` = Sequential(Conv2d(C, C, 1), BN, PReLU()); no conv bias, single-slope PReLU."""
    layout: dict[str, tuple[int, ...]] = {}

    def seq(prefix: str, conv_shape: tuple[int, ...], out: int) -> None:
        layout[f"{prefix}.0.weight"] = conv_shape
        for k in BN_KEYS:
            layout[f"{prefix}.1.{k}"] = () if k == "num_batches_tracked" else (out,)
        layout[f"{prefix}.2.weight"] = (1,)

    for i in range(2):
        seq(f"convs.{i}", (C, C // 32, 3, 3), C)
    seq("fc", (d, C, 1, 1), d)
    for i in range(2):
        seq(f"fcs.{i}", (C, d, 1, 1), C)
    seq("fc_d", (C, C, 1, 1), C)
    return layout


@pytest.mark.parametrize(("C", "d"), [(128, 32), (1024, 64)])
def test_state_dict_equals_official_layout(C: int, d: int) -> None:
    sd = MSConv(C).state_dict()
    assert {k: tuple(v.shape) for k, v in sd.items()} == official_msconv_layout(C, d)


def test_state_dict_round_trip_gives_identical_output() -> None:
    src = MSConv(64).eval()
    for p in src.parameters():
        nn.init.normal_(p, 0, 0.2)
    dst = MSConv(64)
    dst.load_state_dict(src.state_dict(), strict=True)
    x = torch.randn(2, 64, 9, 9)
    torch.testing.assert_close(dst.eval()(x), src(x), rtol=0, atol=0)


@pytest.mark.parametrize(("stride", "size", "out"), [(1, 14, 14), (2, 14, 7), (2, 7, 4)])
def test_shapes_and_gradients(stride: int, size: int, out: int) -> None:
    m = MSConv(64, stride)
    x = torch.randn(3, 64, size, size, requires_grad=True)
    y = m(x)
    assert y.shape == (3, 64, out, out)
    y.square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def _force_gate(m: MSConv, a1_bias: float, a2_bias: float) -> None:
    """Push the excitation vectors to huge values through the BN biases of ``fcs``."""
    with torch.no_grad():
        m.fcs[0][1].bias.fill_(a1_bias)
        m.fcs[1][1].bias.fill_(a2_bias)


@pytest.mark.parametrize("stride", [1, 2])
def test_gate_one_selects_dilation_1_and_gate_zero_selects_dilation_2(stride: int) -> None:
    m = MSConv(32, stride).eval()
    x = torch.randn(2, 32, 10, 10)
    u1, u2 = m.branches(x)
    _force_gate(m, 1e4, -1e4)  # c = sigmoid(a1 - a2) = 1 -> V = U1
    torch.testing.assert_close(m(x), m.fc_d(u1))
    _force_gate(m, -1e4, 1e4)  # c = 0 -> V = U2
    torch.testing.assert_close(m(x), m.fc_d(u2))
    # equal excitations: c = sigmoid(1e-6) ~ 1/2, V is the branch mean
    _force_gate(m, 0.0, 0.0)
    with torch.no_grad():
        for i in range(2):
            m.fcs[i][0].weight.zero_()
    torch.testing.assert_close(m(x), m.fc_d((u1 + u2) / 2), rtol=1e-5, atol=1e-5)


def test_so_selection_is_convex_combination() -> None:
    m = MSConv(32).eval()
    x = torch.randn(2, 32, 6, 6)
    u1, u2 = m.branches(x)
    a1, a2 = m.excitation(u1, u2)
    c = torch.sigmoid(a1 - a2 + 1e-6)
    torch.testing.assert_close(m.select(u1, u2, a1, a2), c * u1 + (1 - c) * u2, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(m(x), m.fc_d(c * (u1 - u2) + u2))


def test_mo_squeezes_the_product_and_mo_false_squeezes_the_sum() -> None:
    torch.manual_seed(1)
    full = MSConv(32).eval()
    no_mo = MSConv(32, mo=False).eval()
    no_mo.load_state_dict(full.state_dict())
    x = torch.randn(2, 32, 8, 8)
    u1, u2 = full.branches(x)
    z_prod = full.fc(full.gap(u1 * u2))
    z_sum = full.fc(full.gap(u1 + u2))
    torch.testing.assert_close(full.excitation(u1, u2)[0], full.fcs[0](z_prod))
    torch.testing.assert_close(no_mo.excitation(u1, u2)[0], no_mo.fcs[0](z_sum))
    assert not torch.allclose(full(x), no_mo(x))


def test_so_false_uses_independent_gates_and_differs() -> None:
    torch.manual_seed(2)
    full = MSConv(32).eval()
    no_so = MSConv(32, so=False).eval()
    no_so.load_state_dict(full.state_dict())
    x = torch.randn(2, 32, 8, 8)
    u1, u2 = no_so.branches(x)
    a1, a2 = no_so.excitation(u1, u2)
    expected = no_so.fc_d(torch.sigmoid(a1) * u1 + torch.sigmoid(a2) * u2)
    torch.testing.assert_close(no_so(x), expected)
    assert not torch.allclose(full(x), no_so(x))
    # both gates open: V = U1 + U2, which no convex SO selection can produce
    _force_gate(no_so, 1e4, 1e4)
    torch.testing.assert_close(no_so(x), no_so.fc_d(u1 + u2))


def test_channels_not_divisible_by_groups_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"channels divisible by groups: got channels=48, groups=32"):
        MSConv(48)
    assert MSConv(48, groups=16).convs[0][0].groups == 16
    with pytest.raises(ValueError, match=r"expects a \(B, 64, H, W\) input"):
        MSConv(64)(torch.randn(1, 32, 8, 8))


def test_factory_and_reset_restore_default_init() -> None:
    m = msconv_factory(64, 2, mo=False)
    assert isinstance(m, MSConv) and m.stride == 2 and not m.mo and m.so
    with torch.no_grad():
        for conv in m.modules():
            if isinstance(conv, nn.Conv2d):
                conv.weight.normal_(0, 0.1)  # what IResNet's insightface loop does
    m.reset_parameters_fuseface()
    w = m.fc_d[0].weight
    bound = 1 / 64**0.5  # kaiming_uniform(a=sqrt(5)) on fan_in 64
    assert w.abs().max() <= bound + 1e-7  # N(0, 0.1) over 4096 weights would exceed 0.3
    assert m.fc_d[2].weight.item() == pytest.approx(0.25)


def test_profile_counts_the_mo_product() -> None:
    from fuseface.nn.profile import count_macs

    C, H = 128, 28
    d = 32
    m = MSConv(C).eval()
    convs = 2 * C * H * H * (C // 32) * 9 + d * C + 2 * C * d + C * H * H * C
    assert count_macs(m, torch.zeros(1, C, H, H)) == convs + C * H * H
    assert count_macs(MSConv(C, mo=False).eval(), torch.zeros(1, C, H, H)) == convs
    # METHODS.md 2.3: one MSConv at C=128 has 39.2 K parameters
    assert sum(p.numel() for p in m.parameters()) == pytest.approx(39.2e3, abs=60)


def test_subtractive_select_equals_the_expression_and_its_autograd() -> None:
    from fuseface.nn.layers.msconv import SubtractiveSelect

    g = torch.Generator().manual_seed(0)
    u1 = torch.randn(2, 4, 3, 3, dtype=torch.float64, generator=g, requires_grad=True)
    u2 = torch.randn(2, 4, 3, 3, dtype=torch.float64, generator=g, requires_grad=True)
    c = torch.rand(2, 4, 1, 1, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(SubtractiveSelect.apply, (u1, u2, c))
    x1, x2, xc = (t.detach().float().requires_grad_() for t in (u1, u2, c))
    ours = SubtractiveSelect.apply(x1, x2, xc)
    plain = xc * (x1 - x2) + x2
    assert torch.equal(ours, plain)  # bit for bit in float32
    w = torch.randn(ours.shape, generator=g)
    grads = torch.autograd.grad((ours * w).sum(), (x1, x2, xc))
    expected = torch.autograd.grad((plain * w).sum(), (x1, x2, xc))
    for a, b in zip(grads, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
