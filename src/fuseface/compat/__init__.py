"""Converters from official checkpoints to fuseface modules.

``from_official(source, arch, state_dict)`` returns an eval-mode module with the weights loaded
strictly. Each source lives in its own module and registers itself in ``_SOURCES``:

=============  ==========================================  =========================
source         arch                                        module
=============  ==========================================  =========================
insightface    iresnet18, iresnet34, ..., iresnet200       ``compat/insightface.py``
adaface        ir_18, ir_34, ir_50, ir_101                 ``compat/adaface.py``
msconv         msnet26, msnet50, msnet101                  ``compat/msconv.py``
caface         caface                                      ``compat/caface.py``
dlib           resnet_v1 (a ``.dat`` path, not a state dict)  ``compat/dlib.py``
=============  ==========================================  =========================
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

_SOURCES = {
    "insightface": "fuseface.compat.insightface",
    "adaface": "fuseface.compat.adaface",
    "msconv": "fuseface.compat.msconv",
    "caface": "fuseface.compat.caface",
    "dlib": "fuseface.compat.dlib",
}


def from_official(source: str, arch: str, state_dict: Mapping[str, Any] | str | os.PathLike[str]) -> nn.Module:
    """Build ``arch`` as the official ``source`` code defines it and load ``state_dict`` strictly.

    ``state_dict`` may be a file path for sources with their own format (``dlib``: the ``.dat``),
    the raw mapping of tensors or a whole checkpoint dict holding it under
    ``"state_dict"`` (Lightning) or ``"model"``; each converter documents the keys it sets aside.
    The returned module is in eval mode and records ``channel_order`` and ``input_size``.
    """
    if source not in _SOURCES:
        raise ValueError(f"unknown checkpoint source {source!r}; known: {sorted(_SOURCES)}")
    module = importlib.import_module(_SOURCES[source])
    if isinstance(state_dict, (str, os.PathLike)):  # sources whose files are not torch checkpoints
        if not hasattr(module, "from_path"):
            raise TypeError(f"{source} checkpoints are state dicts; load the file with torch.load first")
        return module.from_path(arch, state_dict).eval()
    model = module.convert(arch, unwrap_state_dict(state_dict))
    return model.eval()


def unwrap_state_dict(obj: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Return the tensor mapping inside a checkpoint (``state_dict`` / ``model`` wrappers removed)."""
    for key in ("state_dict", "model", "model_state_dict"):
        inner = obj.get(key) if isinstance(obj, Mapping) else None
        if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            return dict(inner)
    if not isinstance(obj, Mapping):
        raise TypeError(f"expected a state dict mapping, got {type(obj).__name__}")
    return dict(obj)


def strip_prefix(state_dict: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Remove ``prefix`` from every key that has it (e.g. ``module.`` left by DataParallel)."""
    return {k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in state_dict.items()}


def load_strict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], what: str) -> nn.Module:
    """``load_state_dict(strict=True)`` with a readable error listing missing/unexpected keys."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    wrong = sorted(k for k in set(own) & set(state_dict) if tuple(own[k].shape) != tuple(state_dict[k].shape))
    if missing or unexpected or wrong:

        def show(keys: list[str]) -> str:
            return ", ".join(keys[:6]) + (f" ... (+{len(keys) - 6})" if len(keys) > 6 else "")

        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys: {show(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys: {show(unexpected)}")
        if wrong:
            details = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}" for k in wrong]
            parts.append(f"{len(wrong)} shape mismatches: {show(details)}")
        raise ValueError(f"state dict does not match {what}: " + "; ".join(parts))
    model.load_state_dict(state_dict, strict=True)
    return model
