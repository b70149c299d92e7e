"""TinyFace, SCface and IJB-S readers on small layouts in the official formats, and their CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fuseface.cli.main import build_app
from fuseface.data.ijbs import load_ijbs
from fuseface.data.scface import load_scface
from fuseface.data.tinyface import load_tinyface
from fuseface.errors import ProtocolFileError
from fuseface.eval.identification import cmc
from ijb_fixtures import ijbs_features, write_ijbs, write_scface, write_tinyface

runner = CliRunner()


def _run(*args):
    r = runner.invoke(build_app(), [str(a) for a in args])
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    assert r.exit_code == 0, r.output
    return r


def test_tinyface_protocol_and_cli(tmp_path: Path) -> None:
    names = write_tinyface(tmp_path)
    proto = load_tinyface(tmp_path)
    assert [p.name for p in proto.probe_paths] == names["probe"]
    assert proto.gallery_labels.tolist() == [int(n.split("_")[0]) for n in names["match"]] + [-100] * 5
    n_p, n_m = len(names["probe"]), len(names["match"])
    feats = np.zeros((len(proto.image_paths), 8), np.float32)
    for i, lab in enumerate(proto.probe_labels):
        feats[i, lab] = 1.0
    for j, lab in enumerate(proto.gallery_labels[:n_m]):
        feats[n_p + j, lab] = 1.0
    feats[n_p + n_m :, 0] = 1.0  # distractors point elsewhere
    feats[0, 0] = 5.0  # probe 0 now prefers the distractors: rank > 1
    np.save(tmp_path / "f.npy", feats)
    out = tmp_path / "tf.json"
    _run("eval", "tinyface", "--root", tmp_path, "--features", tmp_path / "f.npy", "--out", out, "--plot")
    doc = json.loads(out.read_text())
    p, g = proto.split(feats / np.linalg.norm(feats, axis=1, keepdims=True))
    assert doc["metrics"]["cmc"] == {str(k): v for k, v in cmc(p, proto.probe_labels, g, proto.gallery_labels).items()}
    assert doc["metrics"]["cmc"]["1"] == pytest.approx(11 / 12)
    (tmp_path / "tinyface" / "Testing_Set" / "probe_img_ID_pairs.mat").write_bytes(b"junk")
    with pytest.raises(ProtocolFileError, match=r"probe_img_ID_pairs\.mat"):
        load_tinyface(tmp_path)


def test_scface_protocol_per_distance(tmp_path: Path) -> None:
    write_scface(tmp_path, n_subjects=4)
    proto = load_scface(tmp_path)
    assert proto.gallery_labels.tolist() == [1, 2, 3, 4]
    assert {d: len(v[0]) for d, v in proto.probes.items()} == {"d1": 8, "d2": 8, "d3": 8}  # cam6 (IR) left out
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(5, 16))
    labels = np.concatenate([proto.gallery_labels] + [proto.probes[d][1] for d in ("d1", "d2", "d3")])
    noise = np.r_[np.zeros(4), np.full(8, 0.1), np.full(8, 0.1), np.full(8, 50.0)]
    feats = centres[labels] + noise[:, None] * rng.normal(size=(len(labels), 16))
    np.save(tmp_path / "f.npy", feats.astype(np.float32))
    out = tmp_path / "sc.json"
    _run("eval", "scface", "--root", tmp_path, "--features", tmp_path / "f.npy", "--out", out)
    per = json.loads(out.read_text())["metrics"]["per_distance"]
    assert per["d1"]["cmc"]["1"] == 1.0 and per["d2"]["cmc"]["1"] == 1.0 and per["d3"]["cmc"]["1"] < 1.0
    with pytest.raises(ProtocolFileError, match="test80 split needs at least 80"):
        load_scface(tmp_path, split="test80")


def test_ijbs_protocols_and_cli(tmp_path: Path) -> None:
    images = write_ijbs(tmp_path)
    t = load_ijbs(tmp_path, images, "surveillance_to_booking")
    assert t.probe_subjects.tolist() == [1, 2, 3, 4, 5, 6]
    assert [len(r) for r in t.galleries[0][1]] == [2, 2, 2]  # booking: all stills of the subject
    (tmp_path / "list.txt").write_text("\n".join(images) + "\n")
    np.save(tmp_path / "f.npy", ijbs_features(images))
    out = tmp_path / "s.json"
    _run(
        "eval",
        "ijbs",
        "--protocol-dir",
        tmp_path,
        "--image-list",
        tmp_path / "list.txt",
        "--features",
        tmp_path / "f.npy",
        "--out",
        out,
    )
    subsets = json.loads(out.read_text())["metrics"]["subsets"]
    assert set(subsets) == {"surveillance_to_single", "surveillance_to_booking", "surveillance_to_surveillance"}
    assert all(s["cmc"]["1"] == 1.0 for s in subsets.values())
    assert all(s["empty_probe_templates"] == 0 for s in subsets.values())
    (tmp_path / "cs6_metadata.csv").unlink()
    with pytest.raises(ProtocolFileError, match=r"cs6_metadata\.csv: protocol file not found"):
        load_ijbs(tmp_path, images, "surveillance_to_single")


def test_tinyface_and_scface_with_an_lgaf_model_file(tmp_path: Path) -> None:
    # Issue 7: the low-quality benchmarks run through `fuseface eval` with an LGAF model. The
    # --model path (read, resize to the model's input, embed with flip) must give exactly the
    # result of the --features path fed with the same model's embeddings.
    import cv2
    import torch

    import fuseface
    from fuseface.data.images import read_image
    from fuseface.infer.model_file import ModelMeta, save_model

    size = 32
    kwargs = {"head": "lgaf", "head_kw": {"kernel_sizes": [3, 5]}, "input_size": size, "num_features": 64}
    torch.manual_seed(0)
    net = fuseface.create_backbone("ir_demo", **kwargs).eval()
    model_path = save_model(
        tmp_path / "lgaf.safetensors", net, ModelMeta(arch="ir_demo", arch_kwargs=kwargs, input_size=size)
    )
    model = fuseface.load(str(model_path))

    def features_of(paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
        crops = np.stack([cv2.resize(read_image(p), (size, size), interpolation=cv2.INTER_AREA) for p in paths])
        plain = model.embed_aligned(crops)[0]
        mirrored = model.embed_aligned(np.ascontiguousarray(crops[:, :, ::-1]))[0]
        return plain, mirrored

    write_tinyface(tmp_path / "tf")
    write_scface(tmp_path / "sc", n_subjects=4)
    cases = (
        ("tinyface", tmp_path / "tf", load_tinyface(tmp_path / "tf").image_paths),
        ("scface", tmp_path / "sc", load_scface(tmp_path / "sc").image_paths),
    )
    for protocol, root, paths in cases:
        plain, mirrored = features_of(list(paths))
        np.save(root / "f.npy", plain)
        np.save(root / "ff.npy", mirrored)
        by_model, by_features = root / "model.json", root / "features.json"
        _run("eval", protocol, "--root", root, "--model", model_path, "--out", by_model)
        _run(
            "eval", protocol, "--root", root, "--features", root / "f.npy", "--flip-features", root / "ff.npy",
            "--out", by_features,
        )  # fmt: skip
        from_model = json.loads(by_model.read_text())
        from_features = json.loads(by_features.read_text())
        assert from_model["switches"]["flip"] is True
        assert from_model["metrics"] == from_features["metrics"]


def test_ijbs_caface_fusion_uses_the_styles(tmp_path: Path) -> None:
    import torch

    from fuseface.data.ijbs import load_ijbs
    from fuseface.eval.identification import two_gallery_identification
    from fuseface.eval.verification import l2_normalize
    from fuseface.infer.fusion_file import save_fusion
    from fuseface.nn.fusion.caface import CAFace

    images = write_ijbs(tmp_path)
    (tmp_path / "list.txt").write_text("\n".join(images) + "\n")
    feats = ijbs_features(images, dim=512) * 10
    rng = np.random.default_rng(3)
    styles = np.stack([rng.normal(size=(len(images), 384)), rng.uniform(0.1, 2, (len(images), 384))], -1)
    np.save(tmp_path / "f.npy", feats)
    np.save(tmp_path / "s.npy", styles.astype(np.float32))
    torch.manual_seed(0)
    module = CAFace().eval()
    weights = save_fusion(tmp_path / "caface.safetensors", module, "caface")
    out = tmp_path / "c.json"
    args = ["eval", "ijbs", "--protocol-dir", tmp_path, "--image-list", tmp_path / "list.txt", "--features"]
    args += [tmp_path / "f.npy", "--protocol", "surveillance_to_booking", "--fusion", "caface"]
    _run(*args, "--styles", tmp_path / "s.npy", "--fusion-model", weights, "--out", out)
    got = json.loads(out.read_text())["metrics"]["subsets"]["surveillance_to_booking"]
    t = load_ijbs(tmp_path, images, "surveillance_to_booking")

    def templates(rows_list):
        return l2_normalize(np.stack([module.fuse(feats[r], styles[r]) for r in rows_list]))

    gals = [(templates(rows), sids) for sids, rows in t.galleries]
    expected = two_gallery_identification(templates(t.probe_rows), t.probe_subjects, gals)
    assert got["cmc"] == {str(k): v for k, v in expected["cmc"].items()}
    assert got["tpir_at_fpir"] == {str(k): v for k, v in expected["tpir_at_fpir"].items()}


@pytest.mark.parametrize("row", ["frames/1/videos", "frames/1/videos_"])
def test_ijbs_cut_video_row_is_refused_with_its_row(row: str) -> None:
    """A list row cut inside a video frame name names the list and the row, instead of a wrong key."""
    from fuseface.data.ijbs import image_keys
    from fuseface.errors import ProtocolFileError

    rows = ["frames/1/videos_101_0.jpg", "frames/1/img_7.jpg", row]
    assert image_keys(rows[:2]) == {"1_videos_101": [0], "1_img_7": [1]}
    with pytest.raises(ProtocolFileError, match=r"list.txt:3: .*not a video frame name"):
        image_keys(rows, "list.txt")
