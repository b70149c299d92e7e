"""A cosine-similarity threshold for ``compare`` from LFW View-2 features.

Reads the features ``fuseface eval lfw --save-features`` wrote (one row per distinct pair image)
and ``pairs.txt``, runs the 10-fold protocol (:func:`fuseface.data.lfw.lfw_pairs_protocol`), takes
the mean of the per-fold best thresholds (squared L2 of unit vectors, ``d = 2 - 2 cos``) as the
cosine threshold ``1 - d / 2``, and reports TAR (same pairs accepted) and FAR (different pairs
accepted) over all 6,000 pairs at that threshold. ``--exclude`` leaves out pairs touching images
whose landmarks came from the mean-landmark fallback (those listed in a faces.jsonl are kept).

    python scripts/calibrate_lfw_threshold.py --root ../shared/data/lfw --features features.npy
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main() -> None:
    from fuseface.align.pipeline import read_face_journal
    from fuseface.data.lfw import lfw_pairs_protocol, pair_image_index, read_pairs

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, required=True)
    ap.add_argument("--features", type=Path, required=True)
    ap.add_argument("--only-landmarks", type=Path, default=None, help="faces.jsonl: keep only pairs it covers")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    pairs = read_pairs(args.root / "pairs.txt")
    paths, i1, i2, issame = pair_image_index(pairs)
    feats = np.load(args.features)
    unit = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    cos = (unit[i1] * unit[i2]).sum(1)
    r = lfw_pairs_protocol(feats, i1, i2, issame)
    threshold = float(1 - np.mean(r["best_thresholds"]) / 2)
    res = {
        "pairs": len(pairs),
        "accuracy_mean": r["accuracy_mean"],
        "accuracy_std": r["accuracy_std"],
        "threshold": threshold,
        "tar": float((cos[issame] >= threshold).mean()),
        "far": float((cos[~issame] >= threshold).mean()),
    }
    if args.only_landmarks is not None:
        known = read_face_journal(args.only_landmarks)
        keep = np.array([paths[a] in known and paths[b] in known for a, b in zip(i1, i2, strict=True)])
        sub_cos, sub_same = cos[keep], issame[keep]
        res["covered_pairs"] = int(keep.sum())
        res["covered_accuracy_at_threshold"] = float(((sub_cos >= threshold) == sub_same).mean())
        # 10-fold protocol restricted to the covered pairs (folds keep their View-2 membership)
        folds = np.array([p.fold for p in pairs])[keep]
        accs = []
        for k in range(10):
            test, train = folds == k, folds != k
            cands = np.unique(np.round(sub_cos[train], 4))
            best = max(cands, key=lambda t: ((sub_cos[train] >= t) == sub_same[train]).mean())
            accs.append(((sub_cos[test] >= best) == sub_same[test]).mean())
        res["covered_10fold_accuracy"] = float(np.mean(accs))
    print(json.dumps(res, indent=2))
    if args.out:
        args.out.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
