"""dlib's face-recognition ResNet (``dlib_face_recognition_resnet_model_v1``) as plain torch modules.

Facts from dlib's public source (davisking/dlib):

* ``examples/dnn_face_recognition_ex.cpp`` defines the network (``anet_type``), read from the
  input upwards: ``input_rgb_image_sized<150>`` -> ``con<32,7,7,2,2>`` -> ``affine`` -> ``relu``
  -> ``max_pool<3,3,2,2>`` -> ``alevel4`` (3 x ``ares<32>``) -> ``alevel3`` (``ares_down<64>`` + 3 x
  ``ares<64>``) -> ``alevel2`` (``ares_down<128>`` + 2 x ``ares<128>``) -> ``alevel1``
  (``ares_down<256>`` + 2 x ``ares<256>``) -> ``alevel0`` (``ares_down<256>``) ->
  ``avg_pool_everything`` -> ``fc_no_bias<128>`` -> ``loss_metric``;
* ``block<N,BN,stride>`` is ``con<N,3,3,stride,stride>`` -> ``affine`` -> ``relu`` ->
  ``con<N,3,3,1,1>`` -> ``affine``; ``ares`` adds the block input to the block output
  (``add_prev1`` with ``tag1``), then ``relu``; ``ares_down`` adds ``avg_pool<2,2,2,2>`` of the block
  input (``skip1`` back to ``tag1``) to the block output (``add_prev2`` with ``tag2``), then ``relu``;
* ``dlib/dnn/layers.h``: ``con_`` pads ``nr/2`` only when the stride is 1 and **not at all** for
  stride 2 (``_padding_y = _stride_y!=1? 0 : _nr/2``); the pooling layers use the same rule, so
  every down-sampling step here is unpadded (150 -> 72 -> 35 -> 17 -> 8 -> 3/4 -> 1/2);
  ``affine_`` (``CONV_MODE``) is ``x * gamma[c] + beta[c]`` per channel; ``fc_`` computes ``x W``
  with ``W`` of shape (inputs, outputs); ``add_prev_`` sizes its output as the **maximum** of both
  inputs in every dimension and adds them zero-padded (``tt::add``): where a block output has more
  channels than its average-pooled skip the extra channels pass unchanged, and in ``alevel1`` /
  ``alevel0`` the 3x3 (1x1) block output is added to the top-left corner of the 4x4 (2x2) pooled
  skip;
* ``dlib/dnn/input.h`` (``input_rgb_image_sized::to_tensor``): the input is RGB, each channel
  ``(pixel - avg) / 256`` with the per-channel means stored in the model file.

The network has no batch norm (``affine`` layers are the frozen ones), so nothing needs folding.
``forward(x, return_stages=True)`` also returns the outputs of the five levels in the order they are
computed (``alevel4`` 32x35x35, ``alevel3`` 64x17x17, ``alevel2`` 128x8x8, ``alevel1`` 256x4x4,
``alevel0`` 256x2x2), like the IResNet backbones return their stage maps.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

#: (width, number of ``ares`` blocks, first block down-samples) of the five levels, input first.
LEVELS: tuple[tuple[int, int, bool], ...] = (
    (32, 3, False),
    (64, 4, True),
    (128, 3, True),
    (256, 3, True),
    (256, 1, True),
)
INPUT_SIZE = 150
EMBEDDING_SIZE = 128


class Affine(nn.Module):
    """dlib's ``affine_`` in ``CONV_MODE``: ``y = x * weight[c] + bias[c]``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


def add_zero_padded(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a + b`` on the union of their shapes, the missing part of each taken as zero (channels
    at the end, rows at the bottom, columns at the right): dlib's ``add_prev_`` / ``tt::add``."""
    if a.shape == b.shape:
        return a + b
    c, h, w = (max(a.shape[i], b.shape[i]) for i in (1, 2, 3))

    def pad(t: torch.Tensor) -> torch.Tensor:
        return F.pad(t, (0, w - t.shape[3], 0, h - t.shape[2], 0, c - t.shape[1]))

    return pad(a) + pad(b)


class ResidualBlock(nn.Module):
    """``ares<N>`` / ``ares_down<N>``: conv3x3(stride) -> affine -> relu -> conv3x3 -> affine, plus
    the input (average-pooled 2x2/2 when down-sampling), zero-padded addition, relu."""

    def __init__(self, in_channels: int, channels: int, down: bool) -> None:
        super().__init__()
        stride = 2 if down else 1
        self.down = down
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=0 if down else 1)
        self.affine1 = Affine(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=1, padding=1)
        self.affine2 = Affine(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.affine2(self.conv2(F.relu(self.affine1(self.conv1(x)))))
        skip = F.avg_pool2d(x, 2, 2) if self.down else x
        return F.relu(add_zero_padded(out, skip))


class DlibResNet(nn.Module):
    """The network of ``dlib_face_recognition_resnet_model_v1.dat`` (see the module docstring).

    Input: (B, 3, 150, 150) RGB, ``(pixel - mean) / 256``; output: the (B, 128) descriptor, which
    dlib's training made roughly unit-length (same person: Euclidean distance below 0.6).
    """

    def __init__(self, embedding_size: int = EMBEDDING_SIZE, input_size: int = INPUT_SIZE) -> None:
        super().__init__()
        self.input_size = input_size
        self.num_features = embedding_size
        self.conv1 = nn.Conv2d(3, 32, 7, stride=2, padding=0)
        self.affine1 = Affine(32)
        levels = []
        in_ch = 32
        for width, blocks, down in LEVELS:
            level = []
            for k in range(blocks):
                level.append(ResidualBlock(in_ch, width, down and k == 0))
                in_ch = width
            levels.append(nn.Sequential(*level))
        self.levels = nn.ModuleList(levels)
        self.fc = nn.Linear(in_ch, embedding_size, bias=False)

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The outputs of the five levels, in the order they are computed."""
        x = F.max_pool2d(F.relu(self.affine1(self.conv1(x))), 3, 2)
        stages = []
        for level in self.levels:
            x = level(x)
            stages.append(x)
        return stages

    def forward(self, x: torch.Tensor, return_stages: bool = False) -> Any:
        """Descriptors of a batch; with ``return_stages`` also the five level maps."""
        stages = self.forward_stages(x)
        emb = self.fc(stages[-1].mean(dim=(2, 3)))
        return (emb, stages) if return_stages else emb


def dlib_resnet_v1(**kwargs: Any) -> DlibResNet:
    """dlib's face-recognition ResNet v1 (29 conv layers, 150x150 RGB input, 128-d descriptor)."""
    return DlibResNet(**kwargs)
