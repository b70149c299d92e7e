"""The LFW View-2 pairs protocol straight from images and ``pairs.txt`` (no ``.bin`` needed).

``pairs.txt`` (the standard View-2 file): a header ``"10 300"`` (folds, same pairs per fold), then
per fold 300 same-person lines ``name n1 n2`` followed by 300 different-person lines
``name1 n1 name2 n2`` (tab or space separated). Image ``n`` of ``name`` is
``lfw-deepfunneled/<name>/<name>_%04d.jpg`` (or the same relative path under an
``--images-dir`` of aligned crops). The 6,000 pairs in file order give the 10 contiguous folds
of 600 that :func:`fuseface.eval.lfw.lfw_pairs_protocol` evaluates.

With a model, ``fuseface eval lfw`` aligns the photos itself: :func:`lfw_landmarks` finds the
5 landmarks of each photo (from a ``faces.jsonl`` of ``fuseface align`` when given, MTCNN for the
rest, keeping the face nearest the image centre, as LFW centres its subject), a photo without a
detected face takes the mean landmarks of the others (the same rule as ``fuseface data build-bin``),
and :func:`load_aligned_crops` warps each onto the model's template (``ModelMeta.template``).

The old approximation stays as an option: :func:`load_face_crops` takes the centre of the
deep-funneled 250x250 images, a square of ``crop`` pixels (default 150) centred on the image,
resized to the model's input (INTER_AREA); accuracies are lower than with aligned crops.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


def read_lfw_image(path: str | Path) -> np.ndarray:
    """One LFW photo as uint8 RGB; a truncated file (LFW holds one) is decoded as far as it goes and
    warned about every time, never skipped."""
    import warnings

    from fuseface.data.images import TruncatedImageWarning, read_image

    with warnings.catch_warnings():
        warnings.simplefilter("always", TruncatedImageWarning)
        return read_image(path, "rgb")


def load_face_crops(
    image_dir: str | Path, relpaths: Sequence[str], size: int = 112, crop: int | None = 150
) -> np.ndarray:
    """Read images (uint8 RGB), centre-crop ``crop`` px (``None``: whole image) and resize to ``size``.

    Truncated JPEGs decode what they can (``fuseface.data.images``); a missing file raises
    :class:`~fuseface.errors.DataError` naming it.
    """
    image_dir = Path(image_dir)
    out = np.empty((len(relpaths), size, size, 3), dtype=np.uint8)
    for i, rel in enumerate(relpaths):
        img = read_lfw_image(image_dir / rel)
        out[i] = centre_crop(img, crop if crop else max(img.shape[:2]), size)
    return out


def lfw_landmarks(
    image_dir: str | Path,
    relpaths: Sequence[str],
    known: dict[str, np.ndarray] | None = None,
    detector: object | None = None,
    progress: bool = False,
    detect: bool = True,
) -> tuple[np.ndarray, dict[str, int]]:
    """(N, 5, 2) landmarks of ``relpaths``: from ``known`` (e.g. :func:`read_face_journal`) when
    present, else detected (``detector``, MTCNN by default; the face nearest the centre); photos with
    no face (or, with ``detect=False``, no entry in ``known``) get the mean of the others. Returns them
    and counts ``{"given", "detected", "fallback"}``."""
    from fuseface.align.detector import select_faces

    image_dir = Path(image_dir)
    known = known or {}
    out = np.full((len(relpaths), 5, 2), np.nan)
    counts = {"given": 0, "detected": 0, "fallback": 0}
    items: Any = enumerate(relpaths)
    if progress:
        from tqdm import tqdm

        items = tqdm(items, total=len(relpaths), desc="landmarks", unit="photo")
    for i, rel in items:
        if rel in known:
            out[i] = known[rel]
            counts["given"] += 1
            continue
        if not detect:
            continue
        if detector is None:
            from fuseface.align.mtcnn import MTCNN

            detector = MTCNN()
        img = read_lfw_image(image_dir / rel)
        det = detector.detect(img)  # type: ignore[attr-defined]
        chosen = select_faces(det, img.shape, "central")
        if chosen:
            out[i] = det.landmarks[chosen[0]]
            counts["detected"] += 1
    missing = np.isnan(out).any(axis=(1, 2))
    if missing.all():
        raise ProtocolFileError(f"{image_dir}: no face found in any of the {len(relpaths)} LFW photos")
    out[missing] = np.nanmean(out[~missing], axis=0)
    counts["fallback"] = int(missing.sum())
    return out, counts


def load_aligned_crops(
    image_dir: str | Path, relpaths: Sequence[str], landmarks: np.ndarray, size: int, template: str
) -> np.ndarray:
    """Read images (uint8 RGB) and warp each onto ``template`` from its 5 landmarks."""
    from fuseface.align.similarity import align_face

    image_dir = Path(image_dir)
    out = np.empty((len(relpaths), size, size, 3), dtype=np.uint8)
    for i, rel in enumerate(relpaths):
        img = read_lfw_image(image_dir / rel)
        out[i] = align_face(img, landmarks[i], size, template)
    return out


def lfw_pairs_protocol(*args: Any, **kwargs: Any) -> dict:
    """Moved to :func:`fuseface.eval.lfw.lfw_pairs_protocol` (metrics live in ``eval/``); this name
    stays for existing callers."""
    from fuseface.eval.lfw import lfw_pairs_protocol as protocol

    return protocol(*args, **kwargs)
