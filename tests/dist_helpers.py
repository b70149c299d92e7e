"""Helpers for the training tests: a tiny registered backbone, multi-process workers, and a
command-line entry so subprocesses (plain or under torchrun) can train with the tiny backbone.

    python tests/dist_helpers.py train --config X.yaml [key=value ...] [--resume] [--pause-after-step N]

``--pause-after-step N`` adds :class:`PauseAfterCheckpoint`: a training callback that sleeps after
the checkpoint of step N is written, so that a test can SIGKILL the process at a known point.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import Any

import torch

TINY = "tiny_ir_test"


def tiny_backbone(**kwargs: Any) -> torch.nn.Module:
    """IResNet with one block per stage (fast enough for CPU tests)."""
    from fuseface.nn.backbones.iresnet import IResNet

    return IResNet((1, 1, 1, 1), **kwargs)


def register_tiny() -> None:
    from fuseface import registry

    registry.register("backbone", TINY, tiny_backbone)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tiny_config_dict(out_dir: Path, cache_dir: Path, **train: Any) -> dict[str, Any]:
    """A complete recognition config on 8 synthetic identities x 6 images at 32 px."""
    return {
        "task": "recognition",
        "out_dir": str(out_dir),
        "model": {"name": TINY, "kwargs": {"input_size": 32, "num_features": 32}},
        "data": {
            "kind": "synthetic",
            "image_size": 32,
            "num_workers": 0,
            "synthetic": {"num_identities": 8, "images_per_identity": 6, "seed": 0, "cache_dir": str(cache_dir)},
        },
        "loss": {"name": "arcface", "s": 16.0, "m2": 0.3},
        "optim": {"name": "sgd", "lr": 0.02, "clip_grad_norm": 5.0},
        # multi-step milestones in epochs do not depend on train.steps, so a run stopped early
        # and resumed with more steps follows the same learning rates
        "schedule": {"name": "multistep", "milestones": [1.0], "gamma": 0.5, "warmup_steps": 1},
        "train": {
            "steps": 6,
            "batch_size": 8,
            "device": "cpu",
            "seed": 7,
            "num_threads": 1,
            "deterministic": True,
            **train,
        },
        "checkpoint": {"every": 3, "keep": 3},
        "log": {"every": 1, "progress": False, "tensorboard": False},
    }


# -- Partial FC on several gloo ranks --------------------------------------------------------------
def pfc_worker(rank: int, world: int, store: str, payload: dict[str, Any], out: dict[str, Any]) -> None:
    """Runs PartialFC on this rank's slice of the global batch; stores loss and gradients."""
    import torch.distributed as dist

    from fuseface.nn.losses.margin import build_margin_loss
    from fuseface.nn.losses.partial_fc import PartialFC

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        results: dict[str, Any] = {}
        for case in payload["cases"]:
            emb_all, labels_all, weight = case["emb"], case["labels"], case["weight"]
            sizes = case["sizes"]
            start = sum(sizes[:rank])
            emb = emb_all[start : start + sizes[rank]].clone().requires_grad_(True)
            margin = build_margin_loss(case["loss"], s=16.0, m2=0.3)
            pfc = PartialFC(margin, weight.shape[1], weight.shape[0], sample_rate=case["sample_rate"])
            pfc.load_full_weight(weight)
            loss = pfc(emb, labels_all[start : start + sizes[rank]])
            loss.backward()
            full_grad = torch.cat([g for g in _gather(pfc.weight.grad)], 0)
            results[case["name"]] = {
                "loss": float(loss),
                "emb_grad": emb.grad.clone(),
                "weight_grad": full_grad,
                "full_weight": pfc.full_weight(),
                "sampled": None if pfc.last_sampled is None else pfc.last_sampled.clone(),
                "shard": (pfc.class_start, pfc.num_local),
                "ema": margin.batch_mean.clone() if hasattr(margin, "batch_mean") else None,
            }
        out[rank] = results
    finally:
        dist.destroy_process_group()


def _gather(t: torch.Tensor) -> list[torch.Tensor]:
    from fuseface.train.distributed import all_gather_variable

    return all_gather_variable(t.contiguous())


def _spawn_entry(rank: int, world: int, store: str, payload: dict[str, Any], result_dir: str) -> None:
    out: dict[str, Any] = {}
    pfc_worker(rank, world, store, payload, out)
    torch.save(out[rank], os.path.join(result_dir, f"rank{rank}.pt"))


def run_pfc_ranks(world: int, payload: dict[str, Any], tmp: Path) -> list[dict[str, Any]]:
    """Spawn ``world`` gloo processes running :func:`pfc_worker`; their results by rank."""
    import torch.multiprocessing as mp

    store = tmp / "store"
    mp.spawn(_spawn_entry, args=(world, str(store), payload, str(tmp)), nprocs=world, join=True)
    return [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(world)]


def pause_after_checkpoint(step: int) -> Any:
    """A trainer callback that sleeps (600 s) once the checkpoint of ``step`` is on disk."""
    import time

    from fuseface.train.trainer import Callback

    class PauseAfterCheckpoint(Callback):
        def on_checkpoint(self, trainer: Any, path: Path) -> None:
            if trainer.step == step:
                time.sleep(600)

    return PauseAfterCheckpoint()


def main(argv: list[str]) -> None:
    register_tiny()
    if argv and argv[0] == "train":
        from fuseface.train.config import load_config
        from fuseface.train.trainer import train

        args = argv[1:]
        resume = "--resume" in args
        args = [a for a in args if a != "--resume"]
        callbacks = []
        if "--pause-after-step" in args:
            callbacks.append(pause_after_checkpoint(int(args[args.index("--pause-after-step") + 1])))
        cfg_path = args[args.index("--config") + 1]
        overrides = [a for a in args if "=" in a]
        train(load_config(cfg_path, overrides), resume=True if resume else None, callbacks=callbacks)
    else:
        raise SystemExit(f"unknown command {argv}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    main(sys.argv[1:])
