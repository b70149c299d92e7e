"""MTCNN: architecture, NMS, weights handling, and detection on real photos (with the weights)."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import require_or_skip
from fuseface.align.mtcnn import MTCNN, ONet, PNet, RNet
from fuseface.align.nms import batched_nms, nms
from fuseface.align.weights import MTCNN_SHA256, fetch_mtcnn, load_mtcnn_state_dicts, weights_present
from fuseface.errors import CheckpointError


def _weights() -> None:
    require_or_skip(
        weights_present(), "MTCNN weights missing: run `fuseface models fetch mtcnn`", "FUSEFACE_REQUIRE_MTCNN"
    )


@pytest.fixture(scope="module")
def detector() -> MTCNN:
    _weights()
    return MTCNN()


def test_network_output_shapes() -> None:
    with torch.inference_mode():
        reg, prob = PNet()(torch.randn(2, 3, 12, 12))
        assert reg.shape == (2, 4, 1, 1) and prob.shape == (2, 2, 1, 1)
        reg, prob = PNet()(torch.randn(1, 3, 60, 80))  # fully convolutional, stride 2
        assert reg.shape == (1, 4, 25, 35)
        reg, prob = RNet()(torch.randn(3, 3, 24, 24))
        assert reg.shape == (3, 4) and prob.shape == (3, 2)
        reg, lmk, prob = ONet()(torch.randn(3, 3, 48, 48))
        assert reg.shape == (3, 4) and lmk.shape == (3, 10) and prob.shape == (3, 2)
        torch.testing.assert_close(prob.sum(1), torch.ones(3))


def test_keys_match_the_published_weights() -> None:
    _weights()
    states = load_mtcnn_state_dicts()
    for name, net in (("pnet", PNet()), ("rnet", RNet()), ("onet", ONet())):
        ours = {k: tuple(v.shape) for k, v in net.state_dict().items()}
        theirs = {k: tuple(v.shape) for k, v in states[name].items()}
        assert ours == theirs


def test_nms_union_and_min() -> None:
    boxes = np.array([[0, 0, 9, 9], [1, 1, 10, 10], [20, 20, 29, 29], [2, 2, 5, 5]], float)
    scores = np.array([0.9, 0.8, 0.7, 0.95])
    # IoU(0,1) = 81/119 = 0.68; box 3 lies inside box 0: IoU 16/100, min-overlap 1.0
    np.testing.assert_array_equal(nms(boxes, scores, 0.5, "union"), [3, 0, 2])
    np.testing.assert_array_equal(nms(boxes, scores, 0.7, "union"), [3, 0, 1, 2])
    np.testing.assert_array_equal(nms(boxes, scores, 0.7, "min"), [3, 2])
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.5).shape == (0,)
    np.testing.assert_array_equal(batched_nms(boxes[:2], scores[:2], np.array([0, 1]), 0.1), [0, 1])


def test_missing_weights_error_names_the_fetch_command(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="fuseface models fetch mtcnn"):
        MTCNN(weights_dir=tmp_path)


def test_fetch_rejects_a_wheel_with_wrong_files(tmp_path: Path) -> None:
    fake = tmp_path / "facenet_pytorch-2.6.0-py3-none-any.whl"
    with zipfile.ZipFile(fake, "w") as zf:
        for name in MTCNN_SHA256:
            buf = io.BytesIO()
            torch.save({"x": torch.zeros(1)}, buf)
            zf.writestr(f"facenet_pytorch/data/{name}.pt", buf.getvalue())
    with pytest.raises(CheckpointError, match="SHA-256"):
        fetch_mtcnn(weights_dir=tmp_path / "w", wheel=fake, quiet=True)
    assert not weights_present(tmp_path / "w")


def test_fetch_is_idempotent_from_a_wheel(tmp_path: Path) -> None:
    _weights()
    from fuseface.align.weights import mtcnn_dir

    wheel = tmp_path / "facenet_pytorch-2.6.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:  # rebuild a minimal wheel from the cached files
        for name in MTCNN_SHA256:
            zf.write(mtcnn_dir() / f"{name}.pt", f"facenet_pytorch/data/{name}.pt")
    out = fetch_mtcnn(weights_dir=tmp_path / "w", wheel=wheel, quiet=True)
    assert weights_present(out, verify=True)
    stamp = (out / "pnet.pt").stat().st_mtime_ns
    fetch_mtcnn(weights_dir=out, wheel=tmp_path / "absent.whl", quiet=True)  # already there: no-op
    assert (out / "pnet.pt").stat().st_mtime_ns == stamp


def _read(path: Path) -> np.ndarray:
    from fuseface.align.pipeline import read_photo

    return read_photo(path)


def test_group_photos_and_partial_face(detector: MTCNN, shared_data: Path) -> None:
    smoke = shared_data / "smoke"
    group = detector.detect(_read(smoke / "facenet_pytorch_test_images" / "multiface.jpg"))
    assert len(group) >= 5
    pair = detector.detect(_read(smoke / "face_recognition_examples/examples/knn_examples/test/obama_and_biden.jpg"))
    assert len(pair) >= 2
    two = detector.detect(_read(smoke / "face_recognition_examples/examples/two_people.jpg"))
    assert len(two) == 2
    partial = detector.detect(_read(smoke / "face_recognition_examples/tests/test_images/obama_partial_face.jpg"))
    assert len(partial) >= 1  # MTCNN still finds the visible half face
    for det in (group, pair, two):
        assert np.all(np.diff(det.scores) <= 0) and np.all(det.scores > 0.7)


def test_lfw_sample_one_central_face_with_landmarks_in_box(detector: MTCNN, shared_data: Path) -> None:
    from fuseface.align.detector import select_faces

    people = sorted((shared_data / "lfw" / "lfw-deepfunneled").iterdir())[::300][:20]
    for person in people:
        path = sorted(person.glob("*.jpg"))[0]
        image = _read(path)
        det = detector.detect(image)
        assert len(det) >= 1, path
        i = select_faces(det, image.shape, "central")[0]
        box, lmk = det.boxes[i], det.landmarks[i]
        centre = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
        assert abs(centre[0] - 125) < 30 and abs(centre[1] - 125) < 35, (path, box)
        assert np.all(lmk[:, 0] > box[0]) and np.all(lmk[:, 0] < box[2]), path
        assert np.all(lmk[:, 1] > box[1]) and np.all(lmk[:, 1] < box[3]), path
        # landmark order: left eye left of right eye, eyes above nose above mouth
        assert lmk[0, 0] < lmk[1, 0] and lmk[3, 0] < lmk[4, 0]
        assert lmk[:2, 1].max() < lmk[2, 1] < lmk[3:, 1].min()


def test_detection_rate_on_orl_and_yale(detector: MTCNN, shared_data: Path) -> None:
    orl = sorted((shared_data / "orl").glob("s*/*.pgm"))[::20]
    yale = sorted((shared_data / "yale").glob("subject*"))[::10]
    for files, minimum in ((orl, 0.9), (yale, 0.9)):
        found = sum(len(detector.detect(_read(f))) > 0 for f in files)
        assert found / len(files) >= minimum, (files[0].parent, found, len(files))


def test_huge_image_is_downscaled_for_detection(detector: MTCNN, shared_data: Path) -> None:
    import cv2

    image = _read(sorted((shared_data / "lfw" / "lfw-deepfunneled" / "Aaron_Sorkin").glob("*.jpg"))[0])
    small = detector.detect(image)
    capped = MTCNN(max_side=500)
    big = cv2.resize(image, (1000, 1000), interpolation=cv2.INTER_CUBIC)  # 4x: longer side > max_side
    large = capped.detect(big)
    assert len(large) >= 1
    # pixel-centre mapping: p_big = (p + 0.5) * 4 - 0.5
    np.testing.assert_allclose((large.landmarks[0] + 0.5) / 4 - 0.5, small.landmarks[0], atol=2.0)
