"""IJB 1:1 / 1:N: exact equivalence with transcriptions of the insightface scripts, ROC equality
with scikit-learn, hand cases, properties and the bad-feature rule."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import auc as sk_auc
from sklearn.metrics import roc_curve as sk_roc_curve
from sklearn.preprocessing import normalize

from fuseface.data.ijb import load_ijb, read_pair_file
from fuseface.errors import ProtocolFileError
from fuseface.eval.ijb import evaluate_1to1, evaluate_1toN, score_template_pairs, tar_at_far
from fuseface.eval.roc import roc_curve
from fuseface.eval.templates import image_features, pool_templates
from ijb_fixtures import write_ijb

FARS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


# --- reference transcriptions (arcface_torch eval_ijbc.py, ijb_evals.py) -------------------------
def ref_image2template(img_feats, templates, medias):
    unique_templates = np.unique(templates)
    template_feats = np.zeros((len(unique_templates), img_feats.shape[1]))
    for c, uqt in enumerate(unique_templates):
        (ind_t,) = np.where(templates == uqt)
        face, fm = img_feats[ind_t], medias[ind_t]
        um, cts = np.unique(fm, return_counts=True)
        mf = []
        for u, ct in zip(um, cts, strict=True):
            (ind_m,) = np.where(fm == u)
            mf += [face[ind_m]] if ct == 1 else [np.mean(face[ind_m], axis=0, keepdims=True)]
        template_feats[c] = np.sum(np.array(mf), axis=0)
    return normalize(template_feats), unique_templates


def ref_tar(label, score):
    fpr, tpr, _ = sk_roc_curve(label, score)
    a = sk_auc(fpr, tpr)
    fpr, tpr = np.flipud(fpr), np.flipud(tpr)
    return {x: float(tpr[min(zip(abs(fpr - x), range(len(fpr)), strict=True))[1]]) for x in FARS}, a


def ref_pipeline(fx, flip=True, keep_norm=True, det=True):
    x = fx.features + fx.flip_features if flip else fx.features.copy()
    if not keep_norm:
        x = x / np.sqrt(np.sum(x**2, -1, keepdims=True))
    if det:
        x = x * fx.faceness[:, np.newaxis]
    tf, ut = ref_image2template(x, fx.templates, fx.medias)
    t2i = np.zeros(ut.max() + 1, dtype=int)
    t2i[ut] = np.arange(len(ut))
    score = np.sum(tf[t2i[fx.pairs[:, 0]]] * tf[t2i[fx.pairs[:, 1]]], -1)
    return tf, score


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    return write_ijb(tmp_path_factory.mktemp("ijb"), "IJBC", n_subjects=14)


@pytest.mark.parametrize("flip,keep_norm,det", [(True, True, True), (False, False, True), (True, False, False)])
def test_1to1_equals_reference(fx, flip, keep_norm, det) -> None:
    ref_tf, ref_score = ref_pipeline(fx, flip, keep_norm, det)
    proto = load_ijb(fx.root, "IJBC")
    x = image_features(
        fx.features, fx.flip_features, proto.faceness, flip_test=flip, keep_norm=keep_norm, detector_score=det
    )
    tf = pool_templates(x, proto.templates, proto.medias)
    np.testing.assert_array_equal(tf.features, ref_tf)  # bit for bit
    r = evaluate_1to1(
        fx.root,
        "IJBC",
        fx.features,
        fx.flip_features,
        flip_test=flip,
        keep_norm=keep_norm,
        detector_score=det,
        return_scores=True,
    )
    np.testing.assert_allclose(r["scores"], ref_score, rtol=0, atol=1e-14)
    ref_tar_at_far, ref_auc = ref_tar(fx.pairs[:, 2], ref_score)
    assert r["tar_at_far"] == ref_tar_at_far
    assert r["auc"] == pytest.approx(ref_auc, abs=1e-15)
    assert r["num_pairs"] == len(fx.pairs) and r["invalid_images"] == 0


def test_roc_curve_equals_sklearn_with_ties_and_drop_intermediate() -> None:
    rng = np.random.default_rng(0)
    for n, q in [(50, None), (3000, 0.05), (20000, 0.01), (5, 1.0)]:
        s = rng.normal(size=n)
        if q:
            s = np.round(s / q) * q
        y = rng.random(n) < 0.2
        y[0], y[1] = True, False
        for drop in (True, False):
            for a, b in zip(sk_roc_curve(y, s, drop_intermediate=drop), roc_curve(y, s, drop), strict=True):
                np.testing.assert_array_equal(a, b)
    # tiny inputs and heavy ties (every score from a handful of levels), both classes present
    for n in range(2, 9):
        for _trial in range(30):
            s = rng.integers(0, 3, n).astype(np.float64)
            y = rng.random(n) < 0.4
            y[0], y[-1] = True, False
            for drop in (True, False):
                for a, b in zip(sk_roc_curve(y, s, drop_intermediate=drop), roc_curve(y, s, drop), strict=True):
                    np.testing.assert_array_equal(a, b)


def test_roc_curve_can_sort_the_scores_in_place() -> None:
    rng = np.random.default_rng(3)
    s = np.round(rng.normal(size=5000), 2)
    y = rng.random(5000) < 0.1
    expected = sk_roc_curve(y, s)
    work = s.copy()
    got = roc_curve(y, work, overwrite_scores=True)
    for a, b in zip(expected, got, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(work, np.sort(s))  # the documented side effect
    kept = s.copy()
    roc_curve(y, kept)
    np.testing.assert_array_equal(kept, s)  # default: the input is left alone


def test_tar_at_far_hand_case_and_properties() -> None:
    labels = np.array([1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0])
    scores = np.array([0.9, 0.8, 0.3, 0.85, 0.5, 0.4, 0.2, 0.1, 0.05, 0.0, -0.1, -0.2])
    # ROC (dropped intermediates): fpr 0, 0, 1/9, 1/9, 3/9, 1 with tpr 0, 1/3, 1/3, 2/3, 1, 1
    r = tar_at_far(labels, scores, fars=(0.1, 0.2, 0.5))
    assert r == {0.1: pytest.approx(2 / 3), 0.2: pytest.approx(2 / 3), 0.5: 1.0}
    rng = np.random.default_rng(1)
    y = rng.random(5000) < 0.1
    s = rng.normal(size=5000) + 1.5 * y
    t = tar_at_far(y, s)
    vals = [t[f] for f in FARS]
    assert vals == sorted(vals)  # monotone in FAR
    perm = rng.permutation(5000)
    assert tar_at_far(y[perm], s[perm]) == t  # invariant to pair order


def test_score_template_pairs_block_and_sparse_paths_agree() -> None:
    rng = np.random.default_rng(2)
    t = normalize(rng.normal(size=(400, 24)))
    r1, r2 = rng.integers(0, 400, 7000), rng.integers(0, 400, 7000)
    ref = np.sum(t[r1] * t[r2], -1)
    # 400 and 134 blocks (grouped by a radix argsort), 20 blocks (one mask pass each), one block
    for chunk in (30, 24 * 50, 400 * 20, 10**7):
        np.testing.assert_allclose(score_template_pairs(t, r1, r2, chunk_elems=chunk), ref, atol=1e-14, rtol=0)


def test_nan_and_zero_features_are_dropped_and_counted(fx) -> None:
    feats = fx.features.copy()
    proto = load_ijb(fx.root, "IJBC")
    t0 = proto.templates[0]
    rows_t0 = np.flatnonzero(proto.templates == t0)
    feats[rows_t0] = np.nan  # template t0 loses all its images
    feats[rows_t0[-1] + 1] = 0.0  # one more image of another template is all-zero
    r = evaluate_1to1(proto, "IJBC", feats, None, flip_test=False)
    assert r["invalid_images"] == rows_t0.size + 1
    assert r["empty_templates"] == 1
    n_pairs_t0 = int(((fx.pairs[:, 0] == t0) | (fx.pairs[:, 1] == t0)).sum())
    assert r["pairs_with_empty_template"] == n_pairs_t0 > 0
    assert all(np.isfinite(v) for v in r["tar_at_far"].values())


def test_one_to_n_equals_ijb_evals_transcription(fx) -> None:
    r = evaluate_1toN(fx.root, "IJBC", fx.features, fx.flip_features, fpirs=(0.01, 0.1, 0.5))
    x = (fx.features + fx.flip_features) * fx.faceness[:, None]
    tf, ut = ref_image2template(x, fx.templates, fx.medias)
    feat = dict(zip(ut.tolist(), tf, strict=True))
    probe_t, probe_s = fx.probe
    pf = np.array([feat[t] for t in probe_t])
    recalls, tops, n_q = [], np.zeros(3), len(probe_t)
    for gt, gs in fx.gallery.values():
        gf = np.array([feat[t] for t in gt])
        sim = pf @ gf.T
        pos, neg, non = [], [], []
        for i, q in enumerate(probe_s):
            if q in gs:
                gl = np.argwhere(gs == q)[0, 0]
                order = np.argsort(sim[i])[::-1]
                tops += [gl in order[:1], gl in order[:5], gl in order[:10]]
                pos.append(sim[i][gs == q][0])
                neg.append(sim[i][gs != q].max())
            else:
                non.append(sim[i].max())
        pos, neg, non = np.array(pos), np.array(neg), np.sort(non)[::-1]
        rec = []
        for far in (0.01, 0.1, 0.5):
            th = non[max(int(len(non) * far) - 1, 0)]
            rec.append(np.logical_and(pos > neg, pos > th).sum() / len(pos))
        recalls.append(rec)
    assert [r["tpir_at_fpir"][f] for f in (0.01, 0.1, 0.5)] == pytest.approx(np.mean(recalls, 0).tolist(), abs=0)
    assert [r["cmc_per_probe"][k] for k in (1, 5, 10)] == pytest.approx((tops / n_q).tolist(), abs=0)
    assert r["num_mated_searches"] == n_q  # every probe is mated in exactly one gallery here
    assert r["cmc"] == r["cmc_per_probe"]


def test_one_to_n_legacy_pooled_gallery(fx) -> None:
    r = evaluate_1toN(fx.root, "IJBC", fx.features, fx.flip_features, legacy=True, fpirs=(0.01, 0.1))
    x = (fx.features + fx.flip_features) * fx.faceness[:, None]
    tf, ut = ref_image2template(x, fx.templates, fx.medias)
    feat = dict(zip(ut.tolist(), tf, strict=True))
    gt = np.concatenate([g[0] for g in fx.gallery.values()])
    gs = np.concatenate([g[1] for g in fx.gallery.values()])
    order = np.argsort(gt)
    gt, gs = gt[order], gs[order]
    pf = np.array([feat[t] for t in fx.probe[0]])
    sim = pf @ np.array([feat[t] for t in gt]).T
    mask = np.array([np.flatnonzero(gs == q)[0] for q in fx.probe[1]])
    top = np.argsort(-sim, axis=1)
    assert r["cmc"][1] == pytest.approx(np.mean(top[:, 0] == mask), abs=0)
    pos = sim[np.arange(len(mask)), mask].copy()
    sim[np.arange(len(mask)), mask] = -2.0
    neg = np.sort(sim[sim > -2.0])[::-1]
    for far in (0.01, 0.1):
        th = neg[int(np.ceil(len(mask) * far)) - 1]
        assert r["tpir_at_fpir"][far] == pytest.approx(np.sum(pos > th) / len(mask), abs=0)


def test_protocol_file_errors_name_file_and_line(tmp_path: Path) -> None:
    fxt = write_ijb(tmp_path, "IJBB", n_subjects=3)
    pair_file = fxt.root / "IJBB" / "meta" / "ijbb_template_pair_label.txt"
    lines = pair_file.read_text().splitlines()
    lines[2] = "12 x 1"
    pair_file.write_text("\n".join(lines) + "\n")
    with pytest.raises(ProtocolFileError, match=r"ijbb_template_pair_label.txt:3"):
        read_pair_file(pair_file, cache=False)
    tm = fxt.root / "IJBB" / "meta" / "ijbb_face_tid_mid.txt"
    tm.write_text(tm.read_text().replace(" ", " x ", 1))
    with pytest.raises(ProtocolFileError, match=r"ijbb_face_tid_mid.txt:1"):
        load_ijb(fxt.root, "IJBB")
    with pytest.raises(ProtocolFileError, match="not found"):
        load_ijb(tmp_path / "nowhere", "IJBC")
    with pytest.raises(ProtocolFileError, match="unknown IJB target"):
        load_ijb(tmp_path, "IJBX")


def test_pair_file_parsed_by_a_helper_process_equals_the_in_process_reader(tmp_path: Path) -> None:
    from fuseface.data.pair_file_job import PairFileJob

    fxt = write_ijb(tmp_path, "IJBB", n_subjects=3)
    pair_file = fxt.root / "IJBB" / "meta" / "ijbb_template_pair_label.txt"
    job = PairFileJob(pair_file, cache=False, min_bytes=0)  # force the helper for a small file
    assert job.in_background
    got = job.result()
    for a, b in zip(got, read_pair_file(pair_file, cache=False), strict=True):
        np.testing.assert_array_equal(a, b)
        assert a.dtype == b.dtype
    # a bad line: the helper fails, the in-process reader reports the file and the line
    lines = pair_file.read_text().splitlines()
    lines[1] = "12 13"
    pair_file.write_text("\n".join(lines) + "\n")
    bad = PairFileJob(pair_file, cache=False, min_bytes=0)
    assert bad.in_background
    with pytest.raises(ProtocolFileError, match=r"ijbb_template_pair_label.txt:2"):
        bad.result()


def test_background_pairs_are_checked_on_first_use(tmp_path: Path) -> None:
    fxt = write_ijb(tmp_path, "IJBB", n_subjects=3)
    eager = load_ijb(fxt.root, "IJBB")
    lazy = load_ijb(fxt.root, "IJBB", pairs="background")
    np.testing.assert_array_equal(lazy.pair_t1, eager.pair_t1)
    for a, b in zip(lazy.pair_rows(), eager.pair_rows(), strict=True):
        np.testing.assert_array_equal(a, b)
    pair_file = fxt.root / "IJBB" / "meta" / "ijbb_template_pair_label.txt"
    lines = pair_file.read_text().splitlines()
    lines[3] = "999999 " + lines[3].split()[1] + " 0"  # a template with no image
    pair_file.write_text("\n".join(lines) + "\n")
    with pytest.raises(ProtocolFileError, match=r"ijbb_template_pair_label.txt:4: template 999999 \(t1\) has no image"):
        load_ijb(fxt.root, "IJBB")
    lazy = load_ijb(fxt.root, "IJBB", pairs="background")  # read without complaint ...
    with pytest.raises(ProtocolFileError, match=r"ijbb_template_pair_label.txt:4: template 999999"):
        lazy.pair_rows()  # ... and refused when the pairs are first used


def test_in_place_weighting_and_input_dtypes_give_the_same_templates(fx) -> None:
    base = evaluate_1to1(fx.root, "IJBC", fx.features, fx.flip_features, return_scores=True)
    work = fx.features.astype(np.float32, copy=True)
    r = evaluate_1to1(fx.root, "IJBC", work, fx.flip_features, overwrite_features=True, return_scores=True)
    assert r["tar_at_far"] == base["tar_at_far"] and r["auc"] == base["auc"]
    np.testing.assert_array_equal(r["scores"], base["scores"])
    assert not np.array_equal(work, fx.features)  # the documented side effect: the array was reused
    proto = load_ijb(fx.root, "IJBC")
    f32 = image_features(fx.features, fx.flip_features, proto.faceness, keep_norm=False)
    f64 = image_features(
        fx.features.astype(np.float64), fx.flip_features.astype(np.float64), proto.faceness, keep_norm=False
    )
    np.testing.assert_array_equal(f32, f64)  # float64 input is cast to float32 first, as the reference does
