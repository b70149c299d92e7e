"""Does LGAF's claim hold at small scale? Local vs global vs fused under missing regions and deformation.

The claim (LGAF abstract, METHODS.md section 4.1): local features matter more where facial regions
are missing; global features are more robust where parts of the face are deformed; and the
quality-weighted fusion of the two is the best overall.

The experiment, all on CPU with synthetic faces (``fuseface.data.synthetic``):

1. Train one small model per ablation, ``mode`` in {fused, global, local, equal}. The model is
   IResNet (1, 1, 1, 1) with the LGAF head at ``--image-size`` pixels. Every mode uses the same
   data, seed, steps, batch and optimizer, through the training engine
   (``fuseface.train.trainer.train``). The data is training identities 0..N-1 with the "default"
   mixed-quality nuisance plus AdaFace augmentation and occlusion p=0.2, as in the recipes. Every
   model's loss has a total weight of 2: fused/equal use the main loss + 0.5 x each branch;
   global/local use the main loss + 1.0 x their one branch.
2. Render a verification set on **held-out identities** (ids >= 10_000). Each pair is a gallery
   image (default nuisance, no occluder, no deformation) and a probe. The probe is rendered at
   several strengths of two degradations:
   * ``occlusion``: an occluder (eye band, lower-face mask or random box) covering a fraction s of
     the face box (``render(..., occlusion=s)``);
   * ``deformation``: elastic warp, expression and pose together at strength s
     (``render(..., deformation=s, expression=s, pose=s)``).
   The pairs (who is compared with whom) are the same in every condition; only the probe's
   degradation changes.
3. 10-fold verification accuracy (``fuseface.eval.verification.evaluate``) per model and
   condition. The fused model is also probed with one branch switched off at inference
   (``head.mode``), and its learned per-sample weights are plotted against the degradation
   strength.

Small-scale, synthetic, one seed: the figures show what *this implementation* does on *this*
data. They are not a reproduction of the paper's numbers. Other agents share the 2 CPU cores
while this runs, so wall times are inflated; CPU times are reported too.

    .venv/bin/python benchmarks/lgaf_experiment.py            # ~10-15 min on a loaded 2-core box
    .venv/bin/python benchmarks/lgaf_experiment.py --quick    # smoke run, ~2 min
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
ARCH = "lgaf_experiment_ir1111"
MODES = ("fused", "global", "local", "equal")
HELDOUT = 10_000


def build_backbone(**kwargs: Any) -> torch.nn.Module:
    """IResNet with one block per stage: the smallest insightface-style trunk with four stages."""
    from fuseface.nn.backbones.iresnet import IResNet

    return IResNet((1, 1, 1, 1), **kwargs)


def train_config(args: argparse.Namespace, mode: str, work: Path) -> dict[str, Any]:
    """The training-engine config of one ablation (identical except ``head_kw.mode`` and aux losses)."""
    aux = {"global": 0.5, "local": 0.5} if mode in ("fused", "equal") else {mode: 1.0}
    return {
        "out_dir": str(work / mode),
        "model": {
            "name": ARCH,
            "kwargs": {
                "input_size": args.image_size,
                "num_features": args.features,
                "head": "lgaf",
                "head_kw": {
                    "mode": mode,
                    "tap_stage": args.tap_stage,
                    "kernel_sizes": [3, 5, 7, 9],
                    "merge_channels": 128,
                    "pool_size": 4,
                },
            },
        },
        "data": {
            "kind": "synthetic",
            "image_size": args.image_size,
            "flip": True,
            "adaface_aug": True,
            "occlusion_p": 0.2,
            "num_workers": 0,
            "synthetic": {
                "num_identities": args.train_ids,
                "images_per_identity": args.images_per_id,
                "seed": 0,
                "nuisance": "default",
                "cache_dir": str(work / f"synth_{args.train_ids}x{args.images_per_id}_{args.image_size}"),
            },
        },
        "loss": {"name": "arcface", "s": 32.0, "m2": 0.3, "aux_weights": aux},
        "optim": {"name": "sgd", "lr": args.lr, "momentum": 0.9, "weight_decay": 5e-4, "clip_grad_norm": 5.0},
        "schedule": {"name": "cosine", "warmup_steps": max(1, args.steps // 10), "min_lr": 1e-5},
        "train": {
            "steps": args.steps,
            "batch_size": args.batch_size,
            "seed": 2048,
            "device": "cpu",
            "num_threads": args.threads,
        },
        "checkpoint": {"every": 0, "keep": 1},
        "log": {"every": max(1, args.steps // 5), "progress": False, "tensorboard": False},
    }


# ---------------------------------------------------------------------------------------------
# evaluation set: held-out identities, one gallery image and one degraded probe per pair
# ---------------------------------------------------------------------------------------------


def conditions(args: argparse.Namespace) -> list[tuple[str, float]]:
    occ = [float(s) for s in args.occlusion_levels.split(",")]
    dfm = [float(s) for s in args.deformation_levels.split(",")]
    return [("clean", 0.0)] + [("occlusion", s) for s in occ] + [("deformation", s) for s in dfm]


def probe_overrides(kind: str, strength: float) -> dict[str, Any]:
    """Nuisance overrides of a probe image (on top of the default preset's draw)."""
    if kind == "occlusion":
        return {"occlusion": strength, "deformation": 0.0}
    if kind == "deformation":
        return {"occlusion": 0.0, "deformation": strength, "expression": strength, "pose": strength}
    return {"occlusion": 0.0, "deformation": 0.0}


def render_probe(faces: Any, identity: int, variation: int, kind: str, strength: float) -> np.ndarray:
    """Render one probe; retry with another variation when the generator rejects the draw.

    ``SyntheticFaces`` raises ``ValueError`` for a random-box occluder that does not fit in the
    face box (occlusion >= ~0.3 with a wide box); the retry then draws another occluder kind.
    """
    for attempt in range(20):
        try:
            return faces.render(identity, variation + 7919 * attempt, **probe_overrides(kind, strength))[0]
        except ValueError:
            continue
    raise RuntimeError(f"could not render identity {identity} with {kind}={strength}")


def build_eval_set(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Render (or load from the cache) the gallery, the probes per condition and the pair list."""
    from fuseface.data.synthetic import SyntheticFaces

    conds = conditions(args)
    key = json.dumps([args.eval_ids, args.eval_views, args.pairs, args.image_size, conds])
    path = work / f"evalset_{hashlib.sha1(key.encode()).hexdigest()[:10]}.npz"
    if path.is_file():
        data = np.load(path)
        return {k: data[k] for k in data.files} | {"conditions": conds}
    faces = SyntheticFaces(seed=0, image_size=args.image_size, preset="default")
    ids, views = args.eval_ids, args.eval_views
    gallery = np.stack([render_probe(faces, HELDOUT + i, v, "clean", 0.0) for i in range(ids) for v in range(views)])
    probes = np.stack(
        [
            np.stack([render_probe(faces, HELDOUT + i, 1000 + v, kind, s) for i in range(ids) for v in range(views)])
            for kind, s in conds
        ]
    )
    rng = np.random.default_rng(7)
    issame = np.zeros(args.pairs, bool)
    issame[: args.pairs // 2] = True
    rng.shuffle(issame)
    g_idx = np.zeros(args.pairs, int)
    p_idx = np.zeros(args.pairs, int)
    for k, same in enumerate(issame):
        a = int(rng.integers(ids))
        b = a if same else int((a + rng.integers(1, ids)) % ids)
        g_idx[k] = a * views + int(rng.integers(views))
        p_idx[k] = b * views + int(rng.integers(views))
    out = {"gallery": gallery, "probes": probes, "issame": issame, "g_idx": g_idx, "p_idx": p_idx}
    np.savez_compressed(path, **out)
    return out | {"conditions": conds}


@torch.no_grad()
def embed(net: torch.nn.Module, images: np.ndarray, batch: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings (N, D), fusion weights (N, 2)) of uint8 RGB images in eval mode."""
    from fuseface.infer.embedder import to_input_tensor

    embs, weights = [], []
    for i in range(0, len(images), batch):
        emb, aux = net(to_input_tensor(images[i : i + batch], "rgb"), return_aux=True)
        embs.append(emb.float().numpy())
        weights.append(aux["weights"].float().numpy())
    return np.concatenate(embs), np.concatenate(weights)


def evaluate_model(net: torch.nn.Module, evalset: dict[str, Any]) -> dict[str, Any]:
    """Accuracy per condition plus the probes' fusion weights."""
    from fuseface.eval.verification import evaluate

    gal, _ = embed(net, evalset["gallery"])
    rows: dict[str, Any] = {}
    for c, (kind, s) in enumerate(evalset["conditions"]):
        emb, w = embed(net, evalset["probes"][c])
        res = evaluate(gal[evalset["g_idx"]], emb[evalset["p_idx"]], evalset["issame"], nfolds=10)
        rows[f"{kind}@{s:g}"] = {
            "kind": kind,
            "strength": s,
            "accuracy": res["accuracy_mean"],
            "accuracy_std": res["accuracy_std"],
            "local_weight": w[:, 1].tolist(),
        }
    return rows


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------


def summarise(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Accuracy on clean probes and the mean over the levels of each degradation, per row."""
    out = {}
    for row, conds in results.items():
        occ = [c["accuracy"] for c in conds.values() if c["kind"] == "occlusion"]
        dfm = [c["accuracy"] for c in conds.values() if c["kind"] == "deformation"]
        clean = [c["accuracy"] for c in conds.values() if c["kind"] == "clean"]
        out[row] = {
            "clean": float(np.mean(clean)),
            "occlusion": float(np.mean(occ)),
            "deformation": float(np.mean(dfm)),
            "all": float(np.mean([c["accuracy"] for c in conds.values()])),
        }
    return out


def claim_checks(summary: dict[str, dict[str, float]], results: dict[str, Any], se: float) -> dict[str, Any]:
    """The paper's three statements, read off our numbers (differences within ~2 SE are noise)."""
    g, l, f = summary["global"], summary["local"], summary["fused"]
    fused_w = results["fused"]
    occ = sorted(
        (c["strength"], float(np.mean(c["local_weight"]))) for c in fused_w.values() if c["kind"] != "deformation"
    )
    dfm = sorted(
        (c["strength"], float(np.mean(c["local_weight"]))) for c in fused_w.values() if c["kind"] != "occlusion"
    )

    def slope(points: list[tuple[float, float]]) -> float:
        x, y = np.array(points).T
        return float(np.polyfit(x, y, 1)[0]) if len(x) > 1 else float("nan")

    best_other = max(v["all"] for k, v in summary.items() if k in ("global", "local", "equal"))
    return {
        "binomial_se_of_one_accuracy": se,
        "local_minus_global_under_occlusion": l["occlusion"] - g["occlusion"],
        "local_minus_global_under_deformation": l["deformation"] - g["deformation"],
        "local_helps_more_with_occlusion_than_deformation": (l["occlusion"] - g["occlusion"])
        > (l["deformation"] - g["deformation"]),
        "global_at_least_local_under_deformation": g["deformation"] >= l["deformation"],
        "fused_minus_best_other_overall": f["all"] - best_other,
        "fused_best_overall": f["all"] >= best_other,
        "fused_local_weight_slope_vs_occlusion": slope(occ),
        "fused_local_weight_slope_vs_deformation": slope(dfm),
    }


def plot(results: dict[str, Any], path: Path, image_size: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    rng = np.random.default_rng(0)
    for col, kind in enumerate(("occlusion", "deformation")):
        ax = axes[0, col]
        conds = sorted(
            (c for c in results["fused"].values() if c["kind"] in ("clean", kind)), key=lambda c: c["strength"]
        )
        xs = [c["strength"] for c in conds]
        width = (max(xs) - min(xs)) / (4 * max(1, len(xs) - 1)) if len(xs) > 1 else 0.05
        for c in conds:
            w = np.asarray(c["local_weight"])
            ax.scatter(c["strength"] + rng.uniform(-width, width, w.size), w, s=4, alpha=0.25, color="tab:blue")
        ax.plot(xs, [np.mean(c["local_weight"]) for c in conds], "o-", color="k", label="mean")
        ax.axhline(0.5, color="grey", lw=0.8, ls=":")
        ax.set_xlabel(f"probe {kind} strength")
        ax.set_ylabel("learned local weight w_l (fused model)")
        ax.set_ylim(0, 1)
        ax.set_title(f"per-sample fusion weight vs {kind}")
        ax.legend(loc="best")
        ax = axes[1, col]
        for row, rconds in results.items():
            cs = sorted((c for c in rconds.values() if c["kind"] in ("clean", kind)), key=lambda c: c["strength"])
            style = "-" if row in MODES else "--"
            ax.plot([c["strength"] for c in cs], [c["accuracy"] for c in cs], style, marker="o", ms=3, label=row)
        ax.set_xlabel(f"probe {kind} strength")
        ax.set_ylabel("10-fold verification accuracy")
        ax.set_title(f"accuracy vs {kind}")
        ax.legend(fontsize=7, loc="best")
    fig.suptitle(
        f"LGAF ablations, synthetic faces {image_size}px, IResNet(1,1,1,1), held-out ids (small-scale, one seed)",
        fontsize=10,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown_table(results: dict[str, Any], summary: dict[str, Any]) -> str:
    cols = list(next(iter(results.values())).keys())
    head = "| model | " + " | ".join(cols) + " | occl. mean | deform. mean | all |"
    lines = [head, "|" + "---|" * (len(cols) + 4)]
    for row, conds in results.items():
        cells = [f"{conds[c]['accuracy'] * 100:.1f}" for c in cols]
        s = summary[row]
        cells += [f"{s['occlusion'] * 100:.1f}", f"{s['deformation'] * 100:.1f}", f"{s['all'] * 100:.1f}"]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_mode(args: argparse.Namespace, mode: str) -> dict[str, Any]:
    """Train one ablation through the engine and evaluate it (runs in a worker process)."""
    from fuseface import registry
    from fuseface.infer.model_file import load_model
    from fuseface.train.config import config_from_dict
    from fuseface.train.trainer import train

    torch.set_num_threads(args.threads)
    registry.register("backbone", ARCH, build_backbone)
    evalset = build_eval_set(args, args.work)
    t0, c0 = time.time(), time.process_time()
    cfg = config_from_dict(train_config(args, mode, args.work), source=f"lgaf_experiment[{mode}]")
    result = train(cfg)
    t1, c1 = time.time(), time.process_time()
    net, _ = load_model(result.model_path)
    rows = {mode: evaluate_model(net, evalset)}
    if mode == "fused":  # the fused model with one branch switched off at inference (no retraining)
        for probe in ("global", "local"):
            net.head.mode = probe
            rows[f"fused->{probe} branch"] = evaluate_model(net, evalset)
        net.head.mode = "fused"
    keep = ("step", "loss", "loss_main", "loss_global", "loss_local", "lr")
    return {
        "rows": rows,
        "history": [{k: v for k, v in h.items() if k in keep} for h in result.history],
        "timings": {
            "train_wall_s": t1 - t0,
            "train_cpu_s": c1 - c0,
            "eval_wall_s": time.time() - t1,
            "eval_cpu_s": time.process_time() - c1,
        },
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=80)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--tap-stage", type=int, default=2)
    p.add_argument("--features", type=int, default=128)
    p.add_argument("--train-ids", type=int, default=100)
    p.add_argument("--images-per-id", type=int, default=8)
    p.add_argument("--eval-ids", type=int, default=40)
    p.add_argument("--eval-views", type=int, default=2)
    p.add_argument("--pairs", type=int, default=400)
    p.add_argument("--occlusion-levels", default="0.2,0.4")
    p.add_argument("--deformation-levels", default="0.5,1.0")
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    p.add_argument("--jobs", type=int, default=2, help="ablations trained in parallel (one process each)")
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "lgaf_experiment")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "lgaf_experiment.json")
    p.add_argument("--plot", type=Path, default=ROOT / "benchmarks" / "results" / "lgaf_experiment.png")
    p.add_argument("--quick", action="store_true", help="smoke run: 4 steps, 10 ids, 100 pairs")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.train_ids, args.images_per_id = 4, 10, 4
        args.eval_ids, args.pairs = 10, 100
        args.work = args.work.with_name(args.work.name + "_quick")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if "fused" not in modes or any(m not in MODES for m in modes):
        p.error(f"--modes must include 'fused' and be among {MODES}")

    from fuseface.data.synthetic import generate_recordio

    args.work.mkdir(parents=True, exist_ok=True)
    load_start = os.getloadavg()
    t_all, c_all = time.time(), time.process_time()
    timings: dict[str, dict[str, float]] = {}

    t0, c0 = time.time(), time.process_time()
    evalset = build_eval_set(args, args.work)
    synth = Path(train_config(args, "fused", args.work)["data"]["synthetic"]["cache_dir"])
    if not (synth / "train.rec").is_file():  # render the training set once, before the workers start
        tmp = generate_recordio(
            synth.with_name(synth.name + ".tmp"),
            args.train_ids,
            args.images_per_id,
            seed=0,
            nuisance="default",
            progress=False,
            image_size=args.image_size,
        )
        tmp.replace(synth)
    timings["render_data"] = {"wall_s": time.time() - t0, "cpu_s": time.process_time() - c0}
    print(
        f"eval set: {len(evalset['gallery'])} gallery + {evalset['probes'].shape[:2]} probes, "
        f"{len(evalset['issame'])} pairs; training set {args.train_ids} x {args.images_per_id} "
        f"({timings['render_data']['wall_s']:.0f} s)",
        flush=True,
    )

    results: dict[str, Any] = {}
    histories: dict[str, list[dict[str, Any]]] = {}
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(args.jobs, len(modes)), mp_context=ctx) as pool:
        futures = {pool.submit(run_mode, args, mode): mode for mode in modes}
        for fut in as_completed(futures):
            mode = futures[fut]
            out = fut.result()
            results.update(out["rows"])
            histories[mode] = out["history"]
            timings[mode] = out["timings"]
            losses = [h["loss"] for h in out["history"] if "loss" in h]
            print(
                f"{mode:7s} loss {losses[0]:.2f} -> {losses[-1]:.2f}  train {out['timings']['train_wall_s']:.0f} s  "
                + "  ".join(f"{k} {v['accuracy'] * 100:.1f}" for k, v in out["rows"][mode].items()),
                flush=True,
            )
    order = [*modes, "fused->global branch", "fused->local branch"]
    results = {k: results[k] for k in order if k in results}

    summary = summarise(results)
    n = len(evalset["issame"])
    acc = summary["fused"]["all"]
    se = float(np.sqrt(acc * (1 - acc) / n))
    checks = claim_checks(summary, results, se)
    table = markdown_table(results, summary)
    plot(results, args.plot, args.image_size)
    timings["total"] = {"wall_s": time.time() - t_all, "cpu_s": time.process_time() - c_all}
    weights = {
        k: {"mean": float(np.mean(v["local_weight"])), "std": float(np.std(v["local_weight"]))}
        for k, v in results["fused"].items()
    }
    report = {
        "benchmark": "lgaf_experiment",
        "note": "small-scale synthetic CPU experiment, one seed; not the paper's setting or numbers. "
        "Other agents shared the 2 CPU cores during the run (see loadavg).",
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "conditions": [list(c) for c in evalset["conditions"]],
        "accuracy": {row: {c: v["accuracy"] for c, v in conds.items()} for row, conds in results.items()},
        "accuracy_std_over_folds": {
            row: {c: v["accuracy_std"] for c, v in conds.items()} for row, conds in results.items()
        },
        "summary": summary,
        "fused_local_weight": weights,
        "claim_checks": checks,
        "training_history": histories,
        "timings": timings,
        "loadavg_start": list(load_start),
        "loadavg_end": list(os.getloadavg()),
        "torch_threads": args.threads,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "plot": str(args.plot.relative_to(ROOT)) if args.plot.is_relative_to(ROOT) else str(args.plot),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print()
    print(table)
    print()
    print(
        "fused model, mean local weight per condition: " + ", ".join(f"{k} {v['mean']:.3f}" for k, v in weights.items())
    )
    print("claim checks: " + json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in checks.items()}))
    print(
        f"total {timings['total']['wall_s']:.0f} s wall, {timings['total']['cpu_s']:.0f} s CPU; "
        f"load average {load_start[0]:.1f} -> {os.getloadavg()[0]:.1f}; wrote {args.out} and {args.plot}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
