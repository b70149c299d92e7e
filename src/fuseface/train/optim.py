"""Optimizers with the weight-decay groups of the recipes.

* insightface arcface_torch (PROTOCOLS.md B §2.6): SGD(momentum 0.9), weight decay 5e-4 on
  **all** parameters, BN and the Partial FC centres included — ``optim.no_decay_bn=false``.
* AdaFace (METHODS.md §1.3): weight decay on non-BN parameters and the head kernel, 0 on the
  BatchNorm parameters — ``optim.no_decay_bn=true``.

Groups come from the task (``Task.param_groups``); :func:`split_bn_groups` splits each group into
a decayed part and a BN part when ``no_decay_bn`` is set. A group's ``lr`` and ``initial_lr`` are
set from ``cfg.optim.lr`` times its optional ``lr_scale``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fuseface.errors import ConfigError
from fuseface.train.config import OptimConfig

_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.GroupNorm, nn.LayerNorm)


def batchnorm_parameter_ids(modules: list[nn.Module]) -> set[int]:
    """ids of the parameters that belong to normalisation layers."""
    ids: set[int] = set()
    for module in modules:
        for sub in module.modules():
            if isinstance(sub, _BN_TYPES):
                ids.update(id(p) for p in sub.parameters(recurse=False))
    return ids


def split_bn_groups(groups: list[dict[str, Any]], bn_ids: set[int]) -> list[dict[str, Any]]:
    """Every group becomes (decayed params, BN params with weight_decay 0)."""
    out = []
    for group in groups:
        params = list(group["params"])
        rest = {k: v for k, v in group.items() if k != "params"}
        decayed = [p for p in params if id(p) not in bn_ids]
        bn = [p for p in params if id(p) in bn_ids]
        if decayed:
            out.append({**rest, "params": decayed})
        if bn:
            out.append({**rest, "params": bn, "weight_decay": 0.0, "name": f"{rest.get('name', 'group')}_bn"})
    return out


def build_optimizer(cfg: OptimConfig, groups: list[dict[str, Any]], modules: list[nn.Module]) -> torch.optim.Optimizer:
    """SGD or AdamW over ``groups`` (see the module docstring)."""
    if not groups:
        raise ConfigError("nothing to train: the task returned no trainable parameters")
    if cfg.no_decay_bn:
        groups = split_bn_groups(groups, batchnorm_parameter_ids(modules))
    prepared = []
    for group in groups:
        g = dict(group)
        g.setdefault("weight_decay", cfg.weight_decay)
        g["lr"] = cfg.lr * float(g.pop("lr_scale", 1.0))
        g["initial_lr"] = g["lr"]
        prepared.append(g)
    if cfg.name == "sgd":
        return torch.optim.SGD(prepared, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.name == "adamw":
        b1, b2 = [*cfg.betas, 0.999][:2]
        return torch.optim.AdamW(prepared, lr=cfg.lr, betas=(b1, b2), weight_decay=cfg.weight_decay)
    raise ConfigError(f"optim.name: expected sgd or adamw, got {cfg.name!r}")
