"""Transforms: exact flip and normalisation, AdaFace augmentation semantics and probabilities, occlusion."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fuseface.data.transforms import (
    ARCFACE_TEMPLATE_112,
    AdaFaceAugment,
    Occlusion,
    apply_transform,
    build_train_transform,
    color_jitter,
    crop_on_zero_canvas,
    hflip,
    low_resolution,
    normalize,
    sample_rng,
    to_tensor,
)


def _face(size: int = 112, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(1, 256, (size, size, 3), dtype=np.uint8)  # no zero pixel: zeros mean "blanked"


def test_hflip_exact() -> None:
    image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    flipped = hflip(image)
    assert flipped.flags.c_contiguous
    for x in range(3):
        assert np.array_equal(flipped[:, x], image[:, 2 - x])
    assert np.array_equal(hflip(flipped), image)


@pytest.mark.parametrize("shape", [(7, 5), (7, 5, 1), (7, 5, 3), (7, 5, 4), (7, 5, 6)])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32, np.float64, np.int64])
def test_hflip_equals_the_reversed_view_for_every_dtype_shape_and_stride(shape: tuple[int, ...], dtype: type) -> None:
    """The cv2 fast path and the numpy fallback give ``image[:, ::-1]`` exactly, with shape and
    dtype kept, also for strided (non-contiguous) inputs."""
    image = (np.random.default_rng(0).random(shape) * 200).astype(dtype)
    for view in (image, image[:, ::2], image[::-1]):
        flipped = hflip(view)
        assert flipped.dtype == view.dtype and flipped.shape == view.shape and flipped.flags.c_contiguous
        assert np.array_equal(flipped, view[:, ::-1])


def test_to_tensor_and_normalize_values() -> None:
    image = np.array([[[0, 255, 51]]], dtype=np.uint8)
    t = to_tensor(image)
    assert t.shape == (3, 1, 1) and t.dtype == torch.float32
    assert t.flatten().tolist() == [0.0, 255.0, 51.0]
    n = normalize(t)
    assert torch.allclose(n.flatten(), torch.tensor([-1.0, 1.0, (51 / 255 - 0.5) / 0.5]))
    assert np.allclose(normalize(np.array([127.5])), [0.0])


def test_crop_keeps_a_window_in_place_on_zero_canvas() -> None:
    image = _face()
    rng = np.random.default_rng(1)
    for _ in range(20):
        out, ratio = crop_on_zero_canvas(image, rng)
        kept = out.any(axis=2)
        ys, xs = np.nonzero(kept)
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        assert kept[y0:y1, x0:x1].all() and kept.sum() == (y1 - y0) * (x1 - x0)  # one rectangle
        assert np.array_equal(out[y0:y1, x0:x1], image[y0:y1, x0:x1])  # pasted at its location
        area = (y1 - y0) * (x1 - x0) / 112**2
        assert 0.2 * 0.75 <= area <= 1.0  # scale 0.2-1 (rounding slack)
        assert ratio == pytest.approx(min(y1 - y0, x1 - x0) / 112)


def test_low_resolution_round_trip_loses_detail_keeps_shape() -> None:
    image = _face()
    out, ratio = low_resolution(image, np.random.default_rng(3))
    assert out.shape == image.shape and out.dtype == np.uint8 and 0.2 <= ratio <= 1.0
    # a blocky upsampled image has far less pixel-to-pixel variation than random noise
    rng = np.random.default_rng(4)
    diffs = []
    for _ in range(10):
        out, ratio = low_resolution(image, rng)
        if ratio < 0.5:
            diffs.append(np.abs(np.diff(out.astype(int), axis=1)).mean())
    assert diffs and max(diffs) < np.abs(np.diff(image.astype(int), axis=1)).mean()


def test_color_jitter_grey_stays_grey_and_brightness_moves() -> None:
    grey = np.full((8, 8, 3), 100, np.uint8)
    out = color_jitter(grey, np.random.default_rng(0))
    assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 1], out[..., 2])  # hue 0
    values = {int(color_jitter(grey, np.random.default_rng(s))[0, 0, 0]) for s in range(20)}
    assert min(values) >= 50 and max(values) <= 150 and len(values) > 5  # factors in [0.5, 1.5]


def test_adaface_probabilities_honoured() -> None:
    image = _face(16)
    aug = AdaFaceAugment(crop_p=0.2, lowres_p=0.5, photo_p=0.8, seed=0)
    n = 2000
    counts = np.zeros(3)
    for _ in range(n):
        _, info = aug.apply(image)
        counts += [info["crop_ratio"] < 1.0, info["lowres_ratio"] < 1.0, info["photo"] > 0]
    # 4 standard deviations of a binomial proportion at n = 2000 is < 0.045
    assert np.allclose(counts / n, [0.2, 0.5, 0.8], atol=0.045)
    off = AdaFaceAugment(0.0, 0.0, 0.0, seed=0)
    assert all(np.array_equal(off(image), image) for _ in range(20))


def test_adaface_deterministic_for_a_seed() -> None:
    image = _face(32)
    a = [AdaFaceAugment(0.5, 0.5, 0.5, seed=7)(image) for _ in range(2)]
    assert np.array_equal(a[0], a[1])
    outs1 = [AdaFaceAugment(0.5, 0.5, 0.5)(image, np.random.default_rng(5)) for _ in range(2)]
    assert np.array_equal(outs1[0], outs1[1])


def test_occlusion_blanks_the_named_region_only() -> None:
    image = _face()
    eyes = Occlusion(p=1.0, regions=("eyes",), jitter=0.0, seed=0)
    out, (region, (y0, y1, x0, x1)) = eyes.apply(image)
    assert region == "eyes"
    assert (out[y0:y1, x0:x1] == 0).all()
    mask = np.ones(image.shape[:2], bool)
    mask[y0:y1, x0:x1] = False
    assert np.array_equal(out[mask], image[mask])
    for x, y in ARCFACE_TEMPLATE_112[:2]:  # both eye landmarks are covered
        assert y0 <= y < y1 and x0 <= x < x1
    mouth_out, (_, (my0, my1, mx0, mx1)) = Occlusion(1.0, ("mouth",), jitter=0.0).apply(image)
    for x, y in ARCFACE_TEMPLATE_112[3:]:
        assert my0 <= y < my1 and mx0 <= x < mx1
    assert (mouth_out[int(ARCFACE_TEMPLATE_112[0, 1]), int(ARCFACE_TEMPLATE_112[0, 0])] != 0).all()  # eyes untouched
    # scales with the image size
    _small, (_, (sy0, _sy1, sx0, _sx1)) = Occlusion(1.0, ("eyes",), jitter=0.0).apply(_face(56))
    assert (sy0, sx0) == pytest.approx((y0 / 2, x0 / 2), abs=1)


def test_occlusion_probability_and_regions() -> None:
    occ = Occlusion(p=0.3, seed=1)
    hits = [occ.apply(_face(16))[1] for _ in range(1000)]
    applied = [h for h in hits if h is not None]
    assert abs(len(applied) / 1000 - 0.3) < 0.06
    assert {h[0] for h in applied} == {"eyes", "nose", "mouth", "lower_face", "random"}
    with pytest.raises(ValueError, match="occlusion regions"):
        Occlusion(regions=("ears",))


def test_build_train_transform_output_flip_rate_and_determinism() -> None:
    image = _face(16)
    plain = build_train_transform(flip=False)
    assert torch.allclose(plain(image, np.random.default_rng(0)), normalize(to_tensor(image)))
    flip_only = build_train_transform(flip=True, seed=0)
    flipped = normalize(to_tensor(hflip(image)))
    outcomes = [torch.equal(flip_only(image), flipped) for _ in range(1000)]
    assert abs(np.mean(outcomes) - 0.5) < 0.06
    full = build_train_transform(flip=True, adaface_aug=True, occlusion_p=0.5)
    a = full(image, np.random.default_rng(9))
    b = full(image, np.random.default_rng(9))
    assert a.shape == (3, 16, 16) and torch.equal(a, b)
    assert float(a.min()) >= -1 and float(a.max()) <= 1


def test_apply_transform_conventions_and_sample_rng() -> None:
    image = _face(8)
    assert torch.equal(apply_transform(None, image, 0), normalize(to_tensor(image)))
    assert torch.equal(apply_transform(lambda im: hflip(im), image, 0), normalize(to_tensor(hflip(image))))
    torch.manual_seed(3)
    r1 = sample_rng(5).random()
    torch.manual_seed(3)
    assert sample_rng(5).random() == r1
