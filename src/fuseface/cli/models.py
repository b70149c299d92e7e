"""``fuseface models info``: a model card (parameters, MACs, per-stage feature shapes).

``models fetch`` is added by ``cli/align.py``. The counting lives in :mod:`fuseface.nn.profile`.
"""

from __future__ import annotations

import typer


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    """Add ``models info`` to the shared ``models`` group."""

    @groups["models"].command("info")
    def info(
        name: str = typer.Argument(..., help="Registered backbone, e.g. msnet50, ir100, adaface_ir101."),
        conv: str = typer.Option(None, "--conv", help="Replace the 3x3 conv (msconv, skconv, se, cbam); IResNet only."),
        stages: str = typer.Option(None, "--stages", help="Stages using --conv (default all), e.g. 3,4."),
        input_size: int = typer.Option(112, "--input-size", help="Side of the square input image."),
    ) -> None:
        """Print parameters, MACs and the feature shape of each stage.

        \b
        Example: fuseface models info msnet50 --input-size 112
        """
        from rich.console import Console
        from rich.table import Table

        from fuseface import registry
        from fuseface.errors import ConfigError
        from fuseface.nn.profile import profile_backbone

        if name not in registry.names("backbone"):
            raise ConfigError(f"unknown model {name!r}; known: {', '.join(registry.names('backbone'))}")
        kwargs: dict[str, object] = {}
        if conv:
            kwargs["conv"] = conv
        if stages:
            try:
                kwargs["stages"] = [int(s) for s in stages.split(",")]
            except ValueError:
                raise ConfigError(f"--stages must be comma-separated integers, got {stages!r}") from None
        try:
            prof = profile_backbone(name, input_size=input_size, **kwargs)
        except (TypeError, ValueError, KeyError) as exc:
            raise ConfigError(f"cannot build {name} with {kwargs or 'defaults'}: {exc}") from None

        title = name + (f" + {conv}" if conv else "") + (f" (stages {stages})" if stages else "")
        table = Table(title=title, show_header=True)
        table.add_column("item")
        table.add_column("value", justify="right")
        table.add_row("parameters", f"{prof.params_m:.2f} M ({prof.params:,})")
        table.add_row(f"MACs @ {input_size}x{input_size}", f"{prof.gmacs:.2f} G ({prof.macs:,})")
        for i, shape in enumerate(prof.stage_shapes, start=1):
            table.add_row(f"stage {i}", " x ".join(str(d) for d in shape))
        table.add_row("embedding", str(prof.embedding_dim))
        Console().print(table)
