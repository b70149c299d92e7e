"""``process_video``: frames -> faces -> tracks -> one streamed template per track -> people.

For each processed frame (every ``stride``-th, :mod:`fuseface.video.decode`): detect the faces
(MTCNN, optionally on an up-sampled copy, :mod:`fuseface.video.faces`), align and embed them,
associate them with the live tracks (:mod:`fuseface.video.track`), and add each face to its track's
:class:`~fuseface.video.fuse.TrackStream`. A track that ends (gap longer than ``max_gap`` frames, or
the end of the video) is finalised at once — template, per-frame fusion weights — and its fusion
state freed, so the working memory is that of the live tracks, whatever the video length.

After the video: tracks shorter than ``min_track_length`` faces are dropped (isolated false
detections), then the tracks are identified against a gallery when one is given
(:mod:`fuseface.video.identify`, open-set), or else clustered into people
(:mod:`fuseface.video.cluster`) at the model's calibrated threshold.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fuseface.errors import ConfigError
from fuseface.video.decode import VideoReader
from fuseface.video.fuse import STREAM_METHODS, TrackStream

__all__ = ["GATE_MARGIN", "Track", "VideoOptions", "VideoResult", "process_video"]

#: The tracker's appearance gate is the model's threshold minus this (see :class:`VideoOptions`).
GATE_MARGIN = 0.1


@dataclass
class VideoOptions:
    """Settings of :func:`process_video` (defaults suit the 120x66 CAFace clip and ordinary video).

    ``max_gap`` (frames) defaults to one second of video; ``threshold`` (clustering /
    identification) defaults to the model's calibrated threshold, and ``min_cosine`` (the tracker's
    appearance gate) to that threshold minus :data:`GATE_MARGIN`: the gate only has to reject
    implausible continuations, and a same-person verification threshold would split a track at
    every badly blurred frame. ``upsample`` resizes frames before detection; ``min_face_size`` is MTCNN's.
    """

    stride: int = 1
    fusion: str = "norm_weighted"
    fusion_weights: str | Path | None = None
    chunk_size: int = 64
    upsample: float = 1.0
    min_face_size: float = 20.0
    min_score: float = 0.9
    min_side: float = 0.0
    max_gap: int | None = None
    min_iou: float = 0.1
    min_cosine: float | None = None
    threshold: float | None = None
    min_track_length: int = 3
    keep_best: int = 6
    keep_features: bool = False
    max_frames: int | None = None
    on_damage: str = "warn"


@dataclass
class Track:
    """One finished track: per-frame records, the template and what it was matched to."""

    track_id: int
    frames: list[int]
    boxes: list[list[float]]
    scores: list[float]
    norms: list[float]
    weights: list[float]
    template: np.ndarray
    best: list[tuple[int, float, np.ndarray]]
    features: np.ndarray | None = None
    styles: np.ndarray | None = None
    person: int = -1
    identity: str | None = None
    similarity: float | None = None

    def __len__(self) -> int:
        return len(self.frames)

    def to_json(self) -> dict[str, Any]:
        """The per-track JSON: frames, boxes, per-frame quality (norm), score and weight, template."""
        return {
            "track": self.track_id,
            "person": self.person,
            "identity": self.identity,
            "similarity": self.similarity,
            "num_frames": len(self.frames),
            "first_frame": self.frames[0],
            "last_frame": self.frames[-1],
            "frames": [
                {
                    "frame": f,
                    "box": [round(v, 2) for v in b],
                    "score": round(s, 5),
                    "quality": round(q, 5),
                    "weight": round(w, 6),
                }
                for f, b, s, q, w in zip(self.frames, self.boxes, self.scores, self.norms, self.weights, strict=True)
            ],
            "template": [round(float(v), 7) for v in self.template],
        }


@dataclass
class VideoResult:
    """Everything :func:`process_video` found in one video."""

    path: str
    fps: float
    frame_count: int | None
    frames_read: int
    faces: int
    options: VideoOptions
    threshold: float
    tracks: list[Track] = field(default_factory=list)
    damage: str | None = None
    seconds: float = 0.0
    gallery: str | None = None

    @property
    def templates(self) -> np.ndarray:
        return np.stack([t.template for t in self.tracks]) if self.tracks else np.zeros((0, 0), np.float32)


def _load_caface(options: VideoOptions, model: Any) -> Any:
    if options.fusion != "caface":
        return None
    if options.fusion_weights is None:
        raise ConfigError("fusion 'caface' needs fusion_weights (--fusion-weights: a CAFace fusion weights file)")
    from fuseface.infer.fusion_file import load_fusion

    module = load_fusion(options.fusion_weights)
    if getattr(module, "num_clusters", None) is None:
        raise ConfigError(f"{options.fusion_weights}: not a CAFace fusion weights file")
    dim = int(getattr(model.net, "num_features", module.feature_dim))
    if module.feature_dim != dim:
        raise ConfigError(
            f"{options.fusion_weights}: CAFace was trained on {module.feature_dim}-d features, the model gives {dim}-d"
        )
    return module


def _style_stages(caface: Any) -> tuple[int, ...]:
    """The backbone stages the CAFace file was trained on (its ``extra["stages"]``; else CAFace's (1, 2))."""
    extra = getattr(caface, "fusion_extra", None) or {}
    return tuple(int(i) for i in extra.get("stages", (1, 2)))


def _default_detector(options: VideoOptions) -> Any:
    from fuseface.align.mtcnn import MTCNN
    from fuseface.video.faces import UpsampledDetector

    return UpsampledDetector(MTCNN(min_face_size=options.min_face_size), options.upsample)


def process_video(
    path: str | Path,
    model: Any,
    options: VideoOptions | None = None,
    *,
    detector: Any = None,
    gallery: Any = None,
    on_frame: Callable[[int], None] | None = None,
) -> VideoResult:
    """Detect, track and fuse the faces of a video (see the module docstring).

    ``model`` is a :class:`fuseface.infer.embedder.FaceModel`; ``detector`` replaces the default
    MTCNN (anything with ``detect(rgb) -> Detections``); ``gallery`` a
    :class:`fuseface.video.identify.PhotoGallery` (or anything with ``identify(template, threshold)``).
    """
    from fuseface.video.cluster import cluster_templates, model_threshold
    from fuseface.video.faces import FaceEmbedder
    from fuseface.video.track import Tracker

    options = options or VideoOptions()
    if options.fusion not in STREAM_METHODS:
        raise ConfigError(f"fusion must be one of {', '.join(STREAM_METHODS)}, got {options.fusion!r}")
    caface = _load_caface(options, model)
    start = time.perf_counter()
    reader = VideoReader(path, stride=options.stride, max_frames=options.max_frames, on_damage=options.on_damage)
    threshold = model_threshold(model) if options.threshold is None else float(options.threshold)
    embedder = FaceEmbedder(
        model,
        detector if detector is not None else _default_detector(options),
        min_score=options.min_score,
        min_side=options.min_side,
        with_styles=caface is not None,
        style_stages=_style_stages(caface),
    )
    max_gap = options.max_gap if options.max_gap is not None else max(1, round(reader.fps))
    tracker = Tracker(
        max_gap=max_gap,
        min_iou=options.min_iou,
        min_cosine=threshold - GATE_MARGIN if options.min_cosine is None else options.min_cosine,
    )
    streams: dict[int, TrackStream] = {}
    finished: list[Track] = []
    frames_read = faces_seen = 0

    def finish(ids: list[int]) -> None:
        for tid in ids:
            stream = streams.pop(tid)
            if len(stream) >= options.min_track_length:
                finished.append(_finalise(tid, stream))

    for frame in reader:
        frames_read += 1
        faces = embedder(frame.image)
        faces_seen += len(faces)
        ids, ended = tracker.step(frame.index, faces.boxes, faces.features)
        finish(ended)
        for k, tid in enumerate(ids):
            if tid not in streams:
                streams[tid] = TrackStream(
                    options.fusion,
                    caface=caface,
                    chunk_size=options.chunk_size,
                    keep_best=options.keep_best,
                    keep_features=options.keep_features,
                )
            streams[tid].add(
                frame.index,
                faces.boxes[k],
                float(faces.scores[k]),
                faces.features[k],
                crop=faces.crops[k],
                style=None if faces.styles is None else faces.styles[k],
            )
        if on_frame is not None:
            on_frame(frame.index)
    finish(tracker.finish())
    finished.sort(key=lambda t: (t.frames[0], t.track_id))
    if finished:
        if gallery is not None:
            for t in finished:
                match = gallery.identify(t.template, threshold)
                t.identity, t.similarity = match.identity, match.similarity
        labels = cluster_templates(np.stack([t.template for t in finished]), threshold, [t.frames for t in finished])
        for t, label in zip(finished, labels, strict=True):
            t.person = int(label)
    return VideoResult(
        path=str(path),
        fps=reader.fps,
        frame_count=reader.frame_count,
        frames_read=frames_read,
        faces=faces_seen,
        options=options,
        threshold=threshold,
        tracks=finished,
        damage=reader.damage,
        seconds=time.perf_counter() - start,
        gallery=getattr(gallery, "source", None),
    )


def _finalise(track_id: int, stream: TrackStream) -> Track:
    weights = stream.weights()
    template = stream.template()
    return Track(
        track_id=track_id,
        frames=[r.frame for r in stream.records],
        boxes=[r.box for r in stream.records],
        scores=[r.score for r in stream.records],
        norms=[r.norm for r in stream.records],
        weights=[float(w) for w in weights],
        template=template,
        best=stream.best_frames(),
        features=stream.features() if stream.kept_features is not None else None,
        styles=stream.styles(),
    )
