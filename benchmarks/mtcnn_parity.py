"""Fast MTCNN engine against the reference engine on LFW: the same faces, and how much faster.

    python benchmarks/mtcnn_parity.py                    # all 13,233 LFW photos, 2 workers
    python benchmarks/mtcnn_parity.py --every 20         # a 1-in-20 subset
    python benchmarks/mtcnn_parity.py --workers 1        # one process

Both engines (``MTCNN(engine="reference")``, the straightforward cascade, and the default
``engine="fast"``) run the same job over the same photos, taking turns block by block (``--block``
photos, so that both see the same machine load): read + detect +
align (``--policy central``, the ArcFace 112x112 crop), in ``--workers`` worker processes of one
thread each, photos in units of 8 (:func:`fuseface.infer.pipeline.prepare_photos`: the fast engine
batches R-/O-Net across a unit). Every detection of every photo is recorded, so the comparison
covers all faces, not only the aligned one: the same photos with a face, the same number of faces
per photo, and each reference face's box and landmarks within ``--tol`` pixels (1) of the nearest
fast face. Speed is photos/s of each pass, wall clock, measured in the same run; the machine's
matmul GFLOP/s is printed beside them. The speed-up is quoted only when both passes timed every
photo in this run.

Detections are cached per engine (``--cache``, a JSON-lines file each), so an interrupted run
resumes; a pass that was resumed has no timing and is reported as such (``--fresh`` discards the
caches). Writes ``benchmarks/results/mtcnn_parity.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "mtcnn_parity.json"
UNIT = 8
ENGINES = ("reference", "fast")

_DETECTOR: list[Any] = []


def _init_worker(engine: str) -> None:
    import cv2
    import torch

    from fuseface.align.mtcnn import MTCNN

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    detector = MTCNN(engine=engine)
    detector.detect_batch([np.full((250, 250, 3), 128, np.uint8)])  # builds the fast engine's sessions
    _DETECTOR.append(detector)


def _detect_unit(paths: list[str]) -> list[dict[str, Any]]:
    """Read, detect and align one unit of photos; every detection of each photo, the aligned face's
    index among them, or the error."""
    from fuseface.infer.pipeline import prepare_photos

    detector = _DETECTOR[0]
    records: list[dict[str, Any]] = []
    seen: list[Any] = []

    class Recording:
        """Passes ``detect_batch`` through and keeps the raw detections."""

        def detect_batch(self, images: list[np.ndarray]) -> list[Any]:
            dets = detector.detect_batch(images)
            seen.extend(dets)
            return dets

        def detect(self, image: np.ndarray) -> Any:
            return self.detect_batch([image])[0]

    prepared = prepare_photos(paths, Recording(), 112, "arcface", detect=True, policy="central")
    dets = iter(seen)
    for path, photo in zip(paths, prepared, strict=True):
        rec: dict[str, Any] = {"source": path, "faces": [], "aligned": None, "error": ""}
        if photo.error.endswith("no face detected") or photo.face is not None:
            det = next(dets)
            rec["faces"] = [
                {"box": det.boxes[k].tolist(), "landmarks": det.landmarks[k].tolist(), "score": float(det.scores[k])}
                for k in range(len(det))
            ]
            if photo.face is not None:
                rec["aligned"] = int(np.argmin(np.abs(det.boxes - photo.face.box).max(axis=1)))
        rec["error"] = photo.error
        records.append(rec)
    return records


def _load_cache(path: Path) -> dict[str, dict[str, Any]]:
    if not path.is_file():
        return {}
    out: dict[str, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:  # a line cut by an interruption
            continue
        out[rec["source"]] = rec
    return out


class EnginePass:
    """One engine's worker pool and detection cache; :meth:`run` detects a block of photos (those
    not cached yet) and adds its wall time to the pass's clock."""

    def __init__(self, engine: str, workers: int, cache: Path) -> None:
        import multiprocessing

        self.engine, self.workers, self.cache = engine, workers, cache
        self.done = _load_cache(cache)
        self.seconds, self.timed = 0.0, 0
        self.resumed = len(self.done)
        method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
        self.pool = ProcessPoolExecutor(
            workers, mp_context=multiprocessing.get_context(method), initializer=_init_worker, initargs=(engine,)
        )
        # every worker started and its detector built before any clock starts
        for f in [self.pool.submit(time.sleep, 0.5) for _ in range(workers)]:
            f.result()
        cache.parent.mkdir(parents=True, exist_ok=True)
        self.fh = cache.open("a")

    def run(self, paths: list[str]) -> int:
        todo = [p for p in paths if p not in self.done]
        units = [todo[a : a + UNIT] for a in range(0, len(todo), UNIT)]
        start = time.perf_counter()
        for recs in self.pool.map(_detect_unit, units):
            for rec in recs:
                self.fh.write(json.dumps(rec) + "\n")
                self.done[rec["source"]] = rec
        self.fh.flush()
        self.seconds += time.perf_counter() - start
        self.timed += len(todo)
        return len(todo)

    def timing(self) -> dict[str, Any]:
        out: dict[str, Any] = {"photos_timed": self.timed, "resumed_from_cache": self.resumed, "seconds": self.seconds}
        if self.timed:
            out["photos_per_s"] = self.timed / self.seconds
        return out

    def close(self) -> None:
        self.fh.close()
        self.pool.shutdown(wait=True, cancel_futures=True)


def compare(reference: list[dict[str, Any]], fast: list[dict[str, Any]], tol: float) -> dict[str, Any]:
    """Photo by photo: found or not, the number of faces, each reference face against the nearest
    fast face (box and landmarks, max abs difference in pixels), and the aligned face."""
    worst_box = worst_lmk = 0.0
    disagreements: list[dict[str, Any]] = []
    counts = {"reference_found": 0, "fast_found": 0, "reference_faces": 0, "fast_faces": 0}
    for ref, new in zip(reference, fast, strict=True):
        counts["reference_found"] += ref["aligned"] is not None
        counts["fast_found"] += new["aligned"] is not None
        counts["reference_faces"] += len(ref["faces"])
        counts["fast_faces"] += len(new["faces"])
        if len(ref["faces"]) != len(new["faces"]) or (ref["aligned"] is None) != (new["aligned"] is None):
            disagreements.append(
                {"source": ref["source"], "reference_faces": len(ref["faces"]), "fast_faces": len(new["faces"])}
            )
            continue
        if not ref["faces"]:
            continue
        fb = np.array([f["box"] for f in new["faces"]])
        fl = np.array([f["landmarks"] for f in new["faces"]])
        for k, face in enumerate(ref["faces"]):
            j = int(np.argmin(np.abs(fb - np.asarray(face["box"])).max(axis=1)))
            db = float(np.abs(fb[j] - np.asarray(face["box"])).max())
            dl = float(np.abs(fl[j] - np.asarray(face["landmarks"])).max())
            worst_box, worst_lmk = max(worst_box, db), max(worst_lmk, dl)
            aligned_moved = k == ref["aligned"] and j != new["aligned"]
            if db > tol or dl > tol or aligned_moved:
                disagreements.append(
                    {"source": ref["source"], "face": k, "box_diff": db, "landmark_diff": dl, "aligned": aligned_moved}
                )
    return {**counts, "max_box_diff_px": worst_box, "max_landmark_diff_px": worst_lmk, "disagreements": disagreements}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    shared = Path(os.environ.get("FUSEFACE_SHARED_DATA", ROOT.parent / "shared" / "data"))
    parser.add_argument("--photos", type=Path, default=shared / "lfw" / "lfw-deepfunneled")
    parser.add_argument("--every", type=int, default=1, help="every N-th photo (sorted paths)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes, one thread each")
    parser.add_argument("--block", type=int, default=256, help="photos per turn; the engines alternate")
    parser.add_argument("--tol", type=float, default=1.0, help="pixels")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "fuseface" / "bench" / "mtcnn_parity")
    parser.add_argument("--fresh", action="store_true", help="discard cached detections (to time both passes)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from align_speed import matmul_gflops
    from fuseface.align.pipeline import list_photos

    if not args.photos.is_dir():
        raise SystemExit(f"--photos {args.photos}: not a folder (LFW lives in ../shared/data/lfw)")
    root, rels = list_photos(args.photos)
    paths = [str(root / r) for r in rels][:: args.every]
    tag = f"{args.photos.name}_every{args.every}"
    gflops = matmul_gflops(args.workers)
    load_before = os.getloadavg()
    passes: dict[str, EnginePass] = {}
    for engine in ENGINES:
        cache = args.cache / f"{tag}_{engine}.jsonl"
        if args.fresh and cache.is_file():
            cache.unlink()
        passes[engine] = EnginePass(engine, args.workers, cache)
    from tqdm import tqdm

    try:
        with tqdm(total=len(paths), desc="photos (both engines)", unit="photo") as bar:
            for a in range(0, len(paths), args.block):
                block = paths[a : a + args.block]
                for engine in ENGINES:
                    passes[engine].run(block)
                bar.update(len(block))
                t = {e: p.seconds for e, p in passes.items()}
                bar.set_postfix(ref_s=f"{t['reference']:.0f}", fast_s=f"{t['fast']:.0f}")
    finally:
        for p in passes.values():
            p.close()
    records = {e: [p.done[x] for x in paths] for e, p in passes.items()}
    cmp = compare(records["reference"], records["fast"], args.tol)
    timing = {e: p.timing() for e, p in passes.items()}
    speedup = None
    if all(t["photos_timed"] == len(paths) for t in timing.values()):
        speedup = timing["fast"]["photos_per_s"] / timing["reference"]["photos_per_s"]
    out = {
        "photos": len(paths),
        "every": args.every,
        "workers": args.workers,
        "threads_per_worker": 1,
        "cores": len(os.sched_getaffinity(0)),
        "matmul_gflops": gflops,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "timing": timing,
        "fast_vs_reference": speedup,
        "tolerance_px": args.tol,
        **cmp,
        "errors": sorted({r["error"] for r in records["fast"] if r["error"]}),
    }
    print(f"\n{len(paths)} photos, {args.workers} worker(s) x 1 thread, matmul {gflops:.0f} GFLOP/s")
    print(f"  {'engine':<10} {'photos with a face':>18} {'faces':>6} {'photos/s':>9}")
    for engine in ENGINES:
        t = timing[engine]
        rate = f"{t['photos_per_s']:.1f}" if "photos_per_s" in t else "cached"
        print(f"  {engine:<10} {cmp[engine + '_found']:>18} {cmp[engine + '_faces']:>6} {rate:>9}")
    if speedup is not None:
        print(f"  fast / reference: {speedup:.2f}x")
    print(
        f"  largest differences: box {cmp['max_box_diff_px']:.4f} px, landmarks {cmp['max_landmark_diff_px']:.4f} px; "
        f"{len(cmp['disagreements'])} disagreement(s) beyond {args.tol} px"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
