"""Inference-time rewrites of a backbone: batch-norm folding, channels-last, reduced precision.

**BN folding.** In eval mode a BatchNorm is the per-channel affine ``y = a * x + b`` with
``a = gamma / sqrt(var + eps)`` and ``b = beta - a * mean``. When it *follows* a convolution (or a
Linear) the pair is one convolution with weights ``a[o] * W[o]`` and bias ``a[o] * c[o] + b[o]``:
exact up to float rounding. A BN *before* a convolution folds exactly only when the convolution
has no zero padding: with padding, the shift ``b`` is present inside the image but not in the
padded border, so folding it into the bias is wrong along the borders. So, for IResNet
(insightface ``IBasicBlock``: BN -> conv3x3 -> BN -> PReLU -> conv3x3 -> BN):

* folded: stem ``bn1`` into ``conv1``; in each block ``bn2`` into ``conv1`` and ``bn3`` into
  ``conv2`` (when ``conv2`` is a plain ``nn.Conv2d``; MSConv & co. are left as they are); the
  shortcut BN into its 1x1 conv; in the output layer the BN2d *before* the flatten + Linear
  (no padding there, so exact) and the BatchNorm1d ``features`` after it, both into ``fc``;
* kept: the pre-activation ``bn1`` of every block (it precedes a padded 3x3 conv).

The same rules apply to any ``nn.Sequential`` holding ``Conv2d, BatchNorm2d`` or
``Linear, BatchNorm1d`` pairs and ``BatchNorm2d, [Dropout], Flatten, Linear`` (AdaFace IR).
Tested: fp32 outputs equal the unfused model within 1e-4 (``tests/test_optimize.py``).

**Channels-last** stores activations NHWC, which oneDNN convolutions prefer on CPU.
**Reduced precision**: ``dtype=torch.bfloat16`` casts the weights (the input is cast by
``FaceModel``); :func:`quantize_dynamic_int8` quantises the Linear layers dynamically. Which one
is faster depends on the CPU (bf16 needs AVX512-BF16/AMX to be fast); ``benchmarks`` and
``docs/benchmarks.md`` report speed and cosine agreement with fp32.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def _bn_affine(bn: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """``(a, b)`` with ``bn(x) == a * x + b`` per channel in eval mode (float64 for accuracy)."""
    var = bn.running_var.double()
    mean = bn.running_mean.double()
    a = 1.0 / torch.sqrt(var + bn.eps)
    if bn.weight is not None:
        a = a * bn.weight.double()
    b = -a * mean
    if bn.bias is not None:
        b = b + bn.bias.double()
    return a, b


def fold_bn_after(layer: nn.Conv2d | nn.Linear, bn: nn.modules.batchnorm._BatchNorm) -> None:
    """Fold ``bn`` (applied to ``layer``'s output) into ``layer`` in place; ``layer`` gains a bias."""
    a, b = _bn_affine(bn)
    w = layer.weight.double()
    shape = (-1,) + (1,) * (w.dim() - 1)
    bias = layer.bias.double() if layer.bias is not None else torch.zeros_like(a)
    layer.weight = nn.Parameter((w * a.view(shape)).to(layer.weight.dtype), requires_grad=False)
    layer.bias = nn.Parameter((a * bias + b).to(layer.weight.dtype), requires_grad=False)


def fold_bn_before_linear(bn: nn.BatchNorm2d, linear: nn.Linear) -> None:
    """Fold a BN2d whose output is flattened (C, H, W order) into the following Linear, in place."""
    a, b = _bn_affine(bn)
    w = linear.weight.double()
    spatial = w.shape[1] // a.numel()
    a_flat = a.repeat_interleave(spatial)
    b_flat = b.repeat_interleave(spatial)
    bias = linear.bias.double() if linear.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
    linear.bias = nn.Parameter((bias + w @ b_flat).to(linear.weight.dtype), requires_grad=False)
    linear.weight = nn.Parameter((w * a_flat[None, :]).to(linear.weight.dtype), requires_grad=False)


def _fold_sequential(seq: nn.Sequential) -> int:
    """Fold the foldable patterns inside one ``nn.Sequential``; returns how many BNs were folded."""
    mods = list(seq.children())
    names = list(seq._modules.keys())
    folded = 0
    for i, m in enumerate(mods):
        prev = mods[i - 1] if i > 0 else None
        after_conv = isinstance(m, nn.BatchNorm2d) and type(prev) is nn.Conv2d
        after_linear = isinstance(m, nn.BatchNorm1d) and isinstance(prev, nn.Linear)
        if after_conv or after_linear:
            fold_bn_after(mods[i - 1], m)
            seq._modules[names[i]] = nn.Identity()
            folded += 1
        elif isinstance(m, nn.BatchNorm2d):
            # BN2d, [Dropout/Identity]*, Flatten, Linear: exact (no padding involved)
            j = i + 1
            while j < len(mods) and isinstance(mods[j], (nn.Dropout, nn.Identity)):
                j += 1
            if j + 1 < len(mods) and isinstance(mods[j], nn.Flatten) and isinstance(mods[j + 1], nn.Linear):
                fold_bn_before_linear(m, mods[j + 1])
                seq._modules[names[i]] = nn.Identity()
                folded += 1
    return folded


def fold_batchnorms(model: nn.Module) -> int:
    """Fold every exactly-foldable BN of ``model`` in place (see module docstring); returns the count."""
    from fuseface.nn.backbones.iresnet import IBasicBlock, IResNet

    folded = 0
    bn_types = nn.modules.batchnorm._BatchNorm
    for module in list(model.modules()):
        if isinstance(module, IResNet):
            if isinstance(module.bn1, bn_types):
                fold_bn_after(module.conv1, module.bn1)
                module.bn1 = nn.Identity()
                folded += 1
            if isinstance(module.bn2, bn_types):  # bn2 -> flatten -> dropout (eval: identity) -> fc
                fold_bn_before_linear(module.bn2, module.fc)
                module.bn2 = nn.Identity()
                folded += 1
            if isinstance(module.features, bn_types):
                fold_bn_after(module.fc, module.features)
                module.features = nn.Identity()
                folded += 1
        elif isinstance(module, IBasicBlock):
            if isinstance(module.bn2, bn_types):
                fold_bn_after(module.conv1, module.bn2)
                module.bn2 = nn.Identity()
                folded += 1
            if type(module.conv2) is nn.Conv2d and isinstance(module.bn3, bn_types):
                fold_bn_after(module.conv2, module.bn3)
                module.bn3 = nn.Identity()
                folded += 1
        elif isinstance(module, nn.Sequential):
            folded += _fold_sequential(module)
    return folded


def prepare_for_inference(
    model: nn.Module,
    fold_bn: bool = True,
    channels_last: bool = True,
    dtype: torch.dtype = torch.float32,
) -> nn.Module:
    """A copy of ``model`` ready for fast inference (the original is untouched).

    Args:
        fold_bn: fold batch norms into the neighbouring convolutions / Linear layers (exact).
        channels_last: store weights NHWC; feed inputs with ``x.contiguous(memory_format=
            torch.channels_last)`` (``FaceModel`` does it when ``model.fuseface_channels_last``).
        dtype: ``torch.float32`` or a reduced precision such as ``torch.bfloat16`` (weights cast;
            inputs must be cast too).
    """
    model = copy.deepcopy(model).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    if fold_bn:
        fold_batchnorms(model)
    if dtype != torch.float32:
        model = model.to(dtype)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.fuseface_channels_last = channels_last  # type: ignore[assignment]
    return model


def quantize_dynamic_int8(model: nn.Module) -> nn.Module:
    """A copy with dynamic int8 quantisation of every Linear (weights int8, activations per batch)."""
    from torch.ao.quantization import quantize_dynamic

    return quantize_dynamic(copy.deepcopy(model).eval(), {nn.Linear}, dtype=torch.qint8)


def maybe_compile(model: nn.Module) -> nn.Module:
    """``torch.compile(model)`` when it works on this machine, else the model unchanged."""
    try:
        compiled = torch.compile(model)
    except Exception:  # pragma: no cover - depends on the toolchain
        return model
    return compiled  # type: ignore[return-value]
