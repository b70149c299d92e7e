"""Property-based fuzzing of the file readers: truncated and bit-flipped bytes.

Each reader gets a valid file of its format, damaged by hypothesis (cut at some byte, or some bits
flipped), and must either read it or raise :class:`fuseface.errors.FusefaceError`; any other
exception is a bug. Every call runs under an alarm, so a hang fails the test too. Examples are few
and the valid files tiny, so the whole module runs in well under a minute.
"""

from __future__ import annotations

import os
import shutil
import signal
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuseface.errors import FusefaceError
from ijb_fixtures import write_ijb, write_ijbs, write_tinyface

FUZZ = settings(
    max_examples=int(os.environ.get("FUSEFACE_FUZZ_EXAMPLES", "25")),
    deadline=5000,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)
CALL_SECONDS = 10
# damaged inputs make readers warn (skipped records, rebuilt indexes): expected here
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::RuntimeWarning")


@st.composite
def damage(draw: st.DrawFn) -> tuple[str, float, list[tuple[float, int]]]:
    """A truncation point, or a few bit flips, as fractions of the file length."""
    kind = draw(st.sampled_from(["truncate", "flip"]))
    cut = draw(st.floats(0.0, 1.0, exclude_max=True))
    flips = draw(st.lists(st.tuples(st.floats(0.0, 1.0, exclude_max=True), st.integers(0, 7)), min_size=1, max_size=6))
    return kind, cut, flips


def damaged(data: bytes, how: tuple[str, float, list[tuple[float, int]]]) -> bytes:
    kind, cut, flips = how
    if kind == "truncate":
        return data[: int(cut * len(data))]
    buf = bytearray(data)
    for pos, bit in flips:
        if buf:
            buf[int(pos * len(buf))] ^= 1 << bit
    return bytes(buf)


def reads_or_refuses(read: Callable[[], object]) -> None:
    """``read()`` returns, or raises FusefaceError, within CALL_SECONDS; anything else fails."""

    def on_alarm(signum, frame):
        raise TimeoutError(f"reader did not finish within {CALL_SECONDS} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(CALL_SECONDS)
    try:
        read()
    except FusefaceError:
        pass
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def fresh_copy(src: Path, work: Path) -> Path:
    dst = work / uuid.uuid4().hex
    if src.is_dir():
        shutil.copytree(src, dst)
    else:
        dst.mkdir()
        dst = dst / src.name
        shutil.copyfile(src, dst)
    return dst


@pytest.fixture(scope="module")
def valid(tmp_path_factory) -> dict[str, Path]:
    import torch

    from fuseface import create_backbone
    from fuseface.data.binfile import save_bin
    from fuseface.data.feature_store import write_feature_store
    from fuseface.data.recordio import RecordIOWriter
    from fuseface.infer.model_file import ModelMeta, save_model

    root = tmp_path_factory.mktemp("fuzz_valid")
    rng = np.random.default_rng(0)
    rec = root / "rec"
    with RecordIOWriter(rec) as writer:
        for label in range(3):
            writer.write_image(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8), label)
    save_bin(root / "t.bin", rng.integers(0, 255, (8, 12, 12, 3), dtype=np.uint8), [True, False, True, False])
    write_ijb(root / "ijb", "IJBC", n_subjects=4, dim=4)
    write_tinyface(root / "tf", n_ids=3)
    images = write_ijbs(root / "ijbs", n_subjects=3, frames=2)
    (root / "ijbs" / "list.txt").write_text("\n".join(images) + "\n")
    write_feature_store(root / "store", rng.normal(size=(6, 4)), rng.normal(size=(6, 3, 2)), np.arange(6), shard_size=3)
    torch.manual_seed(0)
    net = create_backbone("ir18", input_size=16, num_features=8).eval()
    save_model(root / "m.safetensors", net, ModelMeta("ir18", {"input_size": 16, "num_features": 8}, input_size=16))
    work = root / "work"
    work.mkdir()
    return {"root": root, "work": work}


def damage_file_in(folder: Path, relpath: str, how) -> Path:
    target = folder / relpath
    target.write_bytes(damaged(target.read_bytes(), how))
    return folder


@FUZZ
@given(how=damage(), which=st.sampled_from(["train.rec", "train.idx"]))
def test_recordio(valid, how, which) -> None:
    from fuseface.data.recordio import RecordIODataset, RecordIOReader

    folder = damage_file_in(fresh_copy(valid["root"] / "rec", valid["work"]), which, how)

    def read() -> None:
        reader = RecordIOReader(folder)
        dataset = RecordIODataset(folder)
        for i in range(len(dataset)):
            dataset.load(i)
        reader.close()

    reads_or_refuses(read)


@FUZZ
@given(how=damage())
def test_bin(valid, how) -> None:
    from fuseface.data.binfile import load_bin

    path = fresh_copy(valid["root"] / "t.bin", valid["work"])
    path.write_bytes(damaged(path.read_bytes(), how))
    reads_or_refuses(lambda: load_bin(path))


IJB_FILES = [
    "IJBC/meta/ijbc_face_tid_mid.txt",
    "IJBC/meta/ijbc_name_5pts_score.txt",
    "IJBC/meta/ijbc_template_pair_label.txt",
    "IJBC/meta/ijbc_1N_gallery_G1.csv",
    "IJBC/meta/ijbc_1N_probe_mixed.csv",
]


@FUZZ
@given(how=damage(), which=st.sampled_from(IJB_FILES))
def test_ijb_protocol(valid, how, which) -> None:
    from fuseface.data.ijb import load_ijb

    folder = damage_file_in(fresh_copy(valid["root"] / "ijb", valid["work"]), which, how)

    def read() -> None:
        proto = load_ijb(folder, "IJBC", pairs=True)
        proto.pair_rows()

    reads_or_refuses(read)


@settings(FUZZ, max_examples=max(3, FUZZ.max_examples // 5), deadline=None)  # each read forks a MAT reader
@given(how=damage(), which=st.sampled_from(["probe_img_ID_pairs.mat", "gallery_match_img_ID_pairs.mat"]))
def test_tinyface_protocol(valid, how, which) -> None:
    from fuseface.data.tinyface import load_tinyface

    folder = fresh_copy(valid["root"] / "tf", valid["work"])
    mat = next(folder.rglob(which))
    mat.write_bytes(damaged(mat.read_bytes(), how))
    reads_or_refuses(lambda: load_tinyface(folder).image_paths)


IJBS_FILES = ["cs6_metadata.csv", "list.txt", "galleries/cs6_surveillance_to_single_g1.csv"]


@FUZZ
@given(how=damage(), which=st.sampled_from(IJBS_FILES))
def test_ijbs_protocol(valid, how, which) -> None:
    from fuseface.data.ijbs import load_ijbs, read_image_list

    folder = damage_file_in(fresh_copy(valid["root"] / "ijbs", valid["work"]), which, how)
    reads_or_refuses(lambda: load_ijbs(folder, read_image_list(folder / "list.txt"), "surveillance_to_single"))


@FUZZ
@given(name=st.text(st.characters(codec="ascii", exclude_characters="/\x00"), min_size=1, max_size=20))
def test_scface_file_names(valid, tmp_path_factory, name) -> None:
    from fuseface.data.scface import load_scface
    from ijb_fixtures import write_scface

    folder = valid["work"] / uuid.uuid4().hex
    write_scface(folder, n_subjects=2)
    (folder / "mugshot_frontal_cropped_all" / f"{name}.JPG").write_bytes(b"\xff\xd8")
    reads_or_refuses(lambda: load_scface(folder))


@FUZZ
@given(how=damage(), which=st.sampled_from(["manifest.json", "shard"]))
def test_feature_store(valid, how, which) -> None:
    from fuseface.data.feature_store import FeatureStore

    folder = fresh_copy(valid["root"] / "store", valid["work"])
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    target = next(p for p in files if (p.name == "manifest.json") == (which == "manifest.json"))
    target.write_bytes(damaged(target.read_bytes(), how))
    reads_or_refuses(lambda: FeatureStore(folder).load())


@FUZZ
@given(how=damage())
def test_model_file(valid, how) -> None:
    from fuseface.infer.model_file import load_model

    path = fresh_copy(valid["root"] / "m.safetensors", valid["work"])
    path.write_bytes(damaged(path.read_bytes(), how))
    reads_or_refuses(lambda: load_model(path))
