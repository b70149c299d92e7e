"""Metric parity with the official evaluation code, on the stored inputs of ``../shared/oracles``.

Each folder of ``oracles/metrics`` holds inputs in the official formats and the numbers the
official script printed or returned (see the oracles README for how each was run):

* ``bin_verification``: insightface ``eval/verification.py`` ``test()`` (flip sum, 10 folds);
* ``ijb_1to1``: insightface ``eval_ijbc.py`` for all eight norm / detector / flip switches;
* ``ijb_1toN``: insightface ``ijb_evals.py`` ``run_model_test_1N`` (two galleries, 101 FPIRs);
* ``tinyface``: AdaFace ``tinyface_helper.py`` (closed-set ranks, open-set ``DIR_FAR``).

Counts, thresholds and rates are compared exactly where the README says so, scores to 1e-12.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fuseface.eval.identification import cmc, dir_far
from fuseface.eval.ijb import evaluate_1to1, evaluate_1toN
from fuseface.eval.verification import evaluate_interleaved, flip_sum


def metrics_dir(oracles: Path, name: str) -> Path:
    return oracles / "metrics" / name


def test_bin_verification_flip_sum_and_no_flip(oracles: Path) -> None:
    root = metrics_dir(oracles, "bin_verification")
    emb = np.load(root / "synth_emb.npy")
    emb_flip = np.load(root / "synth_emb_flip.npy")
    issame = np.load(root / "synth_issame.npy")
    expected = json.loads((root / "synth_expected.json").read_text())
    cases = {
        "flip_sum_then_l2 -> evaluate()": flip_sum(emb, emb_flip),
        next(k for k in expected if k.startswith("no_flip")): emb,
    }
    for key, embeddings in cases.items():
        ref = expected[key]
        got = evaluate_interleaved(embeddings, issame)
        assert got["accuracy"].tolist() == ref["accuracy_per_fold"], key
        assert got["accuracy_mean"] == ref["accuracy_mean"] and got["accuracy_std"] == ref["accuracy_std"], key
        assert got["best_thresholds"].tolist() == ref["best_threshold_per_fold (squared L2 distance)"], key
        np.testing.assert_allclose(got["val_thresholds"], ref["val_threshold_per_fold"], rtol=0, atol=1e-12)
        np.testing.assert_allclose(got["val_per_fold"], ref["val_per_fold"], rtol=0, atol=1e-12)
        assert got["far_per_fold"].tolist() == ref["far_per_fold"], key
        assert abs(got["val"] - ref["val"]) <= 1e-12 and abs(got["val_std"] - ref["val_std"]) <= 1e-12, key
        assert abs(got["far"] - ref["far"]) <= 1e-12, key
        np.testing.assert_array_equal(got["tpr"], ref["tpr"])
        np.testing.assert_array_equal(got["fpr"], ref["fpr"])
    official = expected["official_test()"]
    assert evaluate_interleaved(cases["flip_sum_then_l2 -> evaluate()"], issame)["accuracy_mean"] == official["acc2"]


@pytest.mark.parametrize("norm", [1, 0])
@pytest.mark.parametrize("detector", [1, 0])
@pytest.mark.parametrize("flip", [1, 0])
def test_ijb_1to1_all_switches(oracles: Path, norm: int, detector: int, flip: int) -> None:
    root = metrics_dir(oracles, "ijb_1to1")
    ref = json.loads((root / "expected_tar.json").read_text())[f"N{norm}D{detector}F{flip}"]
    result = evaluate_1to1(
        root,
        "IJBC",
        np.load(root / "feats.npy"),
        np.load(root / "feats_flip.npy"),
        flip_test=bool(flip),
        keep_norm=bool(norm),  # eval_ijbc.py's use_norm_score=True keeps the norms
        detector_score=bool(detector),
        fars=[t["far"] for t in ref["tar"]],
        return_scores=True,
    )
    scores = result["scores"]
    np.testing.assert_allclose(scores[:10], ref["score_first10"], rtol=0, atol=1e-12)
    assert abs(scores.sum() - ref["score_sum"]) <= 1e-9
    if norm and detector and flip:
        np.testing.assert_allclose(scores, np.load(root / "scores_N1D1F1.npy"), rtol=0, atol=1e-12)
    assert [result["tar_at_far"][t["far"]] for t in ref["tar"]] == [t["tar"] for t in ref["tar"]]
    assert ["%.2f" % (result["tar_at_far"][t["far"]] * 100) for t in ref["tar"]] == ref["table_strings"][1:]
    assert abs(result["auc"] - ref["auc"]) <= 1e-12
    assert result["roc"]["fpr"].size == ref["n_roc_points"]
    assert (result["num_pairs"], result["num_genuine"], result["num_templates"]) == (40000, 900, 600)


def test_ijb_1to_n_two_galleries(oracles: Path) -> None:
    root = metrics_dir(oracles, "ijb_1toN")
    ref = json.loads((root / "expected.json").read_text())
    fars = ref["fars"]
    result = evaluate_1toN(
        root,
        "IJBC",
        np.load(root / "embs.npy"),
        np.load(root / "embs_f.npy"),
        flip_test=True,
        keep_norm=True,  # ijb_evals.py's use_norm_score=False keeps the norms (its flag is inverted)
        detector_score=True,
        fpirs=fars,
        ranks=tuple(range(1, 21)),
    )
    assert result["num_probes"] == ref["query_num"]
    for name in ("G1", "G2"):
        got, exp = result["galleries"][name], ref[name]
        counts = got["rank_counts"]
        assert (counts[1], counts[5], counts[10]) == (exp["top1_count"], exp["top5_count"], exp["top10_count"])
        assert (got["num_mated"], got["num_nonmated"]) == (exp["n_mated_probes"], exp["n_nonmated_probes"])
        np.testing.assert_allclose([got["thresholds"][f] for f in fars], exp["threshes"], rtol=0, atol=1e-12)
        np.testing.assert_allclose([got["tpir_at_fpir"][f] for f in fars], exp["tpir"], rtol=0, atol=1e-12)
        cmc_ref = exp["cmc_rank1..20 (fraction of mated probes)"]
        np.testing.assert_allclose([counts[k] / got["num_mated"] for k in range(1, 21)], cmc_ref, rtol=0, atol=1e-12)
    np.testing.assert_allclose([result["tpir_at_fpir"][f] for f in fars], ref["mean_tpir"], rtol=0, atol=1e-12)
    for k in (1, 5, 10):
        assert abs(result["cmc_per_probe"][k] - ref[f"mean_top{k}"]) <= 1e-12


def test_tinyface_closed_and_open_set(oracles: Path) -> None:
    root = metrics_dir(oracles, "tinyface")
    ref = json.loads((root / "expected.json").read_text())
    probe, gallery = np.load(root / "feat_probe.npy"), np.load(root / "feat_gallery.npy")
    lp, lg = np.load(root / "labels_probe.npy"), np.load(root / "labels_gallery.npy")
    assert (len(probe), len(gallery)) == (ref["n_probe"], ref["n_gallery_match"] + ref["n_distractor"])
    ranks = cmc(probe, lp, gallery, lg, ranks=(1, 5, 20))
    expected_ranks = [np.float32(v) for v in ref["test_identification_ranks_1_5_20"]]
    assert [np.float32(ranks[k]) for k in (1, 5, 20)] == expected_ranks
    score = probe.astype(np.float64) @ gallery.astype(np.float64).T
    label = lp[:, None] == lg[None, :]
    closed = ref["closed_set_DIR_FAR"]
    dirs, th = dir_far(score, label, ranks=(1, 5, 20))
    assert dirs[0].astype(np.float32).tolist() == np.float32(closed["DIRs"]).tolist()
    np.testing.assert_allclose(th, closed["thresholds"], rtol=0, atol=1e-7)
    keep = np.load(root / "openset_gallery_keep_mask.npy")
    opened = ref["open_set_DIR_FAR(FARs=[0.01,0.1,0.3], ranks=[1,5,20]) on gallery[:, keep]"]
    dirs, th = dir_far(score[:, keep], label[:, keep], ranks=(1, 5, 20), fars=(0.01, 0.1, 0.3))
    assert dirs.astype(np.float32).tolist() == np.float32(opened["DIRs (F x R)"]).tolist()
    np.testing.assert_allclose(th, opened["thresholds"], rtol=0, atol=1e-7)
