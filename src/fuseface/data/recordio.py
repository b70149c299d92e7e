"""MXNet RecordIO (``train.rec`` / ``train.idx`` / ``property``), read and written in pure Python.

Format (dmlc-core ``src/recordio.cc``, mxnet ``python/mxnet/recordio.py``; PROTOCOLS.md §5.2):

* ``train.idx``: text lines ``key<TAB>byte offset`` into ``train.rec``.
* Each record in ``train.rec`` is one or more *frames*: ``uint32 magic 0xced7230a``,
  ``uint32 lrec`` (upper 3 bits ``cflag``, lower 29 bits the frame length), the frame bytes,
  zero padding to a multiple of 4. A record containing the magic word at a 4-aligned position
  is split there (dmlc's writer): the magic is dropped, frames carry cflag 1 (first), 2
  (middle), 3 (last), and the reader puts the magic back between frames; a whole record has
  cflag 0.
* A record's payload starts with the ``IRHeader`` struct ``'<IfQQ'`` (flag uint32, label
  float32, id uint64, id2 uint64). If ``flag > 0`` the scalar label is unused and ``flag``
  **float32** values follow (``mx.recordio.pack`` uses ``np.asarray(label, dtype=np.float32)``;
  note ANCHORS.md §5 says float64, which is wrong for mxnet's pack), then the encoded image.
* Record 0 is a header: if its flag > 0, ``label = (id_start, id_end)``: image records are keys
  ``1 .. id_start-1`` and records ``id_start .. id_end-1`` are identity records whose label
  ``(first, end)`` is the half-open key range of that identity's images. Otherwise every key
  is an image record.
* ``property``: one line ``num_classes,height,width`` (e.g. ``93431,112,112``).

Our writer groups the images by label when it closes (stable sort, see
:class:`RecordIOWriter`) and writes one identity record per class ``0 .. max_label`` (empty
range for classes without images), so identity record ``id_start + c`` describes class ``c``.
"""

from __future__ import annotations

import contextlib
import os
import struct
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import numpy as np
from torch.utils.data import Dataset

from fuseface.data.images import SkipTracker, check_channel_order, decode_image, encode_jpeg
from fuseface.data.tolerant import SkipCorruptMixin
from fuseface.errors import DataError

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_IR_FORMAT = "<IfQQ"
IR_SIZE = struct.calcsize(_IR_FORMAT)  # 24
_LENGTH_MASK = (1 << 29) - 1
MAX_RECORD_BYTES = 1 << 29


class IRHeader(NamedTuple):
    """mxnet's image-record header. ``label`` is a float, or a float32 array when ``flag > 0``."""

    flag: int
    label: float | np.ndarray
    id: int
    id2: int


# --------------------------------------------------------------------------------------------
# payload: IRHeader + labels + bytes
# --------------------------------------------------------------------------------------------


def pack_record(
    label: float | int | np.ndarray | list[float] | tuple[float, ...], payload: bytes, id: int = 0, id2: int = 0
) -> bytes:
    """``mx.recordio.pack``: a scalar label goes in the header (flag 0); a sequence is stored as
    ``flag = len`` float32 values after the header (the header's label field is then 0)."""
    if isinstance(label, (int, float, np.integer, np.floating)):
        head = struct.pack(_IR_FORMAT, 0, float(label), int(id), int(id2))
        return head + bytes(payload)
    values = np.asarray(label, dtype=np.float32).reshape(-1)
    head = struct.pack(_IR_FORMAT, int(values.size), 0.0, int(id), int(id2))
    return head + values.tobytes() + bytes(payload)


def unpack_record(buf: bytes, source: str = "") -> tuple[IRHeader, bytes]:
    """``mx.recordio.unpack``: split a payload into its :class:`IRHeader` and the remaining bytes."""
    if len(buf) < IR_SIZE:
        raise DataError(f"{source}: record payload is {len(buf)} bytes, shorter than the 24-byte IRHeader")
    flag, label, rid, rid2 = struct.unpack(_IR_FORMAT, buf[:IR_SIZE])
    rest = buf[IR_SIZE:]
    if flag > 0:
        if len(rest) < 4 * flag:
            raise DataError(f"{source}: IRHeader announces {flag} float32 labels but only {len(rest)} bytes follow")
        labels = np.frombuffer(rest, dtype=np.float32, count=flag).copy()
        return IRHeader(flag, labels, rid, rid2), rest[4 * flag :]
    return IRHeader(flag, label, rid, rid2), rest


def class_label(header: IRHeader) -> int:
    """The class id of an image record: the label, or its first element for array labels."""
    label = header.label
    if isinstance(label, np.ndarray):
        return int(label[0])
    return int(label)


# --------------------------------------------------------------------------------------------
# framing: magic + lrec + data + padding
# --------------------------------------------------------------------------------------------


def _lrec(cflag: int, length: int) -> bytes:
    return struct.pack("<I", (cflag << 29) | length)


def frame_record(data: bytes) -> bytes:
    """Frame one record as dmlc's ``RecordIOWriter::WriteRecord`` does (split at aligned magics)."""
    if len(data) >= MAX_RECORD_BYTES:
        raise DataError(f"RecordIO records must be < 2^29 bytes, got {len(data)}")
    parts: list[bytes] = []
    start = 0
    aligned_end = len(data) - len(data) % 4
    pos = data.find(_MAGIC_BYTES, 0, aligned_end)
    while pos != -1:
        if pos % 4 == 0:
            parts.append(_MAGIC_BYTES + _lrec(1 if start == 0 else 2, pos - start) + data[start:pos])
            start = pos + 4
            pos = data.find(_MAGIC_BYTES, start, aligned_end)
        else:
            pos = data.find(_MAGIC_BYTES, pos + 1, aligned_end)
    tail = data[start:]
    parts.append(_MAGIC_BYTES + _lrec(3 if start else 0, len(tail)) + tail + b"\x00" * (-len(tail) % 4))
    return b"".join(parts)


def read_framed(handle: BinaryIO, offset: int, file_size: int, source: str) -> bytes:
    """Read the record starting at ``offset`` (joining continuation frames); DataError if corrupt."""
    chunks: list[bytes] = []
    pos = offset
    while True:
        if pos + 8 > file_size:
            raise DataError(f"{source}: truncated file: frame header at byte {pos} but the file has {file_size} bytes")
        handle.seek(pos)
        head = handle.read(8)
        magic, lrec = struct.unpack("<II", head)
        if magic != MAGIC:
            raise DataError(f"{source}: bad magic 0x{magic:08x} at byte {pos} (expected 0x{MAGIC:08x})")
        cflag, length = lrec >> 29, lrec & _LENGTH_MASK
        if cflag > 3:
            raise DataError(f"{source}: bad continuation flag {cflag} at byte {pos}")
        if pos + 8 + length > file_size:
            raise DataError(
                f"{source}: truncated file: record of {length} bytes at byte {pos} "
                f"runs past the end ({file_size} bytes)"
            )
        data = handle.read(length)
        if len(data) != length:
            raise DataError(f"{source}: short read ({len(data)} of {length} bytes) at byte {pos}")
        chunks.append(data)
        pos += 8 + length + (-length % 4)
        if cflag in (0, 3):
            break
        if not chunks or (cflag == 1 and len(chunks) > 1):
            raise DataError(f"{source}: unexpected start frame inside a split record at byte {pos}")
        chunks.append(_MAGIC_BYTES)
    return b"".join(chunks)


def scan_offsets(rec_path: str | os.PathLike[str]) -> list[int]:
    """Offsets of every record in a ``.rec`` file, by walking its frames (rebuilds a lost ``.idx``)."""
    path = Path(rec_path)
    size = path.stat().st_size
    offsets: list[int] = []
    pos = 0
    in_split = False
    with open(path, "rb") as handle:
        while pos < size:
            handle.seek(pos)
            head = handle.read(8)
            if len(head) < 8:
                raise DataError(f"{path}: truncated file: {len(head)} stray bytes at byte {pos}")
            magic, lrec = struct.unpack("<II", head)
            if magic != MAGIC:
                raise DataError(f"{path}: bad magic 0x{magic:08x} at byte {pos} while scanning")
            cflag, length = lrec >> 29, lrec & _LENGTH_MASK
            if not in_split:
                offsets.append(pos)
            in_split = cflag in (1, 2)
            pos += 8 + length + (-length % 4)
    return offsets


# --------------------------------------------------------------------------------------------
# reader
# --------------------------------------------------------------------------------------------


def _resolve_paths(root: str | os.PathLike[str], prefix: str = "train") -> tuple[Path, Path]:
    root = Path(root)
    if root.suffix == ".rec":
        return root, root.with_suffix(".idx")
    if root.suffix == ".idx":
        return root.with_suffix(".rec"), root
    return root / f"{prefix}.rec", root / f"{prefix}.idx"


def read_index(idx_path: str | os.PathLike[str]) -> dict[int, int]:
    """Parse a ``.idx`` file into ``{key: offset}`` (DataError naming the line if malformed)."""
    keys, offsets = read_index_arrays(idx_path)
    return dict(zip(keys.tolist(), offsets.tolist(), strict=True))


def read_index_arrays(idx_path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """Parse a ``.idx`` file into int64 arrays ``(keys, offsets)`` in file order.

    Fast path: split the whole text at once (a 5 M-line MS1MV3 index parses in seconds and takes
    80 MB, not the ~600 MB of a Python dict). On any irregularity the file is re-read line by line
    to name the bad line in the :class:`DataError`.
    """
    text = Path(idx_path).read_text(encoding="utf-8", errors="replace")
    fields = text.split()
    if len(fields) % 2 == 0 and text.strip().count("\n") + 1 == len(fields) // 2:
        try:
            table = np.array(fields, dtype=np.int64).reshape(-1, 2)
            return table[:, 0].copy(), table[:, 1].copy()
        except (ValueError, OverflowError):
            pass
    keys: list[int] = []
    offsets: list[int] = []
    for line_no, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        try:
            if len(parts) != 2:
                raise ValueError
            keys.append(int(parts[0]))
            offsets.append(int(parts[1]))
        except ValueError:
            raise DataError(f"{idx_path}:{line_no}: expected 'key<TAB>offset', got {line[:60]!r}") from None
    return np.asarray(keys, dtype=np.int64), np.asarray(offsets, dtype=np.int64)


class _KeyIndex:
    """key -> byte offset over two int64 arrays (direct indexing when keys are 0..N-1)."""

    def __init__(self, keys: np.ndarray, offsets: np.ndarray) -> None:
        self.keys = np.asarray(keys, dtype=np.int64)
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.dense = bool(np.array_equal(self.keys, np.arange(len(self.keys))))
        if not self.dense:
            self._order = np.argsort(self.keys, kind="stable")
            self._sorted = self.keys[self._order]

    def get(self, key: int) -> int | None:
        if self.dense:
            return int(self.offsets[key]) if 0 <= key < len(self.offsets) else None
        pos = int(np.searchsorted(self._sorted, key))
        if pos < len(self._sorted) and self._sorted[pos] == key:
            return int(self.offsets[self._order[pos]])
        return None

    def __contains__(self, key: int) -> bool:
        return self.get(key) is not None


class RecordIOReader:
    """Random access to an indexed RecordIO file.

    ``root`` is a folder with ``train.rec`` + ``train.idx`` (or the path of a ``.rec`` with its
    ``.idx`` beside). If the ``.idx`` is missing, offsets are rebuilt by scanning the ``.rec``
    (with a warning). The file handle is opened lazily and re-opened in each process, so a
    reader can be pickled into DataLoader workers.

    Attributes:
        keys: record keys in index order (int64 array).
        header0: the :class:`IRHeader` of record 0 when it is a header record (flag > 0), else None.
        image_keys: int64 array of the keys of image records (``1 .. id_start-1`` with a header, else all keys).
        identity_ranges: ``(num_identities, 2)`` int array of ``(first, end)`` image-key ranges
            from the identity records (empty without a header).
    """

    def __init__(self, root: str | os.PathLike[str], prefix: str = "train") -> None:
        self.rec_path, self.idx_path = _resolve_paths(root, prefix)
        if not self.rec_path.is_file():
            raise DataError(f"{self.rec_path}: RecordIO file not found")
        self.file_size = self.rec_path.stat().st_size
        if self.idx_path.is_file():
            keys, offsets = read_index_arrays(self.idx_path)
        else:
            warnings.warn(f"{self.idx_path} not found; rebuilding the index by scanning {self.rec_path}", stacklevel=2)
            offsets = np.asarray(scan_offsets(self.rec_path), dtype=np.int64)
            keys = np.arange(len(offsets), dtype=np.int64)
        self._offsets = _KeyIndex(keys, offsets)
        self.keys: np.ndarray = self._offsets.keys
        self._handle: BinaryIO | None = None
        self._pid: int | None = None
        self.header0: IRHeader | None = None
        self.identity_ranges = np.zeros((0, 2), dtype=np.int64)
        self.image_keys: np.ndarray = self.keys
        self._read_header_record()

    # --- file handle, reopened per process ------------------------------------------------
    def _file(self) -> BinaryIO:
        if self._handle is None or self._pid != os.getpid():
            self._handle = open(self.rec_path, "rb")  # noqa: SIM115 - kept open for random access
            self._pid = os.getpid()
        return self._handle

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handle"] = None
        state["_pid"] = None
        return state

    def close(self) -> None:
        if self._handle is not None and self._pid == os.getpid():
            self._handle.close()
        self._handle = None

    def __len__(self) -> int:
        return len(self.keys)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    # --- records -------------------------------------------------------------------------
    def _source(self, key: int) -> str:
        return f"{self.rec_path} record {key}"

    def read_raw(self, key: int) -> bytes:
        """The payload bytes of record ``key`` (IRHeader included)."""
        offset = self._offsets.get(key)
        if offset is None:
            raise DataError(f"{self.rec_path}: no record with key {key} in {self.idx_path}")
        return read_framed(self._file(), offset, self.file_size, self._source(key))

    def read(self, key: int) -> tuple[IRHeader, bytes]:
        """``(IRHeader, payload bytes after the header and labels)`` of record ``key``."""
        return unpack_record(self.read_raw(key), self._source(key))

    def read_header(self, key: int) -> IRHeader:
        """Only the IRHeader (and labels) of record ``key``: reads a few bytes when unsplit."""
        offset = self._offsets.get(key)
        if offset is None:
            raise DataError(f"{self.rec_path}: no record with key {key} in {self.idx_path}")
        handle = self._file()
        source = self._source(key)
        if offset + 8 > self.file_size:
            raise DataError(
                f"{source}: truncated file: frame header at byte {offset} but the file has {self.file_size} bytes"
            )
        handle.seek(offset)
        magic, lrec = struct.unpack("<II", handle.read(8))
        if magic != MAGIC:
            raise DataError(f"{source}: bad magic 0x{magic:08x} at byte {offset} (expected 0x{MAGIC:08x})")
        if lrec >> 29 != 0:  # split record: read it whole
            return self.read(key)[0]
        length = lrec & _LENGTH_MASK
        if offset + 8 + length > self.file_size:
            raise DataError(f"{source}: truncated file: record of {length} bytes at byte {offset} runs past the end")
        head = handle.read(min(length, IR_SIZE))
        flag = struct.unpack("<I", head[:4])[0] if len(head) >= 4 else 0
        if flag > 0:
            head += handle.read(min(4 * flag, length - len(head)))
        return unpack_record(head, source)[0]

    def _read_header_record(self) -> None:
        if 0 not in self._offsets:
            return
        header = self.read_header(0)
        if header.flag <= 0 or not isinstance(header.label, np.ndarray) or header.label.size < 2:
            return
        id_start, id_end = int(header.label[0]), int(header.label[1])
        if not (1 <= id_start <= id_end):
            raise DataError(f"{self._source(0)}: header record has invalid identity range ({id_start}, {id_end})")
        self.header0 = header
        self.image_keys = self.keys[(self.keys > 0) & (self.keys < id_start)]
        try:
            ranges = [self.read_header(k).label for k in range(id_start, id_end) if k in self._offsets]
            if ranges:
                table = np.array([np.asarray(r, dtype=np.float64).reshape(-1)[:2] for r in ranges])
                shape_ok = table.ndim == 2 and table.shape[1] == 2
                if not shape_ok or not np.isfinite(table).all() or np.abs(table).max() > 2**53:
                    raise DataError(f"{self._source(id_start)}: identity records hold no valid (start, end) ranges")
        except (DataError, ValueError) as exc:
            warnings.warn(
                f"identity records unreadable ({exc}); labels will be read from the image headers", stacklevel=3
            )
            ranges = []
        if ranges:
            self.identity_ranges = table.astype(np.int64)

    def iter_records(self) -> Iterator[tuple[int, IRHeader, bytes]]:
        for key in self.keys.tolist():
            header, payload = self.read(key)
            yield key, header, payload

    def image_labels(self, strict: bool = True) -> np.ndarray:
        """Class label of every image record, in ``image_keys`` order.

        From the identity ranges when they exist and agree with the image headers (checked on
        the first image of up to 32 identities); otherwise by reading each image's IRHeader.
        An unreadable header raises DataError, or gives -1 when ``strict=False``.
        """
        keys = np.asarray(self.image_keys, dtype=np.int64)
        if len(self.identity_ranges) and len(keys) and np.array_equal(keys, np.arange(1, len(keys) + 1)):
            labels = np.full(len(keys), -1, dtype=np.int64)
            for cls, (first, end) in enumerate(self.identity_ranges):
                labels[first - 1 : end - 1] = cls
            probe = [
                c
                for c in np.linspace(0, len(self.identity_ranges) - 1, 32).astype(int)
                if self.identity_ranges[c, 1] > self.identity_ranges[c, 0]
            ]
            try:
                consistent = (labels >= 0).all() and all(
                    class_label(self.read_header(int(self.identity_ranges[c, 0]))) == c for c in probe
                )
            except DataError:
                consistent = False
            if consistent:
                return labels
        return np.array([self._label_or(int(k), strict) for k in keys], dtype=np.int64)

    def _label_or(self, key: int, strict: bool) -> int:
        try:
            return class_label(self.read_header(key))
        except DataError:
            if strict:
                raise
            return -1


def read_property(root: str | os.PathLike[str]) -> tuple[int, int, int] | None:
    """``(num_classes, height, width)`` from ``root/property``, or None if there is no such file."""
    path = Path(root) / "property"
    if not path.is_file():
        return None
    text = path.read_text().strip()
    try:
        num_classes, height, width = (int(v) for v in text.split(","))
    except ValueError:
        raise DataError(f"{path}: expected 'num_classes,height,width', got {text[:60]!r}") from None
    return num_classes, height, width


# --------------------------------------------------------------------------------------------
# writer
# --------------------------------------------------------------------------------------------


class RecordIOWriter:
    """Write ``train.rec`` / ``train.idx`` / ``property`` into ``out_dir``, insightface style.

    ``write_image(image_or_bytes, label)`` appends one image: a uint8 array (in
    ``channel_order``, RGB by default; JPEG-encoded with ``quality``) or already-encoded bytes
    (stored as they are, so any payload, e.g. feature blobs, works). ``label`` is an int class
    id, or a sequence whose first element is the class id (stored as a float32 label array).

    Images go to a temporary file first. :meth:`close` then assembles the final files: header
    record 0 ``IRHeader(flag=2, label=(id_start, id_end))``, the images **stably sorted by class**
    (so input need not be grouped; record keys ``1..N`` follow that order, and each image's
    header ``id`` is its key), one identity record per class ``0..num_classes-1`` with
    ``label=(first_key, end_key)`` (``num_classes`` = max label + 1, or the constructor's
    ``num_classes`` if larger; classes without images get an empty range), and ``property`` =
    ``num_classes,H,W`` (H, W of the first image). The ``.rec`` / ``.idx`` are written under
    temporary names and renamed, so a crash never leaves a half-written ``train.rec``. Use as a
    context manager, or call :meth:`close` (:meth:`abort` discards everything).
    """

    def __init__(
        self,
        out_dir: str | os.PathLike[str],
        *,
        quality: int = 95,
        channel_order: str = "rgb",
        prefix: str = "train",
        image_size: tuple[int, int] | None = None,
        num_classes: int | None = None,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.quality = int(quality)
        self.channel_order = check_channel_order(channel_order)
        self.prefix = prefix
        self.image_size = image_size
        self.num_classes = num_classes
        self._size_guessed = False
        self._tmp_path = self.out_dir / f".{prefix}.images.tmp"
        self._tmp = open(self._tmp_path, "wb")  # noqa: SIM115 - closed in close()/abort()
        self._entries: list[tuple[int, int, int, Any]] = []  # (class, offset, length, label as given)
        self.closed = False

    def __enter__(self) -> RecordIOWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def __len__(self) -> int:
        return len(self._entries)

    def write_image(
        self, image: np.ndarray | bytes, label: int | float | np.ndarray | list[float], quality: int | None = None
    ) -> int:
        """Append an image (array or encoded bytes) with its label; returns its arrival index."""
        if self.closed:
            raise DataError(f"{self.out_dir}: RecordIOWriter is closed")
        if isinstance(image, (bytes, bytearray, memoryview)):
            payload = bytes(image)
        else:
            array = np.asarray(image)
            if self.image_size is None and array.ndim >= 2:
                self.image_size = (int(array.shape[0]), int(array.shape[1]))
            payload = encode_jpeg(array, self.quality if quality is None else quality, self.channel_order)
        if isinstance(label, (int, float, np.integer, np.floating)):
            cls = int(label)
            stored: Any = float(label)
        else:
            stored = np.asarray(label, dtype=np.float32).reshape(-1)
            if stored.size == 0:
                raise DataError("RecordIOWriter.write_image: empty label array")
            cls = int(stored[0])
        if cls < 0:
            raise DataError(f"RecordIOWriter.write_image: class labels must be >= 0, got {cls}")
        if self.image_size is None and not self._size_guessed:
            self._size_guessed = True
            self._guess_size(payload)
        offset = self._tmp.tell()
        self._tmp.write(payload)
        self._entries.append((cls, offset, len(payload), stored))
        return len(self._entries) - 1

    def _guess_size(self, payload: bytes) -> None:
        try:
            shape = decode_image(payload, source="first image", on_truncated="ignore").shape
            self.image_size = (int(shape[0]), int(shape[1]))
        except DataError:
            pass  # not an image (e.g. a feature blob); property then says 112,112

    def abort(self) -> None:
        """Discard the temporary file; nothing is written."""
        if not self.closed:
            self._tmp.close()
            self._tmp_path.unlink(missing_ok=True)
            self.closed = True

    def close(self) -> Path:
        """Assemble ``train.rec`` / ``train.idx`` / ``property`` (see the class docstring); returns ``out_dir``."""
        if self.closed:
            return self.out_dir
        self._tmp.close()
        order = sorted(range(len(self._entries)), key=lambda i: self._entries[i][0])
        num_classes = max((max(e[0] for e in self._entries) + 1) if self._entries else 0, self.num_classes or 0)
        num_images = len(order)
        id_start = num_images + 1
        id_end = id_start + num_classes
        rec_path = self.out_dir / f"{self.prefix}.rec"
        idx_path = self.out_dir / f"{self.prefix}.idx"
        rec_tmp, idx_tmp = (
            rec_path.with_name(rec_path.name + ".partial"),
            idx_path.with_name(idx_path.name + ".partial"),
        )
        classes = np.array([e[0] for e in self._entries], dtype=np.int64)
        counts = np.bincount(classes, minlength=num_classes) if num_images else np.zeros(num_classes, dtype=np.int64)
        starts = 1 + np.concatenate([[0], np.cumsum(counts)[:-1]]) if num_classes else counts
        try:
            with open(self._tmp_path, "rb") as src, open(rec_tmp, "wb") as rec, open(idx_tmp, "w") as idx:

                def put(key: int, record: bytes) -> None:
                    idx.write(f"{key}\t{rec.tell()}\n")
                    rec.write(frame_record(record))

                put(0, pack_record([id_start, id_end], b""))
                for key, i in enumerate(order, start=1):
                    _, offset, length, stored = self._entries[i]
                    src.seek(offset)
                    put(key, pack_record(stored, src.read(length), id=key))
                for cls in range(num_classes):
                    first, end = int(starts[cls]), int(starts[cls] + counts[cls])
                    put(id_start + cls, pack_record([first, end], b"", id=id_start + cls))
            os.replace(rec_tmp, rec_path)
            os.replace(idx_tmp, idx_path)
        finally:
            rec_tmp.unlink(missing_ok=True)
            idx_tmp.unlink(missing_ok=True)
            self._tmp_path.unlink(missing_ok=True)
            self.closed = True
        height, width = self.image_size or (112, 112)
        (self.out_dir / "property").write_text(f"{num_classes},{height},{width}\n")
        return self.out_dir


# --------------------------------------------------------------------------------------------
# torch dataset
# --------------------------------------------------------------------------------------------


class RecordIODataset(SkipCorruptMixin, Dataset):
    """Images and class labels from an insightface-style RecordIO folder.

    ``dataset[i] -> (float tensor (3, H, W), int label)``: the image is decoded with cv2 in
    ``channel_order`` (RGB by default) and passed to ``transform`` (see
    :func:`fuseface.data.transforms.apply_transform`); without a transform it is normalised
    ``(x / 255 - 0.5) / 0.5``. Attributes: ``num_classes`` (from ``property``, else max label + 1),
    ``labels`` (np.ndarray of int64, one per sample, computed from the headers without decoding).

    Corrupt data (bad magic, bad length, truncated file, undecodable image) raises
    :class:`DataError` naming the record key and file. With ``skip_corrupt=True`` the sample is
    replaced by the next valid one (``i+1, i+2, ...``), flagged, and :meth:`report_skipped`
    (call it at the end of an epoch; the trainer does) emits one warning with the count.
    Truncated JPEGs decode partially with a :class:`~fuseface.data.images.TruncatedImageWarning`.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        transform: Callable[..., Any] | None = None,
        skip_corrupt: bool = False,
        channel_order: str = "rgb",
    ) -> None:
        self.root = Path(root)
        self.reader = RecordIOReader(root)
        self.transform = transform
        self.skip_corrupt = bool(skip_corrupt)
        self.channel_order = check_channel_order(channel_order)
        self.keys = np.asarray(self.reader.image_keys, dtype=np.int64)
        self.labels = self.reader.image_labels(strict=not self.skip_corrupt)
        prop = read_property(self.reader.rec_path.parent)
        self.num_classes = prop[0] if prop else (int(self.labels.max()) + 1 if len(self.labels) else 0)
        self.num_unreadable_labels = int((self.labels < 0).sum())
        self.skipped = SkipTracker(len(self.keys), str(self.reader.rec_path))
        self.source = str(self.reader.rec_path)

    def __len__(self) -> int:
        return len(self.keys)

    def load(self, index: int) -> tuple[np.ndarray, int]:
        """Decoded uint8 image (in ``channel_order``) and label of sample ``index``, no transform."""
        key = int(self.keys[index])
        header, payload = self.reader.read(key)
        image = decode_image(payload, self.channel_order, source=f"{self.reader.rec_path} record {key}")
        return image, class_label(header)


@dataclass
class PackResult:
    """What ``pack_image_folder`` wrote."""

    out_dir: Path
    num_images: int
    num_classes: int
    failures: list[tuple[str, str]] = field(default_factory=list)


def pack_image_folder(
    folder: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    quality: int = 95,
    channel_order: str = "rgb",
    progress: bool = True,
) -> PackResult:
    """Image folder (one sub-folder per identity) -> RecordIO in ``out_dir``.

    Class ids follow the sorted sub-folder names (as :class:`~fuseface.data.folder.ImageFolderDataset`).
    Every image is decoded first: JPEGs that decode cleanly are stored byte for byte; other
    formats are re-encoded as JPEG at ``quality``. ``channel_order="bgr"`` stores the images
    channel-swapped (for pipelines that expect swapped records, e.g. AdaFace-converted data;
    rarely what you want). Unreadable and truncated images are left out and listed, one
    ``path<TAB>reason`` per line, in ``out_dir/pack_failures.txt``; the run goes on.
    """
    from tqdm import tqdm

    from fuseface.data.folder import scan_image_folder

    order = check_channel_order(channel_order)
    classes, samples = scan_image_folder(folder)
    if not samples:
        raise DataError(f"{folder}: no images found (expected one sub-folder of images per identity)")
    out = Path(out_dir)
    failures: list[tuple[str, str]] = []
    written = 0
    with RecordIOWriter(out, quality=quality, channel_order="rgb", num_classes=len(classes)) as writer:
        for path, label in tqdm(samples, desc="pack", unit="img", disable=not progress, dynamic_ncols=True):
            try:
                data = Path(path).read_bytes()
                image = decode_image(data, "rgb", source=str(path), on_truncated="error")
            except (DataError, OSError) as exc:
                failures.append((str(path), str(exc)))
                continue
            if order == "rgb" and data.startswith(b"\xff\xd8"):
                if writer.image_size is None:
                    writer.image_size = (int(image.shape[0]), int(image.shape[1]))
                writer.write_image(data, label)
            else:
                writer.write_image(image[:, :, ::-1] if order == "bgr" else image, label)
            written += 1
    failure_file = out / "pack_failures.txt"
    if failures:
        failure_file.write_text("".join(f"{p}\t{r}\n" for p, r in failures))
    else:
        failure_file.unlink(missing_ok=True)
    return PackResult(out, written, len(classes), failures)
