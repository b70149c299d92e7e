"""MTCNN face detector (Zhang et al. 2016) in plain PyTorch: P-Net, R-Net, O-Net and the cascade.

The three networks match, key for key, the published MIT-licensed weights that ship inside the
``facenet-pytorch`` wheel (``facenet_pytorch/data/{pnet,rnet,onet}.pt``, fetched by
``fuseface models fetch mtcnn``, see :mod:`fuseface.align.weights`). Facts about the cascade come
from reading facenet-pytorch ``models/mtcnn.py`` and ``models/utils/detect_face.py`` (v2.6.0); the
code here is our own:

* input RGB, normalised ``(x - 127.5) * 0.0078125``; resizing by area averaging;
* image pyramid: first scale ``12 / min_face_size`` (min face 20 px), factor 0.709, while the
  shorter side stays >= 12 px; each level resized to ``(int(h*s + 1), int(w*s + 1))``;
* P-Net (fully convolutional, stride 2, 12x12 cell): candidates with face probability >= 0.6,
  window ``floor((2*i + 1)/s) .. floor((2*i + 12)/s)``; NMS 0.5 per level, 0.7 across levels;
  box regression with width ``x2 - x1``; boxes made square around their centre;
* R-Net on 24x24 crops: probability > 0.7, NMS 0.7, regression with width ``x2 - x1 + 1``, square;
* O-Net on 48x48 crops: probability > 0.7; 5 landmarks ``x = x1 + w * p_x - 1`` (w = x2 - x1 + 1 of
  the box before the last regression), first the 5 x then the 5 y values, ordered left eye, right
  eye, nose, left mouth corner, right mouth corner (image left/right); regression; NMS 0.7 "min";
* crops are taken from the box clipped to the image, in 1-based inclusive pixel coordinates as
  the original Matlab code (``img[y-1:ey, x-1:ex]``), then resized to the network input;
* the dense layers of R-Net and O-Net were converted from a (W, H, C) layout: their features are
  flattened after permuting to (N, W, H, C).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fuseface.align.nms import nms

NORM_MEAN = 127.5
NORM_SCALE = 0.0078125


class PNet(nn.Module):
    """Proposal network: fully convolutional; outputs box offsets (N,4,h,w) and face prob (N,2,h,w)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 10, kernel_size=3)
        self.prelu1 = nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(10, 16, kernel_size=3)
        self.prelu2 = nn.PReLU(16)
        self.conv3 = nn.Conv2d(16, 32, kernel_size=3)
        self.prelu3 = nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, kernel_size=1)
        self.conv4_2 = nn.Conv2d(32, 4, kernel_size=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return self.conv4_2(x), torch.softmax(self.conv4_1(x), dim=1)


class RNet(nn.Module):
    """Refinement network on 24x24 crops: box offsets (N,4) and face prob (N,2)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 28, kernel_size=3)
        self.prelu1 = nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(28, 48, kernel_size=3)
        self.prelu2 = nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(48, 64, kernel_size=2)
        self.prelu3 = nn.PReLU(64)
        self.dense4 = nn.Linear(576, 128)
        self.prelu4 = nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x))
        x = x.permute(0, 3, 2, 1).flatten(1)  # converted weights expect (W, H, C) order
        x = self.prelu4(self.dense4(x))
        return self.dense5_2(x), torch.softmax(self.dense5_1(x), dim=1)


class ONet(nn.Module):
    """Output network on 48x48 crops: box offsets (N,4), landmarks (N,10: 5 x then 5 y), prob (N,2)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, kernel_size=3)
        self.prelu1 = nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3)
        self.prelu2 = nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(64, 64, kernel_size=3)
        self.prelu3 = nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4 = nn.Conv2d(64, 128, kernel_size=2)
        self.prelu4 = nn.PReLU(128)
        self.dense5 = nn.Linear(1152, 256)
        self.prelu5 = nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x))
        x = x.permute(0, 3, 2, 1).flatten(1)
        x = self.prelu5(self.dense5(x))
        return self.dense6_2(x), self.dense6_3(x), torch.softmax(self.dense6_1(x), dim=1)


@dataclass
class Detections:
    """Faces found in one image: boxes (K,4) ``x1,y1,x2,y2`` in pixels, scores (K,), landmarks (K,5,2)."""

    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    scores: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.float32))
    landmarks: np.ndarray = field(default_factory=lambda: np.zeros((0, 5, 2), np.float32))

    def __len__(self) -> int:
        return len(self.scores)


def _square(boxes: np.ndarray) -> np.ndarray:
    """Make boxes square (side = the longer side) around their centre (MTCNN ``rerec``)."""
    out = boxes.copy()
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    out[:, 0] = boxes[:, 0] + w * 0.5 - side * 0.5
    out[:, 1] = boxes[:, 1] + h * 0.5 - side * 0.5
    out[:, 2] = out[:, 0] + side
    out[:, 3] = out[:, 1] + side
    return out


def pnet_level_candidates(p: np.ndarray, reg: np.ndarray, ys: np.ndarray, xs: np.ndarray, s: float) -> np.ndarray:
    """P-Net cells ``(ys, xs)`` of one pyramid level at scale ``s`` (face probability map ``p``,
    their box offsets ``reg`` (n, 4)) -> rows ``x1 y1 x2 y2 score dx1 dy1 dx2 dy2`` in image
    pixels: each cell covers a 12x12 window at stride 2 of the level; NMS (IoU 0.5) within the level."""
    cand = np.stack(
        [
            np.floor((2 * xs + 1) / s),
            np.floor((2 * ys + 1) / s),
            np.floor((2 * xs + 12) / s),
            np.floor((2 * ys + 12) / s),
        ],
        axis=1,
    )
    rows = np.concatenate([cand, p[ys, xs][:, None], reg], axis=1)
    return rows[nms(rows[:, :4], rows[:, 4], 0.5, "union")]


def pnet_merge_levels(found: list[np.ndarray]) -> np.ndarray:
    """The levels' candidates -> stage-1 boxes: NMS across levels (IoU 0.7), offsets applied,
    boxes made square; (n, 5) ``x1 y1 x2 y2 score``."""
    if not found:
        return np.zeros((0, 5))
    rows = np.concatenate(found)
    rows = rows[nms(rows[:, :4], rows[:, 4], 0.7, "union")]
    boxes = _regress(rows[:, :4], rows[:, 5:9], plus_one=False)
    return np.concatenate([_square(boxes), rows[:, 4:5]], axis=1)


def _regress(boxes: np.ndarray, offsets: np.ndarray, plus_one: bool) -> np.ndarray:
    """Shift each box side by ``offset * size`` (size = x2 - x1, plus 1 after P-Net)."""
    extra = 1.0 if plus_one else 0.0
    w = boxes[:, 2] - boxes[:, 0] + extra
    h = boxes[:, 3] - boxes[:, 1] + extra
    out = boxes.copy()
    out[:, 0] += offsets[:, 0] * w
    out[:, 1] += offsets[:, 1] * h
    out[:, 2] += offsets[:, 2] * w
    out[:, 3] += offsets[:, 3] * h
    return out


class MTCNN(nn.Module):
    """The three-stage cascade; ``detect(image_rgb_uint8) -> Detections``.

    Args:
        min_face_size: smallest face side searched, in pixels (20).
        thresholds: face-probability thresholds of P-, R- and O-Net (0.6, 0.7, 0.7).
        factor: pyramid scale step (0.709).
        max_side: images whose longer side exceeds this are downscaled for detection only
            (coordinates are mapped back); keeps time and memory bounded on huge photos.
        weights_dir: folder with ``pnet.pt``, ``rnet.pt``, ``onet.pt``; default the fuseface cache.
        pretrained: load the published weights (a clear error tells how to fetch them when absent).
        engine: ``"fast"`` (default; :mod:`fuseface.align.mtcnn_fast`: integral-image crops, nets
            through ONNX Runtime when installed, R-/O-Net batched across photos) or
            ``"reference"`` (the straightforward cascade below, one resize per box). Both compute
            the same detections to float rounding.
    """

    def __init__(
        self,
        min_face_size: float = 20.0,
        thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7),
        factor: float = 0.709,
        max_side: int = 1600,
        weights_dir: str | Path | None = None,
        pretrained: bool = True,
        engine: str = "fast",
    ) -> None:
        super().__init__()
        if engine not in ("fast", "reference"):
            raise ValueError(f"engine must be 'fast' or 'reference', got {engine!r}")
        self.engine = engine
        self._fast: Any = None
        self.pnet, self.rnet, self.onet = PNet(), RNet(), ONet()
        self.min_face_size = float(min_face_size)
        self.thresholds = tuple(float(t) for t in thresholds)
        self.factor = float(factor)
        self.max_side = int(max_side)
        if pretrained:
            from fuseface.align.weights import load_mtcnn_state_dicts

            states = load_mtcnn_state_dicts(weights_dir)
            for name in ("pnet", "rnet", "onet"):
                getattr(self, name).load_state_dict(states[name], strict=True)
        self.eval()

    # -- helpers -------------------------------------------------------------------------------
    def _scales(self, h: int, w: int) -> list[float]:
        m = 12.0 / self.min_face_size
        shorter = min(h, w) * m
        scales: list[float] = []
        s = m
        while shorter >= 12:
            scales.append(s)
            s *= self.factor
            shorter *= self.factor
        return scales

    @staticmethod
    def _normalise(x: torch.Tensor) -> torch.Tensor:
        return (x - NORM_MEAN) * NORM_SCALE

    def _crops(self, img: torch.Tensor, boxes: np.ndarray, size: int) -> tuple[torch.Tensor, np.ndarray]:
        """Crop each box (clipped to the image, 1-based inclusive) and resize to ``size``; returns
        the stacked crops and the indices of the boxes that gave a non-empty crop."""
        h, w = img.shape[-2:]
        ib = np.trunc(boxes[:, :4]).astype(np.int64)
        x = np.maximum(ib[:, 0], 1)
        y = np.maximum(ib[:, 1], 1)
        ex = np.minimum(ib[:, 2], w)
        ey = np.minimum(ib[:, 3], h)
        crops: list[torch.Tensor] = []
        valid: list[int] = []
        for k in range(len(ib)):
            if ey[k] > y[k] - 1 and ex[k] > x[k] - 1:
                patch = img[:, :, y[k] - 1 : ey[k], x[k] - 1 : ex[k]]
                crops.append(F.interpolate(patch, size=(size, size), mode="area"))
                valid.append(k)
        if not crops:
            return torch.zeros((0, 3, size, size)), np.zeros((0,), np.int64)
        return self._normalise(torch.cat(crops)), np.asarray(valid, dtype=np.int64)

    # -- the cascade ---------------------------------------------------------------------------
    def _stage1(self, img: torch.Tensor) -> np.ndarray:
        h, w = img.shape[-2:]
        t0 = self.thresholds[0]
        found: list[np.ndarray] = []
        for s in self._scales(h, w):
            level = F.interpolate(img, size=(int(h * s + 1), int(w * s + 1)), mode="area")
            offsets, prob = self.pnet(self._normalise(level))
            p = prob[0, 1].numpy()
            ys, xs = np.nonzero(p >= t0)
            if len(ys) == 0:
                continue
            found.append(pnet_level_candidates(p, offsets[0].numpy()[:, ys, xs].T, ys, xs, s))
        return pnet_merge_levels(found)

    def _stage2(self, img: torch.Tensor, boxes: np.ndarray) -> np.ndarray:
        crops, valid = self._crops(img, boxes, 24)
        if len(valid) == 0:
            return np.zeros((0, 5))
        offsets, prob = self.rnet(crops)
        score = prob[:, 1].numpy()
        keep = score > self.thresholds[1]
        rows = np.concatenate([boxes[valid][keep, :4], score[keep, None]], axis=1)
        offs = offsets.numpy()[keep]
        pick = nms(rows[:, :4], rows[:, 4], 0.7, "union")
        rows, offs = rows[pick], offs[pick]
        rows[:, :4] = _square(_regress(rows[:, :4], offs, plus_one=True))
        return rows

    def _stage3(self, img: torch.Tensor, boxes: np.ndarray) -> Detections:
        crops, valid = self._crops(img, boxes, 48)
        if len(valid) == 0:
            return Detections()
        offsets, points, prob = self.onet(crops)
        score = prob[:, 1].numpy()
        keep = score > self.thresholds[2]
        b = boxes[valid][keep, :4]
        pts = points.numpy()[keep]
        w = (b[:, 2] - b[:, 0] + 1)[:, None]
        h = (b[:, 3] - b[:, 1] + 1)[:, None]
        lmk = np.stack([w * pts[:, :5] + b[:, 0:1] - 1, h * pts[:, 5:] + b[:, 1:2] - 1], axis=2)
        b = _regress(b, offsets.numpy()[keep], plus_one=True)
        pick = nms(b, score[keep], 0.7, "min")
        return Detections(
            boxes=b[pick].astype(np.float32),
            scores=score[keep][pick].astype(np.float32),
            landmarks=lmk[pick].astype(np.float32),
        )

    def _prepare(self, image: np.ndarray) -> tuple[np.ndarray, float]:
        """Check an image, make it RGB, and downscale it above ``max_side``; returns it and the ratio."""
        image = np.asarray(image)
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        if image.ndim != 3 or image.shape[2] not in (3, 4):
            raise ValueError(f"expected an H x W x 3 image, got shape {image.shape}")
        image = image[:, :, :3]
        h, w = image.shape[:2]
        ratio = 1.0
        if max(h, w) > self.max_side:
            import cv2

            ratio = max(h, w) / self.max_side
            image = cv2.resize(image, (round(w / ratio), round(h / ratio)), interpolation=cv2.INTER_AREA)
        return np.ascontiguousarray(image), ratio

    @staticmethod
    def _finish(det: Detections, ratio: float) -> Detections:
        if ratio != 1.0 and len(det):
            # the detection ran on a resized copy: map pixel centres back ((p + 0.5) * r - 0.5)
            det.boxes = ((det.boxes + 0.5) * ratio - 0.5).astype(np.float32)
            det.landmarks = ((det.landmarks + 0.5) * ratio - 0.5).astype(np.float32)
        order = np.argsort(-det.scores, kind="stable")
        return Detections(det.boxes[order], det.scores[order], det.landmarks[order])

    @torch.inference_mode()
    def detect_reference(self, image: np.ndarray) -> Detections:
        """The straightforward cascade (``engine="reference"``) on one image."""
        image, ratio = self._prepare(image)
        img = torch.from_numpy(image).permute(2, 0, 1)[None].float()
        boxes = self._stage1(img)
        if len(boxes):
            boxes = self._stage2(img, boxes)
        det = self._stage3(img, boxes) if len(boxes) else Detections()
        return self._finish(det, ratio)

    def detect_batch(self, images: list[np.ndarray]) -> list[Detections]:
        """Detect faces in several images; the fast engine runs R-/O-Net once for all of them."""
        if self.engine == "reference":
            return [self.detect_reference(im) for im in images]
        if self._fast is None:
            from fuseface.align.mtcnn_fast import FastCascade

            self._fast = FastCascade(self)
        prepared = [self._prepare(im) for im in images]
        dets = self._fast.detect_batch([im for im, _ in prepared])
        return [self._finish(d, r) for d, (_, r) in zip(dets, prepared, strict=True)]

    def detect(self, image: np.ndarray) -> Detections:
        """Detect faces in one uint8 H x W x 3 **RGB** image (grey H x W is accepted too)."""
        return self.detect_batch([image])[0]


@torch.inference_mode()
def faceness(onet: ONet, crops: list[np.ndarray]) -> np.ndarray:
    """The output network's face probability of whole face crops (uint8 H x W x 3 RGB), each
    resized (area) to 48 x 48: the detector's confidence in a crop, a per-image quality score
    for score-weighted template pooling. ``onet`` is e.g. ``MTCNN().onet`` (published weights)."""
    if not crops:
        return np.zeros((0,), np.float32)
    x = torch.from_numpy(np.ascontiguousarray(np.stack(crops))).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(48, 48), mode="area")
    return onet(MTCNN._normalise(x))[2][:, 1].numpy().astype(np.float32)
