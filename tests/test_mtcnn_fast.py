"""The fast MTCNN engine against the straightforward reference cascade on real photos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import require_module, require_or_skip
from fuseface.align.mtcnn import MTCNN
from fuseface.align.mtcnn_fast import area_resize, integral_image, resize_whole
from fuseface.align.pipeline import read_photo
from fuseface.align.weights import weights_present


@pytest.fixture(scope="module")
def engines() -> tuple[MTCNN, MTCNN, MTCNN]:
    require_or_skip(
        weights_present(), "MTCNN weights missing: run `fuseface models fetch mtcnn`", "FUSEFACE_REQUIRE_MTCNN"
    )
    reference = MTCNN(engine="reference")
    fast = MTCNN()
    fast_torch = MTCNN()
    from fuseface.align.mtcnn_fast import FastCascade

    fast_torch._fast = FastCascade(fast_torch, use_onnxruntime=False)
    return reference, fast, fast_torch


def test_area_resize_equals_torch_area_interpolation() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    table = integral_image(image)
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    boxes = [(0, 0, 53, 37, 24, 24), (5, 3, 11, 7, 24, 24), (10, 2, 40, 30, 48, 48), (0, 0, 53, 37, 17, 29)]
    for x0, y0, pw, ph, oh, ow in boxes:
        ours = area_resize(table, np.array([x0]), np.array([y0]), np.array([pw]), np.array([ph]), oh, ow)
        ref = F.interpolate(x[:, :, y0 : y0 + ph, x0 : x0 + pw], size=(oh, ow), mode="area").numpy()
        np.testing.assert_allclose(ours, ref, atol=1e-4)
    for oh, ow in ((24, 24), (20, 31), (37, 53), (60, 80)):
        ref = F.interpolate(x, size=(oh, ow), mode="area").numpy()
        np.testing.assert_allclose(resize_whole(table, oh, ow), ref, atol=1e-4)
    # several crops in one call equal the crops one by one
    x0, y0, pw, ph = np.array([0, 5, 10]), np.array([0, 3, 2]), np.array([53, 11, 30]), np.array([37, 7, 28])
    batch = area_resize(table, x0, y0, pw, ph, 24, 24)
    for k in range(3):
        one = area_resize(table, x0[k : k + 1], y0[k : k + 1], pw[k : k + 1], ph[k : k + 1], 24, 24)
        np.testing.assert_array_equal(batch[k : k + 1], one)


def _photos(shared: Path) -> list[Path]:
    smoke = shared / "smoke"
    lfw = sorted((shared / "lfw" / "lfw-deepfunneled").glob("*/*.jpg"))[::1500][:6]
    return [
        smoke / "facenet_pytorch_test_images" / "multiface.jpg",
        smoke / "face_recognition_examples" / "examples" / "two_people.jpg",
        smoke / "face_recognition_examples" / "tests" / "test_images" / "obama_partial_face.jpg",
        *lfw,
    ]


def _assert_same(ref, got, name: str) -> None:  # type: ignore[no-untyped-def]
    assert len(got) == len(ref), name
    if len(ref):
        np.testing.assert_allclose(got.boxes, ref.boxes, atol=1.0, err_msg=name)
        np.testing.assert_allclose(got.landmarks, ref.landmarks, atol=1.0, err_msg=name)
        np.testing.assert_allclose(got.scores, ref.scores, atol=1e-3, err_msg=name)


def test_fast_engine_finds_the_reference_detections(engines, shared_data: Path) -> None:  # type: ignore[no-untyped-def]
    reference, fast, fast_torch = engines
    photos = [read_photo(p) for p in _photos(shared_data)]
    refs = [reference.detect(im) for im in photos]
    assert sum(len(r) for r in refs) >= 12  # a group photo, two people, a half face, LFW portraits
    batched = fast.detect_batch(photos)  # R-/O-Net across all photos at once
    for k, (im, ref) in enumerate(zip(photos, refs, strict=True)):
        _assert_same(ref, fast.detect(im), f"photo {k}")
        _assert_same(ref, batched[k], f"photo {k} in a batch")
        _assert_same(ref, fast_torch.detect(im), f"photo {k}, torch nets")


def test_fast_engine_with_grey_and_downscaled_images(engines, shared_data: Path) -> None:  # type: ignore[no-untyped-def]
    import cv2

    reference, fast, _ = engines
    image = read_photo(sorted((shared_data / "lfw" / "lfw-deepfunneled" / "Aaron_Sorkin").glob("*.jpg"))[0])
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    _assert_same(reference.detect(grey), fast.detect(grey), "grey")
    reference.max_side = fast.max_side = 200
    try:
        _assert_same(reference.detect(image), fast.detect(image), "downscaled")
    finally:
        reference.max_side = fast.max_side = 1600
    assert len(fast.detect(np.zeros((8, 8, 3), np.uint8))) == 0  # smaller than one P-Net cell
    assert fast.detect_batch([]) == []


def test_exported_nets_are_cached_and_a_damaged_file_is_replaced(engines, shared_data: Path, tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    from fuseface.align.weights import mtcnn_dir

    require_module("onnxruntime", "FUSEFACE_REQUIRE_ONNX")
    weights = mtcnn_dir()
    monkeypatch.setenv("FUSEFACE_CACHE", str(tmp_path))
    image = read_photo(sorted((shared_data / "lfw" / "lfw-deepfunneled" / "Aaron_Sorkin").glob("*.jpg"))[0])
    first = MTCNN(weights_dir=weights).detect(image)
    cached = sorted((tmp_path / "onnx" / "mtcnn").glob("*.onnx"))
    assert [p.name.split("-")[0] for p in cached] == ["onet", "pnet", "rnet"]
    onet = cached[0]
    onet.write_bytes(b"not an onnx model")
    again = MTCNN(weights_dir=weights).detect(image)  # reads pnet/rnet back, exports onet again
    assert onet.stat().st_size > 1000
    np.testing.assert_array_equal(again.boxes, first.boxes)
    np.testing.assert_array_equal(again.landmarks, first.landmarks)
    _assert_same(engines[0].detect(image), again, "from the cache")
