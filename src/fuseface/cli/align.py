"""`fuseface align`, `fuseface data build-bin`, `fuseface models fetch mtcnn` (see `fuseface.cli.main`)."""

from __future__ import annotations

from pathlib import Path

import typer

from fuseface.cli.options import out_option, progress_option


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    """Add this module's commands to the root app or to a shared group."""

    @app.command("align")
    def align(
        src: Path = typer.Argument(..., help="Folder of photos (recursive) or a text file listing photo paths."),
        dst: Path = typer.Argument(..., help="Output folder: aligned crops mirroring SRC's tree."),
        policy: str = typer.Option("largest", help="Several faces: largest | central | all."),
        size: int = typer.Option(112, help="Side of the aligned crop (ArcFace template, 112)."),
        ext: str = typer.Option(".jpg", help="Crop file type: .jpg or .png (lossless)."),
        landmarks: Path = typer.Option(None, help="Landmark file (`name x1 y1 ... x5 y5 [score]`) instead of MTCNN."),
        min_face: float = typer.Option(20.0, help="MTCNN smallest face side, pixels."),
        progress: bool = progress_option(True, quiet_alias=True),
        workers: int = typer.Option(
            None, help="Detection worker processes (default: 3/4 of the cores); 0: all in this process."
        ),
    ) -> None:
        """Detect (MTCNN), align to the ArcFace 112x112 template and write crops; resumable.

        Writes DST/faces.jsonl (journal), DST/faces.csv (boxes, landmarks, scores) and
        DST/failures.txt (unreadable photos, photos without a face). Re-running skips done photos.
        Detection runs in worker processes (--workers), 8 photos per call; the output is the same
        whatever the number of workers.

        \b
        Example: fuseface align photos/ aligned/ --policy largest
        """
        from fuseface.align.detector import POLICIES
        from fuseface.align.pipeline import align_folder
        from fuseface.errors import ConfigError

        if policy not in POLICIES:
            raise ConfigError(f"--policy must be one of {', '.join(POLICIES)}, got {policy!r}")
        detector = None
        if landmarks is None:
            from functools import partial

            from fuseface.align.mtcnn import MTCNN

            detector = partial(MTCNN, min_face_size=min_face)
        if workers is None:
            from fuseface.infer.pipeline import default_workers

            workers = default_workers() if landmarks is None else 0
        if workers < 0:
            raise ConfigError(f"--workers must be >= 0, got {workers}")
        report = align_folder(
            src,
            dst,
            detector=detector,
            policy=policy,
            size=size,
            ext=ext if ext.startswith(".") else "." + ext,
            landmarks=landmarks,
            progress=progress,
            workers=workers,
        )
        typer.echo(
            f"{report.processed} photos processed ({report.skipped} already done), {report.faces} faces written, "
            f"{report.failed} failures (see {dst / 'failures.txt'})"
        )

    @groups["data"].command("build-bin")
    def build_bin(
        aligned: Path = typer.Argument(..., help="Aligned LFW folder (output of `fuseface align`)."),
        pairs: Path = typer.Option(..., help="LFW pairs.txt (View 2: 10 folds x 600 pairs)."),
        out: Path = out_option(Path("lfw.bin"), "the .bin verification set"),
        ext: str = typer.Option(".jpg", help="Extension of the aligned crops."),
    ) -> None:
        """Aligned LFW + pairs.txt -> lfw.bin (images in pair order, issame flags).

        Photos whose face was not detected are aligned with the mean landmarks of the detected
        ones (LFW images are centred, 250x250), using ALIGNED/faces.jsonl and ALIGNED/source.txt
        written by `fuseface align`; without them a missing crop is an error naming the file.

        \b
        Example: fuseface data build-bin aligned_lfw/ --pairs lfw/pairs.txt -o lfw.bin
        """
        from fuseface.align.pipeline import build_lfw_bin

        info = build_lfw_bin(aligned, pairs, out, ext=ext if ext.startswith(".") else "." + ext)
        typer.echo(f"wrote {out}: {info['pairs']} pairs ({info['fallback']} images aligned with mean landmarks)")

    @groups["models"].command("fetch")
    def fetch(
        name: str = typer.Argument(..., help="What to fetch: mtcnn (detector) or dlib-resnet (face model)."),
        wheel: Path = typer.Option(None, help="Use this facenet-pytorch wheel instead of downloading it."),
        archive: Path = typer.Option(
            None, help="dlib-resnet: use this face-recognition-models archive instead of downloading it."
        ),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="Only errors."),
    ) -> None:
        """Download (pip, --no-deps), verify (SHA-256) and cache weights. Idempotent.

        \b
        Example: fuseface models fetch dlib-resnet
        """
        from fuseface.errors import ConfigError

        if name == "dlib-resnet":
            from fuseface.infer.pretrained import fetch_dlib_resnet

            path = fetch_dlib_resnet(archive=archive, quiet=quiet)
            if not quiet:
                typer.echo(str(path))
            return
        if name != "mtcnn":
            raise ConfigError(f"unknown weights {name!r}; available: mtcnn, dlib-resnet")
        from fuseface.align.weights import fetch_mtcnn

        folder = fetch_mtcnn(wheel=wheel, quiet=quiet)
        if not quiet:
            typer.echo(str(folder))
