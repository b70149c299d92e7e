"""`fuseface eval ...` and `fuseface report` end to end (CliRunner on the real app)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fuseface.cli.main import build_app
from fuseface.errors import ConfigError, ProtocolFileError
from ijb_fixtures import write_ijb

runner = CliRunner()


def _run(*args: str):
    result = runner.invoke(build_app(), [str(a) for a in args])
    if result.exit_code != 0 and result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def ijb(tmp_path_factory):
    root = tmp_path_factory.mktemp("ijbcli")
    fx = write_ijb(root, "IJBC", n_subjects=10)
    np.save(root / "f.npy", fx.features)
    np.save(root / "ff.npy", fx.flip_features)
    return fx


def test_ijb_one_to_one_and_one_to_n_from_features(ijb, tmp_path: Path) -> None:
    from fuseface.eval.ijb import evaluate_1to1, evaluate_1toN

    out = tmp_path / "run11"
    res = _run(
        "eval",
        "ijb",
        "--root",
        ijb.root,
        "--target",
        "IJBC",
        "--features",
        ijb.root / "f.npy",
        "--flip-features",
        ijb.root / "ff.npy",
        "--out",
        out,
        "--plot",
    )
    assert "TAR@0.0001" in res.output
    doc = json.loads((out / "result.json").read_text())
    assert doc["protocol"] == "IJBC 1:1" and doc["fuseface_version"]
    assert doc["switches"] == {
        "flip_test": True,
        "keep_norm": True,
        "detector_score": True,
        "pooling": "insightface media mean, template sum, L2",
        "fusion": "insightface",
    }
    lib = evaluate_1to1(ijb.root, "IJBC", ijb.features, ijb.flip_features)
    assert doc["metrics"]["tar_at_far"] == {f"{k:g}": v for k, v in lib["tar_at_far"].items()}
    assert (out / "result_roc.png").stat().st_size > 1000

    out_n = tmp_path / "run1n"
    _run(
        "eval",
        "ijb",
        "--root",
        ijb.root,
        "--task",
        "1:N",
        "--features",
        ijb.root / "f.npy",
        "--no-detector-score",
        "--no-keep-norm",
        "--out",
        out_n,
        "--plot",
    )
    doc_n = json.loads((out_n / "result.json").read_text())
    lib_n = evaluate_1toN(ijb.root, "IJBC", ijb.features, None, detector_score=False, keep_norm=False)
    assert doc_n["metrics"]["cmc"] == {str(k): v for k, v in lib_n["cmc"].items()}
    assert doc_n["switches"]["keep_norm"] is False and doc_n["switches"]["flip_test"] is False
    assert (out_n / "result_cmc.png").is_file()

    table = _run("report", out, out_n).output
    assert "| run |" in table and "run11" in table and "TAR@1e-06" in table and "rank-1" in table


def test_ijb_fusion_average_uses_set_fusion(ijb, tmp_path: Path) -> None:
    out = tmp_path / "avg.json"
    _run("eval", "ijb", "--root", ijb.root, "--features", ijb.root / "f.npy", "--fusion", "average", "--out", out)
    doc = json.loads(out.read_text())
    assert doc["switches"]["fusion"] == "average" and doc["switches"]["pooling"] == "precomputed template features"
    assert 0.0 <= doc["metrics"]["auc"] <= 1.0


def test_bin_with_model_file_and_with_features(tmp_path: Path) -> None:
    import torch

    from fuseface import create_backbone
    from fuseface.data.binfile import save_bin
    from fuseface.infer.model_file import ModelMeta, save_model

    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 255, (40, 112, 112, 3), dtype=np.uint8)
    issame = np.arange(20) % 2 == 0
    imgs[1::2][issame] = imgs[0::2][issame]  # same pairs: identical images
    save_bin(tmp_path / "t.bin", imgs, issame)
    torch.manual_seed(0)
    net = create_backbone("ir18", input_size=16, num_features=32)
    meta = ModelMeta("ir18", {"input_size": 16, "num_features": 32}, input_size=16)
    save_model(tmp_path / "m.safetensors", net.eval(), meta)
    out = tmp_path / "bin.json"
    _run(
        "eval",
        "bin",
        tmp_path / "t.bin",
        "--model",
        tmp_path / "m.safetensors",
        "--batch-size",
        "16",
        "--nfolds",
        "5",
        "--out",
        out,
    )
    doc = json.loads(out.read_text())
    assert doc["switches"]["flip"] is True
    assert doc["metrics"]["accuracy_mean"] == 1.0  # identical images: distance 0 < every threshold > 0
    feats = rng.normal(size=(40, 8)).astype(np.float32)
    np.save(tmp_path / "f.npy", feats)
    _run("eval", "bin", tmp_path / "t.bin", "--features", tmp_path / "f.npy", "--nfolds", "5", "--out", out)
    from fuseface.eval.verification import evaluate

    assert (
        json.loads(out.read_text())["metrics"]["accuracy"]
        == evaluate(feats[0::2], feats[1::2], issame, nfolds=5)["accuracy"].tolist()
    )


def test_cli_errors_are_clear(ijb, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="exactly one of --model or --features"):
        _run("eval", "ijb", "--root", ijb.root)
    with pytest.raises(ProtocolFileError, match="protocol file not found"):
        _run("eval", "ijb", "--root", tmp_path, "--features", ijb.root / "f.npy")
    np.save(tmp_path / "short.npy", np.zeros((3, 4), np.float32))
    with pytest.raises(ValueError, match="one row per image"):
        _run("eval", "ijb", "--root", ijb.root, "--features", tmp_path / "short.npy")


def test_ijb_fusion_caface_chunked_records_its_switches(tmp_path: Path) -> None:
    # `fuseface eval ijb --fusion caface --chunk-size N` (issue 6): every image of a template,
    # chunked with the memory; the template equals CAFace.fuse on that template's rows.
    import torch

    from fuseface.eval.templates import fuse_templates
    from fuseface.infer.fusion_file import save_fusion
    from fuseface.nn.fusion.caface import CAFace

    ijb = write_ijb(tmp_path / "ijb512", "IJBC", n_subjects=6, dim=512)
    np.save(ijb.root / "f.npy", ijb.features)
    torch.manual_seed(0)
    module = CAFace().eval()
    weights = save_fusion(tmp_path / "caface.safetensors", module, "caface")
    rng = np.random.default_rng(1)
    styles = rng.normal(size=(len(ijb.features), 384, 2)).astype(np.float32)
    styles[..., 1] = np.abs(styles[..., 1])
    np.save(tmp_path / "styles.npy", styles)
    aucs = {}
    for chunk in ("4", None):
        out = tmp_path / f"caface_{chunk}.json"
        args = ["eval", "ijb", "--root", ijb.root, "--features", ijb.root / "f.npy", "--fusion", "caface"]
        args += ["--fusion-model", weights, "--styles", tmp_path / "styles.npy", "--out", out]
        _run(*args, *(["--chunk-size", chunk] if chunk else []))
        doc = json.loads(out.read_text())
        assert doc["switches"]["fusion"] == "caface"
        assert doc["switches"]["chunk_size"] == (int(chunk) if chunk else "all")
        aucs[chunk] = doc["metrics"]["auc"]
        assert 0.0 <= aucs[chunk] <= 1.0
    templates = np.asarray(ijb.templates)
    fused = fuse_templates(ijb.features, templates, "caface", styles=styles, chunk_size=4, model=module)
    first = np.unique(templates)[0]
    rows = np.flatnonzero(templates == first)
    expected = module.fuse(ijb.features[rows], styles[rows], chunk_size=4)
    assert fused.ids[0] == first
    np.testing.assert_allclose(fused.features[0], expected, atol=1e-5)
