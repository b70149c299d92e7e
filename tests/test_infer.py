"""Inference API and CLI: embed photos/crops, bad input, compare, fuse, search, index."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import fuseface
from conftest import require_or_skip, run_cli
from fuseface.infer.index import ExactIndex, create_index, faiss_available
from fuseface.infer.model_file import ModelMeta, save_model


def _weights() -> None:
    from fuseface.align.weights import weights_present

    require_or_skip(
        weights_present(), "MTCNN weights missing: run `fuseface models fetch mtcnn`", "FUSEFACE_REQUIRE_MTCNN"
    )


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight ir18 (64-d) model file: verdicts are meaningless, the pipeline is what is tested."""
    torch.manual_seed(0)
    net = fuseface.create_backbone("ir18", num_features=64)
    return save_model(
        tmp_path_factory.mktemp("model") / "tiny.safetensors",
        net,
        ModelMeta(arch="ir18", arch_kwargs={"num_features": 64}),
    )


def _lfw(shared: Path, name: str, k: int = 0) -> Path:
    return sorted((shared / "lfw" / "lfw-deepfunneled" / name).glob("*.jpg"))[k]


def test_embed_crops_and_photos_with_bad_inputs(model_file: Path, shared_data: Path, tmp_path: Path) -> None:
    _weights()
    fm = fuseface.load(str(model_file))
    crops = np.random.default_rng(0).integers(0, 255, (3, 112, 112, 3), dtype=np.uint8)
    emb, norms = fm.embed(crops)
    ref, _ = fm.embed_aligned(crops)
    np.testing.assert_array_equal(emb, ref)
    np.testing.assert_allclose(norms, np.linalg.norm(ref, axis=1), rtol=1e-6)
    fast, _ = fuseface.load(str(model_file)).optimize().embed(crops)  # folded BN + channels-last
    assert np.abs(fast - ref).max() <= 1e-4 * np.abs(ref).max()

    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 garbage")
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((240, 240, 3), 127, np.uint8))
    from fuseface.align.mtcnn import MTCNN

    fm.detector = MTCNN(max_side=500)  # a small limit keeps the "huge image" case cheap
    big = tmp_path / "big.jpg"  # a face 4x enlarged: detection runs on a downscaled copy
    cv2.imwrite(str(big), cv2.resize(cv2.imread(str(_lfw(shared_data, "Aaron_Sorkin"))), (1000, 1000)))
    photo = _lfw(shared_data, "Aaron_Sorkin")
    res = fm.embed_photos([photo, broken, blank, big, tmp_path / "missing.jpg"])
    assert set(res.errors) == {1, 2, 4}
    assert "broken.jpg" in res.errors[1] and "no face" in res.errors[2] and "missing.jpg" in res.errors[4]
    assert res.ok.tolist() == [True, False, False, True, False]
    assert np.isfinite(res.embeddings[[0, 3]]).all() and np.isnan(res.embeddings[[1, 2, 4]]).all()
    cos = res.embeddings[0] @ res.embeddings[3] / (res.norms[0] * res.norms[3])
    assert cos > 0.9  # same photo at two scales -> nearly the same aligned crop
    with pytest.warns(UserWarning, match="no face"):
        emb2, _ = fm.embed([photo, blank])
    assert emb2[0] @ res.embeddings[0] / (np.linalg.norm(emb2[0]) * res.norms[0]) > 0.9999
    assert np.isnan(emb2[1]).all()


def test_compare_cli_end_to_end_on_deepface_pairs(model_file: Path, shared_data: Path, capsys) -> None:
    _weights()
    pairs = shared_data / "deepface_pairs"
    argv = ["compare", str(pairs / "img1.jpg"), str(pairs / "img2.jpg"), "-m", str(model_file), "--threshold", "0.5"]
    assert run_cli(argv) == 0
    out = capsys.readouterr().out
    assert "similarity" in out and "threshold 0.500" in out
    assert ("same person" in out) != ("different people" in out)
    assert run_cli(["compare", str(pairs / "img1.jpg"), str(pairs / "README.md"), "-m", str(model_file)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "README.md" in err and "Traceback" not in err


def test_search_and_fuse_cli(model_file: Path, shared_data: Path, tmp_path: Path, capsys) -> None:
    _weights()
    gallery = tmp_path / "gallery"
    for name in ("Aaron_Peirsol", "Abdullah_Gul"):
        (gallery / name).mkdir(parents=True)
        for k in range(2):
            shutil.copy(_lfw(shared_data, name, k), gallery / name)
    probe = gallery / "Abdullah_Gul" / _lfw(shared_data, "Abdullah_Gul", 1).name
    assert run_cli(["search", "--gallery", str(gallery), "--probe", str(probe), "-k", "3", "-m", str(model_file)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and "4 gallery faces" in lines[0]
    assert lines[1].split()[1] == "1.0000" and lines[1].split()[2] == "Abdullah_Gul"  # itself first
    images = [str(p) for p in sorted((gallery / "Aaron_Peirsol").iterdir())]
    assert run_cli(["fuse", *images, "-m", str(model_file), "--out", str(tmp_path / "t.npy")]) == 0
    template = np.load(tmp_path / "t.npy")
    assert template.shape == (64,) and abs(np.linalg.norm(template) - 1) < 1e-5


def test_exact_index_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    gallery, queries = rng.normal(size=(50, 16)), rng.normal(size=(4, 16))
    index = ExactIndex(16)
    index.add(gallery[:30], [f"g{i}" for i in range(30)])
    index.add(gallery[30:], [f"g{i}" for i in range(30, 50)])
    scores, ids = index.search(queries, k=5)
    g = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    sims = q @ g.T
    for row in range(4):
        best = np.argsort(-sims[row])[:5]
        assert ids[row] == [f"g{i}" for i in best]
        np.testing.assert_allclose(scores[row], sims[row, best], rtol=1e-5)
    assert index.search(queries, k=100)[0].shape == (4, 50)
    with pytest.raises(Exception, match="NaN"):
        index.add(np.full((1, 16), np.nan))


def test_faiss_index_agrees_with_numpy() -> None:
    require_or_skip(faiss_available(), "faiss is an optional extra (not installed)", "FUSEFACE_REQUIRE_FAISS")
    rng = np.random.default_rng(1)
    gallery, queries = rng.normal(size=(40, 8)), rng.normal(size=(3, 8))
    a, b = create_index(8, "numpy"), create_index(8, "faiss")
    a.add(gallery)
    b.add(gallery)
    assert a.search(queries, 4)[1] == b.search(queries, 4)[1]


def test_model_meta_that_contradicts_the_network_size_is_refused(tmp_path: Path) -> None:
    from fuseface.infer.embedder import FaceModel
    from fuseface.nn.backbones.iresnet import IResNet

    net = IResNet((1, 1, 1, 1), num_features=32, input_size=16)
    wrong = ModelMeta("ir18", {"input_size": 16})  # meta.input_size stays at its default, 112
    with pytest.raises(ValueError, match=r"built for 16x16 inputs but ModelMeta.input_size is 112"):
        save_model(tmp_path / "m.safetensors", net, wrong)
    with pytest.raises(ValueError, match=r"FaceModel\(ir18\): the model was built for 16x16"):
        FaceModel(net, wrong)
    assert FaceModel(net, ModelMeta("ir18", {"input_size": 16}, input_size=16)).input_size == 16


def test_model_meta_preprocessing_settings_round_trip(tmp_path):
    """Template, pixel mean/std and embedding size survive the model file; old files read with defaults."""
    import numpy as np
    import torch

    import fuseface
    from fuseface.align.similarity import register_template, template_points
    from fuseface.infer.embedder import FaceModel, to_input_tensor
    from fuseface.infer.model_file import ModelMeta, load_model, save_model

    register_template("unit_test_template", template_points("arcface", 64), 64)
    net = fuseface.create_backbone("ir18")
    meta = ModelMeta(
        arch="ir18",
        template="unit_test_template",
        pixel_mean=(10.0, 20.0, 30.0),
        pixel_std=(2.0, 4.0, 8.0),
        embedding_size=512,
    )
    _, back = load_model(save_model(tmp_path / "m.safetensors", net, meta))
    assert back.template == "unit_test_template"
    assert back.pixel_mean == (10.0, 20.0, 30.0) and back.pixel_std == (2.0, 4.0, 8.0)
    assert back.embedding_size == 512
    old = ModelMeta.from_strings({"fuseface_format": "1", "arch": "ir18"}, "old.safetensors")
    assert (old.template, old.pixel_mean, old.embedding_size) == ("arcface", (127.5, 127.5, 127.5), None)

    images = np.random.default_rng(0).integers(0, 256, (2, 112, 112, 3), dtype=np.uint8)
    x = FaceModel(net, back).to_input(images)
    expected = torch.from_numpy(images).permute(0, 3, 1, 2).float() - torch.tensor([10.0, 20.0, 30.0]).view(1, 3, 1, 1)
    expected = expected / torch.tensor([2.0, 4.0, 8.0]).view(1, 3, 1, 1)
    torch.testing.assert_close(x, expected)
    default = to_input_tensor(images, "rgb")
    torch.testing.assert_close(default, torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0)
