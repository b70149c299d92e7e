"""Feature extraction with worker processes (``extract_features(workers=N)``, ``fuseface features
extract --workers N``): the same store bit for bit as in-process extraction, resume after an
interruption, every image source reaching the workers, a dead worker as a one-line error."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch

import fuseface
from conftest import run_cli
from fuseface.data.feature_store import FeatureStore
from fuseface.data.image_sources import ArraySource, FolderSource, RecordIOSource
from fuseface.data.photo_sets import AlignedPhotoSource
from fuseface.data.recordio import RecordIOWriter
from fuseface.data.transforms import SurveillanceDegradation
from fuseface.errors import FusefaceError
from fuseface.infer.extract_features import embed_with_styles, extract_features

LABELS = [0, 0, 0, 1, 1, 2, 2, 2, 3, 3]
#: 4 versions per image in batches of 6 (batches straddle images), shards of 4 (the last one 2
#: images), chunks of 3 images (chunks straddle nothing: they stop at shard ends)
KW: dict[str, Any] = {
    "augment_copies": 3,
    "shard_size": 4,
    "batch_size": 6,
    "chunk_size": 3,
    "dtype": "float32",
    "progress": False,
    "seed": 5,
    "input_size": 32,
}


def _images(n: int, size: int = 48, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


def _assert_same_store(a: FeatureStore, b: FeatureStore) -> None:
    for x, y in zip(a.load(), b.load(), strict=True):
        np.testing.assert_array_equal(x, y)
    assert a.copy_params() == b.copy_params()
    ea, eb = a.load_extras(), b.load_extras()
    assert sorted(ea) == sorted(eb)
    for key in ea:
        np.testing.assert_array_equal(ea[key], eb[key])


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return fuseface.create_backbone("ir18", num_features=32, input_size=32).eval()


@pytest.fixture(scope="module")
def source() -> ArraySource:
    return ArraySource(_images(len(LABELS)), LABELS)


@pytest.fixture(scope="module")
def serial(model: torch.nn.Module, source: ArraySource, tmp_path_factory: pytest.TempPathFactory) -> FeatureStore:
    store = extract_features(model, source, tmp_path_factory.mktemp("serial"), workers=0, **KW)
    assert store is not None
    return store


def test_two_workers_write_the_in_process_store_bit_for_bit(model, source, serial, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    store = extract_features(model, source, tmp_path / "w2", workers=2, **KW)
    assert store is not None
    _assert_same_store(store, serial)
    feats, styles, labels = store.load()
    np.testing.assert_array_equal(labels, LABELS)
    assert feats.shape == (10, 4, 32) and styles.shape == (10, 4, 384, 2)
    clean, _ = embed_with_styles(model, [source[7][0]], "rgb", input_size=32)
    np.testing.assert_allclose(feats[7, 0], clean[0], rtol=1e-4, atol=1e-4)  # copy 0: the clean image
    assert not np.allclose(feats[7, 1], feats[7, 0])  # the augmented copies differ from it
    assert store.copy_params()[7] == [{"kind": "clean"}] + [{"kind": "caface_precompute"}] * 3


def test_interrupted_then_resumed_with_workers_equals_uninterrupted(model, source, serial, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    written: list[int] = []
    out = tmp_path / "resumed"
    assert extract_features(model, source, out, workers=1, max_shards=1, on_shard=written.append, **KW) is None
    assert written == [0] and len(list(out.glob("shard_*.safetensors"))) == 1
    store = extract_features(model, source, out, workers=1, on_shard=written.append, **KW)
    assert store is not None and written == [0, 1, 2]
    _assert_same_store(store, serial)


def test_recordio_source_and_degradation_in_a_worker(model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "rec"
    images = _images(6, seed=2)
    with RecordIOWriter(root) as writer:
        for image, label in zip(images, [0, 0, 1, 1, 1, 2], strict=True):
            writer.write_image(image, label)
    source = RecordIOSource(root)
    source[0]  # the reader's file is open in this process; the workers open their own
    kw = {**KW, "degradation": SurveillanceDegradation(), "augment_copies": 2}
    serial = extract_features(model, source, tmp_path / "s", workers=0, **kw)
    pooled = extract_features(model, source, tmp_path / "w", workers=1, **kw)
    assert serial is not None and pooled is not None
    _assert_same_store(pooled, serial)
    np.testing.assert_array_equal(pooled.load()[2], [0, 0, 1, 1, 1, 2])
    extras = pooled.load_extras()
    assert extras["kind"].shape == (6, 3) and (extras["kind"][:, 0] == 0).all() and (extras["kind"][:, 1:] > 0).all()
    kinds = [[p["kind_id"] for p in row] for row in pooled.copy_params()]
    np.testing.assert_array_equal(extras["kind"], kinds)


def test_every_source_pickles_and_reads_the_same_after(tmp_path: Path) -> None:
    images = _images(3, seed=3)
    for i, image in enumerate(images):
        (tmp_path / "tree" / f"p{i % 2}").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(tmp_path / "tree" / f"p{i % 2}" / f"{i}.png"), image[:, :, ::-1])
    with RecordIOWriter(tmp_path / "rec") as writer:
        for i, image in enumerate(images):
            writer.write_image(image, i)
    points = np.array([[17, 20], [31, 20], [24, 28], [18, 36], [30, 36]], np.float64)
    photos = ["p0/0.png", "p1/1.png"]
    aligned = AlignedPhotoSource(tmp_path / "tree", photos, [0, 1], {"p0/0.png": (points, 0.99)}, size=32)
    sources = [
        ArraySource(images, [0, 1, 2]),
        FolderSource(tmp_path / "tree"),
        RecordIOSource(tmp_path / "rec"),
        aligned,
    ]
    for src in sources:
        expected = [src[i] for i in range(len(src))]  # opens the RecordIO file here first
        copy = pickle.loads(pickle.dumps(src))
        assert len(copy) == len(src)
        for i, (image, label) in enumerate(expected):
            got, got_label = copy[i]
            np.testing.assert_array_equal(got, image)
            assert got_label == label


class _DiesInWorker(ArraySource):
    """An array source whose worker process exits abruptly when it reads image ``die_at``."""

    def __init__(self, images: np.ndarray, labels: list[int], die_at: int) -> None:
        super().__init__(images, labels)
        self.die_at, self.parent = die_at, os.getpid()

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        if index == self.die_at and os.getpid() != self.parent:
            os._exit(3)
        return super().__getitem__(index)


def test_a_dead_worker_is_one_line_and_the_run_resumes(model, source, serial, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    dying = _DiesInWorker(source.images, LABELS, die_at=9)
    with pytest.raises(FusefaceError, match="run again to resume") as info:
        extract_features(model, dying, tmp_path / "st", workers=1, **KW)
    assert "\n" not in str(info.value) and "worker process died" in str(info.value)
    store = extract_features(model, source, tmp_path / "st", workers=0, **KW)
    assert store is not None
    _assert_same_store(store, serial)


def test_cli_workers_option(tmp_path: Path) -> None:
    from fuseface.infer.model_file import ModelMeta, save_model

    torch.manual_seed(1)
    net = fuseface.create_backbone("ir18", num_features=32, input_size=32).eval()
    model = save_model(
        tmp_path / "m.safetensors", net, ModelMeta("ir18", {"input_size": 32, "num_features": 32}, input_size=32)
    )
    for i, image in enumerate(_images(6, seed=4)):
        (tmp_path / "faces" / f"id{i // 3}").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(tmp_path / "faces" / f"id{i // 3}" / f"{i}.png"), image)
    argv = ["features", "extract", str(tmp_path / "faces"), "-m", str(model), "--augment-copies", "2"]
    argv += ["--shard-size", "4", "--batch-size", "4", "--dtype", "float32", "--no-progress"]
    assert run_cli([*argv, "--out", str(tmp_path / "w0"), "--workers", "0"]) == 0
    assert run_cli([*argv, "--out", str(tmp_path / "w1"), "--workers", "1"]) == 0
    serial, pooled = FeatureStore(tmp_path / "w0"), FeatureStore(tmp_path / "w1")
    _assert_same_store(pooled, serial)
    feats, _, labels = pooled.load()
    np.testing.assert_array_equal(labels, [0, 0, 0, 1, 1, 1])
    assert feats.shape == (6, 3, 32) and np.isfinite(feats).all()
