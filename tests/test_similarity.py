"""5-point similarity alignment: Umeyama exactness, warp conventions, synthetic faces, 68-to-5."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from fuseface.align.similarity import (
    ARCFACE_TEMPLATE_112,
    align_face,
    estimate_norm,
    landmarks_68_to_5,
    transform_points,
    umeyama,
)


def _similarity(scale: float, angle_deg: float, tx: float, ty: float) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    return np.array([[scale * np.cos(a), -scale * np.sin(a), tx], [scale * np.sin(a), scale * np.cos(a), ty]])


@pytest.mark.parametrize("seed", range(5))
def test_umeyama_recovers_a_known_similarity_exactly(seed: int) -> None:
    rng = np.random.default_rng(seed)
    src = rng.uniform(0, 200, size=(5, 2))
    m = _similarity(rng.uniform(0.3, 3), rng.uniform(-180, 180), *rng.uniform(-50, 50, 2))
    est = umeyama(src, transform_points(m, src))
    np.testing.assert_allclose(est[:2], m, atol=1e-9)
    np.testing.assert_allclose(est[2], [0, 0, 1])


def test_umeyama_is_the_least_squares_fit_and_never_reflects() -> None:
    rng = np.random.default_rng(1)
    src = rng.uniform(0, 100, size=(5, 2))
    dst = src * [-1, 1] + rng.normal(0, 0.5, (5, 2))  # a mirror image: best proper similarity, no flip
    est = umeyama(src, dst)
    assert np.linalg.det(est[:2, :2]) > 0
    resid = ((transform_points(est, src) - dst) ** 2).sum()
    for _ in range(50):  # no nearby similarity fits better
        pert = est.copy()
        pert[:2] += rng.normal(0, 1e-3, (2, 3)) * [[1, 1, 10], [1, 1, 10]]
        a, b = (pert[0, 0] + pert[1, 1]) / 2, (pert[1, 0] - pert[0, 1]) / 2
        pert[:2, :2] = [[a, -b], [b, a]]
        assert ((transform_points(pert, src) - dst) ** 2).sum() >= resid - 1e-9


def test_umeyama_rejects_degenerate_points() -> None:
    with pytest.raises(ValueError, match="degenerate"):
        umeyama(np.ones((5, 2)), ARCFACE_TEMPLATE_112)
    with pytest.raises(ValueError, match="NaN"):
        umeyama(np.full((5, 2), np.nan), ARCFACE_TEMPLATE_112)


def test_template_maps_to_itself_and_values_match_protocols() -> None:
    # PROTOCOLS.md §5.3: the 112x96 template shifted by +8 px in x
    src96 = np.array(
        [[30.2946, 51.6963], [65.5318, 51.5014], [48.0252, 71.7366], [33.5493, 92.3655], [62.7299, 92.2041]]
    )
    np.testing.assert_allclose(ARCFACE_TEMPLATE_112, src96 + np.array([8.0, 0.0]))
    np.testing.assert_allclose(estimate_norm(ARCFACE_TEMPLATE_112), np.eye(3)[:2], atol=1e-12)


def test_warp_uses_pixel_centres() -> None:
    """A blob centred on pixel (x, y) lands on M @ (x, y) (integer coordinates = pixel centres)."""
    img = np.zeros((200, 200, 3), np.uint8)
    yy, xx = np.mgrid[0:200, 0:200]
    cx, cy = 83.0, 121.0
    img[..., 0] = (255 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * 3.0**2))).astype(np.uint8)
    m = _similarity(0.5, 30, 50.0, 10.0)
    out = cv2.warpAffine(img, m, (112, 112), borderValue=0.0)[..., 0].astype(np.float64)
    oy, ox = np.mgrid[0:112, 0:112]
    got = np.array([(out * ox).sum(), (out * oy).sum()]) / out.sum()
    np.testing.assert_allclose(got, transform_points(m, [[cx, cy]])[0], atol=0.05)


def test_alignment_exact_on_synthetic_faces() -> None:
    """Move a synthetic face by a known similarity; aligning the moved face gives the same matrix
    (composed with the move) and the same crop as aligning the original."""
    from fuseface.data import synthetic

    faces = synthetic.SyntheticFaces(seed=0)
    rng = np.random.default_rng(0)
    for identity in range(3):
        image, lmk = faces.render(identity, 0, preset="none")
        move = _similarity(rng.uniform(1.5, 2.2), rng.uniform(-25, 25), *rng.uniform(20, 60, 2))
        canvas = cv2.warpAffine(image, move, (320, 320), flags=cv2.INTER_CUBIC, borderValue=0.0)
        moved_lmk = transform_points(move, lmk)
        m_orig = np.vstack([estimate_norm(lmk), [0, 0, 1]])
        m_moved = np.vstack([estimate_norm(moved_lmk), [0, 0, 1]])
        np.testing.assert_allclose(m_moved @ np.vstack([move, [0, 0, 1]]), m_orig, atol=1e-9)
        a, b = align_face(image, lmk), align_face(canvas, moved_lmk)
        inside = (a.sum(-1) > 0) & (b.sum(-1) > 0)
        diff = np.abs(a.astype(float) - b.astype(float))[inside]
        assert diff.mean() < 4.0  # only interpolation differs (two resamplings vs one)
        # the aligned landmarks sit on the template (to the fit's residual)
        resid = transform_points(m_moved, moved_lmk) - ARCFACE_TEMPLATE_112
        assert np.abs(resid).max() < 8.0


def test_68_to_5_rule() -> None:
    pts = np.zeros((68, 2))
    pts[36], pts[39], pts[42], pts[45] = [10, 20], [20, 20], [40, 22], [50, 22]
    pts[30], pts[48], pts[54] = [30, 40], [15, 60], [45, 60]
    np.testing.assert_allclose(landmarks_68_to_5(pts), [[15, 20], [45, 22], [30, 40], [15, 60], [45, 60]])
    np.testing.assert_allclose(estimate_norm(pts), estimate_norm(landmarks_68_to_5(pts)))


def test_matches_skimage() -> None:
    # insightface's face_align.estimate_norm uses skimage's SimilarityTransform (a dev dependency here)
    from skimage import transform

    rng = np.random.default_rng(3)
    lmk = ARCFACE_TEMPLATE_112 * 1.7 + rng.normal(0, 3, (5, 2)) + 40
    if hasattr(transform.SimilarityTransform, "from_estimate"):  # scikit-image >= 0.26
        tform = transform.SimilarityTransform.from_estimate(lmk, ARCFACE_TEMPLATE_112)
    else:
        tform = transform.SimilarityTransform()
        tform.estimate(lmk, ARCFACE_TEMPLATE_112)
    np.testing.assert_allclose(estimate_norm(lmk), tform.params[:2], atol=1e-9)
