"""`fuseface features ...`: feature stores for set fusion (see docs/caface.md)."""

from __future__ import annotations

import typer


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    """Add ``fuseface features extract`` and ``fuseface features info`` to the ``features`` group."""
    group = groups["features"]

    @group.command("extract")
    def extract_command(
        data: str = typer.Argument(..., help="RecordIO folder (train.rec/.idx) or one-sub-folder-per-identity tree"),
        out: str = typer.Option(..., "--out", "-o", help="Feature store directory (resumed if it exists)"),
        model: str = typer.Option(
            ...,
            "--model",
            "-m",
            help="fuseface model file, adaface:ir_101:CKPT, insightface:iresnet50:PTH, or random:ir18 (tests)",
        ),
        channel_order: str = typer.Option("", help="rgb | bgr; default: the model's own (bgr for AdaFace)"),
        stages: str = typer.Option("1,2", help="0-based stage outputs whose styles are stored (CAFace: 1,2)"),
        augment_copies: int = typer.Option(0, help="Augmented copies per image (CAFace precompute: 15 + clean)"),
        seed: int = typer.Option(0, help="Augmentation seed (image i uses (seed, i))"),
        batch_size: int = typer.Option(64, help="Images per forward pass"),
        shard_size: int = typer.Option(4096, help="Images per shard"),
        dtype: str = typer.Option("float16", help="float16 (as the official blob) or float32"),
        input_size: int = typer.Option(112, help="Side of the square input fed to the model"),
        progress: bool = typer.Option(True, "--progress/--no-progress"),
    ) -> None:
        """Run a frozen backbone over a dataset: un-normalised embeddings + style statistics, sharded, resumable."""
        from fuseface.errors import ConfigError
        from fuseface.infer.extract_features import extract_features, load_backbone, open_source

        try:
            stage_ids = tuple(int(s) for s in stages.split(",") if s.strip())
        except ValueError:
            raise ConfigError(f"--stages {stages!r}: expected comma-separated stage numbers, e.g. 1,2") from None
        if not stage_ids:
            raise ConfigError("--stages is empty: give comma-separated stage numbers, e.g. 1,2")
        net, order = load_backbone(model)
        store = extract_features(
            net,
            open_source(data),
            out,
            channel_order=channel_order or order,
            stages=stage_ids,
            augment_copies=augment_copies,
            seed=seed,
            batch_size=batch_size,
            shard_size=shard_size,
            dtype=dtype,
            input_size=input_size,
            progress=progress,
            meta={"model": model, "data": data},
        )
        if store is not None:
            typer.echo(f"store: {out} ({store.num_images} images x {store.copies} copies)")

    @group.command("info")
    def info_command(store: str = typer.Argument(..., help="Feature store directory")) -> None:
        """Print a store's manifest summary."""
        from fuseface.data.feature_store import FeatureStore

        s = FeatureStore(store)
        spec = s.spec
        typer.echo(
            f"{store}: {spec.num_images} images x {spec.copies} copies, features {spec.feature_dim}, "
            f"styles {spec.style_channels}x2, {spec.dtype}, {len(spec.shard_ranges())} shards"
        )
        for k, v in sorted(spec.meta.items()):
            typer.echo(f"  {k}: {v}")
