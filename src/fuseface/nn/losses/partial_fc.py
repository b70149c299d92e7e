"""Partial FC: a model-parallel margin classifier with class centres sharded across ranks.

After insightface ``arcface_torch/partial_fc_v2.py`` (An et al., "Partial FC", 2021), written
here from the algorithm:

1. Every rank holds the rows ``[class_start, class_start + num_local)`` of the ``(C, D)`` class
   centre matrix (``num_local = C // W + (rank < C % W)``, initialised ``N(0, init_std)``,
   insightface's 0.01).
2. The embeddings, labels (and feature norms for AdaFace) of the whole global batch are all-gathered
   — first the per-rank batch sizes, so a smaller last batch is fine. The embedding gather is
   differentiable: its backward sums the gradient contributions of all ranks (each rank only
   back-propagates through the logits of its own classes) and keeps this rank's rows.
3. ``sample_rate < 1``: each rank keeps ``int(sample_rate * num_local)`` of its centres, always
   including every class present in the global batch (positives first, the rest at random).
4. Cosine logits ``normalize(E) @ normalize(W_local)^T`` clamped to [-1, 1], margin loss on the
   local columns (labels outside this shard are ``-1``).
5. Distributed softmax cross-entropy: row max all-reduced with MAX (constant, no gradient), the
   sum of ``exp`` and the target logit all-reduced with SUM. Every rank computes the same
   global-batch mean loss ``L``; the backward of these sums is the identity, because each rank
   already holds ``dL/d(sum)``.

Gradient bookkeeping: the class-centre shard receives exactly ``dL/dW_local``. The local embeddings
receive ``dL/dE_local`` multiplied by the world size ``W``, so that data-parallel averaging of the
backbone gradients (DDP divides by ``W``) gives exactly ``dL/dtheta`` of the global-batch loss
(insightface does the same: ``grad_out *= len(grad_list)``). At world size 1 nothing is
communicated and no process group is needed; the result is an ordinary full softmax.

State: ``state_dict()`` holds this rank's shard; :meth:`full_weight` gathers the whole matrix and
:meth:`load_full_weight` takes the rows of this rank's range from a full matrix, which is how a
checkpoint moves between world sizes (``fuseface.train`` stores the gathered matrix).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard_range(num_classes: int, rank: int, world_size: int) -> tuple[int, int]:
    """``(class_start, num_local)`` of ``rank`` (the first ``C % W`` ranks get one extra class)."""
    base, extra = divmod(num_classes, world_size)
    num_local = base + int(rank < extra)
    start = base * rank + min(rank, extra)
    return start, num_local


def gather_sizes(n: int, device: torch.device, world_size: int) -> list[int]:
    """The first-dimension size each of the ``world_size`` ranks contributes (a collective)."""
    sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(world_size)]
    dist.all_gather(sizes, torch.tensor([n], dtype=torch.long, device=device))
    return [int(s.item()) for s in sizes]


def all_gather_padded(tensor: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
    """Every rank's rows, where rank r holds ``sizes[r]`` of them: padded to the largest, gathered, cut."""
    top = max(sizes)
    padded = tensor.new_zeros((top, *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    out = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(out, padded.contiguous())
    return [o[:s] for o, s in zip(out, sizes, strict=True)]


class AllGatherWithGrad(torch.autograd.Function):
    """Concatenate every rank's rows; backward: sum the gradients over ranks, keep own rows, x W."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, sizes: list[int], rank: int) -> torch.Tensor:
        ctx.sizes, ctx.rank = sizes, rank
        return torch.cat(all_gather_padded(tensor.detach(), sizes), dim=0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = sum(ctx.sizes[: ctx.rank])
        local = grad[start : start + ctx.sizes[ctx.rank]]
        return local * len(ctx.sizes), None, None


class AllReduceSum(torch.autograd.Function):
    """Sum over ranks of a quantity every rank then uses identically; backward is the identity."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad


class PartialFC(nn.Module):
    """Sharded (and optionally sampled) margin-softmax classifier; ``forward`` returns the loss.

    Args:
        margin_loss: a module from :mod:`fuseface.nn.losses.margin` (``needs_norms`` for AdaFace).
        embedding_size: D. num_classes: C (all ranks). sample_rate: fraction of the local centres
        used per step (1.0 = every centre: pure model parallel). init_std: std of the normal init.
        rank, world_size: default to the default process group (0, 1 without one).
        init_seed: when given, the *full* matrix is drawn from a CPU generator seeded with it (in
        chunks, keeping only this rank's rows), so the initial centres do not depend on the world
        size; otherwise this shard is drawn from the global generator (insightface).
    """

    def __init__(
        self,
        margin_loss: nn.Module,
        embedding_size: int,
        num_classes: int,
        sample_rate: float = 1.0,
        init_std: float = 0.01,
        rank: int | None = None,
        world_size: int | None = None,
        init_seed: int | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 < sample_rate <= 1.0:
            raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}")
        r, w = _world()
        self.rank = r if rank is None else rank
        self.world_size = w if world_size is None else world_size
        self.margin_loss = margin_loss
        self.embedding_size = embedding_size
        self.num_classes = num_classes
        self.sample_rate = sample_rate
        self.class_start, self.num_local = shard_range(num_classes, self.rank, self.world_size)
        self.num_sample = max(1, int(sample_rate * self.num_local))
        if init_seed is None:
            init = torch.normal(0.0, init_std, (self.num_local, embedding_size))
        else:
            init = seeded_rows(init_seed, self.class_start, self.num_local, num_classes, embedding_size, init_std)
        self.weight = nn.Parameter(init)
        self.last_sampled: torch.Tensor | None = None

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, shard=[{self.class_start}, {self.class_start + self.num_local}), "
            f"embedding_size={self.embedding_size}, sample_rate={self.sample_rate}"
        )

    # -- sampling ---------------------------------------------------------------------------------
    def sample(self, local_labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Indices of the kept local centres (sorted; every positive included) and remapped labels."""
        positive = torch.unique(local_labels[local_labels >= 0], sorted=True)
        if self.num_sample - positive.numel() > 0:
            perm = torch.rand(self.num_local, device=local_labels.device)
            perm[positive] = 2.0
            index = torch.topk(perm, k=self.num_sample)[1].sort()[0]
        else:
            index = positive
        remapped = local_labels.clone()
        hit = local_labels >= 0
        remapped[hit] = torch.searchsorted(index, local_labels[hit])
        return index, remapped

    # -- forward ----------------------------------------------------------------------------------
    def forward(
        self, embeddings: torch.Tensor, labels: torch.Tensor, norms: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Mean margin-softmax cross-entropy over the global batch (same value on every rank)."""
        labels = labels.reshape(-1).long()
        if embeddings.shape[0] != labels.shape[0]:
            raise ValueError(f"{embeddings.shape[0]} embeddings but {labels.shape[0]} labels")
        distributed = self.world_size > 1
        if getattr(self.margin_loss, "needs_norms", False) and norms is None:
            norms = embeddings.detach().float().norm(dim=1)
        if distributed:
            sizes = gather_sizes(embeddings.shape[0], embeddings.device, self.world_size)
            embeddings = AllGatherWithGrad.apply(embeddings, sizes, self.rank)
            labels = torch.cat(all_gather_padded(labels, sizes))
            if norms is not None:
                norms = torch.cat(all_gather_padded(norms.detach().float().reshape(-1), sizes))
        local_labels = labels - self.class_start
        local_labels[(local_labels < 0) | (local_labels >= self.num_local)] = -1

        weight = self.weight
        if self.sample_rate < 1.0:
            index, local_labels = self.sample(local_labels)
            self.last_sampled = index + self.class_start
            weight = self.weight[index]
        cos = F.linear(F.normalize(embeddings.float()), F.normalize(weight.float())).clamp(-1.0, 1.0)
        if getattr(self.margin_loss, "needs_norms", False):
            logits = self.margin_loss(cos, local_labels, norms)
        else:
            logits = self.margin_loss(cos, local_labels)
        return self.cross_entropy(logits, local_labels, distributed)

    @staticmethod
    def cross_entropy(logits: torch.Tensor, local_labels: torch.Tensor, distributed: bool) -> torch.Tensor:
        """Softmax cross-entropy whose classes are split over ranks (see the module docstring)."""
        row_max = logits.detach().max(dim=1, keepdim=True)[0]
        if distributed:
            dist.all_reduce(row_max, op=dist.ReduceOp.MAX)
        shifted = logits - row_max
        sum_exp = shifted.exp().sum(dim=1)
        has = local_labels >= 0
        target = torch.where(has, shifted.gather(1, local_labels.clamp_min(0)[:, None]).squeeze(1), 0.0)
        if distributed:
            sum_exp = AllReduceSum.apply(sum_exp)
            target = AllReduceSum.apply(target)
        return (torch.log(sum_exp) - target).mean()

    # -- state across world sizes -----------------------------------------------------------------
    @torch.no_grad()
    def full_weight(self) -> torch.Tensor:
        """The whole ``(C, D)`` centre matrix (all ranks take part; every rank gets it)."""
        return gather_shards(self.weight.detach(), self.world_size)

    @torch.no_grad()
    def load_full_weight(self, full: torch.Tensor) -> None:
        """Take this rank's rows from a full ``(C, D)`` matrix (saved with any world size)."""
        if tuple(full.shape) != (self.num_classes, self.embedding_size):
            raise ValueError(
                f"class-centre matrix of shape {tuple(full.shape)} does not fit "
                f"{self.num_classes} classes x {self.embedding_size}"
            )
        self.weight.copy_(full[self.class_start : self.class_start + self.num_local].to(self.weight))


def seeded_rows(seed: int, start: int, count: int, total: int, dim: int, std: float, chunk: int = 4096) -> torch.Tensor:
    """Rows ``[start, start + count)`` of a ``(total, dim)`` ``N(0, std)`` matrix drawn in fixed
    chunks of rows from a generator seeded with ``seed`` (identical rows whatever the sharding)."""
    g = torch.Generator()
    g.manual_seed(seed)
    out = torch.empty(count, dim)
    stop = start + count
    pos = 0
    while pos < stop:
        n = min(chunk, total - pos)
        block = torch.randn(n, dim, generator=g) * std
        lo, hi = max(pos, start), min(pos + n, stop)
        if lo < hi:
            out[lo - start : hi - start] = block[lo - pos : hi - pos]
        pos += n
    return out


def gather_shards(shard: torch.Tensor, world_size: int) -> torch.Tensor:
    """Concatenate the dim-0 shards of every rank in rank order (sizes may differ)."""
    if world_size == 1:
        return shard.clone()
    sizes = gather_sizes(shard.shape[0], shard.device, world_size)
    return torch.cat(all_gather_padded(shard.contiguous(), sizes), dim=0)
