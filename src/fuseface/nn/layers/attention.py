"""Baselines for MSConv: SKConv (selective kernel), SE and CBAM, pluggable where MSConv is.

Each module maps (B, C, H, W) to (B, C, ceil(H / stride), ceil(W / stride)) and has a factory
``factory(channels, stride, **kw)`` registered as a ``conv`` entry (``skconv``, ``se``, ``cbam``)
so ``create_backbone("ir50", conv="se", stages=[3, 4])`` swaps it in for IResNet's strided 3x3.

* :class:`SKConv` (Li et al., "Selective Kernel Networks", CVPR 2019): two grouped 3x3 branches
  with dilation 1 and 2 (the same branches as MSConv, for a like-for-like comparison), each with
  BN + ReLU; squeeze on the **sum** U1 + U2, a bottleneck 1x1 (C -> d) + BN + ReLU, one 1x1
  (d -> C) per branch, a softmax across the two branches and V = w1 * U1 + w2 * U2. No extra
  projection after the selection (MSConv's ``fc_d`` is one of its differences, METHODS.md 2.2).
* :class:`SEConv` (Hu et al., "Squeeze-and-Excitation Networks"): the block's plain 3x3 conv
  followed by squeeze-excitation: x * sigmoid(W2 relu(W1 GAP(x))), reduction 16.
* :class:`CBAMConv` (Woo et al., "CBAM", ECCV 2018): the plain 3x3 conv followed by channel
  attention (shared MLP on average- and max-pooled vectors, summed, sigmoid) and then spatial
  attention (7x7 conv over the channel-wise mean and max maps, sigmoid).

These are our implementations of the published designs, not copies of any repository.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def _check_groups(name: str, channels: int, groups: int) -> None:
    if channels <= 0 or groups <= 0 or channels % groups:
        raise ValueError(f"{name} needs channels divisible by groups: got channels={channels}, groups={groups}")


def _reset_default(modules: list[nn.Module]) -> None:
    """PyTorch default init for every parametrised sub-module of ``modules``."""
    for root in modules:
        for m in root.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()


class SKConv(nn.Module):
    """Two-branch selective kernel convolution with a sum squeeze and softmax selection.

    Args:
        channels: input and output channels; divisible by ``groups``.
        stride: stride of both branches.
        groups: groups of the 3x3 branches (32, like MSConv).
        reduction: d = max(C // reduction, min_dim).
        min_dim: lower bound of the squeeze width d.
    """

    def __init__(self, channels: int, stride: int = 1, *, groups: int = 32, reduction: int = 16, min_dim: int = 32):
        super().__init__()
        _check_groups("SKConv", channels, groups)
        d = max(channels // reduction, min_dim)
        self.channels = channels
        self.convs = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(
                    channels, channels, 3, stride=stride, padding=1 + i, dilation=1 + i, groups=groups, bias=False
                ),
                nn.BatchNorm2d(channels),
                nn.ReLU(inplace=True),
            )
            for i in range(2)
        )
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(nn.Conv2d(channels, d, 1, bias=False), nn.BatchNorm2d(d), nn.ReLU(inplace=True))
        self.fcs = nn.ModuleList(nn.Conv2d(d, channels, 1) for _ in range(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = torch.stack([conv(x) for conv in self.convs], dim=1)  # B, 2, C, H, W
        z = self.fc(self.gap(u.sum(dim=1)))
        logits = torch.stack([fc(z) for fc in self.fcs], dim=1)  # B, 2, C, 1, 1
        return (u * logits.softmax(dim=1)).sum(dim=1)

    def reset_parameters_fuseface(self) -> None:
        """PyTorch default init (undo IResNet's N(0, 0.1) loop), as for MSConv."""
        _reset_default([self])


class SEConv(nn.Module):
    """A plain 3x3 conv followed by squeeze-and-excitation channel attention.

    The 3x3 conv keeps the host network's initialisation (insightface's N(0, 0.1) in IResNet), so
    the baseline is exactly "plain block + SE"; only the excitation MLP is reset to PyTorch's
    default by :meth:`reset_parameters_fuseface`.
    """

    def __init__(self, channels: int, stride: int = 1, *, reduction: int = 16):
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.conv = nn.Conv2d(channels, channels, 3, stride=stride, padding=1, bias=False)
        self.excite = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, hidden, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y * self.excite(y)

    def reset_parameters_fuseface(self) -> None:
        _reset_default([self.excite])


class CBAMChannelAttention(nn.Module):
    """CBAM channel attention: sigmoid(MLP(avgpool(x)) + MLP(maxpool(x))) with a shared MLP."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = self.mlp(x.mean(dim=(2, 3), keepdim=True))
        mx = self.mlp(x.amax(dim=(2, 3), keepdim=True))
        return torch.sigmoid(avg + mx)


class CBAMSpatialAttention(nn.Module):
    """CBAM spatial attention: sigmoid(BN(conv7x7([mean_c(x), max_c(x)])))."""

    def __init__(self, kernel_size: int = 7):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.bn(self.conv(pooled)))


class CBAMConv(nn.Module):
    """A plain 3x3 conv followed by CBAM (channel attention, then spatial attention).

    As for :class:`SEConv`, the 3x3 conv keeps the host initialisation and only the attention
    parts are reset to PyTorch defaults.
    """

    def __init__(self, channels: int, stride: int = 1, *, reduction: int = 16, kernel_size: int = 7):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=stride, padding=1, bias=False)
        self.channel = CBAMChannelAttention(channels, reduction)
        self.spatial = CBAMSpatialAttention(kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        y = y * self.channel(y)
        return y * self.spatial(y)

    def reset_parameters_fuseface(self) -> None:
        _reset_default([self.channel, self.spatial])


def skconv_factory(channels: int, stride: int = 1, **kw: Any) -> SKConv:
    """``conv`` registry entry ``"skconv"``."""
    return SKConv(channels, stride, **kw)


def se_factory(channels: int, stride: int = 1, **kw: Any) -> SEConv:
    """``conv`` registry entry ``"se"``."""
    return SEConv(channels, stride, **kw)


def cbam_factory(channels: int, stride: int = 1, **kw: Any) -> CBAMConv:
    """``conv`` registry entry ``"cbam"``."""
    return CBAMConv(channels, stride, **kw)
