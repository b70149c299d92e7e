"""Fixtures shared by the gallery and service tests: small random-weight models, crops, backends."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import fuseface
from fuseface.infer.model_file import ModelMeta, save_model


def _model(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    net = fuseface.create_backbone("ir18")  # 512-d, so CAFace (512-d features, 384 style channels) fits
    return save_model(path, net.eval(), ModelMeta(arch="ir18", extra={"threshold": 0.5}))


@pytest.fixture(scope="session")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight ir18 model file (scores are meaningless; the gallery mechanics are tested)."""
    return _model(tmp_path_factory.mktemp("gallery_model") / "a.safetensors", 0)


@pytest.fixture(scope="session")
def other_model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same architecture with other weights: a different model for the gallery."""
    return _model(tmp_path_factory.mktemp("gallery_model_b") / "b.safetensors", 1)


@pytest.fixture(scope="session")
def face_model(model_file: Path):
    return fuseface.load(str(model_file))


def crops(n: int, seed: int, size: int = 112) -> np.ndarray:
    """``n`` random uint8 RGB crops of the model's input size (taken as aligned faces, no detection)."""
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def milvus_available() -> bool:
    try:
        import milvus_lite  # noqa: F401
        import pymilvus  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(params=["local", "milvus"])
def backend(request: pytest.FixtureRequest) -> str:
    """Both gallery backends; milvus (embedded milvus-lite) skips when pymilvus/milvus-lite are absent."""
    from conftest import require_or_skip

    if request.param == "milvus":
        require_or_skip(milvus_available(), "pymilvus / milvus-lite not installed", "FUSEFACE_REQUIRE_MILVUS")
    return request.param


@pytest.fixture(scope="session")
def dlib_model():
    """The pretrained dlib ResNet (``fuseface models fetch dlib-resnet``); skips when it is not fetched
    unless ``FUSEFACE_REQUIRE_DLIB=1``."""
    from conftest import require_or_skip
    from fuseface.infer.pretrained import FETCH_COMMAND, is_fetched

    require_or_skip(is_fetched(), f"dlib-resnet not fetched: run `{FETCH_COMMAND}`", "FUSEFACE_REQUIRE_DLIB")
    return fuseface.load("dlib-resnet")


def deepface_people(root: Path) -> list[list[str]]:
    """The identity groups of ``deepface_pairs``: photos joined by the "Yes" pairs of
    ``face-recognition-pivot.csv`` (union-find; see that folder's README), each group sorted by number."""
    import csv

    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            x = parent[x]
        return x

    with open(root / "face-recognition-pivot.csv", newline="") as f:
        for row in csv.DictReader(f):
            a, b = Path(row["file_x"]).name, Path(row["file_y"]).name
            ra, rb = find(a), find(b)
            if row["decision"] == "Yes":
                parent[ra] = rb
    groups: dict[str, list[str]] = {}
    for name in parent:
        groups.setdefault(find(name), []).append(name)
    number = lambda s: int("".join(c for c in s if c.isdigit()))  # noqa: E731
    return sorted((sorted(g, key=number) for g in groups.values()), key=lambda g: number(g[0]))
