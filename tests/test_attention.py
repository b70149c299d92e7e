"""SKConv / SE / CBAM baselines, and every conv plug-in (MSConv included) inside IResNet."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fuseface
from fuseface.nn.backbones.iresnet import IResNet
from fuseface.nn.layers.attention import CBAMConv, SEConv, SKConv, cbam_factory, se_factory, skconv_factory
from fuseface.nn.layers.msconv import MSConv

PLUGINS = {"msconv": MSConv, "skconv": SKConv, "se": SEConv, "cbam": CBAMConv}


@pytest.mark.parametrize("factory", [skconv_factory, se_factory, cbam_factory])
@pytest.mark.parametrize(("stride", "out"), [(1, 10), (2, 5)])
def test_baseline_shapes_and_gradients(factory, stride: int, out: int) -> None:
    m = factory(64, stride)
    x = torch.randn(2, 64, 10, 10, requires_grad=True)
    y = m(x)
    assert y.shape == (2, 64, out, out)
    y.square().mean().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())


def test_skconv_is_a_softmax_selection_of_the_dilated_branches() -> None:
    m = SKConv(32).eval()
    x = torch.randn(2, 32, 8, 8)
    u1, u2 = m.convs[0](x), m.convs[1](x)
    z = m.fc(m.gap(u1 + u2))  # squeeze on the SUM
    w = torch.softmax(torch.stack([m.fcs[0](z), m.fcs[1](z)]), dim=0)
    torch.testing.assert_close(m(x), w[0] * u1 + w[1] * u2)
    assert m.convs[1][0].dilation == (2, 2) and m.convs[1][0].groups == 32
    with pytest.raises(ValueError, match="divisible by groups"):
        SKConv(40)


def test_se_and_cbam_reweight_the_plain_conv_output() -> None:
    se = SEConv(32).eval()
    x = torch.randn(2, 32, 6, 6)
    y = se.conv(x)
    gate = se(x) / y
    # SE: one gate per (sample, channel), in (0, 1)
    assert torch.allclose(gate, gate[:, :, :1, :1].expand_as(gate), atol=1e-4)
    assert (gate > 0).all() and (gate < 1).all()
    cbam = CBAMConv(32).eval()
    y = cbam.conv(x)
    ch = cbam.channel(y)
    torch.testing.assert_close(cbam(x), y * ch * cbam.spatial(y * ch))
    assert cbam.spatial(y).shape == (2, 1, 6, 6)


@pytest.mark.parametrize("name", sorted(PLUGINS))
def test_plugins_replace_conv2_in_chosen_iresnet_stages(name: str) -> None:
    net = IResNet((1, 1, 1, 1), conv=name, stages=(3, 4), input_size=64).eval()
    assert isinstance(net.layer3[0].conv2, PLUGINS[name]) and isinstance(net.layer4[0].conv2, PLUGINS[name])
    assert isinstance(net.layer2[0].conv2, nn.Conv2d)
    emb, stages = net(torch.randn(2, 3, 64, 64), return_stages=True)
    assert emb.shape == (2, 512) and torch.isfinite(emb).all()
    assert [tuple(s.shape[1:]) for s in stages] == [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4)]


def test_insightface_init_is_undone_inside_the_plugins() -> None:
    net = IResNet((1, 1, 1, 1), conv="msconv", stages=(4,), input_size=32)
    # PyTorch default for a 512 -> 512 1x1 conv is U(-1/sqrt(512), 1/sqrt(512)), not N(0, 0.1)
    assert net.layer4[0].conv2.fc_d[0].weight.abs().max() <= 512**-0.5 + 1e-7
    assert net.layer3[0].conv2.weight.std().item() == pytest.approx(0.1, rel=0.05)  # untouched plain conv
    se = IResNet((1, 1, 1, 1), conv="se", stages=(4,), input_size=32).layer4[0].conv2
    assert se.conv.weight.std().item() == pytest.approx(0.1, rel=0.05)  # the SE block's own 3x3 keeps the host init
    assert se.excite[1].weight.abs().max() <= 512**-0.5 + 1e-7


def _synthetic_batch(num_ids: int, per_id: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    from fuseface.data.synthetic import SyntheticFaces

    faces = SyntheticFaces(seed=0, image_size=size)
    images = [faces.render(i, v)[0] for i in range(num_ids) for v in range(per_id)]
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div(255).sub(0.5).div(0.5)
    return x, torch.arange(num_ids).repeat_interleave(per_id)


def test_ir50_msconv_builds_and_trains_with_decreasing_loss() -> None:
    full = fuseface.create_backbone("ir50", conv="msconv").eval()
    assert sum(isinstance(m, MSConv) for m in full.modules()) == 3 + 4 + 14 + 3
    assert full(torch.randn(1, 3, 112, 112)).shape == (1, 512)
    del full
    # the same network at 32x32 input (a smaller fc only) keeps the training steps cheap
    torch.manual_seed(0)
    net = fuseface.create_backbone("ir50", conv="msconv", input_size=32)
    x, y = _synthetic_batch(4, 3, 32)
    classes = nn.Parameter(torch.randn(4, 512) * 0.01)
    opt = torch.optim.SGD([*net.parameters(), classes], lr=0.05, momentum=0.9)
    net.train()
    losses = []
    for _ in range(4):
        emb = net(x)
        logits = 16.0 * F.normalize(emb) @ F.normalize(classes).t()
        loss = F.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
        opt.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses)) and losses[-1] < losses[0] - 0.1, losses
