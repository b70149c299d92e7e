"""Gallery index speed, memory and recall against gallery size: the gallery's faiss index kinds
(``fuseface.gallery.index.TemplateIndex``: exact flat, IVF, HNSW) side by side with a plain numpy
matrix search (``queries @ templates.T`` + ``argpartition``), in one process per (size, dim) case.

Data: synthetic unit templates (uniform on the sphere) of 128 and 512 dimensions; each query is a
noisy copy of a random template (``g + ε``, ``ε ~ N(0, σ²I)`` with ``σ = 1.02/√d``, so its cosine to
its own template is ≈ 0.70 as for a real probe, and ≈ 0 ± 1/√d to the others). Recall@1 is the
fraction of queries whose approximate top-1 equals the exact top-1 (faiss flat). Reported per index:
build seconds, resident memory added by the build (VmRSS after minus before, MiB; for numpy the
matrix size), single-query
latency p50/p99 (ms, one query per call; 200 queries, 20 at 1M), and queries/s with batches of
100 queries (1000 queries, 200 at 1M). All on one
thread (faiss and BLAS), so the ratios between rows hold on a loaded machine; the absolute times
do not (the machine this ran on was shared with other jobs).

Usage::

    python benchmarks/gallery_speed.py                  # 10k, 100k, 1M x 128-d and 512-d
    python benchmarks/gallery_speed.py --sizes 10000    # one size
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SIZES = (10_000, 100_000, 1_000_000)
DIMS = (128, 512)
NPROBES = (8, 32, 128, 256, 512)
HNSW_MAX_CELLS = 100_000 * 128  # n x dim; HNSW builds take minutes beyond this on one core


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_case(n: int, dim: int, n_latency: int, n_batch: int) -> dict[str, object]:
    import faiss
    import numpy as np

    from fuseface.gallery.index import TemplateIndex

    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(0)
    base = rng.standard_normal((n, dim), dtype=np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    truth_rows = rng.integers(0, n, n_batch)
    queries = base[truth_rows] + rng.standard_normal((n_batch, dim), dtype=np.float32) * (1.02 / np.sqrt(dim))
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    ids = np.arange(n, dtype=np.int64)

    def numpy_search(q: np.ndarray, k: int = 1) -> np.ndarray:
        sims = q @ matrix.T
        return np.argpartition(-sims, k - 1, axis=1)[:, :k] if k < n else np.argsort(-sims, axis=1)

    rows: list[dict[str, object]] = []

    def measure(name: str, search, build_s: float, mem: float, exact: np.ndarray | None) -> np.ndarray:
        lat = []
        for i in range(n_latency):
            t = time.perf_counter()
            search(queries[i : i + 1])
            lat.append(time.perf_counter() - t)
        t = time.perf_counter()
        top = np.concatenate([search(queries[i : i + 100])[:, 0] for i in range(0, n_batch, 100)])
        qps = n_batch / (time.perf_counter() - t)
        row = {
            "index": name,
            "build_s": round(build_s, 3),
            "memory_mib": round(mem, 1),
            "latency_p50_ms": round(float(np.percentile(lat, 50)) * 1e3, 3),
            "latency_p99_ms": round(float(np.percentile(lat, 99)) * 1e3, 3),
            "queries_per_s": round(qps, 1),
            "recall_at_1": None if exact is None else round(float((top == exact).mean()), 4),
            "hit_own_template": round(float((top == truth_rows).mean()), 4),
        }
        rows.append(row)
        print(json.dumps({"n": n, "dim": dim, **row}), flush=True)
        return top

    matrix = base  # already unit rows: the numpy "index" is the matrix itself (its size is its memory)
    measure("numpy", numpy_search, 0.0, matrix.nbytes / 2**20, None)

    def build(kind: str, **kw: int) -> tuple[TemplateIndex, float, float]:
        before = _rss_mib()
        t = time.perf_counter()
        index = TemplateIndex(dim, kind=kind, **kw)
        index.build(ids, base)
        return index, time.perf_counter() - t, _rss_mib() - before

    flat, s, mem = build("flat")
    exact = measure("faiss flat (exact)", lambda q: flat.search(q, 1)[1], s, mem, None)
    rows[-1]["recall_at_1"] = 1.0
    np_top = np.concatenate([numpy_search(queries[i : i + 100])[:, 0] for i in range(0, n_batch, 100)])
    rows[0]["recall_at_1"] = round(float((np_top == exact).mean()), 4)
    flat.index.reset()  # free its memory before the next build
    ivf, s, mem = build("ivf")
    for nprobe in NPROBES:
        ivf.index.nprobe = nprobe
        measure(f"faiss IVF nlist={ivf.index.nlist} nprobe={nprobe}", lambda q: ivf.search(q, 1)[1], s, mem, exact)
    ivf.index.reset()
    if n * dim <= HNSW_MAX_CELLS:
        hnsw, s, mem = build("hnsw")
        for ef in (64, 128):
            faiss.downcast_index(hnsw.index.index).hnsw.efSearch = ef
            measure(f"faiss HNSW M=32 efSearch={ef}", lambda q: hnsw.search(q, 1)[1], s, mem, exact)
    return {"n": n, "dim": dim, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--dims", type=int, nargs="+", default=list(DIMS))
    parser.add_argument("--case", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        n, dim = args.case
        lean = n >= 1_000_000  # exact 1M searches take seconds each on one shared core
        print("RESULT " + json.dumps(run_case(n, dim, 20 if lean else 200, 200 if lean else 1000)), flush=True)
        return
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    cases = []
    for dim in args.dims:
        for n in args.sizes:
            proc = subprocess.run(
                [sys.executable, __file__, "--case", str(n), str(dim)], env=env, capture_output=True, text=True
            )
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode or not lines:
                print(proc.stdout, proc.stderr, file=sys.stderr)
                raise SystemExit(f"case n={n} dim={dim} failed")
            case = json.loads(lines[-1][len("RESULT ") :])
            cases.append(case)
            _write(cases)
            for row in case["rows"]:
                print(
                    f"{n:>8} {dim:>4}  {row['index']:<34} build {row['build_s']:>8.2f}s  "
                    f"mem {row['memory_mib']:>7.1f}MiB  "
                    f"p50 {row['latency_p50_ms']:>8.3f}ms  p99 {row['latency_p99_ms']:>8.3f}ms  "
                    f"{row['queries_per_s']:>9.1f} q/s  recall@1 {row['recall_at_1']}",
                    flush=True,
                )
    out = _write(cases)
    _plot(cases, RESULTS / "gallery_speed.png")
    print(f"wrote {out}")


def _write(cases: list[dict]) -> Path:
    """Write the JSON after every case (a long run that is stopped keeps what it measured)."""
    import fuseface

    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "gallery_speed.json"

    payload = {
        "benchmark": "gallery_speed",
        "fuseface": fuseface.__version__,
        "threads": 1,
        "queries": "noisy copies of gallery templates, cosine ~0.70 to their own",
        "machine_note": "2 shared CPU cores, other jobs running: compare rows within one case, not absolute times",
        "cases": cases,
    }
    out.write_text(json.dumps(payload, indent=1))
    return out


def _plot(cases: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, dim in zip(axes, sorted({c["dim"] for c in cases}), strict=False):
        series: dict[str, list[tuple[int, float]]] = {}
        for c in (c for c in cases if c["dim"] == dim):
            for r in c["rows"]:
                label = r["index"].split(" nlist")[0] + (" nprobe=32" if "nprobe=32" in r["index"] else "")
                if "IVF" in r["index"] and "nprobe=32" not in r["index"]:
                    continue
                if "HNSW" in r["index"] and "efSearch=128" not in r["index"]:
                    continue
                series.setdefault(label, []).append((c["n"], r["latency_p50_ms"]))
        for label, pts in series.items():
            xs, ys = zip(*sorted(pts), strict=True)
            ax.plot(xs, ys, marker="o", label=label)
        ax.set(xscale="log", yscale="log", xlabel="templates in the gallery", ylabel="query latency p50 (ms, 1 thread)")
        ax.set_title(f"{dim}-d")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
