"""insightface verification ``.bin`` files (lfw.bin, cfp_fp.bin, agedb_30.bin, calfw.bin, ...).

Format (insightface ``arcface_torch/eval/verification.py`` ``load_bin``; PROTOCOLS.md §5.1): a
pickle of ``(bins, issame_list)``; ``bins`` holds 2·P encoded images (JPEG/PNG), pair ``i`` is
``(bins[2i], bins[2i+1])``; ``issame_list`` holds P booleans. Files written by Python 2 hold
``str`` images, read with ``encoding='bytes'``; some hold images as numpy uint8 arrays of the
encoded bytes, and labels as numpy bools.

The file is never unpickled with plain :mod:`pickle`: :class:`RestrictedUnpickler` resolves only
the globals in :data:`ALLOWED_GLOBALS` (what those files legitimately contain: ``_codecs.encode``
for Python-3 ``bytes`` in protocol 2 pickles, and numpy's array / scalar reconstructors) and
refuses everything else with a :class:`~fuseface.errors.DataError` naming the file and the global.

Decoding: OpenCV (bit-identical to ``mx.image.imdecode``, which uses OpenCV) to **RGB**; if the
width is not ``image_size``, ``resize_short`` as mxnet does it (shorter side to ``image_size``,
the other ``size * long // short``, bicubic).
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fuseface.errors import DataError

ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    {
        ("_codecs", "encode"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }
)


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that only resolves :data:`ALLOWED_GLOBALS`."""

    def __init__(self, file: io.BufferedIOBase, source: str, **kwargs: Any) -> None:
        super().__init__(file, **kwargs)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise DataError(
            f"{self.source}: refused to unpickle global '{module}.{name}' "
            "(a .bin file holds only lists of encoded images and booleans; this file may run code)"
        )


def _restricted_load(data: bytes, source: str) -> Any:
    try:
        return RestrictedUnpickler(io.BytesIO(data), source).load()
    except UnicodeDecodeError:
        return RestrictedUnpickler(io.BytesIO(data), source, encoding="bytes").load()


def resize_short(img: np.ndarray, size: int) -> np.ndarray:
    """mxnet ``image.resize_short(src, size)`` (interp=2, bicubic) with OpenCV."""
    import cv2

    h, w = img.shape[:2]
    if h > w:
        new_h, new_w = size * h // w, size
    else:
        new_h, new_w = size, size * w // h
    return cv2.resize(img, (new_w, new_h), interpolation=cv2.INTER_CUBIC)


def _as_bytes(item: Any, source: str, index: int) -> bytes:
    if isinstance(item, bytes | bytearray):
        return bytes(item)
    if isinstance(item, np.ndarray) and item.dtype == np.uint8:
        return item.tobytes()
    if isinstance(item, str):  # Python 2 str read without encoding='bytes'
        return item.encode("latin1")
    raise DataError(f"{source}: image record {index} has type {type(item).__name__}, expected encoded bytes")


def read_bin_labels(path: str | Path) -> np.ndarray:
    """Only the ``issame`` labels of a ``.bin`` set (no image decoding)."""
    return _read_pickle(Path(path))[1]


def _read_pickle(path: Path) -> tuple[list, np.ndarray]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: .bin file not found")
    try:
        obj = _restricted_load(path.read_bytes(), str(path))
    except DataError:
        raise
    except Exception as exc:  # truncated / not a pickle
        raise DataError(f"{path}: not a readable .bin pickle ({type(exc).__name__}: {exc})") from exc
    if not (isinstance(obj, tuple | list) and len(obj) == 2):
        raise DataError(f"{path}: expected a pickled (bins, issame_list) pair, got {type(obj).__name__}")
    bins, issame_list = obj
    issame = np.asarray([bool(x) for x in issame_list], dtype=bool)
    if len(bins) != 2 * issame.size:
        raise DataError(f"{path}: {len(bins)} images for {issame.size} pairs (expected {2 * issame.size})")
    return bins, issame


def load_bin(path: str | Path, image_size: int = 112) -> tuple[np.ndarray, np.ndarray]:
    """Read a ``.bin`` set: ``(images uint8 (2P, H, W, 3) RGB, issame bool (P,))``; an undecodable
    image raises :class:`DataError` naming it (:func:`load_bin_tolerant` skips and counts instead)."""
    images, issame, bad = load_bin_tolerant(path, image_size)
    if bad:
        raise DataError(bad[0][1])
    return images, issame


def load_bin_tolerant(path: str | Path, image_size: int = 112) -> tuple[np.ndarray, np.ndarray, list[tuple[int, str]]]:
    """Like :func:`load_bin`, but an undecodable (corrupt, truncated beyond repair, wrong-shaped)
    image is replaced by zeros and listed as ``(index, reason)``: its embedding is then invalid and
    its pair is scored as a miss (:mod:`fuseface.eval.invalid`), never silently dropped."""
    from fuseface.data.images import decode_image

    path = Path(path)
    bins, issame = _read_pickle(path)
    images: list[np.ndarray | None] = []
    bad: list[tuple[int, str]] = []
    shape: tuple[int, ...] | None = None
    for i, item in enumerate(bins):
        try:
            img = decode_image(_as_bytes(item, str(path), i), "rgb", source=f"{path} image {i}")
            if img.shape[1] != image_size:
                img = resize_short(img, image_size)
            if shape is not None and img.shape != shape:
                raise DataError(f"{path}: image {i} has shape {img.shape}, the others {shape}")
        except DataError as exc:
            bad.append((i, str(exc)))
            images.append(None)
            continue
        shape = shape or img.shape
        images.append(img)
    shape = shape or (image_size, image_size, 3)
    blank = np.zeros(shape, np.uint8)
    stacked = np.stack([blank if im is None else im for im in images]) if images else np.zeros((0, *shape), np.uint8)
    return stacked, issame, bad


def save_bin(
    path: str | Path,
    images: np.ndarray | Sequence[np.ndarray | bytes],
    issame: Sequence[bool] | np.ndarray,
    quality: int = 95,
) -> Path:
    """Write a ``.bin`` set: ``images`` are uint8 RGB arrays (encoded as JPEG, ``quality``) or
    already-encoded bytes, two consecutive images per pair; ``issame`` one bool per pair."""
    import cv2

    from fuseface.data.images import swap_red_blue

    path = Path(path)
    issame_list = [bool(x) for x in np.asarray(issame).reshape(-1)]
    bins: list[bytes] = []
    for i, img in enumerate(images):
        if isinstance(img, bytes | bytearray):
            bins.append(bytes(img))
            continue
        arr = np.asarray(img)
        if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
            raise ValueError(f"image {i}: expected uint8 (H, W, 3) RGB, got {arr.dtype} {arr.shape}")
        ok, buf = cv2.imencode(".jpg", swap_red_blue(arr), [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise DataError(f"{path}: could not encode image {i}")
        bins.append(buf.tobytes())
    if len(bins) != 2 * len(issame_list):
        raise ValueError(f"{len(bins)} images for {len(issame_list)} pairs (expected {2 * len(issame_list)})")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        pickle.dump((bins, issame_list), f, protocol=pickle.HIGHEST_PROTOCOL)
    tmp.replace(path)
    return path
