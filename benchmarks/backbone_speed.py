"""Backbone speed and peak memory on CPU: inference and training-step images/s.

Rows (each measured in its own subprocess, so its peak resident memory is its own):

* ``ir50`` / ``ir100`` inference (eval mode, ``torch.inference_mode``), batch 32 by default;
* ``ir18`` training step (forward + backward + SGD step, eval-free; a linear classifier over
  1,000 classes on the embedding);
* ``ir50 + MSConv`` (``conv="msconv"``, all four stages) inference and training next to plain ``ir50``
  so the module's cost is a measured ratio from the same run;
* ``msnet50`` (the MSConv paper backbone) inference and training, next to the *official* forward
  pass of the same network (``benchmarks/reference_msnet.py``: same weights, same output, computed
  the way the official code computes it) so "as fast, no more memory" is a measured comparison;
* ``ir50`` / ``ir100`` after ``fuseface.infer.optimize.prepare_for_inference`` (batch norms folded,
  channels-last).

A row whose module is missing is skipped and says so. Timing: ``--warmup`` untimed iterations,
then ``--repeats`` timed ones; the median is reported, as images/s on the wall clock and per
CPU-second of the process (process time; robust to other processes loading the machine).
Peak memory is ``VmHWM`` of ``/proc/self/status`` (``psutil`` is not a dependency; the Python
allocators ``tracemalloc`` / ``resource`` do not see torch's buffers reliably).

Usage::

    python benchmarks/backbone_speed.py                  # batch 32, 2 warm-up + 5 timed iterations
    python benchmarks/backbone_speed.py --quick          # batch 4, 1 + 2 iterations: validates the script
    python benchmarks/backbone_speed.py --batch 64 --repeats 9 --threads 2
    python benchmarks/backbone_speed.py --only msnet50 --trials 3   # medians over 3 processes per row

Writes ``benchmarks/results/backbone_speed.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

# name, backbone, create_backbone kwargs, mode, required module (or None)
CASES: list[tuple[str, str, dict[str, Any], str, str | None]] = [
    ("ir50 infer", "ir50", {}, "infer", None),
    ("ir100 infer", "ir100", {}, "infer", None),
    ("ir18 train", "ir18", {}, "train", None),
    ("ir50 train", "ir50", {}, "train", None),
    ("ir50+msconv infer", "ir50", {"conv": "msconv"}, "infer", "fuseface.nn.layers.msconv"),
    ("ir50+msconv train", "ir50", {"conv": "msconv"}, "train", "fuseface.nn.layers.msconv"),
    ("msnet50 infer", "msnet50", {}, "infer", "fuseface.nn.backbones.msnet"),
    ("msnet50 train", "msnet50", {}, "train", "fuseface.nn.backbones.msnet"),
    ("official msnet50 infer", "official:msnet50", {}, "infer", "fuseface.nn.backbones.msnet"),
    ("official msnet50 train", "official:msnet50", {}, "train", "fuseface.nn.backbones.msnet"),
    ("ir50 infer, folded BN + channels-last", "ir50", {}, "infer_optimized", "fuseface.infer.optimize"),
    ("ir100 infer, folded BN + channels-last", "ir100", {}, "infer_optimized", "fuseface.infer.optimize"),
]
RATIOS = [
    ("ir50+msconv / ir50 (inference time)", "ir50 infer", "ir50+msconv infer"),
    ("ir50+msconv / ir50 (training time)", "ir50 train", "ir50+msconv train"),
    ("ir50 folded / ir50 (inference time)", "ir50 infer", "ir50 infer, folded BN + channels-last"),
    ("ir100 folded / ir100 (inference time)", "ir100 infer", "ir100 infer, folded BN + channels-last"),
    ("official msnet50 / msnet50 (inference time)", "msnet50 infer", "official msnet50 infer"),
    ("official msnet50 / msnet50 (training time)", "msnet50 train", "official msnet50 train"),
]


def _vm_hwm_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_case(
    backbone: str, kwargs: dict[str, Any], mode: str, batch: int, warmup: int, repeats: int, threads: int
) -> dict[str, Any]:
    """Measure one case in this process (called in the subprocess)."""
    import torch

    import fuseface

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    extra: dict[str, Any] = {}
    if backbone.startswith("official:"):
        model, extra["max_abs_diff_vs_ours"] = _official_model(backbone.split(":", 1)[1])
    else:
        model = fuseface.create_backbone(backbone, **kwargs)
    size = getattr(model, "input_size", 112)
    x = torch.randn(batch, 3, size, size)
    params = sum(p.numel() for p in model.parameters())
    if mode == "train":
        head = torch.nn.Linear(getattr(model, "num_features", 512), 1000)
        labels = torch.randint(0, 1000, (batch,))
        optimizer = torch.optim.SGD(list(model.parameters()) + list(head.parameters()), lr=0.01, momentum=0.9)
        model.train()

        def step() -> None:
            loss = torch.nn.functional.cross_entropy(head(model(x)), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    else:
        model.eval()
        if mode == "infer_optimized":
            from fuseface.infer.optimize import prepare_for_inference

            model = prepare_for_inference(model)
            x = x.contiguous(memory_format=torch.channels_last)

        def step() -> None:
            with torch.inference_mode():
                model(x)

    for _ in range(warmup):
        step()
    walls, cpus = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        step()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    wall, cpu = statistics.median(walls), statistics.median(cpus)
    return {
        "images_per_s": batch / wall,
        "images_per_cpu_s": batch / cpu,
        "seconds_per_batch": wall,
        "peak_rss_mib": _vm_hwm_mib(),
        "params_m": params / 1e6,
        **extra,
    }


def _official_model(name: str) -> tuple[Any, float]:
    """The official forward pass of ``name`` (benchmarks/reference_msnet.py) holding the weights of
    our model of the same name, and the largest output difference between the two (eval mode)."""
    import torch

    import fuseface

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from reference_msnet import official_msnet50

    if name != "msnet50":
        raise ValueError(f"no official transcription of {name}")
    ours = fuseface.create_backbone(name).eval()
    model = official_msnet50().eval()
    model.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(2, 3, 112, 112, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        diff = float((model(x) - ours(x)).abs().max())
    del ours
    return model, diff


def matmul_gflops(threads: int, size: int = 2048, repeats: int = 10) -> float:
    """The machine's fp32 matrix-multiply rate (GFLOP/s) with ``threads`` torch threads: the
    ceiling that convolution-heavy backbones approach on CPU, so figures from different machines
    can be compared as a fraction of it."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(2):
        a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9


def _module_available(name: str | None) -> tuple[bool, str]:
    if name is None:
        return True, ""
    import importlib

    try:
        importlib.import_module(name)
    except Exception as exc:  # report why the row is skipped
        return False, f"{name} not importable ({type(exc).__name__}: {exc})"
    return True, ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="batch 4, 1 warm-up + 2 timed iterations")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default 32, quick 4)")
    parser.add_argument("--repeats", type=int, default=None, help="timed iterations (default 5, quick 2)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed iterations (default 2, quick 1)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per case (default 2)")
    parser.add_argument("--trials", type=int, default=1, help="processes per case; medians are reported")
    parser.add_argument("--only", default="", help="comma-separated substrings: run only matching rows")
    parser.add_argument("--out", type=Path, default=RESULTS / "backbone_speed.json")
    parser.add_argument("--worker", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:  # subprocess: one case, JSON on stdout
        spec = json.loads(args.worker)
        if spec.get("mode") == "matmul":
            print(json.dumps({"matmul_gflops": matmul_gflops(spec["threads"])}))
        else:
            print(json.dumps(run_case(**spec)))
        return 0

    batch = args.batch or (4 if args.quick else 32)
    repeats = args.repeats or (2 if args.quick else 5)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    rows: list[dict[str, Any]] = []
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    for name, backbone, kwargs, mode, needs in CASES:
        if only and not any(s in name for s in only):
            continue
        ok, why = _module_available(needs)
        row: dict[str, Any] = {"name": name, "backbone": backbone, "kwargs": kwargs, "mode": mode, "batch": batch}
        if not ok:
            row["skipped"] = why
            rows.append(row)
            print(f"{name:42s} skipped: {why}", flush=True)
            continue
        spec = {
            "backbone": backbone,
            "kwargs": kwargs,
            "mode": mode,
            "batch": batch,
            "warmup": warmup,
            "repeats": repeats,
            "threads": args.threads,
        }
        trials = []
        for _ in range(args.trials):
            proc = subprocess.run(
                [sys.executable, __file__, "--worker", json.dumps(spec)],
                capture_output=True,
                text=True,
                env=env,
                cwd=ROOT,
            )
            if proc.returncode != 0:
                row["skipped"] = "failed: " + (proc.stderr.strip().splitlines() or ["?"])[-1]
                break
            trials.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        if trials:
            # several processes: the median of each figure (peak RSS varies by a few hundred MiB
            # from process to process with the allocators' caching), and the spread
            row.update(trials[0])
            for key in ("images_per_s", "images_per_cpu_s", "seconds_per_batch", "peak_rss_mib"):
                values = [t[key] for t in trials]
                row[key] = statistics.median(values)
                if len(values) > 1:
                    row[key + "_range"] = [min(values), max(values)]
            row["trials"] = len(trials)
        rows.append(row)
        if "skipped" in row:
            print(f"{name:42s} {row['skipped']}", flush=True)
        else:
            print(
                f"{name:42s} {row['images_per_s']:8.2f} img/s  {row['images_per_cpu_s']:8.2f} img/cpu-s  "
                f"{row['peak_rss_mib']:8.0f} MiB",
                flush=True,
            )

    by_name = {r["name"]: r for r in rows if "images_per_s" in r}
    ratios = []
    for label, base, other in RATIOS:
        if base in by_name and other in by_name:
            ratios.append(
                {
                    "ratio": label,
                    "value": by_name[base]["images_per_s"] / by_name[other]["images_per_s"],
                    "value_cpu": by_name[base]["images_per_cpu_s"] / by_name[other]["images_per_cpu_s"],
                    "peak_memory": by_name[other]["peak_rss_mib"] / by_name[base]["peak_rss_mib"],
                }
            )
    _print_table(rows, ratios)
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps({"mode": "matmul", "threads": args.threads})],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )
    gflops = json.loads(proc.stdout.strip().splitlines()[-1])["matmul_gflops"] if proc.returncode == 0 else None
    print(f"fp32 matmul 2048x2048 with {args.threads} threads: {gflops} GFLOP/s", flush=True)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    result = {
        "script": "benchmarks/backbone_speed.py",
        "quick": args.quick,
        "batch": batch,
        "warmup": warmup,
        "repeats": repeats,
        "trials": args.trials,
        "threads": args.threads,
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "loadavg_at_end": load,
            "matmul_gflops": gflops,
        },
        "rows": rows,
        "ratios": ratios,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


def _print_table(rows: list[dict[str, Any]], ratios: list[dict[str, Any]]) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # rich is a dependency, but keep the script usable without it
        return
    table = Table(title="backbone speed (CPU)")
    for col in ("case", "batch", "img/s", "img/CPU-s", "peak RSS MiB", "params M"):
        table.add_column(col, justify="left" if col == "case" else "right")
    for r in rows:
        if "skipped" in r:
            table.add_row(r["name"], str(r["batch"]), "skipped", r["skipped"][:60], "", "")
        else:
            table.add_row(
                r["name"],
                str(r["batch"]),
                f"{r['images_per_s']:.2f}",
                f"{r['images_per_cpu_s']:.2f}",
                f"{r['peak_rss_mib']:.0f}",
                f"{r['params_m']:.2f}",
            )
    console = Console()
    console.print(table)
    for r in ratios:
        console.print(
            f"{r['ratio']}: {r['value']:.2f}x (per CPU-second: {r['value_cpu']:.2f}x; "
            f"peak memory {r['peak_memory']:.2f}x)"
        )


if __name__ == "__main__":
    raise SystemExit(main())
