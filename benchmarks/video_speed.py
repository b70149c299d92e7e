"""Video pipeline speed and memory: frames/s end to end, detection of small faces, memory vs length.

    python benchmarks/video_speed.py -m MODEL            # everything (~10-20 min on 2 busy cores)
    python benchmarks/video_speed.py -m MODEL --quick    # the CAFace clip's first 150 frames only

Three parts, written to ``benchmarks/results/video_speed.json`` with a table printed for each:

1. **Speed**: ``process_video`` (decode + detect + align + embed + track + fuse; norm-weighted
   fusion) at stride 1 and 5, on the CAFace clip (``../shared/data/video/probe.mp4``, 120x66) and on
   a synthetic 320x240 video made from LFW photos (:mod:`fuseface.video.synthetic`). Reported: video
   frames covered per second (what a user waits for), processed frames per second, faces per second.
   Stride 1 and 5 run in the same process one after the other, so their ratio is meaningful even
   on a loaded machine; the absolute numbers are not (the JSON records the load average).
2. **Small faces**: on every 3rd frame of the CAFace clip, the detection rate and time for
   up-sampling x1/x2/x4 and MTCNN ``min_face_size`` 12/20/48 (detection only).
3. **Memory vs length**: synthetic videos of one long pair of tracks, 100 to 1600 frames,
   processed at stride 4, each in a fresh subprocess; the peak resident memory of the child
   (``ru_maxrss``) and the peak of Python/numpy allocations inside ``process_video``
   (``tracemalloc``) are recorded. Flat = the pipeline's memory does not grow with the video.
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
import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "video_speed.json"
SHARED = ROOT.parent / "shared" / "data"
PEOPLE = ("Tony_Blair", "Colin_Powell", "Gerhard_Schroeder", "Donald_Rumsfeld")


def load_model(spec: str):
    import fuseface

    return fuseface.load(spec)


def synthetic(path: Path, frames_per_person: int, people: int = 4, size=(320, 240), face_side=110) -> Path:
    from fuseface.align.pipeline import read_photo
    from fuseface.video.synthetic import make_synthetic_video

    root = SHARED / "lfw" / "lfw-deepfunneled"
    photos = [(n, read_photo(root / n / f"{n}_0001.jpg")) for n in PEOPLE[:people]]
    make_synthetic_video(path, photos, frames_per_person=frames_per_person, size=size, face_side=face_side)
    return path


def bench_speed(model, videos: dict[str, Path], strides: list[int], max_frames: int | None) -> list[dict]:
    from fuseface.video.pipeline import VideoOptions, process_video

    rows = []
    for name, path in videos.items():
        for stride in strides:
            t0 = time.perf_counter()
            r = process_video(path, model, VideoOptions(stride=stride, max_frames=max_frames))
            dt = time.perf_counter() - t0
            covered = max_frames or r.frame_count or r.frames_read * stride
            covered = min(covered, r.frame_count or covered)
            rows.append(
                {
                    "video": name,
                    "stride": stride,
                    "frames_covered": covered,
                    "frames_processed": r.frames_read,
                    "faces": r.faces,
                    "tracks": len(r.tracks),
                    "seconds": round(dt, 2),
                    "video_fps": round(covered / dt, 2),
                    "processed_fps": round(r.frames_read / dt, 2),
                    "faces_per_s": round(r.faces / dt, 2),
                }
            )
            print(
                f"{name:>10} stride {stride}: {covered} frames in {dt:6.1f} s = {covered / dt:6.2f} video frames/s "
                f"({r.frames_read / dt:5.2f} processed/s, {r.faces} faces, {len(r.tracks)} tracks)",
                flush=True,
            )
    return rows


def bench_detection(clip: Path, step: int = 3) -> list[dict]:
    from fuseface.align.mtcnn import MTCNN
    from fuseface.video.decode import VideoReader
    from fuseface.video.faces import UpsampledDetector

    frames = [f.image for f in VideoReader(clip, stride=step)]
    rows = []
    for scale, mfs in [(1, 20), (1, 12), (2, 20), (4, 20), (4, 48)]:
        det = UpsampledDetector(MTCNN(min_face_size=mfs), scale)
        t0 = time.perf_counter()
        found = multi = 0
        sides = []
        for im in frames:
            d = det.detect(im)
            d_ok = d.scores >= 0.9
            found += bool(d_ok.any())
            multi += int(d_ok.sum()) > 1
            if d_ok.any():
                b = d.boxes[np.flatnonzero(d_ok)[0]]
                sides.append(float(b[2] - b[0]))
        dt = (time.perf_counter() - t0) / len(frames)
        rows.append(
            {
                "upsample": scale,
                "min_face_size": mfs,
                "frames": len(frames),
                "found": found,
                "more_than_one": multi,
                "median_side_px": round(float(np.median(sides)), 1) if sides else None,
                "ms_per_frame": round(1000 * dt, 1),
            }
        )
        print(
            f"x{scale} min_face {mfs:>2}: {found}/{len(frames)} frames, {multi} with >1 face, {1000 * dt:.0f} ms/frame"
        )
    return rows


def memory_child(model_spec: str, frames_per_person: int, workdir: Path) -> dict:
    import tracemalloc

    from fuseface.video.pipeline import VideoOptions, process_video

    model = load_model(model_spec)
    path = synthetic(workdir / f"long_{frames_per_person}.avi", frames_per_person, people=2)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    r = process_video(path, model, VideoOptions(stride=4))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    path.unlink()
    return {
        "frames": r.frame_count,
        "processed": r.frames_read,
        "tracks": len(r.tracks),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rss_before_mib": round(base / 1024, 1),
        "tracemalloc_peak_mib": round(peak / 2**20, 2),
    }


def bench_memory(model_spec: str, lengths: list[int], workdir: Path) -> list[dict]:
    rows = []
    for n in lengths:
        out = subprocess.run(
            [sys.executable, __file__, "-m", model_spec, "--memory-child", str(n), "--workdir", str(workdir)],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        row = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(
            f"{row['frames']:>5} frames ({row['processed']} processed, {row['tracks']} tracks): peak RSS "
            f"{row['peak_rss_mib']} MiB, Python/numpy peak in process_video {row['tracemalloc_peak_mib']} MiB",
            flush=True,
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--model", required=True, help="fuseface model file or name")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/fuseface_video_bench"))
    ap.add_argument("--skip", nargs="*", default=[], choices=["speed", "detection", "memory"])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.memory_child is not None:
        print(json.dumps(memory_child(args.model, args.memory_child, args.workdir)))
        return
    clip = SHARED / "video" / "probe.mp4"
    results: dict = {
        "model": args.model,
        "threads": args.threads,
        "load_average_start": os.getloadavg(),
        "note": "shared 2-core machine: compare rows of one run (stride 1 vs 5), not absolute numbers",
    }
    model = load_model(args.model)
    results["model_arch"] = model.meta.arch
    if "speed" not in args.skip:
        videos = {"caface_clip": clip}
        if not args.quick:
            videos["synthetic"] = synthetic(args.workdir / "synthetic.avi", 60)
        results["speed"] = bench_speed(model, videos, [1, 5], 150 if args.quick else None)
    if "detection" not in args.skip and not args.quick:
        results["detection"] = bench_detection(clip)
    if "memory" not in args.skip and not args.quick:
        results["memory"] = bench_memory(args.model, [100, 400, 1600], args.workdir)
    results["load_average_end"] = os.getloadavg()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
