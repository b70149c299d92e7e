"""``fuseface align`` end to end (read + detect + align + write crops and journal), by configuration.

    python benchmarks/align_folder_speed.py --photos 800

Runs :func:`fuseface.align.pipeline.align_folder` over the same ``--photos`` LFW photos (every k-th
of the sorted deep-funneled list), into a fresh folder each time, in alternation for
``--repeats`` rounds (medians reported):

* **photo by photo, in process**: a detector without ``detect_batch``, so every photo is detected
  alone: what ``align_folder`` did before it detected in units;
* **units of 8, in process** (``workers=0``): one ``detect_batch`` call per 8 photos, 2 threads;
* **units of 8, N worker processes** (``workers=N``, one thread each; ``fuseface align``'s default
  on 2 cores is 2), worker start-up included.

Prints a table (photos/s, speed-up over photo by photo) and writes
``benchmarks/results/align_folder_speed.json`` with the load average and matmul GFLOP/s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "align_folder_speed.json"


class OneAtATime:
    """The default MTCNN behind ``detect`` only (no ``detect_batch``): photo-by-photo detection."""

    def __init__(self) -> None:
        from fuseface.align.mtcnn import MTCNN

        self.mtcnn = MTCNN()

    def detect(self, image: Any) -> Any:
        return self.mtcnn.detect(image)


def timed_align(listing: Path, dst: Path, **kwargs: Any) -> tuple[float, int, int]:
    from fuseface.align.pipeline import align_folder

    shutil.rmtree(dst, ignore_errors=True)
    t0 = time.perf_counter()
    report = align_folder(listing, dst, progress=False, policy="central", **kwargs)
    return time.perf_counter() - t0, report.processed, report.faces


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    shared = Path(os.environ.get("FUSEFACE_SHARED_DATA", ROOT.parent / "shared" / "data"))
    parser.add_argument("--photos", type=int, default=800)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the in-process rows")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--lfw", type=Path, default=shared / "lfw" / "lfw-deepfunneled")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from align_speed import matmul_gflops
    from fuseface.align.mtcnn import MTCNN

    torch.set_num_threads(args.threads)
    photos = sorted(args.lfw.glob("*/*.jpg"))
    chosen = photos[:: max(1, len(photos) // args.photos)][: args.photos]
    configs: dict[str, dict[str, Any]] = {
        "photo by photo, in process": {"detector": OneAtATime(), "workers": 0},
        "units of 8, in process": {"detector": MTCNN(), "workers": 0},
        f"units of 8, {args.workers} worker processes": {"detector": partial(MTCNN), "workers": args.workers},
    }
    runs: dict[str, list[float]] = {name: [] for name in configs}
    faces: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        listing = tmp / "photos.txt"
        listing.write_text("\n".join(str(p) for p in chosen) + "\n")
        load_before, gflops_before = os.getloadavg(), matmul_gflops(args.threads)
        for _ in range(args.repeats):
            for name, kwargs in configs.items():
                seconds, processed, found = timed_align(listing, tmp / "out", **kwargs)
                runs[name].append(processed / seconds)
                faces[name] = found
        load_after, gflops_after = os.getloadavg(), matmul_gflops(args.threads)
    medians = {name: statistics.median(v) for name, v in runs.items()}
    base = medians["photo by photo, in process"]
    print(
        f"\n{len(chosen)} LFW photos, --policy central; load {load_before[0]:.1f} -> {load_after[0]:.1f}; "
        f"matmul {gflops_before:.0f} -> {gflops_after:.0f} GFLOP/s on {args.threads} threads\n"
    )
    print(f"| {'configuration':<32} | faces | photos/s | speed-up |")
    print(f"|{'-' * 34}|------:|---------:|---------:|")
    for name, rate in medians.items():
        print(f"| {name:<32} | {faces[name]:>5} | {rate:8.1f} | {rate / base:7.2f}x |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "photos": len(chosen),
        "threads_in_process": args.threads,
        "cores": len(os.sched_getaffinity(0)),
        "repeats": args.repeats,
        "load_average_before": load_before,
        "load_average_after": load_after,
        "matmul_gflops_before": gflops_before,
        "matmul_gflops_after": gflops_after,
        "faces": faces,
        "median_photos_per_s": medians,
        "speedup_over_photo_by_photo": {k: v / base for k, v in medians.items()},
        "runs": runs,
    }
    args.out.write_text(json.dumps(result, indent=1))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
