"""Official checkpoint converters: prefixes, wrappers, key and shape errors (round trips of our own
modules). Output parity with the official code: ``tests/test_official_parity_models.py``.
"""

from __future__ import annotations

import pytest
import torch

import fuseface
from fuseface.compat import from_official
from fuseface.nn.backbones.adaface_ir import AdaFaceIR


def test_insightface_state_dict_loads_strictly_with_module_prefix() -> None:
    src = fuseface.create_backbone("ir18").eval()
    sd = {f"module.{k}": v for k, v in src.state_dict().items()}
    model = from_official("insightface", "iresnet18", sd)
    assert not model.training and model.channel_order == "rgb"
    x = torch.randn(2, 3, 112, 112)
    torch.testing.assert_close(model(x), src(x), rtol=0, atol=0)


def test_insightface_mismatch_names_the_keys() -> None:
    sd = fuseface.create_backbone("ir18").state_dict()
    del sd["fc.bias"]
    with pytest.raises(ValueError, match=r"missing 1 keys: fc\.bias"):
        from_official("insightface", "iresnet18", sd)
    sd = fuseface.create_backbone("ir18").state_dict()
    sd["layer1.0.conv1.weight"] = torch.zeros(64, 64, 5, 5)
    with pytest.raises(ValueError, match=r"1 shape mismatches: layer1\.0\.conv1\.weight"):
        from_official("insightface", "iresnet18", sd)


def test_adaface_topology_keys_and_lightning_checkpoint() -> None:
    net = AdaFaceIR((2, 2, 2, 2)).eval()
    sd = net.state_dict()
    # MaxPool shortcut in the first unit (64 -> 64, stride 2): no parameters there
    assert not any(k.startswith("body.0.shortcut_layer") for k in sd)
    assert tuple(sd["body.2.shortcut_layer.0.weight"].shape) == (128, 64, 1, 1)
    assert "output_layer.4.running_mean" in sd and "output_layer.4.weight" not in sd
    assert tuple(sd["output_layer.3.weight"].shape) == (512, 25088)
    ckpt = {"state_dict": {**{f"model.{k}": v for k, v in sd.items()}, "head.kernel": torch.randn(512, 10)}}
    model = from_official("adaface", "ir_18", ckpt)
    assert model.channel_order == "bgr"
    x = torch.randn(3, 3, 112, 112)
    raw = model(x)
    # AdaFace's forward gives (x/||x||, ||x||); the raw output equals their product
    norm = raw.norm(dim=1, keepdim=True).clamp_min(1e-5)
    torch.testing.assert_close((raw / norm) * norm, net(x), rtol=1e-6, atol=1e-6)
    _emb, stages = model(x, return_stages=True)
    assert [s.shape[1] for s in stages] == [64, 128, 256, 512]


def test_adaface_ir101_counts_like_ir100() -> None:
    # same topology as insightface r100 apart from the parameter-free max-pool shortcuts
    # and the non-affine BN1d: insightface's first unit has a conv1x1 + BN shortcut (64*64 + 128)
    # where AdaFace has a max-pool, and its BN1d has weight and bias (2 * 512)
    ada = sum(p.numel() for p in fuseface.create_backbone("adaface_ir101").parameters())
    ir = sum(p.numel() for p in fuseface.create_backbone("ir100").parameters())
    assert ir - ada == 64 * 64 + 128 + 2 * 512


def test_unknown_source() -> None:
    with pytest.raises(ValueError, match="unknown checkpoint source"):
        from_official("nope", "x", {})
