"""`fuseface embed | compare | fuse | search | export` (see `fuseface.cli.main`).

Each command loads a fuseface model file (``--model``), takes photos or aligned crops, and prints
one line per result. Photos that cannot be used (unreadable, no face) are reported on stderr and
the rest goes on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from fuseface.cli.options import (
    calibration_option,
    flip_option,
    fusion_option,
    model_option,
    out_option,
    progress_option,
)

MODEL_DEFAULT = "default: dlib-resnet (after `fuseface models fetch dlib-resnet`)"
MODEL_HELP = (
    "fuseface model file (.safetensors with architecture metadata) or a fetched pretrained name; "
    "default: dlib-resnet (after `fuseface models fetch dlib-resnet`)."
)


def _load(model: Path | None, **kwargs: Any) -> Any:
    import fuseface
    from fuseface.infer.pretrained import default_model

    return fuseface.load(str(model) if model is not None else str(default_model()), **kwargs)


def _report_errors(errors: dict[int, str]) -> None:
    for msg in errors.values():
        typer.secho(f"skipped: {msg}", fg=typer.colors.YELLOW, err=True)


def _gallery_images(folder: Path) -> list[Path]:
    from fuseface.align.pipeline import list_photos

    root, rels = list_photos(folder)
    return [root / r for r in rels]


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    """Add this module's commands to the root app or to a shared group."""

    @app.command("embed")
    def embed(
        images: list[Path] = typer.Argument(..., help="Photos or aligned crops (files or folders)."),
        model: Path = model_option(None, MODEL_DEFAULT),
        out: Path = out_option(Path("embeddings.npz"), "an .npz with embeddings, norms, paths, ok"),
        flip: bool = flip_option(False),
        progress: bool = progress_option(True),
        detect: bool = typer.Option(None, "--detect/--no-detect", help="Force / forbid detection (default: auto)."),
        batch_size: int = typer.Option(64, help="Batch size."),
        workers: int = typer.Option(
            None, help="Detection worker processes (default: 3/4 of the cores); 0: all in this process."
        ),
        threads: int = typer.Option(
            None, help="Torch threads of the embedding process (default: the cores the workers leave, at least 1)."
        ),
        precision: str = typer.Option(
            "fp32", help="fp32 | int8 (static int8 through ONNX Runtime, ~2x faster on a CPU; needs --calibration)."
        ),
        calibration: Path = calibration_option("with --precision int8, crops like the ones embedded"),
    ) -> None:
        """Embed photos (detect + align) or crops; writes un-normalised embeddings and their norms.

        Detection runs in worker processes while this one embeds; finished batches go to
        OUT.parts/ as the run goes, so an interrupted run started again with the same arguments
        resumes where it stopped (the folder is removed once OUT is written).

        \b
        Example: fuseface embed photos/ -o emb.npz --workers 2
        Example: fuseface embed photos/ -o emb.npz --precision int8 --calibration aligned/"""
        from fuseface.errors import ConfigError
        from fuseface.infer.embedder import PRECISIONS
        from fuseface.infer.pipeline import embed_files, journal_for, output_path, remove_journal, save_embeddings

        if precision not in PRECISIONS:
            raise ConfigError(f"--precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
        if precision == "int8" and calibration is None:
            raise ConfigError("--precision int8 needs --calibration FOLDER (aligned face crops)")
        if calibration is not None and not calibration.is_dir():
            raise ConfigError(f"--calibration {calibration}: not a folder")
        paths = [p for item in images for p in (_gallery_images(item) if item.is_dir() else [item])]
        fm = _load(model, precision=precision, calibration=calibration if precision == "int8" else None)
        out = output_path(out)
        journal = journal_for(out)
        res = embed_files(
            fm,
            paths,
            workers=workers,
            batch_size=batch_size,
            flip=flip,
            detect=detect,
            journal=journal,
            progress=progress and len(paths) > 20,
            threads=threads,
        )
        _report_errors(res.errors)
        if not res.ok.any():
            from fuseface.errors import DataError

            remove_journal(journal)
            raise DataError(f"no usable photo among {len(paths)} ({', '.join(str(p) for p in paths[:3])} ...)")
        save_embeddings(out, res, paths)
        remove_journal(journal)
        typer.echo(f"wrote {out}: {int(res.ok.sum())}/{len(paths)} embedded, dim {res.embeddings.shape[1]}")

    @app.command("compare")
    def compare(
        image_a: Path = typer.Argument(..., help="First photo or aligned crop."),
        image_b: Path = typer.Argument(..., help="Second photo or aligned crop."),
        model: Path = model_option(None, MODEL_DEFAULT),
        threshold: float = typer.Option(None, help="Cosine threshold for 'same' (default: the model's, else 0.3)."),
        flip: bool = flip_option(False),
    ) -> None:
        """Cosine similarity of the faces in two images and a same / different verdict.

        \b
        Example: fuseface compare a.jpg b.jpg -m dlib-resnet
        """

        fm = _load(model)
        r = fm.compare(image_a, image_b, threshold=threshold, flip=flip)
        verdict = "same person" if r["same"] else "different people"
        typer.echo(f"similarity {r['similarity']:.4f} (threshold {r['threshold']:.3f}): {verdict}")

    @app.command("fuse")
    def fuse(
        images: list[Path] = typer.Argument(..., help="Photos (or crops) of one person."),
        model: Path = model_option(None, MODEL_DEFAULT),
        method: str = fusion_option("average", "average | norm_weighted | caface", alias=True),
        fusion_weights: Path = typer.Option(None, help="Fusion weights file (required for caface)."),
        out: Path = out_option(None, "write the fused L2-normalised template (.npy)"),
        compare_to: Path = typer.Option(None, help="Also print the cosine of the template with this image."),
    ) -> None:
        """Fuse the embeddings of several images into one L2-normalised template.

        \b
        Example: fuseface fuse a1.jpg a2.jpg a3.jpg --fusion norm_weighted -o alice.npy
        """
        import numpy as np

        import fuseface
        from fuseface.errors import ConfigError, DataError
        from fuseface.registry import names

        fusions = names("fusion")
        if method not in fusions:
            raise ConfigError(f"--fusion {method!r} is not one of: {', '.join(fusions)}")
        fm = _load(model)
        if method == "caface":
            if fusion_weights is None:
                raise ConfigError("--fusion caface needs --fusion-weights (a CAFace fusion weights file)")
            crops, kept = [], []
            for p in images:
                try:
                    crops.append(fm.prepare(p)[0])
                    kept.append(p)
                except DataError as exc:
                    typer.secho(f"skipped: {exc}", fg=typer.colors.YELLOW, err=True)
            if not crops:
                raise DataError("no usable image to fuse")
            feats, styles = fm.embed_with_styles(np.stack(crops))
            template = fuseface.fuse(feats, method="caface", styles=styles, model=str(fusion_weights))
        else:
            res = fm.embed_photos(images)
            _report_errors(res.errors)
            if not res.ok.any():
                raise DataError("no usable image to fuse")
            template = fuseface.fuse(
                res.embeddings[res.ok], method=method, model=str(fusion_weights) if fusion_weights else None
            )
        typer.echo(f"fused {len(images)} images with {method}: template dim {template.shape[0]}")
        if out is not None:
            np.save(out, template)
            typer.echo(f"wrote {out}")
        if compare_to is not None:
            emb, _ = fm.embed([compare_to])
            sim = float(template @ (emb[0] / np.linalg.norm(emb[0])))
            typer.echo(f"similarity to {compare_to}: {sim:.4f}")

    @app.command("search")
    def search(
        gallery: Path = typer.Option(..., help="Folder of gallery photos; the identity is the sub-folder name."),
        probe: Path = typer.Option(..., help="Probe photo."),
        model: Path = model_option(None, MODEL_DEFAULT),
        k: int = typer.Option(5, "-k", help="Number of neighbours."),
        backend: str = typer.Option("auto", help="auto (faiss if installed) | numpy | faiss."),
    ) -> None:
        """Rank the gallery photos by cosine similarity to the probe.

        \b
        Example: fuseface search --gallery people/ --probe query.jpg -k 5
        """
        from fuseface.errors import DataError
        from fuseface.infer.index import create_index

        fm = _load(model)
        paths = _gallery_images(gallery)
        res = fm.embed_photos(paths, progress=len(paths) > 20)
        _report_errors(res.errors)
        if not res.ok.any():
            raise DataError(f"{gallery}: no usable gallery photo")
        index = create_index(res.embeddings.shape[1], backend=backend)
        index.add(res.embeddings[res.ok], [p for p, ok in zip(paths, res.ok, strict=True) if ok])
        q = fm.embed_photos([probe])
        if q.errors:
            raise DataError(q.errors[0])
        scores, ids = index.search(q.embeddings, k=k)
        typer.echo(f"probe {probe} against {len(index)} gallery faces ({index.backend}):")
        for rank, (score, path) in enumerate(zip(scores[0], ids[0], strict=True), 1):
            ident = Path(path).parent.name if Path(path).parent != gallery else Path(path).stem
            typer.echo(f"{rank:>3}  {score:.4f}  {ident}  {path}")

    @app.command("export")
    def export(
        model: Path = typer.Argument(..., help=MODEL_HELP),
        onnx: Path = typer.Option(..., "--onnx", help="Output ONNX file (dynamic batch axis, opset 17)."),
        fold_bn: bool = typer.Option(False, help="Fold batch norms before exporting."),
        max_images: int = typer.Option(32, help="CAFace fusion files: fixed set size N (padded, with a mask)."),
        int8: bool = typer.Option(False, "--int8", help="Static int8 (ONNX Runtime QDQ), needs --calibration."),
        calibration: Path = calibration_option("with --int8"),
    ) -> None:
        """Export a model (or a CAFace fusion weights file) to ONNX and check it against onnxruntime.

        \b
        Example: fuseface export model.safetensors --onnx model.onnx
        """
        from fuseface.infer.export import export_fusion_file, export_model_file, is_fusion_file

        if int8:
            from fuseface.errors import ConfigError
            from fuseface.infer.quantize import export_int8_file

            if calibration is None:
                raise ConfigError("--int8 needs --calibration FOLDER (aligned face crops)")
            q = export_int8_file(model, onnx, calibration)
            typer.echo(
                f"wrote {q['path']} (static int8, {q['calibration_images']} calibration faces); "
                f"cosine to fp32 on them: min {q['cosine_min']:.4f}, mean {q['cosine_mean']:.4f}"
            )
            return

        if is_fusion_file(model):
            info = export_fusion_file(model, onnx, max_images=max_images)
            typer.echo(
                f"wrote {info['path']} (CAFace, N={info['max_images']} with mask, opset {info['opset']}); "
                f"onnxruntime max abs diff {info['max_abs_diff']:.2e}"
            )
            return
        info = export_model_file(model, onnx, fold_bn=fold_bn)
        typer.echo(
            f"wrote {info['path']} ({info['arch']}, {info['channel_order']}, {info['input_size']}px, "
            f"opset {info['opset']}); onnxruntime max abs diff {info['max_abs_diff']:.2e}"
        )
