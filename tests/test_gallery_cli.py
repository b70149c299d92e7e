"""`fuseface gallery ...`: create, add, list, search, remove, export through the real entry point."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import run_cli
from gallery_fixtures import crops, model_file, other_model_file  # noqa: F401


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = run_cli(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _photos(folder: Path, n: int, seed: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, crop in enumerate(crops(n, seed)):
        path = folder / f"{seed}_{i}.png"
        cv2.imwrite(str(path), crop[:, :, ::-1])  # 112x112 crops: enrolled without detection
        paths.append(str(path))
    return paths


def test_gallery_commands(tmp_path, model_file, other_model_file, capsys):  # noqa: F811
    g = str(tmp_path / "g")
    ann, bob = _photos(tmp_path / "ann", 2, 1), _photos(tmp_path / "bob", 2, 2)
    assert _run(["gallery", "create", g, "-m", str(model_file)], capsys)[0] == 0
    assert _run(["gallery", "create", g, "-m", str(model_file)], capsys)[0] == 2  # exists already
    code, out, _ = _run(["gallery", "add", g, "ann", *ann], capsys)
    assert code == 0 and "+2 photos" in out
    code, out, err = _run(["gallery", "add", g, "bob", *bob, ann[0]], capsys)
    assert code == 0 and "+3 photos" in out
    code, out, err = _run(["gallery", "add", g, "bob", bob[0]], capsys)
    assert "+0 photos" in out and "already enrolled" in err
    code, out, _ = _run(["gallery", "list", g, "--json"], capsys)
    assert json.loads(out) == [
        {"name": "ann", "n_images": 2, "template_version": 1},
        {"name": "bob", "n_images": 3, "template_version": 1},
    ]
    code, out, _ = _run(["gallery", "search", g, ann[1], "-k", "2", "--json", "--threshold", "0.99"], capsys)
    (res,) = json.loads(out)
    assert code == 0 and res["match"] == "unknown" and [c["name"] for c in res["candidates"]] == ["ann", "bob"]
    code, out, _ = _run(["gallery", "search", g, *bob, ann[0], "--fuse", "--json", "--threshold", "0.999"], capsys)
    assert json.loads(out)[0]["match"] == "bob"  # the fused query is exactly bob's template
    code, out, _ = _run(["gallery", "remove", g, "bob", ann[0]], capsys)
    assert code == 0 and "removed 1" in out
    code, _, _ = _run(["gallery", "export", g, str(tmp_path / "g.npz")], capsys)
    with np.load(tmp_path / "g.npz") as data:
        assert list(data["names"]) == ["ann", "bob"] and len(data["image_features"]) == 4
    code, _, err = _run(["gallery", "search", g, ann[0], "-m", str(other_model_file)], capsys)
    assert code == 2 and "cannot be mixed" in err and "Traceback" not in err
    code, _, err = _run(["gallery", "list", str(tmp_path / "nothing")], capsys)
    assert code == 2 and "not a gallery" in err
