"""Non-maximum suppression in numpy (no torchvision).

MTCNN uses two overlap measures (facenet-pytorch ``models/utils/detect_face.py``, after the
original MTCNN Matlab code): ``"union"`` (intersection over union) between stages and ``"min"``
(intersection over the smaller area) after the O-Net. Boxes use MTCNN's inclusive pixel
convention: a box ``(x1, y1, x2, y2)`` covers ``(x2 - x1 + 1) * (y2 - y1 + 1)`` pixels.

Greedy algorithm: sort by score, keep the best remaining box, drop every box overlapping it by
more than ``threshold``, repeat. Ties keep the later index first (stable descending order of a
stable ascending sort), which matches the reference's ``argsort`` behaviour.
"""

from __future__ import annotations

import numpy as np


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, method: str = "union") -> np.ndarray:
    """Indices of the boxes kept by greedy NMS, best score first.

    Args:
        boxes: (N, 4) ``x1, y1, x2, y2`` (inclusive pixel convention).
        scores: (N,) confidences.
        threshold: overlap above which a lower-scored box is suppressed.
        method: ``"union"`` (IoU) or ``"min"`` (intersection over the smaller box).
    """
    if method not in ("union", "min"):
        raise ValueError(f"method must be 'union' or 'min', got {method!r}")
    boxes = np.asarray(boxes, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    if boxes.size == 0:
        return np.zeros((0,), dtype=np.int64)
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(scores, kind="stable")  # ascending; the best is last
    keep: list[int] = []
    while order.size > 0:
        best = int(order[-1])
        keep.append(best)
        rest = order[:-1]
        inter_w = np.maximum(0.0, np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]) + 1)
        inter_h = np.maximum(0.0, np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]) + 1)
        inter = inter_w * inter_h
        if method == "min":
            overlap = inter / np.minimum(area[best], area[rest])
        else:
            overlap = inter / (area[best] + area[rest] - inter)
        order = rest[overlap <= threshold]
    return np.asarray(keep, dtype=np.int64)


def batched_nms(
    boxes: np.ndarray, scores: np.ndarray, groups: np.ndarray, threshold: float, method: str = "union"
) -> np.ndarray:
    """NMS run independently inside each group (e.g. each image of a batch); kept indices sorted."""
    groups = np.asarray(groups)
    if len(groups) == 0:
        return np.zeros((0,), dtype=np.int64)
    keep = [
        np.flatnonzero(groups == g)[nms(boxes[groups == g], scores[groups == g], threshold, method)]
        for g in np.unique(groups)
    ]
    return np.sort(np.concatenate(keep))
