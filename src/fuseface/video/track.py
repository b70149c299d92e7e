"""Multi-face tracking by detection, SORT-style (Bewley et al. 2016, "Simple Online and Realtime
Tracking"), with an appearance gate on the embedding (as DeepSORT, Wojke et al. 2017, adds one).

Per processed frame, with the live tracks and the frame's detections:

1. **Predict** each track's box with a constant-velocity model: the last box moved by the velocity
   measured between its last two observations, times the frames elapsed (SORT uses a Kalman filter
   on the same state; with faces observed at every processed frame the plain extrapolation is
   enough and has no parameters to tune).
2. **Score** every (track, detection) pair: ``IoU(predicted box, detection box)`` plus
   ``appearance_weight · cos(track appearance, detection embedding)``, where the track appearance is
   the normalised running mean of its unit embeddings. A pair is *admissible* only if the IoU is at
   least ``min_iou`` and the cosine at least ``min_cosine`` (the gate: two faces that cross keep
   their identities because a swap fails the cosine test).
3. **Assign** with the Hungarian algorithm (``scipy.optimize.linear_sum_assignment``) maximising the
   total score over admissible pairs; inadmissible assignments are discarded.
4. Unmatched detections start new tracks. A track not matched for more than ``max_gap`` frame
   indices (of the file, so the gap means the same time whatever the stride) is ended.

The tracker holds only the live tracks' last two boxes and appearance vector: constant memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["Tracker", "iou_matrix"]


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise intersection over union of boxes ``a`` (P,4) and ``b`` (Q,4), ``x1,y1,x2,y2``."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


@dataclass
class _LiveTrack:
    track_id: int
    box: np.ndarray
    frame: int
    appearance_sum: np.ndarray
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(4))

    def predicted(self, frame: int) -> np.ndarray:
        return self.box + self.velocity * (frame - self.frame)

    def appearance(self) -> np.ndarray:
        return self.appearance_sum / (np.linalg.norm(self.appearance_sum) + 1e-12)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / (np.linalg.norm(x, axis=-1, keepdims=True) + 1e-12)


class Tracker:
    """Online tracker; :meth:`step` per processed frame (see the module docstring).

    Args:
        max_gap: a track unmatched for more than this many frame indices ends.
        min_iou: smallest IoU between predicted and detected box for a match.
        min_cosine: appearance gate on the embedding cosine (``None``: no gate).
        appearance_weight: weight of the cosine in the matching score.
    """

    def __init__(
        self, max_gap: int = 30, min_iou: float = 0.1, min_cosine: float | None = 0.3, appearance_weight: float = 0.5
    ) -> None:
        self.max_gap = int(max_gap)
        self.min_iou = float(min_iou)
        self.min_cosine = min_cosine
        self.appearance_weight = float(appearance_weight)
        self.live: dict[int, _LiveTrack] = {}
        self._next_id = 0

    def step(self, frame: int, boxes: np.ndarray, embeddings: np.ndarray) -> tuple[list[int], list[int]]:
        """Associate one frame's detections; returns ``(track id per detection, ids of tracks ended)``.

        Tracks whose gap exceeds ``max_gap`` at this frame are ended *before* matching.
        """
        ended = [tid for tid, t in self.live.items() if frame - t.frame > self.max_gap]
        for tid in ended:
            del self.live[tid]
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        units = _unit(np.asarray(embeddings, np.float64).reshape(len(boxes), -1)) if len(boxes) else np.zeros((0, 1))
        ids = [-1] * len(boxes)
        tracks = list(self.live.values())
        if tracks and len(boxes):
            from scipy.optimize import linear_sum_assignment

            predicted = np.stack([t.predicted(frame) for t in tracks])
            iou = iou_matrix(predicted, boxes)
            cos = np.stack([t.appearance() for t in tracks]) @ units.T
            admissible = iou >= self.min_iou
            if self.min_cosine is not None:
                admissible &= cos >= self.min_cosine
            gain = np.where(admissible, iou + self.appearance_weight * cos, -1e6)
            rows, cols = linear_sum_assignment(-gain)
            for r, c in zip(rows, cols, strict=True):
                if admissible[r, c]:
                    self._update(tracks[r], frame, boxes[c], units[c])
                    ids[c] = tracks[r].track_id
        for c, tid in enumerate(ids):
            if tid < 0:
                track = _LiveTrack(self._next_id, boxes[c].copy(), frame, units[c].copy())
                self.live[track.track_id] = track
                ids[c] = track.track_id
                self._next_id += 1
        return ids, ended

    @staticmethod
    def _update(track: _LiveTrack, frame: int, box: np.ndarray, unit: np.ndarray) -> None:
        elapsed = max(frame - track.frame, 1)
        track.velocity = (box - track.box) / elapsed
        track.box = box.copy()
        track.frame = frame
        track.appearance_sum = track.appearance_sum + unit

    def finish(self) -> list[int]:
        """End every live track (end of video); returns their ids."""
        ended = list(self.live)
        self.live.clear()
        return ended
