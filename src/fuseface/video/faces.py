"""Faces of one frame: detection (optionally on an up-sampled copy), alignment and embedding.

Small faces. MTCNN's pyramid starts at scale ``12 / min_face_size``; faces below ``min_face_size``
are searched only if the caller lowers it, which makes the pyramid (and the time) larger, or
up-samples the frame. :class:`UpsampledDetector` wraps any detector: the frame is resized by
``scale`` (bicubic) before detection and the boxes and landmarks are mapped back with the
pixel-centre convention ``p = (p' + 0.5) / scale - 0.5``. The crop is then warped from the
*original* frame with those landmarks (the similarity warp already interpolates, so aligning from
the up-sampled copy would only interpolate twice).

:class:`FaceEmbedder` turns a frame's detections into aligned crops at the model's input size and
embeds them through :class:`fuseface.infer.embedder.FaceModel` (``embed_aligned``; the crops use
the model's alignment template, ``FaceModel.template``), and, when the
fusion needs CAFace styles, computes them from the same forward pass
(``FaceModel.embed_with_styles``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from fuseface.align.detector import FaceDetector
from fuseface.align.mtcnn import Detections
from fuseface.align.similarity import align_face

__all__ = ["FaceEmbedder", "FrameFaces", "UpsampledDetector"]


class UpsampledDetector:
    """Detect on a copy of the frame resized by ``scale``; coordinates come back in the original frame."""

    def __init__(self, detector: FaceDetector, scale: float = 1.0) -> None:
        if scale <= 0:
            raise ValueError(f"upsample scale must be > 0, got {scale}")
        self.detector = detector
        self.scale = float(scale)

    def detect(self, image: np.ndarray) -> Detections:
        if self.scale == 1.0:
            return self.detector.detect(image)
        import cv2

        h, w = image.shape[:2]
        big = cv2.resize(image, (round(w * self.scale), round(h * self.scale)), interpolation=cv2.INTER_CUBIC)
        det = self.detector.detect(big)
        if len(det) == 0:
            return det
        sx, sy = big.shape[1] / w, big.shape[0] / h
        factor = np.array([sx, sy], np.float32)
        boxes = ((det.boxes.reshape(-1, 2, 2) + 0.5) / factor - 0.5).reshape(-1, 4)
        landmarks = (det.landmarks + 0.5) / factor - 0.5
        return Detections(boxes.astype(np.float32), det.scores, landmarks.astype(np.float32))


@dataclass
class FrameFaces:
    """The faces kept in one frame: boxes (K,4), detector scores (K,), landmarks (K,5,2), aligned crops
    (K,S,S,3) RGB, un-normalised embeddings (K,D), their norms (K,), and CAFace styles (K,C,2) or None."""

    boxes: np.ndarray
    scores: np.ndarray
    landmarks: np.ndarray
    crops: np.ndarray
    features: np.ndarray
    norms: np.ndarray
    styles: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.scores)


class FaceEmbedder:
    """Detect, filter, align and embed the faces of a frame.

    Args:
        model: a :class:`fuseface.infer.embedder.FaceModel`.
        detector: any detector (``detect(rgb) -> Detections``); wrap it in :class:`UpsampledDetector`
            for small faces.
        min_score: detections below this detector score are dropped.
        min_side: boxes with a shorter side (in original pixels) are dropped.
        with_styles: also return CAFace style statistics (the backbone must accept
            ``return_stages=True``) of the stage outputs ``style_stages`` (0-based).
    """

    def __init__(
        self,
        model: Any,
        detector: FaceDetector,
        min_score: float = 0.9,
        min_side: float = 0.0,
        with_styles: bool = False,
        style_stages: tuple[int, ...] = (1, 2),
    ) -> None:
        self.model = model
        self.detector = detector
        self.min_score = float(min_score)
        self.min_side = float(min_side)
        self.with_styles = with_styles
        self.style_stages = tuple(style_stages)

    def __call__(self, image: np.ndarray) -> FrameFaces:
        det = self.detector.detect(image)
        side = np.minimum(det.boxes[:, 2] - det.boxes[:, 0], det.boxes[:, 3] - det.boxes[:, 1])
        keep = np.flatnonzero((det.scores >= self.min_score) & (side >= self.min_side))
        size = int(self.model.input_size)
        template = getattr(self.model, "template", "arcface")
        crops = np.stack([align_face(image, det.landmarks[i], size, template) for i in keep]) if len(keep) else None
        styles = None
        if crops is None:
            dim = int(getattr(self.model.net, "num_features", 0) or 0)
            feats = np.zeros((0, dim), np.float32)
            crops = np.zeros((0, size, size, 3), np.uint8)
        elif self.with_styles:
            feats, styles = self.model.embed_with_styles(crops, self.style_stages)
        else:
            feats, _ = self.model.embed_aligned(crops)
        feats = np.asarray(feats, np.float32)
        return FrameFaces(
            boxes=det.boxes[keep],
            scores=det.scores[keep],
            landmarks=det.landmarks[keep],
            crops=crops,
            features=feats,
            norms=np.linalg.norm(feats, axis=1),
            styles=styles,
        )
