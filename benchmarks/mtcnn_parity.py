"""Fast MTCNN engine against the reference engine on LFW: the same faces, and how much faster.

    python benchmarks/mtcnn_parity.py                    # all 13,233 LFW photos, 2 workers
    python benchmarks/mtcnn_parity.py --every 20         # a 1-in-20 subset
    python benchmarks/mtcnn_parity.py --workers 1        # one process

Both engines (``MTCNN(engine="reference")``, the straightforward cascade, and the default
``engine="fast"``) run the same job over the same photos, taking turns block by block (``--block``
photos, so that both see the same machine load): read + detect +
align (``--policy central``, the ArcFace 112x112 crop), in ``--workers`` worker processes of one
thread each, photos in units of 8 (one :func:`fuseface.align.detector.detect_all` call: the fast engine
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
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "mtcnn_parity.json"
UNIT = 8
ENGINES = ("reference", "fast")


def _warm_detector(engine: str) -> Any:
    """A worker's detector, with the fast engine's sessions built by one detection."""
    from fuseface.align.mtcnn import MTCNN

    detector = MTCNN(engine=engine)
    detector.detect_batch([np.full((250, 250, 3), 128, np.uint8)])
    return detector


def _start_worker(_: int) -> None:
    """Builds this worker's detector, then holds it long enough for the other workers to take theirs."""
    from fuseface.parallel import worker_resource

    worker_resource()
    time.sleep(0.5)


def _detect_unit(paths: list[str]) -> list[dict[str, Any]]:
    """Read, detect (one ``detect_batch`` call) and align one unit of photos: every detection of
    each photo and the index of the aligned (central) face, or the error."""
    from fuseface.align.detector import detect_all, select_faces
    from fuseface.align.pipeline import read_photo
    from fuseface.align.similarity import align_face
    from fuseface.errors import DataError
    from fuseface.parallel import worker_resource

    records = [{"source": path, "faces": [], "aligned": None, "error": ""} for path in paths]
    images: list[tuple[dict[str, Any], np.ndarray]] = []
    for rec in records:
        try:
            images.append((rec, read_photo(rec["source"])))
        except DataError as exc:
            rec["error"] = str(exc)
    dets = detect_all(worker_resource(), [image for _, image in images])
    for (rec, image), det in zip(images, dets, strict=True):
        rec["faces"] = [
            {"box": det.boxes[k].tolist(), "landmarks": det.landmarks[k].tolist(), "score": float(det.scores[k])}
            for k in range(len(det))
        ]
        if len(det) == 0:
            rec["error"] = f"{rec['source']}: no face detected"
            continue
        rec["aligned"] = select_faces(det, image.shape, "central")[0]
        align_face(image, det.landmarks[rec["aligned"]], 112, "arcface")
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
        from fuseface.parallel import default_start_method, init_worker_with, process_context

        self.engine, self.workers, self.cache = engine, workers, cache
        self.done = _load_cache(cache)
        self.seconds, self.timed = 0.0, 0
        self.resumed = len(self.done)
        factory = partial(_warm_detector, engine)
        ctx = process_context(default_start_method())
        self.pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=init_worker_with, initargs=(factory,))
        list(self.pool.map(_start_worker, range(workers)))  # every detector built before any clock starts
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
