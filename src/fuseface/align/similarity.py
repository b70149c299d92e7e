"""5-point similarity alignment to the ArcFace 112x112 template.

Facts (PROTOCOLS.md §5.3 and B §2.2; insightface ``python-package/insightface/utils/face_align.py``
``arcface_dst``; arcface_torch ``eval_ijbc.py``):

* template (112x112) = the 112x96 template shifted by +8 px in x:
  (38.2946, 51.6963), (73.5318, 51.5014), (56.0252, 71.7366), (41.5493, 92.3655), (70.7299, 92.2041),
  in the order left eye, right eye, nose tip, left mouth corner, right mouth corner (image left/right);
* the transform is skimage's ``SimilarityTransform().estimate(landmarks, template)``, i.e. the
  least-squares similarity (Umeyama 1991, "Least-squares estimation of transformation parameters
  between two point patterns", with scaling) mapping the landmarks onto the template;
* the crop is ``cv2.warpAffine(img, M, (112, 112), borderValue=0.0)`` with the default bilinear
  interpolation; ``M`` maps source pixel coordinates to crop pixel coordinates, both in OpenCV's
  convention where integer coordinates are pixel **centres** (pixel (0, 0) covers [-0.5, 0.5]^2);
* with 68 landmarks: eyes = mean(36, 39) and mean(42, 45), nose = 30, mouth corners = 48 and 54.

Umeyama in a few lines: centre both point sets, take the SVD of the cross-covariance
``Σ = dst_c^T src_c / n = U D V^T``; the rotation is ``R = U S V^T`` with ``S = diag(1, det(U V^T))``
(a reflection is never allowed), the scale ``c = trace(D S) / var(src)`` and the translation
``t = mean(dst) - c R mean(src)``. This is what skimage implements (``_umeyama``), written here from
the paper.
"""

from __future__ import annotations

import numpy as np

#: ArcFace 5-point template of the 112 x 112 aligned crop (insightface ``utils/face_align.py``
#: ``arcface_dst``): left eye, right eye, nose tip, left mouth corner, right mouth corner (x, y).
ARCFACE_TEMPLATE_112 = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)


#: Where the MTCNN 5 points (same order) fall in dlib's 150 x 150 face chip (``get_face_chip_details``
#: with ``size=150, padding=0.25``, the crop ``dlib_face_recognition_resnet_model_v1`` was trained on).
#: dlib defines that chip on its own 5 landmarks (eye corners and the point under the nose); these
#: are the MTCNN landmarks mapped through dlib's chip transform, averaged over real photos
#: (``scripts/fit_dlib_template.py``).
DLIB_TEMPLATE_150 = np.array(
    [
        [47.7, 47.1],
        [100.3, 47.1],
        [74.0, 80.0],
        [55.0, 103.0],
        [93.0, 103.0],
    ],
    dtype=np.float64,
)


#: Named 5-point templates: ``name -> (points (5, 2) in the order above, side of the crop they
#: are defined on)``. A model file names its template (``ModelMeta.template``), so every photo path
#: aligns faces the way that model was trained. Add one with :func:`register_template`.
TEMPLATES: dict[str, tuple[np.ndarray, int]] = {
    "arcface": (ARCFACE_TEMPLATE_112, 112),
    "dlib_150": (DLIB_TEMPLATE_150, 150),
}


def register_template(name: str, points: np.ndarray, size: int) -> None:
    """Make ``template=name`` align faces so that the 5 landmarks land on ``points`` of a
    ``size`` x ``size`` crop (left eye, right eye, nose tip, left and right mouth corner)."""
    pts = np.asarray(points, dtype=np.float64)
    if pts.shape != (5, 2):
        raise ValueError(f"template {name!r}: expected (5, 2) points, got {pts.shape}")
    TEMPLATES[name] = (pts, int(size))


def template_points(template: str = "arcface", size: int | None = None) -> np.ndarray:
    """The 5 points of a named template for a ``size`` x ``size`` crop (scaled from the size the
    template is defined on; ``None`` keeps that size)."""
    try:
        points, native = TEMPLATES[template]
    except KeyError:
        raise ValueError(f"unknown alignment template {template!r}; known: {', '.join(sorted(TEMPLATES))}") from None
    if size is None or size == native:
        return points.copy()
    return points * (size / native)


def template_size(template: str = "arcface") -> int:
    """The crop side a named template is defined on (112 for ArcFace)."""
    template_points(template)  # validates the name
    return TEMPLATES[template][1]


def arcface_template(size: int = 112) -> np.ndarray:
    """The ArcFace 5-point template for a ``size`` x ``size`` crop (scaled from 112; 128 -> x8/7)."""
    return template_points("arcface", size)


def umeyama(src: np.ndarray, dst: np.ndarray, estimate_scale: bool = True) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) with ``dst ≈ T(src)``.

    Returns the 3x3 homogeneous matrix; ``[:2]`` is the 2x3 matrix ``cv2.warpAffine`` expects.
    Raises ``ValueError`` for degenerate input (fewer than 2 distinct points, NaNs).
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2:
        raise ValueError(f"expected two (N, 2) point sets of equal shape, got {src.shape} and {dst.shape}")
    if not (np.isfinite(src).all() and np.isfinite(dst).all()):
        raise ValueError("landmarks contain NaN or inf")
    n = src.shape[0]
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    src_var = (src_c**2).sum() / n
    if src_var <= 1e-12:
        raise ValueError("landmarks are degenerate (all points coincide)")
    cov = dst_c.T @ src_c / n
    u, d, vt = np.linalg.svd(cov)
    s = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        s[-1] = -1.0
    rot = u @ np.diag(s) @ vt
    scale = float((d * s).sum() / src_var) if estimate_scale else 1.0
    out = np.eye(3)
    out[:2, :2] = scale * rot
    out[:2, 2] = dst_mean - scale * rot @ src_mean
    return out


def estimate_norm(landmarks: np.ndarray, size: int = 112, template: str = "arcface") -> np.ndarray:
    """The 2x3 matrix mapping 5 image landmarks onto a named template (ArcFace: PROTOCOLS.md §5.3)."""
    lmk = landmarks_68_to_5(landmarks) if np.asarray(landmarks).shape[0] == 68 else np.asarray(landmarks)
    if lmk.shape != (5, 2):
        raise ValueError(f"expected 5 (or 68) landmarks of shape (5, 2), got {np.asarray(landmarks).shape}")
    return umeyama(lmk, template_points(template, size))[:2]


def landmarks_68_to_5(landmarks68: np.ndarray) -> np.ndarray:
    """The 68-to-5 rule: eyes = mean(36, 39) / mean(42, 45), nose = 30, mouth = 48 / 54 (0-based)."""
    p = np.asarray(landmarks68, dtype=np.float64)
    if p.shape != (68, 2):
        raise ValueError(f"expected (68, 2) landmarks, got {p.shape}")
    return np.stack([(p[36] + p[39]) / 2, (p[42] + p[45]) / 2, p[30], p[48], p[54]])


def warp_face(image: np.ndarray, matrix: np.ndarray, size: int = 112) -> np.ndarray:
    """``cv2.warpAffine(image, matrix, (size, size), borderValue=0.0)`` (bilinear, black border)."""
    import cv2

    return cv2.warpAffine(image, np.asarray(matrix, dtype=np.float64), (size, size), borderValue=0.0)


def align_face(image: np.ndarray, landmarks: np.ndarray, size: int = 112, template: str = "arcface") -> np.ndarray:
    """Crop an aligned ``size`` x ``size`` face from ``image`` given its 5 (or 68) landmarks."""
    return warp_face(image, estimate_norm(landmarks, size, template), size)


def transform_points(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 2x3 (or 3x3) affine matrix to (N, 2) points."""
    m = np.asarray(matrix, dtype=np.float64)
    p = np.asarray(points, dtype=np.float64)
    return p @ m[:2, :2].T + m[:2, 2]
