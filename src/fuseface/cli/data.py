"""`fuseface data pack`: image folder -> RecordIO (see `fuseface.data.recordio.pack_image_folder`)."""

from __future__ import annotations

from pathlib import Path

import typer

from fuseface.cli.options import progress_option


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    """Add this module's commands to the root app or to a shared group."""

    @groups["data"].command("pack")
    def pack(
        folder: Path = typer.Argument(..., help="Image folder: one sub-folder of images per identity."),
        out: Path = typer.Argument(..., help="Output folder for train.rec, train.idx, property."),
        channel_order: str = typer.Option(
            "rgb", "--channel-order", help="rgb stores true colours; bgr stores channel-swapped images."
        ),
        quality: int = typer.Option(95, "--quality", min=1, max=100, help="JPEG quality for re-encoded images."),
        progress: bool = progress_option(True),
    ) -> None:
        """Pack an image folder into insightface-style RecordIO; unreadable images go to OUT/pack_failures.txt.

        \b
        Example: fuseface data pack faces_by_identity/ train_rec/
        """
        from fuseface.data.recordio import pack_image_folder

        result = pack_image_folder(folder, out, quality=quality, channel_order=channel_order, progress=progress)
        typer.echo(f"wrote {result.num_images} images of {result.num_classes} identities to {result.out_dir}")
        if result.failures:
            typer.echo(
                f"{len(result.failures)} image(s) left out (unreadable or truncated), listed in "
                f"{result.out_dir / 'pack_failures.txt'}"
            )
