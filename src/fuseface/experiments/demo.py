"""``fuseface demo``: synthetic faces -> a small MSConv backbone trained on CPU -> verification report.

The demo is a client of the library; every step is a library call:

1. **Data** (:mod:`fuseface.data.synthetic`): training identities ``0..N-1`` rendered straight into
   a RecordIO folder, and a verification set of pairs on held-out identities (ids >= 10_000), both
   cached under ``out_dir/data`` (keyed by their settings, so a second run skips generation).
2. **Training** (:func:`fuseface.train.trainer.train`): the registry's ``ir_demo`` (IResNet with
   one block per stage, 128-d embedding) with MSConv replacing the 3x3 convolutions of stages 3 and
   4 (``conv="msconv", stages=(3, 4)``), CosFace margin, SGD with warm-up and cosine decay, all
   stated in :func:`engine_config`. The engine writes the run folder and the model file.
3. **Model**: the model file is loaded as a :class:`fuseface.infer.embedder.FaceModel`; the demo
   refuses to go on when the configured MSConv is not in the loaded network
   (:func:`check_backbone`), and the report names the backbone by what the network contains.
4. **Evaluation**: flip-sum embeddings (:meth:`FaceModel.embed_aligned`), the 10-fold protocol of
   :func:`fuseface.eval.verification.evaluate_interleaved`, the ROC of :func:`fuseface.eval.roc.roc_curve`
   and a result record written by :func:`fuseface.eval.report.write_result`; the same network at
   its random initialisation is evaluated the same way, as a baseline.
5. **Report**: ``report.md`` with the results table and a verdict, ``loss.png``, ``roc.png``
   (:func:`fuseface.eval.report.plot_roc`) and ``samples.png`` (synthetic faces with their
   landmarks). The set-fusion section (:func:`set_fusion_section`) is a separate step of the flow.

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
import shutil
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fuseface.nn.backbones.iresnet import DEMO_LAYERS
from fuseface.nn.backbones.iresnet import ir_demo as demo_iresnet  # the registry's ``ir_demo`` factory

__all__ = ["FULL", "QUICK", "DemoSettings", "demo_iresnet", "run_demo"]

HELDOUT_FIRST_IDENTITY = 10_000
DEMO_ARCH = "ir_demo"


@dataclass(frozen=True)
class DemoSettings:
    """Everything that defines a demo run (the data cache is keyed by the data fields)."""

    seed: int = 0
    image_size: int = 32
    num_identities: int = 200
    images_per_identity: int = 12
    eval_identities: int = 150
    eval_images_per_identity: int = 6
    eval_pairs: int = 2000
    num_features: int = 128
    conv: str | None = "msconv"
    conv_stages: tuple[int, ...] = (3, 4)
    steps: int = 200
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

    def backbone_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``create_backbone("ir_demo", ...)`` for these settings."""
        kwargs: dict[str, Any] = {"num_features": self.num_features, "input_size": self.image_size}
        if self.conv:
            kwargs.update(conv=self.conv, stages=list(self.conv_stages))
        return kwargs


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
    """What the training engine produced."""

    model_path: Path
    losses: list[float]
    seconds: float
    images_per_second: float
    run_dir: Path


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
    """The cached pair images (2P, S, S, 3) uint8 RGB, interleaved, and their labels (P,)."""
    with np.load(path) as data:
        return data["images"], data["issame"].astype(bool)


# ---------------------------------------------------------------------------- training
def engine_config(settings: DemoSettings, train_dir: Path, run_dir: Path, progress: bool) -> Any:
    """The training-engine configuration of the demo (loss, optimiser, schedule, batch and steps)."""
    from fuseface.train.config import config_from_dict

    return config_from_dict(
        {
            "out_dir": str(run_dir),
            "model": {"name": DEMO_ARCH, "kwargs": settings.backbone_kwargs()},
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


def train_backbone(settings: DemoSettings, train_dir: Path, out_dir: Path, progress: bool = True) -> TrainOutcome:
    """Train through :func:`fuseface.train.trainer.train` into a fresh ``out_dir/train`` run folder."""
    from fuseface.train.trainer import train

    run_dir = out_dir / "train"
    if run_dir.exists():  # a fresh run every time (the data stays cached)
        shutil.rmtree(run_dir)
    cfg = engine_config(settings, train_dir, run_dir, progress)
    start = time.perf_counter()
    result = train(cfg)
    seconds = time.perf_counter() - start
    if result.model_path is None:
        raise RuntimeError(f"the training engine exported no model under {run_dir}")
    losses = [float(h["loss"]) for h in result.history if "loss" in h]
    return TrainOutcome(
        Path(result.model_path), losses, seconds, settings.steps * settings.batch_size / seconds, run_dir
    )


# ---------------------------------------------------------------------------- model
def check_backbone(net: nn.Module, settings: DemoSettings) -> str:
    """Describe the trained network by what it contains; raise when the configured conv is missing.

    With ``conv="msconv"`` the network must hold :class:`fuseface.nn.layers.msconv.MSConv` modules.
    """
    from fuseface.nn.layers.msconv import MSConv

    count = sum(isinstance(m, MSConv) for m in net.modules())
    if settings.conv == "msconv" and count == 0:
        raise RuntimeError(f"{DEMO_ARCH} was configured with MSConv but the trained network holds none")
    params = sum(p.numel() for p in net.parameters())
    conv = f"{count} MSConv modules in stages {tuple(settings.conv_stages)}" if count else "plain 3x3 convolutions"
    return f"{DEMO_ARCH} = IResNet{DEMO_LAYERS}, {settings.num_features}-d, {conv}, {params / 1e6:.2f} M parameters"


def untrained_model(face: Any, settings: DemoSettings) -> Any:
    """The same architecture at its seeded random initialisation, fed like the trained one."""
    import fuseface
    from fuseface.infer.embedder import FaceModel

    torch.manual_seed(settings.seed)
    return FaceModel(fuseface.create_backbone(DEMO_ARCH, **settings.backbone_kwargs()), face.meta)


# ---------------------------------------------------------------------------- evaluation
def embed_pairs(face: Any, images: np.ndarray, batch_size: int = 128) -> np.ndarray:
    """Flip-sum embeddings of the interleaved pair images, each distinct image embedded once."""
    flat = np.ascontiguousarray(images).reshape(len(images), -1)
    unique, inverse = np.unique(flat, axis=0, return_inverse=True)
    emb, _ = face.embed_aligned(unique.reshape(-1, *images.shape[1:]), batch_size=batch_size, flip=True)
    return emb[inverse.reshape(-1)]


def verify(embeddings: np.ndarray, issame: np.ndarray) -> dict[str, Any]:
    """10-fold metrics, ROC and AUC of interleaved pair embeddings."""
    from fuseface.eval.roc import auc, roc_curve
    from fuseface.eval.verification import evaluate_interleaved
    from fuseface.ops import l2_normalize

    unit = l2_normalize(embeddings)
    scores = np.sum(unit[0::2] * unit[1::2], axis=1)
    fpr, tpr, _ = roc_curve(issame, scores)
    metrics = dict(evaluate_interleaved(embeddings, issame, nfolds=10))
    return {**metrics, "auc": auc(fpr, tpr), "fpr": fpr, "tpr": tpr}


# ---------------------------------------------------------------------------- set fusion
def set_fusion_section(model: nn.Module, settings: DemoSettings, out_dir: Path, quick: bool, progress: bool) -> str:
    """The set-fusion part of the demo, as markdown.

    Calls ``fuseface.experiments.set_fusion.run(backbone=model, out_dir=out_dir / "set_fusion",
    image_size=..., seed=..., quick=..., progress=...)``, which returns a markdown string (CAFace
    against average and norm-weighted pooling for set sizes 1..64) or a mapping with ``"markdown"``
    and ``"figure"`` entries. A failure is reported in the section, never hidden.
    """
    header = "## Set fusion (CAFace vs. pooling on synthetic probe sets)\n\n"
    if importlib.util.find_spec("fuseface.experiments.set_fusion") is None:
        return header + "Set fusion is not available (`fuseface.experiments.set_fusion` is missing).\n"
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


_set_fusion_section = set_fusion_section  # the former private name


# ---------------------------------------------------------------------------- plots
def _plot_loss(losses: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fuseface.eval.report import save_figure

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
    save_figure(fig, path, dpi=110)


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


def verdict(results: dict[str, Any]) -> str:
    """One sentence: did training learn identity beyond what the untrained network already gets?"""
    gain = results["accuracy"] - results["untrained_accuracy"]
    if results["accuracy"] > 0.5 and gain > 0.02:
        return (
            f"the trained backbone verifies held-out identities at {_fmt(results['accuracy'], True)}, "
            f"{100 * gain:.1f} points above the same network untrained: the pipeline learns."
        )
    return (
        f"training did not clearly help ({_fmt(results['accuracy'], True)} trained vs "
        f"{_fmt(results['untrained_accuracy'], True)} untrained); more steps or data are needed."
    )


def _write_report(out_dir: Path, results: dict[str, Any], set_fusion_md: str) -> Path:
    r = results
    lines = [
        "# fuseface demo report",
        "",
        f"Synthetic faces -> {r['backbone']} trained on CPU -> 10-fold verification on held-out synthetic "
        "identities (ids >= 10000).",
        "Small-scale figures on synthetic data: they show the pipeline works and learns; they are not "
        "comparable with paper numbers.",
        "",
        f"**Verdict**: {verdict(r)}",
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
        f"| backbone (trained network) | {r['backbone']} |",
        f"| training | {r['steps']} steps x batch {r['batch_size']}, {r['engine']} (run folder {r['run_dir']}) |",
        f"| training time | {r['train_seconds']:.1f} s ({r['train_images_per_second']:.1f} images/s) |",
        f"| total wall time | {r['wall_seconds']:.1f} s |",
        f"| final training loss (mean of last 20 steps) | {r['final_loss']:.3f} (first 20: {r['first_loss']:.3f}) |",
        f"| metric | {r['metric_source']} |",
        f"| machine | {r['machine']} |",
        "",
    ]
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
        f"The model learned synthetic faces at {r['image_size']}x{r['image_size']}, so its verdicts on real "
        "photos mean little; the commands show the path from a trained model file to answers.",
        "",
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
    console.print(f"verdict: {verdict(results)}")
    console.print(f"report: {report}")


def run_demo(
    out_dir: str | Path,
    quick: bool = False,
    progress: bool = True,
    settings: DemoSettings | None = None,
    set_fusion: bool = True,
) -> Path:
    """Run the demo end to end and return the path of ``report.md`` (see the module docstring).

    Args:
        out_dir: output folder; ``out_dir/data`` caches the generated data between runs.
        quick: tiny settings (:data:`QUICK`) for smoke tests.
        progress: progress bars and the final table.
        settings: explicit settings (overrides ``quick``).
        set_fusion: run the set-fusion section (:func:`set_fusion_section`).
    """
    from fuseface.eval.report import plot_roc, write_result
    from fuseface.infer.embedder import FaceModel

    start = time.perf_counter()
    settings = settings or (QUICK if quick else FULL)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    train_dir, pairs_path = prepare_data(settings, out / "data", progress)
    outcome = train_backbone(settings, train_dir, out, progress)
    model_file = Path(shutil.copyfile(outcome.model_path, out / "model.safetensors"))
    face = FaceModel.from_file(model_file)
    backbone = check_backbone(face.net, settings)

    images, issame = load_pairs(pairs_path)
    trained = verify(embed_pairs(face, images, settings.eval_batch_size), issame)
    untrained = verify(embed_pairs(untrained_model(face, settings), images, settings.eval_batch_size), issame)
    scalar = ("accuracy_mean", "accuracy_std", "val", "val_std", "far", "auc")
    write_result(
        out / "eval",
        "synthetic verification (held-out identities, 10-fold)",
        {"model": str(model_file), "flip": True, "pairs": len(issame)},
        {"trained": {k: trained[k] for k in scalar if k in trained}, "untrained": untrained["accuracy_mean"]},
    )
    _plot_loss(outcome.losses, out / "loss.png")
    plot_roc(
        {
            f"trained (AUC {trained['auc']:.3f})": (trained["fpr"], trained["tpr"]),
            f"untrained (AUC {untrained['auc']:.3f})": (untrained["fpr"], untrained["tpr"]),
        },
        out / "roc.png",
        title="held-out synthetic identities",
    )
    _sample_grid(settings, out / "samples.png")
    set_fusion_md = (
        set_fusion_section(face.net, settings, out, quick, progress)
        if set_fusion
        else "## Set fusion\n\nSkipped (`set_fusion=False` / `--no-set-fusion`).\n"
    )

    losses = outcome.losses
    results: dict[str, Any] = {
        "accuracy": float(trained["accuracy_mean"]),
        "accuracy_std": float(trained["accuracy_std"]),
        "val": float(trained.get("val", float("nan"))),
        "far": float(trained.get("far", float("nan"))),
        "auc": float(trained["auc"]),
        "untrained_accuracy": float(untrained["accuracy_mean"]),
        "num_pairs": len(issame),
        "num_genuine": int(issame.sum()),
        "num_identities": settings.num_identities,
        "images_per_identity": settings.images_per_identity,
        "eval_identities": settings.eval_identities,
        "eval_images_per_identity": settings.eval_images_per_identity,
        "image_size": settings.image_size,
        "backbone": backbone,
        "msconv": "MSConv" in backbone,
        "params": sum(p.numel() for p in face.net.parameters()),
        "steps": settings.steps,
        "batch_size": settings.batch_size,
        "engine": "fuseface.train.trainer",
        "run_dir": str(outcome.run_dir),
        "train_seconds": outcome.seconds,
        "train_images_per_second": outcome.images_per_second,
        "final_loss": float(np.mean(losses[-20:])),
        "first_loss": float(np.mean(losses[:20])),
        "metric_source": "fuseface.eval.verification.evaluate_interleaved (10-fold), fuseface.eval.roc",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads",
        "settings": dataclasses.asdict(settings),
        "quick": quick,
        "model_file": str(model_file),
    }
    results["wall_seconds"] = time.perf_counter() - start
    report = _write_report(out, results, set_fusion_md)
    if progress:
        _print_table(results, report)
    return report
