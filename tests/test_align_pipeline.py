"""Photos -> aligned crops: landmark files, failures, resume == uninterrupted, policies, build-bin."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import require_or_skip
from fuseface.align.pipeline import align_folder, build_lfw_bin, read_photo
from fuseface.align.similarity import align_face, transform_points
from fuseface.errors import ConfigError, DataError


def _make_photos(root: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """Synthetic faces moved onto bigger canvases by known similarities, a landmark file, a broken file."""
    from fuseface.data import synthetic

    faces = synthetic.SyntheticFaces(seed=1)
    rng = np.random.default_rng(0)
    lines, expected = [], {}
    for k in range(5):
        image, lmk = faces.render(k, 0, preset="none")
        a, s = np.deg2rad(rng.uniform(-20, 20)), rng.uniform(1.3, 1.8)
        move = np.array([[s * np.cos(a), -s * np.sin(a), 40], [s * np.sin(a), s * np.cos(a), 30]])
        canvas = cv2.warpAffine(image, move, (260, 240), borderValue=(90, 90, 90))
        rel = f"person{k % 2}/img{k}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / rel), canvas[:, :, ::-1])
        moved = transform_points(move, lmk)
        lines.append(rel + " " + " ".join(f"{v:.4f}" for v in moved.reshape(-1)) + " 0.99")
        expected[rel] = align_face(canvas, moved)
    (root / "person1" / "broken.jpg").write_bytes(b"not an image at all")
    lmk_file = root.parent / "landmarks.txt"
    lmk_file.write_text("\n".join(lines) + "\n")
    return lmk_file, expected


def test_align_folder_with_landmark_file_resumes_like_an_uninterrupted_run(tmp_path: Path) -> None:
    src = tmp_path / "photos"
    lmk_file, expected = _make_photos(src)
    full = align_folder(src, tmp_path / "full", landmarks=lmk_file, ext=".png", progress=False)
    assert (full.processed, full.faces, full.failed) == (6, 5, 1)
    failures = (tmp_path / "full" / "failures.txt").read_text()
    assert "broken.jpg" in failures and "cannot decode" in failures
    for rel, crop in expected.items():  # crops are the aligned images (lossless PNG; the landmark
        got = cv2.imread(str(tmp_path / "full" / rel))[:, :, ::-1]  # file has 4 decimals: +-1 level)
        assert np.abs(got.astype(int) - crop.astype(int)).max() <= 1

    part = tmp_path / "resumed"
    first = align_folder(src, part, landmarks=lmk_file, ext=".png", progress=False, limit=2)
    assert first.processed == 2
    second = align_folder(src, part, landmarks=lmk_file, ext=".png", progress=False)
    assert (second.skipped, second.processed) == (2, 4)
    for name in ("faces.csv", "failures.txt"):
        assert (part / name).read_text() == (tmp_path / "full" / name).read_text()
    files_full = sorted(p.relative_to(tmp_path / "full") for p in (tmp_path / "full").rglob("*.png"))
    files_part = sorted(p.relative_to(part) for p in part.rglob("*.png"))
    assert files_full == files_part
    for rel in files_full:
        assert (part / rel).read_bytes() == (tmp_path / "full" / rel).read_bytes()
    third = align_folder(src, part, landmarks=lmk_file, ext=".png", progress=False)
    assert (third.processed, third.skipped) == (0, 6)


def test_list_file_with_absolute_paths_writes_only_under_dst(tmp_path: Path) -> None:
    src = tmp_path / "deep" / "photos"
    lmk_file, expected = _make_photos(src)
    before = {p: p.read_bytes() for p in src.rglob("*") if p.is_file()}
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(str(src / rel) for rel in expected) + "\n")
    dst = tmp_path / "out"
    report = align_folder(listing, dst, landmarks=lmk_file, ext=".png", progress=False)
    assert report.faces == len(expected)
    assert {p: p.read_bytes() for p in src.rglob("*") if p.is_file()} == before  # inputs untouched
    assert sorted(str(p.relative_to(dst)) for p in dst.rglob("*.png")) == sorted(expected)
    inside = align_folder(src, src / "aligned", landmarks=lmk_file, ext=".png", progress=False)
    again = align_folder(src, src / "aligned", landmarks=lmk_file, ext=".png", progress=False)
    assert inside.processed == 6 and again.processed == 0  # DST inside SRC: crops are not re-read


def test_read_photo_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"missing\.jpg"):
        read_photo(tmp_path / "missing.jpg")
    img = np.zeros((300, 400, 3), np.uint8)
    cv2.imwrite(str(tmp_path / "big.png"), img)
    with pytest.raises(DataError, match="too large"):
        read_photo(tmp_path / "big.png", max_pixels=100_000)
    assert read_photo(tmp_path / "big.png").shape == (300, 400, 3)


def test_policies_on_real_photos(tmp_path: Path, shared_data: Path) -> None:
    from fuseface.align.weights import weights_present

    require_or_skip(
        weights_present(), "MTCNN weights missing: run `fuseface models fetch mtcnn`", "FUSEFACE_REQUIRE_MTCNN"
    )
    from fuseface.align.mtcnn import MTCNN

    src = tmp_path / "src"
    src.mkdir()
    ex = shared_data / "smoke" / "face_recognition_examples" / "examples"
    shutil.copy(ex / "two_people.jpg", src / "two.jpg")
    shutil.copy(ex / "obama_small.jpg", src / "one.jpg")
    cv2.imwrite(str(src / "blank.png"), np.full((200, 200, 3), 128, np.uint8))
    det = MTCNN()
    every = align_folder(src, tmp_path / "all", detector=det, policy="all", progress=False)
    assert (every.faces, every.failed) == (3, 1)
    assert {p.name for p in (tmp_path / "all").glob("*.jpg")} == {"two_0.jpg", "two_1.jpg", "one.jpg"}
    assert "blank.png\tno face detected" in (tmp_path / "all" / "failures.txt").read_text()
    largest = align_folder(src, tmp_path / "largest", detector=det, policy="largest", progress=False)
    assert largest.faces == 2
    rec = [json.loads(x) for x in (tmp_path / "largest" / "faces.jsonl").read_text().splitlines()]
    two = next(r for r in rec if r["source"] == "two.jpg")
    all_two = next(
        json.loads(x)
        for x in (tmp_path / "all" / "faces.jsonl").read_text().splitlines()
        if json.loads(x)["source"] == "two.jpg"
    )
    areas = [(f["box"][2] - f["box"][0]) * (f["box"][3] - f["box"][1]) for f in all_two["faces"]]
    assert two["faces"][0]["box"] == all_two["faces"][int(np.argmax(areas))]["box"]
    crop = cv2.imread(str(tmp_path / "largest" / "two.jpg"))
    assert crop.shape == (112, 112, 3)


def test_build_lfw_bin_from_aligned_crops(tmp_path: Path) -> None:
    from fuseface.data import binfile

    aligned = tmp_path / "aligned"
    rng = np.random.default_rng(0)
    crops = {}
    for name, idx in (("Ann", 1), ("Ann", 2), ("Bob", 1)):
        rel = f"{name}/{name}_{idx:04d}"
        small = rng.integers(0, 255, (7, 7, 3), dtype=np.uint8)  # smooth images: JPEG keeps them close
        crops[rel] = cv2.resize(small, (112, 112), interpolation=cv2.INTER_CUBIC)
        (aligned / name).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(aligned / (rel + ".png")), crops[rel][:, :, ::-1])
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("1 1\nAnn\t1\t2\nAnn\t1\tBob\t1\n")
    info = build_lfw_bin(aligned, pairs, tmp_path / "lfw.bin", ext=".png")
    assert info == {"pairs": 2, "fallback": 0, "path": str(tmp_path / "lfw.bin")}
    images, issame = binfile.load_bin(tmp_path / "lfw.bin")
    assert images.shape == (4, 112, 112, 3) and issame.tolist() == [True, False]
    ref = np.stack([crops["Ann/Ann_0001"], crops["Ann/Ann_0002"], crops["Ann/Ann_0001"], crops["Bob/Bob_0001"]])
    assert np.abs(images.astype(float) - ref).mean() < 3  # JPEG (quality 95) inside the .bin
    assert np.abs(images[0].astype(float) - ref[1]).mean() > 20  # and the order is the pair order
    (aligned / "Bob" / "Bob_0001.png").unlink()
    with pytest.raises(DataError, match="Bob_0001"):
        build_lfw_bin(aligned, pairs, tmp_path / "lfw2.bin", ext=".png")


def test_detection_workers_write_what_one_process_writes_and_resume(tmp_path: Path, shared_data: Path) -> None:
    """``align_folder(workers=2)`` (detection in worker processes, units of 8 photos) writes the
    same journal and crops as ``workers=0``; a run stopped part-way and resumed with workers gives
    the same journal too; an unreadable photo is a failure line either way; the CLI takes
    ``--workers``."""
    from functools import partial

    from conftest import run_cli
    from fuseface.align.mtcnn import MTCNN
    from fuseface.align.weights import weights_present

    require_or_skip(
        weights_present(), "MTCNN weights missing: run `fuseface models fetch mtcnn`", "FUSEFACE_REQUIRE_MTCNN"
    )
    src = tmp_path / "src"
    lfw = sorted((shared_data / "lfw" / "lfw-deepfunneled").glob("*/*.jpg"))[::700][:17]
    for f in lfw:
        (src / f.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(f, src / f.parent.name / f.name)
    shutil.copy(shared_data / "smoke" / "face_recognition_examples" / "examples" / "two_people.jpg", src / "two.jpg")
    (src / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    factory = partial(MTCNN, min_face_size=20.0)

    def journal(dst: Path) -> dict[str, dict]:
        return {r["source"]: r for r in map(json.loads, (dst / "faces.jsonl").read_text().splitlines())}

    serial = align_folder(src, tmp_path / "serial", detector=factory, policy="all", progress=False, workers=0)
    pooled = align_folder(src, tmp_path / "pooled", detector=factory, policy="all", progress=False, workers=2)
    assert (serial.processed, serial.faces, serial.failed) == (pooled.processed, pooled.faces, pooled.failed)
    assert serial.processed == 19 and serial.failed == 1 and serial.faces >= 19
    assert journal(tmp_path / "serial") == journal(tmp_path / "pooled")
    assert journal(tmp_path / "pooled")["broken.jpg"]["status"] == "failed"
    for crop in (tmp_path / "serial").rglob("*.jpg"):
        assert np.array_equal(
            cv2.imread(str(crop)), cv2.imread(str(tmp_path / "pooled" / crop.relative_to(tmp_path / "serial")))
        )
    part = tmp_path / "part"
    align_folder(src, part, detector=factory, policy="all", progress=False, workers=2, limit=5)
    assert len(journal(part)) == 5
    assert run_cli(["align", str(src), str(part), "--policy", "all", "--workers", "2", "-q"]) == 0
    assert journal(part) == journal(tmp_path / "serial")
    with pytest.raises(ConfigError, match="detector factory"):
        align_folder(src, tmp_path / "x", detector=MTCNN(), workers=1, progress=False)
