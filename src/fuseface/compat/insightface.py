"""insightface arcface_torch ``model.pt`` -> :class:`fuseface.nn.backbones.iresnet.IResNet`.

The keys are identical by construction; only a ``module.`` prefix (DataParallel / DDP) is
removed. insightface models take **RGB** input (arcface_torch decodes with mxnet).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from fuseface.compat import load_strict, strip_prefix
from fuseface.nn.backbones import iresnet

ARCHS = {f"iresnet{d}": d for d in (18, 34, 50, 100, 200)}


def convert(arch: str, state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
    """Build insightface ``arch`` (``iresnet18`` ... ``iresnet200``) and load ``state_dict``."""
    if arch not in ARCHS:
        raise ValueError(f"unknown insightface arch {arch!r}; expected one of {sorted(ARCHS)}")
    sd = strip_prefix(state_dict, "module.")
    fc = sd.get("fc.weight")
    num_features = int(fc.shape[0]) if fc is not None else 512
    model = iresnet.IResNet(iresnet.DEPTHS[ARCHS[arch]], num_features=num_features)
    load_strict(model, sd, f"insightface {arch}")
    model.channel_order = "rgb"
    model.arch_name = f"ir{ARCHS[arch]}"
    return model
