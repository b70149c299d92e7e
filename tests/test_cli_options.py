"""Every command's ``--help`` shows an example, and an option with a shared meaning (model, flip,
fusion, progress, output) has the shared name everywhere (``fuseface.cli.options``)."""

from __future__ import annotations

from typing import Any

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from fuseface.cli.main import build_app
from fuseface.cli.options import SHARED_OPTIONS

#: commands exempt from the sweep (none)
NOT_YET: set[tuple[str, ...]] = set()


def _commands() -> list[tuple[tuple[str, ...], Any]]:
    """``(path, click command)`` of every command, group sub-commands included (typer vendors its
    own click, so groups are recognised by their ``commands``)."""
    out: list[tuple[tuple[str, ...], Any]] = []

    def walk(cmd: Any, path: tuple[str, ...]) -> None:
        if hasattr(cmd, "commands"):
            for name, sub in cmd.commands.items():
                walk(sub, (*path, name))
        else:
            out.append((path, cmd))

    walk(get_command(build_app()), ())
    return sorted(out, key=lambda item: item[0])


COMMANDS = _commands()


def test_the_walk_finds_group_sub_commands() -> None:
    paths = {p for p, _ in COMMANDS}
    assert {("eval", "lfw"), ("eval", "ijbs"), ("gallery", "search"), ("features", "extract"), ("fuse",)} <= paths
    assert len(paths) >= 30


@pytest.mark.parametrize("path", [p for p, _ in COMMANDS if p not in NOT_YET], ids=" ".join)
def test_help_shows_an_example(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(build_app(), [*path, "--help"])
    assert result.exit_code == 0, result.output
    example = [line for line in result.output.splitlines() if "Example:" in line]
    assert example, f"`fuseface {' '.join(path)} --help` shows no example"
    assert f"fuseface {' '.join(path)}" in " ".join(result.output.split()), "the example runs another command"


@pytest.mark.parametrize("path", [p for p, _ in COMMANDS if p not in NOT_YET], ids=" ".join)
def test_shared_meanings_use_the_shared_names(path: tuple[str, ...]) -> None:
    command = dict(COMMANDS)[path]
    for param in command.params:
        if param.param_type_name != "option" or param.name not in SHARED_OPTIONS:
            continue
        names = set(param.opts) | set(param.secondary_opts)
        missing = [n for n in SHARED_OPTIONS[param.name] if n not in names]
        assert not missing, f"`fuseface {' '.join(path)}` option {param.name!r} lacks {missing} (has {sorted(names)})"


def test_old_spellings_still_parse() -> None:
    commands = dict(COMMANDS)
    opts = {n for p in commands[("eval", "ijb")].params for n in (*p.opts, *getattr(p, "secondary_opts", []))}
    assert {"--flip", "--no-flip", "--flip-test", "--no-flip-test", "-m"} <= opts
    fuse = {n for p in commands[("fuse",)].params for n in p.opts}
    assert {"--fusion", "--method", "-o"} <= fuse
    align = {n for p in commands[("align",)].params for n in (*p.opts, *getattr(p, "secondary_opts", []))}
    assert {"--progress", "--no-progress", "--quiet", "-q"} <= align
