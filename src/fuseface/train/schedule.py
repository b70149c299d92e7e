"""Learning-rate schedules stepped every iteration (arcface_torch steps its scheduler per batch).

Each schedule is a pure function ``factor(step) -> float`` multiplying the base learning rate of
every parameter group, wrapped in :class:`torch.optim.lr_scheduler.LambdaLR`:

* ``poly`` — insightface ``PolynomialLRWarmup``: linear warm-up from 0 over ``warmup`` steps, then
  ``(1 - (step - warmup) / (total - warmup)) ** power`` (power 1 = linear decay to 0);
* ``cosine`` — warm-up, then ``min + (1 - min) * (1 + cos(pi * t)) / 2``;
* ``multistep`` — warm-up, then ``gamma ** (number of milestones passed)`` (AdaFace: epochs
  12/20/24, gamma 0.1; milestones given in epochs are converted with ``steps_per_epoch``);
* ``constant`` — warm-up, then 1.

``min_lr`` is a fraction of the base lr here (``min_lr / base_lr`` is computed by the caller).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable

import torch


def lr_factor_fn(
    name: str,
    total_steps: int,
    warmup_steps: int = 0,
    power: float = 1.0,
    milestones: list[int] | None = None,
    gamma: float = 0.1,
    min_factor: float = 0.0,
) -> Callable[[int], float]:
    """The per-iteration multiplier of the base learning rate (see the module docstring)."""
    total = max(1, int(total_steps))
    warm = max(0, min(int(warmup_steps), total - 1))
    marks = sorted(int(m) for m in (milestones or []))

    def factor(step: int) -> float:
        if warm > 0 and step < warm:
            return (step + 1) / warm if name != "poly" else step / warm
        if name == "poly":
            t = min(1.0, (step - warm) / max(1, total - warm))
            return max(min_factor, (1.0 - t) ** power) if min_factor > 0 else (1.0 - t) ** power
        if name == "cosine":
            t = min(1.0, (step - warm) / max(1, total - warm))
            return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * t))
        if name == "multistep":
            return gamma ** bisect.bisect_right(marks, step)
        if name == "constant":
            return 1.0
        raise ValueError(f"unknown schedule {name!r}")

    return factor


def build_scheduler(
    optimizer: torch.optim.Optimizer, factor: Callable[[int], float]
) -> torch.optim.lr_scheduler.LambdaLR:
    """``LambdaLR`` with ``factor``; its state (``last_epoch`` = iterations done) goes into checkpoints."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
