"""Sources of uint8 RGB face images with identity labels: what feature extraction reads.

An :class:`ImageSource` is anything with ``len(source)`` and ``source[i] -> (uint8 H x W x 3 RGB,
int label)``. The ones here: :class:`ArraySource` (arrays in memory), :class:`FolderSource` (one
sub-folder per identity), :class:`RecordIOSource` (an insightface ``train.rec`` / ``train.idx``
folder); :func:`open_source` picks between the last two, and :func:`photo_source` builds the
source of ``fuseface features extract``: a folder or RecordIO, or with a split the split's photos
aligned from a landmark journal (:class:`fuseface.data.photo_sets.AlignedPhotoSource`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from fuseface.data.images import IMAGE_EXTENSIONS, read_image
from fuseface.errors import DataError

__all__ = ["ArraySource", "FolderSource", "ImageSource", "RecordIOSource", "open_source", "photo_source"]


class ImageSource(Protocol):
    """``len(source)`` images; ``source[i] -> (uint8 H x W x 3 RGB, int label)``."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]: ...


class ArraySource:
    """Images (N, H, W, 3) uint8 RGB and labels (N,) held in memory."""

    def __init__(self, images: np.ndarray, labels: Sequence[int]) -> None:
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels = images, np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        return np.asarray(self.images[index]), int(self.labels[index])


class FolderSource:
    """One sub-folder per identity (sorted names -> labels 0..K-1), images read with
    :func:`fuseface.data.images.read_image`; files count as images by their suffix
    (:data:`fuseface.data.images.IMAGE_EXTENSIONS`)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"{self.root}: image folder not found")
        self.items: list[tuple[Path, int]] = []
        for label, d in enumerate(sorted(p for p in self.root.iterdir() if p.is_dir())):
            for f in sorted(d.iterdir()):
                if f.suffix.lower() in IMAGE_EXTENSIONS:
                    self.items.append((f, label))
        if not self.items:
            raise DataError(f"{self.root}: no images in identity sub-folders")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        path, label = self.items[index]
        return read_image(path, channel_order="rgb"), label


class RecordIOSource:
    """An insightface RecordIO folder (``train.rec``/``train.idx``) through ``fuseface.data.recordio``."""

    def __init__(self, root: str | Path) -> None:
        from fuseface.data.recordio import RecordIODataset

        self.dataset = RecordIODataset(str(root), channel_order="rgb")

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        image, label = self.dataset.load(index)  # decoded uint8 RGB, no transform
        return image, int(label)


def open_source(path: str | Path) -> ImageSource:
    """RecordIO folder (has ``train.rec``) or identity-folder tree."""
    p = Path(path)
    if (p / "train.rec").is_file():
        return RecordIOSource(p)
    return FolderSource(p)


def photo_source(
    data: str | Path, split: str | Path = "", landmarks: str | Path = "", template: str = "arcface", size: int = 112
) -> tuple[ImageSource, dict[str, Any]]:
    """``(source, store metadata)``: :func:`open_source` of ``data`` (no metadata), or with ``split``
    every photo of the split under ``data`` aligned from the ``landmarks`` journal of
    ``fuseface align`` onto ``template`` at ``size`` (metadata from
    :func:`fuseface.data.photo_sets.split_source`)."""
    if not split:
        return open_source(data), {}
    from fuseface.data.photo_sets import read_split, split_source

    if not landmarks:
        raise DataError("--split needs --landmarks (the faces.jsonl journal of `fuseface align`)")
    return split_source(read_split(split), data, landmarks, template, size)
