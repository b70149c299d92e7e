"""Decode image files and buffers into uint8 H x W x 3 arrays, with an explicit channel order.

Decoding goes through OpenCV (``cv2.imdecode`` with ``IMREAD_COLOR``: grey, palette, 16-bit and
4-channel inputs all come out as 8-bit, 3-channel BGR; the alpha channel is dropped, not
composited), then the channels are reordered to ``channel_order`` (``"rgb"`` by default, the
project-wide rule for arrays in memory; ``"bgr"`` for AdaFace / CAFace weights).

Two fallbacks keep real-world files loading:

* **Truncated JPEG** (no end-of-image marker, e.g. LFW's ``Zydrunas_Ilgauskas_0001.jpg``, 5,120
  bytes). libjpeg-turbo inside recent OpenCV refuses the buffer outright (``imdecode`` returns
  ``None``). We append the missing EOI marker ``FF D9`` and decode again: libjpeg then returns
  the rows it has and fills the rest with mid-grey (128), the same pixels Pillow gives with
  ``LOAD_TRUNCATED_IMAGES``. Such an image is *never* an error; it is reported with a
  :class:`TruncatedImageWarning` naming the source (``on_truncated="warn"``, the default), or
  silently (``"ignore"``), or refused with :class:`~fuseface.errors.DataError` (``"error"``,
  what ``fuseface data pack`` uses so that half-grey faces do not enter a training set).
* **Formats OpenCV was built without** (GIF before OpenCV 4.11; Yale's files are extension-less
  GIFs): if cv2 returns ``None`` and Pillow is importable (matplotlib depends on it, so it is in
  every fuseface environment), Pillow decodes the buffer. Without Pillow the error names the file.

Anything else that does not decode (empty file, not an image, garbage) raises
:class:`~fuseface.errors.DataError` naming the source.

This module also holds :class:`SkipTracker`, the bookkeeping both datasets
(:mod:`fuseface.data.recordio`, :mod:`fuseface.data.folder`) use for ``skip_corrupt=True``.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import cv2
import numpy as np
import torch

from fuseface.errors import ConfigError, DataError

CHANNEL_ORDERS = ("rgb", "bgr")

#: File suffixes treated as images when scanning folders (lower case). Other files are sniffed
#: by their first bytes in :func:`looks_like_image`.
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".pgm", ".ppm", ".pbm", ".pnm", ".gif", ".tif", ".tiff", ".webp"}
)

_JPEG_SOI = b"\xff\xd8"
_JPEG_EOI = b"\xff\xd9"
# Leading bytes of the formats we accept in extension-less files (Yale faces are GIFs).
_MAGIC_PREFIXES = (
    _JPEG_SOI,
    b"\x89PNG\r\n\x1a\n",
    b"GIF87a",
    b"GIF89a",
    b"BM",
    b"II*\x00",
    b"MM\x00*",
)


class TruncatedImageWarning(UserWarning):
    """A JPEG ended before its end-of-image marker; the decoded rows are kept, the rest is grey."""


def check_channel_order(channel_order: str) -> str:
    """Return ``channel_order`` lower-cased, or raise :class:`ConfigError` if it is not rgb/bgr."""
    order = str(channel_order).lower()
    if order not in CHANNEL_ORDERS:
        raise ConfigError(f"channel_order must be 'rgb' or 'bgr', got {channel_order!r}")
    return order


def is_truncated_jpeg(buf: bytes) -> bool:
    """True if ``buf`` starts like a JPEG but its image data never reaches an end-of-image marker.

    Walks the marker segments from SOI to the first start-of-scan (SOS, ``FF DA``), skipping
    APPn / EXIF segments (whose embedded thumbnails carry their own EOI), then looks for EOI
    (``FF D9``) after it. Entropy-coded data cannot contain ``FF D9`` (``FF`` bytes are stuffed
    with ``00``), so no EOI after the scan start means the file was cut; bytes appended after a
    complete image (camera trailers, motion-photo videos) do not count as truncation. A file
    that ends inside its header segments is truncated too.
    """
    data = bytes(buf)
    if not data.startswith(_JPEG_SOI):
        return False
    pos = 2
    while True:
        if pos + 4 > len(data):
            return True  # ended inside the header segments
        if data[pos] != 0xFF:
            return False  # not a marker layout we understand: let the decoder decide
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xD8 or 0xD0 <= marker <= 0xD7 or marker == 0x01:  # stand-alone markers
            pos += 2
            continue
        if marker == 0xD9:
            return False  # EOI before any scan: nothing to decode, the decoder will say so
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if marker == 0xDA:
            return data.find(_JPEG_EOI, pos + 2 + length) < 0
        pos += 2 + length


def looks_like_image(path: str | os.PathLike[str]) -> bool:
    """True if the file has an image suffix, or else its first bytes are an image format's magic.

    The sniffing catches Yale's files (``subject01.happy`` is a GIF); text files and other
    suffixes that start with no image magic are not images.
    """
    p = Path(path)
    if p.suffix.lower() in IMAGE_EXTENSIONS:
        return True
    try:
        with open(p, "rb") as handle:
            head = handle.read(16)
    except OSError:
        return False
    is_pnm = len(head) > 2 and head[:1] == b"P" and head[1:2] in b"123456" and head[2:3] in b" \t\r\n"
    return is_pnm or head.startswith(_MAGIC_PREFIXES)


#: dtypes ``cv2.flip`` and ``cv2.cvtColor`` copy natively; other arrays take numpy's strided copy.
CV2_COPY_DTYPES = (np.uint8, np.uint16, np.float32)


def swap_red_blue(image: np.ndarray) -> np.ndarray:
    """H x W x 3 RGB <-> BGR as a new contiguous array (the same values as
    ``np.ascontiguousarray(image[:, :, ::-1])``; through ``cv2.cvtColor`` for uint8 / uint16 /
    float32, which copies 30-40x faster than numpy's reversed-stride copy of a 112x112 face)."""
    if image.ndim == 3 and image.shape[2] == 3 and image.dtype in CV2_COPY_DTYPES:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(image[..., ::-1])


def _decode_with_pillow(data: bytes) -> np.ndarray | None:
    """Decode with Pillow into BGR uint8 (None if Pillow is missing or cannot read it)."""
    try:
        from PIL import Image
    except ImportError:
        return None
    try:
        with Image.open(io.BytesIO(data)) as pil:
            rgb = np.asarray(pil.convert("RGB"))
    except Exception:  # Pillow raises many types for bad data; any of them means "not decodable"
        return None
    return swap_red_blue(rgb)


def _cv2_decode(data: bytes) -> np.ndarray | None:
    array = np.frombuffer(data, dtype=np.uint8)
    image = cv2.imdecode(array, cv2.IMREAD_COLOR)
    if image is None or image.size == 0:
        return None
    return image


def decode_image(
    buf: bytes | bytearray | memoryview | np.ndarray,
    channel_order: str = "rgb",
    source: str = "",
    *,
    on_truncated: str = "warn",
) -> np.ndarray:
    """Decode an encoded image (JPEG, PNG, PGM, GIF, BMP, TIFF, WebP) to uint8 H x W x 3.

    Args:
        buf: the encoded bytes.
        channel_order: ``"rgb"`` (default) or ``"bgr"``: the order of the returned channels.
        source: a name for messages (file path, ``"train.rec record 17"``).
        on_truncated: what to do with a truncated JPEG: ``"warn"`` (decode what is there and emit
            :class:`TruncatedImageWarning`), ``"ignore"`` (decode silently) or ``"error"``
            (raise :class:`DataError`).

    Raises:
        DataError: empty or undecodable data (the message names ``source``).
    """
    order = check_channel_order(channel_order)
    if on_truncated not in ("warn", "ignore", "error"):
        raise ConfigError(f"on_truncated must be 'warn', 'ignore' or 'error', got {on_truncated!r}")
    data = buf.tobytes() if isinstance(buf, np.ndarray) else bytes(buf)
    name = source or "<buffer>"
    if not data:
        raise DataError(f"{name}: empty image data (0 bytes)")

    truncated = is_truncated_jpeg(data)
    if truncated and on_truncated == "error":
        raise DataError(f"{name}: truncated JPEG ({len(data)} bytes, no end-of-image marker)")
    image = _cv2_decode(data)
    if image is None and truncated:
        image = _cv2_decode(data + _JPEG_EOI)
    if image is None:
        image = _decode_with_pillow(data)
    if image is None:
        head = data[:8].hex(" ")
        raise DataError(f"{name}: cannot decode image ({len(data)} bytes, first bytes {head})")
    if truncated and on_truncated == "warn":
        warnings.warn(
            f"{name}: truncated JPEG ({len(data)} bytes); decoded the available rows, the rest is grey",
            TruncatedImageWarning,
            stacklevel=2,
        )
    return swap_red_blue(image) if order == "rgb" else np.ascontiguousarray(image)


#: Photos above this many pixels are refused by :func:`read_image` with ``max_pixels`` left at its
#: default (decoding them would need gigabytes).
MAX_PIXELS = 80_000_000


def pixel_count(path: str | os.PathLike[str]) -> int | None:
    """Width x height from the file header (Pillow reads it lazily), or None when Pillow cannot tell."""
    try:
        from PIL import Image

        Image.MAX_IMAGE_PIXELS = None  # our own limit applies, with a clearer message
        with Image.open(path) as im:
            return int(im.size[0]) * int(im.size[1])
    except Exception:
        return None


def read_image(
    path: str | os.PathLike[str],
    channel_order: str = "rgb",
    *,
    on_truncated: str = "warn",
    max_pixels: int | None = MAX_PIXELS,
) -> np.ndarray:
    """Read and decode an image file to uint8 H x W x 3 (see :func:`decode_image`).

    ``max_pixels``: refuse larger images before decoding them (``None``: no limit).

    Raises:
        DataError: the file is missing, unreadable, empty, too large or not a decodable image.
    """
    if not Path(path).is_file():
        raise DataError(f"{path}: image file not found")
    if max_pixels is not None:
        pixels = pixel_count(path)
        if pixels is not None and pixels > max_pixels:
            raise DataError(f"{path}: image too large ({pixels / 1e6:.0f} megapixels > {max_pixels / 1e6:.0f})")
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read image file ({exc.strerror or exc})") from exc
    return decode_image(data, channel_order, source=str(path), on_truncated=on_truncated)


def encode_jpeg(image: np.ndarray, quality: int = 95, channel_order: str = "rgb") -> bytes:
    """Encode a uint8 H x W x 3 (in ``channel_order``) or H x W grey array as JPEG bytes."""
    order = check_channel_order(channel_order)
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise DataError(f"encode_jpeg expects uint8 pixels, got {array.dtype}")
    if array.ndim == 3 and array.shape[2] == 3:
        bgr = swap_red_blue(array) if order == "rgb" else array
    elif array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 1):
        bgr = array
    else:
        raise DataError(f"encode_jpeg expects H x W x 3 or H x W, got shape {array.shape}")
    ok, encoded = cv2.imencode(".jpg", np.ascontiguousarray(bgr), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise DataError(f"JPEG encoding failed for an array of shape {array.shape}")
    return encoded.tobytes()


class SkipTracker:
    """Which samples were corrupt and replaced, shared by all DataLoader worker processes.

    A flag per sample in a shared-memory tensor: workers set flags (idempotent, so no lock is
    needed) and the main process reads them in :meth:`report`. Used by the datasets'
    ``skip_corrupt=True`` mode: a corrupt sample ``i`` is replaced by the next valid sample
    ``i+1, i+2, ...`` (deterministic), flagged here, and summarised in one warning by
    ``dataset.report_skipped()``, which the training loop calls at the end of each epoch.
    """

    def __init__(self, size: int, source: str) -> None:
        self.source = source
        self.flags = torch.zeros(max(size, 1), dtype=torch.bool).share_memory_()
        self.reasons: dict[int, str] = {}  # filled in the process that saw the error (messages only)

    def mark(self, index: int, reason: str) -> None:
        self.flags[index] = True
        self.reasons.setdefault(index, reason)

    def indices(self) -> list[int]:
        return torch.nonzero(self.flags).flatten().tolist()

    def report(self, reset: bool = True) -> int:
        """Emit one warning summarising the skipped samples; return their count."""
        skipped = self.indices()
        if skipped:
            examples = ", ".join(str(i) for i in skipped[:10]) + (" ..." if len(skipped) > 10 else "")
            first_reason = self.reasons.get(skipped[0])
            detail = f"; first error: {first_reason}" if first_reason else ""
            warnings.warn(
                f"{self.source}: skipped {len(skipped)} corrupt sample(s) (indices {examples}), each replaced by "
                f"the next valid sample{detail}",
                RuntimeWarning,
                stacklevel=3,
            )
        if reset:
            self.flags.zero_()
            self.reasons.clear()
        return len(skipped)
