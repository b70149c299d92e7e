"""AdaFace checkpoints (``adaface_ir101_webface4m.ckpt`` etc.) -> :class:`AdaFaceIR`.

A Lightning checkpoint stores the network under ``model.`` and the margin head's class matrix
as ``head.kernel``; the head is set aside (it is a training artefact). The module returns the raw
embedding (AdaFace's ``normalized_embedding * norm``) and records ``channel_order = "bgr"``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from fuseface.compat import load_strict, strip_prefix
from fuseface.nn.backbones import adaface_ir

ARCHS = {"ir_18": 18, "ir_34": 34, "ir_50": 50, "ir_101": 101}


def convert(arch: str, state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
    """Build AdaFace ``arch`` (``ir_18`` ... ``ir_101``) and load its weights strictly."""
    if arch not in ARCHS:
        raise ValueError(f"unknown AdaFace arch {arch!r}; expected one of {sorted(ARCHS)}")
    sd = {k: v for k, v in state_dict.items() if not k.startswith("head.")}
    sd = strip_prefix(strip_prefix(sd, "module."), "model.")
    model = adaface_ir.AdaFaceIR(adaface_ir.DEPTHS[ARCHS[arch]])
    load_strict(model, sd, f"AdaFace {arch}")
    model.arch_name = f"adaface_ir{ARCHS[arch]}"
    return model
