"""The LFW View-2 pairs protocol straight from images and ``pairs.txt`` (no ``.bin`` needed).

``pairs.txt`` (the standard View-2 file): a header ``"10 300"`` (folds, same pairs per fold), then
per fold 300 same-person lines ``name n1 n2`` followed by 300 different-person lines
``name1 n1 name2 n2`` (tab or space separated). Image ``n`` of ``name`` is
``lfw-deepfunneled/<name>/<name>_%04d.jpg`` (or the same relative path under an
``--images-dir`` of aligned crops). The 6,000 pairs in file order give the 10 contiguous folds
of 600 that :func:`fuseface.eval.verification.evaluate` uses.

Without alignment, :func:`load_face_crops` takes the centre of the deep-funneled 250x250 images:
a square of ``crop`` pixels (default 150) centred on the image, resized to the model's input
(INTER_AREA). This is **our approximation**, not the ArcFace 5-point alignment: accuracies are
lower than with aligned crops (use ``fuseface align`` and ``--images-dir`` for those).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fuseface.errors import ProtocolFileError

IMAGE_SUBDIR = "lfw-deepfunneled"


@dataclass(frozen=True)
class LFWPair:
    name1: str
    index1: int
    name2: str
    index2: int
    same: bool
    fold: int

    @property
    def path1(self) -> str:
        return image_relpath(self.name1, self.index1)

    @property
    def path2(self) -> str:
        return image_relpath(self.name2, self.index2)


def image_relpath(name: str, index: int) -> str:
    """``<name>/<name>_%04d.jpg``."""
    return f"{name}/{name}_{index:04d}.jpg"


def read_pairs(path: str | Path) -> list[LFWPair]:
    """Parse a View-2 ``pairs.txt``; raises :class:`ProtocolFileError` naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise ProtocolFileError(f"{path}: pairs file not found")
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    if not lines:
        raise ProtocolFileError(f"{path}:1: empty file (expected a header 'folds pairs_per_fold')")
    head = lines[0].split()
    try:
        nfolds, per_fold = int(head[0]), int(head[1])
        if len(head) != 2:
            raise ValueError
    except (ValueError, IndexError):
        raise ProtocolFileError(f"{path}:1: expected a header 'folds pairs_per_fold' (e.g. '10 300')") from None
    pairs: list[LFWPair] = []
    body = [(i, ln.split()) for i, ln in enumerate(lines[1:], 2) if ln.strip()]
    expected = nfolds * 2 * per_fold
    if len(body) != expected:
        raise ProtocolFileError(f"{path}: {len(body)} pair lines, header '{lines[0].strip()}' announces {expected}")
    for k, (lineno, parts) in enumerate(body):
        fold, pos = divmod(k, 2 * per_fold)
        same_expected = pos < per_fold
        try:
            if len(parts) == 3:
                pair = LFWPair(parts[0], int(parts[1]), parts[0], int(parts[2]), True, fold)
            elif len(parts) == 4:
                pair = LFWPair(parts[0], int(parts[1]), parts[2], int(parts[3]), False, fold)
            else:
                raise ValueError(f"{len(parts)} fields")
        except ValueError as exc:
            raise ProtocolFileError(f"{path}:{lineno}: expected 'name n1 n2' or 'name1 n1 name2 n2' ({exc})") from None
        if pair.same != same_expected:
            kind = "same-person" if same_expected else "different-person"
            raise ProtocolFileError(f"{path}:{lineno}: expected a {kind} line at this position of fold {fold + 1}")
        pairs.append(pair)
    return pairs


def pair_image_index(pairs: Sequence[LFWPair]) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """The distinct images of ``pairs`` (relative paths, first-use order) and, per pair, the row of
    each image in that list plus the labels: ``(paths, idx1, idx2, issame)``."""
    rows: dict[str, int] = {}
    idx1 = np.empty(len(pairs), dtype=np.int64)
    idx2 = np.empty(len(pairs), dtype=np.int64)
    for k, p in enumerate(pairs):
        idx1[k] = rows.setdefault(p.path1, len(rows))
        idx2[k] = rows.setdefault(p.path2, len(rows))
    issame = np.array([p.same for p in pairs], dtype=bool)
    return list(rows), idx1, idx2, issame


def centre_crop(image: np.ndarray, crop: int, size: int) -> np.ndarray:
    """Square ``crop`` px centred in ``image``, resized to ``size`` x ``size`` (INTER_AREA)."""
    import cv2

    h, w = image.shape[:2]
    c = min(crop, h, w)
    y, x = (h - c) // 2, (w - c) // 2
    out = image[y : y + c, x : x + c]
    if out.shape[0] != size:
        out = cv2.resize(out, (size, size), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(out)


def load_face_crops(
    image_dir: str | Path, relpaths: Sequence[str], size: int = 112, crop: int | None = 150
) -> np.ndarray:
    """Read images (uint8 RGB), centre-crop ``crop`` px (``None``: whole image) and resize to ``size``.

    Truncated JPEGs decode what they can (``fuseface.data.images``); a missing file raises
    :class:`~fuseface.errors.DataError` naming it.
    """
    import warnings

    from fuseface.data.images import TruncatedImageWarning, read_image

    image_dir = Path(image_dir)
    out = np.empty((len(relpaths), size, size, 3), dtype=np.uint8)
    for i, rel in enumerate(relpaths):
        with warnings.catch_warnings():
            warnings.simplefilter("always", TruncatedImageWarning)
            img = read_image(image_dir / rel, "rgb")
        out[i] = centre_crop(img, crop if crop else max(img.shape[:2]), size)
    return out


def lfw_pairs_protocol(
    features: np.ndarray, idx1: np.ndarray, idx2: np.ndarray, issame: np.ndarray, nfolds: int = 10
) -> dict:
    """10-fold verification (:func:`fuseface.eval.verification.evaluate`) of image features
    ``features`` (one row per distinct image) over the pairs ``(idx1[k], idx2[k])``; pairs with an
    invalid feature are scored as misses and counted (``invalid_pairs``, ``invalid_images``)."""
    from fuseface.eval.invalid import invalid_rows
    from fuseface.eval.verification import evaluate

    features = np.asarray(features)
    result = evaluate(features[idx1], features[idx2], issame, nfolds=nfolds)
    result["invalid_images"] = int(invalid_rows(features).sum())
    return result
