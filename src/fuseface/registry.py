"""One small registry for every pluggable part: backbones, 3x3-conv replacements, heads,
fusions and margin losses.

Entries are stored as ``"module.path:attribute"`` strings and imported only when created, so
``import fuseface`` stays fast and free of side effects (the timm ``create_model`` /
``list_models`` pattern). Users add their own parts with :func:`register`.

Kinds:
  * ``backbone``: ``factory(**kw) -> nn.Module`` returning un-normalised embeddings.
  * ``conv``: ``factory(channels, stride, **kw) -> nn.Module`` replacing a block's 3x3 conv
    (channels in == channels out, ``stride`` applied by the module).
  * ``head``: embedding heads fed with the backbone's stage maps (see ``nn/heads``).
  * ``fusion``: set / template fusion modules (see ``nn/fusion``).
  * ``loss``: margin losses acting on cosine logits (see ``nn/losses``).
"""

from __future__ import annotations

import fnmatch
import importlib
from collections.abc import Callable
from typing import Any

KINDS = ("backbone", "conv", "head", "fusion", "loss")

_ENTRIES: dict[str, dict[str, str | Callable[..., Any]]] = {
    "backbone": {
        **{f"ir{d}": f"fuseface.nn.backbones.iresnet:ir{d}" for d in (18, 34, 50, 100, 200)},
        **{f"msnet{d}": f"fuseface.nn.backbones.msnet:msnet{d}" for d in (26, 50, 101)},
        **{f"adaface_ir{d}": f"fuseface.nn.backbones.adaface_ir:adaface_ir{d}" for d in (18, 34, 50, 101)},
        # the small IResNet (one block per stage) that `make demo` trains; registered here so that
        # the demo's exported model file loads anywhere with ``fuseface.load``
        "ir_demo": "fuseface.experiments.demo:demo_iresnet",
        "dlib_resnet_v1": "fuseface.nn.backbones.dlib_resnet:dlib_resnet_v1",
    },
    "conv": {
        "conv3x3": "fuseface.nn.backbones.iresnet:plain_conv3x3",
        "msconv": "fuseface.nn.layers.msconv:msconv_factory",
        "skconv": "fuseface.nn.layers.attention:skconv_factory",
        "se": "fuseface.nn.layers.attention:se_factory",
        "cbam": "fuseface.nn.layers.attention:cbam_factory",
    },
    "head": {
        "lgaf": "fuseface.nn.heads.lgaf:LGAFHead",
    },
    "fusion": {
        "average": "fuseface.nn.fusion.pooling:AverageFusion",
        "norm_weighted": "fuseface.nn.fusion.pooling:NormWeightedFusion",
        "score_weighted": "fuseface.nn.fusion.pooling:ScoreWeightedFusion",
        "self_attention": "fuseface.nn.fusion.pooling:SelfAttentionFusion",
        "caface": "fuseface.nn.fusion.caface:CAFace",
    },
    "loss": {
        "combined": "fuseface.nn.losses.margin:CombinedMarginLoss",
        "arcface": "fuseface.nn.losses.margin:ArcFace",
        "cosface": "fuseface.nn.losses.margin:CosFace",
        "adaface": "fuseface.nn.losses.margin:AdaFaceLoss",
    },
}


def register(kind: str, name: str, target: str | Callable[..., Any] | None = None):
    """Register ``target`` (a callable or a ``"module:attr"`` string) under ``kind``/``name``.

    Usable as a decorator: ``@register("backbone", "my_net")``.
    """
    _check_kind(kind)

    def _add(obj: str | Callable[..., Any]):
        _ENTRIES[kind][name] = obj
        return obj

    if target is None:
        return _add
    return _add(target)


def resolve(kind: str, name: str) -> Callable[..., Any]:
    """Return the factory registered as ``kind``/``name``, importing it on first use."""
    _check_kind(kind)
    try:
        entry = _ENTRIES[kind][name]
    except KeyError:
        known = ", ".join(sorted(_ENTRIES[kind])) or "none"
        raise KeyError(f"unknown {kind} {name!r}; known: {known}") from None
    if isinstance(entry, str):
        module_name, attr = entry.split(":")
        entry = getattr(importlib.import_module(module_name), attr)
        _ENTRIES[kind][name] = entry
    return entry


def create(kind: str, name: str, *args: Any, **kwargs: Any) -> Any:
    """Build the part registered as ``kind``/``name`` with the given arguments."""
    return resolve(kind, name)(*args, **kwargs)


def names(kind: str, pattern: str = "*") -> list[str]:
    """Registered names of ``kind`` matching a shell-style ``pattern`` (e.g. ``"ir*"``), sorted."""
    _check_kind(kind)
    return sorted(n for n in _ENTRIES[kind] if fnmatch.fnmatchcase(n, pattern))


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown registry kind {kind!r}; expected one of {KINDS}")
