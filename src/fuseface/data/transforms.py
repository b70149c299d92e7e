"""Training transforms on uint8 H x W x 3 arrays (cv2 / numpy only, no torchvision).

Conventions:

* A transform receives the image **in the channel order the dataset produced** (``rgb`` by
  default) and never reorders channels; ``channel_order`` only tells colour operations which
  channel is which (saturation jitter uses the ITU-R 601 grey weights).
* Randomness comes from an explicit ``np.random.Generator``. :func:`sample_rng` gives the one the
  datasets pass per sample: derived from the DataLoader's per-epoch base seed and the sample
  index, so the augmentation of sample ``i`` depends on ``torch.manual_seed`` and ``i`` only, not
  on the number of workers or which worker loads it.
* The tensor conversion is :func:`fuseface.ops.to_input_tensor`, the one conversion from uint8
  images to model input: insightface / AdaFace's ``(x / 255 - 0.5) / 0.5`` (METHODS.md §1.1, §1.3).

The AdaFace low-quality augmentations follow AdaFace ``dataset/augmenter.py`` (METHODS.md §1.3):
each of crop, low resolution and photometric is applied independently with its probability
(0.2 each by default), in that order, then the horizontal flip.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import cv2
import numpy as np
import torch

from fuseface.align.similarity import ARCFACE_TEMPLATE_112 as _ARCFACE_TEMPLATE_112
from fuseface.data.images import CV2_COPY_DTYPES, check_channel_order
from fuseface.ops import scale_pixels, to_input_tensor

#: ArcFace 5-point template of the 112 x 112 aligned crop (defined once, in :mod:`fuseface.align.similarity`).
ARCFACE_TEMPLATE_112 = _ARCFACE_TEMPLATE_112

# The five interpolations AdaFace draws from for each of the two resizes of the low-res round trip.
LOWRES_INTERPOLATIONS = (cv2.INTER_NEAREST, cv2.INTER_LINEAR, cv2.INTER_AREA, cv2.INTER_CUBIC, cv2.INTER_LANCZOS4)

Transform = Callable[[np.ndarray, np.random.Generator], Any]


# --------------------------------------------------------------------------------------------
# basic operations
# --------------------------------------------------------------------------------------------


def hflip(image: np.ndarray) -> np.ndarray:
    """Mirror an H x W (x C) array left-right (a contiguous copy, the values of
    ``image[:, ::-1]``; ``cv2.flip`` for uint8 / uint16 / float32 arrays of up to 4 channels,
    50x faster than numpy's reversed-stride copy on a 112x112 face)."""
    if image.dtype in CV2_COPY_DTYPES and image.ndim in (2, 3) and (image.ndim == 2 or image.shape[2] <= 4):
        out = cv2.flip(image, 1)
        return out.reshape(image.shape)  # cv2 drops a trailing channel axis of size 1
    return np.ascontiguousarray(image[:, ::-1])


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 H x W x C (or H x W) array -> float32 tensor C x H x W with the raw 0..255 values.

    Unlike torchvision's ``ToTensor`` this does not divide by 255: :func:`scale_pixels` does the
    whole ``(x / 255 - 0.5) / 0.5`` so the two compose to insightface's input.
    """
    array = np.asarray(image)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1))).float()


#: The former name of :func:`fuseface.ops.scale_pixels` (it scales pixels, it does not L2-normalise).
normalize = scale_pixels


def to_normalized_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 H x W x 3 -> model input tensor 3 x H x W (the datasets' default output), by
    :func:`fuseface.ops.to_input_tensor`. The datasets decode in the model's channel order
    already, so no channel swap happens here; a grey H x W image gives 1 x H x W."""
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[-1] == 3:
        return to_input_tensor(array)
    return scale_pixels(to_tensor(array))


def sample_rng(index: int) -> np.random.Generator:
    """The generator a dataset uses for sample ``index`` in the current epoch.

    In a DataLoader worker, the seed is ``(base_seed, index)`` where ``base_seed`` is the
    DataLoader's per-epoch seed (``worker_info.seed - worker_info.id``), so results do not depend
    on the worker count. In the main process (``num_workers=0``) a fresh base seed is drawn from
    torch's global generator, so ``torch.manual_seed`` makes a run reproducible.
    """
    info = torch.utils.data.get_worker_info()
    if info is not None:
        base = int(info.seed - info.id)
    else:
        base = int(torch.randint(0, 2**62, (1,)).item())
    return np.random.default_rng([base % 2**63, int(index)])


def _rgb_weights(channel_order: str) -> np.ndarray:
    w = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601, as PIL's "L" conversion
    return w if channel_order == "rgb" else w[::-1].copy()


# --------------------------------------------------------------------------------------------
# AdaFace low-quality augmentation
# --------------------------------------------------------------------------------------------


def random_resized_crop_params(
    height: int,
    width: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.2, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """``(top, left, h, w)`` of a random crop, with torchvision ``RandomResizedCrop.get_params`` semantics.

    Ten tries of (area fraction ~ U(scale), log aspect ~ U(log ratio)); if none fits, the central
    crop with the aspect clamped to ``ratio``.
    """
    area = height * width
    log_ratio = (np.log(ratio[0]), np.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = float(np.exp(rng.uniform(log_ratio[0], log_ratio[1])))
        w = round(np.sqrt(target_area * aspect))
        h = round(np.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        h, w = height, round(height * ratio[1])
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def crop_on_zero_canvas(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """AdaFace crop augmentation: keep a random crop (scale 0.2-1) at its place, zero elsewhere.

    Nothing is resized: AdaFace uses only ``RandomResizedCrop.get_params`` and pastes the crop
    back at its location on a black canvas. Returns the image and ``min(h, w) / max(H, W)``
    (AdaFace's ``crop_ratio``).
    """
    height, width = image.shape[:2]
    top, left, h, w = random_resized_crop_params(height, width, rng)
    out = np.zeros_like(image)
    out[top : top + h, left : left + w] = image[top : top + h, left : left + w]
    return out, min(h, w) / max(height, width)


def low_resolution(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """AdaFace low-resolution round trip: shrink to a square of side ``int(r * H)``, r ~ U(0.2, 1),
    with a random cv2 interpolation, then resize back to H x W with another random one.

    Returns the image and ``r``.
    """
    height, width = image.shape[:2]
    side_ratio = float(rng.uniform(0.2, 1.0))
    small_side = max(1, int(side_ratio * height))
    down = LOWRES_INTERPOLATIONS[int(rng.integers(len(LOWRES_INTERPOLATIONS)))]
    small = cv2.resize(image, (small_side, small_side), interpolation=down)
    up = LOWRES_INTERPOLATIONS[int(rng.integers(len(LOWRES_INTERPOLATIONS)))]
    out = cv2.resize(small, (width, height), interpolation=up)
    return out.reshape(image.shape), side_ratio


def color_jitter(
    image: np.ndarray,
    rng: np.random.Generator,
    brightness: float = 0.5,
    contrast: float = 0.5,
    saturation: float = 0.5,
    channel_order: str = "rgb",
) -> np.ndarray:
    """torchvision ``ColorJitter(b, c, s, hue=0)`` semantics on a uint8 H x W x 3 array.

    Each factor ~ U(1 - x, 1 + x), applied in a random order; the result is rounded to uint8 after
    every step (as torchvision does on PIL images). Brightness scales towards black, contrast
    blends with the mean grey level, saturation blends with the grey image.
    """
    weights = _rgb_weights(channel_order)
    factors = {
        "brightness": rng.uniform(1 - brightness, 1 + brightness),
        "contrast": rng.uniform(1 - contrast, 1 + contrast),
        "saturation": rng.uniform(1 - saturation, 1 + saturation),
    }
    order = rng.permutation(3)
    out = image.astype(np.float32)
    for op in order:
        name = ("brightness", "contrast", "saturation")[int(op)]
        f = float(factors[name])
        if name == "brightness":
            out = out * f
        elif name == "contrast":
            grey_mean = float((out @ weights).mean())
            out = f * out + (1 - f) * grey_mean
        else:
            grey = (out @ weights)[:, :, None]
            out = f * out + (1 - f) * grey
        out = np.clip(np.rint(out), 0, 255)
    return out.astype(np.uint8)


@dataclass
class AdaFaceAugment:
    """AdaFace's three low-quality augmentations, each applied with its own probability.

    Order and semantics from AdaFace ``dataset/augmenter.py`` (METHODS.md §1.3): crop pasted on a
    zero canvas (``crop_p``), low-resolution round trip (``lowres_p``), photometric jitter
    0.5 / 0.5 / 0.5, hue 0 (``photo_p``). ``__call__(image, rng=None)`` returns the augmented
    uint8 array; with ``rng=None`` the internal generator seeded by ``seed`` is used.
    """

    crop_p: float = 0.2
    lowres_p: float = 0.2
    photo_p: float = 0.2
    seed: int | None = None
    channel_order: str = "rgb"
    _rng: np.random.Generator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.channel_order = check_channel_order(self.channel_order)
        self._rng = np.random.default_rng(self.seed)

    def apply(self, image: np.ndarray, rng: np.random.Generator | None = None) -> tuple[np.ndarray, dict[str, float]]:
        """Augment and also return what was done: ``crop_ratio``, ``lowres_ratio`` (1 if not applied), ``photo``."""
        rng = self._rng if rng is None else rng
        info = {"crop_ratio": 1.0, "lowres_ratio": 1.0, "photo": 0.0}
        out = image
        if rng.random() < self.crop_p:
            out, info["crop_ratio"] = crop_on_zero_canvas(out, rng)
        if rng.random() < self.lowres_p:
            out, info["lowres_ratio"] = low_resolution(out, rng)
        if rng.random() < self.photo_p:
            out = color_jitter(out, rng, channel_order=self.channel_order)
            info["photo"] = 1.0
        return out, info

    def __call__(self, image: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        return self.apply(image, rng)[0]


# --------------------------------------------------------------------------------------------
# occlusion (missing facial regions) -- our design
# --------------------------------------------------------------------------------------------

OCCLUSION_REGIONS = ("eyes", "left_eye", "right_eye", "nose", "mouth", "lower_face", "random")


def _region_box(
    name: str,
    rng: np.random.Generator,
    height: int,
    width: int,
    jitter: float,
    points: np.ndarray | None = None,
) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1) of a region, defined on the ArcFace 112 x 112 template and scaled to H x W.

    Sizes are in units of the template's eye distance ``d`` (35.2 px at 112): eyes band
    ``2d x 0.6d`` centred between the eyes; one eye ``0.8d x 0.6d``; nose ``0.7d x 0.8d`` around
    the tip; mouth ``1.6d x 0.7d`` around the corners; lower face from just below the nose tip to
    the bottom. Each box is scaled by U(1 - jitter, 1 + jitter) and shifted by up to
    ``jitter * d / 2`` in x and y. ``random``: an axis-aligned box covering U(5 %, 25 %) of the
    image with aspect U(0.5, 2), anywhere. ``points``: the crop's own 5 template points in pixels
    (another alignment template, e.g. dlib's 150 x 150 one), used instead of the scaled ArcFace ones.
    """
    if points is None:
        sx, sy = width / 112.0, height / 112.0
        t = ARCFACE_TEMPLATE_112
        mid_x, bottom = 56.0, 112.0
    else:
        sx = sy = 1.0
        t = np.asarray(points, dtype=np.float64)
        mid_x, bottom = width / 2.0, float(height)
    d = float(np.linalg.norm(t[1] - t[0]))
    if name == "random":
        area = rng.uniform(0.05, 0.25) * height * width
        aspect = float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))
        h = int(min(height, max(1, round(np.sqrt(area / aspect)))))
        w = int(min(width, max(1, round(np.sqrt(area * aspect)))))
        y0 = int(rng.integers(0, height - h + 1))
        x0 = int(rng.integers(0, width - w + 1))
        return y0, y0 + h, x0, x0 + w
    if name == "eyes":
        cx, cy = (t[0] + t[1]) / 2
        bw, bh = 2.0 * d, 0.6 * d
    elif name == "left_eye":
        (cx, cy), bw, bh = t[0], 0.8 * d, 0.6 * d
    elif name == "right_eye":
        (cx, cy), bw, bh = t[1], 0.8 * d, 0.6 * d
    elif name == "nose":
        (cx, cy), bw, bh = t[2], 0.7 * d, 0.8 * d
    elif name == "mouth":
        cx, cy = (t[3] + t[4]) / 2
        bw, bh = 1.6 * d, 0.7 * d
    elif name == "lower_face":
        top = t[2][1] + 0.15 * d
        cx, cy = mid_x, (top + bottom) / 2
        bw, bh = 2 * mid_x, bottom - top
    else:
        raise ValueError(f"unknown occlusion region {name!r}; choose from {OCCLUSION_REGIONS}")
    s = rng.uniform(1 - jitter, 1 + jitter)
    cx = cx + rng.uniform(-0.5, 0.5) * jitter * d
    cy = cy + rng.uniform(-0.5, 0.5) * jitter * d
    x0 = int(np.clip(round((cx - s * bw / 2) * sx), 0, width - 1))
    x1 = int(np.clip(round((cx + s * bw / 2) * sx), x0 + 1, width))
    y0 = int(np.clip(round((cy - s * bh / 2) * sy), 0, height - 1))
    y1 = int(np.clip(round((cy + s * bh / 2) * sy), y0 + 1, height))
    return y0, y1, x0, x1


@dataclass
class Occlusion:
    """Blank out one facial region with probability ``p`` (simulates missing regions).

    Our design for the LGAF experiments (not from a paper): the region is drawn uniformly from
    ``regions`` (names in :data:`OCCLUSION_REGIONS`), placed relative to the ArcFace 112 x 112
    landmark template (so it assumes aligned crops; other sizes are scaled), and filled with
    ``fill``: ``"zero"`` (black, like AdaFace's crop canvas), ``"mean"`` (the image's mean
    colour) or ``"noise"`` (uniform random pixels).
    """

    p: float = 0.5
    regions: Sequence[str] = ("eyes", "nose", "mouth", "lower_face", "random")
    fill: str = "zero"
    jitter: float = 0.2
    seed: int | None = None
    _rng: np.random.Generator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.regions = tuple(self.regions)
        bad = [r for r in self.regions if r not in OCCLUSION_REGIONS]
        if bad or not self.regions:
            raise ValueError(f"occlusion regions must be a non-empty subset of {OCCLUSION_REGIONS}, got {self.regions}")
        if self.fill not in ("zero", "mean", "noise"):
            raise ValueError(f"occlusion fill must be 'zero', 'mean' or 'noise', got {self.fill!r}")
        self._rng = np.random.default_rng(self.seed)

    def apply(
        self, image: np.ndarray, rng: np.random.Generator | None = None
    ) -> tuple[np.ndarray, tuple[str, tuple[int, int, int, int]] | None]:
        """Return the image and ``(region, (y0, y1, x0, x1))`` of the blanked box, or None if not applied."""
        rng = self._rng if rng is None else rng
        if rng.random() >= self.p:
            return image, None
        region = self.regions[int(rng.integers(len(self.regions)))]
        y0, y1, x0, x1 = _region_box(region, rng, image.shape[0], image.shape[1], self.jitter)
        out = image.copy()
        if self.fill == "zero":
            out[y0:y1, x0:x1] = 0
        elif self.fill == "mean":
            out[y0:y1, x0:x1] = image.reshape(-1, *image.shape[2:]).mean(axis=0).round().astype(image.dtype)
        else:
            out[y0:y1, x0:x1] = rng.integers(0, 256, size=out[y0:y1, x0:x1].shape, dtype=np.uint8)
        return out, (region, (y0, y1, x0, x1))

    def __call__(self, image: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        return self.apply(image, rng)[0]


# --------------------------------------------------------------------------------------------
# surveillance-style degradations with recorded parameters (our design)
# --------------------------------------------------------------------------------------------

#: The degradation kinds of :class:`SurveillanceDegradation` (index = the stored kind id; 0 = clean).
DEGRADATIONS = (
    "clean",
    "gaussian_blur",
    "motion_blur",
    "downsample",
    "jpeg",
    "noise",
    "occlusion",
    "low_light",
    "adaface",
)


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of standard deviation ``sigma`` px (out of focus, atmospheric blur)."""
    return image.copy() if sigma < 1e-3 else cv2.GaussianBlur(image, (0, 0), sigma)


def motion_blur(image: np.ndarray, length: int, angle: float) -> np.ndarray:
    """Linear motion blur: a ``length`` px line kernel rotated by ``angle`` degrees."""
    k = max(1, int(length))
    if k == 1:
        return image.copy()
    kernel = np.zeros((k, k), np.float32)
    kernel[k // 2, :] = 1.0
    rot = cv2.getRotationMatrix2D((k / 2 - 0.5, k / 2 - 0.5), angle, 1.0)
    kernel = cv2.warpAffine(kernel, rot, (k, k))
    return cv2.filter2D(image, -1, kernel / max(float(kernel.sum()), 1e-6))


def downsample(image: np.ndarray, ratio: float, down: int = cv2.INTER_AREA, up: int = cv2.INTER_LINEAR) -> np.ndarray:
    """Round trip through a ``ratio`` x smaller image (a face far from the camera)."""
    h, w = image.shape[:2]
    small = cv2.resize(image, (max(1, round(w * ratio)), max(1, round(h * ratio))), interpolation=down)
    return cv2.resize(small, (w, h), interpolation=up).reshape(image.shape)


def jpeg(image: np.ndarray, quality: int, channel_order: str = "rgb") -> np.ndarray:
    """JPEG encode / decode at ``quality`` (1..100) with OpenCV (compression blocks, ringing)."""
    bgr = image[..., ::-1] if channel_order == "rgb" and image.ndim == 3 else image
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(bgr), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:  # pragma: no cover - OpenCV always encodes uint8 arrays
        raise RuntimeError("cv2.imencode failed")
    out = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    return np.ascontiguousarray(out[..., ::-1] if channel_order == "rgb" and out.ndim == 3 else out)


def gaussian_noise(image: np.ndarray, std: float, rng: np.random.Generator) -> np.ndarray:
    """Additive white Gaussian noise of ``std`` grey levels (sensor noise)."""
    noisy = image.astype(np.float32) + rng.normal(0.0, std, size=image.shape).astype(np.float32)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def low_light(image: np.ndarray, gain: float, gamma: float, noise_std: float, rng: np.random.Generator) -> np.ndarray:
    """Under-exposure: ``255 · gain · (x/255)^gamma`` plus sensor noise of ``noise_std`` grey levels."""
    dark = 255.0 * gain * np.power(image.astype(np.float32) / 255.0, gamma)
    dark = dark + rng.normal(0.0, noise_std, size=image.shape).astype(np.float32)
    return np.clip(np.rint(dark), 0, 255).astype(np.uint8)


class Degradation(Protocol):
    """``apply(image, rng) -> (degraded image, JSON parameters with kind_id and severity)``
    (what :class:`SurveillanceDegradation` is; feature extraction stores the parameters)."""

    def apply(self, image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]: ...


@dataclass
class SurveillanceDegradation:
    """One degradation of the kind surveillance video shows, drawn per call with its parameters.

    Our design (not from a paper). ``apply(image, rng) -> (image, params)`` draws a kind uniformly
    from ``kinds`` and a severity ``s ~ U(0, 1)``, maps it to the parameters below (pixel sizes
    scale with the image side / 112) and returns them with ``kind``, ``kind_id`` (index in
    :data:`DEGRADATIONS`) and ``severity``:

    ===============  ==========================================================================
    gaussian_blur    sigma = (0.5 + 3.5 s) px
    motion_blur      length = 3 + round(17 s) px, angle ~ U(-90, 90) degrees
    downsample       side ratio = 1 - 0.85 s (down to 15 %), AREA down, random cv2 interpolation up
    jpeg             quality = round(90 - 85 s) (90 .. 5)
    noise            Gaussian std = 4 + 36 s grey levels
    occlusion        one facial region blanked (:data:`OCCLUSION_REGIONS` boxes); severity = the
                     blanked fraction of the image
    low_light        gain = 1 - 0.8 s, gamma = 1 + 1.5 s, noise std = 2 + 8 s
    adaface          :class:`AdaFaceAugment` with each part at p = 0.5; severity = 1 - min(crop
                     ratio, low-res ratio)
    ===============  ==========================================================================

    ``points``: the 5 template points of the aligned crops in pixels, for placing occlusions
    (default: the ArcFace template scaled to the image).
    """

    kinds: Sequence[str] = DEGRADATIONS[1:]
    channel_order: str = "rgb"
    points: np.ndarray | None = None
    occlusion_regions: Sequence[str] = ("eyes", "nose", "mouth", "lower_face", "random")

    def __post_init__(self) -> None:
        self.kinds = tuple(self.kinds)
        bad = [k for k in self.kinds if k not in DEGRADATIONS[1:]]
        if bad or not self.kinds:
            raise ValueError(f"degradation kinds must be a non-empty subset of {DEGRADATIONS[1:]}, got {self.kinds}")
        self.channel_order = check_channel_order(self.channel_order)

    def apply(self, image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
        kind = self.kinds[int(rng.integers(len(self.kinds)))]
        s = float(rng.uniform(0.0, 1.0))
        scale = min(image.shape[:2]) / 112.0
        params: dict[str, Any] = {"kind": kind, "kind_id": DEGRADATIONS.index(kind), "severity": s}
        if kind == "gaussian_blur":
            params["sigma"] = (0.5 + 3.5 * s) * scale
            out = gaussian_blur(image, params["sigma"])
        elif kind == "motion_blur":
            params["length"] = max(1, round((3 + 17 * s) * scale))
            params["angle"] = float(rng.uniform(-90, 90))
            out = motion_blur(image, params["length"], params["angle"])
        elif kind == "downsample":
            params["ratio"] = 1.0 - 0.85 * s
            params["up"] = int(rng.integers(len(LOWRES_INTERPOLATIONS)))
            out = downsample(image, params["ratio"], cv2.INTER_AREA, LOWRES_INTERPOLATIONS[params["up"]])
        elif kind == "jpeg":
            params["quality"] = round(90 - 85 * s)
            out = jpeg(image, params["quality"], self.channel_order)
        elif kind == "noise":
            params["std"] = 4.0 + 36.0 * s
            out = gaussian_noise(image, params["std"], rng)
        elif kind == "occlusion":
            region = self.occlusion_regions[int(rng.integers(len(self.occlusion_regions)))]
            y0, y1, x0, x1 = _region_box(region, rng, image.shape[0], image.shape[1], 0.2, self.points)
            out = image.copy()
            out[y0:y1, x0:x1] = 0
            params.update(region=region, box=[y0, y1, x0, x1])
            params["severity"] = (y1 - y0) * (x1 - x0) / float(image.shape[0] * image.shape[1])
        elif kind == "low_light":
            params.update(gain=1.0 - 0.8 * s, gamma=1.0 + 1.5 * s, noise_std=2.0 + 8.0 * s)
            out = low_light(image, params["gain"], params["gamma"], params["noise_std"], rng)
        else:  # adaface
            out, info = AdaFaceAugment(0.5, 0.5, 0.5, channel_order=self.channel_order).apply(image, rng)
            params.update(info)
            params["severity"] = 1.0 - min(info["crop_ratio"], info["lowres_ratio"])
        return out, params

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return self.apply(image, rng)[0]


# --------------------------------------------------------------------------------------------
# CAFace feature-precompute augmentations
# --------------------------------------------------------------------------------------------


class CAFaceAugmenter:
    """The augmented copies of the CAFace feature precompute (CAFace ``preprocess/image_augmenter.py``,
    METHODS.md §3.9; our implementation of its families).

    :meth:`copies` makes ``count`` versions of one image: copy 1 is a *strong* augmentation
    (geometric, then photometric, then blur), copies 2..count a single *weak* augmentation (one
    of photometric, blur, geometric) applied on top of that strong one; every copy is flipped
    horizontally with probability 0.5. Families: geometric = random resized crop (scale 0.2-1,
    ratio 3/4-4/3) pasted on a zero canvas | affine (zoom 0.5-1.5, translate ±20 %) | rotation
    (±25°); photometric = brightness/contrast/saturation jitter 0.5; blur = box k∈[1,10) |
    Gaussian σ∈[0,4) | motion k∈[5,20) at ±45° | low-resolution round trip (side 0.2-1, random
    cv2 interpolations). All randomness comes from the given generator.
    """

    def geometric(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        h, w = img.shape[:2]
        kind = int(rng.integers(3))
        if kind == 0:  # random resized crop pasted back on a zero canvas at its place
            for _ in range(10):
                area = h * w * rng.uniform(0.2, 1.0)
                ratio = float(np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3))))
                cw, ch = round(float(np.sqrt(area * ratio))), round(float(np.sqrt(area / ratio)))
                if 0 < cw <= w and 0 < ch <= h:
                    y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
                    out = np.zeros_like(img)
                    out[y : y + ch, x : x + cw] = img[y : y + ch, x : x + cw]
                    return out
            return img.copy()
        if kind == 1:  # affine: zoom and translation
            zoom = rng.uniform(0.5, 1.5)
            tx, ty = rng.uniform(-0.2, 0.2) * w, rng.uniform(-0.2, 0.2) * h
            M = cv2.getRotationMatrix2D((w / 2, h / 2), 0.0, zoom)
            M[:, 2] += (tx, ty)
        else:  # rotation
            M = cv2.getRotationMatrix2D((w / 2, h / 2), rng.uniform(-25, 25), 1.0)
        return cv2.warpAffine(img, M, (w, h), flags=cv2.INTER_LINEAR, borderValue=0)

    def photometric(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        x = img.astype(np.float32)
        for op in rng.permutation(3):
            f = rng.uniform(0.5, 1.5)
            if op == 0:  # brightness
                x = x * f
            elif op == 1:  # contrast around the mean grey
                x = (x - x.mean()) * f + x.mean()
            else:  # saturation around the per-pixel grey (ITU-R 601, RGB)
                grey = x @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
                x = (x - grey[..., None]) * f + grey[..., None]
            x = np.clip(x, 0, 255)
        return x.astype(np.uint8)

    def blur(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        h, w = img.shape[:2]
        kind = int(rng.integers(4))
        if kind == 0:
            k = int(rng.integers(1, 10))
            return cv2.blur(img, (k, k))
        if kind == 1:
            sigma = rng.uniform(0, 4)
            return img.copy() if sigma < 1e-3 else cv2.GaussianBlur(img, (0, 0), sigma)
        if kind == 2:
            k = int(rng.integers(5, 20))
            kernel = np.zeros((k, k), np.float32)
            kernel[k // 2, :] = 1.0
            rot = cv2.getRotationMatrix2D((k / 2 - 0.5, k / 2 - 0.5), rng.uniform(-45, 45), 1.0)
            kernel = cv2.warpAffine(kernel, rot, (k, k))
            return cv2.filter2D(img, -1, kernel / max(kernel.sum(), 1e-6))
        side = rng.uniform(0.2, 1.0)
        interps = LOWRES_INTERPOLATIONS
        small = cv2.resize(
            img, (max(1, int(w * side)), max(1, int(h * side))), interpolation=interps[int(rng.integers(len(interps)))]
        )
        return cv2.resize(small, (w, h), interpolation=interps[int(rng.integers(len(interps)))])

    def strong(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return self.blur(self.photometric(self.geometric(img, rng), rng), rng)

    def weak(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return (self.photometric, self.blur, self.geometric)[int(rng.integers(3))](img, rng)

    def copies(self, img: np.ndarray, count: int, rng: np.random.Generator) -> list[np.ndarray]:
        """``count`` augmented versions: strong, then weak-on-strong; each flipped with p=0.5."""
        if count <= 0:
            return []
        strong = self.strong(img, rng)
        out = [strong] + [self.weak(strong, rng) for _ in range(count - 1)]
        return [hflip(o) if rng.random() < 0.5 else o for o in out]


# --------------------------------------------------------------------------------------------
# the training pipeline
# --------------------------------------------------------------------------------------------


@dataclass
class TrainTransform:
    """uint8 H x W x 3 -> normalised float tensor 3 x H x W: [AdaFace aug] -> [occlusion] -> [flip].

    Call as ``transform(image, rng)``; ``rng=None`` uses an internal generator seeded by ``seed``.
    The flip is last, as in AdaFace (and equivalent to arcface_torch's flip-only pipeline when
    the other two are off).
    """

    flip: bool = True
    adaface: AdaFaceAugment | None = None
    occlusion: Occlusion | None = None
    channel_order: str = "rgb"
    seed: int | None = None
    _rng: np.random.Generator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.channel_order = check_channel_order(self.channel_order)
        self._rng = np.random.default_rng(self.seed)

    def augment(self, image: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """The uint8 image after the random operations (before tensor conversion)."""
        rng = self._rng if rng is None else rng
        out = image
        if self.adaface is not None:
            out = self.adaface(out, rng)
        if self.occlusion is not None:
            out = self.occlusion(out, rng)
        if self.flip and rng.random() < 0.5:
            out = hflip(out)
        return out

    def __call__(self, image: np.ndarray, rng: np.random.Generator | None = None) -> torch.Tensor:
        return to_normalized_tensor(self.augment(image, rng))


def build_train_transform(
    flip: bool = True,
    adaface_aug: bool = False,
    occlusion_p: float = 0.0,
    channel_order: str = "rgb",
    *,
    crop_p: float = 0.2,
    lowres_p: float = 0.2,
    photo_p: float = 0.2,
    occlusion_regions: Sequence[str] = ("eyes", "nose", "mouth", "lower_face", "random"),
    occlusion_fill: str = "zero",
    seed: int | None = None,
) -> TrainTransform:
    """The training transform: callable ``(uint8 H x W x 3 image, rng) -> float tensor (3, H, W)``.

    ``flip``: random horizontal flip (p = 0.5). ``adaface_aug``: AdaFace crop / low-res /
    photometric with ``crop_p`` / ``lowres_p`` / ``photo_p``. ``occlusion_p``: probability of
    blanking one facial region (:class:`Occlusion`). ``channel_order`` is the order of the
    incoming arrays (the transform never swaps channels).
    """
    order = check_channel_order(channel_order)
    adaface = AdaFaceAugment(crop_p, lowres_p, photo_p, channel_order=order) if adaface_aug else None
    occlusion = Occlusion(occlusion_p, occlusion_regions, occlusion_fill) if occlusion_p > 0 else None
    return TrainTransform(flip=flip, adaface=adaface, occlusion=occlusion, channel_order=order, seed=seed)


def apply_transform(transform: Callable[..., Any] | None, image: np.ndarray, index: int) -> torch.Tensor:
    """How the datasets run ``transform`` on sample ``index``.

    ``None`` -> normalised tensor. Otherwise ``transform(image, sample_rng(index))``, or
    ``transform(image)`` for a one-argument callable; a returned numpy array is converted and
    normalised, a returned tensor is taken as is (the transform normalised it).
    """
    if transform is None:
        return to_normalized_tensor(image)
    if _takes_rng(transform):
        out = transform(image, sample_rng(index))
    else:
        out = transform(image)
    if isinstance(out, torch.Tensor):
        return out
    return to_normalized_tensor(np.asarray(out))


def _takes_rng(transform: Callable[..., Any]) -> bool:
    if isinstance(transform, (TrainTransform, AdaFaceAugment, Occlusion)):
        return True
    import inspect

    try:
        params = list(inspect.signature(transform).parameters.values())
    except (TypeError, ValueError):
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in params)
