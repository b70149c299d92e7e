"""dlib's face-recognition ResNet: our PyTorch port vs dlib-bin on the same chips, side by side.

Each measurement runs in a fresh child process of this one run (so peak memory, ``ru_maxrss``, is
that method's own), alternating ours / dlib ``--repeats`` times, with the same thread count:

* ``ours``: ``FaceModel.embed_aligned`` of the fetched ``dlib-resnet`` (fp32, batched);
* ``dlib``: ``dlib.face_recognition_model_v1.compute_face_descriptor`` on the list of chips (dlib's
  own batched call), from the same ``.dat``;
* ``end_to_end``: photos -> MTCNN detection -> ``dlib_150`` alignment -> embedding (photos/s).

The chips are 150x150 centre crops of LFW photos (the content does not change the cost). Prints a
table and writes ``benchmarks/results/real_model.json``. Needs ``fuseface models fetch dlib-resnet``,
MTCNN weights and dlib-bin (dev extra).

    python benchmarks/real_model.py --images 64 --threads 1 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
LFW = ROOT.parent / "shared" / "data" / "lfw" / "lfw-deepfunneled"


def _photos(n: int) -> list[Path]:
    people = sorted(p for p in LFW.iterdir() if p.is_dir())
    step = max(1, len(people) // n)
    return [sorted(p.glob("*.jpg"))[0] for p in people[::step][:n]]


def _chips(n: int) -> np.ndarray:
    from fuseface.data.images import read_image
    from fuseface.data.lfw import centre_crop

    return np.stack([centre_crop(read_image(p, "rgb"), 150, 150) for p in _photos(n)])


def _worker(kind: str, n: int, threads: int, batch: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    import fuseface

    chips = _chips(n)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if kind == "ours":
        model = fuseface.load("dlib-resnet")
        model.embed_aligned(chips[:batch], batch_size=batch)  # warm-up
        t = time.perf_counter()
        model.embed_aligned(chips, batch_size=batch)
        rate = n / (time.perf_counter() - t)
    elif kind == "dlib":
        import dlib

        from fuseface.infer.pretrained import dat_file

        rec = dlib.face_recognition_model_v1(str(dat_file()))
        items = [np.ascontiguousarray(c) for c in chips]
        rec.compute_face_descriptor(items[:batch])  # warm-up
        t = time.perf_counter()
        for a in range(0, n, batch):
            rec.compute_face_descriptor(items[a : a + batch])
        rate = n / (time.perf_counter() - t)
    elif kind == "end_to_end":
        model = fuseface.load("dlib-resnet")
        photos = _photos(n)
        model.embed_photos(photos[:2])  # warm-up (detector, model)
        t = time.perf_counter()
        res = model.embed_photos(photos, batch_size=batch)
        rate = n / (time.perf_counter() - t)
        assert res.ok.sum() >= n - 2, res.errors
    else:
        raise ValueError(kind)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"kind": kind, "per_s": rate, "peak_rss_mib": peak / 1024, "rss_growth_mib": (peak - base) / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--photos", type=int, default=16, help="photos for the end-to-end case")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        n = args.photos if args.worker == "end_to_end" else args.images
        print(json.dumps(_worker(args.worker, n, args.threads, args.batch)))
        return
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "OPENBLAS_NUM_THREADS": str(args.threads)}
    runs: list[dict] = []
    for _ in range(args.repeats):
        for kind in ("ours", "dlib", "end_to_end"):
            cmd = [sys.executable, __file__, "--worker", kind, "--images", str(args.images)]
            cmd += ["--photos", str(args.photos), "--threads", str(args.threads), "--batch", str(args.batch)]
            out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
            runs.append(json.loads(out.strip().splitlines()[-1]))
    best = {
        k: max((r for r in runs if r["kind"] == k), key=lambda r: r["per_s"]) for k in ("ours", "dlib", "end_to_end")
    }
    ratio = best["ours"]["per_s"] / best["dlib"]["per_s"]
    print(
        f"dlib ResNet, {args.images} chips 150x150, batch {args.batch}, "
        f"{args.threads} thread(s), best of {args.repeats}"
    )
    print(f"{'method':<28}{'images/s':>10}{'peak RSS MiB':>14}")
    print(f"{'fuseface (PyTorch fp32)':<28}{best['ours']['per_s']:>10.1f}{best['ours']['peak_rss_mib']:>14.0f}")
    print(f"{'dlib-bin':<28}{best['dlib']['per_s']:>10.1f}{best['dlib']['peak_rss_mib']:>14.0f}")
    print(f"speed ratio ours / dlib: {ratio:.2f}x")
    e2e = best["end_to_end"]
    print(f"end to end (MTCNN + align + embed), {args.photos} LFW photos: {e2e['per_s']:.2f} photos/s")
    out = ROOT / "benchmarks" / "results" / "real_model.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "runs": runs, "best": best, "ratio": ratio}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
