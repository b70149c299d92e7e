"""One rule for invalid features (NaN/inf or zero rows) in every protocol, and pessimistic ties.

Rule (``fuseface.eval.invalid``, docs/evaluation.md): counted, never dropped from a denominator,
scored as a miss (never a hit). Each protocol gets features with some NaN rows and all-NaN inputs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fuseface.cli.main import build_app
from fuseface.data.lfw import lfw_pairs_protocol
from fuseface.data.scface import load_scface
from fuseface.data.tinyface import load_tinyface
from fuseface.eval.identification import closed_set, cmc, dir_far, two_gallery_identification
from fuseface.eval.ijb import evaluate_1to1, evaluate_1toN, open_set_1toN
from fuseface.eval.invalid import MISS_RANK, invalid_rows, pessimistic_ranks
from fuseface.eval.verification import evaluate, evaluate_interleaved
from ijb_fixtures import ijbs_features, write_ijb, write_ijbs, write_scface, write_tinyface

runner = CliRunner()


def run_cli(*args) -> dict:
    """Run ``fuseface`` in-process with ``--out``; returns the result JSON."""
    result = runner.invoke(build_app(), [str(a) for a in args])
    assert result.exit_code == 0, result.output
    out = Path(str(args[args.index("--out") + 1]))
    return json.loads(out.read_text())


def test_invalid_rows_and_pessimistic_ranks() -> None:
    f = np.ones((4, 3))
    f[1, 2] = np.nan
    f[2] = 0.0
    f[3, 0] = np.inf
    assert invalid_rows(f).tolist() == [False, True, True, True]
    scores = np.array([[0.5, 0.5, 0.1], [0.9, 0.2, 0.3], [-np.inf, 0.0, 0.0]])
    mates = np.array([[True, False, False], [False, True, False], [True, False, False]])
    # a tie with a non-mate ranks the mate behind it; a probe whose mate cannot score misses
    assert pessimistic_ranks(scores, mates).tolist() == [2, 3, MISS_RANK]


# ---- verification: .bin and LFW ------------------------------------------------------------------


def separable_pairs(n: int = 200, dim: int = 8, seed: int = 0):
    rng = np.random.default_rng(seed)
    issame = np.arange(n) % 2 == 0
    e1 = rng.normal(size=(n, dim))
    e2 = np.where(issame[:, None], e1 + 0.01 * rng.normal(size=(n, dim)), rng.normal(size=(n, dim)))
    return e1, e2, issame


def test_verification_invalid_pair_is_a_miss_in_its_fold() -> None:
    e1, e2, issame = separable_pairs()
    clean = evaluate(e1, e2, issame)
    assert clean["accuracy_mean"] == 1.0 and clean["invalid_pairs"] == 0
    e1[0, 3] = np.nan  # genuine pair 0 (fold 0)
    e2[1] = 0.0  # impostor pair 1 (fold 0)
    r = evaluate(e1, e2, issame)
    assert r["invalid_pairs"] == 2 and r["num_pairs"] == 200
    assert r["accuracy"][0] == pytest.approx(18 / 20, abs=0)  # both pairs wrong, still counted
    assert r["accuracy"][1:].tolist() == [1.0] * 9


def test_verification_all_nan_scores_zero() -> None:
    e1, e2, issame = separable_pairs()
    r = evaluate(np.full_like(e1, np.nan), e2, issame)
    assert r["accuracy_mean"] == 0.0 and r["val"] == 0.0
    assert r["invalid_pairs"] == 200


def test_bin_layout_counts_images_and_pairs() -> None:
    e1, e2, issame = separable_pairs()
    inter = np.empty((400, 8))
    inter[0::2], inter[1::2] = e1, e2
    inter[4] = np.nan
    r = evaluate_interleaved(inter, issame)
    assert (r["invalid_images"], r["invalid_pairs"]) == (1, 1)
    assert r["accuracy_mean"] < 1.0
    assert evaluate_interleaved(np.full_like(inter, np.nan), issame)["accuracy_mean"] == 0.0


def test_lfw_invalid_image_misses_every_pair_it_is_in() -> None:
    e1, e2, issame = separable_pairs()
    feats = np.concatenate([e1, e2])
    i1, i2 = np.arange(200), np.arange(200, 400)
    i1[2] = 0  # image 0 is used by pairs 0 and 2 (both genuine: 2 with a noisy copy of image 0)
    feats[0] = np.nan
    r = lfw_pairs_protocol(feats, i1, i2, issame)
    assert (r["invalid_images"], r["invalid_pairs"]) == (1, 2)
    assert lfw_pairs_protocol(np.full_like(feats, np.nan), i1, i2, issame)["accuracy_mean"] == 0.0


# ---- closed-set identification: TinyFace, SCface ----------------------------------------------------


def test_closed_set_nan_probe_gallery_and_all_nan() -> None:
    rng = np.random.default_rng(0)
    gallery = rng.normal(size=(6, 16))
    g_labels = np.array([0, 1, 2, 3, -100, -100])
    probes = gallery[[0, 1, 2, 3]] + 0.01 * rng.normal(size=(4, 16))
    p_labels = np.array([0, 1, 2, 3])
    assert cmc(probes, p_labels, gallery, g_labels, ranks=(1,))[1] == 1.0
    probes[0] = np.nan  # invalid probe: a miss, still in the denominator
    gallery[1] = np.nan  # invalid mate: probe 1 cannot find it
    gallery[4] = 0.0  # invalid distractor: can never be retrieved, changes nothing
    r = closed_set(probes, p_labels, gallery, g_labels, ranks=(1, 5, 6))
    assert r["cmc"] == {1: 0.5, 5: 0.5, 6: 0.5}
    assert (r["invalid_probes"], r["invalid_gallery"], r["num_mated_probes"]) == (1, 2, 4)
    all_nan = closed_set(np.full_like(probes, np.nan), p_labels, gallery, g_labels, ranks=(1, 5, 20))
    assert all_nan["cmc"] == {1: 0.0, 5: 0.0, 20: 0.0}


def test_ties_rank_the_mate_behind() -> None:
    gallery = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # mate and a distractor identical
    r = closed_set(np.array([[1.0, 0.0]]), np.array([7]), gallery, np.array([7, -100, 8]), ranks=(1, 2))
    assert r["cmc"] == {1: 0.0, 2: 1.0}
    score = np.array([[0.5, 0.5, 0.1]])
    label = np.array([[True, False, False]])
    assert dir_far(score, label, ranks=(1, 2))[0].tolist() == [[0.0, 1.0]]


def test_tinyface_cli_all_nan_is_zero_not_hundred(tmp_path: Path) -> None:
    write_tinyface(tmp_path)
    n = len(load_tinyface(tmp_path).image_paths)
    np.save(tmp_path / "nan.npy", np.full((n, 8), np.nan, np.float32))
    doc = run_cli(
        "eval", "tinyface", "--root", tmp_path, "--features", tmp_path / "nan.npy", "--out", tmp_path / "r.json"
    )
    assert doc["metrics"]["cmc"] == {"1": 0.0, "5": 0.0, "20": 0.0}
    assert doc["metrics"]["invalid_probes"] == doc["metrics"]["num_probes"] > 0
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(n, 8)).astype(np.float32)
    feats[0] = np.nan
    np.save(tmp_path / "one.npy", feats)
    doc = run_cli(
        "eval", "tinyface", "--root", tmp_path, "--features", tmp_path / "one.npy", "--out", tmp_path / "o.json"
    )
    assert doc["metrics"]["invalid_probes"] == 1


def test_scface_cli_nan_rows_counted_per_distance(tmp_path: Path) -> None:
    write_scface(tmp_path, n_subjects=4)
    proto = load_scface(tmp_path)
    n = len(proto.image_paths)
    np.save(tmp_path / "nan.npy", np.full((n, 8), np.nan, np.float32))
    doc = run_cli(
        "eval", "scface", "--root", tmp_path, "--features", tmp_path / "nan.npy", "--out", tmp_path / "r.json"
    )
    for d in ("d1", "d2", "d3"):
        per = doc["metrics"]["per_distance"][d]
        assert per["cmc"] == {"1": 0.0, "5": 0.0}
        assert per["invalid_probes"] == per["num_probes"] == len(proto.probes[d][0])
        assert per["invalid_gallery"] == 4


# ---- IJB 1:1 and 1:N ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ijb(tmp_path_factory):
    return write_ijb(tmp_path_factory.mktemp("ijb_invalid"), "IJBC", n_subjects=10)


def test_ijb_1to1_empty_templates_are_misses(ijb) -> None:
    clean = evaluate_1to1(ijb.root, "IJBC", ijb.features, ijb.flip_features, return_scores=True)
    feats = ijb.features.copy()
    first = np.unique(ijb.templates)[0]
    feats[ijb.templates == first] = np.nan  # every image of one template
    r = evaluate_1to1(ijb.root, "IJBC", feats, ijb.flip_features, return_scores=True)
    involved = (ijb.pairs[:, 0] == first) | (ijb.pairs[:, 1] == first)
    assert r["empty_templates"] == 1 and r["pairs_with_empty_template"] == int(involved.sum()) > 0
    assert r["invalid_images"] == int((ijb.templates == first).sum())
    genuine = ijb.pairs[:, 2] == 1
    assert np.all(r["scores"][involved & genuine] == -np.inf)
    assert np.all(r["scores"][involved & ~genuine] == np.inf)
    assert r["num_pairs"] == clean["num_pairs"]
    assert all(r["tar_at_far"][f] <= clean["tar_at_far"][f] for f in clean["tar_at_far"])
    all_nan = evaluate_1to1(ijb.root, "IJBC", np.full_like(feats, np.nan), None, flip_test=False)
    assert all(v == 0.0 for v in all_nan["tar_at_far"].values())
    assert all_nan["pairs_with_empty_template"] == all_nan["num_pairs"]


def test_ijb_1to_n_empty_probe_and_gallery_templates(ijb) -> None:
    clean = evaluate_1toN(ijb.root, "IJBC", ijb.features, ijb.flip_features)
    assert clean["empty_probe_templates"] == 0
    all_nan = evaluate_1toN(ijb.root, "IJBC", np.full_like(ijb.features, np.nan), None, flip_test=False)
    assert all(v == 0.0 for v in all_nan["cmc"].values())
    assert all(v == 0.0 for v in all_nan["tpir_at_fpir"].values())
    assert all_nan["empty_probe_templates"] == all_nan["num_probes"]
    assert all(g["empty_gallery_templates"] == g["num_gallery"] for g in all_nan["galleries"].values())
    # one probe template without a valid image: its search misses, the denominator stays
    probe_t = ijb.probe[0][0]
    feats = ijb.features.copy()
    feats[ijb.templates == probe_t] = np.nan
    one = evaluate_1toN(ijb.root, "IJBC", feats, ijb.flip_features)
    assert one["empty_probe_templates"] == 1
    assert one["num_mated_searches"] == clean["num_mated_searches"]
    assert one["cmc"][1] <= clean["cmc"][1]


def test_open_set_invalid_nonmated_probe_is_a_false_alarm() -> None:
    gallery = np.eye(3)
    probes = np.array([[1.0, 0.0, 0.0], [np.nan, 0.0, 0.0], [0.0, 1.0, 0.0]])
    r = open_set_1toN(probes, np.array([0, 9, 1]), gallery, np.array([0, 1, 2]), fpirs=(0.5,), ranks=(1,))
    assert r["num_nonmated"] == 1 and r["thresholds"][0.5] == np.inf  # no mated probe passes it
    assert r["tpir_at_fpir"][0.5] == 0.0 and r["rank_counts"][1] == 2


# ---- IJB-S ------------------------------------------------------------------------------------------


def test_ijbs_nan_and_all_nan(tmp_path: Path) -> None:
    images = write_ijbs(tmp_path)
    (tmp_path / "list.txt").write_text("\n".join(images) + "\n")
    feats = ijbs_features(images)
    np.save(tmp_path / "f.npy", feats)
    args = ["eval", "ijbs", "--protocol-dir", tmp_path, "--image-list", tmp_path / "list.txt"]
    args += ["--protocol", "surveillance_to_booking"]
    clean = run_cli(*args, "--features", tmp_path / "f.npy", "--out", tmp_path / "c.json")
    np.save(tmp_path / "nan.npy", np.full_like(feats, np.nan))
    doc = run_cli(*args, "--features", tmp_path / "nan.npy", "--out", tmp_path / "n.json")
    sub = doc["metrics"]["subsets"]["surveillance_to_booking"]
    assert all(v == 0.0 for v in sub["cmc"].values()) and all(v == 0.0 for v in sub["tpir_at_fpir"].values())
    assert sub["empty_probe_templates"] == sub["num_probes"]
    assert doc["metrics"]["invalid_images"] == len(images)
    assert clean["metrics"]["subsets"]["surveillance_to_booking"]["cmc"]["1"] > 0


def test_two_gallery_identification_nan_probe_is_a_miss() -> None:
    g1, g2 = np.eye(4)[:2], np.eye(4)[2:]
    probes = np.eye(4)[[0, 1, 2, 3]].copy()
    probes[3] = np.nan
    r = two_gallery_identification(probes, np.array([0, 1, 2, 3]), [(g1, [0, 1]), (g2, [2, 3])], ranks=(1, 4))
    assert r["cmc"] == {1: 0.75, 4: 0.75}
    assert r["invalid_probes"] == 1
