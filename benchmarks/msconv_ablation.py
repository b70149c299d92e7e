"""Small-scale MSConv ablation on synthetic faces: plain / SKConv / MSConv (MO only, SO only, both).

Every variant is the same tiny IResNet host, ``IResNet((1, 1, 1, 1))``, whose strided 3x3 conv
(``conv2``) in the chosen stages is replaced by the module under test, trained from the same
seed on the same synthetic identities, in the same order, for the same number of steps, with
the same loss and optimiser. Verification accuracy (10-fold, :func:`fuseface.eval.verification.evaluate`)
is measured on held-out synthetic identities (ids >= 10_000, disjoint from training).

Variants (the paper's ablation definitions are unknown, METHODS.md 2.6; these are ours):

===========  ================================================================
plain        IResNet's own 3x3 conv
skconv       SKConv: sum squeeze, softmax selection (same dilated branches)
msconv_mo    MSConv with MO only: product squeeze, ``so=False`` (independent gates)
msconv_so    MSConv with SO only: ``mo=False`` (sum squeeze), subtractive selection
msconv       MSConv as the official code has it (MO + SO)
se, cbam     optional (``--variants``): 3x3 conv + SE / CBAM
===========  ================================================================

This is an honest small-scale comparison on CPU: a few dozen steps of a toy network on
generated faces (the default budget was cut to fit ~15 min on 2 cores shared with other jobs). It
shows the modules train and what they cost; it says nothing about MS1MV3-scale accuracy and no
paper number is claimed. Throughput depends on the load of the machine (other jobs
shared the 2 cores when the committed figures were measured).

Run:  OMP_NUM_THREADS=2 python benchmarks/msconv_ablation.py  (about 15 min on 2 busy cores)
      python benchmarks/msconv_ablation.py --steps 300 --batch 32 --train-ids 100 --per-id 12   (longer)
      python benchmarks/msconv_ablation.py --steps 10 --variants plain,msconv   (quick check)
Writes benchmarks/results/msconv_ablation.json and prints a markdown table (docs/benchmarks.md, "MSConv ablation").
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fuseface.data.synthetic import verification_pairs
from fuseface.eval.verification import evaluate
from fuseface.nn.backbones.iresnet import IResNet
from fuseface.nn.losses.margin import ArcFace
from fuseface.nn.profile import profile_model

VARIANTS: dict[str, tuple[str | None, dict[str, Any]]] = {
    "plain": (None, {}),
    "skconv": ("skconv", {}),
    "msconv_mo": ("msconv", {"so": False}),
    "msconv_so": ("msconv", {"mo": False}),
    "msconv": ("msconv", {}),
    "se": ("se", {}),
    "cbam": ("cbam", {}),
}
DEFAULT_VARIANTS = "plain,skconv,msconv_mo,msconv_so,msconv"
RESULTS = Path(__file__).resolve().parent / "results" / "msconv_ablation.json"


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) RGB -> float (N, 3, H, W) normalised (x / 255 - 0.5) / 0.5."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255.0).sub(0.5).div(0.5)


def training_set(num_ids: int, per_id: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    from fuseface.data.synthetic import SyntheticFaces

    faces = SyntheticFaces(seed=seed, image_size=size)
    images = np.stack([faces.render(i, v)[0] for i in range(num_ids) for v in range(per_id)])
    return to_tensor(images), torch.arange(num_ids).repeat_interleave(per_id)


def build(variant: str, size: int, stages: tuple[int, ...]) -> nn.Module:
    conv, conv_kw = VARIANTS[variant]
    return IResNet((1, 1, 1, 1), conv=conv, conv_kw=conv_kw, stages=stages, input_size=size)


@torch.no_grad()
def embed(net: nn.Module, x: torch.Tensor, batch: int = 128) -> np.ndarray:
    net.eval()
    return torch.cat([net(x[i : i + batch]) for i in range(0, len(x), batch)]).numpy()


def run_variant(variant: str, args: argparse.Namespace, data: tuple, pairs: tuple) -> dict[str, Any]:
    x, y = data
    pair_images, issame = pairs
    stages = tuple(int(s) for s in args.stages.split(","))
    torch.manual_seed(args.seed)
    net = build(variant, args.size, stages)
    prof = profile_model(net, args.size)
    num_classes = int(y.max()) + 1
    centres = nn.Parameter(torch.randn(num_classes, 512) * 0.01)
    margin = ArcFace(s=args.scale, m=args.margin)
    params = [*net.parameters(), centres]
    opt = torch.optim.SGD(params, lr=args.lr, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.steps, eta_min=args.lr * 0.01)
    order = torch.Generator().manual_seed(args.seed)  # same sample order for every variant
    perm = torch.randperm(len(x), generator=order)
    pos, losses, train_time = 0, [], 0.0
    net.train()
    for _ in range(args.steps):
        if pos + args.batch > len(perm):
            perm, pos = torch.randperm(len(x), generator=order), 0
        idx = perm[pos : pos + args.batch]
        pos += args.batch
        xb = x[idx]
        flip = torch.rand(len(idx), generator=order) < 0.5
        xb = torch.where(flip[:, None, None, None], torch.flip(xb, dims=[3]), xb)
        t0 = time.perf_counter()
        cos = F.normalize(net(xb)) @ F.normalize(centres).t()
        loss = F.cross_entropy(margin(cos.clamp(-1, 1), y[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
        opt.step()
        sched.step()
        train_time += time.perf_counter() - t0
        losses.append(loss.item())
    emb = embed(net, to_tensor(pair_images))
    metrics = evaluate(emb[0::2], emb[1::2], issame, nfolds=10)
    head = max(1, len(losses) // 10)
    return {
        "variant": variant,
        "conv": VARIANTS[variant][0] or "conv3x3",
        "conv_kw": VARIANTS[variant][1],
        "params_m": round(prof.params_m, 3),
        "gmacs": round(prof.gmacs, 4),
        "train_images_per_s": round(args.steps * args.batch / train_time, 2),
        "loss_first": round(float(np.mean(losses[:head])), 4),
        "loss_last": round(float(np.mean(losses[-head:])), 4),
        "accuracy_mean": round(float(metrics["accuracy_mean"]), 4),
        "accuracy_std": round(float(metrics["accuracy_std"]), 4),
    }


def markdown(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        f"Host IResNet((1,1,1,1)) at {args.size}x{args.size}, conv in stages {args.stages}; "
        f"{args.train_ids} ids x {args.per_id} images, {args.steps} steps x batch {args.batch}, seed {args.seed}; "
        f"{args.pairs} held-out pairs, 10-fold.",
        "",
        "| variant | params (M) | MACs (G) | train img/s | loss first -> last | verif. acc. (mean +- std) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['params_m']:.2f} | {r['gmacs']:.3f} | {r['train_images_per_s']:.1f} | "
            f"{r['loss_first']:.2f} -> {r['loss_last']:.2f} | {100 * r['accuracy_mean']:.1f} +- "
            f"{100 * r['accuracy_std']:.1f} % |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", default=DEFAULT_VARIANTS, help=f"comma list of {', '.join(VARIANTS)}")
    p.add_argument("--size", type=int, default=32, help="input side (multiple of 16); 32 keeps the run short")
    p.add_argument("--stages", default="2,3,4", help="IResNet stages that use the conv under test")
    p.add_argument("--train-ids", type=int, default=32)
    p.add_argument("--per-id", type=int, default=6)
    p.add_argument("--steps", type=int, default=24)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--scale", type=float, default=32.0)
    p.add_argument("--margin", type=float, default=0.3)
    p.add_argument("--eval-ids", type=int, default=40)
    p.add_argument("--pairs", type=int, default=160)
    p.add_argument("--seed", type=int, default=2048)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variants {unknown}; known: {list(VARIANTS)}")

    t0 = time.perf_counter()
    data = training_set(args.train_ids, args.per_id, args.size, seed=0)
    pairs = verification_pairs(args.eval_ids, 6, args.pairs, seed=0, image_size=args.size)  # ids >= 10_000
    print(f"data: {len(data[0])} training images, {args.pairs} held-out pairs ({time.perf_counter() - t0:.0f} s)")
    rows = []
    for name in names:
        t1 = time.perf_counter()
        rows.append(run_variant(name, args, data, pairs))
        print(f"{name}: {rows[-1]} ({time.perf_counter() - t1:.0f} s)", flush=True)
    table = markdown(rows, args)
    print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "benchmark": "msconv_ablation",
                "note": "honest small-scale comparison on synthetic faces (CPU, toy budget); no paper number claimed; "
                "throughput measured while other jobs shared the 2 CPU cores",
                "settings": vars(args),
                "torch": torch.__version__,
                "machine": platform.machine(),
                "total_seconds": round(time.perf_counter() - t0, 1),
                "rows": rows,
                "markdown": table,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
