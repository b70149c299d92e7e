"""Inference rewrites: BN folding parity (fp32, 1e-4), what stays unfolded, channels-last, bf16/int8."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fuseface
from fuseface.infer.optimize import fold_batchnorms, prepare_for_inference, quantize_dynamic_int8


def _calibrated(name: str, **kwargs: object) -> nn.Module:
    """A random backbone whose BN statistics and affines are non-trivial and well scaled.

    IResNets are built at ``input_size=32`` (same layers, 12x fewer FLOPs) to keep the tests fast."""
    torch.manual_seed(0)
    if name.startswith("ir"):
        kwargs = {"input_size": 32, **kwargs}
    model = fuseface.create_backbone(name, **kwargs)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = None  # cumulative average over the calibration batches
            if m.affine and m.weight.requires_grad:
                nn.init.uniform_(m.weight, 0.5, 1.5)
                nn.init.uniform_(m.bias, -0.2, 0.2)
    model.train()
    size = getattr(model, "input_size", 112)
    with torch.no_grad():
        model(torch.randn(4 if size == 112 else 16, 3, size, size))
    return model.eval()


def _count_bn(model: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


class _ConvBN(nn.Sequential):
    """A stand-in for a replaced ``conv2`` (MSConv-like plug-in): not a bare Conv2d."""

    def __init__(self, channels: int, stride: int) -> None:
        super().__init__(nn.Conv2d(channels, channels, 3, stride, 1, bias=False), nn.BatchNorm2d(channels))


@pytest.mark.parametrize(
    ("name", "kwargs", "bn_left"),
    [
        ("ir18", {}, 8),  # one pre-activation bn1 per block (before a zero-padded conv: not exact)
        ("adaface_ir18", {}, 8),
        ("ir18", {"conv": _ConvBN, "stages": [3, 4]}, 8 + 4),  # bn3 after a plug-in conv2 stays
    ],
)
def test_folded_fp32_equals_unfused_within_1e_4(name: str, kwargs: dict, bn_left: int) -> None:
    model = _calibrated(name, **kwargs)
    x = torch.randn(2, 3, model.input_size, model.input_size)
    with torch.inference_mode():
        ref = model(x)
        fast = prepare_for_inference(model, fold_bn=True, channels_last=True)
        out = fast(x.contiguous(memory_format=torch.channels_last))
    assert _count_bn(fast) == bn_left
    assert _count_bn(model) > bn_left  # the original is untouched
    assert ref.abs().max() > 0.5  # a meaningful scale for the tolerance
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=0)


def test_pre_activation_bn_cannot_be_folded_into_a_padded_conv() -> None:
    """Why bn1 stays: folding BN's shift into the following padded conv's bias is wrong at borders."""
    torch.manual_seed(0)
    bn, conv = nn.BatchNorm2d(4).eval(), nn.Conv2d(4, 4, 3, padding=1, bias=False)
    bn.running_mean.uniform_(-1, 1)
    bn.bias.data.uniform_(-1, 1)
    x = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        ref = conv(bn(x))
        a = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        b = bn.bias - a * bn.running_mean
        w = conv.weight
        naive = nn.functional.conv2d(
            x, w * a[None, :, None, None], (w * b[None, :, None, None]).sum((1, 2, 3)), padding=1
        )
    err = (naive - ref).abs()
    assert err[..., 1:-1, 1:-1].max() < 1e-5 and err.max() > 1e-2  # interior exact, borders wrong


def test_fold_count_and_idempotence() -> None:
    model = _calibrated("ir18")
    assert fold_batchnorms(model) == 3 + 8 * 2 + 4  # stem/head, bn2+bn3 per block, 4 shortcuts
    assert fold_batchnorms(model) == 0  # nothing left to fold


def test_reduced_precision_agreement() -> None:
    model = _calibrated("ir18")
    x = torch.randn(4, 3, 32, 32)
    with torch.inference_mode():
        ref = model(x)
        bf16 = prepare_for_inference(model, dtype=torch.bfloat16)(
            x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
        ).float()
        int8 = quantize_dynamic_int8(prepare_for_inference(model, channels_last=False))(x)
    cos = nn.functional.cosine_similarity
    assert cos(bf16, ref).min() > 0.99
    assert cos(int8, ref).min() > 0.99
