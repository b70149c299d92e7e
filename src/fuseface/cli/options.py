"""Option definitions shared by every ``fuseface`` command: one name and one meaning each.

==========================  ===================================================================
``--model`` / ``-m``        a fuseface model file or a fetched model name (:func:`model_option`)
``--flip``                  flip-sum test-time augmentation (:func:`flip_option`)
``--fusion``                the set-fusion method of a template (:func:`fusion_option`)
``--progress``              progress bars on or off (:func:`progress_option`)
``--out`` / ``-o``          the output path (:func:`out_option`)
==========================  ===================================================================

Older spellings (``--flip-test``, ``--method``, ``--quiet``) stay accepted as aliases of the same
option, so earlier invocations keep working. ``SHARED_OPTIONS`` maps each parameter name that
carries one of these meanings to the option names it must have; ``tests/test_cli_options.py``
checks every command against it. Each call returns a fresh ``typer.Option``.
"""

from __future__ import annotations

from typing import Any

import typer

MODEL_HELP = "fuseface model file (.safetensors) or a fetched model name such as dlib-resnet"
FLIP_HELP = "Flip-sum test-time augmentation: add the embedding of the mirrored image"
FUSION_HELP = "Set-fusion method of a template"
PROGRESS_HELP = "Show progress bars"
OUT_HELP = "Output path"
CALIBRATION_HELP = "Folder of aligned face crops for static int8 calibration (a few hundred used)"

#: parameter name -> the option names a command must give it (the shared meanings)
SHARED_OPTIONS: dict[str, tuple[str, ...]] = {
    "model": ("--model", "-m"),
    "flip": ("--flip",),
    "flip_test": ("--flip",),
    "fusion": ("--fusion",),
    "method": ("--fusion",),
    "progress": ("--progress",),
    "out": ("--out", "-o"),
    "calibration": ("--calibration",),
}


def _help(base: str, detail: str) -> str:
    return f"{base}; {detail}" if detail else f"{base}."


def model_option(default: Any = None, detail: str = "") -> Any:
    """``--model`` / ``-m``: a model file or fetched name; ``detail`` adds what the command does with it."""
    return typer.Option(default, "--model", "-m", help=_help(MODEL_HELP, detail))


def flip_option(default: bool = False, negatable: bool = False, alias: bool = False, detail: str = "") -> Any:
    """``--flip`` (``--flip/--no-flip`` when ``negatable``); ``alias`` also accepts ``--flip-test``."""
    names = ["--flip/--no-flip"] if negatable else ["--flip"]
    if alias:
        names.append("--flip-test/--no-flip-test" if negatable else "--flip-test")
    return typer.Option(default, *names, help=_help(FLIP_HELP, detail))


def fusion_option(default: str, choices: str, alias: bool = False, detail: str = "") -> Any:
    """``--fusion`` (``alias`` also accepts ``--method``), help listing the ``choices``."""
    names = ["--fusion", "--method"] if alias else ["--fusion"]
    text = f"{FUSION_HELP}: {choices}"
    return typer.Option(default, *names, help=_help(text, detail))


def progress_option(default: bool = True, quiet_alias: bool = False) -> Any:
    """``--progress/--no-progress``; ``quiet_alias`` also accepts ``--quiet`` / ``-q`` for ``--no-progress``."""
    names = ["--progress/--no-progress"]
    if quiet_alias:
        names += [" /--quiet", " /-q"]
    return typer.Option(default, *names, help=_help(PROGRESS_HELP, "--no-progress: none"))


def out_option(default: Any = None, detail: str = "") -> Any:
    """``--out`` / ``-o``: the output path; ``detail`` says what is written there."""
    return typer.Option(default, "--out", "-o", help=_help(OUT_HELP, detail))


def calibration_option(detail: str = "") -> Any:
    """``--calibration FOLDER``: the aligned crops that static int8 is calibrated on."""
    return typer.Option(None, "--calibration", help=_help(CALIBRATION_HELP, detail))
