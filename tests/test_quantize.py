"""Static int8 through ONNX Runtime: a quantised graph that agrees with fp32 on real faces."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from conftest import run_cli

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

    from fuseface.infer.embedder import FaceModel

    faces = _faces(shared_data)
    fm = FaceModel(*_settled_demo_model(faces))
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


def _settled_demo_model(faces: np.ndarray) -> tuple[torch.nn.Module, object]:
    import fuseface
    from fuseface.infer.embedder import FaceModel
    from fuseface.infer.model_file import ModelMeta

    torch.manual_seed(0)
    net = fuseface.create_backbone("ir_demo")
    meta = ModelMeta(arch="ir_demo")
    net.train()  # settle the untrained batch-norm statistics on real faces
    with torch.no_grad():
        net(FaceModel(net, meta).to_input(faces))
    return net.eval(), meta


def test_precision_int8_from_a_file_with_a_calibration_folder_equals_to_int8(shared_data: Path, tmp_path: Path) -> None:
    """``FaceModel.from_file(..., precision="int8", calibration=FOLDER)`` (and so ``fuseface.load``)
    is the same int8 network as ``to_int8`` on the same crops given as an array."""
    import fuseface
    from fuseface.infer.embedder import FaceModel
    from fuseface.infer.model_file import save_model

    faces = _faces(shared_data)
    net, meta = _settled_demo_model(faces)
    save_model(tmp_path / "m.safetensors", net, meta)
    folder = tmp_path / "calib"
    folder.mkdir()
    for k, face in enumerate(faces[:16]):
        cv2.imwrite(str(folder / f"{k:02d}.png"), np.ascontiguousarray(face[:, :, ::-1]))
    loaded = fuseface.load(str(tmp_path / "m.safetensors"), precision="int8", calibration=folder)
    assert loaded.precision == "int8" and type(loaded.net).__name__ == "OnnxBackbone"
    via_copy = FaceModel(net, meta).to_int8(faces[:16])
    a, b = loaded.embed_aligned(faces[16:])[0], via_copy.embed_aligned(faces[16:])[0]
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


def test_cli_embed_int8_equals_the_int8_model_and_never_resumes_an_fp32_journal(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``fuseface embed --precision int8 --calibration DIR`` writes the int8 model's embeddings; its
    model fingerprint (journals, galleries) differs from the fp32 one; without --calibration it is
    a one-line error."""
    import fuseface
    from fuseface.infer.model_file import model_fingerprint, save_model

    faces = _faces(shared_data)
    net, meta = _settled_demo_model(faces)
    model = tmp_path / "m.safetensors"
    save_model(model, net, meta)
    calib, crops = tmp_path / "calib", tmp_path / "crops"
    for folder, part in ((calib, faces[:16]), (crops, faces[16:])):
        folder.mkdir()
        for k, face in enumerate(part):
            cv2.imwrite(str(folder / f"{k:02d}.png"), np.ascontiguousarray(face[:, :, ::-1]))
    out = tmp_path / "e.npz"
    argv = ["embed", str(crops), "-m", str(model), "-o", str(out), "--workers", "0", "--no-progress"]
    assert run_cli([*argv, "--precision", "int8"]) == 2
    assert "--calibration" in capsys.readouterr().err
    assert run_cli([*argv, "--precision", "int8", "--calibration", str(calib)]) == 0
    int8 = fuseface.load(str(model), precision="int8", calibration=calib)
    with np.load(out) as z:
        np.testing.assert_allclose(z["embeddings"], int8.embed_aligned(faces[16:])[0], rtol=0, atol=1e-5)
    fp32 = fuseface.load(str(model))
    assert model_fingerprint(int8.net, int8.meta) != model_fingerprint(fp32.net, fp32.meta)


def test_precision_is_checked() -> None:
    import fuseface
    from fuseface.errors import ConfigError
    from fuseface.infer.embedder import FaceModel
    from fuseface.infer.model_file import ModelMeta

    net, meta = fuseface.create_backbone("ir_demo"), ModelMeta(arch="ir_demo")
    with pytest.raises(ConfigError, match="precision='fp16'"):
        FaceModel(net, meta, precision="fp16")
    with pytest.raises(ConfigError, match="needs calibration"):
        FaceModel(net, meta, precision="int8")
    with pytest.raises(ConfigError, match=r"calibration: expected uint8 crops of shape \(N, 112, 112, 3\)"):
        FaceModel(net, meta, precision="int8", calibration=np.zeros((4, 64, 64, 3), np.uint8))


def test_export_int8_needs_calibration(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fuseface.cli.main import main

    with pytest.raises(SystemExit) as exc:
        main(["export", str(tmp_path / "m.safetensors"), "--onnx", str(tmp_path / "o.onnx"), "--int8"])
    assert exc.value.code == 2
    captured = capsys.readouterr()
    assert "--calibration" in captured.out + captured.err
