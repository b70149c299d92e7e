"""The pipelined embedder against its stages alone and against the serial embedder, in one run.

    python benchmarks/embed_pipeline.py                    # 320 LFW photos, dlib ResNet
    python benchmarks/embed_pipeline.py --photos 160 --repeats 2

Over the same LFW photos (every k-th of the sorted list) and the fetched dlib ResNet
(``fuseface models fetch dlib-resnet``; MTCNN weights from ``fuseface models fetch mtcnn``):

* each stage alone, in this process: **decode** (``read_photo``), **prepare** = decode + detect +
  align (:func:`fuseface.infer.pipeline.prepare_photos`, units of 8 photos, the fast MTCNN
  engine), **embed** (``FaceModel.embed_aligned`` on the crops that prepare made, batches of
  ``--batch-size``): photos/s with ``--threads`` threads (the whole machine) and CPU-seconds per
  photo measured with one thread (``time.process_time``), the work each stage costs; prepare also
  in 2 worker processes of one thread each (pool warmed up first), its best on 2 cores;
* the serial embedder (``embed_files(workers=0)``: everything in this process, ``--threads``);
* the pipelined embedder with 1 and 2 worker processes and 1 or 2 embedding threads
  (``embed_files(workers=N, threads=T)``; 2 workers and 1 thread is the default on 2 cores): wall time of
  the whole call (worker start-up included), the start-up alone (until the first batch is
  embedded) and the steady rate after it.

Ratios: end to end / slowest stage alone (the issue's goal: >= 0.9), and end to end / the
CPU bound ``cores / (CPU-s of prepare + CPU-s of embed)``: on a machine with few cores the stages
share the same cores, so no pipeline can beat that bound, whatever the slowest stage alone does
with every core to itself. Configurations run in alternation, ``--repeats`` rounds, medians
reported. Prints a table and writes ``benchmarks/results/embed_pipeline.json`` with the load
average and the matmul GFLOP/s before and after (other processes may load the machine).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "embed_pipeline.json"
sys.path.insert(0, str(ROOT / "benchmarks"))


def lfw_photos(shared: Path, count: int) -> list[Path]:
    files = sorted((shared / "lfw" / "lfw-deepfunneled").glob("*/*.jpg"))
    step = max(1, len(files) // count)
    return files[::step][:count]


def timed(fn: Any) -> tuple[float, float, Any]:
    """``(wall s, CPU s of this process, result)`` of ``fn()``."""
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, time.process_time() - c0, out


def stage_decode(paths: list[Path]) -> Any:
    from fuseface.align.pipeline import read_photo

    return [read_photo(p).shape for p in paths]


def stage_prepare(paths: list[Path], detector: Any, fm: Any) -> list[np.ndarray]:
    from fuseface.infer.pipeline import UNIT_SIZE, prepare_photos

    crops: list[np.ndarray] = []
    for a in range(0, len(paths), UNIT_SIZE):
        for item in prepare_photos(paths[a : a + UNIT_SIZE], detector, fm.input_size, fm.template):
            if item.crop is not None:
                crops.append(item.crop)
    return crops


def prepare_in_workers(paths: list[Path], fm: Any, workers: int, batch_size: int) -> dict[str, float]:
    """Photos/s of the prepare stage alone in ``workers`` processes (one thread each), the pool
    started and warmed up (detector built) before the clock starts."""
    from concurrent.futures import ProcessPoolExecutor
    from functools import partial

    from fuseface.infer import pipeline
    from fuseface.parallel import init_worker_with

    ctx = pipeline._context(pipeline.default_start_method())
    factory = partial(pipeline._create_default_detector)
    prepare = partial(pipeline._prepare_unit, size=fm.input_size, template=fm.template, detect=None, policy="largest")
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=init_worker_with, initargs=(factory,)) as pool:
        warm = [str(p) for p in paths[: pipeline.UNIT_SIZE]]
        for future in [pool.submit(prepare, warm) for _ in range(4 * workers)]:
            future.result()
        todo = [(a, min(a + batch_size, len(paths))) for a in range(0, len(paths), batch_size)]
        names = [str(p) for p in paths]
        in_flight = -(-batch_size // pipeline.UNIT_SIZE) + 2 * workers
        t0 = time.perf_counter()
        count = sum(
            len(b) for _, b in pipeline._iter_prepared(names, todo, prepare, pool, pipeline.UNIT_SIZE, in_flight)
        )
        wall = time.perf_counter() - t0
    return {"photos_per_s": count / wall}


def pipelined(fm: Any, paths: list[Path], workers: int, batch_size: int, threads: int | None) -> dict[str, float]:
    """Wall time of one ``embed_files`` call, and when its first batch was embedded."""
    from fuseface.infer import pipeline

    first: list[float] = []
    original = pipeline._embed_batch

    def spy(*args: Any, **kw: Any) -> Any:
        out = original(*args, **kw)
        if not first:
            first.append(time.perf_counter())
        return out

    pipeline._embed_batch = spy
    try:
        t0 = time.perf_counter()
        res = pipeline.embed_files(fm, paths, workers=workers, batch_size=batch_size, threads=threads)
        wall = time.perf_counter() - t0
    finally:
        pipeline._embed_batch = original
    startup = first[0] - t0
    rest = len(paths) - min(batch_size, len(paths))
    return {
        "wall_s": wall,
        "photos_per_s": len(paths) / wall,
        "first_batch_s": startup,
        "steady_photos_per_s": rest / max(wall - startup, 1e-9),
        "embedded": int(res.ok.sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=320)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2, help="threads of the stages alone and of the embedding")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    import fuseface
    from align_speed import matmul_gflops
    from fuseface.align.mtcnn import MTCNN
    from fuseface.align.pipeline import read_photo

    paths = lfw_photos(args.shared, args.photos)
    n = len(paths)
    fm = fuseface.load("dlib-resnet")
    detector = MTCNN()
    load_before, gflops_before = os.getloadavg(), matmul_gflops(args.threads)

    # CPU-seconds per photo of each stage: one thread, so that CPU time is the stage's work
    torch.set_num_threads(1)
    warm_up = read_photo(paths[0])
    detector.detect(warm_up)  # builds the ONNX Runtime sessions (1 thread)
    cpu: dict[str, float] = {}
    _, cpu["decode"], _ = timed(lambda: stage_decode(paths))
    _, cpu["prepare"], crops = timed(lambda: stage_prepare(paths, detector, fm))
    stack = np.stack(crops)
    fm.embed_aligned(stack[:2])
    _, cpu["embed"], _ = timed(lambda: fm.embed_aligned(stack, batch_size=args.batch_size))
    cpu_per_photo = {k: v / n for k, v in cpu.items()}
    cpu_per_photo["embed"] = cpu["embed"] / len(crops)

    # photos/s of each configuration with the whole machine, in alternation
    torch.set_num_threads(args.threads)
    detector = MTCNN()  # sessions rebuilt with --threads intra-op threads
    detector.detect(warm_up)
    runs: dict[str, list[dict[str, float]]] = {}

    def record(name: str, value: dict[str, float]) -> None:
        runs.setdefault(name, []).append(value)

    for _ in range(args.repeats):
        wall, _, _ = timed(lambda: stage_decode(paths))
        record("decode alone", {"photos_per_s": n / wall})
        wall, _, _ = timed(lambda: stage_prepare(paths, detector, fm))
        record("prepare alone (decode+detect+align)", {"photos_per_s": n / wall})
        wall, _, _ = timed(lambda: fm.embed_aligned(stack, batch_size=args.batch_size))
        record("embed alone (aligned crops)", {"photos_per_s": len(crops) / wall})
        torch.set_num_threads(1)
        wall, _, _ = timed(lambda: fm.embed_aligned(stack, batch_size=args.batch_size))
        record("embed alone, 1 thread", {"photos_per_s": len(crops) / wall})
        torch.set_num_threads(args.threads)
        record("prepare alone, 2 worker processes", prepare_in_workers(paths, fm, 2, args.batch_size))
        record("serial (workers=0)", pipelined(fm, paths, 0, args.batch_size, args.threads))
        record("pipelined, 1 worker, embed 1 thread", pipelined(fm, paths, 1, args.batch_size, 1))
        record("pipelined, 2 workers, embed 1 thread", pipelined(fm, paths, 2, args.batch_size, 1))
        record("pipelined, 2 workers, embed 2 threads", pipelined(fm, paths, 2, args.batch_size, 2))

    medians = {name: {k: statistics.median(v[k] for v in vals) for k in vals[0]} for name, vals in runs.items()}
    # each stage at its best with the whole machine (in-process with --threads or 1 thread, or
    # prepare in 2 worker processes): on a loaded machine 2 torch threads can be slower than 1
    prepare_best = max(
        medians["prepare alone (decode+detect+align)"]["photos_per_s"],
        medians["prepare alone, 2 worker processes"]["photos_per_s"],
    )
    embed_best = max(
        medians["embed alone (aligned crops)"]["photos_per_s"], medians["embed alone, 1 thread"]["photos_per_s"]
    )
    slowest = min(prepare_best, embed_best)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    bound = cores / (cpu_per_photo["prepare"] + cpu_per_photo["embed"])
    load_after, gflops_after = os.getloadavg(), matmul_gflops(args.threads)

    print(
        f"\n{n} LFW photos, dlib ResNet, batch {args.batch_size}, {args.threads} threads, {cores} cores; "
        f"load {load_before[0]:.1f} -> {load_after[0]:.1f}; matmul {gflops_before:.0f} -> {gflops_after:.0f} GFLOP/s"
    )
    print("CPU-s per photo (1 thread): " + ", ".join(f"{k} {1000 * v:.1f} ms" for k, v in cpu_per_photo.items()))
    print(f"CPU bound with {cores} cores: {bound:.1f} photos/s; slowest stage alone: {slowest:.1f} photos/s\n")
    print(f"| {'configuration':<40} | photos/s | / slowest stage | / CPU bound | start-up s | steady photos/s |")
    print(f"|{'-' * 42}|---------:|----------------:|------------:|-----------:|----------------:|")
    for name, m in medians.items():
        rate = m["photos_per_s"]
        startup = f"{m['first_batch_s']:.1f}" if "first_batch_s" in m else ""
        steady = f"{m['steady_photos_per_s']:.1f}" if "steady_photos_per_s" in m else ""
        ratios = f"{rate / slowest:15.2f} | {rate / bound:11.2f}"
        print(f"| {name:<40} | {rate:8.1f} | {ratios} | {startup:>10} | {steady:>15} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "photos": n,
                "faces": len(crops),
                "batch_size": args.batch_size,
                "threads": args.threads,
                "cores": cores,
                "repeats": args.repeats,
                "load_average_before": load_before,
                "load_average_after": load_after,
                "matmul_gflops_before": gflops_before,
                "matmul_gflops_after": gflops_after,
                "cpu_s_per_photo_1_thread": cpu_per_photo,
                "cpu_bound_photos_per_s": bound,
                "slowest_stage_photos_per_s": slowest,
                "median": medians,
                "runs": runs,
            },
            indent=1,
        )
    )
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
