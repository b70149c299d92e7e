"""MTCNN weights: fetched explicitly from the facenet-pytorch wheel on PyPI, checked, cached.

The published P-/R-/O-Net weights (MIT licence, facenet-pytorch by Tim Esler, converted from the
original MTCNN release) ship inside the ``facenet-pytorch`` wheel as
``facenet_pytorch/data/{pnet,rnet,onet}.pt`` (plain state dicts). ``fuseface models fetch mtcnn``:

1. runs ``python -m pip download --no-deps facenet-pytorch==2.6.0 -d TMP`` (``--no-deps`` so pip
   never touches torch) — or uses a wheel given with ``--wheel``;
2. extracts the three files with :mod:`zipfile` (nothing is installed or imported);
3. checks their SHA-256 against the values below and writes them to the cache folder
   ``$FUSEFACE_CACHE/weights/mtcnn`` (default ``~/.cache/fuseface/weights/mtcnn``).

It is idempotent (verified files are kept). Nothing is ever downloaded implicitly: loading
without the files raises :class:`fuseface.errors.CheckpointError` naming the fetch command.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import torch

from fuseface.errors import CheckpointError

FACENET_PYTORCH_VERSION = "2.6.0"
FETCH_COMMAND = "fuseface models fetch mtcnn"
MTCNN_FILES = ("pnet", "rnet", "onet")
#: SHA-256 of facenet_pytorch/data/*.pt in facenet-pytorch 2.6.0 (computed from the PyPI wheel).
MTCNN_SHA256 = {
    "pnet": "a2a71925e0b9996a42f63e47efc1ca19043e69558b5c523b978d611dfae49c8f",
    "rnet": "bbb937de72efc9ef83b186c49f5f558467a1d7e3453a8ece0d71a886633f6a86",
    "onet": "165bfbe42940416ccfb977545cf0e976d5bf321f67083ae2aaaa5c764280118d",
}


def cache_root() -> Path:
    """``$FUSEFACE_CACHE`` or ``~/.cache/fuseface``."""
    env = os.environ.get("FUSEFACE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "fuseface"


def mtcnn_dir(weights_dir: str | Path | None = None) -> Path:
    """Folder holding ``pnet.pt``, ``rnet.pt``, ``onet.pt``."""
    return Path(weights_dir) if weights_dir is not None else cache_root() / "weights" / "mtcnn"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def weights_present(weights_dir: str | Path | None = None, verify: bool = False) -> bool:
    """True when the three files exist (and, with ``verify``, have the expected checksums)."""
    folder = mtcnn_dir(weights_dir)
    for name in MTCNN_FILES:
        path = folder / f"{name}.pt"
        if not path.is_file():
            return False
        if verify and sha256_file(path) != MTCNN_SHA256[name]:
            return False
    return True


def load_mtcnn_state_dicts(weights_dir: str | Path | None = None) -> dict[str, dict[str, torch.Tensor]]:
    """Verified state dicts ``{"pnet": ..., "rnet": ..., "onet": ...}`` (``weights_only=True``)."""
    folder = mtcnn_dir(weights_dir)
    out: dict[str, dict[str, torch.Tensor]] = {}
    for name in MTCNN_FILES:
        path = folder / f"{name}.pt"
        if not path.is_file():
            raise CheckpointError(
                f"MTCNN weights not found ({path}); run `{FETCH_COMMAND}` once to download them from PyPI"
            )
        if sha256_file(path) != MTCNN_SHA256[name]:
            raise CheckpointError(f"{path}: checksum mismatch; delete it and run `{FETCH_COMMAND}` again")
        out[name] = torch.load(path, map_location="cpu", weights_only=True)
    return out


def pip_download(requirement: str, pattern: str, dest: Path, log: Callable[[str], None]) -> Path:
    """``pip download --no-deps requirement -d dest`` (the registry, nothing else) and the one file
    it wrote matching ``pattern``. An sdist's metadata is read with the local setuptools when there
    is one (``--no-build-isolation``), so no build environment is downloaded."""
    import importlib.util

    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check"]
    if importlib.util.find_spec("setuptools") is not None:
        cmd.append("--no-build-isolation")
    cmd += [requirement, "-d", str(dest)]
    log("running: " + " ".join(cmd))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise CheckpointError(f"pip download of {requirement} failed: {proc.stderr.strip()[-500:]}")
    found = sorted(dest.glob(pattern))
    if not found:
        raise CheckpointError(f"pip download gave no {pattern} file in {dest}")
    return found[0]


def fetch_mtcnn(
    weights_dir: str | Path | None = None,
    wheel: str | Path | None = None,
    quiet: bool = False,
) -> Path:
    """Obtain, verify and cache the MTCNN weights; returns the folder. Idempotent."""

    def log(msg: str) -> None:
        if not quiet:
            print(msg, file=sys.stderr)

    folder = mtcnn_dir(weights_dir)
    if weights_present(folder, verify=True):
        log(f"MTCNN weights already present and verified in {folder}")
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fuseface-mtcnn-") as tmp:
        requirement = f"facenet-pytorch=={FACENET_PYTORCH_VERSION}"
        wheel_path = (
            Path(wheel) if wheel is not None else pip_download(requirement, "facenet_pytorch-*.whl", Path(tmp), log)
        )
        if not wheel_path.is_file():
            raise CheckpointError(f"{wheel_path}: wheel not found")
        try:
            with zipfile.ZipFile(wheel_path) as zf:
                for name in MTCNN_FILES:
                    data = zf.read(f"facenet_pytorch/data/{name}.pt")
                    got = hashlib.sha256(data).hexdigest()
                    if got != MTCNN_SHA256[name]:
                        raise CheckpointError(
                            f"{wheel_path}: {name}.pt has SHA-256 {got}, expected {MTCNN_SHA256[name]}"
                        )
                    tmp_out = folder / f"{name}.pt.tmp"
                    tmp_out.write_bytes(data)
                    tmp_out.replace(folder / f"{name}.pt")
        except (zipfile.BadZipFile, KeyError) as exc:
            raise CheckpointError(f"{wheel_path}: not a facenet-pytorch wheel with MTCNN weights ({exc})") from exc
    log(f"MTCNN weights verified and stored in {folder}")
    return folder
