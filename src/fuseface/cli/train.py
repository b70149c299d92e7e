"""`fuseface train`: run a training job from a YAML recipe (see docs/training.md)."""

from __future__ import annotations

import typer


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    """Add the root command ``fuseface train``."""

    @app.command("train")
    def train_command(
        config: str = typer.Option(..., "--config", "-c", help="YAML recipe, e.g. configs/cpu_demo_ir18.yaml"),
        resume: bool = typer.Option(
            False,
            "--resume",
            help="Continue from the newest checkpoint in out_dir, or from the checkpoint file / run folder "
            "given as the one argument without '=' (fuseface train -c X.yaml --resume runs/x/checkpoints/step_1.pt).",
        ),
        args: list[str] = typer.Argument(None, help="Dotted overrides key=value, e.g. optim.lr=0.05 train.steps=100"),
    ) -> None:
        """Train a face recognition model; runs as is under `torchrun --nproc_per_node N`.

        \b
        Example: fuseface train -c configs/cpu_demo_ir18.yaml train.steps=100
        """
        from fuseface.errors import ConfigError
        from fuseface.train.config import load_config
        from fuseface.train.trainer import train

        overrides = [a for a in (args or []) if "=" in a]
        paths = [a for a in (args or []) if "=" not in a]
        if paths and not resume:
            raise ConfigError(f"unexpected argument {paths[0]!r}: overrides are key=value")
        if len(paths) > 1:
            raise ConfigError(f"--resume takes one checkpoint path, got {paths}")
        cfg = load_config(config, overrides)
        result = train(cfg, resume=(paths[0] if paths else True) if resume else None)
        if result.model_path is not None:
            typer.echo(f"model: {result.model_path}")
            typer.echo(f"checkpoint: {result.checkpoint_path}")
