"""`fuseface video IN --out DIR`: detect, track and fuse the faces of a video
(see :mod:`fuseface.video.pipeline`)."""

from __future__ import annotations

from pathlib import Path

import typer

from fuseface.cli.options import fusion_option, model_option, out_option


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    """Add this module's commands to the root app or to a shared group."""

    @app.command("video")
    def video(
        source: Path = typer.Argument(..., help="Video file (any container OpenCV reads)."),
        out: Path = out_option(..., "folder of the track JSONs, templates.npz and contact sheet"),
        model: str = model_option("dlib-resnet"),
        stride: int = typer.Option(1, help="Process every N-th frame."),
        fusion: str = fusion_option("norm_weighted", "average | norm_weighted | caface"),
        fusion_weights: Path = typer.Option(None, help="CAFace fusion weights file (for --fusion caface)."),
        gallery: Path = typer.Option(None, help="Folder of enrolment photos (sub-folder per person): identify tracks."),
        plot: bool = typer.Option(False, "--plot", help="Also plot per-frame vs fused cosine (longest track)."),
        upsample: float = typer.Option(1.0, help="Resize frames by this factor before detection (small faces)."),
        min_face_size: float = typer.Option(20.0, help="MTCNN minimum face size (pixels of the detected frame)."),
        max_gap: int = typer.Option(None, help="End a track after this many frames without it (default: 1 s)."),
        chunk_size: int = typer.Option(64, help="CAFace chunk size."),
        threshold: float = typer.Option(None, help="Cosine threshold for clustering / gallery (default: model's)."),
    ) -> None:
        """Detect, track and fuse faces: one template per track, tracks grouped into people.

        \b
        Example: fuseface video clip.mp4 -o runs/clip -m dlib-resnet --fusion norm_weighted
        """
        import fuseface
        from fuseface.video.api import analyse_video

        fm = fuseface.load(model)
        report = analyse_video(
            source,
            fm,
            out,
            stride=stride,
            fusion=fusion,
            fusion_weights=fusion_weights,
            gallery=gallery,
            plot=plot,
            upsample=upsample,
            min_face_size=min_face_size,
            max_gap=max_gap,
            chunk_size=chunk_size,
            threshold=threshold,
        )
        for line in report.lines():
            typer.echo(line)
