"""``fuseface demo``: synthetic faces -> a small MSConv backbone trained on CPU -> verification report.

The whole pipeline on embedded data, in a few minutes on 2 CPU cores:

1. **Data** (:mod:`fuseface.data.synthetic`): training identities ``0..N-1`` rendered straight into
   a RecordIO folder, and a verification set of pairs on held-out identities (ids >= 10_000), both
   cached under ``out_dir/data`` (keyed by their settings, so a second run skips generation).
2. **Backbone**: a small IResNet (one block per stage, 128-d embedding) with MSConv replacing the
   strided 3x3 convolution in stages 3 and 4 (``conv="msconv", stages=(3, 4)``). The images are
   rendered at 64x64 (``input_size=64``) to fit the CPU budget. If the MSConv module cannot be
   imported the plain IResNet is trained and the report says so.
3. **Training**: :func:`train_backbone` is the single switch point. It uses the training engine
   (``fuseface.train.trainer.train``) when it is importable, and otherwise a self-contained loop
   (:func:`_train_builtin`: CosFace margin on a normalised classifier, SGD with warm-up and cosine
   decay). The report names the path that ran.
4. **Evaluation**: embeddings with flip-sum (insightface ``eval/verification.py``), then the 10-fold
   protocol of :func:`fuseface.eval.verification.evaluate` (a labelled best-threshold fallback if
   the evaluation module is missing), ROC curve and AUC.
5. **Report**: ``report.md`` with the results table, ``loss.png``, ``roc.png`` and ``samples.png``
   (a grid of synthetic faces with their landmarks). :func:`_set_fusion_section` adds the set-fusion
   (CAFace) table when :mod:`fuseface.experiments.set_fusion` exists.

The figures are small-scale and on synthetic data: they show the pipeline works and learns; they
are not comparable with any paper's numbers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import json
import math
import os
import platform
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

HELDOUT_FIRST_IDENTITY = 10_000


@dataclass(frozen=True)
class DemoSettings:
    """Everything that defines a demo run (the data cache is keyed by the data fields)."""

    seed: int = 0
    image_size: int = 48
    num_identities: int = 300
    images_per_identity: int = 16
    eval_identities: int = 200
    eval_images_per_identity: int = 8
    eval_pairs: int = 3000
    layers: tuple[int, int, int, int] = (1, 1, 1, 1)
    num_features: int = 128
    conv: str | None = "msconv"
    conv_stages: tuple[int, ...] = (3, 4)
    steps: int = 260
    batch_size: int = 48
    lr: float = 0.1
    weight_decay: float = 5e-4
    warmup_fraction: float = 0.05
    margin_s: float = 32.0
    margin_m: float = 0.20
    eval_batch_size: int = 128
    nuisance: str = "default"

    def data_key(self, kind: str) -> str:
        fields = (
            ("train", self.seed, self.image_size, self.num_identities, self.images_per_identity, self.nuisance)
            if kind == "train"
            else (
                "pairs",
                self.seed,
                self.image_size,
                self.eval_identities,
                self.eval_images_per_identity,
                self.eval_pairs,
                self.nuisance,
            )
        )
        return hashlib.sha1(repr(fields).encode()).hexdigest()[:10]


FULL = DemoSettings()
QUICK = DemoSettings(
    image_size=32,
    num_identities=40,
    images_per_identity=6,
    eval_identities=24,
    eval_images_per_identity=4,
    eval_pairs=200,
    steps=12,
    batch_size=16,
)


@dataclass
class TrainOutcome:
    """What training produced, whichever path ran."""

    model: nn.Module
    losses: list[float]
    seconds: float
    images_per_second: float
    engine: str  # "fuseface.train.trainer" or "builtin loop"
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------- data
def prepare_data(settings: DemoSettings, data_dir: Path, progress: bool = True) -> tuple[Path, Path]:
    """Generate (or reuse) the training RecordIO folder and the held-out verification pairs."""
    from fuseface.data.synthetic import generate_recordio, verification_pairs

    train_dir = data_dir / f"train-{settings.data_key('train')}"
    if not (train_dir / "synthetic.json").is_file():
        generate_recordio(
            train_dir,
            settings.num_identities,
            settings.images_per_identity,
            seed=settings.seed,
            first_identity=0,
            nuisance=settings.nuisance,
            progress=progress,
            image_size=settings.image_size,
        )
    pairs_path = data_dir / f"pairs-{settings.data_key('pairs')}.npz"
    if not pairs_path.is_file():
        images, issame = verification_pairs(
            settings.eval_identities,
            settings.eval_images_per_identity,
            settings.eval_pairs,
            seed=settings.seed,
            first_identity=HELDOUT_FIRST_IDENTITY,
            nuisance=settings.nuisance,
            image_size=settings.image_size,
            progress=progress,
        )
        tmp = pairs_path.with_suffix(".tmp.npz")
        np.savez(tmp, images=images, issame=issame)
        os.replace(tmp, pairs_path)
    return train_dir, pairs_path


def load_pairs(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path) as data:
        return data["images"], data["issame"].astype(bool)


def load_training_arrays(train_dir: Path, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """All training images (N, S, S, 3) uint8 RGB and labels (N,) from the RecordIO folder."""
    from tqdm.auto import tqdm

    from fuseface.data.recordio import RecordIODataset

    dataset = RecordIODataset(train_dir)
    first, _ = dataset.load(0)
    images = np.zeros((len(dataset), *first.shape), np.uint8)
    labels = np.zeros(len(dataset), np.int64)
    for i in tqdm(range(len(dataset)), desc="decode", unit="img", disable=not progress, leave=False):
        images[i], labels[i] = dataset.load(i)
    return images, labels


def to_input(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) RGB -> float (N, 3, H, W) normalised (x / 255 - 0.5) / 0.5 (insightface)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    return x.div_(127.5).sub_(1.0)


# ---------------------------------------------------------------------------- model
def backbone_kwargs(settings: DemoSettings) -> tuple[dict[str, Any], list[str]]:
    """IResNet keyword arguments for the demo, with MSConv when its module imports."""
    kwargs: dict[str, Any] = {"num_features": settings.num_features, "input_size": settings.image_size}
    notes: list[str] = []
    if settings.conv == "msconv":
        try:
            importlib.import_module("fuseface.nn.layers.msconv")
        except Exception as exc:  # the module is optional for the demo: say so and train plain
            notes.append(f"MSConv not available ({type(exc).__name__}: {exc}); trained the plain IResNet")
        else:
            kwargs.update(conv="msconv", stages=list(settings.conv_stages))
    elif settings.conv:
        kwargs.update(conv=settings.conv, stages=list(settings.conv_stages))
    return kwargs, notes


def build_backbone(settings: DemoSettings) -> tuple[nn.Module, dict[str, Any], list[str]]:
    from fuseface.nn.backbones.iresnet import IResNet

    kwargs, notes = backbone_kwargs(settings)
    torch.manual_seed(settings.seed)
    return IResNet(settings.layers, **kwargs), kwargs, notes


# ---------------------------------------------------------------------------- training
def train_backbone(
    settings: DemoSettings, train_dir: Path, out_dir: Path, progress: bool = True, engine: str = "auto"
) -> TrainOutcome:
    """The one switch between the training engine and the built-in loop.

    ``engine="auto"`` uses ``fuseface.train.trainer`` when it can be imported, ``"builtin"`` forces
    the loop in this file, ``"engine"`` requires the engine.
    """
    if engine not in ("auto", "builtin", "engine"):
        raise ValueError(f"engine must be auto, builtin or engine, got {engine!r}")
    use_engine = engine == "engine" or (
        engine == "auto" and importlib.util.find_spec("fuseface.train.trainer") is not None
    )
    if use_engine:
        return _train_with_engine(settings, train_dir, out_dir, progress)
    return _train_builtin(settings, train_dir, progress)


def _lr_at(step: int, settings: DemoSettings) -> float:
    """Linear warm-up then cosine decay to 0, stepped per iteration."""
    warm = max(1, int(settings.steps * settings.warmup_fraction))
    if step < warm:
        return settings.lr * (step + 1) / warm
    t = (step - warm) / max(1, settings.steps - warm)
    return settings.lr * 0.5 * (1.0 + math.cos(math.pi * t))


class CosFaceClassifier(nn.Module):
    """Normalised class centres with the CosFace margin: s * (cos(theta_y) - m) on the target."""

    def __init__(self, num_features: int, num_classes: int, s: float, m: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_classes, num_features) * 0.01)
        self.s, self.m = s, m

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cos = nn.functional.linear(nn.functional.normalize(embeddings), nn.functional.normalize(self.weight))
        margin = torch.zeros_like(cos).scatter_(1, labels[:, None], self.m)
        return nn.functional.cross_entropy(self.s * (cos - margin), labels)


def _train_builtin(settings: DemoSettings, train_dir: Path, progress: bool) -> TrainOutcome:
    """Self-contained training loop (used until / unless the training engine is available)."""
    from tqdm.auto import tqdm

    images, labels = load_training_arrays(train_dir, progress)
    model, _, notes = build_backbone(settings)
    head = CosFaceClassifier(settings.num_features, int(labels.max()) + 1, settings.margin_s, settings.margin_m)
    params = [p for p in model.parameters() if p.requires_grad] + list(head.parameters())
    optimizer = torch.optim.SGD(params, lr=settings.lr, momentum=0.9, weight_decay=settings.weight_decay)
    rng = np.random.default_rng(settings.seed)
    losses: list[float] = []
    model.train()
    start = time.perf_counter()
    bar = tqdm(range(settings.steps), desc="train", unit="step", disable=not progress)
    for step in bar:
        idx = rng.integers(0, len(images), settings.batch_size)
        batch = images[idx]
        flip = rng.random(settings.batch_size) < 0.5
        batch[flip] = batch[flip, :, ::-1]
        x = to_input(batch)
        y = torch.from_numpy(labels[idx])
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, settings)
        loss = head(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        losses.append(float(loss.detach()))
        if step % 10 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-10:]):.3f}", lr=f"{optimizer.param_groups[0]['lr']:.3f}")
    seconds = time.perf_counter() - start
    model.eval()
    return TrainOutcome(model, losses, seconds, settings.steps * settings.batch_size / seconds, "builtin loop", notes)


DEMO_ARCH = "ir_demo"


def demo_iresnet(**kwargs: Any) -> nn.Module:
    """The demo backbone as a registry factory: IResNet with one block per stage (``ir_demo``)."""
    from fuseface.nn.backbones.iresnet import IResNet

    return IResNet(FULL.layers, **kwargs)


def engine_config(settings: DemoSettings, train_dir: Path, run_dir: Path, progress: bool) -> Any:
    """The training-engine configuration equivalent to :func:`_train_builtin` (same loss, optimiser,
    schedule, batch and steps; the engine adds its seeded sampler, checkpoints and JSONL log)."""
    from fuseface.train.config import config_from_dict

    if tuple(settings.layers) != tuple(FULL.layers):
        raise ValueError(f"the engine path builds {DEMO_ARCH} = IResNet{FULL.layers}; got layers={settings.layers}")
    kwargs, _ = backbone_kwargs(settings)
    return config_from_dict(
        {
            "out_dir": str(run_dir),
            "model": {"name": DEMO_ARCH, "kwargs": kwargs},
            "data": {
                "kind": "recordio",
                "root": str(train_dir),
                "image_size": settings.image_size,
                "num_workers": 0,
                "flip": True,
            },
            "loss": {"name": "cosface", "s": settings.margin_s, "m3": settings.margin_m},
            "optim": {
                "name": "sgd",
                "lr": settings.lr,
                "momentum": 0.9,
                "weight_decay": settings.weight_decay,
                "clip_grad_norm": 5.0,
            },
            "schedule": {"name": "cosine", "warmup_steps": max(1, int(settings.steps * settings.warmup_fraction))},
            "train": {
                "steps": settings.steps,
                "batch_size": settings.batch_size,
                "seed": settings.seed,
                "device": "cpu",
            },
            "checkpoint": {"every": 0, "keep": 1},
            "log": {"every": max(1, settings.steps // 10), "progress": progress, "tensorboard": False},
        },
        source="fuseface demo",
    )


def _train_with_engine(settings: DemoSettings, train_dir: Path, out_dir: Path, progress: bool) -> TrainOutcome:
    """Train through ``fuseface.train.trainer.train`` on the cached RecordIO folder.

    The demo backbone is the registry's ``ir_demo`` (the exported model file names that
    architecture, so ``fuseface.load`` rebuilds it anywhere).
    """
    import shutil

    from fuseface.infer.model_file import load_model
    from fuseface.train.trainer import train

    _, notes = backbone_kwargs(settings)
    run_dir = out_dir / "train"
    if run_dir.exists():  # a fresh run every time (the data stays cached)
        shutil.rmtree(run_dir)
    cfg = engine_config(settings, train_dir, run_dir, progress)
    start = time.perf_counter()
    result = train(cfg)
    seconds = time.perf_counter() - start
    if result.model_path is None:
        raise RuntimeError(f"the training engine exported no model under {run_dir}")
    model, _ = load_model(result.model_path)
    losses = [float(h["loss"]) for h in result.history if "loss" in h]
    notes.append(f"trained by fuseface.train.trainer; run folder {run_dir} (config.yaml, metrics, model file)")
    return TrainOutcome(
        model, losses, seconds, settings.steps * settings.batch_size / seconds, "fuseface.train.trainer", notes
    )


# ---------------------------------------------------------------------------- evaluation
@torch.inference_mode()
def embed(model: nn.Module, images: np.ndarray, batch_size: int = 128, progress: bool = True) -> np.ndarray:
    """Flip-sum embeddings (insightface eval/verification.py: emb(x) + emb(flip(x))), un-normalised.

    The pair images repeat (each held-out image appears in several pairs), so every distinct image
    is embedded once and the rows are gathered back.
    """
    from tqdm.auto import tqdm

    model.eval()
    flat = np.ascontiguousarray(images).reshape(len(images), -1)
    unique, inverse = np.unique(flat, axis=0, return_inverse=True)
    unique = unique.reshape(-1, *images.shape[1:])
    out = []
    for i in tqdm(range(0, len(unique), batch_size), desc="embed", unit="batch", disable=not progress, leave=False):
        x = to_input(unique[i : i + batch_size])
        out.append((model(x) + model(torch.flip(x, dims=[3]))).float().numpy())
    return np.concatenate(out)[inverse.reshape(-1)]


def _fallback_verification(emb1: np.ndarray, emb2: np.ndarray, issame: np.ndarray, nfolds: int = 10) -> dict:
    """Labelled fallback: 10-fold accuracy with the best cosine threshold chosen on the other folds."""
    a = emb1 / np.linalg.norm(emb1, axis=1, keepdims=True)
    b = emb2 / np.linalg.norm(emb2, axis=1, keepdims=True)
    sim = np.sum(a * b, 1)
    folds = np.array_split(np.arange(len(sim)), nfolds)
    accs = []
    for k, test in enumerate(folds):
        train = np.concatenate([f for j, f in enumerate(folds) if j != k])
        cands = np.unique(sim[train])
        best = max(cands, key=lambda t: np.mean((sim[train] >= t) == issame[train]))
        accs.append(np.mean((sim[test] >= best) == issame[test]))
    return {
        "accuracy_mean": float(np.mean(accs)),
        "accuracy_std": float(np.std(accs)),
        "val": float("nan"),
        "far": float("nan"),
    }


def evaluate_pairs(emb: np.ndarray, issame: np.ndarray) -> tuple[dict[str, Any], str]:
    """10-fold verification metrics of interleaved pair embeddings; returns (metrics, metric source)."""
    emb1, emb2 = emb[0::2], emb[1::2]
    try:
        from fuseface.eval.verification import evaluate
    except ImportError:
        return _fallback_verification(emb1, emb2, issame), "fallback best-threshold accuracy (eval module missing)"
    return dict(evaluate(emb1, emb2, issame, nfolds=10)), "fuseface.eval.verification.evaluate (10-fold)"


def cosine_scores(emb: np.ndarray) -> np.ndarray:
    e = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    return np.sum(e[0::2] * e[1::2], 1)


# ---------------------------------------------------------------------------- set fusion hook
def _set_fusion_section(model: nn.Module, settings: DemoSettings, out_dir: Path, quick: bool, progress: bool) -> str:
    """HOOK for the CAFace helper: the set-fusion part of the demo (issue 6, item 6).

    Calls ``fuseface.experiments.set_fusion.run(backbone=model, out_dir=out_dir / "set_fusion",
    image_size=..., seed=..., quick=..., progress=...)`` when that module exists. ``run`` is expected
    to return a markdown string (a table of verification on sets: CAFace against average and
    norm-weighted pooling for set sizes 1..64) or a mapping with a ``"markdown"`` entry. Any
    failure is reported in the section, never hidden.
    """
    header = "## Set fusion (CAFace vs. pooling on synthetic probe sets)\n\n"
    if importlib.util.find_spec("fuseface.experiments.set_fusion") is None:
        return header + "Set fusion is not available yet (`fuseface.experiments.set_fusion` is missing).\n"
    try:
        module = importlib.import_module("fuseface.experiments.set_fusion")
        result = module.run(
            backbone=model,
            out_dir=out_dir / "set_fusion",
            image_size=settings.image_size,
            seed=settings.seed,
            quick=quick,
            progress=progress,
        )
    except Exception as exc:  # report, do not hide: the rest of the demo stays valid
        tb = traceback.format_exc(limit=3)
        return header + f"Set fusion failed: `{type(exc).__name__}: {exc}`\n\n```\n{tb}```\n"
    text = result.get("markdown", "") if isinstance(result, dict) else str(result)
    figure = result.get("figure") if isinstance(result, dict) else None
    if figure and Path(figure).is_file():
        text = text.rstrip() + f"\n\n![set fusion]({Path(os.path.relpath(figure, out_dir)).as_posix()})"
    return header + text.rstrip() + "\n"


# ---------------------------------------------------------------------------- plots
def _plot_loss(losses: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    steps = np.arange(1, len(losses) + 1)
    ax.plot(steps, losses, lw=0.6, alpha=0.4, label="per step")
    w = max(1, len(losses) // 25)
    if len(losses) >= w:
        smooth = np.convolve(losses, np.ones(w) / w, mode="valid")
        ax.plot(steps[w - 1 :], smooth, lw=1.8, label=f"mean of {w}")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (CosFace)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_roc(scores: np.ndarray, issame: np.ndarray, path: Path) -> float:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import auc, roc_curve

    fpr, tpr, _ = roc_curve(issame.astype(int), scores)
    area = float(auc(fpr, tpr))
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot(fpr, tpr, lw=2, label=f"AUC = {area:.3f}")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="chance")
    ax.set_xlabel("false accept rate")
    ax.set_ylabel("true accept rate")
    ax.set_title("held-out synthetic identities")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return area


def _sample_grid(settings: DemoSettings, path: Path, identities: int = 6, per_identity: int = 8) -> None:
    """Rows = identities, column 0 = clean face, then default-nuisance variations; landmarks dotted."""
    import cv2

    from fuseface.data.synthetic import SyntheticFaces

    faces = SyntheticFaces(seed=settings.seed, image_size=112, preset=settings.nuisance)
    rows = []
    for ident in range(identities):
        tiles = []
        for v in range(per_identity):
            img, lm = faces.render(ident, v, preset="none" if v == 0 else None)
            img = img.copy()
            for x, y in lm:
                cv2.circle(img, (round(x), round(y)), 2, (0, 255, 0), -1, cv2.LINE_AA)
            tiles.append(img)
        rows.append(np.concatenate(tiles, 1))
    grid = np.concatenate(rows, 0)
    cv2.imwrite(str(path), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))


# ---------------------------------------------------------------------------- report
def _fmt(v: Any, pct: bool = False) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{100 * v:.2f} %" if pct else f"{v:.4f}"


def export_model_file(model: nn.Module, settings: DemoSettings, path: Path) -> Path | None:
    """Save the trained demo backbone as a model file (``fuseface.load`` rebuilds it from the
    registry's ``ir_demo``); ``None`` when custom settings build another depth."""
    from fuseface.infer.model_file import ModelMeta, save_model

    if tuple(settings.layers) != tuple(FULL.layers):
        return None
    kwargs, _ = backbone_kwargs(settings)
    meta = ModelMeta(
        arch=DEMO_ARCH,
        arch_kwargs=kwargs,
        input_size=settings.image_size,
        extra={"trained_by": "fuseface demo", "data": "synthetic faces"},
    )
    return save_model(path, model, meta)


def _write_report(out_dir: Path, results: dict[str, Any], set_fusion_md: str) -> Path:
    r = results
    lines = [
        "# fuseface demo report",
        "",
        "Synthetic faces -> small IResNet" + (" with MSConv" if r["msconv"] else "") + " trained on CPU -> "
        "10-fold verification on held-out synthetic identities (ids >= 10000).",
        "Small-scale figures on synthetic data: they show the pipeline works and learns; they are not "
        "comparable with paper numbers.",
        "",
        "## Results",
        "",
        "| quantity | value |",
        "|---|---|",
        f"| verification accuracy (10-fold mean ± std) | {_fmt(r['accuracy'], True)} "
        f"± {_fmt(r['accuracy_std'], True)} |",
        f"| ROC AUC | {_fmt(r['auc'])} |",
        f"| same network untrained (random init), accuracy | {_fmt(r['untrained_accuracy'], True)} |",
        f"| TAR @ FAR=1e-3 (VAL) | {_fmt(r.get('val'), True)} |",
        f"| verification pairs (genuine / impostor) | {r['num_pairs']} "
        f"({r['num_genuine']} / {r['num_pairs'] - r['num_genuine']}) |",
        f"| training identities x images | {r['num_identities']} x {r['images_per_identity']} |",
        f"| held-out identities x images | {r['eval_identities']} x {r['eval_images_per_identity']} |",
        f"| image size | {r['image_size']} x {r['image_size']} |",
        f"| backbone | {r['backbone']} |",
        f"| parameters | {r['params'] / 1e6:.2f} M |",
        f"| training | {r['steps']} steps x batch {r['batch_size']}, {r['engine']} |",
        f"| training time | {r['train_seconds']:.1f} s ({r['train_images_per_second']:.1f} images/s) |",
        f"| total wall time | {r['wall_seconds']:.1f} s |",
        f"| final training loss (mean of last 20 steps) | {r['final_loss']:.3f} (first 20: {r['first_loss']:.3f}) |",
        f"| metric | {r['metric_source']} |",
        f"| machine | {r['machine']} |",
        "",
    ]
    if r["notes"]:
        lines += ["Notes:", "", *[f"- {n}" for n in r["notes"]], ""]
    if r.get("model_file"):
        m = r["model_file"]
        lines += [
            "## Try the trained model",
            "",
            "```bash",
            "fuseface models fetch mtcnn   # once: the face detector's weights (pip, no install)",
            f"fuseface compare ../shared/data/lfw/lfw-deepfunneled/Aaron_Peirsol/Aaron_Peirsol_0001.jpg "
            f"../shared/data/lfw/lfw-deepfunneled/Aaron_Peirsol/Aaron_Peirsol_0002.jpg -m {m}",
            "fuseface models info ir_demo --conv msconv --stages 3,4",
            f"fuseface export {m} --onnx {Path(m).with_suffix('.onnx')}",
            "```",
            "",
            "The model learned synthetic faces at 48x48, so its verdicts on real photos mean little; the "
            "commands show the path from a trained model file to answers.",
            "",
        ]
    lines += [
        "## Plots",
        "",
        "![training loss](loss.png)",
        "",
        "![ROC](roc.png)",
        "",
        "Synthetic faces (rows: identities; first column clean, then mixed-quality variations; green: the "
        "5 landmarks known by construction):",
        "",
        "![samples](samples.png)",
        "",
        set_fusion_md,
    ]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines))
    (out_dir / "results.json").write_text(json.dumps(r, indent=2, default=float) + "\n")
    return path


def _print_table(results: dict[str, Any], report: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="fuseface demo")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    table.add_row("verification accuracy", f"{100 * results['accuracy']:.2f} % ± {100 * results['accuracy_std']:.2f}")
    table.add_row("ROC AUC", f"{results['auc']:.4f}")
    table.add_row("untrained network accuracy", f"{100 * results['untrained_accuracy']:.2f} %")
    table.add_row("backbone", results["backbone"])
    table.add_row("training", f"{results['steps']} steps, {results['engine']}")
    table.add_row("wall time", f"{results['wall_seconds']:.1f} s")
    console = Console()
    console.print(table)
    console.print(f"report: {report}")


def run_demo(
    out_dir: str | Path,
    quick: bool = False,
    progress: bool = True,
    engine: str = "auto",
    settings: DemoSettings | None = None,
    set_fusion: bool = True,
) -> Path:
    """Run the demo end to end and return the path of ``report.md`` (see the module docstring).

    Args:
        out_dir: output folder; ``out_dir/data`` caches the generated data between runs.
        quick: tiny settings (:data:`QUICK`) for smoke tests.
        progress: progress bars and the final table.
        engine: ``auto`` / ``engine`` / ``builtin``, see :func:`train_backbone`.
        settings: explicit settings (overrides ``quick``).
        set_fusion: run the set-fusion section (:func:`_set_fusion_section`) when available.
    """
    start = time.perf_counter()
    settings = settings or (QUICK if quick else FULL)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    train_dir, pairs_path = prepare_data(settings, out / "data", progress)
    outcome = train_backbone(settings, train_dir, out, progress, engine=engine)
    model_file = export_model_file(outcome.model, settings, out / "model.safetensors")
    images, issame = load_pairs(pairs_path)
    emb = embed(outcome.model, images, settings.eval_batch_size, progress)
    metrics, metric_source = evaluate_pairs(emb, issame)
    # The same network at its initialisation: how much of the accuracy is learned, not colour cues.
    untrained, _, _ = build_backbone(settings)
    untrained_metrics, _ = evaluate_pairs(embed(untrained, images, settings.eval_batch_size, progress), issame)
    scores = cosine_scores(emb)
    _plot_loss(outcome.losses, out / "loss.png")
    area = _plot_roc(scores, issame, out / "roc.png")
    _sample_grid(settings, out / "samples.png")
    set_fusion_md = (
        _set_fusion_section(outcome.model, settings, out, quick, progress)
        if set_fusion
        else "## Set fusion\n\nSkipped (`set_fusion=False` / `--no-set-fusion`).\n"
    )

    kwargs, _ = backbone_kwargs(settings)
    msconv = kwargs.get("conv") == "msconv"
    backbone = f"IResNet{tuple(settings.layers)}, {settings.num_features}-d" + (
        f", MSConv in stages {tuple(settings.conv_stages)}" if msconv else ", plain 3x3 convolutions"
    )
    losses = outcome.losses
    results: dict[str, Any] = {
        "accuracy": float(metrics["accuracy_mean"]),
        "accuracy_std": float(metrics["accuracy_std"]),
        "val": float(metrics.get("val", float("nan"))),
        "far": float(metrics.get("far", float("nan"))),
        "auc": area,
        "untrained_accuracy": float(untrained_metrics["accuracy_mean"]),
        "num_pairs": len(issame),
        "num_genuine": int(issame.sum()),
        "num_identities": settings.num_identities,
        "images_per_identity": settings.images_per_identity,
        "eval_identities": settings.eval_identities,
        "eval_images_per_identity": settings.eval_images_per_identity,
        "image_size": settings.image_size,
        "backbone": backbone,
        "msconv": msconv,
        "params": sum(p.numel() for p in outcome.model.parameters()),
        "steps": settings.steps,
        "batch_size": settings.batch_size,
        "engine": outcome.engine,
        "train_seconds": outcome.seconds,
        "train_images_per_second": outcome.images_per_second,
        "final_loss": float(np.mean(losses[-20:])),
        "first_loss": float(np.mean(losses[:20])),
        "metric_source": metric_source,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads",
        "notes": outcome.notes,
        "settings": dataclasses.asdict(settings),
        "quick": quick,
        "model_file": str(model_file) if model_file else None,
    }
    results["wall_seconds"] = time.perf_counter() - start
    report = _write_report(out, results, set_fusion_md)
    if progress:
        _print_table(results, report)
    return report
