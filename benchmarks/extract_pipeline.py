"""Feature extraction (``extract_features``) in one process against 1 and 2 worker processes, in one run.

    python benchmarks/extract_pipeline.py                      # 256 LFW crops, dlib ResNet, 3 copies
    python benchmarks/extract_pipeline.py --model random:ir18 --photos 128 --repeats 2

The source is a :class:`fuseface.data.image_sources.FolderSource` of JPEG face crops made once
from LFW (every k-th photo of the sorted ``lfw-deepfunneled`` list: its central 150 x 150 pixels,
where the deep-funneled face is, resized to the model's input size, JPEG quality 95, one
sub-folder per person), so every configuration reads and decodes real JPEG files. The backbone is
``--model`` (default ``dlib-resnet``, the fetched dlib ResNet at 150 px, ``fuseface models fetch
dlib-resnet``; ``random:ir18`` is an untrained IResNet-18 at 112 px, whose speed does not depend on
the weights). Every image gets ``--augment-copies`` CAFace precompute copies (default 3, so 4
versions embedded per image).

Configurations, in alternation for ``--repeats`` rounds (medians reported):

* **prepare alone**: read + decode + augment every image in this process, one torch / OpenCV
  thread (what one worker does), no embedding;
* **workers=0**: ``extract_features`` with everything in this process (``--threads`` torch
  threads, default all cores);
* **workers=1**, **workers=2**: the preparation in that many worker processes while this process
  embeds with the cores they leave (at least 1 thread; ``--threads`` overrides), worker start-up
  included in the wall time; and **workers=1** beside an embedding that keeps every core (the
  worker then shares a core with it).

Each run writes a fresh store (float32, which an untrained net needs; one shard per 128 images)
under a temporary folder. Prints a table (images/s: source images, each with all its copies;
speed-up over workers=0) and writes ``benchmarks/results/extract_pipeline.json`` with the load
average and the matmul GFLOP/s before and after (other processes may load the machine).
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
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "extract_pipeline.json"
sys.path.insert(0, str(ROOT / "benchmarks"))


def make_crops(shared: Path, count: int, size: int, out: Path) -> int:
    """Write ``count`` ``size`` x ``size`` JPEG crops of LFW photos under ``out/<person>/``; returns
    the number written."""
    files = sorted((shared / "lfw" / "lfw-deepfunneled").glob("*/*.jpg"))
    step = max(1, len(files) // count)
    chosen = files[::step][:count]
    for f in chosen:
        image = cv2.imread(str(f))
        h, w = image.shape[:2]
        crop = image[(h - 150) // 2 : (h + 150) // 2, (w - 150) // 2 : (w + 150) // 2]
        (out / f.parent.name).mkdir(parents=True, exist_ok=True)
        small = cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(out / f.parent.name / f.name), small, [cv2.IMWRITE_JPEG_QUALITY, 95])
    return len(chosen)


def prepare_alone(source: Any, copies: int) -> float:
    """Images/s of reading and augmenting every image here on one thread (no embedding)."""
    from fuseface.infer.extract_features import _Preparer

    old = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    try:
        preparer = _Preparer(source, copies, seed=0)
        t0 = time.perf_counter()
        preparer((0, len(source)))
        return len(source) / (time.perf_counter() - t0)
    finally:
        torch.set_num_threads(old[0])
        cv2.setNumThreads(old[1])


def extract(net: Any, meta: Any, source: Any, tmp: Path, workers: int, threads: int, args: Any) -> float:
    """Images/s of one ``extract_features`` call into a fresh store (worker start-up included)."""
    from fuseface.infer.extract_features import extract_features

    out = tmp / f"store-w{workers}"
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    store = extract_features(
        net,
        source,
        out,
        channel_order=meta.channel_order,
        augment_copies=args.augment_copies,
        batch_size=args.batch_size,
        shard_size=128,
        dtype="float32",
        input_size=int(meta.input_size),
        progress=False,
        threads=threads,
        workers=workers,
        **meta.pixel_norm(),
    )
    wall = time.perf_counter() - t0
    assert store is not None and store.num_images == len(source)
    return len(source) / wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=256)
    parser.add_argument("--model", default="dlib-resnet")
    parser.add_argument("--augment-copies", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=0, help="torch threads of the embedding (0: cores left)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    from align_speed import matmul_gflops
    from fuseface.data.image_sources import FolderSource
    from fuseface.infer.extract_features import load_backbone_meta

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    torch.manual_seed(0)
    net, meta = load_backbone_meta(args.model)
    runs: dict[str, list[float]] = {}
    configs = [(w, args.threads or max(1, cores - w)) for w in (0, 1, 2)]
    if not args.threads:  # also: one worker beside an embedding that keeps every core
        configs.insert(2, (1, cores))
    threads_of = {f"workers={w}, {t} embed threads": (w, t) for w, t in dict.fromkeys(configs)}
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        n = make_crops(args.shared, args.photos, int(meta.input_size), tmp / "crops")
        source = FolderSource(tmp / "crops")
        load_before, gflops_before = os.getloadavg(), matmul_gflops(cores)
        for _ in range(args.repeats):
            runs.setdefault("prepare alone, 1 thread", []).append(prepare_alone(source, args.augment_copies))
            for name, (w, t) in threads_of.items():
                runs.setdefault(name, []).append(extract(net, meta, source, tmp, w, t, args))
        load_after, gflops_after = os.getloadavg(), matmul_gflops(cores)
    medians = {name: statistics.median(v) for name, v in runs.items()}
    serial = medians[next(iter(threads_of))]

    print(
        f"\n{n} LFW crops ({meta.input_size} px JPEG, FolderSource), {args.model}, "
        f"{args.augment_copies} copies + clean, batch {args.batch_size}, {cores} cores; "
        f"load {load_before[0]:.1f} -> {load_after[0]:.1f}; "
        f"matmul {gflops_before:.0f} -> {gflops_after:.0f} GFLOP/s\n"
    )
    print(f"| {'configuration':<34} | embed threads | images/s | versions/s | vs workers=0 |")
    print(f"|{'-' * 36}|--------------:|---------:|-----------:|-------------:|")
    for name, rate in medians.items():
        threads = str(threads_of[name][1]) if name in threads_of else "-"
        versions = rate * (1 + args.augment_copies)
        print(f"| {name:<34} | {threads:>13} | {rate:8.1f} | {versions:10.1f} | {rate / serial:11.2f}x |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "source": f"{n} LFW deep-funneled photos, central 150 px resized to {meta.input_size} px, JPEG q95, "
                "FolderSource",
                "images": n,
                "model": args.model,
                "augment_copies": args.augment_copies,
                "batch_size": args.batch_size,
                "cores": cores,
                "configurations": {k: {"workers": w, "embed_threads": t} for k, (w, t) in threads_of.items()},
                "repeats": args.repeats,
                "load_average_before": load_before,
                "load_average_after": load_after,
                "matmul_gflops_before": gflops_before,
                "matmul_gflops_after": gflops_after,
                "median_images_per_s": medians,
                "speedup_over_workers_0": {k: v / serial for k, v in medians.items()},
                "runs": runs,
                "numpy": np.__version__,
                "torch": torch.__version__,
            },
            indent=1,
        )
    )
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
