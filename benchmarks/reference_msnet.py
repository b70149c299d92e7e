"""The official MSNet forward pass, transcribed for side-by-side measurement only.

Written from ``docs/METHODS.md`` sections 2.2-2.3, which describe ``Zoey-SiZhou/MSConv``
``MSConv/backbones/model.py`` (commit 281e360) line by line. It differs from
:mod:`fuseface.nn.backbones.msnet` only in *how* the same function is computed, the way the official
code computes it: each MSConv concatenates its two branch outputs and views them as
(B, 2, C, H, W) before the multiplication and the subtraction (an SKNet habit), and the head uses
``torch.squeeze`` (bug B2 included). The module names and ``nn.Sequential`` indices are the
official ones, so a state dict of :func:`fuseface.nn.backbones.msnet.msnet50` loads with
``strict=True`` and the two networks give the same output (``benchmarks/backbone_speed.py``
checks it before timing).

Not part of the package: the library's model is :mod:`fuseface.nn.backbones.msnet`.
"""

from __future__ import annotations

import torch
from torch import nn


def _conv_bn_prelu(conv: nn.Conv2d) -> nn.Sequential:
    return nn.Sequential(conv, nn.BatchNorm2d(conv.out_channels), nn.PReLU())


class OfficialMSConv(nn.Module):
    """``MSConv(features, M=2, G=32, r=16, stride, L=32)`` as the official forward computes it."""

    def __init__(self, features: int, stride: int = 1, groups: int = 32, r: int = 16, min_dim: int = 32) -> None:
        super().__init__()
        d = max(int(features / r), min_dim)
        self.features = features
        self.convs = nn.ModuleList(
            _conv_bn_prelu(
                nn.Conv2d(
                    features, features, 3, stride=stride, padding=1 + i, dilation=1 + i, groups=groups, bias=False
                )
            )
            for i in range(2)
        )
        self.gap = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = _conv_bn_prelu(nn.Conv2d(features, d, 1, bias=False))
        self.fcs = nn.ModuleList(_conv_bn_prelu(nn.Conv2d(d, features, 1, bias=False)) for _ in range(2))
        self.fc_d = _conv_bn_prelu(nn.Conv2d(features, features, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        feats = torch.cat([conv(x) for conv in self.convs], dim=1)
        feats = feats.view(b, 2, self.features, feats.shape[2], feats.shape[3])
        u1, u2 = feats[:, 0], feats[:, 1]
        z = self.fc(self.gap(u1 * u2))  # MO, squeeze, bottleneck
        a1, a2 = self.fcs[0](z), self.fcs[1](z)
        c = torch.sigmoid(a1 - a2 + 1e-6)
        return self.fc_d(c * (u1 - u2) + u2)  # SO, projection


class OfficialMSUnit(nn.Module):
    def __init__(self, in_f: int, mid_f: int, out_f: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(in_f, mid_f, 1, bias=False), nn.BatchNorm2d(mid_f), nn.PReLU())
        self.conv2_msconv = OfficialMSConv(mid_f, stride)
        self.conv3 = nn.Sequential(nn.Conv2d(mid_f, out_f, 1, bias=False), nn.BatchNorm2d(out_f))
        if in_f == out_f:
            self.shortcut = nn.Sequential()
        else:
            self.shortcut = nn.Sequential(nn.Conv2d(in_f, out_f, 1, stride=stride, bias=False), nn.BatchNorm2d(out_f))
        self.prelu = nn.PReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prelu(self.conv3(self.conv2_msconv(self.conv1(x))) + self.shortcut(x))


class OfficialMSNet(nn.Module):
    input_size = 112
    num_features = 512

    def __init__(self, layers: tuple[int, int, int, int] = (3, 4, 6, 3), class_num: int = 512) -> None:
        super().__init__()
        self.basic_conv = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.PReLU())
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        widths = ((64, 128, 256), (256, 256, 512), (512, 512, 1024), (1024, 1024, 2048))
        strides = (1, 2, 2, 2)
        for k, ((i, m, o), n, s) in enumerate(zip(widths, layers, strides, strict=True), 1):
            units = [OfficialMSUnit(i, m, o, s)] + [OfficialMSUnit(o, m, o, 1) for _ in range(1, n)]
            setattr(self, f"stage_{k}", nn.Sequential(*units))
        self.gap = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Linear(2048, class_num)
        self.dropout = nn.Dropout(p=0.5)  # constructed, never used (as in the official code)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.basic_conv(x))
        x = self.stage_4(self.stage_3(self.stage_2(self.stage_1(x))))
        return self.classifier(torch.squeeze(self.gap(x)))  # bug B2: 1-D output at batch size 1


def official_msnet50() -> OfficialMSNet:
    return OfficialMSNet((3, 4, 6, 3))
