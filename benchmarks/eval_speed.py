"""Speed and peak memory of the evaluation protocols, ours against a reference-style transcription.

Cases (each run in its own subprocess; peak memory = VmHWM of that process):

* ``verif``: the 10-fold protocol on 6,000 random 512-d pairs (insightface ``verification.evaluate``).
* ``ijbc11``: IJB-C 1:1 at full scale on a seeded synthetic protocol of the real size (469,375
  images, 23,124 templates, 15,658,489 pairs of which 19,557 genuine, 512-d features), from the
  protocol files and a ``features.npy`` (loading included).
* ``ijbc1n``: IJB-C 1:N (G1 1,772 + G2 1,759 gallery templates, 19,593 probes) on the same data.

The reference side is a straightforward transcription of the insightface scripts
(``eval/verification.py``; ``eval_ijbc.py`` ``image2template_feature`` / ``verification`` with
100k-pair batches and ``sklearn.metrics.roc_curve``; ``ijb_evals.evaluation_1N``), kept here and
only here. Both sides' results are compared (``identical``).

The synthetic protocol is generated once into ``~/.cache/fuseface/bench/ijbc_synth`` (about
1.3 GB; outside the repository). Run::

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/eval_speed.py            # all cases
    .venv/bin/python benchmarks/eval_speed.py --cases verif ijbc11 --no-reference

Writes ``benchmarks/results/eval_speed.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CACHE = Path(os.environ.get("FUSEFACE_BENCH_CACHE", Path.home() / ".cache" / "fuseface" / "bench")) / "ijbc_synth"
N_IMAGES, N_G1, N_G2, N_PROBE = 469_375, 1_772, 1_759, 19_593
N_PAIRS, N_GENUINE, DIM = 15_658_489, 19_557, 512
FARS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


# ----------------------------------------------------------------------------- data generation
def warm_page_cache(root: Path) -> None:
    """Read every protocol and feature file once before timing, so that neither implementation pays
    for a cold disk cache (the first run after generation would otherwise be ~10 s slower)."""
    for path in sorted(root.rglob("*")):
        if path.is_file():
            with open(path, "rb") as f:
                while f.read(1 << 24):
                    pass


def warm_memory(gib: int) -> None:
    """Touch ``gib`` GiB once in the parent, then free it. On a virtual machine the host backs a
    guest page on its first touch, which costs more than the arithmetic that follows (3.5 s per GiB
    measured here); whichever implementation ran first used to pay that alone. Afterwards both
    children get already-backed pages, as a long-running process would."""
    block = np.ones(gib * (1 << 30) // 8)
    del block


def fresh_protocol_cache() -> None:
    """Point ``FUSEFACE_CACHE`` at an empty folder: our reader then parses the 15.66 M-line pair
    file from text, as the reference does, instead of reading its ``.npz`` cache of an earlier run."""
    import atexit
    import shutil
    import tempfile

    folder = tempfile.mkdtemp(prefix="fuseface-bench-")
    atexit.register(shutil.rmtree, folder, True)
    os.environ["FUSEFACE_CACHE"] = folder


def generate(root: Path = CACHE, seed: int = 0) -> Path:
    """Write the synthetic IJB-C protocol files and features (once)."""
    meta = root / "IJBC" / "meta"
    done = root / "DONE_v2"
    if done.is_file():
        return root
    meta.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n_gal = N_G1 + N_G2
    n_t = n_gal + N_PROBE
    tids = rng.permutation(np.arange(1, 200_000))[:n_t]
    gal_t, probe_t = tids[:n_gal], tids[n_gal:]
    gal_subject = np.arange(n_gal) + 1  # one gallery template per subject
    probe_subject = rng.integers(1, n_gal + 1, N_PROBE)
    subject_of_t = dict(zip(gal_t.tolist(), gal_subject.tolist(), strict=True))
    subject_of_t.update(zip(probe_t.tolist(), probe_subject.tolist(), strict=True))
    # images per template (at least 1), medias within a template
    img_t = np.r_[np.arange(n_t), rng.integers(0, n_t, N_IMAGES - n_t)]
    rng.shuffle(img_t)
    img_tid = tids[img_t]
    img_media = (img_t * 8 + rng.integers(0, 4, N_IMAGES)).astype(np.int64) + 1
    centres = rng.normal(size=(n_gal + 1, DIM)).astype(np.float32)
    subj = np.array([subject_of_t[t] for t in img_tid.tolist()])
    feats = centres[subj] * 0.15 + rng.normal(size=(N_IMAGES, DIM)).astype(np.float32)  # not separable
    feats *= rng.uniform(5, 30, (N_IMAGES, 1)).astype(np.float32)
    np.save(root / "features.npy", feats.astype(np.float32))
    del feats
    faceness = rng.uniform(0.5, 1.0, N_IMAGES)
    names = [f"{i + 1}.jpg" for i in range(N_IMAGES)]
    lm = rng.uniform(30, 90, (N_IMAGES, 10))
    with open(meta / "ijbc_name_5pts_score.txt", "w") as f:
        for i in range(N_IMAGES):
            f.write(names[i] + " " + " ".join(f"{v:.3f}" for v in lm[i]) + f" {faceness[i]:.3f}\n")
    with open(meta / "ijbc_face_tid_mid.txt", "w") as f:
        f.writelines(f"{names[i]} {img_tid[i]} {img_media[i]}\n" for i in range(N_IMAGES))
    # pairs: genuine = probe vs its gallery template; impostors = random gallery x probe cells
    gi = np.flatnonzero(True | np.zeros(N_PROBE, bool))[:N_GENUINE]
    gen = np.stack([gal_t[probe_subject[gi] - 1], probe_t[gi]], 1)
    n_imp = N_PAIRS - N_GENUINE
    cells = rng.choice(n_gal * N_PROBE, size=n_imp + N_PROBE + 1000, replace=False)
    g_idx, p_idx = cells // N_PROBE, cells % N_PROBE
    keep = gal_subject[g_idx] != probe_subject[p_idx]
    g_idx, p_idx = g_idx[keep][:n_imp], p_idx[keep][:n_imp]
    imp = np.stack([gal_t[g_idx], probe_t[p_idx]], 1)
    pairs = np.concatenate([np.c_[gen, np.ones(len(gen), int)], np.c_[imp, np.zeros(len(imp), int)]])
    pairs = pairs[rng.permutation(len(pairs))]
    with open(meta / "ijbc_template_pair_label.txt", "w") as f:
        for a in range(0, len(pairs), 1_000_000):
            blk = pairs[a : a + 1_000_000]
            f.write("\n".join(f"{x} {y} {z}" for x, y, z in blk.tolist()) + "\n")
    for name, sl in (("G1", slice(0, N_G1)), ("G2", slice(N_G1, n_gal))):
        with open(meta / f"ijbc_1N_gallery_{name}.csv", "w") as f:
            f.write("TEMPLATE_ID,SUBJECT_ID,FILENAME\n")
            f.writelines(f"{t},{s},img/{t}.jpg\n" for t, s in zip(gal_t[sl], gal_subject[sl], strict=True))
    with open(meta / "ijbc_1N_probe_mixed.csv", "w") as f:
        f.write("TEMPLATE_ID,SUBJECT_ID,FILENAME\n")
        f.writelines(f"{t},{s},img/{t}.jpg\n" for t, s in zip(probe_t, probe_subject, strict=True))
    done.write_text("ok\n")
    return root


# ----------------------------------------------------------------------------- reference transcriptions
def ref_verification(emb: np.ndarray, issame: np.ndarray, nfolds: int = 10) -> dict:
    """insightface eval/verification.py evaluate(), loops as written (VAL interpolation: the
    scipy<1.11 slinear spline, which recent scipy refuses on repeated FARs)."""
    from scipy.interpolate import BSpline
    from sklearn.model_selection import KFold
    from sklearn.preprocessing import normalize

    emb = normalize(emb)
    e1, e2 = emb[0::2], emb[1::2]
    dist = np.sum(np.square(np.subtract(e1, e2)), 1)
    thresholds = np.arange(0, 4, 0.01)
    kf = KFold(n_splits=nfolds, shuffle=False)
    acc = np.zeros(nfolds)
    idx = np.arange(len(issame))

    def accuracy(th, d, s):
        p = np.less(d, th)
        tp = np.sum(np.logical_and(p, s))
        tn = np.sum(np.logical_and(np.logical_not(p), np.logical_not(s)))
        return float(tp + tn) / d.size

    for k, (tr, te) in enumerate(kf.split(idx)):
        acc_train = np.array([accuracy(t, dist[tr], issame[tr]) for t in thresholds])
        acc[k] = accuracy(thresholds[np.argmax(acc_train)], dist[te], issame[te])
    thresholds = np.arange(0, 4, 0.001)
    val = np.zeros(nfolds)
    far = np.zeros(nfolds)

    def val_far(th, d, s):
        p = np.less(d, th)
        ta = np.sum(np.logical_and(p, s))
        fa = np.sum(np.logical_and(p, np.logical_not(s)))
        return float(ta) / float(np.sum(s)), float(fa) / float(np.sum(np.logical_not(s)))

    for k, (tr, te) in enumerate(kf.split(idx)):
        far_train = np.array([val_far(t, dist[tr], issame[tr])[1] for t in thresholds])
        if np.max(far_train) >= 1e-3:
            o = np.argsort(far_train, kind="mergesort")
            x, y = far_train[o], thresholds[o]
            th = float(BSpline.construct_fast(np.r_[x[0], x, x[-1]], y, 1)(1e-3))
        else:
            th = 0.0
        val[k], far[k] = val_far(th, dist[te], issame[te])
    return {"accuracy_mean": float(np.mean(acc)), "accuracy_std": float(np.std(acc)), "val": float(np.mean(val))}


def ref_read_meta(root: Path):
    """The reference reads with pandas (not a dependency here): the same parse with our readers,
    uncached, so that the reading time is comparable."""
    from fuseface.data.ijb import read_names_and_faceness, read_pair_file, read_tid_mid_file

    meta = root / "IJBC" / "meta"
    _, templates, medias = read_tid_mid_file(meta / "ijbc_face_tid_mid.txt")
    p1, p2, label = read_pair_file(meta / "ijbc_template_pair_label.txt", cache=False)
    _, faceness = read_names_and_faceness(meta / "ijbc_name_5pts_score.txt")
    return templates, medias, p1, p2, label, faceness


def ref_image2template(img_feats, templates, medias, choose_templates=None, choose_ids=None):
    from sklearn.preprocessing import normalize

    if choose_templates is not None:
        unique_templates, indices = np.unique(choose_templates, return_index=True)
        unique_ids = choose_ids[indices]
    else:
        unique_templates, unique_ids = np.unique(templates), None
    template_feats = np.zeros((len(unique_templates), img_feats.shape[1]))
    for c, uqt in enumerate(unique_templates):
        (ind_t,) = np.where(templates == uqt)
        face = img_feats[ind_t]
        fm = medias[ind_t]
        um, cts = np.unique(fm, return_counts=True)
        mf = []
        for u, ct in zip(um, cts, strict=True):
            (ind_m,) = np.where(fm == u)
            mf += [face[ind_m]] if ct == 1 else [np.mean(face[ind_m], axis=0, keepdims=True)]
        template_feats[c] = np.sum(np.array(mf), axis=0)
    return normalize(template_feats), unique_templates, unique_ids


def ref_scores(tfeats, unique_templates, p1, p2):
    template2id = np.zeros((max(unique_templates) + 1, 1), dtype=int)
    template2id[unique_templates, 0] = np.arange(len(unique_templates))
    score = np.zeros(len(p1))
    for a in range(0, len(p1), 100000):
        s = slice(a, a + 100000)
        f1 = tfeats[template2id[p1[s]]]
        f2 = tfeats[template2id[p2[s]]]
        score[s] = np.sum(f1 * f2, -1).flatten()
    return score


def ref_tar(label, score):
    from sklearn.metrics import auc, roc_curve

    fpr, tpr, _ = roc_curve(label, score)
    a = auc(fpr, tpr)
    fpr, tpr = np.flipud(fpr), np.flipud(tpr)
    out = {}
    for x in FARS:
        _, i = min(zip(abs(fpr - x), range(len(fpr)), strict=True))
        out[x] = float(tpr[i])
    return out, float(a)


def ref_evaluation_1n(query_feats, gallery_feats, query_ids, reg_ids, fars):
    similarity = np.dot(query_feats, gallery_feats.T)
    top = [0, 0, 0]
    pos_sims, neg_max, non_gallery = [], [], []
    for i, q in enumerate(query_ids):
        if q in reg_ids:
            gl = np.argwhere(reg_ids == q)[0, 0]
            order = np.argsort(similarity[i])[::-1]
            top[0] += gl in order[:1]
            top[1] += gl in order[:5]
            top[2] += gl in order[:10]
            pos_sims.append(similarity[i][reg_ids == q][0])
            neg_max.append(similarity[i][reg_ids != q].max())
        else:
            non_gallery.append(similarity[i].max())
    pos_sims, neg_max = np.array(pos_sims), np.array(neg_max)
    correct = pos_sims > neg_max
    ng = np.sort(np.array(non_gallery))[::-1]
    recalls = []
    for far in fars:
        if ng.size == 0:
            recalls.append(float("nan"))
            continue
        th = ng[max(int(ng.shape[0] * far) - 1, 0)]
        recalls.append(float(np.logical_and(correct, pos_sims > th).sum() / pos_sims.shape[0]))
    return top, recalls


# ----------------------------------------------------------------------------- cases
def case_verif(impl: str) -> dict:
    rng = np.random.default_rng(1)
    issame = np.repeat(np.tile([True, False], 10), 300)
    emb = rng.normal(size=(12000, DIM))
    emb[1::2][issame] = emb[0::2][issame] + rng.normal(size=(3000, DIM)) * 3.0
    import scipy.interpolate  # noqa: F401  (imports are not what is measured)
    import sklearn.model_selection
    import sklearn.preprocessing  # noqa: F401

    import fuseface.eval.verification  # noqa: F401

    t = time.perf_counter()
    if impl == "ours":
        from fuseface.eval.verification import evaluate

        r = evaluate(emb[0::2], emb[1::2], issame)
        out = {"accuracy_mean": r["accuracy_mean"], "accuracy_std": r["accuracy_std"], "val": r["val"]}
    else:
        out = ref_verification(emb, issame)
    return {"seconds": time.perf_counter() - t, "result": out}


def _start_ijb_case() -> tuple[Path, np.ndarray, float, float]:
    """Protocol on disk and in the page cache, our pair-file cache off, clock started, features
    loaded: ``(root, features, start time, seconds to load the features)``."""
    root = generate()
    warm_page_cache(root)
    fresh_protocol_cache()
    t0 = time.perf_counter()
    feats = np.load(root / "features.npy")
    return root, feats, t0, time.perf_counter() - t0


def case_ijbc11(impl: str) -> dict:
    root, feats, t0, t_load = _start_ijb_case()
    if impl == "ours":
        from fuseface.eval.ijb import evaluate_1to1

        # the documented call: protocol files read inside (the pair file by a helper process while
        # the features are pooled), so reading is not separable from the rest here
        t_meta = float("nan")
        r = evaluate_1to1(root, "IJBC", feats, flip_test=False, overwrite_features=True)
        tar, a = r["tar_at_far"], r["auc"]
    else:
        t1 = time.perf_counter()
        templates, medias, p1, p2, label, faceness = ref_read_meta(root)
        t_meta = time.perf_counter() - t1
        x = feats * faceness[:, np.newaxis]
        tf, ut, _ = ref_image2template(x, templates, medias)
        score = ref_scores(tf, ut, p1, p2)
        tar, a = ref_tar(label, score)
    total = time.perf_counter() - t0
    import resource

    return {
        "seconds": total,
        "load_features_s": t_load,
        "read_protocol_s": t_meta,
        # peak resident memory of any helper process (ours: the pair-file parser), besides peak_mib
        "helper_peak_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        "result": {"tar_at_far": {str(k): v for k, v in tar.items()}, "auc": a},
    }


def case_ijbc1n(impl: str) -> dict:
    root, feats, t0, t_load = _start_ijb_case()
    fpirs = (1e-4, 1e-3, 1e-2, 1e-1)
    if impl == "ours":
        from fuseface.data.ijb import load_ijb
        from fuseface.eval.ijb import evaluate_1toN

        proto = load_ijb(root, "IJBC", one_to_n=True, pairs=False)
        r = evaluate_1toN(proto, "IJBC", feats, flip_test=False, overwrite_features=True)
        out = {"tpir": [r["tpir_at_fpir"][f] for f in fpirs], "cmc": [r["cmc"][k] for k in (1, 5, 10)]}
    else:
        from fuseface.data.ijb import load_ijb

        proto = load_ijb(root, "IJBC", one_to_n=True, pairs=False)  # same reading on both sides
        x = feats * proto.faceness[:, np.newaxis]
        (g1t, g1s), (g2t, g2s) = proto.galleries.values()
        pt, ps = proto.probes
        f1, _, i1 = ref_image2template(x, proto.templates, proto.medias, g1t, g1s)
        f2, _, i2 = ref_image2template(x, proto.templates, proto.medias, g2t, g2s)
        fp, _, ip = ref_image2template(x, proto.templates, proto.medias, pt, ps)
        top1, rec1 = ref_evaluation_1n(fp, f1, ip, i1, fpirs)
        top2, rec2 = ref_evaluation_1n(fp, f2, ip, i2, fpirs)
        n = fp.shape[0]
        out = {
            "tpir": [(a + b) / 2 for a, b in zip(rec1, rec2, strict=True)],
            "cmc": [(a + b) / n for a, b in zip(top1, top2, strict=True)],
        }
    return {"seconds": time.perf_counter() - t0, "load_features_s": t_load, "result": out}


CASES = {"verif": case_verif, "ijbc11": case_ijbc11, "ijbc1n": case_ijbc1n}


def vmhwm_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _peak(r: dict) -> str:
    main_mib, helper = r.get("peak_mib", float("nan")), r.get("helper_peak_mib") or 0.0
    return f"{main_mib:.0f} + {helper:.0f}" if helper else f"{main_mib:.0f}"


def run_child(case: str, impl: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", case, impl], capture_output=True, text=True)
    if out.returncode != 0:
        return {"error": out.stderr[-2000:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", nargs="*", default=list(CASES))
    ap.add_argument("--no-reference", action="store_true")
    ap.add_argument("--child", nargs=2, metavar=("CASE", "IMPL"))
    args = ap.parse_args()
    if args.child:
        r = CASES[args.child[0]](args.child[1])
        r["peak_mib"] = vmhwm_mib()
        print(json.dumps(r))
        return
    if any(c != "verif" for c in args.cases):
        t = time.perf_counter()
        generate()
        print(f"synthetic IJB-C protocol ready in {CACHE} ({time.perf_counter() - t:.1f} s)")
    warm_memory(5)
    rows = {}
    for case in args.cases:
        ours = run_child(case, "ours")
        ref = None if args.no_reference else run_child(case, "reference")
        same = None
        if ref and "result" in ref and "result" in ours:
            same = json.dumps(ours["result"], sort_keys=True) == json.dumps(ref["result"], sort_keys=True)
        rows[case] = {"ours": ours, "reference": ref, "identical": same}
        print(json.dumps({case: rows[case]}, default=str)[:2000])
    print("\npeak MiB: the process, + its helper process's own peak where it has one")
    print("| case | ours s | ours peak MiB | reference s | reference peak MiB | ratio | identical |")
    print("|---|---|---|---|---|---|---|")
    for case, r in rows.items():
        o, f = r["ours"], r["reference"] or {}
        ratio = f.get("seconds", float("nan")) / o.get("seconds", float("nan")) if "seconds" in o else float("nan")
        print(
            f"| {case} | {o.get('seconds', float('nan')):.2f} | {_peak(o)} | "
            f"{f.get('seconds', float('nan')):.2f} | {_peak(f)} | {ratio:.1f}x | "
            f"{r['identical']} |"
        )
    out = Path(__file__).parent / "results" / "eval_speed.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {"cpu_count": os.cpu_count(), "cases": rows},
            indent=2,
            default=str,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
