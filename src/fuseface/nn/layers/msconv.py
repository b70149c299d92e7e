"""MSConv: the multiplicative and subtractive convolution (Zhou et al., arXiv 2503.06187).

Written from the description in ``docs/METHODS.md`` section 2.2, which was read from the official
code (``Zoey-SiZhou/MSConv``, ``MSConv/backbones/model.py``, class ``MSConv``). The official
module is an SKConv variant; with input X (B x C x H x W) and stride s it computes

1. two grouped 3x3 branches, dilation 1 and 2 (padding 1 and 2, ``groups`` groups, stride s), each
   followed by BN and a single-slope PReLU: U1 (dilation 1) and U2 (dilation 2, 5x5 receptive field);
2. **MO** (multiplication): the squeeze input is U1 * U2, element-wise;
3. squeeze: s = GAP(U1 * U2), B x C x 1 x 1;
4. bottleneck ``fc``: z = PReLU(BN(Conv1x1(C -> d)(s))) with d = max(C // reduction, min_dim);
5. two excitation heads ``fcs[i]``: a_i = PReLU(BN(Conv1x1(d -> C)(z)));
6. gate c = sigmoid(a1 - a2 + 1e-6) (the 2-way softmax of SKConv written as one sigmoid);
7. **SO** (subtraction): V = c * (U1 - U2) + U2, i.e. c * U1 + (1 - c) * U2;
8. projection ``fc_d``: Y = PReLU(BN(Conv1x1(C -> C)(V))).

No convolution has a bias, every PReLU has one shared slope (``nn.PReLU()``). The attribute
names and ``nn.Sequential`` indices are those of the official code, so an official module state
dict loads with ``strict=True``:
``convs.{0,1}.{0: conv, 1: BN, 2: PReLU}``, ``fc.{0,1,2}``, ``fcs.{0,1}.{0,1,2}``,
``fc_d.{0,1,2}`` (``gap`` has no parameters).

Ablation switches (ours; the paper's ablation definitions are unknown, METHODS.md section 2.6):

* ``mo=False``: squeeze on U1 + U2 instead of U1 * U2 (the SKConv squeeze).
* ``so=False``: no subtraction and no coupled gate: V = sigmoid(a1) * U1 + sigmoid(a2) * U2, two
  independent sigmoid gates, one per branch (the gates need not sum to one, so the selection is
  not a convex combination and the difference U1 - U2 never appears).

Both switches keep the parameters (and state-dict keys) unchanged, so the ablations have exactly
the cost of the full module apart from the element-wise operations.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

GATE_EPS = 1e-6  # the constant the official code adds inside the sigmoid


class SubtractiveSelect(torch.autograd.Function):
    """V = c * (U1 - U2) + U2 (the SO step) without keeping U1 - U2 for the backward pass.

    Plain autograd saves the difference D = U1 - U2 (a full C x H x W map per sample) to form the
    gradient of the gate. Here only U1, U2 and the (B, C, 1, 1) gate are saved; U1 and U2 are
    saved anyway by the MO product, so the map costs nothing extra, and D is recomputed in the
    backward pass. The forward value is computed with the same three roundings as the expression
    (subtract, multiply, add), so it is equal bit for bit; the gradients are
    dU1 = g * c, dU2 = g - g * c, dc = sum over H, W of g * (U1 - U2).
    """

    @staticmethod
    def forward(ctx: Any, u1: torch.Tensor, u2: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(u1, u2, c)
        v = u1 - u2
        v.mul_(c)
        return v.add_(u2)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        u1, u2, c = ctx.saved_tensors
        g1 = grad * c
        g2 = grad - g1 if ctx.needs_input_grad[1] else None
        gc = None
        if ctx.needs_input_grad[2]:
            gc = (grad * (u1 - u2)).sum_to_size(c.shape)
        return (g1 if ctx.needs_input_grad[0] else None), g2, gc


def _conv_bn_prelu(conv: nn.Conv2d) -> nn.Sequential:
    return nn.Sequential(conv, nn.BatchNorm2d(conv.out_channels), nn.PReLU())


class MSConv(nn.Module):
    """Multiplicative and subtractive convolution; channels in == channels out.

    Args:
        channels: input (and output) channels C; must be divisible by ``groups``.
        stride: stride of both 3x3 branches (1 or 2); the output is ceil(H / stride).
        groups: groups of the two 3x3 convolutions (official ``G=32``).
        reduction: squeeze ratio r in d = max(C // r, min_dim) (official ``r=16``).
        min_dim: lower bound L of the squeeze width d (official ``L=32``).
        mo: squeeze on U1 * U2 (True, official) or on U1 + U2 (False, SKConv-style).
        so: subtractive selection c * (U1 - U2) + U2 (True, official) or two independent
            sigmoid gates sigmoid(a1) * U1 + sigmoid(a2) * U2 (False).
    """

    def __init__(
        self,
        channels: int,
        stride: int = 1,
        *,
        groups: int = 32,
        reduction: int = 16,
        min_dim: int = 32,
        mo: bool = True,
        so: bool = True,
    ) -> None:
        super().__init__()
        if channels <= 0 or groups <= 0 or channels % groups:
            raise ValueError(
                f"MSConv needs channels divisible by groups: got channels={channels}, groups={groups} "
                f"(pass groups= a divisor of {channels})"
            )
        if stride not in (1, 2):
            raise ValueError(f"MSConv stride must be 1 or 2, got {stride}")
        self.channels = channels
        self.stride = stride
        self.mo = mo
        self.so = so
        d = max(int(channels / reduction), min_dim)
        self.squeeze_dim = d
        # branch i has dilation 1 + i and padding 1 + i (official: padding=1+i, dilation=1+i)
        self.convs = nn.ModuleList(
            _conv_bn_prelu(
                nn.Conv2d(
                    channels, channels, 3, stride=stride, padding=1 + i, dilation=1 + i, groups=groups, bias=False
                )
            )
            for i in range(2)
        )
        self.gap = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = _conv_bn_prelu(nn.Conv2d(channels, d, 1, bias=False))
        self.fcs = nn.ModuleList(_conv_bn_prelu(nn.Conv2d(d, channels, 1, bias=False)) for _ in range(2))
        self.fc_d = _conv_bn_prelu(nn.Conv2d(channels, channels, 1, bias=False))

    def branches(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """U1 (dilation 1) and U2 (dilation 2)."""
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(
                f"MSConv({self.channels}) expects a (B, {self.channels}, H, W) input, got {tuple(x.shape)}"
            )
        return self.convs[0](x), self.convs[1](x)

    def excitation(self, u1: torch.Tensor, u2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The two excitation vectors a1, a2 (B, C, 1, 1) from the MO (or sum) squeeze."""
        squeezed = self.gap(u1 * u2 if self.mo else u1 + u2)
        z = self.fc(squeezed)
        return self.fcs[0](z), self.fcs[1](z)

    def select(self, u1: torch.Tensor, u2: torch.Tensor, a1: torch.Tensor, a2: torch.Tensor) -> torch.Tensor:
        """V before the projection: SO selection or, with ``so=False``, independent gates."""
        if self.so:
            c = torch.sigmoid(a1 - a2 + GATE_EPS)
            if torch.is_grad_enabled() and (u1.requires_grad or u2.requires_grad or c.requires_grad):
                return SubtractiveSelect.apply(u1, u2, c)  # same value, one map less kept for backward
            return c * (u1 - u2) + u2
        return torch.sigmoid(a1) * u1 + torch.sigmoid(a2) * u2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u1, u2 = self.branches(x)
        a1, a2 = self.excitation(u1, u2)
        return self.fc_d(self.select(u1, u2, a1, a2))

    def profile_macs(self, output: torch.Tensor) -> int:
        """Non-conv MACs counted by :mod:`fuseface.nn.profile`: the MO product C * H' * W'.

        METHODS.md section 2.3 counts conv/linear MACs plus this product (per sample).
        """
        return int(output[0].numel()) if self.mo else 0

    def reset_parameters_fuseface(self) -> None:
        """Restore PyTorch's default initialisation after IResNet's insightface init loop.

        The official MSNet has no init loop, so its MSConv starts from PyTorch defaults
        (Kaiming-uniform with a=sqrt(5) for convs, BN 1/0, PReLU 0.25); an IResNet + MSConv starts
        the module the same way. Every conv here is followed by BN, so insightface's N(0, 0.1)
        would mostly be normalised away in training mode, but in eval mode (running stats at
        their initial 0/1) it scales the C -> C projection by about 0.1 * sqrt(C) per layer.
        """
        for m in self.modules():
            if m is not self and hasattr(m, "reset_parameters"):
                m.reset_parameters()

    def extra_repr(self) -> str:
        return f"channels={self.channels}, stride={self.stride}, d={self.squeeze_dim}, mo={self.mo}, so={self.so}"


def msconv_factory(channels: int, stride: int = 1, **kw: Any) -> MSConv:
    """The ``conv`` registry entry ``"msconv"``: ``factory(channels, stride, **conv_kw)``.

    Used by :class:`fuseface.nn.backbones.iresnet.IResNet` to replace the strided 3x3 conv of each
    block (``create_backbone("ir100", conv="msconv", stages=[3, 4])``). Keywords are those of
    :class:`MSConv` (``groups``, ``reduction``, ``min_dim``, ``mo``, ``so``).
    """
    return MSConv(channels, stride, **kw)
