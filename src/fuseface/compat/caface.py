"""Converter for the released CAFace checkpoint (mk-minchul/caface, ``METHODS.md`` §3.9-3.10).

The release is a PyTorch-Lightning ``.ckpt``: ``ckpt["state_dict"]`` holds the whole ``Trainer``
(caface/trainer.py): ``model.*`` (the frozen AdaFace IR-101 backbone), ``aggregator.*`` (SIM, norm
embedding, CN, AGN: the part converted here) and ``center.weight`` (the frozen class centres of the
centre loss). The official demo loader (demo/model_loader.py) expects exactly that one extra key.

``convert("caface", sd)`` sets aside the backbone and centre keys, strips ``aggregator.``, infers
the variant from the shapes (M from ``group_token``, depth from the number of CN blocks, confidence
dim from the last AGN layer, norm / style sizes from their tables) and loads strictly into
:class:`fuseface.nn.fusion.caface.CAFace`. ``split_checkpoint`` returns the three parts when the
backbone is wanted too (convert it with ``from_official("adaface", "ir_101", backbone_sd)``).
A state dict without the ``aggregator.`` prefix (an aggregator saved alone) is accepted as is.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from fuseface.compat import load_strict
from fuseface.nn.fusion.caface import CAFace

ARCHS = ("caface",)
AGGREGATOR_PREFIX = "aggregator."
BACKBONE_PREFIX = "model."
CENTER_KEY = "center.weight"


def split_checkpoint(
    state_dict: Mapping[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor | None]:
    """``(aggregator keys without prefix, backbone keys without prefix, centre table or None)``."""
    agg = {k[len(AGGREGATOR_PREFIX) :]: v for k, v in state_dict.items() if k.startswith(AGGREGATOR_PREFIX)}
    backbone = {k[len(BACKBONE_PREFIX) :]: v for k, v in state_dict.items() if k.startswith(BACKBONE_PREFIX)}
    center = state_dict.get(CENTER_KEY)
    if not agg:  # an aggregator state dict on its own
        agg = {k: v for k, v in state_dict.items() if not k.startswith(BACKBONE_PREFIX) and k != CENTER_KEY}
    return agg, backbone, center


def infer_config(agg: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """CAFace constructor arguments implied by the tensor shapes of an aggregator state dict."""
    try:
        group_token = agg["fusion_net.clustering_layer.group_token"]
        depth = len({m.group(1) for k in agg if (m := re.match(r"fusion_net\.clustering_layer\.blocks\.(\d+)\.", k))})
        last = agg[f"fusion_net.conf_mlp.{depth}.fc2.weight"]
        return {
            "num_clusters": int(group_token.shape[1]),
            "depth": depth,
            "confidence_dim": int(last.shape[0]),
            "style_channels": int(agg["style_maker.cfc"].shape[0]),
            "style_dim": int(agg["style_maker.linear.weight"].shape[0]),
            "norm_dim": int(agg["norm_emb.pe"].shape[1]),
            "feature_dim": 512,
        }
    except KeyError as exc:
        raise ValueError(f"not a CAFace aggregator state dict: missing key {exc}") from None


def convert(arch: str, state_dict: Mapping[str, torch.Tensor]) -> CAFace:
    """Released checkpoint (or its ``state_dict``) -> :class:`CAFace` in eval mode, loaded strictly."""
    if arch not in ARCHS:
        raise ValueError(f"unknown CAFace arch {arch!r}; known: {ARCHS}")
    agg, _backbone, _center = split_checkpoint(state_dict)
    config = infer_config(agg)
    num_heads = 8  # not recoverable from shapes; the release and every tconfig variant use 8
    model = CAFace(num_heads=num_heads, **config)
    load_strict(model, agg, "CAFace aggregator (released layout)")
    return model.eval()
