"""What the training engine trains: the :class:`Task` protocol and the registry keyed by ``cfg.task``.

The trainer (:mod:`fuseface.train.trainer`) creates the task as ``TaskCls(TaskContext(cfg, dist))``,
then calls ``build_dataset()`` (first, so a task can size its classifier from the data), then
``build_modules()`` under ``torch.manual_seed(cfg.train.seed)``. It owns everything generic — process group, device,
sampler, optimizer, schedule, AMP, gradient clipping, checkpoints, logging, export call — and asks
a *task* for the parts that depend on what is learned:

===========================  =====================================================================
``build_modules()``          ``dict[name, nn.Module]`` of every module with state (trainable or
                             not, e.g. a frozen backbone). The trainer moves them to the device.
``replicated``               names of the data-parallel modules (identical on every rank). With
                             world size > 1 the trainer wraps them in DDP (gradients averaged).
                             The other modules are the task's own business (e.g. Partial FC keeps
                             one shard of class centres per rank and communicates itself).
``param_groups(modules)``    optimizer groups: ``[{"params": [...], "weight_decay": float,
                             "name": str}, ...]``; a missing ``weight_decay`` means ``cfg.optim
                             .weight_decay``. Frozen modules simply give no group.
``build_dataset()``          a map-style dataset of length N indexed by ``int`` (the sampler only
                             needs ``len``); ``collate_fn`` (attribute, optional) for the loader.
``set_epoch(epoch)``         optional; called before each epoch (e.g. to re-seed augmentation).
``training_step(batch,       ``(loss, metrics)``: ``loss`` a scalar tensor to back-propagate,
modules)``                   ``metrics`` plain floats for the log line / JSONL. ``modules`` is the
                             dict from ``build_modules`` with replicated modules DDP-wrapped, so
                             call them, do not keep your own references to the raw ones.
``sharded_params(modules)``  ``{param: ShardSpec}`` for parameters split over ranks along dim 0;
                             the trainer gathers them (and their optimizer state) into full tensors
                             for the checkpoint and re-slices on load, so a run can resume with
                             another number of processes. Default: none.
``checkpoint_state /``       what goes into a checkpoint beyond the module state dicts (plain
``load_checkpoint_state``    types / tensors only: checkpoints load with ``weights_only=True``).
``export(modules, path)``    writes the exported model file (rank 0 only), returns its path; for
                             recognition a fuseface model file (``infer.model_file.save_model``).
===========================  =====================================================================

Task-specific configuration: a task class may set ``config_section = "caface"`` and
``config_class = CAFaceConfig`` (a dataclass). :func:`fuseface.train.config.load_config` then parses
the YAML section ``caface:`` into that dataclass with the same strict rules as the rest (unknown
key or wrong type -> :class:`~fuseface.errors.ConfigError`), and the task finds it as
``cfg.sections["caface"]``. A top-level key that is neither a :class:`TrainConfig` field nor the
section of the selected task is an error.

Example (a minimal task; ``BaseTask`` supplies the defaults)::

    from fuseface.train.task import BaseTask, TaskContext, register_task

    @dataclass
    class ToyConfig:
        dim: int = 8

    class ToyTask(BaseTask):
        config_section = "toy"
        config_class = ToyConfig
        replicated = ("net",)

        def build_modules(self):
            return {"net": torch.nn.Linear(self.ctx.cfg.sections["toy"].dim, 2)}

        def build_dataset(self):
            return torch.utils.data.TensorDataset(torch.randn(64, 8), torch.randint(0, 2, (64,)))

        def training_step(self, batch, modules):
            x, y = (t.to(self.ctx.device) for t in batch)
            loss = torch.nn.functional.cross_entropy(modules["net"](x), y)
            return loss, {"loss": loss.item()}

    register_task("toy", ToyTask)          # or register_task("toy", "my_pkg.toy:ToyTask")

Tasks live in :mod:`fuseface.registry` (kind ``task``).
The built-in tasks: ``recognition`` (:class:`fuseface.train.recognition.RecognitionTask`: backbone
+ margin loss + Partial FC) and ``caface`` (``fuseface.train.caface:CAFaceTask``, set fusion on
precomputed features), imported only when selected.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import torch
from torch import nn

if TYPE_CHECKING:  # pragma: no cover
    from fuseface.train.config import TrainConfig
    from fuseface.train.distributed import DistEnv


@dataclass(frozen=True)
class ShardSpec:
    """Rows ``[start, stop)`` of a tensor of ``total`` rows (dim 0) held by this rank."""

    start: int
    stop: int
    total: int


@dataclass
class TaskContext:
    """What a task gets from the trainer: the resolved config, the process layout and the device."""

    cfg: TrainConfig
    dist: DistEnv

    @property
    def device(self) -> torch.device:
        return self.dist.device

    @property
    def rank(self) -> int:
        return self.dist.rank

    @property
    def world_size(self) -> int:
        return self.dist.world_size


@runtime_checkable
class Task(Protocol):
    """The protocol the trainer drives (see the module docstring for each member)."""

    config_section: ClassVar[str | None]
    config_class: ClassVar[type | None]
    replicated: tuple[str, ...]

    def build_modules(self) -> dict[str, nn.Module]: ...

    def param_groups(self, modules: Mapping[str, nn.Module]) -> list[dict[str, Any]]: ...

    def build_dataset(self) -> torch.utils.data.Dataset: ...

    def set_epoch(self, epoch: int) -> None: ...

    def training_step(self, batch: Any, modules: Mapping[str, nn.Module]) -> tuple[torch.Tensor, dict[str, float]]: ...

    def sharded_params(self, modules: Mapping[str, nn.Module]) -> dict[nn.Parameter, ShardSpec]: ...

    def checkpoint_state(self) -> dict[str, Any]: ...

    def load_checkpoint_state(self, state: Mapping[str, Any]) -> None: ...

    def export(self, modules: Mapping[str, nn.Module], path: Path) -> Path: ...


class BaseTask:
    """Defaults for the optional members of :class:`Task`; subclasses implement
    ``build_modules``, ``build_dataset``, ``training_step`` and ``export``."""

    config_section: ClassVar[str | None] = None
    config_class: ClassVar[type | None] = None
    replicated: tuple[str, ...] = ()
    collate_fn: Callable[[list[Any]], Any] | None = None

    def __init__(self, ctx: TaskContext) -> None:
        self.ctx = ctx

    def build_modules(self) -> dict[str, nn.Module]:
        raise NotImplementedError

    def param_groups(self, modules: Mapping[str, nn.Module]) -> list[dict[str, Any]]:
        """One group with every trainable parameter and the configured weight decay."""
        params = [p for m in modules.values() for p in m.parameters() if p.requires_grad]
        return [{"params": params, "name": "all"}] if params else []

    def build_dataset(self) -> torch.utils.data.Dataset:
        raise NotImplementedError

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def training_step(self, batch: Any, modules: Mapping[str, nn.Module]) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def sharded_params(self, modules: Mapping[str, nn.Module]) -> dict[nn.Parameter, ShardSpec]:
        return {}

    def checkpoint_state(self) -> dict[str, Any]:
        return {}

    def load_checkpoint_state(self, state: Mapping[str, Any]) -> None:
        return None

    def export(self, modules: Mapping[str, nn.Module], path: Path) -> Path:
        raise NotImplementedError


def register_task(name: str, target: str | type) -> None:
    """Register a task class (or a lazy ``"module:Class"`` string) under ``name`` (registry kind ``task``)."""
    from fuseface import registry

    registry.register("task", name, target)


def task_names() -> list[str]:
    from fuseface import registry

    return registry.names("task")


def resolve_task(name: str) -> type:
    """The task class registered as ``name`` (imported on first use); ConfigError if unknown."""
    from fuseface import registry
    from fuseface.errors import ConfigError

    if name not in registry.names("task"):
        raise ConfigError(f"unknown task {name!r}; known: {', '.join(task_names())}")
    return registry.resolve("task", name)


def trainable(params: Iterable[nn.Parameter]) -> list[nn.Parameter]:
    """The parameters that require gradients."""
    return [p for p in params if p.requires_grad]
