"""The shared ``__getitem__`` of the image datasets: decode, or replace a corrupt sample and count it.

With ``skip_corrupt=False`` a corrupt sample raises its :class:`~fuseface.errors.DataError` (which
names the file and the record). With ``skip_corrupt=True`` the next readable sample takes its place
(the transform is still seeded by the requested index, so augmentation stays reproducible), the
failure is recorded in the dataset's :class:`~fuseface.data.images.SkipTracker`, and the trainer
reports the count once per epoch through :meth:`report_skipped`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from fuseface.data.images import SkipTracker
from fuseface.data.transforms import apply_transform
from fuseface.errors import DataError

MAX_CONSECUTIVE_FAILURES = 64


class SkipCorruptMixin:
    """Needs ``load(index) -> (image, label)``, ``transform``, ``skip_corrupt``, ``skipped`` and
    ``source`` (the file or folder named in errors)."""

    transform: Any
    skip_corrupt: bool
    skipped: SkipTracker
    source: str

    def load(self, index: int) -> tuple[np.ndarray, int]:  # pragma: no cover - provided by the dataset
        raise NotImplementedError

    def __len__(self) -> int:  # pragma: no cover - provided by the dataset
        raise NotImplementedError

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        index = int(index)
        if not self.skip_corrupt:
            image, label = self.load(index)
            return apply_transform(self.transform, image, index), label
        for attempt in range(min(len(self), MAX_CONSECUTIVE_FAILURES)):
            j = (index + attempt) % len(self)
            try:
                image, label = self.load(j)
            except DataError as exc:
                self.skipped.mark(j, str(exc))
                continue
            return apply_transform(self.transform, image, index), label
        raise DataError(f"{self.source}: {MAX_CONSECUTIVE_FAILURES} consecutive unreadable samples from sample {index}")

    def report_skipped(self, reset: bool = True) -> int:
        """Warn once with the number of unreadable samples replaced since the last call; return it."""
        return self.skipped.report(reset)
