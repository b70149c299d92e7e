"""`fuseface gallery create | add | remove | list | search | export` (see `fuseface.cli.main`).

Thin wrappers over :class:`fuseface.gallery.Gallery`: enrol people once into a gallery directory
(SQLite + vector index), add photos later, search open-set. ``-m`` defaults to the model recorded
when the gallery was created.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from fuseface.cli.options import fusion_option, model_option


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    group = groups["gallery"]

    @group.command("create")
    def create(
        directory: Path = typer.Argument(..., help="New gallery directory."),
        model: str = model_option(...),
        fusion: str = fusion_option("average", "average | norm_weighted | caface"),
        fusion_weights: Path | None = typer.Option(None, help="CAFace fusion weights file (for --fusion caface)."),
        backend: str = typer.Option("local", help="local (SQLite + faiss) | milvus."),
        index: str = typer.Option("auto", help="Local index: auto (flat, IVF above 200k) | flat | ivf | hnsw."),
        milvus_uri: str | None = typer.Option(
            None, help="Milvus URI: DIR/milvus.db (milvus-lite) by default, or http://host:19530."
        ),
        threshold: float | None = typer.Option(None, help="Open-set threshold (default: the model's, else 0.3)."),
    ) -> None:
        """Create an empty gallery for one model.

        \b
        Example: fuseface gallery create my_gallery -m dlib-resnet --fusion average
        """
        from fuseface.gallery import Gallery

        with Gallery.create(
            directory,
            model,
            fusion=fusion,
            fusion_weights=fusion_weights,
            backend=backend,
            index_kind=index,
            milvus_uri=milvus_uri,
            threshold=threshold,
        ) as g:
            typer.echo(
                f"created {directory}: model {g.meta['model_arch']} ({g.dim}-d), fusion {g.fusion_name}, "
                f"backend {g.meta['backend']}, threshold {g.threshold:.3f}"
            )

    @group.command("add")
    def add(
        directory: Path = typer.Argument(..., help="Gallery directory."),
        name: str = typer.Argument(..., help="Identity name (created if new)."),
        photos: list[Path] = typer.Argument(..., help="Photos to enrol (detected, aligned, embedded)."),
        model: str | None = model_option(None, "default: the one the gallery was created with"),
    ) -> None:
        """Enrol photos under NAME; the identity's template is updated photo by photo.

        \b
        Example: fuseface gallery add my_gallery alice alice1.jpg alice2.jpg
        """
        from fuseface.gallery import Gallery

        with Gallery.open(directory, model, stored_model=True) as g:
            report = g.add(name, photos)
        for source, reason in report.errors.items():
            typer.secho(f"skipped {source}: {reason}", fg=typer.colors.YELLOW, err=True)
        for source in report.duplicates:
            typer.secho(f"already enrolled: {source}", fg=typer.colors.YELLOW, err=True)
        typer.echo(
            f"{name}: +{len(report.added)} photos, {report.n_images} in all, template v{report.template_version}"
        )

    @group.command("remove")
    def remove(
        directory: Path = typer.Argument(..., help="Gallery directory."),
        name: str = typer.Argument(..., help="Identity name."),
        photos: list[str] = typer.Argument(None, help="Only these photos (path, source name or SHA-256)."),
    ) -> None:
        """Remove an identity, or some of its photos (the template is recomputed without them).

        \b
        Example: fuseface gallery remove my_gallery alice alice2.jpg
        """
        from fuseface.gallery import Gallery

        with Gallery.open(directory) as g:
            n = g.remove(name, photos or None)
        typer.echo(f"{name}: removed {n} photos" + ("" if photos else " (identity deleted)"))

    @group.command("list")
    def list_(
        directory: Path = typer.Argument(..., help="Gallery directory."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    ) -> None:
        """List the identities with their photo counts and template versions.

        \b
        Example: fuseface gallery list my_gallery --json
        """
        from fuseface.gallery import Gallery

        with Gallery.open(directory) as g:
            rows = g.list()
        if as_json:
            typer.echo(json.dumps(rows))
            return
        for r in rows:
            typer.echo(f"{r['name']}\t{r['n_images']} photos\ttemplate v{r['template_version']}")
        typer.echo(f"{len(rows)} identities")

    @group.command("search")
    def search(
        directory: Path = typer.Argument(..., help="Gallery directory."),
        photos: list[Path] = typer.Argument(..., help="Query photos (each its own query unless --fuse)."),
        k: int = typer.Option(5, "-k", help="Candidates per query."),
        threshold: float | None = typer.Option(None, help="Open-set threshold (default: the gallery's)."),
        fuse: bool = typer.Option(False, help="Fuse the query photos into one template first."),
        model: str | None = model_option(None, "default: the one the gallery was created with"),
        as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    ) -> None:
        """Open-set search: the best identity when its score reaches the threshold, else unknown.

        \b
        Example: fuseface gallery search my_gallery query.jpg -k 5
        """
        from fuseface.gallery import Gallery

        with Gallery.open(directory, model, stored_model=True) as g:
            results = g.search(photos, k=k, threshold=threshold, fuse=fuse)
        if as_json:
            typer.echo(json.dumps([r.to_dict() for r in results]))
            return
        for r in results:
            if r.error:
                typer.secho(f"skipped {r.error}", fg=typer.colors.YELLOW, err=True)
                continue
            verdict = r.match if r.match is not None else "unknown"
            typer.echo(f"{r.query}: {verdict} ({r.score:.4f}, threshold {r.threshold:.3f})")
            for rank, (name, score) in enumerate(r.candidates, 1):
                typer.echo(f"  {rank:>3}  {score:.4f}  {name}")

    @group.command("export")
    def export(
        directory: Path = typer.Argument(..., help="Gallery directory."),
        out: Path = typer.Argument(
            ..., help="Output .npz (templates and per-photo embeddings) or .parquet (templates)."
        ),
    ) -> None:
        """Export the templates (and, for .npz, every stored embedding).

        \b
        Example: fuseface gallery export my_gallery templates.npz
        """
        from fuseface.gallery import Gallery

        with Gallery.open(directory) as g:
            path = g.export(out)
        typer.echo(f"wrote {path}")
