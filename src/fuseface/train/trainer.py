"""The training loop: ``train(cfg) -> TrainResult``, from one CPU process to multi-node torchrun.

One optimizer step:

1. ``grad_accum`` micro-batches of ``batch_size`` samples per process come from
   :class:`~fuseface.train.sampler.GlobalOrderSampler` (global order independent of the world size);
2. each goes through ``task.training_step`` under autocast (``train.amp``: ``fp16`` with a
   ``GradScaler(growth_interval=100)`` as arcface_torch, or ``bf16``; CUDA only for fp16, bf16 also
   on CPU), the loss divided by ``grad_accum`` and back-propagated (DDP gradient sync on the last
   micro-batch only);
3. the gradients of the replicated modules (the backbone) are unscaled and clipped to
   ``optim.clip_grad_norm`` (arcface_torch ``clip_grad_norm_(backbone.parameters(), 5)``), then the
   optimizer and the per-iteration schedule step;
4. the step's record (loss averaged over ranks, lr, the task's metrics) goes to the callbacks
   (:mod:`fuseface.train.callbacks`): the user's, then the built-in ones that log it, write a
   checkpoint every ``checkpoint.every`` steps and at the end (:mod:`fuseface.train.checkpoint`)
   and evaluate the ``.bin`` sets every ``val.every`` steps and at the end.

At the end the task exports ``out_dir/model.safetensors`` (a fuseface model file). Determinism: with
``train.deterministic`` torch's deterministic algorithms are requested; on CPU a resumed run then
reproduces the uninterrupted one (the sampler, the augmentation seeds and the RNG states are all in
the checkpoint).
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fuseface.errors import CheckpointError, ConfigError
from fuseface.train import checkpoint as C
from fuseface.train import distributed as D
from fuseface.train.callbacks import Callback, default_callbacks
from fuseface.train.config import TrainConfig, config_to_dict, save_config
from fuseface.train.optim import build_optimizer
from fuseface.train.sampler import GlobalOrderSampler
from fuseface.train.schedule import build_scheduler, lr_factor_fn
from fuseface.train.task import Task, TaskContext, resolve_task


@dataclass
class TrainResult:
    """What a run produced: its folder, the exported model file, the last checkpoint, the per-step
    history (``[{"step", "loss", "lr", ...}]``, this invocation only)."""

    out_dir: Path
    model_path: Path | None
    checkpoint_path: Path | None
    history: list[dict[str, Any]] = field(default_factory=list)


def seed_everything(seed: int, rank: int = 0) -> None:
    torch.manual_seed(seed + rank)
    np.random.seed((seed + rank) % 2**32)
    random.seed(seed + rank)


def _autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager[Any]:
    if amp == "none":
        return contextlib.nullcontext()
    dtype = torch.float16 if amp == "fp16" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


def resolve_resume(resume: str | bool | None, out_dir: Path) -> Path | None:
    """``None``/``False``: fresh run; ``True``/``"latest"``/``""``: newest checkpoint in ``out_dir``
    (fresh start when there is none); a path: that checkpoint."""
    if resume is None or resume is False:
        return None
    if resume is True or resume in ("", "latest"):
        return C.latest_checkpoint(out_dir)
    path = Path(str(resume)).expanduser()
    if path.is_dir():
        found = C.latest_checkpoint(path)
        if found is None:
            raise CheckpointError(f"{path}: no checkpoints (looked in {C.checkpoint_dir(path)})")
        return found
    return path


class Trainer:
    """Builds everything from a :class:`TrainConfig` and runs the loop (see the module docstring)."""

    def __init__(self, cfg: TrainConfig, env: D.DistEnv, callbacks: Sequence[Callback] = ()) -> None:
        self.cfg = cfg
        self.env = env
        self.callbacks = list(callbacks)
        self.out_dir = Path(cfg.out_dir).expanduser()
        tc = cfg.train
        if tc.amp == "fp16" and env.device.type != "cuda":
            raise ConfigError("train.amp=fp16 needs CUDA; on CPU use train.amp=bf16 or none")
        if tc.num_threads > 0:
            torch.set_num_threads(tc.num_threads)
        if tc.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            if env.device.type == "cuda":
                torch.backends.cudnn.benchmark = False
        elif env.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # arcface_torch: setup_seed(cuda_deterministic=False)
        seed_everything(tc.seed, env.rank)

        self.task: Task = resolve_task(cfg.task)(TaskContext(cfg, env))
        self.dataset = self.task.build_dataset()
        torch.manual_seed(tc.seed)  # identical initial weights on every rank and for every world size
        self.modules: dict[str, nn.Module] = {k: m.to(env.device) for k, m in self.task.build_modules().items()}
        seed_everything(tc.seed, env.rank)

        per_rank = tc.batch_size
        if tc.global_batch_size > 0:
            div = env.world_size * tc.grad_accum
            if tc.global_batch_size % div:
                raise ConfigError(
                    f"train.global_batch_size={tc.global_batch_size} is not divisible by "
                    f"world size x grad_accum = {env.world_size} x {tc.grad_accum}"
                )
            per_rank = tc.global_batch_size // div
        self.micro_batch = per_rank
        try:
            self.sampler = GlobalOrderSampler(
                len(self.dataset), per_rank, env.rank, env.world_size, tc.grad_accum, seed=tc.seed
            )
        except ValueError as exc:
            raise ConfigError(f"train.batch_size: {exc}") from None
        self.global_batch = self.sampler.global_batch
        spe = self.sampler.steps_per_epoch
        self.total_steps = tc.steps if tc.steps > 0 else max(1, math.ceil(tc.epochs * spe))

        self.wrapped = self._wrap(self.modules)
        self.sharded = self.task.sharded_params(self.modules)
        self.optimizer = build_optimizer(cfg.optim, self.task.param_groups(self.modules), list(self.modules.values()))
        sc = cfg.schedule
        warmup = round(sc.warmup_epochs * spe) + sc.warmup_steps
        factor = lr_factor_fn(
            sc.name,
            self.total_steps,
            warmup,
            sc.power,
            [round(m * spe) for m in sc.milestones],
            sc.gamma,
            sc.min_lr / cfg.optim.lr if cfg.optim.lr > 0 else 0.0,
        )
        self.scheduler = build_scheduler(self.optimizer, factor)
        self.scaler = torch.amp.GradScaler(
            "cuda", growth_interval=100, enabled=tc.amp == "fp16" and env.device.type == "cuda"
        )
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self.resumed_from: Path | None = None
        self.last_checkpoint: Path | None = None
        self._all_callbacks: list[Callback] = [*self.callbacks, *default_callbacks()]

    # -- setup helpers ---------------------------------------------------------------------------
    def _wrap(self, modules: Mapping[str, nn.Module]) -> dict[str, nn.Module]:
        out: dict[str, nn.Module] = {}
        for name, module in modules.items():
            has_grad = any(p.requires_grad for p in module.parameters())
            if self.env.distributed and name in self.task.replicated and has_grad:
                from torch.nn.parallel import DistributedDataParallel

                ids = [self.env.device.index] if self.env.device.type == "cuda" else None
                out[name] = DistributedDataParallel(
                    module, device_ids=ids, find_unused_parameters=True, bucket_cap_mb=16
                )
            else:
                out[name] = module
        return out

    def _loader(self) -> torch.utils.data.DataLoader:
        workers = self.cfg.data.num_workers
        g = torch.Generator()
        g.manual_seed(self.cfg.train.seed + self.sampler.epoch)
        return torch.utils.data.DataLoader(
            self.dataset,
            batch_sampler=self.sampler,
            num_workers=workers,
            pin_memory=self.env.device.type == "cuda",
            collate_fn=getattr(self.task, "collate_fn", None),
            generator=g,
            persistent_workers=False,
        )

    def _batches(self) -> Iterator[Any]:
        """Micro-batches forever, epoch after epoch, from the sampler's current position."""
        while True:
            self.task.set_epoch(self.sampler.epoch)
            yield from self._loader()

    # -- checkpoints -------------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        rng_all = D.all_gather_objects(C.capture_rng())
        state = {
            "format": C.FORMAT,
            "step": self.step,
            "world_size": self.env.world_size,
            "modules": C.module_states_full(self.modules, self.sharded),
            "optimizer": C.optimizer_state_full(self.optimizer, self.sharded),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "sampler": self.sampler.state_dict(),
            "rng": rng_all,
            "task": self.task.checkpoint_state(),
            "config": config_to_dict(self.cfg),
        }
        path = C.checkpoint_path(self.out_dir, self.step)
        if self.env.is_main:
            C.write_atomic(state, path)
            C.prune(self.out_dir, self.cfg.checkpoint.keep)
        D.barrier()
        return path

    def load_checkpoint(self, path: Path) -> None:
        ckpt = C.read_checkpoint(path)
        src = str(path)
        C.load_module_states(self.modules, ckpt["modules"], self.sharded, src)
        try:
            self.optimizer.load_state_dict(C.optimizer_state_local(ckpt["optimizer"], self.optimizer, self.sharded))
            self.scheduler.load_state_dict(ckpt["scheduler"])
            self.scaler.load_state_dict(ckpt["scaler"])
            self.sampler.load_state_dict(ckpt["sampler"])
        except (ValueError, KeyError, RuntimeError) as exc:
            raise CheckpointError(f"{src}: does not match this run ({exc})") from None
        self.task.load_checkpoint_state(ckpt.get("task", {}))
        rngs = ckpt["rng"]
        C.restore_rng(rngs[self.env.rank % len(rngs)])
        self.step = int(ckpt["step"])

    def checkpoint(self) -> Path:
        """Write a checkpoint of the current step and tell every callback (``on_checkpoint``)."""
        self.last_checkpoint = self.save_checkpoint()
        self._notify("on_checkpoint", self.last_checkpoint)
        return self.last_checkpoint

    # -- validation -------------------------------------------------------------------------------
    def run_validation(self) -> dict[str, float]:
        """Evaluate the validation sets and tell every callback (``on_validation``)."""
        results = self.validate()
        self._notify("on_validation", results)
        return results

    def validate(self) -> dict[str, float]:
        results: dict[str, float] = {}
        if self.env.is_main and self.cfg.val.bins:
            from fuseface.train.validation import validate_bins

            results = validate_bins(self.modules["backbone"], self.cfg, self.env.device)
        D.barrier()
        return results

    # -- loop -------------------------------------------------------------------------------------
    def _notify(self, hook: str, *args: Any) -> None:
        for cb in self._all_callbacks:
            getattr(cb, hook)(self, *args)

    def run(self, resume: str | bool | None = None) -> TrainResult:
        cfg, env = self.cfg, self.env
        resume_path = resolve_resume(resume, self.out_dir)
        if resume_path is not None:
            self.load_checkpoint(resume_path)
        self.resumed_from = self.last_checkpoint = resume_path
        if env.is_main:
            save_config(cfg, self.out_dir / "config.yaml")
        self._notify("on_train_start")
        accum = cfg.train.grad_accum
        replicated_params = [
            p
            for n in self.task.replicated
            if n in self.modules
            for p in self.modules[n].parameters()
            if p.requires_grad
        ]
        batches = self._batches() if self.step < self.total_steps else iter(())
        try:
            while self.step < self.total_steps:
                for m in self.modules.values():
                    m.train()
                self.optimizer.zero_grad(set_to_none=True)
                loss_sum = 0.0
                metrics_sum: dict[str, float] = {}
                for micro in range(accum):
                    batch = next(batches)
                    sync = micro == accum - 1
                    ctxs = [w.no_sync() for w in self.wrapped.values() if hasattr(w, "no_sync") and not sync]
                    with contextlib.ExitStack() as stack:
                        for c in ctxs:
                            stack.enter_context(c)
                        with _autocast(env.device, cfg.train.amp):
                            loss, metrics = self.task.training_step(batch, self.wrapped)
                        if not torch.isfinite(loss.detach()):
                            raise FloatingPointError(f"step {self.step}: loss is {float(loss)}")
                        self.scaler.scale(loss / accum).backward()
                    loss_sum += float(loss.detach()) / accum
                    for k, v in metrics.items():
                        metrics_sum[k] = metrics_sum.get(k, 0.0) + v / accum
                self.scaler.unscale_(self.optimizer)
                grad_norm = None
                if cfg.optim.clip_grad_norm > 0 and replicated_params:
                    grad_norm = float(torch.nn.utils.clip_grad_norm_(replicated_params, cfg.optim.clip_grad_norm))
                lr = self.optimizer.param_groups[0]["lr"]
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.scheduler.step()
                self.sampler.advance()
                self.step += 1

                mean_loss = torch.tensor([loss_sum], dtype=torch.float64, device=env.device)
                D.all_reduce(mean_loss)
                record = {
                    "step": self.step,
                    "epoch": self.sampler.epoch,
                    "loss": float(mean_loss) / env.world_size,
                    "lr": lr,
                    **metrics_sum,
                }
                if grad_norm is not None:
                    record["grad_norm"] = grad_norm
                self.history.append(record)
                self._notify("on_step_end", record)
        finally:
            self._notify("on_loop_exit")
        self._notify("on_steps_done")
        model_path = None
        if env.is_main:
            model_path = self.task.export(self.modules, self.out_dir / "model.safetensors")
        D.barrier()
        result = TrainResult(self.out_dir, model_path, self.last_checkpoint, self.history)
        self._notify("on_train_end", result)
        return result


def train(cfg: TrainConfig, resume: str | bool | None = None, callbacks: Sequence[Callback] = ()) -> TrainResult:
    """Run a training job described by ``cfg`` (single process, or under torchrun); ``callbacks``
    are :class:`Callback` instances called by the loop."""
    created = not (torch.distributed.is_available() and torch.distributed.is_initialized())
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    env = D.init_distributed(cfg.train.device)
    try:
        return Trainer(cfg, env, callbacks).run(resume)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
        if created:
            D.shutdown_distributed()
