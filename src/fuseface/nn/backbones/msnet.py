"""MSNet (msnet26 / msnet50 / msnet101): the MSConv paper's backbone, as the official code has it.

Facts from ``Zoey-SiZhou/MSConv`` ``MSConv/backbones/model.py`` (commit 281e360), summarised in
``docs/METHODS.md`` section 2.3. An ImageNet-style SKNet/ResNet topology:

* stem ``basic_conv``: conv7x7(3 -> 64, stride 2, padding 3) + BN + PReLU, then ``maxpool``
  MaxPool(3, 2, 1): 112 -> 56 -> 28;
* four stages ``stage_1`` .. ``stage_4`` of bottleneck :class:`MSUnit` (in, mid, out, first stride):
  (64, 128, 256, 1), (256, 256, 512, 2), (512, 512, 1024, 2), (1024, 1024, 2048, 2); at 112x112
  the stage maps are 256x28x28, 512x14x14, 1024x7x7 and 2048x4x4;
* every unit's 3x3 is an :class:`~fuseface.nn.layers.msconv.MSConv` (all 3x3 convs replaced);
* head: GAP -> flatten -> ``classifier`` Linear(2048 -> 512, with bias); no BN on the embedding;
  ``dropout`` (p=0.5) is constructed but never used, as in the official code (no parameters).

Differences from the official code, none of which changes a state-dict key:

* ``flatten(1)`` instead of ``torch.squeeze`` (bug B2: with batch size 1 the official output is
  1-D);
* ``forward(x, return_stages=True)`` also returns the four stage maps;
* the official ``get_model`` names are not repeated (bug B1: ``"ms26"`` builds msnet50 and
  ``"ms50"`` builds msnet101); here ``msnet50`` is msnet50.

Initialisation is PyTorch's default everywhere: the official MSNet has no init loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from fuseface.nn.layers.msconv import MSConv

DEPTHS = {26: (2, 2, 2, 2), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
STAGE_WIDTHS = ((64, 128, 256), (256, 256, 512), (512, 512, 1024), (1024, 1024, 2048))
STAGE_STRIDES = (1, 2, 2, 2)


class MSUnit(nn.Module):
    """Bottleneck unit: conv1x1 + BN + PReLU, MSConv(mid, stride), conv1x1 + BN, add, PReLU.

    The shortcut is the identity when ``in_features == out_features`` (an empty ``nn.Sequential``
    as in the official code) and conv1x1(stride) + BN otherwise.
    """

    def __init__(
        self, in_features: int, mid_features: int, out_features: int, stride: int = 1, **msconv_kw: Any
    ) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(
            nn.Conv2d(in_features, mid_features, 1, bias=False), nn.BatchNorm2d(mid_features), nn.PReLU()
        )
        self.conv2_msconv = MSConv(mid_features, stride, **msconv_kw)
        self.conv3 = nn.Sequential(nn.Conv2d(mid_features, out_features, 1, bias=False), nn.BatchNorm2d(out_features))
        if in_features == out_features:
            self.shortcut = nn.Sequential()
        else:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_features, out_features, 1, stride=stride, bias=False), nn.BatchNorm2d(out_features)
            )
        self.prelu = nn.PReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv3(self.conv2_msconv(self.conv1(x)))
        return self.prelu(out + self.shortcut(x))


class MSNet(nn.Module):
    """The official MSNet with state-dict keys equal to the official code's.

    Args:
        layers: number of units per stage, e.g. (3, 4, 6, 3) for msnet50.
        num_features: embedding size (the official ``class_num``, 512).
        dropout: probability of the unused ``dropout`` module (kept for key/structure parity).
        input_size: side of the square input (112 for the released recipe); only recorded.
        msconv_kw: keywords for every :class:`MSConv` (e.g. ``{"mo": False}`` for ablations).
    """

    channel_order = "rgb"

    def __init__(
        self,
        layers: Sequence[int] = DEPTHS[50],
        num_features: int = 512,
        dropout: float = 0.5,
        input_size: int = 112,
        msconv_kw: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if len(layers) != 4 or any(n < 1 for n in layers):
            raise ValueError(f"MSNet needs four positive stage depths, got {list(layers)}")
        self.num_features = num_features
        self.input_size = input_size
        kw = dict(msconv_kw or {})
        self.basic_conv = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.PReLU())
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        stages = [
            self._make_stage(*widths, blocks, stride, kw)
            for widths, blocks, stride in zip(STAGE_WIDTHS, layers, STAGE_STRIDES, strict=True)
        ]
        self.stage_1, self.stage_2, self.stage_3, self.stage_4 = stages
        # never applied (official behaviour); parameter-free, so harmless for loading
        self.dropout = nn.Dropout(p=dropout)
        self.gap = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Linear(2048, num_features)

    @staticmethod
    def _make_stage(
        in_f: int, mid_f: int, out_f: int, blocks: int, stride: int, msconv_kw: dict[str, Any]
    ) -> nn.Sequential:
        units = [MSUnit(in_f, mid_f, out_f, stride, **msconv_kw)]
        units += [MSUnit(out_f, mid_f, out_f, 1, **msconv_kw) for _ in range(1, blocks)]
        return nn.Sequential(*units)

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The outputs of the four stages, in one pass."""
        x = self.maxpool(self.basic_conv(x))
        outs = []
        for stage in (self.stage_1, self.stage_2, self.stage_3, self.stage_4):
            x = stage(x)
            outs.append(x)
        return outs

    def forward(self, x: torch.Tensor, return_stages: bool = False) -> Any:
        """Embed (B, 3, H, W) RGB images normalised to [-1, 1]: (B, num_features), un-normalised.

        With ``return_stages`` returns ``(embedding, [s1, s2, s3, s4])``.
        """
        stages = self.forward_stages(x)
        emb = self.classifier(torch.flatten(self.gap(stages[-1]), 1))  # flatten(1): guard for bug B2
        return (emb, stages) if return_stages else emb


def msnet26(**kwargs: Any) -> MSNet:
    """MSNet-26 ([2, 2, 2, 2]); 18.56 M parameters, 0.80 GMACs at 112x112 (METHODS.md 2.3)."""
    return MSNet(DEPTHS[26], **kwargs)


def msnet50(**kwargs: Any) -> MSNet:
    """MSNet-50 ([3, 4, 6, 3]); 31.56 M parameters, 1.39 GMACs at 112x112.

    Note (bug B1): the official config name ``"ms50"`` builds msnet101, and ``"ms26"`` builds this.
    """
    return MSNet(DEPTHS[50], **kwargs)


def msnet101(**kwargs: Any) -> MSNet:
    """MSNet-101 ([3, 4, 23, 3]); 57.32 M parameters, 2.61 GMACs at 112x112."""
    return MSNet(DEPTHS[101], **kwargs)
