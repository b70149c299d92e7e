"""Which part of CAFace's training makes it beat pooling on real faces? Ablations of the real-face
recipe (``configs/cpu_caface_lfw_dlib.yaml``), each trained through the engine on the same store
and scored with a short version of ``benchmarks/set_fusion_real.py`` (sizes 2, 4, 8; mixed and
all-degraded; 2 repetitions; 50 bootstrap resamples over people).

Ablations (one change each against ``base_1ep``, which is the recipe cut to 1 epoch; ``main_3ep``
is the recipe's own 3-epoch model, for the training-length comparison):

* ``centres_all_1ep``: class centres from every copy instead of the clean one;
* ``clusters_1_1ep``: one cluster (M = 1) instead of 4;
* ``set_size_8_1ep``: training sets of 8 instead of 16;
* ``memory_off_1ep``: no loss on the memory path (``memory_loss_weight = 0``).

    .venv/bin/python benchmarks/set_fusion_ablations.py --store STORE --main runs/caface_lfw_dlib/model.safetensors
    .venv/bin/python benchmarks/set_fusion_ablations.py --work DIR --summarise   # table from DIR/*.json

About 6-12 minutes of training and 3 of scoring per ablation on 2 cores. Writes per-ablation JSON
under ``--work``, and ``benchmarks/results/set_fusion_ablations.json`` with the table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs" / "cpu_caface_lfw_dlib.yaml"
ONE_EPOCH = ["train.epochs=1", "schedule.milestones=[0.67,0.9]", "log.every=50"]
ABLATIONS: dict[str, list[str]] = {
    "base_1ep": [],
    "centres_all_1ep": ["caface.centres_from=all"],
    "clusters_1_1ep": ["caface.num_clusters=1"],
    "set_size_8_1ep": ["caface.set_size=8"],
    "memory_off_1ep": ["caface.memory_loss_weight=0"],
}
ORDER = ("main_3ep", *ABLATIONS)


def score(store: str, weights: Path, out: Path) -> dict[str, Any]:
    from fuseface.experiments.set_fusion_real import evaluate_store

    t = time.time()
    result = evaluate_store(
        store, weights, sizes=(2, 4, 8), settings={"mixed": 0.25, "degraded": 0.0}, repetitions=2, bootstrap=50
    )
    result["seconds"] = time.time() - t
    out.write_text(json.dumps(result))
    return result


def table(results: dict[str, dict[str, Any]]) -> tuple[list[dict[str, Any]], str]:
    """Rows (ablation, setting, N: d' and the paired differences) and their markdown table."""
    rows = []
    lines = [
        "| ablation | setting | N | d' CAFace | d' − average | d' − best pooling | TAR@1e-3 − average (pts) |"
        " rank-1 − best pooling (pts) |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def fmt(v: float, ci: list[float], scale: float = 1.0) -> str:
        return f"{scale * v:+.2f} [{scale * ci[0]:+.2f}, {scale * ci[1]:+.2f}]"

    for name in ORDER:
        if name not in results:
            continue
        comp = {
            (c["setting"], c["size"], c["metric"]): c for c in results[name]["comparisons"] if c["caface"] == "caface"
        }
        for setting in ("mixed", "degraded"):
            for n in (2, 4, 8):
                if (setting, n, "dprime") not in comp:
                    continue
                d, t, k = (comp[(setting, n, m)] for m in ("dprime", "tar@1e-3", "rank1"))
                rows.append({"ablation": name, "setting": setting, "size": n, "dprime": d, "tar@1e-3": t, "rank1": k})
                lines.append(
                    f"| {name} | {setting} | {n} | {d['caface_value']:.2f} | "
                    f"{fmt(d['average_difference'], d['average_difference_ci'])} | "
                    f"{fmt(d['difference'], d['difference_ci'])} ({d['best_pooling']}) | "
                    f"{fmt(t['average_difference'], t['average_difference_ci'], 100)} | "
                    f"{fmt(k['difference'], k['difference_ci'], 100)} |"
                )
    return rows, "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", default="", help="the real-face feature store the recipe trains on")
    ap.add_argument("--main", default="", help="the recipe's own (3-epoch) fusion weights file")
    ap.add_argument("--work", default=str(ROOT / "benchmarks" / "results" / "cache_set_fusion_ablations"))
    ap.add_argument("--summarise", action="store_true", help="only build the table from --work/*.json")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "set_fusion_ablations.json"))
    args = ap.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if not args.summarise:
        if not args.store:
            ap.error("--store is needed unless --summarise")
        if args.main and not (work / "main_3ep.json").is_file():
            score(args.store, Path(args.main), work / "main_3ep.json")
        for name, overrides in ABLATIONS.items():
            if (work / f"{name}.json").is_file():
                continue
            run = work / "runs" / name
            cmd = [sys.executable, "-m", "fuseface.cli", "train", "--config", str(RECIPE), f"out_dir={run}"]
            cmd += [f"caface.store={args.store}", *ONE_EPOCH, *overrides]
            print(" ".join(cmd), flush=True)
            with open(work / f"{name}.train.log", "w") as log:
                subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT)
            score(args.store, run / "model.safetensors", work / f"{name}.json")
    results = {p.stem: json.loads(p.read_text()) for p in sorted(work.glob("*.json"))}
    rows, text = table(results)
    Path(args.out).write_text(json.dumps({"benchmark": "set_fusion_ablations", "rows": rows}, indent=1))
    print(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
