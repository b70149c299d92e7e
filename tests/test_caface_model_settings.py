"""CAFace embeddings and styles are computed with the model's own input settings (channel order,
input size, pixel mean / std), on every path that feeds CAFace: ``FaceModel.embed_with_styles``,
``fuseface fuse --method caface`` and the gallery's enrolment."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import fuseface
from conftest import run_cli
from fuseface.infer.fusion_file import load_fusion, save_fusion
from fuseface.infer.model_file import ModelMeta, save_model
from fuseface.nn.fusion import fuse_features
from fuseface.nn.fusion.caface import CAFace, stage_styles
from fuseface.ops import to_input_tensor

SIZE = 32
#: dlib's normalisation: (pixel - mean) / 256, far from insightface's (x/255 - 0.5)/0.5
DLIB_MEAN, DLIB_STD = (122.782, 117.001, 104.298), (256.0, 256.0, 256.0)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("caface_settings")
    torch.manual_seed(0)
    net = fuseface.create_backbone("ir18", input_size=SIZE)  # 512-d, stage 2+3 = 384 style channels
    meta = ModelMeta(
        arch="ir18",
        arch_kwargs={"input_size": SIZE},
        channel_order="bgr",
        input_size=SIZE,
        pixel_mean=DLIB_MEAN,
        pixel_std=DLIB_STD,
        extra={"threshold": 0.5},
    )
    model = save_model(root / "model.safetensors", net.eval(), meta)
    torch.manual_seed(1)
    weights = save_fusion(root / "caface.safetensors", CAFace(cfc_init_zero=False).eval(), "caface")
    crops = np.random.default_rng(2).integers(0, 256, (4, SIZE, SIZE, 3), dtype=np.uint8)
    for i, crop in enumerate(crops):
        cv2.imwrite(str(root / f"crop{i}.png"), crop[:, :, ::-1])  # files are BGR on disk
    return {"model": model, "weights": weights, "root": root}


def _crops(files: dict[str, Path]) -> np.ndarray:
    return np.stack([cv2.imread(str(files["root"] / f"crop{i}.png"))[:, :, ::-1] for i in range(4)])


def _reference(files: dict[str, Path], crops: np.ndarray, norm: dict) -> tuple[np.ndarray, np.ndarray]:
    """Features and styles from a forward pass on an input built by hand with ``norm``."""
    net = fuseface.load(str(files["model"])).net
    x = to_input_tensor(crops, "bgr", **norm)
    with torch.inference_mode():
        emb, maps = net(x, return_stages=True)
    return emb.numpy(), stage_styles(maps).numpy()


def test_face_model_styles_use_the_model_settings(files: dict[str, Path]) -> None:
    fm = fuseface.load(str(files["model"]))
    crops = _crops(files)
    feats, styles = fm.embed_with_styles(crops)
    own, _ = fm.embed_aligned(crops)
    np.testing.assert_allclose(feats, own, rtol=1e-5, atol=1e-5)  # the same embeddings as embed_aligned
    ref_f, ref_s = _reference(files, crops, {"pixel_mean": DLIB_MEAN, "pixel_std": DLIB_STD})
    np.testing.assert_allclose(feats, ref_f, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(styles, ref_s, rtol=1e-4, atol=1e-5)
    wrong_f, wrong_s = _reference(files, crops, {})  # insightface normalisation: visibly different
    assert not np.allclose(feats, wrong_f, atol=1e-2) and not np.allclose(styles, wrong_s, atol=1e-2)


def test_fuse_cli_caface_uses_the_model_settings(files: dict[str, Path], tmp_path: Path) -> None:
    crops = _crops(files)
    paths = [str(files["root"] / f"crop{i}.png") for i in range(4)]
    out = tmp_path / "t.npy"
    argv = ["fuse", *paths, "-m", str(files["model"]), "--method", "caface", "--fusion-weights", str(files["weights"])]
    assert run_cli([*argv, "--out", str(out)]) == 0
    template = np.load(out)
    caface = load_fusion(files["weights"])
    ref_f, ref_s = _reference(files, crops, {"pixel_mean": DLIB_MEAN, "pixel_std": DLIB_STD})
    expected = fuse_features(ref_f, "caface", styles=ref_s, model=caface)
    np.testing.assert_allclose(template, expected, rtol=1e-4, atol=1e-5)
    wrong_f, wrong_s = _reference(files, crops, {})
    assert float(template @ fuse_features(wrong_f, "caface", styles=wrong_s, model=caface)) < 0.999


def test_gallery_enrolment_styles_use_the_model_settings(files: dict[str, Path], tmp_path: Path) -> None:
    from fuseface.gallery import Gallery

    crops = _crops(files)
    with Gallery.create(tmp_path / "g", files["model"], fusion="caface", fusion_weights=files["weights"]) as g:
        feats, styles, _, errors = g.embed_photos(list(crops))
    assert errors == {}
    ref_f, ref_s = _reference(files, crops, {"pixel_mean": DLIB_MEAN, "pixel_std": DLIB_STD})
    np.testing.assert_allclose(feats, ref_f, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(styles, ref_s, rtol=1e-4, atol=1e-5)
