"""MSNet backbones: official key layout, strict loading through compat, counts, CLI model card."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

import fuseface
from fuseface.compat import from_official
from fuseface.errors import CheckpointError
from fuseface.nn.backbones.msnet import MSNet
from fuseface.nn.profile import profile_backbone

BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
OFFICIAL_DEPTHS = {"msnet26": (2, 2, 2, 2), "msnet50": (3, 4, 6, 3), "msnet101": (3, 4, 23, 3)}


def _bn(layout: dict[str, tuple[int, ...]], prefix: str, n: int) -> None:
    for k in BN_KEYS:
        layout[f"{prefix}.{k}"] = () if k == "num_batches_tracked" else (n,)


def official_msnet_layout(depths: tuple[int, int, int, int]) -> dict[str, tuple[int, ...]]:
    """Keys/shapes of the official ``MSNet(512, depths)`` (Zoey-SiZhou/MSConv backbones/model.py), written
    from its attribute structure: ``basic_conv`` = Sequential(Conv2d(3, 64, 7), BN, PReLU()), ``maxpool``,
    ``stage_1..4`` = Sequential of ``MSUnit`` (``conv1`` = Sequential(Conv1x1, BN, PReLU()), ``conv2_msconv`` =
    MSConv, ``conv3`` = Sequential(Conv1x1, BN), ``shortcut`` = Sequential() or Sequential(Conv1x1, BN),
    ``prelu`` = PReLU()), ``dropout``, ``gap``, ``classifier`` = Linear(2048, 512)."""
    layout: dict[str, tuple[int, ...]] = {"basic_conv.0.weight": (64, 3, 7, 7), "basic_conv.2.weight": (1,)}
    _bn(layout, "basic_conv.1", 64)
    widths = ((64, 128, 256), (256, 256, 512), (512, 512, 1024), (1024, 1024, 2048))
    for s, ((cin, mid, out), n) in enumerate(zip(widths, depths, strict=True), start=1):
        d = max(mid // 16, 32)
        for i in range(n):
            p = f"stage_{s}.{i}"
            unit_in = cin if i == 0 else out
            layout[f"{p}.conv1.0.weight"] = (mid, unit_in, 1, 1)
            _bn(layout, f"{p}.conv1.1", mid)
            layout[f"{p}.conv1.2.weight"] = (1,)
            m = f"{p}.conv2_msconv"
            for seq, conv_shape, ch in (
                ("convs.0", (mid, mid // 32, 3, 3), mid),
                ("convs.1", (mid, mid // 32, 3, 3), mid),
                ("fc", (d, mid, 1, 1), d),
                ("fcs.0", (mid, d, 1, 1), mid),
                ("fcs.1", (mid, d, 1, 1), mid),
                ("fc_d", (mid, mid, 1, 1), mid),
            ):
                layout[f"{m}.{seq}.0.weight"] = conv_shape
                _bn(layout, f"{m}.{seq}.1", ch)
                layout[f"{m}.{seq}.2.weight"] = (1,)
            layout[f"{p}.conv3.0.weight"] = (out, mid, 1, 1)
            _bn(layout, f"{p}.conv3.1", out)
            if unit_in != out:
                layout[f"{p}.shortcut.0.weight"] = (out, unit_in, 1, 1)
                _bn(layout, f"{p}.shortcut.1", out)
            layout[f"{p}.prelu.weight"] = (1,)
    layout["classifier.weight"] = (512, 2048)
    layout["classifier.bias"] = (512,)
    return layout


def _random_official_state_dict(depths: tuple[int, int, int, int], prefix: str = "") -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    sd = {}
    for k, shape in official_msnet_layout(depths).items():
        if k.endswith("num_batches_tracked"):
            sd[prefix + k] = torch.tensor(100)
        elif k.endswith("running_var"):
            sd[prefix + k] = torch.rand(shape, generator=g) + 0.5
        else:
            sd[prefix + k] = torch.randn(shape, generator=g) * 0.05
    return sd


@pytest.mark.parametrize("arch", ["msnet26", "msnet50", "msnet101"])
def test_state_dict_layout_equals_official(arch: str) -> None:
    with torch.device("meta"):
        model = fuseface.create_backbone(arch)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == official_msnet_layout(OFFICIAL_DEPTHS[arch])


def test_compat_loads_official_msnet26_strictly_and_embeds() -> None:
    sd = _random_official_state_dict(OFFICIAL_DEPTHS["msnet26"], prefix="module.")
    model = from_official("msconv", "msnet26", {"state_dict": sd})
    assert not model.training and model.channel_order == "rgb" and model.arch_name == "msnet26"
    key = "stage_3.1.conv2_msconv.fc_d.0.weight"
    torch.testing.assert_close(model.state_dict()[key], sd[f"module.{key}"])
    x = torch.randn(1, 3, 112, 112)
    emb, stages = model(x, return_stages=True)
    # bug B2 guard: batch size 1 keeps the batch dimension
    assert emb.shape == (1, 512) and torch.isfinite(emb).all()
    assert [tuple(s.shape[1:]) for s in stages] == [(256, 28, 28), (512, 14, 14), (1024, 7, 7), (2048, 4, 4)]


def test_compat_names_the_real_arch_of_a_mislabelled_checkpoint() -> None:
    # an msnet101 checkpoint (what the official "ms50" config trains, bug B1) passed as msnet50
    sd = {k: torch.zeros(0) for k in official_msnet_layout(OFFICIAL_DEPTHS["msnet101"])}
    with pytest.raises(CheckpointError, match=r"23 units in stage_3.*it is msnet101"):
        from_official("msconv", "msnet50", sd)
    with pytest.raises(ValueError, match=r"'ms50' is an official config name.*msnet101"):
        from_official("msconv", "ms50", sd)
    bad = _random_official_state_dict(OFFICIAL_DEPTHS["msnet26"])
    del bad["classifier.bias"]
    with pytest.raises(ValueError, match=r"missing 1 keys: classifier\.bias"):
        from_official("msconv", "msnet26", bad)


# METHODS.md sections 1.1 and 2.3 ([COMPUTED], conv/linear MACs + the MO product, 112x112).
# METHODS.md prints msnet26 as 18.56 M / 0.80 G and msnet101 as 2.61 G; the stated rule gives
# 18,554,881 / 794,569,728 and 2,604,742,144 (docs/msconv.md, "Counts"), within 0.01 of those figures.
COUNTS = {
    "msnet26": (18.56, 0.80),
    "msnet50": (31.56, 1.39),
    "msnet101": (57.32, 2.61),
    "ir50": (43.59, 6.31),
    "ir100": (65.16, 12.09),
}


@pytest.mark.parametrize("arch", sorted(COUNTS))
def test_parameter_and_mac_counts_match_methods(arch: str) -> None:
    params_m, gmacs = COUNTS[arch]
    prof = profile_backbone(arch)
    assert prof.params / 1e6 == pytest.approx(params_m, abs=0.006)
    assert prof.macs / 1e9 == pytest.approx(gmacs, abs=0.006)
    if arch in ("msnet50", "ir50", "ir100"):  # exact to the printed digits
        assert round(prof.params / 1e6, 2) == params_m and round(prof.macs / 1e9, 2) == gmacs
    # pinned, so a layer change cannot hide inside the tolerance
    exact = {"msnet26": (18_554_881, 794_569_728), "msnet101": (57_320_265, 2_604_742_144)}
    if arch in exact:
        assert (prof.params, prof.macs) == exact[arch]


def test_msnet_ablation_kwargs_keep_keys() -> None:
    with torch.device("meta"):
        base = MSNet((1, 1, 1, 1))
        abl = MSNet((1, 1, 1, 1), msconv_kw={"mo": False, "so": False})
    assert list(base.state_dict()) == list(abl.state_dict())
    assert not abl.stage_2[0].conv2_msconv.mo and not abl.stage_2[0].conv2_msconv.so


def test_models_info_cli_prints_the_model_card() -> None:
    from fuseface.cli.main import build_app

    runner = CliRunner()
    result = runner.invoke(build_app(), ["models", "info", "msnet50"], terminal_width=140)
    assert result.exit_code == 0, result.output
    assert "31.56 M" in result.output and "1.39 G" in result.output
    assert "2048 x 4 x 4" in result.output and "256 x 28 x 28" in result.output
    result = runner.invoke(build_app(), ["models", "info", "ir18", "--conv", "msconv", "--stages", "3,4"])
    assert result.exit_code == 0, result.output
    assert "ir18 + msconv" in result.output and "512 x 7 x 7" in result.output
    result = runner.invoke(build_app(), ["models", "info", "nosuchnet"])
    assert result.exit_code != 0
