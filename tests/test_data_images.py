"""Image decoding: channel order, odd formats, truncated JPEGs, errors naming the source, real files."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

from fuseface.data import images
from fuseface.data.images import (
    TruncatedImageWarning,
    decode_image,
    encode_jpeg,
    is_truncated_jpeg,
    read_image,
    swap_red_blue,
)
from fuseface.errors import DataError

TRUNCATED = "lfw/lfw-deepfunneled/Zydrunas_Ilgauskas/Zydrunas_Ilgauskas_0001.jpg"


def _png(array: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", array)
    assert ok
    return buf.tobytes()


def test_channel_order_rgb_and_bgr() -> None:
    bgr = np.zeros((4, 5, 3), np.uint8)
    bgr[..., 2] = 255  # red in cv2's BGR layout
    data = _png(bgr)
    rgb = decode_image(data)
    assert rgb.shape == (4, 5, 3) and rgb.dtype == np.uint8
    assert (rgb[..., 0] == 255).all() and (rgb[..., 1:] == 0).all()
    assert np.array_equal(decode_image(data, channel_order="bgr"), bgr)
    with pytest.raises(ValueError, match="channel_order"):
        decode_image(data, channel_order="rbg")


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32, np.float64])
def test_swap_red_blue_reverses_the_channels_exactly(dtype: type) -> None:
    image = (np.random.default_rng(1).random((9, 6, 3)) * 250).astype(dtype)
    for view in (image, image[:, ::2], image[::-1]):
        swapped = swap_red_blue(view)
        assert swapped.dtype == view.dtype and swapped.flags.c_contiguous
        assert np.array_equal(swapped, view[..., ::-1])


def test_grey_16bit_and_alpha_pngs_become_uint8_three_channels() -> None:
    grey = np.arange(30, dtype=np.uint8).reshape(5, 6)
    out = decode_image(_png(grey))
    assert out.shape == (5, 6, 3) and all(np.array_equal(out[..., c], grey) for c in range(3))
    deep = (np.arange(30, dtype=np.uint16).reshape(5, 6) * 2000).astype(np.uint16)
    out16 = decode_image(_png(deep))
    assert out16.dtype == np.uint8 and out16.shape == (5, 6, 3)
    assert np.array_equal(out16[..., 0], (deep >> 8).astype(np.uint8))
    bgra = np.zeros((3, 3, 4), np.uint8)
    bgra[..., 0] = 200
    bgra[..., 3] = 17
    out4 = decode_image(_png(bgra))
    assert out4.shape == (3, 3, 3) and (out4[..., 2] == 200).all()  # blue lands last in RGB


def test_empty_and_garbage_raise_data_error_naming_the_source() -> None:
    with pytest.raises(DataError, match=r"somewhere/x\.jpg: empty"):
        decode_image(b"", source="somewhere/x.jpg")
    with pytest.raises(DataError, match="rec record 9: cannot decode"):
        decode_image(b"definitely not an image", source="rec record 9")


def test_read_image_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"missing\.png"):
        read_image(tmp_path / "missing.png")


def test_truncated_jpeg_decodes_partially_and_warns() -> None:
    rng = np.random.default_rng(0)
    image = cv2.GaussianBlur(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8), (7, 7), 2)
    data = encode_jpeg(image, quality=95)
    assert not is_truncated_jpeg(data)
    cut = data[: len(data) // 2]
    assert is_truncated_jpeg(cut)
    assert is_truncated_jpeg(data[:10])  # ends inside the header segments
    assert not is_truncated_jpeg(data + b"trailer after EOI" * 100)  # camera trailers are not truncation
    assert not is_truncated_jpeg(_png(image))
    with pytest.warns(TruncatedImageWarning, match="cut.jpg: truncated JPEG"):
        out = decode_image(cut, source="cut.jpg")
    assert out.shape == image.shape
    full = decode_image(data)
    # the first rows survive, the missing bottom is filled with libjpeg's mid-grey
    assert np.abs(out[:16].astype(int) - full[:16].astype(int)).max() <= 1
    assert (out[-8:] == 128).mean() > 0.9
    with pytest.raises(DataError, match="truncated JPEG"):
        decode_image(cut, source="cut.jpg", on_truncated="error")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        decode_image(cut, on_truncated="ignore")


def test_pillow_fallback_for_gif_when_cv2_cannot(monkeypatch: pytest.MonkeyPatch) -> None:
    pil_image = pytest.importorskip("PIL.Image")
    rgb = np.zeros((8, 10, 3), np.uint8)
    rgb[:, :5] = (255, 0, 0)
    rgb[:, 5:] = (0, 0, 255)
    buf = io.BytesIO()
    pil_image.fromarray(rgb).save(buf, format="GIF")
    monkeypatch.setattr(images, "_cv2_decode", lambda data: None)  # as OpenCV builds without GIF
    out = decode_image(buf.getvalue(), source="x.gif")
    assert np.array_equal(out, rgb)
    monkeypatch.setattr(images, "_decode_with_pillow", lambda data: None)  # and without Pillow
    with pytest.raises(DataError, match=r"x\.gif: cannot decode"):
        decode_image(buf.getvalue(), source="x.gif")


@pytest.mark.shared_data
def test_lfw_z_folders_all_decode_and_the_truncated_file_is_reported(shared_data: Path) -> None:
    root = shared_data / "lfw" / "lfw-deepfunneled"
    files = sorted(p for d in root.glob("Z*") if d.is_dir() for p in d.iterdir() if p.suffix == ".jpg")
    assert len(files) == 54
    truncated = shared_data / TRUNCATED
    assert truncated in files
    reported = []
    for path in files:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            image = read_image(path)
        assert image.shape == (250, 250, 3) and image.dtype == np.uint8
        if any(issubclass(w.category, TruncatedImageWarning) for w in caught):
            reported.append(path)
    assert reported == [truncated]
    with pytest.raises(DataError, match=r"Zydrunas_Ilgauskas_0001\.jpg: truncated JPEG"):
        read_image(truncated, on_truncated="error")


@pytest.mark.shared_data
def test_yale_gif_orl_pgm_and_32bit_png(shared_data: Path) -> None:
    yale = read_image(shared_data / "yale" / "subject01.glasses")
    assert yale.shape == (243, 320, 3)
    assert np.array_equal(yale[..., 0], yale[..., 1])  # grey source
    orl = read_image(shared_data / "orl" / "s1" / "1.pgm")
    assert orl.shape == (112, 92, 3) and orl.std() > 10
    png32 = shared_data / "smoke" / "face_recognition_examples" / "tests" / "test_images" / "32bit.png"
    rgb = read_image(png32)
    assert rgb.shape[2] == 3
    assert np.array_equal(read_image(png32, channel_order="bgr"), rgb[..., ::-1])
