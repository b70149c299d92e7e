"""Crash safety: a process SIGKILLed in the middle of ``gallery add`` leaves a consistent gallery.

A child process adds photos and is killed (``SIGKILL``, no clean-up) at a chosen point — inside the
SQLite transaction, between the commit and the index update, half-way through writing the index
file — or at random moments of a loop of adds. The test then opens the gallery and checks that the
index was verified against SQLite (and rebuilt when it disagreed), that it holds exactly SQLite's
templates, and that every template is the fusion of exactly the photos SQLite holds: each photo is
in both or in neither. Run on both backends.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import fuseface
from fuseface.gallery import Gallery
from fuseface.gallery.templates import create_template_fusion
from gallery_fixtures import backend, model_file  # noqa: F401

CHILD = textwrap.dedent(
    """
    import os, signal, sys
    import numpy as np
    import fuseface.gallery.index as index_module
    from fuseface.gallery.gallery import Gallery
    from fuseface.gallery.store import GalleryStore

    directory, mode = sys.argv[1], sys.argv[2]
    def die(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)
    if mode == "after_commit":
        Gallery._after_commit = die
    elif mode == "in_transaction":
        GalleryStore.bump_version = die
    elif mode == "mid_index_write":
        index_module.os.replace = die  # the temporary index file is written, the rename never happens
    g = Gallery.open(directory)
    rng = np.random.default_rng(int(sys.argv[3]))
    if mode == "loop":
        print("ready", flush=True)
        i = 0
        while True:
            feats = rng.normal(size=(2, g.dim))
            g.add_features(f"p{i % 4}", feats, sources=[f"loop{i}a", f"loop{i}b"], model_id=g.model_id)
            i += 1
    g.add_features("victim", rng.normal(size=(1, g.dim)), sources=["victim.jpg"], model_id=g.model_id)
    print("survived", flush=True)
    """
)


def _env() -> dict[str, str]:
    src = str(Path(fuseface.__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}


def _start(script: Path, directory: Path, mode: str, seed: int) -> subprocess.Popen:
    # a session of its own, so the embedded milvus-lite server the child starts can be ended with it
    return subprocess.Popen(
        [sys.executable, str(script), str(directory), mode, str(seed)],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _end_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def _assert_consistent(directory: Path) -> Gallery:
    g = Gallery.open(directory)
    assert g.verify(), "index differs from SQLite after open"
    fusion = create_template_fusion(g.fusion_name)
    for ident, name, n_images, _ in g.store.identities():
        rows = g.store.images(ident)
        assert len(rows) == n_images > 0
        expect = fusion.template(fusion.state(np.stack([r.feature for r in rows])))
        np.testing.assert_allclose(g.template(name), expect, atol=1e-5, err_msg=name)
    return g


@pytest.fixture
def gallery_dir(tmp_path: Path, model_file: Path, backend: str) -> Path:  # noqa: F811
    rng = np.random.default_rng(0)
    with Gallery.create(tmp_path / "g", model_file, backend=backend, milvus_uri=str(tmp_path / "milvus.db")) as g:
        for name in ("ann", "bob"):
            g.add_features(name, rng.normal(size=(2, g.dim)), model_id=g.model_id)
    return tmp_path / "g"


@pytest.mark.parametrize(
    ("mode", "committed"), [("in_transaction", False), ("after_commit", True), ("mid_index_write", True)]
)
def test_kill_at_a_chosen_point(tmp_path, gallery_dir, backend, mode, committed):  # noqa: F811
    if mode == "mid_index_write" and backend == "milvus":
        pytest.skip("no index file on the milvus backend")
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    proc = _start(script, gallery_dir, mode, seed=1)
    out, err = proc.communicate(timeout=120)
    _end_group(proc)
    assert proc.returncode == -signal.SIGKILL, err
    assert "survived" not in out
    g = _assert_consistent(gallery_dir)
    try:
        names = [r["name"] for r in g.list()]
        assert ("victim" in names) is committed
        assert g.rebuilt is committed  # the index lagged SQLite exactly when the commit went through
        if committed:
            query = g.store.images(g.store.identity("victim").id)[0].feature
            assert g.search_features(query[None], k=1)[0].candidates[0] == ("victim", pytest.approx(1.0, abs=1e-4))
    finally:
        g.close()


def test_kill_at_random_moments(tmp_path, gallery_dir, backend):  # noqa: F811
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    rng = np.random.default_rng(5)
    seen_images = 0
    for round_ in range(2):
        proc = _start(script, gallery_dir, "loop", seed=round_)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read() if proc.stderr else ""
        time.sleep(float(rng.uniform(0.2, 1.5)))
        _end_group(proc)
        proc.wait(timeout=60)
        g = _assert_consistent(gallery_dir)
        try:
            count = len(g.store.images())
            assert count >= seen_images  # committed photos are never lost
            seen_images = count
        finally:
            g.close()
    assert seen_images > 4  # the loop did add photos before the kills
