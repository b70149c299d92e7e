"""Fast MTCNN engine against the detections recorded by the reference engine on LFW.

    python benchmarks/mtcnn_parity.py --every 20       # a 1-in-20 subset of the recorded photos
    python benchmarks/mtcnn_parity.py --every 1        # all of them

Reads ``faces.jsonl`` written by ``fuseface align LFW DST --policy central`` with the reference
cascade (default ``/work/cache/lfw_mtcnn``, option ``--journal``), detects each photo again with
the default (fast) engine, picks the face nearest the centre the same way, and compares: the same
photos found (and not found), boxes and landmarks within ``--tol`` pixels (1). Prints a summary
and writes ``benchmarks/results/mtcnn_parity.json`` with the largest differences and the photos
that disagree.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "mtcnn_parity.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--journal", type=Path, default=Path("/work/cache/lfw_mtcnn/faces.jsonl"))
    parser.add_argument("--source", type=Path, default=None, help="photo root (default: source.txt beside it)")
    parser.add_argument("--every", type=int, default=20)
    parser.add_argument(
        "--first", type=int, default=None, help="only the first N journal lines (those the reference engine wrote)"
    )
    parser.add_argument("--tol", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from fuseface.align.detector import select_faces
    from fuseface.align.mtcnn import MTCNN
    from fuseface.align.pipeline import read_photo

    source = args.source or Path((args.journal.parent / "source.txt").read_text().strip())
    records = [json.loads(line) for line in args.journal.read_text().splitlines() if line.strip()]
    records = records[: args.first]
    records = sorted(records, key=lambda r: r["source"])[:: args.every]
    detector = MTCNN()
    worst_box = worst_lmk = 0.0
    disagree: list[dict[str, object]] = []
    found_ref = found_new = 0
    t0 = time.perf_counter()
    for rec in records:
        image = read_photo(source / rec["source"])
        det = detector.detect(image)
        ref_ok = rec["status"] == "ok"
        found_ref += ref_ok
        found_new += len(det) > 0
        if ref_ok != (len(det) > 0):
            disagree.append({"source": rec["source"], "reference_found": ref_ok, "fast_found": len(det) > 0})
            continue
        if not ref_ok:
            continue
        i = select_faces(det, image.shape, "central")[0]
        face = rec["faces"][0]
        db = float(np.abs(det.boxes[i] - np.asarray(face["box"])).max())
        dl = float(np.abs(det.landmarks[i] - np.asarray(face["landmarks"])).max())
        worst_box, worst_lmk = max(worst_box, db), max(worst_lmk, dl)
        if db > args.tol or dl > args.tol:
            disagree.append({"source": rec["source"], "box_diff": db, "landmark_diff": dl})
    result = {
        "photos": len(records),
        "every": args.every,
        "reference_found": found_ref,
        "fast_found": found_new,
        "max_box_diff_px": worst_box,
        "max_landmark_diff_px": worst_lmk,
        "tolerance_px": args.tol,
        "disagreements": disagree,
        "seconds": time.perf_counter() - t0,
        "loadavg": os.getloadavg()[0],
    }
    print(
        f"{len(records)} photos: found {found_new} (reference {found_ref}); max box diff {worst_box:.4f} px, "
        f"max landmark diff {worst_lmk:.4f} px; {len(disagree)} disagreement(s) beyond {args.tol} px"
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
