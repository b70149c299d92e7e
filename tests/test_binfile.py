""".bin verification sets: round trip, the restricted unpickler, legacy encodings, bad files."""

from __future__ import annotations

import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest

from fuseface.data.binfile import load_bin, resize_short, save_bin
from fuseface.errors import DataError


def _images(n: int, size: int = 112, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (n, size // 8, size // 8, 3), dtype=np.uint8)
    return np.stack([cv2.resize(b, (size, size), interpolation=cv2.INTER_NEAREST) for b in base])


def test_round_trip_rgb_and_labels(tmp_path: Path) -> None:
    imgs = _images(6)
    imgs[0, :, :, 0], imgs[0, :, :, 1:] = 255, 0  # pure red stays red (RGB order)
    issame = [True, False, True]
    path = save_bin(tmp_path / "s.bin", imgs, issame, quality=100)
    out, same = load_bin(path)
    assert out.shape == (6, 112, 112, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(same, issame)
    assert out[0, ..., 0].mean() > 250 and out[0, ..., 1:].mean() < 5
    assert np.abs(out.astype(int) - imgs).mean() < 10  # JPEG, chroma subsampled
    bins, _ = pickle.loads(path.read_bytes())  # our own file: decoding equals cv2's, BGR -> RGB
    np.testing.assert_array_equal(out[3], cv2.imdecode(np.frombuffer(bins[3], np.uint8), cv2.IMREAD_COLOR)[..., ::-1])


def test_resize_short_like_mxnet(tmp_path: Path) -> None:
    imgs = _images(2, size=128)
    out, _ = load_bin(save_bin(tmp_path / "b.bin", imgs, [True]))
    assert out.shape == (2, 112, 112, 3)
    assert resize_short(np.zeros((100, 50, 3), np.uint8), 112).shape == (224, 112, 3)


def test_numpy_and_python2_style_records_are_accepted(tmp_path: Path) -> None:
    imgs = _images(2)
    bufs = [cv2.imencode(".png", np.ascontiguousarray(i[..., ::-1]))[1] for i in imgs]  # numpy uint8 arrays
    path = tmp_path / "np.bin"
    path.write_bytes(pickle.dumps((bufs, [np.bool_(True)]), protocol=2))
    out, same = load_bin(path)
    np.testing.assert_array_equal(out, imgs)  # PNG is lossless
    assert same.tolist() == [True]
    path2 = tmp_path / "p2.bin"  # protocol 2 stores bytes through _codecs.encode
    path2.write_bytes(pickle.dumps(([b.tobytes() for b in bufs], [False]), protocol=2))
    out2, same2 = load_bin(path2)
    np.testing.assert_array_equal(out2, imgs)
    assert same2.tolist() == [False]


class _RunsCode:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned > /dev/null",))


def test_restricted_unpickler_refuses_code(tmp_path: Path) -> None:
    path = tmp_path / "evil.bin"
    path.write_bytes(pickle.dumps(([_RunsCode()], [True])))
    with pytest.raises(DataError, match=r"evil.bin: refused to unpickle global '(posix|os|nt)\.system'"):
        load_bin(path)


def test_bad_files_are_reported(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        load_bin(tmp_path / "missing.bin")
    trunc = tmp_path / "trunc.bin"
    trunc.write_bytes(pickle.dumps(([b"x" * 10, b"y"], [True]))[:20])
    with pytest.raises(DataError, match=r"trunc\.bin"):
        load_bin(trunc)
    mismatch = tmp_path / "mismatch.bin"
    mismatch.write_bytes(pickle.dumps(([b"a"], [True, False])))
    with pytest.raises(DataError, match="1 images for 2 pairs"):
        load_bin(mismatch)
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(pickle.dumps(([b"notanimage", b"notanimage"], [True])))
    with pytest.raises(DataError, match=r"garbage\.bin image 0"):
        load_bin(garbage)
