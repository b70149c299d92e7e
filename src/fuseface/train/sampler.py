"""A seeded distributed batch sampler whose position is part of the checkpoint.

The **global** sample order does not depend on the number of processes: epoch ``e`` visits
``randperm(N)`` drawn from a generator seeded with ``seed + e`` (or ``arange(N)`` without
shuffling), cut into global batches of ``G = micro_batch * world_size * grad_accum`` samples
(the incomplete tail is dropped, like arcface_torch's ``drop_last=True`` loader). Inside a global
batch, micro-batch ``a`` of rank ``r`` is the contiguous slice number ``a * world_size + r``. So
one process with ``grad_accum=2`` sees exactly the micro-batches two processes see, and a run
resumed with another world size (same ``G``) continues with the very same samples.

Position: ``(epoch, consumed)`` where ``consumed`` counts samples of the global order already
used in that epoch; :meth:`state_dict` / :meth:`load_state_dict` store and restore it.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch


class GlobalOrderSampler(torch.utils.data.Sampler[list[int]]):
    """Yields this rank's micro-batches (lists of dataset indices) from the current position to the
    end of the current epoch; :meth:`advance` moves the position after each optimizer step."""

    def __init__(
        self,
        num_samples: int,
        micro_batch: int,
        rank: int = 0,
        world_size: int = 1,
        grad_accum: int = 1,
        seed: int = 0,
        shuffle: bool = True,
    ) -> None:
        self.num_samples = int(num_samples)
        self.micro_batch = int(micro_batch)
        self.rank, self.world_size, self.grad_accum = int(rank), int(world_size), int(grad_accum)
        self.seed, self.shuffle = int(seed), shuffle
        self.global_batch = self.micro_batch * self.world_size * self.grad_accum
        if self.steps_per_epoch < 1:
            raise ValueError(
                f"dataset of {num_samples} samples is smaller than one global batch of {self.global_batch}"
            )
        self.epoch = 0
        self.consumed = 0

    @property
    def steps_per_epoch(self) -> int:
        return self.num_samples // self.global_batch

    def order(self, epoch: int) -> torch.Tensor:
        """The global order of epoch ``epoch`` (identical for every world size)."""
        if not self.shuffle:
            return torch.arange(self.num_samples)
        g = torch.Generator()
        g.manual_seed(self.seed + epoch)
        return torch.randperm(self.num_samples, generator=g)

    def __len__(self) -> int:
        remaining = (self.steps_per_epoch * self.global_batch - self.consumed) // self.global_batch
        return remaining * self.grad_accum

    def __iter__(self) -> Iterator[list[int]]:
        order = self.order(self.epoch)
        start = self.consumed
        for step_start in range(start, self.steps_per_epoch * self.global_batch, self.global_batch):
            for a in range(self.grad_accum):
                piece = step_start + (a * self.world_size + self.rank) * self.micro_batch
                yield order[piece : piece + self.micro_batch].tolist()

    def advance(self) -> None:
        """One optimizer step consumed one global batch; roll over to the next epoch at the end."""
        self.consumed += self.global_batch
        if self.consumed + self.global_batch > self.num_samples:
            self.epoch += 1
            self.consumed = 0

    def state_dict(self) -> dict[str, int]:
        return {
            "epoch": self.epoch,
            "consumed": self.consumed,
            "seed": self.seed,
            "global_batch": self.global_batch,
            "num_samples": self.num_samples,
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        if int(state["num_samples"]) != self.num_samples:
            raise ValueError(f"checkpoint sampler saw {state['num_samples']} samples, dataset has {self.num_samples}")
        self.epoch = int(state["epoch"])
        self.consumed = int(state["consumed"])
        self.seed = int(state["seed"])
        if int(state["global_batch"]) != self.global_batch:
            # another global batch: keep the epoch, restart at the same sample count rounded down
            self.consumed = (self.consumed // self.global_batch) * self.global_batch
