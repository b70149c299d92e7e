"""Video frames with OpenCV: any container ``cv2.VideoCapture`` reads, a frame stride, and damage
reported instead of silently ending the video early.

``iter_frames(path, stride)`` yields :class:`Frame` objects (index in the file, time in seconds,
uint8 H x W x 3 **RGB** pixels) for frames ``0, stride, 2·stride, ...``. Skipped frames are only
``grab``-bed (demuxed and decoded by FFmpeg but not converted to BGR), which is what makes a stride
cheaper than decoding everything.

Damage. OpenCV does not raise on a broken stream: ``grab()`` simply returns False. The reader
compares where the stream stopped with the frame count in the container header
(``CAP_PROP_FRAME_COUNT``, written before the damage in AVI/MKV, and in an MP4's index). When it
stops early it first tries a few more ``grab`` calls (a corrupt packet in the middle loses only
the frames it held), then reports the damage with the file and frame index:

* ``on_damage="warn"`` (default): a :class:`VideoDamageWarning` is issued and the iteration ends
  normally, so every frame before the damage is still used; :attr:`VideoReader.damage` keeps
  the message for reports;
* ``on_damage="raise"``: :class:`VideoDecodeError` (a :class:`~fuseface.errors.DataError`) after
  the frames before the damage have been yielded.

The frame the damage falls into may come out partly decoded (FFmpeg conceals what it could not
read and OpenCV reports success); every earlier frame is intact.

A file that cannot be opened at all raises :class:`VideoDecodeError` at once. This is the case of an
MP4 cut before its ``moov`` index, which writers (OpenCV's included) put at the end of the file:
FFmpeg needs it to find any frame, so nothing can be recovered from such a file.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fuseface.data.images import swap_red_blue
from fuseface.errors import DataError

__all__ = ["Frame", "VideoDamageWarning", "VideoDecodeError", "VideoReader", "iter_frames"]

#: Extra ``grab`` attempts after a failed one before the stream is declared ended.
RESYNC_ATTEMPTS = 8


class VideoDecodeError(DataError):
    """A video file cannot be opened or decoding stopped at a damaged frame (the message names both)."""


class VideoDamageWarning(UserWarning):
    """Decoding stopped (or skipped frames) before the end the container announces."""


@dataclass
class Frame:
    """One decoded frame: ``index`` in the file (0-based), ``time`` in seconds, ``image`` RGB uint8."""

    index: int
    time: float
    image: np.ndarray


class VideoReader:
    """Iterate the frames of one video file (see the module docstring for stride and damage).

    Args:
        path: the video file.
        stride: keep every ``stride``-th frame (1 = all).
        max_frames: stop after this many frame *indices* (``None`` = the whole file).
        on_damage: ``"warn"`` or ``"raise"``.
    """

    def __init__(
        self, path: str | Path, stride: int = 1, max_frames: int | None = None, on_damage: str = "warn"
    ) -> None:
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        if on_damage not in ("warn", "raise"):
            raise ValueError(f"on_damage must be 'warn' or 'raise', got {on_damage!r}")
        self.path = Path(path)
        self.stride = int(stride)
        self.max_frames = max_frames
        self.on_damage = on_damage
        self.damage: str | None = None
        self.skipped: list[int] = []
        if not self.path.is_file():
            raise VideoDecodeError(f"{self.path}: video file not found")
        import cv2

        cap = cv2.VideoCapture(str(self.path))
        if not cap.isOpened():
            raise VideoDecodeError(
                f"{self.path}: cannot open as a video (not a video OpenCV reads, or truncated before its "
                "index: an MP4 cut before its 'moov' atom holds no readable frame)"
            )
        self.fps = float(cap.get(cv2.CAP_PROP_FPS)) or 30.0
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        self.frame_count: int | None = count if count > 0 else None
        self.width = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        self.height = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        cap.release()

    def __iter__(self) -> Iterator[Frame]:
        import cv2

        cap = cv2.VideoCapture(str(self.path))
        end = self.frame_count if self.max_frames is None else min(self.frame_count or self.max_frames, self.max_frames)
        index = 0
        try:
            while end is None or index < end:
                if not cap.grab() and not self._resync(cap, index, end):
                    break
                if index % self.stride == 0:
                    ok, bgr = cap.retrieve()
                    if ok and bgr is not None:
                        yield Frame(index, index / self.fps, swap_red_blue(bgr))
                    else:
                        self.skipped.append(index)
                index += 1
        finally:
            cap.release()
        self._finish(index, end)

    def _resync(self, cap: object, index: int, end: int | None) -> bool:
        """After a failed grab at ``index``: retry a few frames (corrupt packet) unless the announced
        end is reached. Lost frames are recorded in ``skipped``."""
        if end is None or index >= end:
            return False
        for attempt in range(1, RESYNC_ATTEMPTS + 1):
            if index + attempt >= end:
                return False
            if cap.grab():  # type: ignore[attr-defined]
                self.skipped.extend(range(index, index + attempt))
                return True
        return False

    def _finish(self, stopped_at: int, end: int | None) -> None:
        messages = []
        if end is not None and stopped_at < end:
            messages.append(
                f"{self.path}: decoding stopped at frame {stopped_at} of {end} (file truncated or corrupt); "
                f"frames 0..{stopped_at - 1} were used"
            )
        if self.skipped:
            shown = ", ".join(str(i) for i in self.skipped[:5]) + (" ..." if len(self.skipped) > 5 else "")
            messages.append(f"{self.path}: {len(self.skipped)} damaged frame(s) skipped ({shown})")
        if not messages:
            return
        self.damage = "; ".join(messages)
        if self.on_damage == "raise":
            raise VideoDecodeError(self.damage)
        warnings.warn(self.damage, VideoDamageWarning, stacklevel=3)


def iter_frames(
    path: str | Path, stride: int = 1, max_frames: int | None = None, on_damage: str = "warn"
) -> Iterator[Frame]:
    """Yield the frames ``0, stride, 2·stride ...`` of a video (see :class:`VideoReader`)."""
    yield from VideoReader(path, stride=stride, max_frames=max_frames, on_damage=on_damage)
