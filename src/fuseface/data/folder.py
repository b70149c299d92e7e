"""An image folder as a training set: ``root/<identity>/<image files>``, one sub-folder per identity.

Class ids are the sorted sub-folder names' positions (as torchvision's ``ImageFolder``, which
MSConv uses for MS1MV3, METHODS.md §2). Files that are not images (by suffix; extension-less
files by their magic bytes) are ignored; sub-folders without images keep their class id and are
reported in one warning. Unreadable images raise :class:`~fuseface.errors.DataError` naming the
file when loaded; :meth:`ImageFolderDataset.verify` decodes everything up front and lists them.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from fuseface.data.images import SkipTracker, check_channel_order, looks_like_image, read_image
from fuseface.data.tolerant import SkipCorruptMixin
from fuseface.errors import DataError


def scan_image_folder(root: str | os.PathLike[str]) -> tuple[list[str], list[tuple[Path, int]]]:
    """``(class names, [(image path, class id), ...])`` of an identity-per-folder tree.

    Classes are the sorted names of the immediate sub-folders; images are searched recursively
    inside each one and sorted by path, so the result is deterministic.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: image folder not found")
    classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir() and not entry.name.startswith("."))
    samples: list[tuple[Path, int]] = []
    empty: list[str] = []
    for label, name in enumerate(classes):
        files = sorted(
            p for p in (root / name).rglob("*") if p.is_file() and not p.name.startswith(".") and looks_like_image(p)
        )
        if not files:
            empty.append(name)
        samples.extend((p, label) for p in files)
    if empty:
        shown = ", ".join(empty[:10]) + (" ..." if len(empty) > 10 else "")
        warnings.warn(f"{root}: {len(empty)} identity folder(s) without images: {shown}", stacklevel=2)
    return classes, samples


class ImageFolderDataset(SkipCorruptMixin, Dataset):
    """``dataset[i] -> (float tensor (3, H, W), int label)`` over ``root/<identity>/<images>``.

    Same item contract as :class:`~fuseface.data.recordio.RecordIODataset`: decoded with cv2 in
    ``channel_order`` (RGB default), passed to ``transform`` (see
    :func:`fuseface.data.transforms.apply_transform`), normalised ``(x / 255 - 0.5) / 0.5`` when
    there is no transform. Attributes ``classes``, ``num_classes``, ``samples``, ``labels``.
    ``skip_corrupt=True`` replaces an unreadable image by the next readable one and counts it
    (:meth:`report_skipped`).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        transform: Callable[..., Any] | None = None,
        channel_order: str = "rgb",
        skip_corrupt: bool = False,
    ) -> None:
        self.root = Path(root)
        self.transform = transform
        self.channel_order = check_channel_order(channel_order)
        self.skip_corrupt = bool(skip_corrupt)
        self.classes, self.samples = scan_image_folder(self.root)
        if not self.samples:
            raise DataError(f"{self.root}: no images found (expected one sub-folder of images per identity)")
        self.num_classes = len(self.classes)
        self.labels = np.array([label for _, label in self.samples], dtype=np.int64)
        self.skipped = SkipTracker(len(self.samples), str(self.root))
        self.source = str(self.root)

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> tuple[np.ndarray, int]:
        """Decoded uint8 image (in ``channel_order``) and label of sample ``index``, no transform."""
        path, label = self.samples[index]
        return read_image(path, self.channel_order), label

    def verify(self) -> list[tuple[Path, str]]:
        """Decode every image; return ``[(path, reason)]`` for those that fail (truncated JPEGs included)."""
        failures: list[tuple[Path, str]] = []
        for path, _ in self.samples:
            try:
                read_image(path, self.channel_order, on_truncated="error")
            except DataError as exc:
                failures.append((path, str(exc)))
        return failures
