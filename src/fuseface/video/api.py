"""``analyse_video``: the whole ``fuseface video`` run as one call (process, identify or cluster,
write the files, optionally the reference plot), for the CLI and for Python users.

With ``gallery`` (a folder of enrolment photos, one sub-folder per person) every track is
identified open-set against it (:class:`fuseface.video.identify.PhotoGallery`); without, tracks are
clustered into people (always done; ``person`` in the outputs). ``plot=True`` keeps the features
of every track and writes ``reference_plot.png`` / ``reference_plot.json`` for the longest track
(:mod:`fuseface.video.reference_plot`), comparing average, norm-weighted and, when
``fusion_weights`` names a CAFace file, CAFace fusion.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fuseface.video.pipeline import VideoOptions, VideoResult, process_video

__all__ = ["VideoReport", "analyse_video"]


@dataclass
class VideoReport:
    """What :func:`analyse_video` did: the result, the files written, the plot numbers."""

    result: VideoResult
    files: dict[str, Path]
    reference: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        r = self.result
        out = list(self.notes)
        if r.damage:
            out.append(f"warning: {r.damage}")
        people = len({t.person for t in r.tracks})
        out.append(
            f"{r.path}: {r.frames_read} frames read (stride {r.options.stride}), {r.faces} faces, "
            f"{len(r.tracks)} tracks, {people} people, {r.seconds:.1f} s"
        )
        for t in r.tracks:
            who = f"identity {t.identity or 'unknown'} ({t.similarity:.3f})" if t.similarity is not None else ""
            out.append(
                f"  track {t.track_id}: frames {t.frames[0]}-{t.frames[-1]} ({len(t)} faces), person {t.person} {who}"
            )
        if self.reference is not None:
            fused = ", ".join(f"{k} {v:.4f}" for k, v in self.reference["fused_cosine"].items())
            out.append(f"reference plot: mean frame cosine {self.reference['mean_frame_cosine']:.4f}; fused: {fused}")
        out.append(f"wrote {', '.join(str(p) for p in self.files.values())}")
        return out


def analyse_video(
    source: str | Path,
    model: Any,
    out: str | Path,
    *,
    gallery: str | Path | None = None,
    plot: bool = False,
    **options: Any,
) -> VideoReport:
    """Process ``source`` with ``model`` (a FaceModel) and write everything under ``out``.

    Keyword ``options`` are :class:`VideoOptions` fields (``stride``, ``fusion``, ...); ``None``
    values keep the defaults.
    """
    from fuseface.video.outputs import write_outputs

    opts = VideoOptions(**{k: v for k, v in options.items() if v is not None})
    if plot:
        opts.keep_features = True
    notes: list[str] = []
    photo_gallery = None
    if gallery is not None:
        from fuseface.video.identify import PhotoGallery

        photo_gallery = PhotoGallery.from_folder(gallery, model)
        notes.append(f"gallery {gallery}: {len(photo_gallery.names)} identities from photos")
        for name, msg in photo_gallery.skipped.items():
            notes.append(f"gallery photo skipped: {name}: {msg}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = process_video(source, model, opts, gallery=photo_gallery)
    for w in caught:
        if not (result.damage and str(w.message) == result.damage):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    files = write_outputs(result, out)
    report = VideoReport(result, files, notes=notes)
    if plot and result.tracks:
        from fuseface.errors import DataError

        try:
            report.reference = _reference_plot(result, Path(out), opts)
            files["reference_plot"] = Path(out) / "reference_plot.png"
        except DataError as exc:
            report.notes.append(f"no reference plot: {exc}")
    return report


def _reference_plot(result: VideoResult, out: Path, opts: VideoOptions) -> dict[str, Any]:
    import numpy as np

    from fuseface.infer.fusion_file import load_fusion
    from fuseface.video.reference_plot import compare_to_reference, plot_reference

    track = max(result.tracks, key=len)
    caface = load_fusion(opts.fusion_weights) if opts.fusion_weights is not None and track.styles is not None else None
    comp = compare_to_reference(
        track.features, np.asarray(track.frames), styles=track.styles, caface=caface, chunk_size=opts.chunk_size
    )
    data = comp.to_json()
    data.update(video=result.path, track=track.track_id, stride=opts.stride)
    (out / "reference_plot.json").write_text(json.dumps(data))
    plot_reference(
        comp,
        out / "reference_plot.png",
        title=f"{Path(result.path).name}, track {track.track_id}: {len(comp.frames)} probe frames vs "
        f"{len(comp.reference_frames)} top-norm reference frames",
    )
    return data
