"""Synthetic videos built from real photos, with a known answer: who is where in which frame.

``make_synthetic_video(path, people)`` writes a video (OpenCV ``VideoWriter``, MJPG in AVI by
default, so a cut file stays readable up to the cut) in which each person of ``people`` (a name and
a face photo, e.g. LFW) appears in one contiguous *segment* of frames. Segments come in pairs that
share the screen (left and right lanes), and consecutive pairs are separated by ``gap`` empty frames,
so a tracker must both keep two simultaneous faces apart and end tracks when people leave.

Inside a segment the face patch (the centre of the photo, where LFW's deep-funnelled photos hold
the face) moves: a slow sinusoidal drift in x and y, a scale that oscillates between
``scale_range`` (so the face size changes by up to 2x), and a Gaussian blur whose sigma follows a
triangle wave up to ``max_blur`` (sharp and blurred frames alternate, like motion blur in real
video). A little Gaussian noise is added to every frame. Everything is seeded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["Appearance", "make_synthetic_video"]


@dataclass
class Appearance:
    """Ground truth: ``name`` is on screen in frames ``start`` .. ``end`` (inclusive), in ``lane`` (0 left, 1 right)."""

    name: str
    start: int
    end: int
    lane: int


def _face_patch(photo: np.ndarray, crop: float) -> np.ndarray:
    h, w = photo.shape[:2]
    side = int(min(h, w) * crop)
    y0, x0 = (h - side) // 2, (w - side) // 2
    return photo[y0 : y0 + side, x0 : x0 + side]


def make_synthetic_video(
    path: str | Path,
    people: Sequence[tuple[str, np.ndarray]],
    frames_per_person: int = 40,
    gap: int = 15,
    size: tuple[int, int] = (320, 240),
    fps: float = 10.0,
    face_side: int = 110,
    scale_range: tuple[float, float] = (0.6, 1.1),
    max_blur: float = 2.0,
    crop: float = 0.6,
    fourcc: str = "MJPG",
    seed: int = 0,
) -> list[Appearance]:
    """Write the video and return who appears when (see the module docstring).

    ``people``: ``(name, uint8 RGB photo)`` pairs; ``size`` is ``(width, height)``; ``face_side``
    the patch side at scale 1. Returns one :class:`Appearance` per person.
    """
    import cv2

    rng = np.random.default_rng(seed)
    width, height = size
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"{path}: OpenCV cannot write {fourcc} video")
    patches = [_face_patch(photo, crop) for _, photo in people]
    appearances: list[Appearance] = []
    frame_index = 0
    background = np.full((height, width, 3), 60, np.uint8)
    background[:, :, 2] = 80
    try:
        for pair_start in range(0, len(people), 2):
            members = list(range(pair_start, min(pair_start + 2, len(people))))
            phases = rng.uniform(0, 2 * np.pi, size=(len(members), 3))
            for k, m in enumerate(members):
                appearances.append(Appearance(people[m][0], frame_index, frame_index + frames_per_person - 1, k))
            for t in range(frames_per_person):
                frame = background.copy()
                for k, m in enumerate(members):
                    ph = phases[k]
                    wave = 0.5 * (1 + np.sin(2 * np.pi * t / 37 + ph[0]))
                    s = scale_range[0] + (scale_range[1] - scale_range[0]) * wave
                    side = max(24, int(face_side * s))
                    patch = cv2.resize(patches[m], (side, side), interpolation=cv2.INTER_AREA)
                    sigma = max_blur * abs(((t / 9.0 + ph[1]) % 2.0) - 1.0)
                    if sigma > 0.3:
                        patch = cv2.GaussianBlur(patch, (0, 0), sigma)
                    lane_cx = width * (0.27 if k == 0 else 0.73)
                    cx = lane_cx + 0.08 * width * np.sin(2 * np.pi * t / 50 + ph[2])
                    cy = height * 0.5 + 0.12 * height * np.cos(2 * np.pi * t / 43 + ph[2])
                    x0 = int(np.clip(cx - side / 2, 0, width - side))
                    y0 = int(np.clip(cy - side / 2, 0, height - side))
                    frame[y0 : y0 + side, x0 : x0 + side] = patch
                noise = rng.normal(0, 3, frame.shape)
                frame = np.clip(frame.astype(np.float64) + noise, 0, 255).astype(np.uint8)
                writer.write(np.ascontiguousarray(frame[:, :, ::-1]))
                frame_index += 1
            for _ in range(gap):
                writer.write(np.ascontiguousarray(background[:, :, ::-1]))
                frame_index += 1
    finally:
        writer.release()
    return appearances
