"""Synthetic faces: a seeded procedural generator of face-like aligned crops with known landmarks.

This is the embedded default data for the demo and the tests (no download, no real people). Every
image is drawn with numpy + cv2 only, in three layers:

1. **Identity** (fixed by ``(seed, identity)``): face oval (width, height, jaw squareness), skin tone,
   eye spacing / height / size / iris colour, brow thickness / arch / tilt, nose length and width,
   mouth width / lip thickness / lip colour, ears, hair style / colour / hairline, beard, and a few
   identity-specific marks (moles, freckles). The 5 landmark positions are the ArcFace 112x112
   template (insightface ``utils/face_align.py`` ``arcface_dst``) plus identity-specific offsets.
2. **Expression and pose drawn into the face** (per image): smile / open mouth and brow raise move
   the mouth corners and brows; yaw shifts each feature horizontally according to a depth value
   (nose tip most, contour least) and compresses widths by ``cos(yaw)``.
3. **Image nuisance** (per image), in order: occluder (drawn on the face, so it moves with it),
   in-plane similarity transform (roll, scale, shift), smooth elastic deformation, illumination
   gradient + brightness + colour cast, Gaussian blur, low-resolution round trip, resize to
   ``image_size``, Gaussian noise. Background clutter is drawn first.

Landmarks (left eye, right eye, nose tip, left mouth corner, right mouth corner; "left" = image
left, the ArcFace convention) are computed alongside the drawing and pushed through the same
geometric transforms, so they are exact by construction (pixel-centre convention of cv2: integer
coordinates are pixel centres). With all nuisance at zero they sit on the template with only the
identity offsets (a few pixels).

Determinism: all randomness comes from ``numpy.random.default_rng`` seeded with
``(seed, identity[, variation])``, so the same arguments give the same bytes on every call and in
any order. Identity ids >= 10_000 are, by the project's convention, held-out evaluation identities.

The default nuisance distribution ("default" preset) is a mixed-quality one: most images are mildly
disturbed, some heavily (blur, occlusion, tiny resolution), so a small network learns the identities
but cannot reach 100 % verification. "none" renders clean frontal faces; "hard" doubles the
strengths.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from fuseface.align.similarity import ARCFACE_TEMPLATE_112

# insightface utils/face_align.py arcface_dst (112x112 aligned crop), image-left eye first.
ARCFACE_TEMPLATE = ARCFACE_TEMPLATE_112
TEMPLATE_SIZE = 112
SUPERSAMPLE = 2  # the drawing canvas is 2 x image_size (antialiased), resized down at the end
HELDOUT_FIRST_IDENTITY = 10_000

# Depth of each part for the yaw model, in template pixels (positive = towards the camera).
_DEPTH = {"contour": 0.0, "eye": 14.0, "brow": 14.0, "nose": 30.0, "mouth": 16.0, "ear": -12.0, "hair": -4.0}

_SKIN_LIGHT = np.array([236.0, 204.0, 180.0])
_SKIN_DARK = np.array([92.0, 62.0, 45.0])
_HAIR_COLOURS = np.array(
    [[25, 20, 18], [60, 40, 28], [110, 75, 45], [200, 165, 110], [150, 70, 35], [160, 160, 160], [235, 230, 215]],
    dtype=np.float64,
)
_IRIS_COLOURS = np.array([[70, 45, 25], [40, 25, 15], [60, 100, 150], [70, 110, 70], [100, 90, 60]], dtype=np.float64)
_HAIR_STYLES = ("bald", "short", "medium", "long", "fringe", "curly")


@dataclass(frozen=True)
class Identity:
    """The fixed appearance of one synthetic person (template-pixel units, RGB 0-255 colours)."""

    landmarks: np.ndarray  # (5, 2) frontal landmark positions in the 112 template
    face_center: tuple[float, float]
    face_axes: tuple[float, float]  # half width, half height of the oval
    jaw_power: float  # superellipse exponent of the lower half (2 = oval, 3.5 = square jaw)
    skin: np.ndarray
    eye_size: tuple[float, float]  # half width, half height of the eye opening
    iris: np.ndarray
    brow_thickness: float
    brow_arch: float
    brow_tilt: float
    brow_gap: float  # distance brow -> eye centre
    nose_width: float
    lip_thickness: float
    lip: np.ndarray
    ear_size: float
    hair_style: str
    hair: np.ndarray
    hairline: float  # y of the hairline
    beard: float  # 0 = none, else darkness of the beard shadow in [0.2, 0.7]
    moles: tuple[tuple[float, float, float], ...]  # (x, y, radius) in face-relative units
    freckles: int


@dataclass
class Nuisance:
    """Concrete per-image nuisance values (template-pixel units where a length is meant).

    Strength fields are in [0, 1]; 0 always means "absent".
    """

    roll: float = 0.0  # in-plane rotation, degrees, positive = counter-clockwise on screen
    yaw: float = 0.0  # horizontal head turn, degrees, positive = face turns to image right
    scale: float = 1.0  # isotropic scale about the template centre
    shift: tuple[float, float] = (0.0, 0.0)  # translation in template pixels
    expression: float = 0.0  # smile / open mouth and brow raise
    illumination: float = 0.0  # lighting gradient, brightness and colour cast
    occlusion: float = 0.0  # fraction of the face box covered by an occluder ("missing region")
    deformation: float = 0.0  # amplitude of a smooth elastic warp (max ~6 template px at 1.0)
    blur: float = 0.0  # Gaussian sigma in template pixels
    low_res: float = 0.0  # side (template pixels) of the low-resolution round trip; 0 = none
    noise: float = 0.0  # Gaussian noise sigma, grey levels
    clutter: float = 0.0  # amount of background clutter

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


NUISANCE_FIELDS = tuple(f.name for f in dataclasses.fields(Nuisance))
PRESETS = ("none", "default", "hard")


def _clip(v: float, lo: float, hi: float) -> float:
    return float(min(max(v, lo), hi))


def sample_nuisance(rng: np.random.Generator, preset: str = "default") -> Nuisance:
    """Draw one image's nuisance from a preset distribution.

    ``"none"``: clean frontal face. ``"default"``: mixed quality (about a quarter of the images
    carry an occluder, a quarter a low-resolution round trip, a tenth a strong blur; pose, light
    and expression always vary). ``"hard"``: the default with strengths doubled.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown nuisance preset {preset!r}; expected one of {PRESETS}")
    # Draw every value even for "none" so that presets consume the generator identically.
    roll = rng.normal(0.0, 8.0)
    yaw = rng.normal(0.0, 14.0)
    scale = rng.uniform(0.92, 1.08)
    shift = rng.normal(0.0, 2.0, size=2)
    expression = rng.uniform(0.0, 1.0) * (rng.random() < 0.6)
    illumination = rng.uniform(0.1, 1.0)
    occlusion = rng.uniform(0.08, 0.3) * (rng.random() < 0.25)
    deformation = rng.uniform(0.1, 0.6) * (rng.random() < 0.5)
    u = rng.random()
    blur = 0.0 if u < 0.55 else rng.uniform(0.4, 1.5) if u < 0.9 else rng.uniform(1.5, 3.5)
    low_res = rng.uniform(14.0, 40.0) * (rng.random() < 0.25)
    noise = rng.uniform(0.0, 8.0)
    clutter = rng.uniform(0.0, 1.0)
    if preset == "none":
        return Nuisance()
    k = 2.0 if preset == "hard" else 1.0
    return Nuisance(
        roll=_clip(roll * k, -40, 40),
        yaw=_clip(yaw * k, -50, 50),
        scale=float(1.0 + (scale - 1.0) * k),
        shift=(float(shift[0] * k), float(shift[1] * k)),
        expression=_clip(expression * k, 0, 1),
        illumination=_clip(illumination * k, 0, 1),
        occlusion=_clip(occlusion * k, 0, 0.6),
        deformation=_clip(deformation * k, 0, 1),
        blur=float(blur * k),
        low_res=float(max(low_res / k, 8.0)) if low_res else 0.0,
        noise=float(noise * k),
        clutter=_clip(clutter * k, 0, 1),
    )


class SyntheticFaces:
    """Seeded renderer of synthetic aligned faces.

    >>> faces = SyntheticFaces(seed=0)
    >>> image, landmarks = faces.render(identity=3, variation=0)          # mixed-quality nuisance
    >>> clean, lm = faces.render(3, 0, preset="none")                      # clean frontal face
    >>> turned, lm = faces.render(3, 0, preset="none", roll=20, yaw=25)    # forced pose

    Args:
        seed: the universe: the same (seed, identity) is the same person.
        image_size: side of the output images; landmarks are scaled to it.
        preset: default nuisance distribution for :meth:`render` (``none``, ``default``, ``hard``).
    """

    def __init__(self, seed: int = 0, image_size: int = 112, preset: str = "default") -> None:
        if image_size < 16:
            raise ValueError(f"image_size must be >= 16, got {image_size}")
        if preset not in PRESETS:
            raise ValueError(f"unknown nuisance preset {preset!r}; expected one of {PRESETS}")
        self.seed = int(seed)
        self.image_size = int(image_size)
        self.preset = preset

    # ------------------------------------------------------------------ identity
    def identity(self, identity: int) -> Identity:
        """The fixed appearance parameters of ``identity``."""
        rng = np.random.default_rng([self.seed, int(identity), 0x1D])
        t = ARCFACE_TEMPLATE
        eye_mid = (t[0] + t[1]) / 2.0
        eye_half = (t[1, 0] - t[0, 0]) / 2.0 + rng.uniform(-3.5, 3.5)
        eye_y = eye_mid[1] + rng.uniform(-3.0, 3.0)
        nose = np.array([t[2, 0] + rng.uniform(-1.0, 1.0), t[2, 1] + rng.uniform(-3.5, 3.5)])
        mouth_half = (t[4, 0] - t[3, 0]) / 2.0 + rng.uniform(-4.0, 4.0)
        mouth_y = (t[3, 1] + t[4, 1]) / 2.0 + rng.uniform(-3.5, 3.0)
        cx = 56.0 + rng.uniform(-1.0, 1.0)
        landmarks = np.array(
            [
                [cx - eye_half, eye_y],
                [cx + eye_half, eye_y + rng.uniform(-0.7, 0.7)],
                nose,
                [cx - mouth_half, mouth_y],
                [cx + mouth_half, mouth_y + rng.uniform(-0.7, 0.7)],
            ]
        )
        skin_t = rng.beta(1.3, 1.3)
        skin = (1 - skin_t) * _SKIN_LIGHT + skin_t * _SKIN_DARK + rng.normal(0, 8, 3) * np.array([1.0, 0.7, 0.7])
        hair = _HAIR_COLOURS[rng.integers(len(_HAIR_COLOURS))] * rng.uniform(0.8, 1.15) + rng.normal(0, 10, 3)
        iris = _IRIS_COLOURS[rng.integers(len(_IRIS_COLOURS))] + rng.normal(0, 10, 3)
        lip = skin * np.array([0.85, 0.55, 0.55]) + rng.normal(0, 10, 3)
        n_moles = int(rng.integers(0, 4))
        moles = tuple(
            (float(rng.uniform(-0.75, 0.75)), float(rng.uniform(-0.3, 0.8)), float(rng.uniform(1.0, 2.2)))
            for _ in range(n_moles)
        )
        return Identity(
            landmarks=landmarks,
            face_center=(cx, float(rng.uniform(58.0, 64.0))),
            face_axes=(float(rng.uniform(33.0, 42.0)), float(rng.uniform(46.0, 56.0))),
            jaw_power=float(rng.uniform(1.8, 3.6)),
            skin=np.clip(skin, 30, 250),
            eye_size=(float(rng.uniform(6.0, 9.5)), float(rng.uniform(2.6, 4.6))),
            iris=np.clip(iris, 5, 200),
            brow_thickness=float(rng.uniform(1.5, 4.5)),
            brow_arch=float(rng.uniform(-0.5, 4.0)),
            brow_tilt=float(rng.uniform(-3.0, 3.0)),
            brow_gap=float(rng.uniform(7.5, 12.0)),
            nose_width=float(rng.uniform(5.0, 11.0)),
            lip_thickness=float(rng.uniform(1.5, 4.5)),
            lip=np.clip(lip, 20, 240),
            ear_size=float(rng.uniform(7.0, 12.0)),
            hair_style=_HAIR_STYLES[int(rng.integers(len(_HAIR_STYLES)))],
            hair=np.clip(hair, 5, 250),
            hairline=float(rng.uniform(12.0, 30.0)),
            beard=float(rng.uniform(0.2, 0.7)) if rng.random() < 0.25 else 0.0,
            moles=moles,
            freckles=int(rng.integers(0, 40)) if rng.random() < 0.2 else 0,
        )

    # ------------------------------------------------------------------ nuisance
    def nuisance(self, identity: int, variation: int, preset: str | None = None, **overrides: Any) -> Nuisance:
        """The nuisance of image ``(identity, variation)``: drawn from ``preset`` then overridden.

        Overrides are :class:`Nuisance` field names with concrete values, or ``pose=s`` (s in
        [0, 1]) which sets roll/yaw/scale/shift to the drawn direction scaled to strength s at
        full range (roll 25 deg, yaw 40 deg, scale +-10 %, shift 4 px).
        """
        rng = np.random.default_rng([self.seed, int(identity), int(variation), 0x7A])
        nz = sample_nuisance(rng, preset or self.preset)
        unknown = set(overrides) - set(NUISANCE_FIELDS) - {"pose"}
        if unknown:
            raise TypeError(f"unknown nuisance keyword(s) {sorted(unknown)}; known: {[*NUISANCE_FIELDS, 'pose']}")
        if "pose" in overrides and overrides["pose"] is not None:
            s = float(overrides["pose"])
            d = np.random.default_rng([self.seed, int(identity), int(variation), 0x90]).uniform(-1, 1, 5)
            nz.roll, nz.yaw, nz.scale = 25.0 * s * d[0], 40.0 * s * d[1], 1.0 + 0.1 * s * d[2]
            nz.shift = (4.0 * s * d[3], 4.0 * s * d[4])
        for key, value in overrides.items():
            if key != "pose" and value is not None:
                setattr(nz, key, tuple(float(v) for v in value) if key == "shift" else float(value))
        return nz

    # ------------------------------------------------------------------ render
    def render(
        self, identity: int, variation: int = 0, preset: str | None = None, **nuisance: Any
    ) -> tuple[np.ndarray, np.ndarray]:
        """Draw image ``variation`` of ``identity``.

        Args:
            identity: person id (>= 10_000 are held-out evaluation identities by convention).
            variation: image index within the identity; selects the nuisance draw.
            preset: nuisance distribution (``none``, ``default``, ``hard``); default: the instance's.
            **nuisance: forced values, see :class:`Nuisance` (``roll``, ``yaw``, ``scale``,
                ``shift``, ``expression``, ``illumination``, ``occlusion``, ``deformation``,
                ``blur``, ``low_res``, ``noise``, ``clutter``) and ``pose`` (a strength).

        Returns:
            ``(image, landmarks)``: uint8 ``(S, S, 3)`` RGB and float64 ``(5, 2)`` (x, y) pixel
            coordinates in the output image.
        """
        ident = self.identity(identity)
        nz = self.nuisance(identity, variation, preset, **nuisance)
        rng = np.random.default_rng([self.seed, int(identity), int(variation), 0x5E])
        return _render(ident, nz, rng, self.image_size)

    def clean(self, identity: int) -> tuple[np.ndarray, np.ndarray]:
        """The identity's clean frontal face (no nuisance at all)."""
        return self.render(identity, 0, preset="none")


# ---------------------------------------------------------------------- drawing primitives
_SHIFT = 4  # cv2 fixed-point bits for sub-pixel drawing
_ONE = 1 << _SHIFT


def _k(img: np.ndarray) -> float:
    """Canvas pixels per template pixel."""
    return img.shape[0] / TEMPLATE_SIZE


def _c(p: np.ndarray, k: float) -> np.ndarray:
    """Template coordinates -> canvas fixed-point integers (pixel-centre convention)."""
    q = (np.asarray(p, dtype=np.float64) + 0.5) * k - 0.5
    return np.round(q * _ONE).astype(np.int32)


def _col(rgb: np.ndarray) -> tuple[float, float, float]:
    v = np.clip(rgb, 0, 255)
    return (float(v[0]), float(v[1]), float(v[2]))


def _poly(img: np.ndarray, pts: np.ndarray, colour: np.ndarray) -> None:
    cv2.fillPoly(img, [_c(pts, _k(img)).reshape(-1, 1, 2)], _col(colour), cv2.LINE_AA, _SHIFT)


def _line(img: np.ndarray, pts: np.ndarray, colour: np.ndarray, thickness: float) -> None:
    th = max(1, round(thickness * _k(img)))
    cv2.polylines(img, [_c(pts, _k(img)).reshape(-1, 1, 2)], False, _col(colour), th, cv2.LINE_AA, _SHIFT)


def _ellipse_pts(cx: float, cy: float, ax: float, ay: float, angle: float = 0.0, n: int = 48) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    x, y = ax * np.cos(t), ay * np.sin(t)
    ca, sa = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    return np.stack([cx + ca * x - sa * y, cy + sa * x + ca * y], axis=1)


class _Yaw:
    """Horizontal head-turn model: x' = cx + (x - cx) cos(yaw) + depth sin(yaw)."""

    def __init__(self, cx: float, yaw_deg: float) -> None:
        self.cx = cx
        self.c = math.cos(math.radians(yaw_deg))
        self.s = math.sin(math.radians(yaw_deg))

    def __call__(self, pts: np.ndarray, part: str) -> np.ndarray:
        p = np.array(pts, dtype=np.float64, copy=True)
        p[..., 0] = self.cx + (p[..., 0] - self.cx) * self.c + _DEPTH[part] * self.s
        return p


def _face_outline(ident: Identity, n: int = 72) -> np.ndarray:
    """Oval upper half, superellipse (squarer jaw) lower half."""
    cx, cy = ident.face_center
    ax, ay = ident.face_axes
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    c, s = np.cos(t), np.sin(t)
    p = np.where(s > 0, 2.0 / ident.jaw_power, 1.0)
    x = cx + ax * np.sign(c) * np.abs(c) ** p
    y = cy + ay * np.sign(s) * np.abs(s) ** p
    return np.stack([x, y], axis=1)


def _draw_background(img: np.ndarray, nz: Nuisance, rng: np.random.Generator) -> None:
    base = rng.uniform(40, 220, 3)
    img[:] = np.clip(base, 0, 255).astype(np.uint8)
    side = TEMPLATE_SIZE
    for _ in range(round(nz.clutter * 12)):
        colour = rng.uniform(0, 255, 3)
        kind = rng.integers(3)
        if kind == 0:
            _line(img, rng.uniform(-10, side + 10, (2, 2)), colour, rng.uniform(1, 4))
        elif kind == 1:
            x, y = rng.uniform(0, side, 2)
            w, h = rng.uniform(5, 30, 2)
            _poly(img, np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]]), colour)
        else:
            _poly(img, _ellipse_pts(*rng.uniform(0, side, 2), *rng.uniform(3, 15, 2)), colour)


def _draw_face(img: np.ndarray, ident: Identity, nz: Nuisance, rng: np.random.Generator) -> np.ndarray:
    """Draw the face on the canvas; return its 5 landmarks in template coordinates."""
    cx, cy = ident.face_center
    ax, ay = ident.face_axes
    yaw = _Yaw(cx, nz.yaw)
    skin = ident.skin
    e = nz.expression
    lm = ident.landmarks.copy()

    # Hair behind the head (long / medium / curly).
    if ident.hair_style in ("long", "medium", "curly"):
        drop = {"long": 1.05, "medium": 0.55, "curly": 0.7}[ident.hair_style]
        back = _ellipse_pts(cx, cy - 4, ax + 7, ay + 6)
        back = back[back[:, 1] < cy + ay * drop]
        back = np.concatenate([back, [[cx + ax + 7, cy + ay * drop], [cx - ax - 7, cy + ay * drop]]])
        _poly(img, yaw(back, "hair"), ident.hair * 0.85)
    # Neck and ears.
    neck = np.array(
        [[cx - ax * 0.45, cy + ay * 0.6], [cx + ax * 0.45, cy + ay * 0.6], [cx + ax * 0.5, 130], [cx - ax * 0.5, 130]]
    )
    _poly(img, yaw(neck, "contour"), skin * 0.8)
    for side in (-1, 1):
        ear = _ellipse_pts(cx + side * (ax - 1), lm[0, 1] + 6, ident.ear_size * 0.45, ident.ear_size)
        _poly(img, yaw(ear, "ear"), skin * 0.9)
    # Face.
    _poly(img, yaw(_face_outline(ident), "contour"), skin)
    if ident.beard:
        jaw = _face_outline(ident)
        jaw = jaw[jaw[:, 1] > lm[2, 1] - 2]
        _poly(img, yaw(jaw, "contour"), skin * (1.0 - ident.beard))
    for _ in range(ident.freckles):
        p = np.array([cx, cy]) + rng.uniform(-0.5, 0.5, 2) * np.array([ax, ay * 0.5])
        _poly(img, _ellipse_pts(*yaw(p, "eye"), 0.6, 0.6, n=8), skin * 0.75)
    for mx, my, r in ident.moles:
        p = np.array([cx + mx * ax, cy + my * ay * 0.6])
        _poly(img, yaw(_ellipse_pts(p[0], p[1], r, r, n=12), "mouth"), skin * 0.35)

    # Eyes: sclera, iris, pupil, upper lid; the landmark is the pupil centre.
    ew, eh = ident.eye_size
    out_lm = np.zeros((5, 2))
    for i in (0, 1):
        ex, ey = lm[i]
        foreshorten = yaw.c
        _poly(img, yaw(_ellipse_pts(ex, ey, ew * 1.15, eh * 1.6), "eye"), skin * 0.85)  # socket shadow
        _poly(img, yaw(_ellipse_pts(ex, ey, ew, eh), "eye"), np.array([240.0, 238.0, 232.0]))
        r = eh * 0.95
        _poly(img, yaw(_ellipse_pts(ex, ey, r * max(foreshorten, 0.4), r), "eye"), ident.iris)
        _poly(img, yaw(_ellipse_pts(ex, ey, r * 0.45 * max(foreshorten, 0.4), r * 0.45), "eye"), np.zeros(3) + 12)
        lid = _ellipse_pts(ex, ey, ew, eh, n=32)
        _line(img, yaw(lid[lid[:, 1] <= ey + 1e-9], "eye"), skin * 0.35, 1.0)
        out_lm[i] = yaw(np.array([ex, ey]), "eye")
        # Brow.
        raise_ = 3.5 * e * (1.0 if nz.expression > 0.5 else 0.5)
        side = -1 if i == 0 else 1
        bx = np.linspace(ex - ew * 1.2, ex + ew * 1.3, 9) if i == 1 else np.linspace(ex - ew * 1.3, ex + ew * 1.2, 9)
        u = (bx - ex) / (ew * 1.25)
        by = ey - ident.brow_gap - raise_ - ident.brow_arch * (1 - u**2) + side * ident.brow_tilt * u * 0.5
        _line(img, yaw(np.stack([bx, by], 1), "brow"), ident.hair * 0.8, ident.brow_thickness)

    # Nose: bridge shadow, nostrils, a darker tip (the landmark).
    nx, ny = lm[2]
    nw = ident.nose_width
    bridge = np.array([[nx - 1.5, lm[0, 1] + 2], [nx - nw * 0.35, ny - 2], [nx, ny + 1]])
    _line(img, yaw(bridge, "nose"), skin * 0.72, 1.2)
    for side in (-1, 1):
        _poly(img, yaw(_ellipse_pts(nx + side * nw * 0.45, ny + 2.5, nw * 0.22, 1.2), "nose"), skin * 0.4)
    _poly(img, yaw(_ellipse_pts(nx, ny, nw * 0.32, 2.6), "nose"), skin * 0.74)
    out_lm[2] = yaw(np.array([nx, ny]), "nose")

    # Mouth: corners move with the expression (smile widens and lifts them, opening drops the
    # lower lip); the corners are the landmarks and lie on the dark mouth line.
    (lx, ly), (rx, ry) = lm[3], lm[4]
    smile = e * 3.0
    lx, rx = lx - e * 2.0, rx + e * 2.0
    ly, ry = ly - smile, ry - smile
    mid_y = (ly + ry) / 2 + smile * 0.6
    open_ = 6.0 * max(0.0, e - 0.5)
    xs = np.linspace(lx, rx, 15)
    u = np.clip((xs - (lx + rx) / 2) / ((rx - lx) / 2), -1.0, 1.0)
    line_y = ly + (ry - ly) * (u + 1) / 2 + (mid_y - (ly + ry) / 2) * (1 - u**2)
    upper = np.stack([xs, line_y - ident.lip_thickness * (1 - u**2) ** 0.7], 1)
    lower = np.stack([xs, line_y + (ident.lip_thickness * 1.2 + open_) * (1 - u**2) ** 0.7], 1)
    _poly(img, yaw(np.concatenate([upper, lower[::-1]]), "mouth"), ident.lip)
    if open_ > 0:
        inner = np.stack([xs, line_y + open_ * (1 - u**2) ** 0.8], 1)
        _poly(img, yaw(np.concatenate([np.stack([xs, line_y], 1), inner[::-1]]), "mouth"), np.zeros(3) + 35)
    _line(img, yaw(np.stack([xs, line_y], 1), "mouth"), ident.lip * 0.4, 1.1)
    out_lm[3] = yaw(np.array([lx, ly]), "mouth")
    out_lm[4] = yaw(np.array([rx, ry]), "mouth")

    # Hair on top / fringe.
    if ident.hair_style != "bald":
        top = _ellipse_pts(cx, cy - 2, ax + 3, ay + 4, n=64)
        cut = ident.hairline if ident.hair_style != "fringe" else lm[0, 1] - ident.brow_gap - 6
        cap = top[top[:, 1] < cut]
        cap = np.concatenate([cap, [[cx + ax * 0.95, cut], [cx - ax * 0.95, cut]]])
        cap = cap[np.argsort(np.arctan2(cap[:, 1] - cy, cap[:, 0] - cx))]
        _poly(img, yaw(cap, "hair"), ident.hair)
        if ident.hair_style == "curly":
            for _ in range(14):
                p = top[rng.integers(len(top))]
                if p[1] < cut + 4:
                    _poly(img, yaw(_ellipse_pts(p[0], p[1], 4.0, 4.0, n=12), "hair"), ident.hair * 1.1)
    return out_lm


def _draw_occluder(img: np.ndarray, lm: np.ndarray, ident: Identity, nz: Nuisance, rng: np.random.Generator) -> None:
    """A "missing region": a patch covering about ``occlusion`` of the face box.

    Kinds: sunglasses band over the eyes, mask over the lower face, or a random rectangle; filled
    with a flat colour or a noise texture.
    """
    ax, ay = ident.face_axes
    area = nz.occlusion * (2 * ax) * (2 * ay)
    kind = rng.integers(3)
    if kind == 0:  # band over the eyes
        h = area / (2 * ax)
        y0 = (lm[0, 1] + lm[1, 1]) / 2 - h / 2
        box = (ident.face_center[0] - ax, y0, 2 * ax, h)
    elif kind == 1:  # lower face
        h = area / (2 * ax)
        box = (ident.face_center[0] - ax, ident.face_center[1] + ay - h, 2 * ax, h)
    else:
        w = min(math.sqrt(area) * rng.uniform(0.6, 1.6), 1.9 * ax)
        h = min(area / w, 1.9 * ay)
        x0 = rng.uniform(ident.face_center[0] - ax, ident.face_center[0] + ax - w)
        y0 = rng.uniform(ident.face_center[1] - ay, ident.face_center[1] + ay - h)
        box = (x0, y0, w, h)
    x, y, w, h = box
    pts = np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]])
    if rng.random() < 0.5:
        _poly(img, pts, rng.uniform(0, 255, 3))
    else:
        mask = np.zeros(img.shape[:2], np.uint8)
        cv2.fillPoly(mask, [_c(pts, _k(img)).reshape(-1, 1, 2)], 255, cv2.LINE_AA, _SHIFT)
        tex = rng.uniform(0, 255, (8, 8, 3)).astype(np.float32)
        tex = cv2.resize(tex, img.shape[1::-1], interpolation=cv2.INTER_CUBIC)
        a = mask[..., None].astype(np.float32) / 255.0
        img[:] = np.clip(img * (1 - a) + tex * a, 0, 255).astype(np.uint8)


def _similarity(nz: Nuisance) -> np.ndarray:
    """2x3 similarity about the template centre, in template coordinates."""
    centre = (TEMPLATE_SIZE - 1) / 2.0
    m = cv2.getRotationMatrix2D((centre, centre), nz.roll, nz.scale)
    m[:, 2] += np.asarray(nz.shift, dtype=np.float64)
    return m


def _to_canvas_matrix(m: np.ndarray, k: float) -> np.ndarray:
    """Conjugate a template-space affine map into canvas pixels (x_c = (x + 0.5) k - 0.5)."""
    a = np.array([[k, 0, 0.5 * k - 0.5], [0, k, 0.5 * k - 0.5], [0, 0, 1]])
    full = np.vstack([m, [0, 0, 1]])
    return (a @ full @ np.linalg.inv(a))[:2]


def smooth_displacement_field(shape: tuple[int, int], amplitude: float, rng: np.random.Generator) -> np.ndarray:
    """Smooth displacement field (canvas pixels), shape (H, W, 2): a 4x4 random grid, bicubic."""
    coarse = rng.uniform(-1, 1, (4, 4, 2)).astype(np.float32)
    field = cv2.resize(coarse, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)
    return field * np.float32(amplitude)


def _render(ident: Identity, nz: Nuisance, rng: np.random.Generator, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    side = image_size * SUPERSAMPLE
    k = side / TEMPLATE_SIZE
    canvas = np.zeros((side, side, 3), np.uint8)
    _draw_background(canvas, nz, rng)
    lm = _draw_face(canvas, ident, nz, rng)
    if nz.occlusion > 0:
        _draw_occluder(canvas, lm, ident, nz, rng)

    # Geometry: in-plane similarity (roll, scale, shift).
    m = _similarity(nz)
    if not np.allclose(m, [[1, 0, 0], [0, 1, 0]]):
        canvas = cv2.warpAffine(
            canvas, _to_canvas_matrix(m, k), (side, side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101
        )
        lm = lm @ m[:, :2].T + m[:, 2]
    # Elastic deformation: output(p) = input(p + d(p)); a landmark L moves to the p with p + d(p) = L,
    # found by fixed-point iteration (d is smooth and small, so it contracts quickly).
    if nz.deformation > 0:
        d = smooth_displacement_field((side, side), 6.0 * nz.deformation * k, rng)
        gx = np.arange(side, dtype=np.float32)
        canvas = cv2.remap(
            canvas,
            gx[None, :] + d[..., 0],
            gx[:, None] + d[..., 1],
            cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REFLECT101,
        )
        lm_c = (lm + 0.5) * k - 0.5
        p = lm_c.copy()
        for _ in range(12):
            p = lm_c - _bilinear(d, p)
        lm = (p + 0.5) / k - 0.5

    img = canvas.astype(np.float32)
    if nz.illumination > 0:
        a = nz.illumination
        theta = rng.uniform(0, 2 * np.pi)
        g = np.linspace(-1.0, 1.0, side, dtype=np.float32)
        ramp = np.float32(np.cos(theta)) * g[None, :] + np.float32(np.sin(theta)) * g[:, None]
        gain = 1.0 + np.float32(0.55 * a) * ramp
        brightness = math.exp(rng.normal(0, 0.25 * a))
        cast = (brightness * (1.0 + rng.normal(0, 0.08 * a, 3))).astype(np.float32)
        img *= gain[..., None]
        img *= cast
    if nz.blur > 0:
        img = cv2.GaussianBlur(img, (0, 0), nz.blur * k)
    if nz.low_res > 0:
        small = max(4, round(nz.low_res * image_size / TEMPLATE_SIZE))
        img = cv2.resize(img, (small, small), interpolation=cv2.INTER_AREA)
        interp = (cv2.INTER_NEAREST, cv2.INTER_LINEAR, cv2.INTER_CUBIC)[int(rng.integers(3))]
        img = cv2.resize(img, (side, side), interpolation=interp)
    img = cv2.resize(img, (image_size, image_size), interpolation=cv2.INTER_AREA)
    if nz.noise > 0:
        img = img + rng.normal(0, nz.noise, img.shape).astype(np.float32)
    out = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    lm_out = (lm + 0.5) * (image_size / TEMPLATE_SIZE) - 0.5
    return out, lm_out


def _bilinear(field: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Sample an (H, W, 2) field at float (x, y) points with bilinear interpolation."""
    h, w = field.shape[:2]
    x = np.clip(pts[:, 0], 0, w - 1.001)
    y = np.clip(pts[:, 1], 0, h - 1.001)
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    return (
        field[y0, x0] * (1 - fx) * (1 - fy)
        + field[y0, x0 + 1] * fx * (1 - fy)
        + field[y0 + 1, x0] * (1 - fx) * fy
        + field[y0 + 1, x0 + 1] * fx * fy
    )


# ---------------------------------------------------------------------- datasets
def iter_images(
    num_identities: int,
    images_per_identity: int,
    seed: int = 0,
    first_identity: int = 0,
    nuisance: str = "default",
    image_size: int = 112,
) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
    """Yield ``(label, identity, image, landmarks)`` identity by identity (label = 0-based index)."""
    faces = SyntheticFaces(seed=seed, image_size=image_size, preset=nuisance)
    for label in range(num_identities):
        ident = first_identity + label
        for v in range(images_per_identity):
            image, lm = faces.render(ident, v)
            yield label, ident, image, lm


def generate_recordio(
    out_dir: str | Path,
    num_identities: int,
    images_per_identity: int,
    seed: int = 0,
    first_identity: int = 0,
    nuisance: str = "default",
    progress: bool = True,
    image_size: int = 112,
) -> Path:
    """Render a synthetic training set straight into an insightface RecordIO folder.

    Writes ``train.rec`` / ``train.idx`` / ``property`` through
    :class:`fuseface.data.recordio.RecordIOWriter` (labels 0..num_identities-1, identity by
    identity), ``landmarks.npy`` (N, 5, 2) float32 in record order, and ``synthetic.json`` with the
    generation parameters (identity id of each label = ``first_identity + label``).

    Returns the output folder.
    """
    from tqdm.auto import tqdm

    from fuseface.data.recordio import RecordIOWriter

    if num_identities < 1 or images_per_identity < 1:
        raise ValueError("num_identities and images_per_identity must be >= 1")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    total = num_identities * images_per_identity
    landmarks = np.zeros((total, 5, 2), np.float32)
    writer = RecordIOWriter(out)
    try:
        stream = iter_images(num_identities, images_per_identity, seed, first_identity, nuisance, image_size)
        bar = tqdm(stream, total=total, desc="synthetic faces", unit="img", disable=not progress, leave=False)
        for i, (label, _ident, image, lm) in enumerate(bar):
            writer.write_image(image, label)
            landmarks[i] = lm
    finally:
        writer.close()
    np.save(out / "landmarks.npy", landmarks)
    meta = {
        "generator": "fuseface.data.synthetic",
        "seed": seed,
        "first_identity": first_identity,
        "num_identities": num_identities,
        "images_per_identity": images_per_identity,
        "nuisance": nuisance,
        "image_size": image_size,
    }
    (out / "synthetic.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out


def verification_pairs(
    num_identities: int,
    images_per_identity: int,
    num_pairs: int,
    seed: int = 0,
    first_identity: int = HELDOUT_FIRST_IDENTITY,
    nuisance: str = "default",
    image_size: int = 112,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """A verification set on (by default held-out) synthetic identities, in the ``.bin`` layout.

    Half the pairs are genuine (two different images of one identity), half impostor (images of
    two different identities), in a seeded random order. Images are drawn from a pool of
    ``images_per_identity`` variations per identity.

    Returns ``(images, issame)``: uint8 ``(2P, S, S, 3)`` RGB with pair ``i`` at rows ``2i`` and
    ``2i + 1``, and bool ``(P,)``.
    """
    from tqdm.auto import tqdm

    if num_identities < 2 or images_per_identity < 2:
        raise ValueError("verification_pairs needs >= 2 identities and >= 2 images per identity")
    rng = np.random.default_rng([seed, 0x9A125])
    issame = np.zeros(num_pairs, bool)
    issame[: num_pairs // 2 + num_pairs % 2] = True
    rng.shuffle(issame)
    keys: list[tuple[int, int]] = []
    for same in issame:
        if same:
            ident = int(rng.integers(num_identities))
            v1, v2 = rng.choice(images_per_identity, 2, replace=False)
            keys += [(ident, int(v1)), (ident, int(v2))]
        else:
            a, b = rng.choice(num_identities, 2, replace=False)
            keys += [(int(a), int(rng.integers(images_per_identity))), (int(b), int(rng.integers(images_per_identity)))]
    faces = SyntheticFaces(seed=seed, image_size=image_size, preset=nuisance)
    cache: dict[tuple[int, int], np.ndarray] = {}
    images = np.zeros((len(keys), image_size, image_size, 3), np.uint8)
    for row, key in enumerate(tqdm(keys, desc="verification pairs", unit="img", disable=not progress, leave=False)):
        if key not in cache:
            cache[key] = faces.render(first_identity + key[0], key[1])[0]
        images[row] = cache[key]
    return images, issame
