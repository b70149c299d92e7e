"""`fuseface data pack` through the CLI on real LFW folders (one of them holds the truncated JPEG)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fuseface.cli.main import build_app
from fuseface.data.recordio import RecordIODataset, RecordIOReader, read_property

PEOPLE = ("Zach_Parise", "Zach_Safrin", "Zydrunas_Ilgauskas", "Zoran_Djindjic")


def _lfw_subset(shared_data: Path, dest: Path) -> Path:
    """Symlink a few LFW identity folders into dest (the data itself is never copied)."""
    dest.mkdir()
    for name in PEOPLE:
        (dest / name).symlink_to(shared_data / "lfw" / "lfw-deepfunneled" / name)
    return dest


@pytest.mark.shared_data
def test_pack_real_lfw_subset(shared_data: Path, tmp_path: Path) -> None:
    src = _lfw_subset(shared_data, tmp_path / "faces")
    out = tmp_path / "rec"
    result = CliRunner().invoke(build_app(), ["data", "pack", str(src), str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    files = sorted(p for name in sorted(PEOPLE) for p in sorted((src / name).iterdir()))
    truncated = src / "Zydrunas_Ilgauskas" / "Zydrunas_Ilgauskas_0001.jpg"
    good = [p for p in files if p != truncated]
    assert f"wrote {len(good)} images of 4 identities" in result.output
    failures = (out / "pack_failures.txt").read_text().splitlines()
    assert len(failures) == 1 and failures[0].startswith(f"{truncated}\t") and "truncated JPEG" in failures[0]
    assert read_property(out) == (4, 250, 250)
    reader = RecordIOReader(out)
    # clean JPEGs are stored byte for byte, in class order
    assert [reader.read(k)[1] for k in reader.image_keys.tolist()] == [p.read_bytes() for p in good]
    dataset = RecordIODataset(out)
    names = sorted(PEOPLE)
    assert dataset.labels.tolist() == [names.index(p.parent.name) for p in good]
    x, _ = dataset[0]
    assert x.shape == (3, 250, 250)


@pytest.mark.shared_data
def test_pack_bgr_and_bad_option(shared_data: Path, tmp_path: Path) -> None:
    src = tmp_path / "faces"
    src.mkdir()
    (src / "s1").symlink_to(shared_data / "orl" / "s1")
    out = tmp_path / "rec"
    app = build_app()
    result = CliRunner().invoke(app, ["data", "pack", str(src), str(out), "--channel-order", "bgr", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert not (out / "pack_failures.txt").exists()
    image, label = RecordIODataset(out).load(0)
    assert label == 0 and image.shape == (112, 92, 3)  # PGM re-encoded as JPEG (grey: order invisible)
    assert np.abs(image.astype(int) - image[..., ::-1].astype(int)).max() <= 2
    bad = CliRunner().invoke(app, ["data", "pack", str(src), str(tmp_path / "x"), "--channel-order", "rbg"])
    assert bad.exit_code != 0 and "channel_order must be 'rgb' or 'bgr'" in str(bad.exception)
