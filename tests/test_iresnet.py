"""IResNet: insightface arcface_torch key layout, shapes, parameter counts, round trips.

Output parity with the official insightface code: ``tests/test_official_parity_models.py``.
"""

from __future__ import annotations

import pytest
import torch

import fuseface
from fuseface.nn.backbones import iresnet


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(("name", "millions"), [("ir50", 43.59), ("ir100", 65.16)])
def test_parameter_counts_match_insightface(name: str, millions: float) -> None:
    model = fuseface.create_backbone(name)
    assert round(n_params(model) / 1e6, 2) == millions


def test_ir18_keys_follow_insightface_layout() -> None:
    sd = fuseface.create_backbone("ir18").state_dict()
    # stem, one block, its shortcut and the head as insightface names them
    for key, shape in {
        "conv1.weight": (64, 3, 3, 3),
        "bn1.running_var": (64,),
        "prelu.weight": (64,),
        "layer1.0.bn1.weight": (64,),
        "layer1.0.conv1.weight": (64, 64, 3, 3),
        "layer1.0.prelu.weight": (64,),
        "layer1.0.conv2.weight": (64, 64, 3, 3),
        "layer1.0.bn3.bias": (64,),
        "layer1.0.downsample.0.weight": (64, 64, 1, 1),
        "layer1.0.downsample.1.weight": (64,),
        "layer2.0.downsample.0.weight": (128, 64, 1, 1),
        "layer4.1.conv2.weight": (512, 512, 3, 3),
        "bn2.weight": (512,),
        "fc.weight": (512, 512 * 7 * 7),
        "fc.bias": (512,),
        "features.weight": (512,),
        "features.running_mean": (512,),
    }.items():
        assert tuple(sd[key].shape) == shape, key
    assert "layer1.1.downsample.0.weight" not in sd
    blocks = {k.split(".")[0] + "." + k.split(".")[1] for k in sd if k.startswith("layer")}
    assert len(blocks) == sum(iresnet.DEPTHS[18])


def test_init_and_frozen_feature_scale() -> None:
    model = fuseface.create_backbone("ir18")
    assert not model.features.weight.requires_grad
    assert torch.all(model.features.weight == 1)
    w = model.layer3[1].conv1.weight
    assert abs(w.std().item() - 0.1) < 0.01 and abs(w.mean().item()) < 0.01


def test_output_shape_unnormalised_and_stage_outputs() -> None:
    model = fuseface.create_backbone("ir18").eval()
    x = torch.randn(2, 3, 112, 112)
    emb, stages = model(x, return_stages=True)
    assert emb.shape == (2, 512)
    assert not torch.allclose(emb.norm(dim=1), torch.ones(2))
    assert [tuple(s.shape[1:]) for s in stages] == [(64, 56, 56), (128, 28, 28), (256, 14, 14), (512, 7, 7)]
    torch.testing.assert_close(model(x), emb)


def test_state_dict_round_trip_gives_identical_outputs() -> None:
    a = fuseface.create_backbone("ir34").eval()
    b = fuseface.create_backbone("ir34").eval()
    x = torch.randn(2, 3, 112, 112)
    assert not torch.allclose(a(x), b(x))
    b.load_state_dict(a.state_dict(), strict=True)
    torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)


def test_conv_factory_replaces_conv2_in_chosen_stages() -> None:
    calls = []

    def factory(channels: int, stride: int) -> torch.nn.Module:
        calls.append((channels, stride))
        return torch.nn.Conv2d(channels, channels, 3, stride, 1, bias=True)

    model = fuseface.create_backbone("ir18", conv=factory, stages=(3, 4))
    assert calls == [(256, 2), (256, 1), (512, 2), (512, 1)]
    assert model.layer3[0].conv2.bias is not None and model.layer2[0].conv2.bias is None
    assert model(torch.randn(2, 3, 112, 112)).shape == (2, 512)
    with pytest.raises(ValueError, match="stages"):
        fuseface.create_backbone("ir18", stages=(5,))


def test_list_models_and_unknown_name() -> None:
    assert fuseface.list_models("ir[0-9]*") == ["ir100", "ir18", "ir200", "ir34", "ir50"]
    assert "ir_demo" in fuseface.list_models("ir_*")
    with pytest.raises(KeyError, match="unknown backbone"):
        fuseface.create_backbone("ir42")
