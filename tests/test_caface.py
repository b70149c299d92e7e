"""CAFace aggregator: released layout and sizes, converter round trip, memory algebra, streaming API.

Output parity with the official aggregator: ``tests/test_official_parity_models.py``."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

import fuseface
from fuseface.compat import from_official
from fuseface.errors import CheckpointError, DataError
from fuseface.infer.fusion_file import load_fusion, save_fusion
from fuseface.nn.fusion.caface import CAFace, CAFaceMemory, chunk_indices


def _released_layout(m: int = 4, depth: int = 2, conf: int = 512) -> dict[str, tuple[int, ...]]:
    """Aggregator keys and shapes of the released Lightning checkpoint, written out from the official
    attribute structure (caface/nets/aggregator.py StyleBasedAggregator -> style_maker (styler.py
    StyleMergeLayer: cfcs ParameterList + cfc alias, relu PReLU, linear, bn), fusion_net
    (cluster_transformer.py ClusterAggregateTransformer: clustering_layer.{group_token, blocks.i
    (transformer_module.AttnBlock: norm1, attn.qkv, attn.proj, norm2, mlp.fc1/fc2), cluster_block
    (norm_tokens, norm_x, assign.q_proj/k_proj)}, conf_mlp = depth MixerBlocks + Mlp), norm_emb
    (SinusoidalEncoding: norm_bn without affine, pe buffer, scale), input_maker = Identity)."""

    def bn(p, c):
        return {
            f"{p}.weight": (c,),
            f"{p}.bias": (c,),
            f"{p}.running_mean": (c,),
            f"{p}.running_var": (c,),
            f"{p}.num_batches_tracked": (),
        }

    lin = lambda p, i, o: {f"{p}.weight": (o, i), f"{p}.bias": (o,)}  # noqa: E731
    ln = lambda p, c: {f"{p}.weight": (c,), f"{p}.bias": (c,)}  # noqa: E731
    k: dict[str, tuple[int, ...]] = {
        "style_maker.cfcs.0": (384, 2),
        "style_maker.cfc": (384, 2),
        "style_maker.relu.weight": (1,),
        **lin("style_maker.linear", 384, 64),
        **bn("style_maker.bn", 64),
        "norm_emb.norm_bn.running_mean": (1,),
        "norm_emb.norm_bn.running_var": (1,),
        "norm_emb.norm_bn.num_batches_tracked": (),
        "norm_emb.pe": (61, 64),
        "norm_emb.scale": (),
        "fusion_net.clustering_layer.group_token": (1, m, 128),
    }
    cl = "fusion_net.clustering_layer"
    for i in range(depth):
        b = f"{cl}.blocks.{i}"
        k.update(
            {
                **ln(f"{b}.norm1", 128),
                **lin(f"{b}.attn.qkv", 128, 384),
                **lin(f"{b}.attn.proj", 128, 128),
                **ln(f"{b}.norm2", 128),
                **lin(f"{b}.mlp.fc1", 128, 512),
                **lin(f"{b}.mlp.fc2", 512, 128),
            }
        )
    cb = f"{cl}.cluster_block"
    k.update(
        {
            **ln(f"{cb}.norm_tokens", 128),
            **ln(f"{cb}.norm_x", 128),
            **lin(f"{cb}.assign.q_proj", 128, 128),
            **lin(f"{cb}.assign.k_proj", 128, 128),
        }
    )
    for i in range(depth):
        b = f"fusion_net.conf_mlp.{i}"
        k.update(
            {
                **ln(f"{b}.ln", 256),
                **lin(f"{b}.tokens_mlp_block.fc1", m, 2 * m),
                **lin(f"{b}.tokens_mlp_block.fc2", 2 * m, m),
                **lin(f"{b}.channels_mlp_block.fc1", 256, 128),
                **lin(f"{b}.channels_mlp_block.fc2", 128, 256),
                f"{b}.skip_connect_gate": (),
            }
        )
    last = f"fusion_net.conf_mlp.{depth}"
    k.update({**lin(f"{last}.fc1", 256, 256), **lin(f"{last}.fc2", 256, conf)})
    return k


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _probe(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    feats = rng.normal(size=(n, 512)).astype(np.float32) * rng.uniform(5, 40, size=(n, 1)).astype(np.float32)
    styles = np.stack([rng.normal(size=(n, 384)), rng.uniform(0.1, 2, size=(n, 384))], -1).astype(np.float32)
    return feats, styles


def _trained_like(seed: int = 0, **kw) -> CAFace:
    """A CAFace with non-trivial weights everywhere (cfc, BN statistics, gates) in eval mode."""
    torch.manual_seed(seed)
    model = CAFace(**kw)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(torch.randn_like(p) * (0.3 if "cfc" in name else 0.05))
        model.style_maker.bn.running_mean.normal_()
        model.style_maker.bn.running_var.uniform_(0.5, 2)
        model.norm_emb.norm_bn.running_mean.fill_(20.0)
        model.norm_emb.norm_bn.running_var.fill_(60.0)
    return model.eval()


def test_parameter_counts_match_methods() -> None:
    model = CAFace()
    assert _count(model) == 786_524
    assert _count(model.style_maker) == 25_537
    assert _count(model.norm_emb) == 1
    assert _count(model.fusion_net.clustering_layer) == 430_592
    assert _count(model.fusion_net.conf_mlp) == 330_394
    assert round(_count(CAFace(depth=3)) / 1e6, 2) == 1.05
    assert round(_count(CAFace(confidence_dim=1)) / 1e6, 2) == 0.66


@pytest.mark.parametrize(("m", "depth", "conf"), [(4, 2, 512), (8, 3, 1)])
def test_state_dict_matches_released_layout(m: int, depth: int, conf: int) -> None:
    own = {k: tuple(v.shape) for k, v in CAFace(num_clusters=m, depth=depth, confidence_dim=conf).state_dict().items()}
    assert own == _released_layout(m, depth, conf)


def test_converter_round_trip_of_lightning_checkpoint() -> None:
    ref = _trained_like()
    agg_sd = ref.state_dict()
    ckpt = {
        "state_dict": {
            **{f"aggregator.{k}": v for k, v in agg_sd.items()},
            "model.body.0.weight": torch.zeros(3),
            "center.weight": torch.zeros(10, 512),
        },
        "hyper_parameters": {"decoder_name": "catv9_g4_conf512_small"},
    }
    conv = from_official("caface", "caface", ckpt)
    assert not conv.training
    for k, v in agg_sd.items():
        assert torch.equal(conv.state_dict()[k], v), k
    feats, styles = _probe(40)
    for chunk in (None, 8):
        np.testing.assert_array_equal(conv.fuse(feats, styles, chunk), ref.fuse(feats, styles, chunk))
    # a variant is inferred from the shapes
    var = CAFace(num_clusters=8, depth=3, confidence_dim=1)
    conv_var = from_official("caface", "caface", var.state_dict())
    assert conv_var.config["num_clusters"] == 8 and conv_var.config["depth"] == 3
    bad = dict(agg_sd)
    bad.pop("style_maker.cfc")
    bad["fusion_net.extra"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"missing|unexpected"):
        from_official("caface", "caface", {f"aggregator.{k}": v for k, v in bad.items()})


def test_fusion_file_round_trip(tmp_path) -> None:
    ref = _trained_like()
    path = save_fusion(tmp_path / "caface.safetensors", ref, "caface", extra={"run": "test"})
    loaded = load_fusion(path)
    feats, styles = _probe(30, seed=1)
    np.testing.assert_array_equal(loaded.fuse(feats, styles, 8), ref.fuse(feats, styles, 8))
    via_path = fuseface.fuse(feats, "caface", styles=styles, chunk_size=8, model=str(path))
    np.testing.assert_array_equal(via_path, ref.fuse(feats, styles, 8))
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(CheckpointError):
        load_fusion(tmp_path / "junk.safetensors")


def test_assignment_sums_to_one_over_clusters() -> None:
    model = _trained_like()
    feats, styles = _probe(12)
    with torch.no_grad():
        f = torch.from_numpy(feats)[None]
        a, mass, _, _ = model.cluster(f, model.style_input(torch.from_numpy(styles))[None])
    assert a.shape == (1, 4, 12)
    torch.testing.assert_close(a.sum(1), torch.ones(1, 12))
    torch.testing.assert_close(mass.sum(), torch.tensor(12.0))


def test_chunk_order_invariance() -> None:
    model = _trained_like()
    feats, styles = _probe(50, seed=2)
    chunks = chunk_indices(50, 8)
    assert [len(c) for c in chunks] == [8, 7, 7, 7, 7, 7, 7]
    reference = None
    for perm in itertools.islice(itertools.permutations(range(len(chunks))), 0, 5000, 997):
        model.start()
        for i in perm:
            model.update(feats[chunks[i]], styles[chunks[i]])
        out = model.read()
        if reference is None:
            reference = out
        np.testing.assert_allclose(out, reference, atol=1e-6)
    # and fuse (batched chunks, in order) equals the in-order stream
    np.testing.assert_allclose(model.fuse(feats, styles, 8), reference, atol=1e-6)


def test_batched_fuse_equals_one_chunk_at_a_time_forward() -> None:
    """fuse() batches the chunks; the definition is forward() chunk by chunk with the memory."""
    model = _trained_like()
    feats, styles = _probe(70, seed=3)
    memory = None
    with torch.no_grad():
        for idx in chunk_indices(70, 16):
            f = torch.from_numpy(feats[idx])[None]
            s = model.style_input(torch.from_numpy(styles[idx]))[None]
            out = model(f, s, memory)
            memory = out.memory
    expected = out.aggregated[0].numpy()
    expected = expected / (np.linalg.norm(expected) + 1e-8)
    np.testing.assert_allclose(model.fuse(feats, styles, 16), expected, atol=1e-6)


def test_memory_equals_one_shot_incremental_mean() -> None:
    """With exact mass normalisation the memory holds Σ_all A v / Σ_all A (A: the per-chunk
    assignments) and the cumulative mass Σ_all A, whatever the chunking (§3.8)."""
    model = _trained_like(exact_mass_normalisation=True)
    feats, styles = _probe(64, seed=4)
    num, den, memory = 0.0, 0.0, None
    with torch.no_grad():
        for idx in chunk_indices(64, 10):
            f = torch.from_numpy(feats[idx])[None]
            s = model.style_input(torch.from_numpy(styles[idx]))[None]
            a, mass, mu, sigma = model.cluster(f, s)
            num = num + a @ (f / (f.norm(dim=-1, keepdim=True) + 1e-5))
            den = den + mass
            memory = CAFaceMemory(mass, mu, sigma) if memory is None else memory.merge(mass, mu, sigma)
    torch.testing.assert_close(memory.mass, den)
    torch.testing.assert_close(memory.features, num / den, atol=1e-6, rtol=1e-5)


def test_clipped_mass_matches_exact_when_masses_at_least_one() -> None:
    clipped, exact = _trained_like(), _trained_like(exact_mass_normalisation=True)
    feats, styles = _probe(64, seed=5)
    with torch.no_grad():
        s = clipped.style_input(torch.from_numpy(styles))[None]
        _, mass, mu_c, _ = clipped.cluster(torch.from_numpy(feats)[None], s)
        _, _, mu_e, _ = exact.cluster(torch.from_numpy(feats)[None], s)
    small = (mass < 1).squeeze(-1)[0]
    torch.testing.assert_close(mu_c[0, ~small], mu_e[0, ~small], atol=1e-6, rtol=1e-5)
    if small.any():  # quirk Q3: a cluster with mass < 1 keeps an un-normalised sum
        torch.testing.assert_close(mu_c[0, small], mu_e[0, small] * mass[0, small], atol=1e-6, rtol=1e-5)


def test_nan_rows_dropped_and_counted() -> None:
    model = _trained_like()
    feats, styles = _probe(20, seed=6)
    clean = model.fuse(feats, styles, None)
    bad_f, bad_s = feats.copy(), styles.copy()
    bad_f = np.concatenate([bad_f, np.full((2, 512), np.nan, np.float32)])
    bad_s = np.concatenate([bad_s, styles[:2]])
    bad_s[0, 3, 1] = np.nan
    template, dropped = model.fuse(bad_f, bad_s, None, return_dropped=True)
    assert dropped == 3
    np.testing.assert_allclose(template, model.fuse(feats[1:], styles[1:], None), atol=1e-6)
    assert np.isfinite(template).all() and not np.allclose(template, clean)
    with pytest.warns(RuntimeWarning, match="dropped 3 NaN"):
        model.fuse(bad_f, bad_s, None)
    model.start()
    assert model.update(bad_f[:10], bad_s[:10]) == 1
    assert model.update(bad_f[10:], bad_s[10:]) == 2
    assert model.stream_dropped == 3


def test_empty_probe_is_an_error() -> None:
    model = _trained_like()
    with pytest.raises(DataError, match="empty probe"):
        model.fuse(np.zeros((0, 512), np.float32), np.zeros((0, 384, 2), np.float32))
    with pytest.raises(DataError, match="empty probe"):
        model.fuse(np.full((3, 512), np.nan, np.float32), np.zeros((3, 384, 2), np.float32))
    model.start()
    with pytest.raises(DataError, match="empty probe"):
        model.read()
    with pytest.raises(DataError, match="styles"):
        model.fuse(*_probe(3)[:1], np.zeros((3, 10, 2), np.float32))


def test_fuse_output_is_unit_and_chunk_dependent() -> None:
    model = _trained_like()
    feats, styles = _probe(40, seed=7)
    one, chunked = model.fuse(feats, styles, None), model.fuse(feats, styles, 8)
    assert one.shape == (512,) and abs(np.linalg.norm(one) - 1) < 1e-5
    assert not np.allclose(one, chunked, atol=1e-4)  # partition matters (§3.8 caveat i), order does not
    assert [len(c) for c in chunk_indices(10, 4)] == [4, 3, 3]
    assert [len(c) for c in chunk_indices(4, 4)] == [4]
