"""Pipelined embedding (``fuseface.infer.pipeline``, ``fuseface embed``): same output as the serial
path whatever the worker count, resume after an interruption == an uninterrupted run, bad photos
reported while the rest embeds. Real LFW photos and the fetched dlib ResNet."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import PROJECT_ROOT, require_or_skip, run_cli
from fuseface.errors import ConfigError
from fuseface.infer.pipeline import embed_files, journal_for, prepare_photos

PHOTOS = 22  # LFW photos; with the two bad files: 24 inputs, 3 batches of 8


def _mtcnn() -> None:
    from fuseface.align.weights import weights_present

    require_or_skip(
        weights_present(), "MTCNN weights missing: run `fuseface models fetch mtcnn`", "FUSEFACE_REQUIRE_MTCNN"
    )


@pytest.fixture(scope="module")
def folder(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """LFW photos of several people, a JPEG cut inside its header and a blank image (no face)."""
    _mtcnn()
    root = tmp_path_factory.mktemp("photos")
    people = sorted((shared_data / "lfw" / "lfw-deepfunneled").iterdir())[:60:3]
    sources = [p for person in people for p in sorted(person.glob("*.jpg"))[:2]][:PHOTOS]
    for src in sources:
        shutil.copy(src, root / src.name)
    (root / "Broken_0001.jpg").write_bytes(sources[0].read_bytes()[:300])  # ends inside the header
    cv2.imwrite(str(root / "Blank_0001.png"), np.full((200, 200, 3), 127, np.uint8))
    return root


@pytest.fixture(scope="module")
def paths(folder: Path) -> list[Path]:
    from fuseface.align.pipeline import list_photos

    root, rels = list_photos(folder)
    return [root / r for r in rels]


@pytest.fixture(scope="module")
def serial(real_model, paths: list[Path]):  # type: ignore[no-untyped-def]
    """The existing serial path, photo by photo: ``FaceModel.embed_photos``."""
    return real_model.embed_photos(paths)


@pytest.fixture(scope="module")
def in_process(real_model, paths: list[Path]):  # type: ignore[no-untyped-def]
    """Everything in this process; embedding on 1 thread, as every run it is compared with bit for
    bit (a different thread count changes float rounding, not the photos or crops)."""
    return embed_files(real_model, paths, workers=0, batch_size=8, unit_size=4, threads=1)


def _bad(paths: list[Path]) -> set[int]:
    return {i for i, p in enumerate(paths) if p.name.startswith(("Broken", "Blank"))}


def test_prepare_photos_is_what_the_model_prepares(real_model, paths: list[Path]) -> None:
    good = [p for i, p in enumerate(paths) if i not in _bad(paths)][:4]
    prepared = prepare_photos(good, real_model.detector, real_model.input_size, real_model.template)
    for path, item in zip(good, prepared, strict=True):
        crop, face = real_model.prepare(path)
        assert item.error == "" and item.crop.shape == (150, 150, 3)
        np.testing.assert_array_equal(item.crop, crop)
        np.testing.assert_allclose(item.face.landmarks, face.landmarks, atol=1e-3)


def test_in_process_pipeline_equals_the_serial_embedder(serial, in_process, paths: list[Path]) -> None:
    bad = _bad(paths)
    assert len(bad) == 2 and set(serial.errors) == bad
    assert in_process.ok.tolist() == serial.ok.tolist()
    assert in_process.errors == serial.errors  # same messages, naming the files
    ok = serial.ok
    np.testing.assert_allclose(in_process.embeddings[ok], serial.embeddings[ok], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(in_process.norms[ok], serial.norms[ok], rtol=1e-5)
    assert np.isnan(in_process.embeddings[~ok]).all()
    assert [s is None for s in in_process.scores] == (~ok).tolist()


@pytest.mark.parametrize("workers", [1, 2])
def test_output_does_not_depend_on_the_worker_count(real_model, in_process, paths: list[Path], workers: int) -> None:
    got = embed_files(real_model, paths, workers=workers, batch_size=8, unit_size=4, max_in_flight=3, threads=1)
    np.testing.assert_array_equal(got.embeddings, in_process.embeddings)
    assert got.errors == in_process.errors
    np.testing.assert_array_equal(np.asarray(got.boxes[0]), np.asarray(in_process.boxes[0]))


def test_resume_after_stopping_equals_an_uninterrupted_run(real_model, in_process, paths, tmp_path: Path) -> None:
    journal = tmp_path / "e.npz.parts"
    kw = {"batch_size": 8, "unit_size": 4, "journal": journal, "threads": 1}
    assert embed_files(real_model, paths, workers=1, limit_batches=2, **kw) is None
    written = sorted(journal.glob("batch-*.npz"))
    assert [p.name for p in written] == ["batch-000000.npz", "batch-000001.npz"]
    first = written[0].stat().st_mtime_ns
    written[1].write_bytes(written[1].read_bytes()[:100])  # a torn file: redone, never trusted
    with pytest.raises(ConfigError, match="other arguments"):
        embed_files(real_model, paths, workers=0, flip=True, **kw)
    resumed = embed_files(real_model, paths, workers=2, **kw)
    np.testing.assert_array_equal(resumed.embeddings, in_process.embeddings)
    np.testing.assert_array_equal(resumed.norms, in_process.norms)
    assert resumed.errors == in_process.errors  # failures of the batches read back are reported too
    assert written[0].stat().st_mtime_ns == first  # the complete batch was read, not recomputed
    assert len(list(journal.glob("batch-*.npz"))) == 3


def test_cli_reports_bad_photos_and_writes_the_embed_format(real_model, serial, folder, paths, tmp_path, capsys):  # type: ignore[no-untyped-def]
    out = tmp_path / "e.npz"
    argv = ["embed", str(folder), "--out", str(out), "--workers", "2", "--batch-size", "8"]
    assert run_cli(argv) == 0
    captured = capsys.readouterr()
    skipped = [line for line in captured.err.splitlines() if line.startswith("skipped: ")]
    assert len(skipped) == 2
    assert any("Broken_0001.jpg" in s and "cannot decode" in s for s in skipped)
    assert any("Blank_0001.png" in s and "no face" in s for s in skipped)
    assert f"{len(paths) - 2}/{len(paths)} embedded, dim 128" in captured.out
    with np.load(out) as z:
        assert sorted(z.files) == ["embeddings", "norms", "ok", "paths"]
        assert z["paths"].tolist() == [str(p) for p in paths]
        assert z["ok"].tolist() == serial.ok.tolist()
        ok = serial.ok
        np.testing.assert_allclose(z["embeddings"][ok], serial.embeddings[ok], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(z["norms"][ok], serial.norms[ok], rtol=1e-5)
    assert not journal_for(out).exists()  # removed once the output is written


def test_cli_killed_mid_run_resumes_to_the_same_file(real_model, folder: Path, tmp_path: Path) -> None:
    out, again = tmp_path / "killed.npz", tmp_path / "whole.npz"
    argv = ["embed", str(folder), "--workers", "0", "--batch-size", "4", "--threads", "1"]
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT / "src")}
    cmd = [sys.executable, "-m", "fuseface.cli", *argv, "--out", str(out)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = journal_for(out) / "batch-000000.npz"
    deadline = time.monotonic() + 120
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert first.exists() and not out.exists()
    done = len(list(journal_for(out).glob("batch-*.npz")))
    assert 1 <= done < 6  # 24 photos in batches of 4: killed part-way
    assert run_cli([*argv, "--out", str(out)]) == 0
    assert run_cli([*argv, "--out", str(again)]) == 0
    with np.load(out) as a, np.load(again) as b:
        for key in ("embeddings", "norms", "paths", "ok"):
            np.testing.assert_array_equal(a[key], b[key])
