"""Model parity with the official code: outputs of insightface, AdaFace, MSConv and CAFace.

``../shared/oracles/parity/<name>/`` holds the official key list (``keys.json``), an input and the
output the *official* module computed after ``load_state_dict(detfill.fill(sd))`` (see the oracles
README). Here the same weights are rebuilt from the official key names with the oracles'
``detfill.fill`` (imported from the oracles folder, never copied), loaded through
``fuseface.compat.from_official`` (or, for the single MSConv module, straight into our layer whose
keys are the official ones) and the outputs compared. Tolerances are relative to ``max|ref|`` and a
few times the float32-vs-float64 error each ``meta.json`` records, so a changed architecture, key
mapping or rounding rule fails.
"""

from __future__ import annotations

import importlib.util
import json
from collections import OrderedDict
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from fuseface.compat import from_official
from fuseface.nn.fusion.caface import stage_styles
from fuseface.nn.layers.msconv import MSConv

DTYPES = {"float32": torch.float32, "float64": torch.float64, "int64": torch.int64, "bool": torch.bool}


def load_detfill(oracles: Path) -> ModuleType:
    """The oracles' ``detfill`` module, imported from its file."""
    spec = importlib.util.spec_from_file_location("oracles_detfill", oracles / "detfill.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def official_weights(oracles: Path, folder: str, keys_file: str = "keys.json") -> OrderedDict:
    """``detfill.fill`` of a state dict with the official keys, shapes and dtypes (official order)."""
    entries = json.loads((oracles / "parity" / folder / keys_file).read_text())
    sd = OrderedDict((key, torch.zeros(shape, dtype=DTYPES[dtype])) for key, shape, dtype in entries)
    return load_detfill(oracles).fill(sd)


def load(oracles: Path, folder: str, name: str):
    return torch.load(oracles / "parity" / folder / name, weights_only=True)


def assert_rel_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float, what: str) -> None:
    """``max|actual - expected| <= rtol * max|expected|`` (shapes equal)."""
    shapes = (tuple(actual.shape), tuple(expected.shape))
    assert shapes[0] == shapes[1], f"{what}: shape {shapes[0]} != {shapes[1]}"
    scale = float(expected.abs().max())
    err = float((actual.double() - expected.double()).abs().max())
    assert err <= rtol * scale, f"{what}: max|diff| {err:.3g} > {rtol:g} x max|ref| {scale:.3g}"


def test_detfill_is_keyed_by_name(oracles: Path) -> None:
    detfill = load_detfill(oracles)
    a = detfill.fill(OrderedDict([("x.weight", torch.zeros(3, 4)), ("y.weight", torch.zeros(3, 4))]))
    assert not torch.equal(a["x.weight"], a["y.weight"])
    b = detfill.fill(OrderedDict([("x.weight", torch.zeros(3, 4))]))
    assert torch.equal(a["x.weight"], b["x.weight"])


@pytest.mark.parametrize("depth", [18, 34, 100, 200])
def test_insightface_key_lists_load_strictly(oracles: Path, depth: int) -> None:
    sd = official_weights(oracles, "insightface_iresnet50", f"keys_{depth}.json")
    model = from_official("insightface", f"iresnet{depth}", sd)
    assert list(model.state_dict()) == list(sd)


def test_insightface_iresnet50_output(oracles: Path) -> None:
    model = from_official("insightface", "iresnet50", official_weights(oracles, "insightface_iresnet50"))
    x = load(oracles, "insightface_iresnet50", "input.pt")
    with torch.inference_mode():
        out = model(x)
    assert_rel_close(out, load(oracles, "insightface_iresnet50", "output.pt"), 1e-4, "iresnet50 features")


@pytest.mark.parametrize("arch", ["ir_18", "ir_101"])
def test_adaface_outputs(oracles: Path, arch: str) -> None:
    folder = f"adaface_{arch.replace('_', '')}"
    model = from_official("adaface", arch, official_weights(oracles, folder))
    x = load(oracles, folder, "input.pt")
    ref = load(oracles, folder, "output.pt")
    with torch.inference_mode():
        raw, stages = model(x, return_stages=True)
    norm = raw.norm(dim=1, keepdim=True)
    assert_rel_close(raw / norm.clamp_min(1e-5), ref["embedding"], 5e-5, f"{arch} embedding")
    assert_rel_close(norm, ref["norm"], 1e-5, f"{arch} norm")
    if arch == "ir_101":
        maps = load(oracles, folder, "style_maps.pt")
        assert_rel_close(stages[1], maps["stage2_last_unit_map"], 1e-4, "body[15] map")
        assert_rel_close(stages[2], maps["stage3_last_unit_map"], 1e-4, "body[45] map")
        styles = stage_styles(stages, (1, 2))
        assert_rel_close(styles[:, :128], maps["style_3"], 1e-4, "style_3")
        assert_rel_close(styles[:, 128:], maps["style_5"], 1e-4, "style_5")


def test_msconv_module_outputs(oracles: Path) -> None:
    sd = official_weights(oracles, "msconv_module")
    x = load(oracles, "msconv_module", "input.pt")
    ref = load(oracles, "msconv_module", "output.pt")
    for stride in (1, 2):
        module = MSConv(128, stride=stride)
        module.load_state_dict(sd, strict=True)
        with torch.inference_mode():
            out = module.eval()(x)
        assert_rel_close(out, ref[f"stride{stride}"], 1e-5, f"MSConv stride {stride}")


@pytest.mark.parametrize("arch", ["msnet26", "msnet101"])
def test_msnet_key_lists_load_strictly(oracles: Path, arch: str) -> None:
    sd = official_weights(oracles, "msnet50", f"keys_{arch}.json")
    assert list(from_official("msconv", arch, sd).state_dict()) == list(sd)


def test_msnet50_stage_2_0_output(oracles: Path) -> None:
    model = from_official("msconv", "msnet50", official_weights(oracles, "msnet50"))
    x = load(oracles, "msnet50", "input.pt")
    with torch.inference_mode():
        h = model.stage_1(model.maxpool(model.basic_conv(x)))
        out = model.stage_2[0](h)
    assert_rel_close(out, load(oracles, "msnet50", "intermediates.pt")["stage_2.0"], 1e-4, "msnet50 stage_2.0")


# ---- CAFace aggregator --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def caface_weights(oracles: Path) -> OrderedDict:
    return official_weights(oracles, "caface_aggregator")


def caface_model(weights: OrderedDict, sinusoidal_pe: bool = False):
    sd = OrderedDict(weights)
    model = from_official("caface", "caface", sd)
    if sinusoidal_pe:  # the table computed by our module, as the official constructor computes it
        from fuseface.nn.fusion.caface import SinusoidalNormEmbedding

        sd["norm_emb.pe"] = SinusoidalNormEmbedding(64).pe
        model = from_official("caface", "caface", sd)
    return model


def fused_chunks(model, f_mag: torch.Tensor, styles: torch.Tensor, order: list[int] | None = None):
    """Per-chunk raw aggregated and L2 outputs with the memory (chunks of 4, official split)."""
    idx = torch.arange(16) if order is None else torch.tensor(order)
    f, s = f_mag[idx], styles[idx]
    memory = None
    raws, l2s = [], []
    with torch.inference_mode():
        for c in range(4):
            sl = slice(4 * c, 4 * c + 4)
            out = model(f[None, sl], model.style_input(s[None, sl]), memory)
            memory = out.memory
            raws.append(out.aggregated[0])
            l2s.append(out.aggregated[0] / (out.aggregated[0].norm() + 1e-8))
    return torch.stack(raws), torch.stack(l2s)


REVERSED = [12, 13, 14, 15, 8, 9, 10, 11, 4, 5, 6, 7, 0, 1, 2, 3]


@pytest.mark.parametrize("case", ["", "_small_norms"])
def test_caface_aggregator_calls(oracles: Path, caface_weights: OrderedDict, case: str) -> None:
    inputs = load(oracles, "caface_aggregator", f"input{case}.pt")
    ref = load(oracles, "caface_aggregator", f"output{case}.pt")
    f_mag, styles = inputs["f_mag"], inputs["styles"]
    model = caface_model(caface_weights)
    atol = 1e-5
    with torch.inference_mode():
        compressed = model.style_input(styles)
    torch.testing.assert_close(compressed, ref["compressed_intermediate"], rtol=0, atol=atol * 10)
    # (a) one shot, (b) chunks of 4 with memory, (c) chunks in reverse order
    a = model.fuse(f_mag.numpy(), styles.numpy(), chunk_size=None)
    np.testing.assert_allclose(a, ref["a_fused_l2"].numpy(), rtol=0, atol=atol)
    b = model.fuse(f_mag.numpy(), styles.numpy(), chunk_size=4)
    np.testing.assert_allclose(b, ref["b_fused_l2"].numpy(), rtol=0, atol=atol)
    raws, l2s = fused_chunks(model, f_mag, styles)
    assert_rel_close(raws, ref["b_per_chunk_aggregated_raw"], 1e-5, "per-chunk aggregated")
    torch.testing.assert_close(l2s, ref["b_per_chunk_fused_l2"], rtol=0, atol=atol)
    c = model.fuse(f_mag[REVERSED].numpy(), styles[REVERSED].numpy(), chunk_size=4)
    np.testing.assert_allclose(c, ref["c_reversed_chunks_fused_l2"].numpy(), rtol=0, atol=atol)
    # the stateful form gives the same template
    model.start()
    for k in range(4):
        model.update(f_mag[4 * k : 4 * k + 4].numpy(), styles[4 * k : 4 * k + 4].numpy())
    np.testing.assert_allclose(model.read(), ref["b_fused_l2"].numpy(), rtol=0, atol=atol)
    # (d) the internals of the one-shot call
    d = ref["d"]
    with torch.inference_mode():
        assignment, _mass, mu, sigma = model.cluster(f_mag[None], compressed[None])
        aggregated, weights = model.fusion_net.aggregate(mu, sigma)
    torch.testing.assert_close(assignment, d["assignment_attn"][:, 0], rtol=0, atol=atol)
    torch.testing.assert_close(mu, d["cluster_feature"], rtol=0, atol=atol)
    torch.testing.assert_close(sigma, d["cluster_style"], rtol=0, atol=atol)
    torch.testing.assert_close(model.fusion_net.clustering_layer.group_token, d["group_token"], rtol=0, atol=0)
    # our per-channel softmax over clusters is the official ``confidence_weight`` (the one the fused
    # feature is built from; the result's ``conf`` / ``weights`` are other intermediates)
    torch.testing.assert_close(weights, d["confidence_weight"], rtol=0, atol=atol)
    assert_rel_close(aggregated, d["aggregated"], 1e-5, "aggregated")
    # plain averaging (the official baseline)
    mean = f_mag.double().mean(0)
    np.testing.assert_allclose((mean / (mean.norm() + 1e-8)).numpy(), ref["average_fused_l2"].numpy(), atol=1e-6)


def test_caface_with_sinusoidal_table(oracles: Path, caface_weights: OrderedDict) -> None:
    inputs = load(oracles, "caface_aggregator", "input.pt")
    ref = load(oracles, "caface_aggregator", "output_sinusoidal_pe.pt")
    f_mag, styles = inputs["f_mag"].numpy(), inputs["styles"].numpy()
    model = caface_model(caface_weights, sinusoidal_pe=True)
    np.testing.assert_allclose(model.fuse(f_mag, styles), ref["a_fused_l2"].numpy(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(model.fuse(f_mag, styles, chunk_size=4), ref["b_fused_l2"].numpy(), rtol=0, atol=1e-5)
    c = model.fuse(f_mag[REVERSED], styles[REVERSED], chunk_size=4)
    np.testing.assert_allclose(c, ref["c_reversed_chunks_fused_l2"].numpy(), rtol=0, atol=1e-5)
