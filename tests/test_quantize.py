"""Static int8 through ONNX Runtime: a quantised graph that agrees with fp32 on real faces."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")


def _faces(shared: Path) -> np.ndarray:
    """Real LFW photos, centre-cropped to 112x112 (enough for calibration and agreement)."""
    files = sorted((shared / "lfw" / "lfw-deepfunneled").glob("*/*.jpg"))[::400][:24]
    return np.stack([cv2.imread(str(f))[69:181, 69:181, ::-1] for f in files])


def test_int8_model_is_quantised_and_agrees_with_fp32(
    shared_data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    import onnx

    import fuseface
    from fuseface.infer.embedder import FaceModel
    from fuseface.infer.model_file import ModelMeta

    torch.manual_seed(0)
    net = fuseface.create_backbone("ir_demo")
    faces = _faces(shared_data)
    fm = FaceModel(net, ModelMeta(arch="ir_demo"))
    net.train()  # settle the untrained batch-norm statistics on real faces
    with torch.no_grad():
        net(fm.to_input(faces))
    net.eval()
    with caplog.at_level(logging.WARNING):
        int8 = fm.to_int8(faces[:16], tmp_path / "m.int8.onnx")
    # ORT's per-tensor fallback note for the un-foldable batch norms is not shown to users
    assert not [r for r in caplog.records if "out-of-range for weight" in r.getMessage()]
    ops = {n.op_type for n in onnx.load(str(tmp_path / "m.int8.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    ref = fm.embed_aligned(faces[16:])[0]
    got = int8.embed_aligned(faces[16:])[0]  # faces not used for calibration
    assert got.shape == ref.shape and np.isfinite(got).all()
    cos = np.sum(ref * got, 1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1))
    assert cos.min() > 0.95, cos


def test_export_int8_needs_calibration(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fuseface.cli.main import main

    with pytest.raises(SystemExit) as exc:
        main(["export", str(tmp_path / "m.safetensors"), "--onnx", str(tmp_path / "o.onnx"), "--int8"])
    assert exc.value.code == 2
    captured = capsys.readouterr()
    assert "--calibration" in captured.out + captured.err
