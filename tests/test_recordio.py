"""Pure-Python MXNet RecordIO: byte layout, round trip, header semantics, corrupt data, workers."""

from __future__ import annotations

import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader

from fuseface.data.images import encode_jpeg
from fuseface.data.recordio import (
    MAGIC,
    RecordIODataset,
    RecordIOReader,
    RecordIOWriter,
    frame_record,
    pack_record,
    read_framed,
    read_index,
    read_property,
    scan_offsets,
    unpack_record,
)
from fuseface.data.transforms import build_train_transform
from fuseface.errors import DataError

M = struct.pack("<I", MAGIC)


def _images(n: int, seed: int = 0, size: int = 24) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


def _write(root: Path, labels: list[int], size: int = 24) -> list[bytes]:
    """Write encoded JPEGs (kept to compare bytes) with the given labels; returns the payloads."""
    payloads = [encode_jpeg(img) for img in _images(len(labels), size=size)]
    with RecordIOWriter(root) as writer:
        for payload, label in zip(payloads, labels, strict=True):
            writer.write_image(payload, label)
    return payloads


def test_pack_record_matches_mxnet_layout() -> None:
    # mx.recordio.pack: struct 'IfQQ' (flag, label, id, id2); array labels -> flag=len, float32 after
    assert pack_record(7, b"jpg", id=5) == struct.pack("<IfQQ", 0, 7.0, 5, 0) + b"jpg"
    packed = pack_record([3, 0.5], b"xy", id=9)
    assert packed == struct.pack("<IfQQ", 2, 0.0, 9, 0) + np.array([3, 0.5], np.float32).tobytes() + b"xy"
    header, rest = unpack_record(packed)
    assert header.flag == 2 and header.id == 9 and rest == b"xy"
    assert header.label.dtype == np.float32 and header.label.tolist() == [3.0, 0.5]
    with pytest.raises(DataError, match="shorter than the 24-byte IRHeader"):
        unpack_record(b"\x00" * 10, "src")


def test_framing_splits_at_aligned_magic_and_reads_back(tmp_path: Path) -> None:
    data = b"abcd" + M + b"xy" + M
    # dmlc WriteRecord: split at the aligned magic (cflag 1), the unaligned one stays data (cflag 3)
    expected = (
        M + struct.pack("<I", (1 << 29) | 4) + b"abcd" + M + struct.pack("<I", (3 << 29) | 6) + b"xy" + M + b"\0\0"
    )
    assert frame_record(data) == expected
    assert frame_record(b"hello") == M + struct.pack("<I", 5) + b"hello\0\0\0"
    records = [data, b"", M, M + M + b"z", b"q" * 13, b"abcd" + M + b"efgh" + M + b"ij"]
    path = tmp_path / "f.rec"
    offsets = []
    with open(path, "wb") as handle:
        for rec in records:
            offsets.append(handle.tell())
            handle.write(frame_record(rec))
    with open(path, "rb") as handle:
        size = path.stat().st_size
        assert [read_framed(handle, off, size, "f") for off in offsets] == records


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.sampled_from([M, b"a", b"bc", b"\x00" * 4, b"\xce\x0a"]), max_size=12), max_size=6))
def test_framing_round_trip_property(tmp_path_factory: pytest.TempPathFactory, pieces: list[list[bytes]]) -> None:
    records = [b"".join(p) for p in pieces]
    path = tmp_path_factory.mktemp("frames") / "x.rec"
    path.write_bytes(b"".join(frame_record(r) for r in records))
    offsets = scan_offsets(path)
    assert len(offsets) == len(records)
    with open(path, "rb") as handle:
        assert [read_framed(handle, off, path.stat().st_size, "x") for off in offsets] == records


def test_round_trip_bytes_labels_header_and_property(tmp_path: Path) -> None:
    labels = [2, 0, 1, 2, 0, 4]  # not grouped, class 3 has no image
    payloads = _write(tmp_path, labels)
    assert read_property(tmp_path) == (5, 24, 24)
    assert (tmp_path / "property").read_text() == "5,24,24\n"
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob("*.partial"))
    reader = RecordIOReader(tmp_path)
    n, c = len(labels), 5
    assert len(reader) == 1 + n + c
    assert list(read_index(tmp_path / "train.idx")) == reader.keys.tolist() == list(range(1 + n + c))
    # header record 0: flag > 0, label = (id_start, id_end)
    assert reader.header0 is not None and reader.header0.flag == 2
    assert reader.header0.label.tolist() == [n + 1, n + 1 + c]
    assert reader.image_keys.tolist() == list(range(1, n + 1))
    # images are stably sorted by class; identity ranges are half-open key ranges per class
    order = sorted(range(n), key=lambda i: labels[i])
    for key, i in enumerate(order, start=1):
        header, payload = reader.read(key)
        assert payload == payloads[i]
        assert header.label == labels[i] and header.flag == 0 and header.id == key
    assert reader.identity_ranges.tolist() == [[1, 3], [3, 4], [4, 6], [6, 6], [6, 7]]
    dataset = RecordIODataset(tmp_path)
    assert dataset.num_classes == 5
    assert dataset.labels.tolist() == sorted(labels)
    x, y = dataset[0]
    assert x.shape == (3, 24, 24) and x.dtype == torch.float32 and isinstance(y, int)
    assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0


def test_arrays_are_jpeg_encoded_rgb_and_channel_order(tmp_path: Path) -> None:
    image = np.zeros((16, 16, 3), np.uint8)
    image[..., 0] = 250  # red, RGB input
    with RecordIOWriter(tmp_path) as writer:
        writer.write_image(image, 0)
    rgb_image, _ = RecordIODataset(tmp_path).load(0)
    bgr_image, _ = RecordIODataset(tmp_path, channel_order="bgr").load(0)
    assert rgb_image[..., 0].mean() > 240 and rgb_image[..., 2].mean() < 10
    assert np.array_equal(bgr_image, rgb_image[..., ::-1])


def test_array_labels_take_first_element(tmp_path: Path) -> None:
    with RecordIOWriter(tmp_path) as writer:
        writer.write_image(encode_jpeg(_images(1)[0]), [1, 0.25, 7])
        writer.write_image(encode_jpeg(_images(1, seed=1)[0]), np.array([0.0, 3.0]))
    reader = RecordIOReader(tmp_path)
    header, _ = reader.read(2)
    assert header.flag == 3 and header.label.tolist() == [1.0, 0.25, 7.0]
    dataset = RecordIODataset(tmp_path)
    assert dataset.labels.tolist() == [0, 1] and dataset[1][1] == 1


def test_missing_idx_is_rebuilt_by_scanning(tmp_path: Path) -> None:
    _write(tmp_path, [0, 1, 1])
    expected = RecordIODataset(tmp_path).labels.tolist()
    (tmp_path / "train.idx").unlink()
    with pytest.warns(UserWarning, match="rebuilding the index"):
        dataset = RecordIODataset(tmp_path)
    assert dataset.labels.tolist() == expected and len(dataset) == 3


def test_malformed_index_names_the_line(tmp_path: Path) -> None:
    _write(tmp_path, [0, 1])
    idx = tmp_path / "train.idx"
    lines = idx.read_text().splitlines()
    idx.write_text("\n".join([*lines[:2], "", lines[2], "3\toops", *lines[3:]]) + "\n")
    with pytest.raises(DataError, match=r"train\.idx:5: expected 'key<TAB>offset', got '3\\toops'"):
        RecordIOReader(tmp_path)
    idx.write_text("\n".join([*lines[:2], "", *lines[2:]]) + "\n")  # a blank line is fine
    assert RecordIOReader(tmp_path).keys.tolist() == list(range(len(lines)))


def _corrupt_magic(root: Path, key: int) -> None:
    offset = read_index(root / "train.idx")[key]
    with open(root / "train.rec", "r+b") as handle:
        handle.seek(offset)
        handle.write(b"\xde\xad\xbe\xef")


def test_corrupt_record_error_names_index_and_file_and_skip_counts(tmp_path: Path) -> None:
    _write(tmp_path, [0, 0, 1, 1, 2, 2])
    dataset = RecordIODataset(tmp_path)
    _corrupt_magic(tmp_path, 3)
    with pytest.raises(DataError, match=r"train\.rec record 3: bad magic 0xefbeadde"):
        dataset[2]
    skipping = RecordIODataset(tmp_path, skip_corrupt=True)
    x, y = skipping[2]  # replaced by the next valid sample (key 4, class 1)
    assert torch.equal(x, dataset[3][0]) and y == 1
    for i in range(len(skipping)):
        skipping[i]
    with pytest.warns(RuntimeWarning, match=r"skipped 1 corrupt sample\(s\) \(indices 2\)"):
        assert skipping.report_skipped() == 1
    assert skipping.report_skipped() == 0  # reset after reporting


def test_undecodable_image_record(tmp_path: Path) -> None:
    with RecordIOWriter(tmp_path) as writer:
        writer.write_image(encode_jpeg(_images(1)[0]), 0)
        writer.write_image(b"not a jpeg at all", 1)
    dataset = RecordIODataset(tmp_path)
    with pytest.raises(DataError, match=r"train\.rec record 2: cannot decode image"):
        dataset[1]
    skipping = RecordIODataset(tmp_path, skip_corrupt=True)
    assert skipping[1][1] == 0  # wrapped to the first sample
    assert skipping.skipped.indices() == [1]


def test_truncated_file(tmp_path: Path) -> None:
    _write(tmp_path, [0, 0, 1, 1, 2, 2])
    offsets = read_index(tmp_path / "train.idx")
    cut = offsets[5] + 20  # in the middle of record 5
    data = (tmp_path / "train.rec").read_bytes()
    (tmp_path / "train.rec").write_bytes(data[:cut])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # identity records are gone: labels come from the image headers
        with pytest.raises(DataError, match=r"train\.rec record 5: truncated file"):
            RecordIODataset(tmp_path)
        dataset = RecordIODataset(tmp_path, skip_corrupt=True)
    assert dataset.labels.tolist() == [0, 0, 1, 1, -1, -1]
    seen = [dataset[i][1] for i in range(len(dataset))]
    assert seen == [0, 0, 1, 1, 0, 0]  # records 5 and 6 replaced by wrapping to the start
    with pytest.warns(RuntimeWarning, match=r"skipped 2 corrupt sample\(s\)"):
        assert dataset.report_skipped() == 2


def test_dataloader_two_workers_labels_skips_and_reproducible_augmentation(tmp_path: Path) -> None:
    labels = [i // 3 for i in range(12)]
    _write(tmp_path, labels, size=32)
    _corrupt_magic(tmp_path, 7)
    transform = build_train_transform(flip=True, adaface_aug=True, occlusion_p=0.5)
    dataset = RecordIODataset(tmp_path, transform=transform, skip_corrupt=True)

    def run() -> tuple[torch.Tensor, torch.Tensor]:
        torch.manual_seed(123)
        loader = DataLoader(dataset, batch_size=4, num_workers=2, shuffle=True)
        xs, ys = zip(*loader, strict=True)
        return torch.cat(xs), torch.cat(ys)

    x1, y1 = run()
    x2, y2 = run()
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert x1.shape == (12, 3, 32, 32)
    expected = sorted(labels)
    expected[6] = expected[7]  # sample 6 (key 7) is replaced by sample 7
    assert sorted(y1.tolist()) == sorted(expected)
    # the worker processes flagged the corrupt sample in shared memory; the main process reports it
    with pytest.warns(RuntimeWarning, match=r"skipped 1 corrupt sample\(s\) \(indices 6\)"):
        assert dataset.report_skipped() == 1
