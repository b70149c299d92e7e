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
        input_size: int = typer.Option(0, help="Side of the square input fed to the model (0: the model's own)"),
        split: str = typer.Option("", help="Identity split file (`features split`): DATA is then the photo folder"),
        landmarks: str = typer.Option("", help="With --split: the `fuseface align` journal (faces.jsonl)"),
        template: str = typer.Option("", help="With --split: alignment template (default: the model's own)"),
        degrade: str = typer.Option("caface", help="Augmented copies: caface (precompute recipe) | surveillance"),
        scores: str = typer.Option("none", help="Per-copy quality score: none | onet (MTCNN faceness)"),
        threads: int = typer.Option(0, help="torch threads of this (the embedding) process (0: leave as is)"),
        workers: int = typer.Option(
            0,
            help="Worker processes reading, decoding and augmenting the images while this process embeds "
            "(0: all in this process; the store is the same). On 2 cores, 1 worker overlaps them with the "
            "embedding; it pays when they cost about as much as the embedding (benchmarks/extract_pipeline.py)",
        ),
        progress: bool = typer.Option(True, "--progress/--no-progress"),
    ) -> None:
        """Run a frozen backbone over a dataset: un-normalised embeddings + style statistics, sharded, resumable.

        \b
        Example: fuseface features extract faces/ -m dlib-resnet -o store/ --augment-copies 3 --workers 1
        """
        from fuseface.errors import ConfigError
        from fuseface.infer.extract_features import extract_features, extract_options, load_backbone_meta

        try:
            stage_ids = tuple(int(s) for s in stages.split(",") if s.strip())
        except ValueError:
            raise ConfigError(f"--stages {stages!r}: expected comma-separated stage numbers, e.g. 1,2") from None
        if not stage_ids:
            raise ConfigError("--stages is empty: give comma-separated stage numbers, e.g. 1,2")
        net, model_meta = load_backbone_meta(model)
        opts = extract_options(model_meta, data, split, landmarks, template, degrade, scores, input_size)
        store_meta = {"model": model, "data": data, "split": split, **opts.pop("meta")}
        store = extract_features(
            net,
            opts.pop("source"),
            out,
            channel_order=channel_order or model_meta.channel_order,
            stages=stage_ids,
            augment_copies=augment_copies,
            seed=seed,
            batch_size=batch_size,
            shard_size=shard_size,
            dtype=dtype,
            progress=progress,
            threads=threads,
            workers=workers,
            **opts,
            meta=store_meta,
        )
        if store is not None:
            typer.echo(f"store: {out} ({store.num_images} images x {store.copies} copies)")

    @group.command("split")
    def split_command(
        photos: str = typer.Argument(..., help="Photo folder with one sub-folder per person (e.g. LFW)"),
        out: str = typer.Option(..., "--out", "-o", help="Split file to write (JSON)"),
        min_photos: int = typer.Option(4, help="Only people with at least this many photos"),
        test_fraction: float = typer.Option(0.5, help="Fraction of those people held out for testing"),
        max_photos: int = typer.Option(0, help="Keep at most this many photos per person (0: all)"),
        seed: int = typer.Option(0, help="Split seed"),
    ) -> None:
        """Seeded identity-disjoint train / test split of the people of a photo folder.

        \b
        Example: fuseface features split lfw/lfw-deepfunneled -o split.json --min-photos 8
        """
        from fuseface.data.photo_sets import identity_photos, identity_split, write_split

        split = identity_split(
            identity_photos(photos),
            min_photos=min_photos,
            test_fraction=test_fraction,
            max_photos=max_photos or None,
            seed=seed,
        )
        write_split(out, split)
        n = {k: (len(split[k]), sum(len(v) for v in split[k].values())) for k in ("train", "test")}
        (tr_people, tr_photos), (te_people, te_photos) = n["train"], n["test"]
        typer.echo(f"{out}: train {tr_people} people / {tr_photos} photos, test {te_people} / {te_photos}")

    @group.command("info")
    def info_command(store: str = typer.Argument(..., help="Feature store directory")) -> None:
        """Print a store's manifest summary.

        \b
        Example: fuseface features info store/
        """
        from fuseface.data.feature_store import FeatureStore

        s = FeatureStore(store)
        spec = s.spec
        typer.echo(
            f"{store}: {spec.num_images} images x {spec.copies} copies, features {spec.feature_dim}, "
            f"styles {spec.style_channels}x2, {spec.dtype}, {len(spec.shard_ranges())} shards"
        )
        for k, v in sorted(spec.meta.items()):
            typer.echo(f"  {k}: {v}")
