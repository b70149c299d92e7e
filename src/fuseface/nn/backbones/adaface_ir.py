"""The AdaFace IR network (``net.py`` of mk-minchul/AdaFace, also copied as CAFace's
``nets/tface_model.py``), with the same state-dict keys so its checkpoints load strictly.

Differences from insightface's IResNet (docs/METHODS.md section 1.3):

* the shortcut of a unit whose channels do not change is ``MaxPool2d(1, stride)`` (no params),
  otherwise conv1x1(stride) + BN;
* stage 1 starts with a stride-2 unit 64 -> 64, so its shortcut is the max-pool;
* output layer: BN2d -> Dropout(0.4) -> Flatten -> Linear(512*7*7 -> 512) -> BN1d(affine=False);
* AdaFace's ``forward`` returns ``(x / ||x||, ||x||)``; this module returns the raw ``x``, which
  equals ``normalized_embedding * norm`` (the norm is clipped at 1e-5 only for an all-zero row);
* inputs are **BGR**, normalised ``(x/255 - 0.5)/0.5``: ``channel_order = "bgr"`` records it.

``forward(x, return_stages=True)`` also returns the outputs of the last unit of each stage
(body indices 2, 15, 45, 48 for IR-101), which CAFace uses for its style statistics.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

DEPTHS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 14, 3), 101: (3, 13, 30, 3)}
WIDTHS = (64, 128, 256, 512)


class BasicBlockIR(nn.Module):
    """AdaFace's residual unit: BN, conv3x3, BN, PReLU, conv3x3(stride), BN, + shortcut."""

    def __init__(self, in_channel: int, depth: int, stride: int) -> None:
        super().__init__()
        if in_channel == depth:
            self.shortcut_layer: nn.Module = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_channel, depth, (1, 1), stride, bias=False), nn.BatchNorm2d(depth)
            )
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_channel),
            nn.Conv2d(in_channel, depth, (3, 3), (1, 1), 1, bias=False),
            nn.BatchNorm2d(depth),
            nn.PReLU(depth),
            nn.Conv2d(depth, depth, (3, 3), stride, 1, bias=False),
            nn.BatchNorm2d(depth),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


class AdaFaceIR(nn.Module):
    """AdaFace ``Backbone(input_size=(112,112), num_layers, mode='ir')`` returning raw embeddings."""

    channel_order = "bgr"

    def __init__(self, layers: Sequence[int], num_features: int = 512, dropout: float = 0.4) -> None:
        super().__init__()
        self.num_features = num_features
        self.input_size = 112
        self.input_layer = nn.Sequential(nn.Conv2d(3, 64, (3, 3), 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64))
        units: list[nn.Module] = []
        self.stage_ends: list[int] = []
        in_channel = 64
        for width, count in zip(WIDTHS, layers, strict=True):
            units.append(BasicBlockIR(in_channel, width, 2))
            units.extend(BasicBlockIR(width, width, 1) for _ in range(count - 1))
            in_channel = width
            self.stage_ends.append(len(units) - 1)
        self.body = nn.Sequential(*units)
        self.output_layer = nn.Sequential(
            nn.BatchNorm2d(512),
            nn.Dropout(dropout),
            nn.Flatten(),
            nn.Linear(512 * 7 * 7, num_features),
            nn.BatchNorm1d(num_features, affine=False),
        )
        self._init_weights()

    def _init_weights(self) -> None:
        # AdaFace net.py initialize_weights: kaiming-normal convs and linears, BN at 1 / 0.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.data.fill_(1)
                m.bias.data.zero_()
            elif isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    m.bias.data.zero_()

    def forward(self, x: torch.Tensor, return_stages: bool = False) -> Any:
        x = self.input_layer(x)
        stages: list[torch.Tensor] = []
        for idx, unit in enumerate(self.body):
            x = unit(x)
            if idx in self.stage_ends:
                stages.append(x)
        emb = self.output_layer(x)
        return (emb, stages) if return_stages else emb


def adaface_ir18(**kw: Any) -> AdaFaceIR:
    """AdaFace IR-18."""
    return AdaFaceIR(DEPTHS[18], **kw)


def adaface_ir34(**kw: Any) -> AdaFaceIR:
    """AdaFace IR-34."""
    return AdaFaceIR(DEPTHS[34], **kw)


def adaface_ir50(**kw: Any) -> AdaFaceIR:
    """AdaFace IR-50."""
    return AdaFaceIR(DEPTHS[50], **kw)


def adaface_ir101(**kw: Any) -> AdaFaceIR:
    """AdaFace IR-101 (the backbone behind the released CAFace model)."""
    return AdaFaceIR(DEPTHS[101], **kw)
