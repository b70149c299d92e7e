"""Files written for a processed video (under ``--out``):

* ``tracks/track_NNN.json`` — one per track (:meth:`fuseface.video.pipeline.Track.to_json`);
* ``templates.npz`` — ``templates`` (T, D) L2-normalised, ``track_ids``, ``persons`` (cluster label),
  ``identities`` (gallery name or ``""``), ``num_frames``;
* ``summary.json`` — the video, the options, the threshold, per track a one-line summary;
* ``contact_sheet.png`` — one row per track: its best frames (highest feature norm) with frame
  index, quality and fusion weight under each crop.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from fuseface.data.images import swap_red_blue
from fuseface.errors import DataError
from fuseface.video.pipeline import VideoResult

__all__ = ["contact_sheet", "write_outputs"]

TILE = 96
LABEL_H = 30
HEADER_W = 150


def contact_sheet(result: VideoResult, max_tracks: int = 50) -> np.ndarray:
    """RGB image: per track (row) the kept best crops, each labelled ``f<frame> q<norm> w<weight>``."""
    import cv2

    tracks = result.tracks[:max_tracks]
    cols = max((len(t.best) for t in tracks), default=1) or 1
    rows = max(len(tracks), 1)
    sheet = np.full((rows * (TILE + LABEL_H), HEADER_W + cols * TILE, 3), 255, np.uint8)
    font = cv2.FONT_HERSHEY_SIMPLEX
    for r, t in enumerate(tracks):
        y0 = r * (TILE + LABEL_H)
        weight_of = dict(zip(t.frames, t.weights, strict=True))
        who = t.identity if t.identity else f"person {t.person}"
        lines = [f"track {t.track_id}", who, f"{len(t)} frames", f"{t.frames[0]}-{t.frames[-1]}"]
        for k, line in enumerate(lines):
            cv2.putText(sheet, line, (6, y0 + 22 + 22 * k), font, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
        for c, (frame, quality, crop) in enumerate(t.best):
            x0 = HEADER_W + c * TILE
            sheet[y0 : y0 + TILE, x0 : x0 + TILE] = cv2.resize(crop, (TILE, TILE), interpolation=cv2.INTER_AREA)
            w = weight_of.get(frame, 0.0) * len(t)  # relative to uniform (1 = average weight)
            cv2.putText(sheet, f"f{frame} q{quality:.3g}", (x0 + 2, y0 + TILE + 12), font, 0.35, (0, 0, 0), 1)
            cv2.putText(sheet, f"w{w:.2f}x", (x0 + 2, y0 + TILE + 25), font, 0.35, (0, 0, 160), 1)
    return sheet


def _options_json(result: VideoResult) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(result.options).items()}


def write_outputs(result: VideoResult, out: str | Path) -> dict[str, Path]:
    """Write the track JSONs, ``templates.npz``, ``summary.json`` and ``contact_sheet.png``."""
    import cv2

    out = Path(out)
    (out / "tracks").mkdir(parents=True, exist_ok=True)
    for old in (out / "tracks").glob("track_*.json"):
        old.unlink()
    for t in result.tracks:
        (out / "tracks" / f"track_{t.track_id:03d}.json").write_text(json.dumps(t.to_json()))
    dim = result.tracks[0].template.shape[0] if result.tracks else 0
    np.savez(
        out / "templates.npz",
        templates=result.templates.reshape(len(result.tracks), dim).astype(np.float32),
        track_ids=np.array([t.track_id for t in result.tracks], np.int64),
        persons=np.array([t.person for t in result.tracks], np.int64),
        identities=np.array([t.identity or "" for t in result.tracks]),
        num_frames=np.array([len(t) for t in result.tracks], np.int64),
    )
    summary = {
        "video": result.path,
        "fps": result.fps,
        "frame_count": result.frame_count,
        "frames_read": result.frames_read,
        "faces": result.faces,
        "damage": result.damage,
        "gallery": result.gallery,
        "threshold": result.threshold,
        "seconds": round(result.seconds, 3),
        "options": _options_json(result),
        "people": len({t.person for t in result.tracks}),
        "tracks": [
            {
                "track": t.track_id,
                "person": t.person,
                "identity": t.identity,
                "similarity": t.similarity,
                "num_frames": len(t),
                "first_frame": t.frames[0],
                "last_frame": t.frames[-1],
                "mean_quality": float(np.mean(t.norms)),
            }
            for t in result.tracks
        ],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    sheet_path = out / "contact_sheet.png"
    if not cv2.imwrite(str(sheet_path), swap_red_blue(contact_sheet(result))):
        raise DataError(f"{sheet_path}: cannot write the contact sheet")
    return {
        "tracks": out / "tracks",
        "templates": out / "templates.npz",
        "summary": out / "summary.json",
        "contact_sheet": sheet_path,
    }
