"""The ``fuseface`` command: one typer app, one module per command group.

Each module in ``COMMAND_MODULES`` exposes ``register(app, groups)`` and adds its commands to the
root ``app`` or to one of the shared sub-command ``groups`` (``data``, ``models``, ``eval``,
``features``). Command bodies import the library lazily, so ``fuseface --help`` stays fast.
Errors derived from :class:`fuseface.errors.FusefaceError` (bad input: a file, an option, a
config) print as one line naming what is wrong and exit 2; any other exception is a bug in
fuseface: its traceback is printed with a request to report it, and the exit status is 1.
"""

from __future__ import annotations

import importlib
import sys

import typer

COMMAND_MODULES = (
    "fuseface.cli.data",  # data pack
    "fuseface.cli.demo",  # demo
    "fuseface.cli.train",  # train
    "fuseface.cli.evaluate",  # eval ..., report
    "fuseface.cli.models",  # models info
    "fuseface.cli.features",  # features extract
    "fuseface.cli.align",  # align, data build-bin, models fetch
    "fuseface.cli.infer",  # embed, compare, fuse, search, export
    "fuseface.cli.video",  # video
    "fuseface.cli.gallery",  # gallery create, add, remove, list, search, export
    "fuseface.cli.serve",  # serve
)

INTERNAL_ERROR = (
    "internal error in fuseface (a bug, not a problem with your input): "
    "please report it to the fuseface issue tracker with the command and the traceback above"
)

GROUPS = {
    "data": "Data formats: pack image folders into RecordIO, build .bin verification sets.",
    "models": "Model cards and weights: info, fetch.",
    "eval": "Evaluation protocols: LFW/.bin 10-fold, IJB-B/C 1:1 and 1:N, TinyFace, SCFace, IJB-S.",
    "features": "Feature stores for set fusion (CAFace).",
    "gallery": "Persistent face galleries: create, add photos, remove, list, search (open-set), export.",
}


def build_app() -> typer.Typer:
    app = typer.Typer(
        name="fuseface",
        help="Face recognition built around feature fusion (MSConv, LGAF, CAFace).",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )
    groups = {name: typer.Typer(help=text, no_args_is_help=True) for name, text in GROUPS.items()}
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(app, groups)
    for name, group in groups.items():
        if group.registered_commands or group.registered_groups:
            app.add_typer(group, name=name)

    @app.command("version")
    def version() -> None:
        """Print the fuseface and torch versions.

        \b
        Example: fuseface version
        """
        import torch

        import fuseface

        typer.echo(f"fuseface {fuseface.__version__} (torch {torch.__version__})")

    return app


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``fuseface`` console script."""
    from fuseface.errors import FusefaceError

    app = build_app()
    try:
        app(args=argv, standalone_mode=True)
    except FusefaceError as exc:
        message = " ".join(str(exc).split())  # one line, whatever the message holds
        typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
        sys.exit(2)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception:
        import traceback

        traceback.print_exc()
        typer.secho(INTERNAL_ERROR, fg=typer.colors.RED, err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
