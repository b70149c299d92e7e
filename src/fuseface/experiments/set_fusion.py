"""CPU demo of set fusion: CAFace against average and norm-weighted pooling on synthetic probe sets.

Small-scale and synthetic by design (labelled so in every output). Steps:

1. **Training features**: training identities ``0..K-1`` of :class:`fuseface.data.synthetic.SyntheticFaces`
   (the ones the demo backbone was trained on, as CAFace is trained on a subset of the backbone's
   training set), a few images each plus augmented copies (the §3.9 families, see
   :mod:`fuseface.infer.extract_features`), written to a feature store.
2. **CAFace training** on that store with the training engine (``task: caface``), a few minutes at most.
3. **Probe sets**: held-out identities (``>= 10_000``), two sets of 64 images each of mixed quality:
   each image is clean (default nuisance) or heavily blurred, occluded or tiny (low-resolution
   round trip).
4. **Verification on sets**: for set size n in 1..64, each identity's first n images of set A
   against the first n of set B (genuine) and of every other identity's set B (impostor);
   templates from CAFace (chunk = whole set), average pooling and norm-weighted pooling; AUC and
   EER of the cosine scores.

``run(out_dir, backbone, ...)`` returns ``{"rows", "markdown", "figure", "json", ...}`` and writes
``set_fusion.md``, ``set_fusion.png`` and ``set_fusion.json`` into ``out_dir``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fuseface.infer.model_file import ModelMeta, load_model

SET_SIZES = (1, 2, 4, 8, 16, 32, 64)
KINDS = ("clean", "blurred", "occluded", "tiny")


def _load_backbone(backbone: str | Path | nn.Module) -> tuple[nn.Module, ModelMeta]:
    """The backbone and its settings: a model file's metadata, or for a module its stated channel
    order and input size (the demo's trained network) with the default pixel normalisation."""
    if isinstance(backbone, nn.Module):
        order, size = getattr(backbone, "channel_order", "rgb"), int(getattr(backbone, "input_size", 112))
        return backbone.eval(), ModelMeta(arch=type(backbone).__name__, channel_order=order, input_size=size)
    return load_model(backbone)


def _degrade_kwargs(kind: str, rng: np.random.Generator, image_size: int) -> dict[str, float]:
    k = image_size / 112.0
    if kind == "blurred":
        return {"blur": float(rng.uniform(3.5, 6.0))}
    if kind == "occluded":
        return {"occlusion": float(rng.uniform(0.35, 0.6))}
    if kind == "tiny":
        return {"low_res": float(rng.uniform(8, 14) * max(k, 0.5))}
    return {}


def _render_probe_sets(
    faces: Any, identities: list[int], set_len: int, seed: int, progress: bool
) -> tuple[list[list[np.ndarray]], list[list[str]]]:
    """Two sets (A then B) per identity: images and their quality kind."""
    images, kinds = [], []
    it = [(i, s) for i in identities for s in (0, 1)]
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="probe sets", unit="set")
    for ident, side in it:
        rng = np.random.default_rng([seed, ident, side, 0x5E7])
        imgs, ks = [], []
        for j in range(set_len):
            kind = KINDS[int(rng.choice(4, p=[0.4, 0.2, 0.2, 0.2]))]
            kw = _degrade_kwargs(kind, rng, faces.image_size)
            img = None
            while img is None:
                try:
                    img, _ = faces.render(ident, side * 1000 + j, **kw)
                except ValueError:  # the renderer rejects some large occluders: shrink and retry
                    if "occlusion" not in kw or kw["occlusion"] < 0.05:
                        raise
                    kw["occlusion"] *= 0.8
            imgs.append(img)
            ks.append(kind)
        images.append(imgs)
        kinds.append(ks)
    return images, kinds


def _auc_eer(genuine: np.ndarray, impostor: np.ndarray) -> tuple[float, float]:
    scores = np.concatenate([genuine, impostor])
    labels = np.concatenate([np.ones(len(genuine)), np.zeros(len(impostor))])
    order = np.argsort(-scores, kind="stable")
    labels = labels[order]
    tpr = np.concatenate([[0], np.cumsum(labels) / len(genuine)])
    fpr = np.concatenate([[0], np.cumsum(1 - labels) / len(impostor)])
    auc = float(np.trapezoid(tpr, fpr)) if hasattr(np, "trapezoid") else float(np.trapz(tpr, fpr))
    fnr = 1 - tpr
    i = int(np.argmin(np.abs(fnr - fpr)))
    return auc, float((fnr[i] + fpr[i]) / 2)


def run(
    out_dir: str | Path,
    backbone: str | Path | nn.Module,
    *,
    image_size: int | None = None,
    seed: int = 0,
    quick: bool = False,
    progress: bool = True,
    train_identities: int | None = None,
    eval_identities: int | None = None,
    train_steps: int | None = None,
) -> dict[str, Any]:
    """Run the set-fusion demo (see the module docstring); returns rows + markdown + file paths."""
    from fuseface.data.image_sources import ArraySource
    from fuseface.data.synthetic import SyntheticFaces
    from fuseface.infer.extract_features import embed_with_styles, extract_features
    from fuseface.infer.fusion_file import load_fusion
    from fuseface.nn.fusion import fuse_features
    from fuseface.train.config import config_from_dict
    from fuseface.train.trainer import train

    t0 = time.time()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model, backbone_meta = _load_backbone(backbone)
    order, input_size, norm = backbone_meta.channel_order, backbone_meta.input_size, backbone_meta.pixel_norm()
    size = int(image_size or input_size)
    faces = SyntheticFaces(seed=seed, image_size=size)
    n_train = train_identities or (24 if quick else 120)
    per_id, copies = (3, 3) if quick else (4, 5)
    n_eval = eval_identities or (12 if quick else 30)
    steps = train_steps or (40 if quick else 150)
    set_len = 16 if quick else 64
    sizes = [s for s in SET_SIZES if s <= set_len]

    # 1. training features (clean render + augmented copies) -> store
    store_dir = out / "train_store"
    imgs, labels = [], []
    for ident in range(n_train):
        for v in range(per_id):
            imgs.append(faces.render(ident, v)[0])
            labels.append(ident)
    store = extract_features(
        model,
        ArraySource(np.stack(imgs), labels),
        store_dir,
        channel_order=order,
        augment_copies=copies,
        seed=seed,
        batch_size=64,
        shard_size=256,
        dtype="float32",
        input_size=input_size,
        **norm,
        progress=progress,
        meta={"source": "synthetic", "identities": n_train, "images_per_identity": per_id},
    )
    assert store is not None
    t_features = time.time() - t0

    # 2. CAFace training on the store
    cfg = config_from_dict(
        {
            "task": "caface",
            "out_dir": str(out / "caface_run"),
            "caface": {"store": str(store_dir), "set_size": 16, "seed": seed},
            "optim": {"name": "adamw", "lr": 1e-3, "weight_decay": 5e-4, "clip_grad_norm": 0.0},
            "schedule": {
                "name": "multistep",
                "milestones": [0.6 * steps / max(1, len(labels) // 16), 0.9 * steps / max(1, len(labels) // 16)],
            },
            "train": {"steps": steps, "batch_size": 16, "seed": seed, "num_threads": 1},
            "data": {"num_workers": 0},
            "checkpoint": {"every": 0},
            "log": {"progress": progress, "tensorboard": False, "every": 50},
        }
    )
    threads = torch.get_num_threads()
    try:
        result = train(cfg)  # train.num_threads=1: small ops, and the machine is usually shared
    finally:
        torch.set_num_threads(threads)
    caface = load_fusion(result.model_path)
    losses = [h["loss"] for h in result.history if "loss" in h]
    t_train = time.time() - t0 - t_features

    # 3. probe sets of held-out identities
    ids = list(range(10_000, 10_000 + n_eval))
    sets, kinds = _render_probe_sets(faces, ids, set_len, seed, progress)
    feats, styles = [], []
    for s in sets:
        e, st = embed_with_styles(model, s, order, input_size=input_size, **norm)
        feats.append(e)
        styles.append(st)

    # 4. verification on sets
    methods = {
        "caface": {"method": "caface", "model": caface},
        "average": {"method": "average"},
        "norm_weighted": {"method": "norm_weighted"},
    }
    rows = []
    for n in sizes:
        row: dict[str, Any] = {"set_size": n}
        for name, kw in methods.items():
            with torch.inference_mode():
                t = np.stack(
                    [
                        fuse_features(f[:n], styles=st[:n], chunk_size=None, **kw)
                        for f, st in zip(feats, styles, strict=True)
                    ]
                )
            a, b = t[0::2], t[1::2]
            sim = a @ b.T
            genuine = np.diag(sim)
            impostor = sim[~np.eye(len(ids), dtype=bool)]
            auc, eer = _auc_eer(genuine, impostor)
            row[f"{name}_auc"], row[f"{name}_eer"] = auc, eer
        rows.append(row)

    counts = {k: int(sum(ks.count(k) for ks in kinds)) for k in KINDS}
    md = _markdown(
        rows, n_train, per_id, copies, n_eval, set_len, steps, losses, counts, size, t_features, t_train, quick
    )
    fig = out / "set_fusion.png"
    _plot(rows, fig)
    payload = {
        "rows": rows,
        "train_identities": n_train,
        "eval_identities": n_eval,
        "set_length": set_len,
        "steps": steps,
        "loss_first": losses[:5],
        "loss_last": losses[-5:],
        "quality_counts": counts,
        "seconds": time.time() - t0,
        "quick": quick,
        "synthetic": True,
    }
    (out / "set_fusion.json").write_text(json.dumps(payload, indent=1))
    (out / "set_fusion.md").write_text(md)
    return {
        "rows": rows,
        "markdown": md,
        "figure": str(fig),
        "json": str(out / "set_fusion.json"),
        "model_path": str(result.model_path),
        "store": str(store_dir),
    }


def _markdown(
    rows: list[dict[str, Any]],
    n_train: int,
    per_id: int,
    copies: int,
    n_eval: int,
    set_len: int,
    steps: int,
    losses: list[float],
    counts: dict[str, int],
    size: int,
    t_features: float,
    t_train: float,
    quick: bool,
) -> str:
    lines = [
        f"Synthetic, small-scale figures (CPU demo{', quick mode' if quick else ''}); not comparable with IJB numbers.",
        "",
        f"CAFace trained {steps} steps on features of {n_train} training identities × {per_id} images × "
        f"(1 clean + {copies} augmented copies) of the demo backbone ({size}px; features {t_features:.0f} s, "
        f"training {t_train:.0f} s; loss {np.mean(losses[:5]):.3f} → {np.mean(losses[-5:]):.3f}). "
        f"Probe sets: {n_eval} held-out identities, two sets of {set_len} images each, quality mix "
        + ", ".join(f"{k} {v}" for k, v in counts.items())
        + ". Genuine = set A vs set B of one identity, "
        "impostor = A vs every other identity's B; templates from the first n images of each set.",
        "",
        "| set size | CAFace AUC | average AUC | norm-weighted AUC | CAFace EER % | average EER % | norm-w. EER % |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['set_size']} | {r['caface_auc']:.4f} | {r['average_auc']:.4f} | {r['norm_weighted_auc']:.4f} | "
            f"{100 * r['caface_eer']:.1f} | {100 * r['average_eer']:.1f} | {100 * r['norm_weighted_eer']:.1f} |"
        )
    lines += ["", _verdict(rows)]
    return "\n".join(lines) + "\n"


def _verdict(rows: list[dict[str, Any]]) -> str:
    """One sentence read off the table: which fusion has the best mean AUC over the set sizes > 1."""
    multi = [r for r in rows if r["set_size"] > 1] or rows
    means = {name: float(np.mean([r[f"{name}_auc"] for r in multi])) for name in ("caface", "average", "norm_weighted")}
    best = max(means, key=means.__getitem__)
    summary = ", ".join(f"{name} {value:.4f}" for name, value in means.items())
    if best == "caface":
        return f"Mean AUC over set sizes > 1: {summary}. CAFace is best in this run."
    return (
        f"Mean AUC over set sizes > 1: {summary}. In this run CAFace does **not** beat {best} pooling: "
        "with a few minutes of training on a tiny backbone's features it has not learned a better "
        "weighting than the mean. This is the honest small-scale outcome, not the paper's setting."
    )


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fuseface.eval.report import save_figure

    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    x = [r["set_size"] for r in rows]
    for name, label in (("caface", "CAFace"), ("average", "average"), ("norm_weighted", "norm-weighted")):
        ax.plot(x, [100 * r[f"{name}_eer"] for r in rows], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("images per set")
    ax.set_ylabel("EER (%) — synthetic")
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path, dpi=110)


#: Mean MTCNN landmarks (left eye, right eye, nose, mouth corners) of 6,624 detected LFW
#: deep-funneled photos (250 x 250), for aligning LFW when no ``fuseface align`` journal is given.
LFW_MEAN_LANDMARKS = [[104.99, 113.43], [147.07, 112.47], [126.33, 137.51], [108.28, 159.3], [145.48, 158.5]]


def real_face_section(
    lfw: str | Path | None,
    out_dir: str | Path,
    *,
    landmarks: str | Path | None = None,
    caface: str | Path | None = None,
    model: str = "dlib-resnet",
    identities: int = 60,
    train_steps: int = 60,
    seed: int = 0,
    progress: bool = True,
) -> str:
    """Markdown section "set fusion on real faces": LFW people with >= 8 photos (``identities`` of
    them, 8 photos each, half held out), dlib's ResNet, clean + 2 surveillance-degraded copies,
    CAFace (``caface`` weights, else ``train_steps`` steps on the training half) vs pooling at set
    sizes 1, 2, 4 on the held-out half. Says why it is skipped when LFW or the model is missing."""
    from fuseface.data.photo_sets import identity_photos, identity_split, split_source, write_split
    from fuseface.data.transforms import SurveillanceDegradation
    from fuseface.experiments.set_fusion_real import evaluate_store, markdown
    from fuseface.infer.extract_features import extract_features, load_backbone_meta
    from fuseface.infer.pretrained import is_fetched

    header = "## Set fusion on real faces (LFW, dlib ResNet)\n\n"
    root = Path(lfw) if lfw else None
    if root is not None and (root / "lfw-deepfunneled").is_dir():
        root = root / "lfw-deepfunneled"
    if root is None or not root.is_dir():
        return header + f"Skipped: no LFW folder (given: {lfw}); pass `--lfw PATH` (one sub-folder per person).\n"
    if model == "dlib-resnet" and not is_fetched(model):
        return header + "Skipped: the real model is not fetched; run `fuseface models fetch dlib-resnet` once.\n"
    out = Path(out_dir)
    people = identity_photos(root)
    chosen = sorted(p for p in people if len(people[p]) >= 8)[:identities]
    split = identity_split({p: people[p] for p in chosen}, min_photos=8, max_photos=8, seed=seed)
    split_path = write_split(out / "split.json", split)
    journal = Path(landmarks) if landmarks else out / "mean_landmarks.jsonl"
    if not landmarks:
        rec = {
            "source": people[chosen[0]][0],
            "status": "ok",
            "faces": [{"score": float("nan"), "landmarks": LFW_MEAN_LANDMARKS}],
        }
        journal.write_text(json.dumps(rec) + "\n")
    net, meta = load_backbone_meta(model)
    source, store_meta = split_source(split, root, journal, meta.template, meta.input_size)
    if not landmarks:
        store_meta["landmark_source"] = ["lfw_mean"] * len(source)
    store = extract_features(
        net,
        source,
        out / "store",
        augment_copies=2,
        degradation=SurveillanceDegradation(),
        seed=seed,
        channel_order=meta.channel_order,
        input_size=meta.input_size,
        **meta.pixel_norm(),
        shard_size=256,
        progress=progress,
        meta={**store_meta, "split": str(split_path), "model": model},
    )
    assert store is not None
    weights = Path(caface) if caface else None
    if weights is None:
        from fuseface.train.config import config_from_dict
        from fuseface.train.trainer import train

        cfg = config_from_dict(
            {
                "task": "caface",
                "out_dir": str(out / "caface"),
                "caface": {"store": str(out / "store"), "set_size": 16, "seed": seed},
                "optim": {"name": "adamw", "lr": 1e-3, "weight_decay": 5e-4, "clip_grad_norm": 0.0},
                "schedule": {"name": "constant"},
                "train": {"steps": train_steps, "batch_size": 16, "num_threads": 1, "seed": seed},
                "data": {"num_workers": 0},
                "checkpoint": {"every": 0},
                "log": {"every": 10, "tensorboard": False, "progress": progress},
            }
        )
        weights = Path(train(cfg).model_path)
    result = evaluate_store(
        out / "store",
        weights,
        sizes=(1, 2, 4),
        repetitions=3,
        bootstrap=100,
        min_identities=5,
        seed=seed,
        progress=progress,
    )
    note = (
        f"{len(split['train'])} training / {len(split['test'])} held-out people, 8 photos each, clean + 2 "
        f"degraded copies; CAFace weights: `{weights}`. Full benchmark: `benchmarks/set_fusion_real.py`.\n\n"
    )
    return header + note + markdown(result)
