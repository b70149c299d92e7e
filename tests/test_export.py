"""ONNX export with a dynamic batch axis, checked against onnxruntime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import fuseface
from conftest import require_module
from fuseface.infer.export import check_onnx, export_model_file, export_onnx, run_onnx
from fuseface.infer.model_file import ModelMeta, save_model

# onnx, onnxruntime and onnxscript are the `onnx` extra; CI (FUSEFACE_REQUIRE_ONNX=1) fails without them
pytestmark = pytest.mark.usefixtures("onnx_extra")


@pytest.fixture(scope="module")
def onnx_extra() -> None:
    for name in ("onnx", "onnxruntime", "onnxscript"):
        require_module(name, "FUSEFACE_REQUIRE_ONNX")


def _tiny() -> torch.nn.Module:
    """ir18 at 32x32 with BN statistics from one calibration batch (so outputs are O(1))."""
    torch.manual_seed(0)
    net = fuseface.create_backbone("ir18", input_size=32, num_features=64).train()
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = None  # running statistics = this batch's
    with torch.no_grad():
        net(torch.rand(16, 3, 32, 32) * 2 - 1)
    return net.eval()


def _model(tmp_path: Path) -> Path:
    net = _tiny()
    return save_model(
        tmp_path / "tiny.safetensors",
        net,
        ModelMeta(arch="ir18", arch_kwargs={"input_size": 32, "num_features": 64}, input_size=32),
    )


def test_onnx_parity_and_dynamic_batch(tmp_path: Path) -> None:
    net = _tiny()
    path = export_onnx(net, tmp_path / "m.onnx", input_size=32)
    with torch.no_grad():
        assert float(net(torch.rand(3, 3, 32, 32) * 2 - 1).abs().max()) > 0.5  # O(1) outputs
    diff = check_onnx(net, path, input_size=32, batch=3)  # exported with batch 2, run with 3
    assert diff <= 1e-4
    for batch in (1, 5):
        out = run_onnx(path, np.zeros((batch, 3, 32, 32), np.float32))
        assert out.shape == (batch, 64)


def test_export_model_file_and_cli(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fuseface.cli.main import build_app

    model = _model(tmp_path)
    result = CliRunner().invoke(build_app(), ["export", str(model), "--onnx", str(tmp_path / "b.onnx"), "--fold-bn"])
    assert result.exit_code == 0, result.output
    diff = float(result.output.rsplit("max abs diff", 1)[1].split()[0])
    assert diff < 1e-4
    import onnx

    props = {p.key: p.value for p in onnx.load(str(tmp_path / "b.onnx")).metadata_props}
    assert props["channel_order"] == "rgb" and props["fuseface_arch"] == "ir18" and props["input_size"] == "32"
    with pytest.raises(Exception, match="not found"):
        export_model_file(tmp_path / "absent.safetensors", tmp_path / "c.onnx")


def test_export_exits_non_zero_when_onnxruntime_disagrees(tmp_path: Path, monkeypatch, capsys) -> None:
    from fuseface.cli.main import main
    from fuseface.errors import ExportError
    from fuseface.infer import export as export_mod

    model = _model(tmp_path)
    real = export_mod.run_onnx

    def off_by_a_little(path, x):  # what a wrong graph looks like: a small, systematic error
        out = real(path, x)
        return out + 1e-3 * np.abs(out).max()

    monkeypatch.setattr(export_mod, "run_onnx", off_by_a_little)
    with pytest.raises(ExportError, match="onnxruntime disagrees"):
        export_model_file(model, tmp_path / "bad.onnx")
    with pytest.raises(SystemExit) as info:
        main(["export", str(model), "--onnx", str(tmp_path / "bad2.onnx")])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "tolerance" in err and len(err.splitlines()) == 1


def test_caface_fixed_size_export_with_mask(tmp_path: Path) -> None:
    from fuseface.infer.export import MaskedCAFace, export_fusion_file
    from fuseface.infer.fusion_file import save_fusion
    from fuseface.nn.fusion import caface as caface_mod

    torch.manual_seed(0)
    caface = caface_mod.CAFace(cfc_init_zero=False).eval()
    n, size = 5, 8
    feats, styles = torch.randn(n, 512) * 20, torch.randn(n, 384, 2)
    ref = caface.fuse(feats.numpy(), styles.numpy())
    f, s, m = torch.randn(1, size, 512), torch.randn(1, size, 384, 2), torch.zeros(1, size)  # padding: noise
    f[0, :n], s[0, :n], m[0, :n] = feats, styles, 1.0
    with torch.no_grad():
        out = MaskedCAFace(caface)(f, s, m)[0].numpy()
    np.testing.assert_allclose(out, ref, atol=1e-5)  # the mask makes padded rows irrelevant
    weights = save_fusion(tmp_path / "caface.safetensors", caface, "caface")
    info = export_fusion_file(weights, tmp_path / "caface.onnx", max_images=size)
    assert info["max_abs_diff"] < 1e-5
