"""Official MSConv ``model.pt`` (``Zoey-SiZhou/MSConv``) -> :class:`fuseface.nn.backbones.msnet.MSNet`.

The state-dict keys of :mod:`fuseface.nn.backbones.msnet` equal the official ones
(``basic_conv.*``, ``stage_1`` .. ``stage_4``, ``classifier.*``); only a ``module.`` prefix
(DataParallel / DDP) is removed. The official training reads MS1MV3 with torchvision's
``ImageFolder`` (PIL), so the models take **RGB** input, normalised (x / 255 - 0.5) / 0.5
(METHODS.md section 2.4).

**Which arch is the checkpoint?** The official ``backbones/__init__.py`` maps config names to
depths wrongly (bug B1, METHODS.md section 2.8): ``get_model("ms26")`` builds **msnet50**, and
both ``"ms50"`` and ``"ms101"`` build **msnet101**; the released config (``network="ms50"``)
therefore trains msnet101. Pass the arch the checkpoint really is. The depth is read from the
state dict (units per stage, e.g. 23 units in ``stage_3`` for msnet101) and a mismatch raises a
:class:`~fuseface.errors.CheckpointError` naming the right arch.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import nn

from fuseface.compat import load_strict, strip_prefix
from fuseface.errors import CheckpointError
from fuseface.nn.backbones import msnet

ARCHS = {f"msnet{d}": d for d in msnet.DEPTHS}
OFFICIAL_NAMES = {"ms26": "msnet50", "ms50": "msnet101", "ms101": "msnet101"}  # bug B1


def stage_depths(state_dict: Mapping[str, torch.Tensor]) -> tuple[int, int, int, int]:
    """Number of ``MSUnit`` s in each stage of an official state dict (0 where a stage is absent)."""
    units: list[set[int]] = [set(), set(), set(), set()]
    for key in state_dict:
        match = re.match(r"stage_([1-4])\.(\d+)\.", key)
        if match:
            units[int(match.group(1)) - 1].add(int(match.group(2)))
    return tuple(len(u) for u in units)  # type: ignore[return-value]


def detect_arch(state_dict: Mapping[str, torch.Tensor]) -> str | None:
    """The msnet arch whose depths match ``state_dict``, or None."""
    depths = stage_depths(state_dict)
    for name, d in ARCHS.items():
        if tuple(msnet.DEPTHS[d]) == depths:
            return name
    return None


def convert(arch: str, state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
    """Build ``arch`` (``msnet26`` / ``msnet50`` / ``msnet101``) and load ``state_dict`` strictly.

    Raises:
        ValueError: unknown arch (the official config names ``ms26``/``ms50``/``ms101`` are
            rejected with the arch they really build, bug B1).
        CheckpointError: the state dict holds another depth than ``arch``; the message names it.
    """
    if arch not in ARCHS:
        hint = ""
        if arch in OFFICIAL_NAMES:
            hint = (
                f" ({arch!r} is an official config name; because of bug B1 it builds {OFFICIAL_NAMES[arch]}, "
                "pass that arch)"
            )
        raise ValueError(f"unknown msconv arch {arch!r}; expected one of {sorted(ARCHS)}{hint}")
    sd = strip_prefix(state_dict, "module.")
    depths = stage_depths(sd)
    expected = tuple(msnet.DEPTHS[ARCHS[arch]])
    if any(depths) and depths != expected:
        actual = detect_arch(sd)
        what = f"it is {actual}" if actual else f"no msnet arch has these depths (expected {expected} for {arch})"
        raise CheckpointError(
            f"MSConv checkpoint has {depths[2]} units in stage_3 (stage depths {depths}), not {arch}: {what}. "
            "Note the official config names build other depths (ms26 -> msnet50, ms50 -> msnet101)."
        )
    classifier = sd.get("classifier.weight")
    num_features = int(classifier.shape[0]) if classifier is not None else 512
    model = msnet.MSNet(msnet.DEPTHS[ARCHS[arch]], num_features=num_features)
    load_strict(model, sd, f"official MSConv {arch}")
    model.channel_order = "rgb"
    model.arch_name = arch
    return model
