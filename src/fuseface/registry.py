"""The one registry for every pluggable part: backbones, 3x3-conv replacements, heads, fusions,
margin losses, training tasks, face detectors and official checkpoint sources.

Entries are stored as ``"module.path:attribute"`` strings and imported only when created, so
``import fuseface`` stays fast and free of side effects (the timm ``create_model`` /
``list_models`` pattern). Users add their own parts with :func:`register`.

Each entry carries its **settings**, stated once beside it (timm's pretrained config): a backbone
states ``input_size``, ``channel_order``, ``pixel_mean`` / ``pixel_std`` (0..255 scale, in the
network's channel order), ``embedding_size`` and the alignment ``template`` — the field names of
:class:`fuseface.infer.model_file.ModelMeta` — and everything downstream reads them with
:func:`settings` instead of guessing. ``test_kwargs`` are small constructor arguments for the
registry sweep (``tests/test_registry.py``).

Kinds:
  * ``backbone``: ``factory(**kw) -> nn.Module`` returning un-normalised embeddings.
  * ``conv``: ``factory(channels, stride, **kw) -> nn.Module`` replacing a block's 3x3 conv
    (channels in == channels out, ``stride`` applied by the module).
  * ``head``: embedding heads fed with the backbone's stage maps (see ``nn/heads``).
  * ``fusion``: set / template fusion modules (see ``nn/fusion``).
  * ``loss``: margin losses acting on cosine logits (see ``nn/losses``).
  * ``task``: training task classes driven by ``fuseface.train.trainer`` (see ``train/task.py``).
  * ``detector``: ``factory(**kw) -> FaceDetector`` (see ``align/detector.py``).
  * ``checkpoint_source``: ``convert(arch, state_dict) -> nn.Module`` for an official checkpoint
    format (see ``compat/``).
"""

from __future__ import annotations

import fnmatch
import importlib
from collections.abc import Callable
from typing import Any

KINDS = ("backbone", "conv", "head", "fusion", "loss", "task", "detector", "checkpoint_source")

_ENTRIES: dict[str, dict[str, str | Callable[..., Any]]] = {
    "backbone": {
        **{f"ir{d}": f"fuseface.nn.backbones.iresnet:ir{d}" for d in (18, 34, 50, 100, 200)},
        **{f"msnet{d}": f"fuseface.nn.backbones.msnet:msnet{d}" for d in (26, 50, 101)},
        **{f"adaface_ir{d}": f"fuseface.nn.backbones.adaface_ir:adaface_ir{d}" for d in (18, 34, 50, 101)},
        # the small IResNet (one block per stage) that `make demo` trains; registered here so that
        # the demo's exported model file loads anywhere with ``fuseface.load``
        "ir_demo": "fuseface.nn.backbones.iresnet:ir_demo",
        # dlib's public-domain face-recognition ResNet (converted by `fuseface models fetch dlib-resnet`)
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
    "task": {
        "recognition": "fuseface.train.recognition:RecognitionTask",
        "caface": "fuseface.train.caface:CAFaceTask",
    },
    "detector": {
        "mtcnn": "fuseface.align.mtcnn:MTCNN",
    },
    "checkpoint_source": {
        "insightface": "fuseface.compat.insightface:convert",
        "adaface": "fuseface.compat.adaface:convert",
        "msconv": "fuseface.compat.msconv:convert",
        "caface": "fuseface.compat.caface:convert",
        "dlib": "fuseface.compat.dlib:convert",
    },
}

#: What a backbone entry states unless it says otherwise (insightface's convention).
BACKBONE_DEFAULTS: dict[str, Any] = {
    "input_size": 112,
    "channel_order": "rgb",
    "pixel_mean": (127.5, 127.5, 127.5),
    "pixel_std": (127.5, 127.5, 127.5),
    "embedding_size": 512,
    "template": "arcface",
    "test_kwargs": {"input_size": 16, "num_features": 32},
}

_SETTINGS: dict[str, dict[str, dict[str, Any]]] = {kind: {} for kind in KINDS}
_SETTINGS["backbone"].update(
    {
        # AdaFace's net.py is built for 112x112 only and was trained on BGR crops
        **{f"adaface_ir{d}": {"channel_order": "bgr", "test_kwargs": {"num_features": 32}} for d in (18, 34, 50, 101)},
        "ir_demo": {"test_kwargs": {"input_size": 16, "num_features": 32, "conv": "msconv", "stages": [3, 4]}},
        # dlib/dnn/input.h: RGB, (pixel - mean) / 256 with the means stored in the .dat (these are
        # the values of dlib_face_recognition_resnet_model_v1.dat); its own 150x150 chip frame
        "dlib_resnet_v1": {
            "input_size": 150,
            "pixel_mean": (122.782, 117.001, 104.298),
            "pixel_std": (256.0, 256.0, 256.0),
            "embedding_size": 128,
            "template": "dlib_150",
            "test_kwargs": {},
        },
    }
)
_SETTINGS["checkpoint_source"].update(
    {
        "insightface": {"archs": ("iresnet18", "iresnet34", "iresnet50", "iresnet100", "iresnet200")},
        "adaface": {"archs": ("ir_18", "ir_34", "ir_50", "ir_101")},
        "msconv": {"archs": ("msnet26", "msnet50", "msnet101")},
        "caface": {"archs": ("caface",)},
        "dlib": {"archs": ("resnet_v1",)},
    }
)


def register(kind: str, name: str, target: str | Callable[..., Any] | None = None, **entry_settings: Any):
    """Register ``target`` (a callable or a ``"module:attr"`` string) under ``kind``/``name``,
    with its settings as keywords (for a backbone: ``input_size=``, ``channel_order=``, ...).

    Usable as a decorator: ``@register("backbone", "my_net", channel_order="bgr")``.
    """
    _check_kind(kind)

    def _add(obj: str | Callable[..., Any]):
        _ENTRIES[kind][name] = obj
        _SETTINGS[kind][name] = dict(entry_settings)
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


def settings(name: str, kind: str = "backbone", **kwargs: Any) -> dict[str, Any]:
    """The settings of entry ``kind``/``name``; for a backbone with every field filled in.

    A backbone's ``input_size`` and ``embedding_size`` follow the constructor ``kwargs`` when given
    (``input_size=``, ``num_features=``), so ``settings("ir50", input_size=64)`` describes the
    network that ``create_backbone("ir50", input_size=64)`` builds.
    """
    _check_kind(kind)
    if name not in _ENTRIES[kind]:
        known = ", ".join(sorted(_ENTRIES[kind])) or "none"
        raise KeyError(f"unknown {kind} {name!r}; known: {known}")
    own = dict(_SETTINGS[kind].get(name, {}))
    if kind != "backbone":
        return own
    out = {**BACKBONE_DEFAULTS, **own}
    if "input_size" in kwargs:
        out["input_size"] = int(kwargs["input_size"])
    if "num_features" in kwargs:
        out["embedding_size"] = int(kwargs["num_features"])
    return out


def names(kind: str, pattern: str = "*") -> list[str]:
    """Registered names of ``kind`` matching a shell-style ``pattern`` (e.g. ``"ir*"``), sorted."""
    _check_kind(kind)
    return sorted(n for n in _ENTRIES[kind] if fnmatch.fnmatchcase(n, pattern))


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown registry kind {kind!r}; expected one of {KINDS}")
