"""Process layout for training: one process, or ``torchrun`` (one or many nodes).

Nothing happens at import time. :func:`init_distributed` reads the torchrun environment
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``, set by torchrun's
rendezvous, so no port is hard-coded here) and creates the default process group with the backend
that fits the device: ``nccl`` on CUDA, ``gloo`` on CPU. Without ``WORLD_SIZE`` (plain
``python``/``fuseface train``) no process group is created and the world size is 1.

It also provides the two collectives the rest of the engine needs with a world size of 1 handled
without a process group: :func:`all_gather_variable` (tensors whose first dimension differs between
ranks, e.g. a smaller last batch) and :func:`all_reduce`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from fuseface.errors import ConfigError
from fuseface.nn.losses import partial_fc


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits: ``rank`` of ``world_size``, its ``local_rank`` and ``device``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> CUDA (this process's local GPU) if available else CPU; ``cpu``; ``cuda``."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("train.device: 'cuda' requested but no CUDA device is available")
        return torch.device("cuda", local_rank)
    if name == "cpu":
        return torch.device("cpu")
    raise ConfigError(f"train.device: expected auto, cpu or cuda, got {name!r}")


def init_distributed(device: str = "auto") -> DistEnv:
    """Create the process group if launched by torchrun (``WORLD_SIZE`` > 1), else a 1-process env.

    Reuses an existing default group (e.g. one created by a test harness).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world_size <= 1 and not (dist.is_available() and dist.is_initialized()):
        return DistEnv(0, 1, 0, dev, None)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, init_method="env://")
    return DistEnv(dist.get_rank(), dist.get_world_size(), local_rank, dev, dist.get_backend())


def shutdown_distributed() -> None:
    """Destroy the default process group if one exists."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def all_reduce(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In-place all-reduce (``sum`` or ``max``); a no-op at world size 1."""
    if world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return tensor


def gather_sizes(n: int, device: torch.device) -> list[int]:
    """The first-dimension size each rank contributes (world size 1: ``[n]``)."""
    if world_size() == 1:
        return [n]
    return partial_fc.gather_sizes(n, device, world_size())


def all_gather_variable(tensor: torch.Tensor, sizes: list[int] | None = None) -> list[torch.Tensor]:
    """All-gather tensors whose dim 0 differs between ranks (padded to the largest, then cut).

    No gradient; see :class:`fuseface.nn.losses.partial_fc.AllGatherWithGrad` for the
    differentiable version. ``sizes`` may be passed when already known.
    """
    if world_size() == 1:
        return [tensor]
    if sizes is None:
        sizes = gather_sizes(tensor.shape[0], tensor.device)
    return partial_fc.all_gather_padded(tensor, sizes)


def broadcast_object(obj: object, src: int = 0) -> object:
    """Broadcast a picklable Python object from ``src`` (identity at world size 1)."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_objects(obj: object) -> list[object]:
    """Every rank's ``obj`` in rank order (``[obj]`` at world size 1); in-process pickling only."""
    if world_size() == 1:
        return [obj]
    out: list[object] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out
