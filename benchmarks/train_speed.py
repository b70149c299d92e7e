"""Training throughput on CPU: images/s of `fuseface train` for ir18 and ir50 at 112x112, batch 32,
one process, and the overhead of two gloo processes (torchrun) against one at the same global batch.

    python benchmarks/train_speed.py            # 8 steps per run
    python benchmarks/train_speed.py --quick    # 3 steps per run

Each run is a real `fuseface.train.trainer.train` job on synthetic faces (RecordIO, rendered once
into a cache) with ArcFace + Partial FC + SGD; images/s is taken from the per-step timestamps in
metrics.jsonl, skipping the first step (warm-up). Writes benchmarks/results/train_speed.json and
prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]


def config(out_dir: Path, cache: Path, model: str, batch: int, steps: int, threads: int) -> dict[str, Any]:
    return {
        "task": "recognition",
        "out_dir": str(out_dir),
        "model": {"name": model, "kwargs": {}},
        "data": {
            "kind": "synthetic",
            "image_size": 112,
            "num_workers": 1,
            "synthetic": {"num_identities": 64, "images_per_identity": 8, "seed": 0, "cache_dir": str(cache)},
        },
        "loss": {"name": "arcface"},
        "optim": {"name": "sgd", "lr": 0.02},
        "train": {"steps": steps, "batch_size": batch, "device": "cpu", "num_threads": threads},
        "checkpoint": {"every": 0, "keep": 2},
        "log": {"every": 1, "progress": False, "tensorboard": False},
    }


def images_per_s(out_dir: Path, global_batch: int) -> float:
    rows = [json.loads(x) for x in (out_dir / "metrics.jsonl").read_text().splitlines()]
    times = [r["time"] for r in rows if "loss" in r]
    if len(times) < 2:
        raise RuntimeError(f"{out_dir}: fewer than 2 logged steps")
    return global_batch * (len(times) - 1) / (times[-1] - times[0])


def run(cfg: dict[str, Any], workdir: Path, nproc: int) -> float:
    path = workdir / f"{Path(cfg['out_dir']).name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = dict(os.environ, OMP_NUM_THREADS=str(cfg["train"]["num_threads"]))
    if nproc == 1:
        cmd = [sys.executable, "-m", "fuseface.cli.main", "train", "--config", str(path)]
    else:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            str(nproc),
            "-m",
            "fuseface.cli.main",
            "train",
            "--config",
            str(path),
        ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    return images_per_s(Path(cfg["out_dir"]), cfg["train"]["batch_size"] * nproc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 steps per run instead of 8")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/train_speed.json"))
    args = parser.parse_args()
    steps = 3 if args.quick else 8
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cache = work / "synthetic"
        for model in ("ir18", "ir50"):
            ips = run(config(work / f"{model}_1p", cache, model, 32, steps, 2), work, 1)
            rows.append(
                {"model": model, "processes": 1, "threads_per_process": 2, "global_batch": 32, "images_per_s": ips}
            )
            print(f"{model} 1 process: {ips:.2f} img/s", flush=True)
        ips2 = run(config(work / "ir18_2p", cache, "ir18", 16, steps, 1), work, 2)
        rows.append(
            {"model": "ir18", "processes": 2, "threads_per_process": 1, "global_batch": 32, "images_per_s": ips2}
        )
        print(f"ir18 2 gloo processes: {ips2:.2f} img/s", flush=True)
    one = next(r["images_per_s"] for r in rows if r["model"] == "ir18" and r["processes"] == 1)
    result = {
        "benchmark": "train_speed",
        "quick": args.quick,
        "steps_per_run": steps,
        "cpu_count": os.cpu_count(),
        "load_average_at_end": os.getloadavg(),
        "time": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "rows": rows,
        "two_process_throughput_vs_one": ips2 / one,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print("\n| model | processes x threads | global batch | images/s |\n|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['model']} | {r['processes']} x {r['threads_per_process']} | {r['global_batch']} | "
            f"{r['images_per_s']:.2f} |"
        )
    print(f"\n2 gloo processes / 1 process throughput (ir18): {ips2 / one:.2f}")
    print(f"load average at the end: {result['load_average_at_end']}")


if __name__ == "__main__":
    main()
