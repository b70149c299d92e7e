"""Face detectors behind one small interface, plus landmarks read from a file.

A detector is anything with ``detect(image_rgb_uint8) -> Detections`` (boxes, scores and 5
landmarks per face, see :class:`fuseface.align.mtcnn.Detections`). Two are provided:

* ``"mtcnn"`` (:class:`fuseface.align.mtcnn.MTCNN`, needs ``fuseface models fetch mtcnn``);
* :class:`LandmarkFile`: landmarks given in a text file, one image per line
  ``name x1 y1 ... x5 y5 [score]`` — the IJB ``*_name_5pts_score.txt`` layout (PROTOCOLS.md §5.3);
  68-point lines (136 numbers) are reduced with the 68-to-5 rule.

Detectors are entries of :mod:`fuseface.registry` (kind ``detector``); further ones register
with :func:`register_detector`. :func:`select_faces` applies the
several-faces policy (``largest``, ``central`` or ``all``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from fuseface.align.mtcnn import Detections
from fuseface.align.similarity import landmarks_68_to_5
from fuseface.errors import DataError, ProtocolFileError

POLICIES = ("largest", "central", "all")


class FaceDetector(Protocol):
    """What the alignment pipeline needs from a detector."""

    def detect(self, image: np.ndarray) -> Detections: ...


def is_detector(obj: Any) -> bool:
    """True for a detector instance, False for a factory of one (a class or a zero-argument
    function, as worker processes receive it)."""
    return hasattr(obj, "detect") and not isinstance(obj, type)


def as_detector(obj: FaceDetector | Callable[[], FaceDetector]) -> FaceDetector:
    """``obj`` itself when it is a detector, else the detector its factory builds."""
    return obj if is_detector(obj) else obj()  # type: ignore[operator, return-value]


def detect_all(detector: FaceDetector, images: list[np.ndarray]) -> list[Detections]:
    """Detections of several images: one ``detector.detect_batch`` call where the detector has
    it (the fast MTCNN batches R-/O-Net across the images), else ``detect`` image by image."""
    batch = getattr(detector, "detect_batch", None)
    return batch(images) if batch is not None else [detector.detect(im) for im in images]


def register_detector(name: str, factory: Callable[..., FaceDetector] | str) -> None:
    """Make ``create_detector(name, **kw)`` build ``factory(**kw)`` (registry kind ``detector``)."""
    from fuseface import registry

    registry.register("detector", name, factory)


def create_detector(name: str = "mtcnn", **kw: Any) -> FaceDetector:
    """Build a registered detector by name."""
    from fuseface import registry

    known = registry.names("detector")
    if name not in known:
        raise ValueError(f"unknown detector {name!r}; known: {known}")
    return registry.create("detector", name, **kw)


class LandmarkFile:
    """Landmarks from a text file instead of a detector (IJB ``name_5pts_score`` layout).

    ``lookup(name)`` returns the :class:`Detections` (one face) for an image name; names are
    matched as written and by their last path component.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ProtocolFileError(f"{self.path}: landmark file not found")
        self.entries: dict[str, tuple[np.ndarray, float]] = {}
        for lineno, line in enumerate(self.path.read_text().splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            try:
                values = [float(v) for v in parts[1:]]
            except ValueError as exc:
                raise ProtocolFileError(f"{self.path}:{lineno}: non-numeric landmark value") from exc
            if len(values) in (10, 11):
                lmk = np.asarray(values[:10]).reshape(5, 2)
            elif len(values) in (136, 137):
                lmk = landmarks_68_to_5(np.asarray(values[:136]).reshape(68, 2))
            else:
                raise ProtocolFileError(
                    f"{self.path}:{lineno}: expected name + 10 (or 136) coords [+ score], got {len(values)} numbers"
                )
            score = values[-1] if len(values) in (11, 137) else 1.0
            self.entries[parts[0]] = (lmk.astype(np.float32), score)
            self.entries.setdefault(Path(parts[0]).name, (lmk.astype(np.float32), score))

    def lookup(self, name: str) -> Detections:
        key = name if name in self.entries else Path(name).name
        if key not in self.entries:
            raise DataError(f"{name}: no landmarks in {self.path}")
        lmk, score = self.entries[key]
        lo, hi = lmk.min(axis=0), lmk.max(axis=0)
        box = np.concatenate([lo, hi])[None].astype(np.float32)
        return Detections(box, np.asarray([score], np.float32), lmk[None])


def select_faces(det: Detections, image_shape: tuple[int, ...], policy: str = "largest") -> list[int]:
    """Indices of the faces to keep: the largest box, the box nearest the image centre, or all."""
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    if len(det) == 0:
        return []
    if policy == "all":
        return list(range(len(det)))
    b = det.boxes
    if policy == "largest":
        area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
        return [int(np.argmax(area))]
    h, w = image_shape[:2]
    centre = np.array([(w - 1) / 2, (h - 1) / 2])
    box_centres = np.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2], axis=1)
    return [int(np.argmin(((box_centres - centre) ** 2).sum(axis=1)))]
