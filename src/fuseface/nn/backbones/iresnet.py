"""IResNet (ir18 ... ir200), layer for layer the insightface ``arcface_torch`` network.

Facts from insightface ``recognition/arcface_torch/backbones/iresnet.py`` (commit 7fadd42),
summarised in ``docs/METHODS.md`` section 1.1:

* stem: conv3x3(3->64, stride 1) -> BN -> PReLU(64), staying at 112x112;
* ``IBasicBlock``: BN -> conv3x3 -> BN -> PReLU -> conv3x3(stride) -> BN, plus the shortcut
  (conv1x1(stride) + BN when the shape changes), **no activation after the add**;
* four stages of widths 64/128/256/512, each starting with stride 2 (112 -> 56 -> 28 -> 14 -> 7);
* head: BN2d -> flatten -> Dropout -> Linear(512*7*7 -> d) -> BatchNorm1d(d) whose weight is fixed
  at 1 (``requires_grad=False``); the output is the **un-normalised** embedding;
* init: conv weights N(0, 0.1), BN weight 1 and bias 0, Linear left at PyTorch's default.

State-dict keys are identical to insightface's, so an arcface_torch ``model.pt`` loads with
``strict=True``. Two hooks serve the fusion methods without changing those keys:

* ``conv=``: a factory (or a registered name such as ``"msconv"``) that replaces the second 3x3
  convolution of every block (``conv2``, the one carrying the stride, channels in == out) in the
  stages listed in ``stages=``. This is where MSConv, SKConv, SE and CBAM plug in.
* ``forward(x, return_stages=True)`` also returns the four stage outputs of the same pass (CAFace
  takes its style statistics from the outputs of stages 2 and 3; LGAF taps stage maps), and
  ``head=`` puts a registered head (``"lgaf"``) on top of those maps and the global embedding.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

ConvFactory = Callable[[int, int], nn.Module]

STAGE_WIDTHS = (64, 128, 256, 512)
DEPTHS = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 14, 3),
    100: (3, 13, 30, 3),
    200: (6, 26, 60, 6),
}


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding 1 and no bias, as in insightface."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution with no bias, used by the downsampling shortcut."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


def plain_conv3x3(channels: int, stride: int = 1) -> nn.Module:
    """The default ``conv`` factory: the block's own 3x3 convolution."""
    return conv3x3(channels, channels, stride)


def resolve_conv_factory(conv: str | ConvFactory | None, **conv_kw: Any) -> ConvFactory | None:
    """Turn ``conv=`` (None, a registered name, or a callable) into a factory ``(channels, stride)``."""
    if conv is None:
        return None
    if isinstance(conv, str):
        from fuseface import registry

        factory = registry.resolve("conv", conv)
    else:
        factory = conv

    def build(channels: int, stride: int) -> nn.Module:
        return factory(channels, stride, **conv_kw)

    return build


class IBasicBlock(nn.Module):
    """The insightface residual unit: BN, conv3x3, BN, PReLU, conv3x3(stride), BN, + shortcut."""

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        conv_factory: ConvFactory | None = None,
    ) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-05)
        self.conv1 = conv3x3(inplanes, planes)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-05)
        self.prelu = nn.PReLU(planes)
        self.conv2 = conv_factory(planes, stride) if conv_factory else conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-05)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.bn1(x)
        out = self.conv1(out)
        out = self.bn2(out)
        out = self.prelu(out)
        out = self.conv2(out)
        out = self.bn3(out)
        if self.downsample is not None:
            identity = self.downsample(x)
        return out + identity


class IResNet(nn.Module):
    """insightface IResNet with optional 3x3-conv replacement, stage outputs and a fusion head.

    Args:
        layers: number of blocks in each of the four stages.
        dropout: dropout probability before the final Linear (insightface default 0).
        num_features: embedding size.
        fp16: run the convolutional trunk under CUDA autocast (fp16), the fc in fp32, as
            arcface_torch does. Ignored on CPU.
        conv: replacement for the strided 3x3 conv of each block: a registered name
            (``"msconv"``, ``"skconv"``, ``"se"``, ``"cbam"``) or a factory ``(channels, stride)``.
        conv_kw: keyword arguments for the ``conv`` factory.
        stages: which stages (1-4) use ``conv``; default all four.
        head: ``None`` for the standard global embedding, or a registered head name (``"lgaf"``)
            or class; it receives the stage maps and the global embedding.
        head_kw: keyword arguments for the head.
        input_size: side of the (square) input image; 112 for every insightface model.
    """

    def __init__(
        self,
        layers: Sequence[int],
        dropout: float = 0.0,
        num_features: int = 512,
        fp16: bool = False,
        conv: str | ConvFactory | None = None,
        conv_kw: dict[str, Any] | None = None,
        stages: Sequence[int] = (1, 2, 3, 4),
        head: str | type[nn.Module] | None = None,
        head_kw: dict[str, Any] | None = None,
        input_size: int = 112,
    ) -> None:
        super().__init__()
        if input_size % 16:
            raise ValueError(f"input_size must be a multiple of 16, got {input_size}")
        bad = [s for s in stages if s not in (1, 2, 3, 4)]
        if bad:
            raise ValueError(f"stages must be among 1..4, got {list(stages)}")
        self.fp16 = fp16
        self.num_features = num_features
        self.input_size = input_size
        factory = resolve_conv_factory(conv, **(conv_kw or {}))
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes, eps=1e-05)
        self.prelu = nn.PReLU(self.inplanes)
        self.layer1 = self._make_layer(64, layers[0], stride=2, factory=factory if 1 in stages else None)
        self.layer2 = self._make_layer(128, layers[1], stride=2, factory=factory if 2 in stages else None)
        self.layer3 = self._make_layer(256, layers[2], stride=2, factory=factory if 3 in stages else None)
        self.layer4 = self._make_layer(512, layers[3], stride=2, factory=factory if 4 in stages else None)
        self.final_size = input_size // 16
        self.bn2 = nn.BatchNorm2d(512, eps=1e-05)
        self.dropout = nn.Dropout(p=dropout, inplace=True)
        self.fc = nn.Linear(512 * self.final_size * self.final_size, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=1e-05)
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad = False

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0, 0.1)
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        # Replacement modules keep their own initialisation (insightface's loop above would
        # overwrite it): re-run their reset if they define one.
        if factory is not None:
            for m in self.modules():
                if m is not self and hasattr(m, "reset_parameters_fuseface"):
                    m.reset_parameters_fuseface()

        self.head: nn.Module | None = None
        if head is not None:
            head_cls = head
            if isinstance(head, str):
                from fuseface import registry

                head_cls = registry.resolve("head", head)
            s = input_size
            self.head = head_cls(
                stage_channels=STAGE_WIDTHS,
                stage_sizes=(s // 2, s // 4, s // 8, s // 16),
                num_features=num_features,
                **(head_kw or {}),
            )

    def _make_layer(self, planes: int, blocks: int, stride: int, factory: ConvFactory | None) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes, stride),
                nn.BatchNorm2d(planes, eps=1e-05),
            )
        layers = [IBasicBlock(self.inplanes, planes, stride, downsample, conv_factory=factory)]
        self.inplanes = planes
        for _ in range(1, blocks):
            layers.append(IBasicBlock(self.inplanes, planes, conv_factory=factory))
        return nn.Sequential(*layers)

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The outputs of the four stages (after the last block of each), in one pass."""
        use_amp = self.fp16 and x.is_cuda
        with torch.autocast(device_type=x.device.type, dtype=torch.float16, enabled=use_amp):
            x = self.prelu(self.bn1(self.conv1(x)))
            s1 = self.layer1(x)
            s2 = self.layer2(s1)
            s3 = self.layer3(s2)
            s4 = self.layer4(s3)
        return [s1, s2, s3, s4]

    def global_embedding(self, last_stage: torch.Tensor) -> torch.Tensor:
        """The standard IResNet output layer: BN2d, flatten, dropout, fc, BN1d."""
        use_amp = self.fp16 and last_stage.is_cuda
        with torch.autocast(device_type=last_stage.device.type, dtype=torch.float16, enabled=use_amp):
            x = self.bn2(last_stage)
            x = torch.flatten(x, 1)
            x = self.dropout(x)
        x = self.fc(x.float() if use_amp else x)
        return self.features(x)

    def forward(self, x: torch.Tensor, return_stages: bool = False, return_aux: bool = False) -> Any:
        """Embed a batch of (B, 3, H, W) normalised images.

        Returns the (B, num_features) un-normalised embedding; with ``return_stages`` also the
        list of four stage maps, with ``return_aux`` also the head's auxiliary dict (branch
        embeddings, fusion weights), as ``(embedding, [stages], [aux])`` in that order.
        """
        stages = self.forward_stages(x)
        emb = self.global_embedding(stages[-1])
        aux: dict[str, Any] = {}
        if self.head is not None:
            emb, aux = self.head(stages, emb)
        out: list[Any] = [emb]
        if return_stages:
            out.append(stages)
        if return_aux:
            out.append(aux)
        return out[0] if len(out) == 1 else tuple(out)


def _build(depth: int, **kwargs: Any) -> IResNet:
    return IResNet(DEPTHS[depth], **kwargs)


def ir18(**kwargs: Any) -> IResNet:
    """IResNet-18 ([2, 2, 2, 2])."""
    return _build(18, **kwargs)


def ir34(**kwargs: Any) -> IResNet:
    """IResNet-34 ([3, 4, 6, 3])."""
    return _build(34, **kwargs)


def ir50(**kwargs: Any) -> IResNet:
    """IResNet-50 ([3, 4, 14, 3]); 43.59 M parameters, 6.31 GMACs at 112x112."""
    return _build(50, **kwargs)


def ir100(**kwargs: Any) -> IResNet:
    """IResNet-100 ([3, 13, 30, 3]); 65.16 M parameters, 12.09 GMACs at 112x112."""
    return _build(100, **kwargs)


def ir200(**kwargs: Any) -> IResNet:
    """IResNet-200 ([6, 26, 60, 6])."""
    return _build(200, **kwargs)


#: Blocks per stage of :func:`ir_demo`.
DEMO_LAYERS = (1, 1, 1, 1)


def ir_demo(**kwargs: Any) -> IResNet:
    """The small IResNet that ``fuseface demo`` trains on CPU: one block per stage ([1, 1, 1, 1])."""
    return IResNet(DEMO_LAYERS, **kwargs)
