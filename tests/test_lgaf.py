"""LGAF head: shapes, gradients, quality weights, batch independence, ablations, checkpoints."""

from __future__ import annotations

import pytest
import torch

import fuseface
from fuseface.infer.model_file import ModelMeta, load_model, save_model
from fuseface.nn.backbones.iresnet import IResNet
from fuseface.nn.heads.lgaf import LGAFHead

SIZE = 32  # tiny input: stage maps 16, 8, 4, 2


def tiny(mode: str = "fused", **head_kw) -> IResNet:
    return IResNet((1, 1, 1, 1), num_features=64, input_size=SIZE, head="lgaf", head_kw={"mode": mode, **head_kw})


def grad_is_zero(p: torch.nn.Parameter) -> bool:
    return p.grad is None or bool(torch.all(p.grad == 0))


def warm_up(model: torch.nn.Module, steps: int = 30, batch: int = 8) -> None:
    """Train-mode passes until the BN and quality running statistics have (nearly) converged."""
    model.train()
    with torch.no_grad():
        for _ in range(steps):
            model(torch.randn(batch, 3, SIZE, SIZE))
    model.eval()


def test_shapes_aux_and_gradients() -> None:
    model = tiny().train()
    x = torch.randn(6, 3, SIZE, SIZE)
    emb, aux = model(x, return_aux=True)
    assert emb.shape == (6, 64)
    assert aux["weights"].shape == (6, 2) and aux["energies"].shape == (6, 2)
    assert aux["global"].shape == aux["local"].shape == (6, 64)
    assert set(aux["aux_embeddings"]) == {"global", "local"}
    # the fused embedding: weighted sum of unit vectors scaled by the weighted branch energies
    w, e = aux["weights"], aux["energies"]
    expected = (w[:, :1] * aux["global"] / e[:, :1] + w[:, 1:] * aux["local"] / e[:, 1:]) * (w * e).sum(1, True)
    torch.testing.assert_close(emb, expected)
    emb.square().sum().backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert not grad_is_zero(model.head.local.heads[3].depthwise.weight)
    assert not grad_is_zero(model.fc.weight)
    assert not grad_is_zero(model.head.quality_scale)


def test_weights_sum_to_one_and_follow_branch_energy() -> None:
    model = tiny()
    warm_up(model)
    x = torch.randn(5, 3, SIZE, SIZE)
    with torch.no_grad():
        _, aux = model(x, return_aux=True)
        assert torch.allclose(aux["weights"].sum(1), torch.ones(5))
        assert torch.all(aux["weights"] > 0)
        # scale the global branch down (the backbone's output layer) -> it loses weight
        handle = model.features.register_forward_hook(lambda m, i, out: out * 0.5)
        _, aux_g = model(x, return_aux=True)
        handle.remove()
        assert torch.all(aux_g["weights"][:, 0] < aux["weights"][:, 0])
        # scale the local branch (MHMS output) down -> it loses weight
        handle = model.head.local.register_forward_hook(lambda m, i, out: out * 0.5)
        _, aux_l = model(x, return_aux=True)
        handle.remove()
        assert torch.all(aux_l["weights"][:, 1] < aux["weights"][:, 1])
        torch.testing.assert_close(aux_l["energies"][:, 1], aux["energies"][:, 1] * 0.5)


def test_temperature_sharpens_weights() -> None:
    head = LGAFHead(num_features=16, stage_channels=(8, 8, 8, 8), stage_sizes=(8, 4, 4, 2), kernel_sizes=(3, 5))
    g, l = torch.randn(10, 16), torch.randn(10, 16) * 2
    head.train()
    head.branch_weights(g, l)
    head.eval()
    soft = head.branch_weights(g, l)["weights"]
    head.temperature = 0.1
    sharp = head.branch_weights(g, l)["weights"]
    assert (sharp - 0.5).abs().mean() > (soft - 0.5).abs().mean()


def test_eval_embedding_does_not_depend_on_the_batch() -> None:
    model = tiny()
    warm_up(model)
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(4, 3, SIZE, SIZE)
    with torch.no_grad():
        batch_emb, batch_aux = model(x, return_aux=True)
        for i in range(4):
            alone, aux = model(x[i : i + 1], return_aux=True)
            torch.testing.assert_close(alone[0], batch_emb[i], rtol=1e-3, atol=1e-4)
            torch.testing.assert_close(aux["weights"][0], batch_aux["weights"][i], rtol=1e-4, atol=1e-5)
    # eval passes never move the running statistics
    for k, v in model.state_dict().items():
        assert torch.equal(v, buffers[k]), k


def test_running_quality_statistics_follow_training_batches() -> None:
    model = tiny()
    qn = model.head.quality_norm
    assert int(qn.num_batches_tracked) == 0
    warm_up(model, steps=2)
    assert int(qn.num_batches_tracked) == 2
    assert not torch.allclose(qn.running_mean, torch.zeros(2))


@pytest.mark.parametrize("mode", ["global", "local", "equal"])
def test_ablation_removes_its_branch(mode: str) -> None:
    model = tiny(mode).train()
    x = torch.randn(4, 3, SIZE, SIZE)
    emb, aux = model(x, return_aux=True)
    emb.square().sum().backward()
    local_params = list(model.head.local.parameters())
    global_params = [model.bn2.weight, model.bn2.bias, model.fc.weight, model.fc.bias, model.features.bias]
    if mode == "global":
        torch.testing.assert_close(emb, aux["global"])
        assert all(grad_is_zero(p) for p in local_params)
        assert not any(grad_is_zero(p) for p in global_params)
        assert torch.all(aux["weights"] == torch.tensor([1.0, 0.0]))
        assert set(aux["aux_embeddings"]) == {"global"}
    elif mode == "local":
        torch.testing.assert_close(emb, aux["local"])
        assert all(grad_is_zero(p) for p in global_params)
        assert all(grad_is_zero(p) for p in model.layer4.parameters())  # tap stage 3: stage 4 is unused
        assert not grad_is_zero(model.head.local.fc.weight)
        assert set(aux["aux_embeddings"]) == {"local"}
    else:
        assert torch.all(aux["weights"] == 0.5)
        assert not grad_is_zero(model.head.local.fc.weight) and not grad_is_zero(model.fc.weight)
    # the learned quality weighting only exists in "fused" mode
    assert grad_is_zero(model.head.quality_scale) and grad_is_zero(model.head.quality_bias)


def test_global_mode_is_the_plain_iresnet_and_ir18_weights_load() -> None:
    plain = fuseface.create_backbone("ir18").eval()
    with_head = fuseface.create_backbone("ir18", head="lgaf")
    missing, unexpected = with_head.load_state_dict(plain.state_dict(), strict=False)
    assert unexpected == []
    assert missing and all(k.startswith("head.") for k in missing)
    with_head.eval()
    with_head.head.mode = "global"
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        torch.testing.assert_close(with_head(x), plain(x))
        with_head.head.mode = "fused"
        assert not torch.allclose(with_head(x), plain(x))


def test_options_concat_dilations_and_taps() -> None:
    x = torch.randn(3, 3, SIZE, SIZE)
    for kw in (
        {"fusion": "concat"},
        {"kernel_sizes": [3, 3, 3], "dilations": [1, 2, 3], "split_channels": False, "tap_stage": 4},
        {"tap_stage": 2, "kernel_sizes": [3, 5], "pool_size": 4, "head_channels": 16},
        {"quality_norm": "batch", "energy": "norm", "learn_affine": False, "detach_quality": True},
    ):
        model = tiny(**kw).train()
        emb, aux = model(x, return_aux=True)
        assert emb.shape == (3, 64), kw
        assert torch.allclose(aux["weights"].sum(1), torch.ones(3)), kw
        emb.sum().backward()
    with pytest.raises(ValueError, match="mode"):
        tiny("both")
    with pytest.raises(ValueError, match="odd"):
        tiny(kernel_sizes=(3, 4))
    with pytest.raises(ValueError, match="dilations"):
        tiny(kernel_sizes=(3, 5), dilations=(1,))
    with pytest.raises(ValueError, match="split"):
        tiny(kernel_sizes=(3, 5, 7))


def test_model_file_round_trip_rebuilds_the_head(tmp_path) -> None:
    head_kw = {"mode": "fused", "kernel_sizes": (3, 5), "temperature": 0.5}
    model = fuseface.create_backbone("ir18", head="lgaf", head_kw=head_kw, input_size=SIZE, num_features=64)
    warm_up(model, steps=3)
    path = save_model(
        tmp_path / "lgaf.safetensors",
        model,
        ModelMeta(
            arch="ir18",
            arch_kwargs={"head": "lgaf", "head_kw": head_kw, "input_size": SIZE, "num_features": 64},
            input_size=SIZE,
        ),
    )
    loaded, meta = load_model(path)
    assert meta.arch_kwargs["head_kw"]["kernel_sizes"] == [3, 5]  # JSON: tuples come back as lists
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
