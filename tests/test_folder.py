"""Image-folder dataset: class order, non-image files, extension-less GIFs, unreadable files."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from fuseface.data.folder import ImageFolderDataset, scan_image_folder
from fuseface.data.images import TruncatedImageWarning
from fuseface.data.transforms import normalize, to_tensor
from fuseface.errors import DataError


def _write_png(path: Path, value: int) -> np.ndarray:
    rgb = np.full((10, 12, 3), value, np.uint8)
    rgb[..., 0] = 255 - value
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), rgb[..., ::-1])
    return rgb


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    _write_png(tmp_path / "bob" / "1.png", 10)
    _write_png(tmp_path / "bob" / "2.png", 20)
    _write_png(tmp_path / "alice" / "a.png", 30)
    (tmp_path / "alice" / "notes.txt").write_text("not an image")
    (tmp_path / "alice" / "extensionless").write_text("plain text, no magic")
    (tmp_path / "carol").mkdir()
    (tmp_path / "README.md").write_text("top-level files are ignored")
    return tmp_path


def test_classes_sorted_and_non_images_skipped(tree: Path) -> None:
    with pytest.warns(UserWarning, match="1 identity folder"):
        dataset = ImageFolderDataset(tree)
    assert dataset.classes == ["alice", "bob", "carol"] and dataset.num_classes == 3
    assert [p.name for p, _ in dataset.samples] == ["a.png", "1.png", "2.png"]
    assert dataset.labels.tolist() == [0, 1, 1]
    x, y = dataset[1]
    rgb = np.full((10, 12, 3), 10, np.uint8)
    rgb[..., 0] = 245
    assert y == 1 and torch.equal(x, normalize(to_tensor(rgb)))


def test_extensionless_gif_is_found(tmp_path: Path) -> None:
    pil_image = pytest.importorskip("PIL.Image")
    (tmp_path / "s01").mkdir()
    buf = io.BytesIO()
    pil_image.fromarray(np.full((6, 6), 90, np.uint8)).save(buf, format="GIF")
    (tmp_path / "s01" / "subject01.happy").write_bytes(buf.getvalue())
    classes, samples = scan_image_folder(tmp_path)
    assert classes == ["s01"] and len(samples) == 1
    image, _ = ImageFolderDataset(tmp_path).load(0)
    assert image.shape == (6, 6, 3) and (image == 90).all()


def test_unreadable_file_named_and_skippable(tree: Path) -> None:
    bad = tree / "bob" / "3.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.warns(UserWarning):
        dataset = ImageFolderDataset(tree)
        skipping = ImageFolderDataset(tree, skip_corrupt=True)
    with pytest.raises(DataError, match=r"bob/3\.png: cannot decode"):
        dataset[3]
    assert [str(p) for p, _ in dataset.verify()] == [str(bad)]
    assert skipping[3][1] == 0  # wrapped to sample 0
    with pytest.warns(RuntimeWarning, match="skipped 1"):
        assert skipping.report_skipped() == 1


def test_missing_or_empty_root(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        ImageFolderDataset(tmp_path / "nope")
    with pytest.raises(DataError, match="no images found"):
        ImageFolderDataset(tmp_path)


@pytest.mark.shared_data
def test_orl_as_image_folder(shared_data: Path) -> None:
    dataset = ImageFolderDataset(shared_data / "orl")
    assert dataset.num_classes == 40 and len(dataset) == 400
    assert dataset.classes[:3] == ["s1", "s10", "s11"]  # sorted names, as torchvision's ImageFolder
    x, y = dataset[399]
    assert x.shape == (3, 112, 92) and y == 39


@pytest.mark.shared_data
def test_lfw_z_folders_load_through_a_dataloader(shared_data: Path, tmp_path: Path) -> None:
    """All 54 images of the 30 LFW folders starting with Z load; the truncated one decodes partially."""
    root = tmp_path / "lfw_z"
    root.mkdir()
    for person in sorted((shared_data / "lfw" / "lfw-deepfunneled").glob("Z*")):
        (root / person.name).symlink_to(person)
    dataset = ImageFolderDataset(root)
    assert dataset.num_classes == 30 and len(dataset) == 54
    truncated = [i for i, (p, _) in enumerate(dataset.samples) if p.name == "Zydrunas_Ilgauskas_0001.jpg"]
    assert [str(p) for p, _ in dataset.verify()] == [str(dataset.samples[truncated[0]][0])]
    with pytest.warns(TruncatedImageWarning):
        partial, _ = dataset.load(truncated[0])
    assert (partial[-60:] == 128).mean() > 0.5 and partial[:40].std() > 0  # decoded top, grey bottom
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TruncatedImageWarning)
        loader = DataLoader(dataset, batch_size=32, num_workers=2)
        labels = torch.cat([y for x, y in loader if x.shape[1:] == (3, 250, 250)])
    assert labels.tolist() == dataset.labels.tolist()
