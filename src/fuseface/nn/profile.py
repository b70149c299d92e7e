"""Parameter and MAC counts and per-stage feature shapes of a backbone.

MACs are counted the way ``docs/METHODS.md`` (sections 0 and 2.3) counts them: multiply-accumulates
of every ``Conv2d`` and ``Linear`` for one image, plus whatever a module reports through a
``profile_macs(output) -> int`` method (MSConv reports its MO product, C * H' * W'). BN, PReLU,
pooling and element-wise additions are not counted. With this rule insightface iresnet50 is
43.59 M parameters / 6.31 GMACs and iresnet100 65.16 M / 12.09 GMACs at 112x112.

The count runs one forward pass with hooks. Pass ``device="meta"`` (the default of
:func:`profile_model`) to do it on PyTorch's meta device: shapes only, no memory, no arithmetic,
so even ir200 profiles in well under a second.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass
class ModelProfile:
    """Counts for one image of ``input_size`` x ``input_size``."""

    params: int
    macs: int
    input_size: int
    stage_shapes: list[tuple[int, ...]] = field(default_factory=list)  # (C, H, W) per stage
    embedding_dim: int = 0

    @property
    def params_m(self) -> float:
        return self.params / 1e6

    @property
    def gmacs(self) -> float:
        return self.macs / 1e9


def count_params(model: nn.Module) -> int:
    """Number of parameters (trainable or not, e.g. IResNet's frozen BN1d weight included)."""
    return sum(p.numel() for p in model.parameters())


def _conv_macs(m: nn.Conv2d, out: torch.Tensor) -> int:
    per_output = (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
    return int(out[0].numel()) * per_output


def _linear_macs(m: nn.Linear, out: torch.Tensor) -> int:
    return int(out[0].numel()) * m.in_features


def count_macs(model: nn.Module, x: torch.Tensor, forward: Callable[[torch.Tensor], Any] | None = None) -> int:
    """MACs of ``forward(x)`` (default ``model(x)``) for ONE sample of the batch ``x``."""
    total = 0

    def hook(module: nn.Module, _inputs: Any, output: Any) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            total += _conv_macs(module, output)
        elif isinstance(module, nn.Linear):
            total += _linear_macs(module, output)
        extra = getattr(module, "profile_macs", None)
        if callable(extra):
            total += int(extra(output))

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        with torch.no_grad():
            (forward or model)(x)
    finally:
        for h in handles:
            h.remove()
    return total


def profile_model(model: nn.Module, input_size: int = 112, device: str | torch.device | None = None) -> ModelProfile:
    """Parameters, MACs and stage shapes of ``model`` at ``input_size`` (eval mode, batch 1).

    The model must accept ``forward(x, return_stages=True)``; otherwise the stage list is empty.
    ``device`` defaults to the model's own device (``"meta"`` for models built on meta).
    """
    if device is None:
        first = next(model.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    x = torch.zeros(1, 3, input_size, input_size, device=device)
    captured: dict[str, Any] = {}

    def run(inp: torch.Tensor) -> Any:
        try:
            out = model(inp, return_stages=True)
        except TypeError:
            out = model(inp)
        captured["out"] = out
        return out

    try:
        macs = count_macs(model, x, run)
    finally:
        model.train(was_training)
    out = captured["out"]
    stages: list[tuple[int, ...]] = []
    if isinstance(out, tuple):
        emb, maps = out[0], out[1]
        stages = [tuple(int(d) for d in s.shape[1:]) for s in maps]
    else:
        emb = out
    return ModelProfile(
        params=count_params(model),
        macs=macs,
        input_size=input_size,
        stage_shapes=stages,
        embedding_dim=int(emb.shape[-1]),
    )


def profile_backbone(name: str, input_size: int = 112, **kwargs: Any) -> ModelProfile:
    """Build registered backbone ``name`` on the meta device (no memory) and profile it.

    ``kwargs`` go to :func:`fuseface.create_backbone` (e.g. ``conv="msconv"``); ``input_size``
    is passed to the backbone too when it accepts it.
    """
    from fuseface import registry

    factory = registry.resolve("backbone", name)
    with torch.device("meta"):
        try:
            model = factory(input_size=input_size, **kwargs)
        except TypeError:
            model = factory(**kwargs)
    try:
        return profile_model(model, input_size, device="meta")
    except (RuntimeError, NotImplementedError):
        # some forwards cannot run on meta (e.g. ``torch.autocast(device_type="meta")`` is
        # rejected even when disabled): allocate uninitialised CPU storage and count there
        model = model.to_empty(device="cpu")
        return profile_model(model, input_size, device="cpu")
