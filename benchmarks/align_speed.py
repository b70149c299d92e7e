"""Detection + alignment speed and detection rate on LFW; reduced-precision backbone inference.

    python benchmarks/align_speed.py                 # 1,000 LFW photos (every 13th), ~2 min
    python benchmarks/align_speed.py --compare --threads 2 --count 300
                                                     # reference vs fast engine, side by side
    python benchmarks/align_speed.py --full          # detection rate over all 13,233 LFW photos
    python benchmarks/align_speed.py --precision     # also: ir18/ir50 fp32 vs folded vs bf16 vs int8

Prints a table and writes ``benchmarks/results/align_speed.json``. Detection is MTCNN (weights from
``fuseface models fetch mtcnn``) with the default settings (min face 20, thresholds 0.6/0.7/0.7);
"detected" = at least one face; alignment = the 5-point similarity + ``cv2.warpAffine`` of the
face nearest the image centre. Other processes may load the CPU while this runs: the JSON records
the thread count and the load average.
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
RESULTS = ROOT / "benchmarks" / "results" / "align_speed.json"


def lfw_photos(shared: Path, full: bool, count: int) -> list[Path]:
    files = sorted((shared / "lfw" / "lfw-deepfunneled").glob("*/*.jpg"))
    if full:
        return files
    step = max(1, len(files) // count)
    return files[::step][:count]


def bench_detection(files: list[Path]) -> dict[str, float]:
    from fuseface.align.detector import select_faces
    from fuseface.align.mtcnn import MTCNN
    from fuseface.align.pipeline import read_photo
    from fuseface.align.similarity import align_face

    detector = MTCNN()
    found = multi = 0
    t_read = t_det = t_align = 0.0
    failures: list[str] = []
    cpu0 = time.process_time()
    for path in files:
        t0 = time.perf_counter()
        try:
            image = read_photo(path)
        except Exception as exc:  # e.g. a truncated JPEG counts as a failure, the run goes on
            failures.append(f"{path.name}: {exc}")
            continue
        t1 = time.perf_counter()
        det = detector.detect(image)
        t2 = time.perf_counter()
        if len(det):
            found += 1
            multi += len(det) > 1
            align_face(image, det.landmarks[select_faces(det, image.shape, "central")[0]])
        else:
            failures.append(path.name)
        t3 = time.perf_counter()
        t_read, t_det, t_align = t_read + t1 - t0, t_det + t2 - t1, t_align + t3 - t2
    total = t_read + t_det + t_align
    cpu = time.process_time() - cpu0
    return {
        "images_per_cpu_s": len(files) / cpu,
        "ms_cpu_per_image": 1000 * cpu / len(files),
        "photos": len(files),
        "detected": found,
        "detection_rate": found / len(files),
        "multi_face_photos": multi,
        "images_per_s": len(files) / total,
        "ms_read": 1000 * t_read / len(files),
        "ms_detect": 1000 * t_det / len(files),
        "ms_align": 1000 * t_align / len(files),
        "failures": failures[:50],
    }


def matmul_gflops(threads: int, size: int = 1024, reps: int = 10) -> float:
    """fp32 matrix-multiply GFLOP/s of this machine right now (best of ``reps``)."""
    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * size**3 / best / 1e9


def bench_engines(files: list[Path]) -> dict[str, dict[str, float]]:
    """Read + detect + align with the reference and the fast MTCNN engine, photo by photo in
    alternation (so both see the same load), plus the fast engine on batches of 8 photos."""
    from fuseface.align.detector import select_faces
    from fuseface.align.mtcnn import MTCNN
    from fuseface.align.pipeline import read_photo
    from fuseface.align.similarity import align_face

    engines = {"reference": MTCNN(engine="reference"), "fast": MTCNN()}
    warm = read_photo(files[0])
    for det in engines.values():
        det.detect(warm)
    wall = dict.fromkeys(engines, 0.0)
    cpu = dict.fromkeys(engines, 0.0)
    found = dict.fromkeys(engines, 0)
    for path in files:
        for name, detector in engines.items():
            w0, c0 = time.perf_counter(), time.process_time()
            image = read_photo(path)
            det = detector.detect(image)
            if len(det):
                found[name] += 1
                align_face(image, det.landmarks[select_faces(det, image.shape, "central")[0]])
            wall[name] += time.perf_counter() - w0
            cpu[name] += time.process_time() - c0
    fast = engines["fast"]
    w0, c0 = time.perf_counter(), time.process_time()
    batched_found = 0
    for k in range(0, len(files), 8):
        images = [read_photo(p) for p in files[k : k + 8]]
        for image, det in zip(images, fast.detect_batch(images), strict=True):
            if len(det):
                batched_found += 1
                align_face(image, det.landmarks[select_faces(det, image.shape, "central")[0]])
    wall["fast, batches of 8"] = time.perf_counter() - w0
    cpu["fast, batches of 8"] = time.process_time() - c0
    found["fast, batches of 8"] = batched_found
    n = len(files)
    return {
        name: {
            "photos": n,
            "detected": found[name],
            "photos_per_s": n / wall[name],
            "photos_per_cpu_s": n / cpu[name],
            "speedup_vs_reference": wall["reference"] / wall[name],
            "cpu_speedup_vs_reference": cpu["reference"] / cpu[name],
        }
        for name in wall
    }


def bench_precision(arch: str, batch: int, iters: int) -> dict[str, dict[str, float]]:
    import fuseface
    from fuseface.infer.optimize import prepare_for_inference, quantize_dynamic_int8

    torch.manual_seed(0)
    model = fuseface.create_backbone(arch)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = None
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 3, 112, 112))
    model.eval()
    x = torch.randn(batch, 3, 112, 112)
    xcl = x.contiguous(memory_format=torch.channels_last)
    variants = {
        "fp32 unfused": (model, x),
        "fp32 folded": (prepare_for_inference(model, channels_last=False), x),
        "fp32 folded+channels_last": (prepare_for_inference(model), xcl),
        "bf16 folded+channels_last": (prepare_for_inference(model, dtype=torch.bfloat16), xcl.to(torch.bfloat16)),
        "int8 dynamic Linear, folded": (quantize_dynamic_int8(prepare_for_inference(model, channels_last=False)), x),
    }
    best_wall = dict.fromkeys(variants, float("inf"))
    best_cpu = dict.fromkeys(variants, float("inf"))
    cos: dict[str, float] = {}
    with torch.inference_mode():
        ref = model(x)
        for name, (net, inp) in variants.items():  # warm-up and agreement with fp32
            cos[name] = torch.nn.functional.cosine_similarity(net(inp).float(), ref).min().item()
        for _ in range(iters):  # interleaved rounds; the best round of each variant is kept
            for name, (net, inp) in variants.items():
                w0, c0 = time.perf_counter(), time.process_time()
                net(inp)
                best_wall[name] = min(best_wall[name], time.perf_counter() - w0)
                best_cpu[name] = min(best_cpu[name], time.process_time() - c0)
    return {
        name: {
            "img_per_s_wall": batch / best_wall[name],
            "img_per_cpu_s": batch / best_cpu[name],
            "min_cosine_vs_fp32": cos[name],
        }
        for name in variants
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="all 13,233 LFW photos")
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--precision", action="store_true", help="also time ir18/ir50 fp32/folded/bf16/int8")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--archs", default="ir18,ir50", help="backbones for --precision")
    parser.add_argument("--skip-detection", action="store_true", help="only the --precision table")
    parser.add_argument("--compare", action="store_true", help="reference vs fast MTCNN engine, side by side")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shared = Path(os.environ.get("FUSEFACE_SHARED_DATA", ROOT.parent / "shared" / "data"))
    result: dict[str, object] = {"threads": args.threads, "loadavg_start": os.getloadavg()[0]}
    if RESULTS.is_file():  # keep the other section of a previous run
        previous = json.loads(RESULTS.read_text())
        result.update({k: v for k, v in previous.items() if k.startswith(("lfw_", "precision_", "engines"))})
    if args.compare:
        gflops = matmul_gflops(args.threads)
        res = bench_engines(lfw_photos(shared, False, args.count))
        torch.set_num_threads(args.threads)
        result["engines"] = {"threads": args.threads, "matmul_gflops": gflops, "results": res}
        print(f"MTCNN engines, read + detect + align, {args.threads} thread(s), matmul {gflops:.0f} GFLOP/s")
        print(f"  {'engine':<20} {'photos':>6} {'found':>6} {'photos/s':>9} {'photos/CPU-s':>12} {'speed-up':>8}")
        for name, v in res.items():
            print(
                f"  {name:<20} {v['photos']:>6} {v['detected']:>6} {v['photos_per_s']:>9.1f} "
                f"{v['photos_per_cpu_s']:>12.1f} {v['speedup_vs_reference']:>7.2f}x"
            )
    elif not args.skip_detection:
        det = bench_detection(lfw_photos(shared, args.full, args.count))
        result["lfw_detection_full" if args.full else "lfw_detection"] = det
        header = ("photos", "detected", "rate", "img/s", "read ms", "detect ms", "align ms")
        print("{:>8} {:>9} {:>8} {:>7} {:>8} {:>10} {:>9}".format(*header))
        print(
            f"{det['photos']:>8} {det['detected']:>9} {det['detection_rate']:>8.4f} {det['images_per_s']:>7.1f} "
            f"{det['ms_read']:>8.1f} {det['ms_detect']:>10.1f} {det['ms_align']:>9.2f}"
        )
        print(
            f"CPU time: {det['ms_cpu_per_image']:.1f} ms per photo = "
            f"{det['images_per_cpu_s']:.1f} photos per CPU-second"
        )
    if args.precision:
        for arch in args.archs.split(","):
            res = bench_precision(arch, args.batch, args.iters)
            result[f"precision_{arch}"] = res
            print(f"\n{arch}, batch {args.batch}, {args.threads} thread(s)")
            print(f"  {'variant':<30} {'img/s wall':>10} {'img/CPU-s':>10} {'min cos':>8}")
            for key, v in res.items():
                print(
                    f"  {key:<30} {v['img_per_s_wall']:>10.2f} {v['img_per_cpu_s']:>10.2f} "
                    f"{v['min_cosine_vs_fp32']:>8.5f}"
                )
    result["loadavg_end"] = os.getloadavg()[0]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2, default=float))
    print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
