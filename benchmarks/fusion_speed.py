"""Set-fusion speed and memory against probe length N (CAFace streaming / one shot, pooling, self-attention).

Every (method, N) case runs in its own subprocess so its peak memory (``VmHWM`` of
``/proc/self/status``, minus the resident size before the fusion call) is its own. Reported per
case: wall seconds per template, images/s on the wall clock and per CPU-second (process time; robust
to other processes loading the machine), and the extra peak memory (VmHWM reset after the inputs are
built, so the figure is what the fusion itself adds on top of its (N, 512) + (N, 384, 2) inputs).

Methods:
  * ``caface_stream``: ``CAFace.fuse(features, styles, chunk_size=256)`` (chunks batched, memory fold
    in order); for N >= 1024 the case also times the one-chunk-at-a-time loop (``start``/``update``/
    ``read``, the official evaluation's definition) and records the max |difference| of the templates;
  * ``caface_oneshot``: ``chunk_size=None`` (self-attention over all N at once, O(N²) time);
  * ``average``: mean of unit features; ``self_attention``: plain self-attention pooling over all N.

The quadratic cases stop at ``--max-quadratic`` (default 16384): beyond that one template takes
minutes on 2 cores (torch's CPU flash attention keeps their memory linear, so it is time, not memory,
that explodes here, unlike the official einsum attention: 4 GB more at N = 8192 per the issue).

Usage::

    python benchmarks/fusion_speed.py                 # full sweep N = 16 ... 100,000, writes the JSON + PNG
    python benchmarks/fusion_speed.py --quick         # N up to 4096
    python benchmarks/fusion_speed.py --threads 2     # torch threads per case (default 1)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
NS = (16, 64, 256, 1024, 4096, 8192, 16384, 32768, 100_000)
METHODS = ("caface_stream", "caface_oneshot", "average", "self_attention")


def _vm(field: str) -> float:
    """A ``/proc/self/status`` field in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak() -> None:
    """Reset VmHWM to the current RSS (``echo 5 > /proc/self/clear_refs``, Linux >= 4.0)."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def run_case(method: str, n: int, threads: int) -> dict[str, object]:
    """One case in this process (called in the subprocess)."""
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    from fuseface.nn.fusion import fuse_features
    from fuseface.nn.fusion.caface import CAFace, chunk_indices
    from fuseface.nn.fusion.pooling import SelfAttentionFusion

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((n, 512), dtype=np.float32)
    feats *= rng.uniform(5, 40, size=(n, 1)).astype(np.float32)
    styles = np.empty((n, 384, 2), np.float32)
    styles[..., 0] = rng.standard_normal((n, 384), dtype=np.float32)
    styles[..., 1] = rng.uniform(0.1, 2, size=(n, 384)).astype(np.float32)
    model = {"caface_stream": CAFace, "caface_oneshot": CAFace, "self_attention": SelfAttentionFusion}
    module = model[method]().eval() if method in model else None
    chunk = 256 if method == "caface_stream" else None
    name = "caface" if method.startswith("caface") else method

    def once():
        return fuse_features(feats, name, styles=styles, chunk_size=chunk, model=module)

    small = min(n, 64)  # warm-up on a small probe (kernels, allocator) without touching the peak
    fuse_features(feats[:small], name, styles=styles[:small], chunk_size=chunk, model=module)
    _reset_peak()  # the peak of building the inputs must not count
    rss0 = _vm("VmRSS")
    reps, wall, cpu, out = 0, 0.0, 0.0, None
    while reps < 1 or (wall < 1.0 and reps < 50):
        t, c = time.perf_counter(), time.process_time()
        out = once()
        wall += time.perf_counter() - t
        cpu += time.process_time() - c
        reps += 1
    record: dict[str, object] = {
        "method": method,
        "n": n,
        "threads": threads,
        "reps": reps,
        "seconds_per_template": wall / reps,
        "images_per_s_wall": n * reps / wall,
        "images_per_s_cpu": n * reps / max(cpu, 1e-9),
        "peak_extra_mib": _vm("VmHWM") - rss0,
    }
    if method == "caface_stream" and n >= 1024:
        t, c = time.perf_counter(), time.process_time()
        module.start()
        for idx in chunk_indices(n, 256):
            module.update(feats[idx], styles[idx])
        seq = module.read()
        record["sequential_images_per_s_wall"] = n / (time.perf_counter() - t)
        record["sequential_images_per_s_cpu"] = n / max(time.process_time() - c, 1e-9)
        record["max_abs_diff_vs_sequential"] = float(np.abs(seq - out).max())
    return record


def _subprocess(method: str, n: int, threads: int, timeout: float) -> dict[str, object]:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = [sys.executable, __file__, "--case", method, str(n), "--threads", str(threads)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"method": method, "n": n, "skipped": f"timeout after {timeout:.0f} s"}
    if proc.returncode != 0:
        return {"method": method, "n": n, "skipped": f"failed: {proc.stderr.strip().splitlines()[-1:]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _plot(rows: list[dict[str, object]], path: Path, load: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for method in METHODS:
        pts = [r for r in rows if r["method"] == method and "skipped" not in r]
        if not pts:
            continue
        ns = [r["n"] for r in pts]
        axes[0].plot(ns, [r["seconds_per_template"] for r in pts], marker="o", label=method)
        axes[1].plot(ns, [max(r["peak_extra_mib"], 0.1) for r in pts], marker="o", label=method)
    for ax, label in zip(axes, ("seconds per template", "extra peak memory (MiB)"), strict=True):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("probe length N (images)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, which="both")
    axes[0].legend()
    fig.suptitle(f"Set fusion on CPU ({os.cpu_count()} cores, load average {load:.1f} at start)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", nargs=2, metavar=("METHOD", "N"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--max-quadratic", type=int, default=16384)
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case[0], int(args.case[1]), args.threads)))
        return
    ns = [n for n in NS if n <= 4096] if args.quick else list(NS)
    rows = []
    load = os.getloadavg()[0]
    for n in ns:
        for method in METHODS:
            if method in ("caface_oneshot", "self_attention") and n > args.max_quadratic:
                rows.append({"method": method, "n": n, "skipped": f"O(N²): capped at N <= {args.max_quadratic}"})
                continue
            row = _subprocess(method, n, args.threads, args.timeout)
            rows.append(row)
            if "skipped" in row:
                print(f"{method:15s} N={n:>7d}  {row['skipped']}", flush=True)
            else:
                extra = ""
                if "max_abs_diff_vs_sequential" in row:
                    extra = (
                        f"  seq {row['sequential_images_per_s_cpu']:>9.0f} img/cpu-s"
                        f"  |diff| {row['max_abs_diff_vs_sequential']:.1e}"
                    )
                print(
                    f"{method:15s} N={n:>7d}  {row['seconds_per_template']:.5f} s  "
                    f"{row['images_per_s_wall']:>9.0f} img/s  {row['images_per_s_cpu']:>9.0f} img/cpu-s  "
                    f"+{row['peak_extra_mib']:.1f} MiB{extra}",
                    flush=True,
                )
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {
        "rows": rows,
        "loadavg_at_start": load,
        "loadavg_at_end": os.getloadavg()[0],
        "threads": args.threads,
        "cpu_count": os.cpu_count(),
        "torch_note": "CPU, float32, inference_mode",
    }
    (RESULTS / "fusion_speed.json").write_text(json.dumps(payload, indent=1))
    _plot(rows, RESULTS / "fusion_speed.png", load)
    print(f"wrote {RESULTS / 'fusion_speed.json'} and fusion_speed.png (load average {load:.1f} at start)")


if __name__ == "__main__":
    main()
