"""Synthetic face generator: determinism, landmarks on the drawn features and through the geometric
transforms, identity vs. variation separation, RecordIO output and verification pairs."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from fuseface.data.synthetic import (
    ARCFACE_TEMPLATE,
    SyntheticFaces,
    generate_recordio,
    verification_pairs,
)


def _lum(rgb: np.ndarray) -> float:
    return float(np.asarray(rgb, dtype=np.float64) @ np.array([0.299, 0.587, 0.114]))


def _pixel(image: np.ndarray, point: np.ndarray) -> np.ndarray:
    x, y = np.round(point).astype(int)
    return image[y, x].astype(np.float64)


def test_same_seed_gives_identical_bytes_in_any_order() -> None:
    a = SyntheticFaces(seed=7)
    b = SyntheticFaces(seed=7)
    img1, lm1 = a.render(3, 2)
    b.render(5, 0)  # other renders in between must not change anything
    img2, lm2 = b.render(3, 2)
    assert img1.dtype == np.uint8 and img1.shape == (112, 112, 3)
    assert lm1.shape == (5, 2)
    assert np.array_equal(img1, img2)
    assert np.array_equal(lm1, lm2)


def test_different_seeds_and_variations_differ() -> None:
    img_a, _ = SyntheticFaces(seed=0).render(1, 0)
    img_b, _ = SyntheticFaces(seed=1).render(1, 0)
    img_c, _ = SyntheticFaces(seed=0).render(1, 1)
    assert np.abs(img_a.astype(int) - img_b.astype(int)).mean() > 5
    assert np.abs(img_a.astype(int) - img_c.astype(int)).mean() > 5


def test_clean_landmarks_sit_near_the_arcface_template() -> None:
    faces = SyntheticFaces(seed=0)
    offsets = np.stack([faces.clean(i)[1] - ARCFACE_TEMPLATE for i in range(30)])
    assert np.abs(offsets).max() < 6.0  # identity offsets of a few pixels
    assert offsets.std(axis=0).mean() > 0.8  # ... that really differ between identities
    # image-left eye is the left one, mouth corners likewise
    lm = faces.clean(0)[1]
    assert lm[0, 0] < lm[2, 0] < lm[1, 0] and lm[3, 0] < lm[4, 0] and lm[0, 1] < lm[2, 1] < lm[3, 1]


@pytest.mark.parametrize(
    "nuisance",
    [
        {},
        {"roll": 25.0},
        {"yaw": -30.0},
        {"scale": 0.9, "shift": (3.0, -2.0)},
        {"expression": 1.0},
        {"deformation": 1.0},
        {"roll": -15.0, "yaw": 20.0, "deformation": 0.7, "expression": 0.8},
    ],
)
def test_landmarks_lie_on_the_drawn_features(nuisance: dict) -> None:
    """Pupils are much darker than the skin; the nose tip and the mouth corners are darker too."""
    faces = SyntheticFaces(seed=3)
    for identity in range(12):
        skin = _lum(faces.identity(identity).skin)
        image, lm = faces.render(identity, 0, preset="none", **nuisance)
        for eye in (0, 1):
            assert _lum(_pixel(image, lm[eye])) < 0.55 * skin + 5, (identity, eye)
        assert _lum(_pixel(image, lm[2])) < 0.92 * skin, (identity, "nose")
        for corner in (3, 4):
            assert _lum(_pixel(image, lm[corner])) < 0.9 * skin, (identity, corner)


def test_landmarks_follow_the_image_content_under_pose() -> None:
    """Undo the pose with the transform estimated from the landmarks: the face comes back."""
    faces = SyntheticFaces(seed=5)
    for identity in range(4):
        ref, lm_ref = faces.render(identity, 0, preset="none")
        moved, lm_moved = faces.render(identity, 0, preset="none", roll=20.0, scale=1.08, shift=(4.0, -3.0))
        # the landmarks moved by exactly that similarity about the template centre
        m = cv2.getRotationMatrix2D((55.5, 55.5), 20.0, 1.08)
        assert np.allclose(lm_moved, lm_ref @ m[:, :2].T + m[:, 2] + [4.0, -3.0], atol=1e-6)
        back_m, _ = cv2.estimateAffinePartial2D(lm_moved.astype(np.float32), lm_ref.astype(np.float32))
        back = cv2.warpAffine(moved, back_m, (112, 112), flags=cv2.INTER_LINEAR)
        face = (slice(40, 96), slice(30, 82))  # eyes, nose, mouth
        err_aligned = np.abs(back[face].astype(int) - ref[face].astype(int)).mean()
        err_unaligned = np.abs(moved[face].astype(int) - ref[face].astype(int)).mean()
        assert err_aligned < 10 and err_aligned < 0.4 * err_unaligned, (identity, err_aligned, err_unaligned)


def test_landmarks_scale_with_image_size() -> None:
    lm112 = SyntheticFaces(seed=0, image_size=112).render(2, 3)[1]
    img64, lm64 = SyntheticFaces(seed=0, image_size=64).render(2, 3)
    assert img64.shape == (64, 64, 3)
    # equal up to the fixed-point inversion of the elastic warp, sampled on a different grid
    assert np.allclose(lm64, (lm112 + 0.5) * 64 / 112 - 0.5, atol=5e-3)


def test_identities_differ_more_than_variations() -> None:
    """Mean pixel distance between two images of one identity < between two identities."""
    faces = SyntheticFaces(seed=0, image_size=56)
    imgs = np.stack([[faces.render(i, v)[0] for v in range(6)] for i in range(10)]).astype(np.float32)
    face = imgs[:, :, 14:50, 10:46].reshape(10, 6, -1)  # central face region
    same, diff = [], []
    for i in range(10):
        for j in range(10):
            for v in range(6):
                for w in range(6):
                    if (i, v) < (j, w):
                        d = float(np.sqrt(np.mean((face[i, v] - face[j, w]) ** 2)))
                        (same if i == j else diff).append(d)
    assert np.mean(same) < 0.85 * np.mean(diff), (np.mean(same), np.mean(diff))


def test_nuisance_controls() -> None:
    faces = SyntheticFaces(seed=1)
    clean, lm = faces.render(4, 1, preset="none")
    occluded, lm_occ = faces.render(4, 1, preset="none", occlusion=0.4)
    assert np.array_equal(lm, lm_occ)  # occlusion hides a region, the geometry is unchanged
    changed = np.any(clean != occluded, axis=2).mean()
    assert 0.1 < changed < 0.7
    blurred, _ = faces.render(4, 1, preset="none", blur=2.5)
    assert np.abs(np.diff(blurred.astype(int), axis=1)).mean() < np.abs(np.diff(clean.astype(int), axis=1)).mean()
    n = faces.nuisance(4, 1, pose=1.0, occlusion=0.2)
    assert n.occlusion == 0.2 and (n.roll != 0 or n.yaw != 0)
    assert faces.nuisance(4, 1, preset="none").as_dict()["blur"] == 0.0
    with pytest.raises(TypeError, match="unknown nuisance"):
        faces.render(0, 0, brightness=3)


def test_default_preset_is_mixed_quality() -> None:
    faces = SyntheticFaces(seed=0)
    draws = [faces.nuisance(i, v) for i in range(20) for v in range(10)]
    frac = {k: np.mean([getattr(d, k) > 0 for d in draws]) for k in ("occlusion", "low_res", "blur", "expression")}
    assert 0.1 < frac["occlusion"] < 0.45 and 0.1 < frac["low_res"] < 0.45 and 0.3 < frac["blur"] < 0.6
    assert max(d.blur for d in draws) > 1.5  # some heavily blurred


def test_generate_recordio_is_readable(tmp_path) -> None:
    from fuseface.data.recordio import RecordIODataset

    out = generate_recordio(tmp_path / "rec", 3, 4, seed=2, first_identity=5, progress=False, image_size=48)
    for name in ("train.rec", "train.idx", "property", "landmarks.npy", "synthetic.json"):
        assert (out / name).is_file(), name
    ds = RecordIODataset(out)
    assert len(ds) == 12 and ds.num_classes == 3
    assert ds.labels.tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]
    x, y = ds[5]
    assert tuple(x.shape) == (3, 48, 48) and y == 1
    assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0
    image, label = ds.load(5)
    expected, lm = SyntheticFaces(seed=2, image_size=48).render(5 + 1, 1)
    assert label == 1
    err = np.abs(image.astype(int) - expected.astype(int)).mean()  # JPEG q95 of the same (noisy) image
    other = np.abs(image.astype(int) - SyntheticFaces(seed=2, image_size=48).render(6, 2)[0].astype(int)).mean()
    assert err < 8 and err < 0.4 * other, (err, other)
    landmarks = np.load(out / "landmarks.npy")
    assert landmarks.shape == (12, 5, 2) and np.allclose(landmarks[5], lm, atol=1e-4)
    meta = json.loads((out / "synthetic.json").read_text())
    assert meta["first_identity"] == 5 and meta["image_size"] == 48


def test_verification_pairs() -> None:
    images, issame = verification_pairs(8, 3, 40, seed=1, image_size=32)
    again, issame2 = verification_pairs(8, 3, 40, seed=1, image_size=32)
    assert images.shape == (80, 32, 32, 3) and images.dtype == np.uint8
    assert issame.dtype == bool and issame.sum() == 20
    assert np.array_equal(images, again) and np.array_equal(issame, issame2)
    for p in np.flatnonzero(issame):  # genuine pairs are two different images
        assert not np.array_equal(images[2 * p], images[2 * p + 1])
    # held-out identities by default: none equals a training identity's image
    train_img = SyntheticFaces(seed=1, image_size=32).render(0, 0)[0]
    assert not any(np.array_equal(train_img, im) for im in images)
