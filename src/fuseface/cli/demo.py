"""`fuseface demo`: synthetic faces -> small MSConv backbone -> verification report
(see `fuseface.experiments.demo.run_demo`)."""

from __future__ import annotations

from pathlib import Path

import typer

from fuseface.cli.options import out_option, progress_option


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    """Add this module's commands to the root app or to a shared group."""

    @app.command("demo")
    def demo(
        out: Path = out_option(Path("runs/demo"), "the folder of the report, plots and cached data"),
        quick: bool = typer.Option(False, "--quick", help="Tiny settings for a smoke run (well under a minute)."),
        progress: bool = progress_option(True),
        set_fusion: bool = typer.Option(
            True, "--set-fusion/--no-set-fusion", help="Add the set-fusion (CAFace vs. pooling) section."
        ),
        lfw: Path | None = typer.Option(
            None,
            "--lfw",
            help="LFW folder for the real-face set-fusion section (default: ../shared/data/lfw; not with --quick).",
        ),
    ) -> None:
        """Generate synthetic faces, train a small MSConv backbone on CPU, evaluate held-out verification,
        write a report.

        Example: fuseface demo --out runs/demo
        """
        from fuseface.experiments.demo import run_demo

        report = run_demo(out, quick=quick, progress=progress, set_fusion=set_fusion)
        if set_fusion and (lfw is not None or not quick):
            from fuseface.experiments.set_fusion import real_face_section

            section = real_face_section(lfw or Path("../shared/data/lfw"), out / "set_fusion_real", progress=progress)
            with open(report, "a", encoding="utf-8") as fh:
                fh.write("\n" + section)
        typer.echo(f"report written to {report}")
