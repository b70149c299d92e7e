"""LGAF on dlib's frozen ResNet, trained and tested on real LFW faces (protocol:
``fuseface.experiments.lgaf_real``).

Stages (each cached under ``--cache``; a killed run resumes at the next missing stage):

1. aligned crops of the split's training people, each clean + ``--train-copies`` damaged copies,
   through the frozen trunk (descriptor + level map);
2. the held-out people's crops, clean and damaged at every probe condition;
3. one head per trained mode (local, fused, equal), ``--epochs`` over the cached features;
4. verification of clean gallery photos against clean / damaged probes, per mode, and the fused
   head's branch weights against the strength of the damage.

Writes ``benchmarks/results/lgaf_real.json`` and two plots, and prints the tables.

    fuseface models fetch dlib-resnet
    fuseface features split ../shared/data/lfw/lfw-deepfunneled --out lfw_split.json --max-photos 48
    fuseface align ../shared/data/lfw/lfw-deepfunneled lfw_mtcnn --policy central   # faces.jsonl
    .venv/bin/python benchmarks/lgaf_real.py --split lfw_split.json --landmarks lfw_mtcnn/faces.jsonl

About 15-25 minutes on 2 cores, most of it the trunk over ~21,000 crops.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from fuseface.experiments import lgaf_real as X  # noqa: E402
from fuseface.ops import l2_normalize  # noqa: E402


def _unit(x: np.ndarray) -> np.ndarray:
    return l2_normalize(x, dtype=None)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    shared = ROOT.parent / "shared" / "data" / "lfw" / "lfw-deepfunneled"
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lfw", default=str(shared), help="LFW photo folder (one sub-folder per person)")
    p.add_argument("--split", required=True, help="identity split file (`fuseface features split`)")
    p.add_argument("--landmarks", required=True, help="`fuseface align` journal (faces.jsonl) of the photos")
    p.add_argument("--model", default="dlib-resnet", help="frozen trunk (a model supporting return_stages)")
    p.add_argument("--cache", default=str(ROOT / "benchmarks" / "results" / "cache_lgaf_real"))
    p.add_argument("--level", type=int, default=2, help="0-based level map the local branch reads")
    p.add_argument("--train-copies", type=int, default=3, help="damaged copies per training photo")
    p.add_argument("--train-photos", type=int, default=0, help="at most this many photos per training person (0: all)")
    p.add_argument("--test-photos", type=int, default=6, help="at most this many photos per held-out person")
    p.add_argument("--pairs", type=int, default=3000)
    p.add_argument("--occlusion-levels", default="0.1,0.2,0.3,0.4")
    p.add_argument("--deformation-levels", default="0.25,0.5,1.0")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "lgaf_real.json"))
    return p.parse_args(argv)


def rng_for(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([seed, *keys])


def load_crops(source: Any, desc: str) -> list[np.ndarray]:
    from tqdm import tqdm

    return [source[i][0] for i in tqdm(range(len(source)), desc=desc, unit="photo", mininterval=5)]


def run_trunk(fm: Any, crops: Any, count: int, level: int, desc: str) -> X.TrunkFeatures:
    from tqdm import tqdm

    with tqdm(total=count, desc=desc, unit="img", mininterval=5) as bar:
        return X.trunk_features(fm, crops, count=count, level=level, progress=bar.update)


def training_features(args: argparse.Namespace, fm: Any, split: dict[str, Any], points: np.ndarray, cache: Path):
    path = cache / f"train_l{args.level}_k{args.train_copies}_p{args.train_photos}.npz"
    if path.is_file():
        return X.load_features(path)
    source, labels, _ = X.crops_from_split(
        split, args.lfw, args.landmarks, "train", args.train_photos, fm.template, fm.input_size
    )
    clean = load_crops(source, "train crops")
    copies = 1 + args.train_copies
    kinds = np.zeros(len(clean) * copies, dtype=np.int64)  # 0 clean, 1 occlusion, 2 deformation
    strengths = np.zeros(len(clean) * copies, dtype=np.float32)
    for i in range(len(clean)):
        for c in range(1, copies):
            rng = rng_for(args.seed, 1, i, c)
            kinds[i * copies + c] = 1 + int(rng.integers(2))
            lo, hi = (0.05, 0.45) if kinds[i * copies + c] == 1 else (0.2, 1.0)
            strengths[i * copies + c] = rng.uniform(lo, hi)

    def crop(j: int) -> np.ndarray:
        i, c = divmod(j, copies)
        if c == 0:
            return clean[i]
        rng = rng_for(args.seed, 2, i, c)
        img = X.damage(clean[i], X.KINDS[kinds[j] - 1], float(strengths[j]), rng, points)
        return np.ascontiguousarray(img[:, ::-1]) if rng.random() < 0.5 else img

    feats = run_trunk(fm, crop, len(clean) * copies, args.level, "trunk (train)")
    extra = {"labels": np.repeat(labels, copies), "kinds": kinds, "strengths": strengths}
    X.save_features(path, feats, **extra)
    return feats, extra


def test_conditions(args: argparse.Namespace) -> list[tuple[str, float]]:
    occ = [float(s) for s in args.occlusion_levels.split(",") if s]
    dfm = [float(s) for s in args.deformation_levels.split(",") if s]
    return [("clean", 0.0)] + [("occlusion", s) for s in occ] + [("deformation", s) for s in dfm]


def test_features(args: argparse.Namespace, fm: Any, split: dict[str, Any], points: np.ndarray, cache: Path):
    source, labels, photos = X.crops_from_split(
        split, args.lfw, args.landmarks, "test", args.test_photos, fm.template, fm.input_size
    )
    out: dict[tuple[str, float], X.TrunkFeatures] = {}
    clean: list[np.ndarray] | None = None
    for ci, (kind, strength) in enumerate(test_conditions(args)):
        path = cache / f"test_l{args.level}_p{args.test_photos}_{kind}_{strength:g}.npz"
        if path.is_file():
            out[(kind, strength)] = X.load_features(path)[0]
            continue
        if clean is None:
            clean = load_crops(source, "test crops")

        def crop(i: int, kind: str = kind, strength: float = strength, ci: int = ci, crops=clean) -> np.ndarray:
            return X.damage(crops[i], kind, strength, rng_for(args.seed, 3, i, ci), points)

        feats = run_trunk(fm, crop, len(clean), args.level, f"trunk (test {kind} {strength:g})")
        X.save_features(path, feats, labels=labels)
        out[(kind, strength)] = feats
    return out, labels, photos


def plot(results: dict[str, Any], path: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fuseface.eval.report import save_figure

    written = []
    rows = results["conditions"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, kind in zip(axes, X.KINDS, strict=True):
        pts = [r for r in rows if r["kind"] in ("clean", kind)]
        xs = [r["strength"] for r in pts]
        for label, key in (
            ("global (dlib)", "global"),
            ("local", "local"),
            ("fused", "fused"),
            ("equal", "equal"),
            ("fused, cross-fitted", "fused_cross_fit"),
        ):
            ax.plot(xs, [100 * r["models"][key]["accuracy"] for r in pts], marker="o", label=label)
        ax.set_title(f"probe {kind}")
        ax.set_xlabel("strength")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("10-fold accuracy (%)")
    axes[0].legend()
    written.append(save_figure(fig, path.with_name("lgaf_real_accuracy.png")))

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for kind, marker in zip(X.KINDS, ("o", "s"), strict=True):
        pts = [r for r in rows if r["kind"] in ("clean", kind)]
        xs = [r["strength"] for r in pts]
        mean = np.array([r["weights"]["w_global_mean"] for r in pts])
        q10 = np.array([r["weights"]["w_global_q10"] for r in pts])
        q90 = np.array([r["weights"]["w_global_q90"] for r in pts])
        line = ax.plot(xs, mean, marker=marker, label=f"{kind} (fused)")[0]
        ax.fill_between(xs, q10, q90, alpha=0.15, color=line.get_color())
        cross = [r["weights_cross_fit"]["w_global_mean"] for r in pts]
        ax.plot(xs, cross, marker=marker, ls="--", color=line.get_color(), label=f"{kind} (cross-fitted)")
    ax.set_xlabel("damage strength of the probe")
    ax.set_ylabel("fused head: weight of the global branch")
    ax.set_title("learned LGF weights (mean, 10-90 % band)")
    ax.grid(alpha=0.3)
    ax.legend()
    written.append(save_figure(fig, path.with_name("lgaf_real_weights.png")))
    return written


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    import fuseface
    from fuseface.align.similarity import template_points
    from fuseface.data.photo_sets import read_split
    from fuseface.eval.verification import evaluate

    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    cpu0 = time.process_time()
    fm = fuseface.load(args.model)
    split = read_split(args.split)
    points = template_points(fm.template, fm.input_size)

    train, meta = training_features(args, fm, split, points, cache)
    test, test_labels, photos = test_features(args, fm, split, points, cache)
    gi, pi, issame = X.make_pairs(test_labels, args.pairs, seed=args.seed)
    t_features = time.time() - t0

    curves: dict[str, list[dict[str, float]]] = {}
    heads: dict[str, X.FrozenTrunkLGAF] = {}
    labels = meta["labels"]
    a_side = X.people_halves(labels, seed=args.seed)
    jobs = [(m, m, np.ones(len(labels), bool)) for m in ("local", "fused", "equal")]
    jobs.append(("fused_half_a", "fused", a_side))
    for name, mode, rows_ in jobs:
        path = cache / f"head_{name}_l{args.level}_k{args.train_copies}_e{args.epochs}_s{args.seed}.pt"
        t = time.time()
        if path.is_file():
            heads[name], curves[name] = load_head(path, train, labels, mode)
            continue
        curves[name] = []
        _, y = np.unique(labels[rows_], return_inverse=True)
        heads[name] = X.train_head(
            subset(train, rows_), y, mode, epochs=args.epochs, seed=args.seed, log=curves[name].append
        )
        save_head(path, heads[name], curves[name])
        print(
            f"trained {name}: loss {curves[name][0]['loss']:.3f} -> {curves[name][-1]['loss']:.3f}"
            f" in {time.time() - t:.0f} s",
            flush=True,
        )
    curves["cross_fit"] = []
    heads["fused_cross_fit"] = X.fit_fusion_weights(
        heads["fused_half_a"], subset(train, ~a_side), labels[~a_side], seed=args.seed, log=curves["cross_fit"].append
    )
    print(f"cross-fitted LGF weights: {curves['cross_fit'][-1]}", flush=True)

    embedded = {cond: {m: X.embed_modes(h, f) for m, h in heads.items()} for cond, f in test.items()}
    gallery = embedded[("clean", 0.0)]

    # training-set weights against the damage actually applied
    fused_train = X.embed_modes(heads["fused"], train)
    train_w = fused_train["weights"][:, 0]
    log_e = np.log(np.clip(fused_train["energies"], 1e-12, None))
    train_weights = {}
    for k, name in enumerate(("clean", *X.KINDS)):
        sel = meta["kinds"] == k
        if not sel.any():
            continue
        entry = {"count": int(sel.sum()), "w_global_mean": float(train_w[sel].mean())}
        entry["log_energy_global"], entry["log_energy_local"] = (float(v) for v in log_e[sel].mean(axis=0))
        if k:  # correlations with the damage strength within one kind of damage
            s = meta["strengths"][sel]
            entry["corr_w_global_strength"] = float(np.corrcoef(train_w[sel], s)[0, 1])
            entry["corr_log_energy_global_strength"] = float(np.corrcoef(log_e[sel, 0], s)[0, 1])
            entry["corr_log_energy_local_strength"] = float(np.corrcoef(log_e[sel, 1], s)[0, 1])
        train_weights[name] = entry

    rows = []
    for (kind, strength), per_head in embedded.items():
        models: dict[str, dict[str, float]] = {}
        glob = X.evaluate_modes(gallery["fused"], per_head["fused"], gi, pi, issame)
        models["global"] = glob["global"]
        models["fused"] = glob["fused"]
        models["fused_model_local_only"] = glob["local"]
        models["local"] = X.evaluate_modes(gallery["local"], per_head["local"], gi, pi, issame)["local"]
        models["equal"] = X.evaluate_modes(gallery["equal"], per_head["equal"], gi, pi, issame)["equal"]
        for name in ("fused_half_a", "fused_cross_fit"):
            models[name] = X.evaluate_modes(gallery[name], per_head[name], gi, pi, issame)["fused"]
        # diagnostic, not a method: the fused head's two branches mixed with one constant weight
        sweep = {}
        for w in SWEEP:
            mix_g = w * _unit(gallery["fused"]["global"]) + (1 - w) * _unit(gallery["fused"]["local"])
            mix_p = w * _unit(per_head["fused"]["global"]) + (1 - w) * _unit(per_head["fused"]["local"])
            sweep[f"{w:g}"] = float(evaluate(mix_g[gi], mix_p[pi], issame)["accuracy_mean"])
        probe_rows = np.unique(pi)
        rows.append(
            {
                "kind": kind,
                "strength": strength,
                "models": models,
                "constant_weight_sweep": sweep,
                "weights": X.weight_summary(
                    per_head["fused"]["weights"][probe_rows], per_head["fused"]["energies"][probe_rows]
                ),
                "weights_cross_fit": X.weight_summary(
                    per_head["fused_cross_fit"]["weights"][probe_rows],
                    per_head["fused_cross_fit"]["energies"][probe_rows],
                ),
                "cos_to_clean_global": float(
                    np.mean(np.sum(_unit(test[(kind, strength)].global_) * _unit(test[("clean", 0.0)].global_), axis=1))
                ),
            }
        )
    results = {
        "benchmark": "lgaf_real",
        "args": vars(args),
        "train_images": len(train),
        "train_people": int(meta["labels"].max()) + 1,
        "test_photos": len(photos),
        "test_people": int(test_labels.max()) + 1,
        "pairs": len(issame),
        "conditions": rows,
        "train_weights": train_weights,
        "curves": curves,
        "wall_s": {"features": round(t_features, 1), "total": round(time.time() - t0, 1)},
        "cpu_s": round(time.process_time() - cpu0, 1),
        "load_average": os.getloadavg(),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    for p in plot(results, out):
        print(f"wrote {p}")
    print(markdown(results))
    print(f"wrote {out}")
    return 0


SWEEP = (0.0, 0.25, 0.5, 0.7, 0.8, 0.9, 1.0)


def subset(features: X.TrunkFeatures, rows: np.ndarray) -> X.TrunkFeatures:
    return X.TrunkFeatures(features.global_[rows], features.level[rows])


def save_head(path: Path, head: X.FrozenTrunkLGAF, curve: list[dict[str, float]]) -> None:
    torch.save({"state": head.state_dict(), "curve": curve}, path)


def load_head(path: Path, train: X.TrunkFeatures, labels: np.ndarray, mode: str):
    blob = torch.load(path, map_location="cpu", weights_only=True)
    _, channels, size, _ = train.level.shape
    head = X.FrozenTrunkLGAF(channels, size, train.global_.shape[1], mode=mode)
    head.load_state_dict(blob["state"])
    return head.eval(), blob["curve"]


def markdown(results: dict[str, Any]) -> str:
    head = (
        "| probe | strength | cos to clean | global (dlib) | local | fused | equal | fused, local only"
        " | fused (half A) | fused, cross-fitted | w_global fused | w_global cross-fitted |"
    )
    lines = [head, "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    keys = ("global", "local", "fused", "equal", "fused_model_local_only", "fused_half_a", "fused_cross_fit")
    for r in results["conditions"]:
        m = r["models"]
        acc = [f"{100 * m[k]['accuracy']:.2f}" for k in keys]
        w, wx = r["weights"], r["weights_cross_fit"]
        lines.append(
            f"| {r['kind']} | {r['strength']:g} | {r['cos_to_clean_global']:.3f} | "
            + " | ".join(acc)
            + f" | {w['w_global_mean']:.3f} [{w['w_global_q10']:.3f}, {w['w_global_q90']:.3f}]"
            + f" | {wx['w_global_mean']:.3f} [{wx['w_global_q10']:.3f}, {wx['w_global_q90']:.3f}] |"
        )
    lines += ["", "| probe | strength | " + " | ".join(f"w_global {w:g}" for w in SWEEP) + " |"]
    lines.append("|---|---|" + "---|" * len(SWEEP))
    for r in results["conditions"]:
        cells = " | ".join(f"{100 * r['constant_weight_sweep'][f'{w:g}']:.2f}" for w in SWEEP)
        lines.append(f"| {r['kind']} | {r['strength']:g} | {cells} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
