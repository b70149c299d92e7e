"""Shared fixtures.

Real data lives in ``../shared/data`` beside the project (never copied into it). Tests that need
it use the ``shared_data`` fixture: they skip when it is absent, and fail instead when
``FUSEFACE_REQUIRE_SHARED_DATA=1`` (set by ``.ci/run``). The outputs of the official code
(``../shared/oracles``, see its README) come through the ``oracles`` fixture under the same rule.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def _shared_data_dir() -> Path:
    env = os.environ.get("FUSEFACE_SHARED_DATA")
    return Path(env) if env else PROJECT_ROOT.parent / "shared" / "data"


def require_or_skip(condition: bool, reason: str, env_var: str) -> None:
    """Skip when ``condition`` is false, unless ``env_var=1`` makes the absence a failure."""
    if condition:
        return
    if os.environ.get(env_var) == "1":
        pytest.fail(f"{reason} (required because {env_var}=1)")
    pytest.skip(reason)


def require_module(name: str, env_var: str) -> None:
    """Skip when the optional module ``name`` cannot be imported, unless ``env_var=1`` (CI) makes
    its absence a failure. Never used for fuseface's own modules: those must import."""
    import importlib

    try:
        importlib.import_module(name)
    except ImportError:
        require_or_skip(False, f"optional dependency {name!r} is not installed", env_var)


def run_cli(argv: list[str]) -> int:
    """Run the real ``fuseface`` entry point (one-line errors) in-process; returns its exit code."""
    from fuseface.cli.main import main

    try:
        main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of ``../shared/data``; skips (or fails under CI) when it is missing."""
    root = _shared_data_dir()
    require_or_skip((root / "lfw").is_dir(), f"shared data not found at {root}", "FUSEFACE_REQUIRE_SHARED_DATA")
    return root


def _oracles_dir() -> Path:
    env = os.environ.get("FUSEFACE_ORACLES")
    return Path(env) if env else PROJECT_ROOT.parent / "shared" / "oracles"


@pytest.fixture(scope="session")
def oracles() -> Path:
    """Path of ``../shared/oracles``; skips (or fails under CI) when it is missing."""
    root = _oracles_dir()
    require_or_skip((root / "detfill.py").is_file(), f"oracles not found at {root}", "FUSEFACE_REQUIRE_SHARED_DATA")
    return root


@pytest.fixture(autouse=True)
def _deterministic_torch():
    """Seed every test and keep torch to the 2 cores the machines have."""
    torch.manual_seed(0)
    np.random.seed(0)
    yield


@pytest.fixture(scope="session")
def real_model():
    """The fetched dlib face-recognition model (``fuseface.load("dlib-resnet")``); skips when it has
    not been fetched, fails instead when ``FUSEFACE_REQUIRE_DLIB=1`` (set by ``.ci/run``)."""
    import fuseface
    from fuseface.infer.pretrained import FETCH_COMMAND, is_fetched

    require_or_skip(is_fetched(), f"dlib-resnet not fetched: run `{FETCH_COMMAND}`", "FUSEFACE_REQUIRE_DLIB")
    return fuseface.load("dlib-resnet")
