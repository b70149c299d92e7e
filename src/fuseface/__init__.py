"""fuseface: face recognition built around feature fusion.

The facade below is the whole public entry point; everything is imported lazily, so
``import fuseface`` has no side effects and costs milliseconds.

    >>> import fuseface
    >>> fuseface.list_models("ir*")
    ['ir100', 'ir18', 'ir200', 'ir34', 'ir50']
    >>> net = fuseface.create_backbone("ir50", conv="msconv")      # doctest: +SKIP
    >>> model = fuseface.load("weights.safetensors")                # doctest: +SKIP
    >>> emb, norms = model.embed(images)                            # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "compare",
    "create_backbone",
    "create_fusion",
    "embed",
    "fuse",
    "list_models",
    "load",
]

if TYPE_CHECKING:  # pragma: no cover
    import torch.nn as nn


def create_backbone(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered backbone (``ir18`` ... ``ir200``, ``msnet26/50/101``, ...).

    Variants are keywords, never new names: ``conv="msconv"`` replaces the 3x3 convolutions,
    ``head="lgaf"`` puts the LGAF head on top. The output is an un-normalised embedding.
    """
    from fuseface import registry

    return registry.create("backbone", name, **kwargs)


def list_models(pattern: str = "*") -> list[str]:
    """Names of the registered backbones matching a shell-style pattern such as ``"ir*"``."""
    from fuseface import registry

    return registry.names("backbone", pattern)


def create_fusion(name: str, **kwargs: Any) -> nn.Module:
    """Build a set-fusion module: ``average``, ``norm_weighted``, ``score_weighted``,
    ``self_attention`` or ``caface``."""
    from fuseface import registry

    return registry.create("fusion", name, **kwargs)


def load(path: str, **kwargs: Any) -> Any:
    """Load a fuseface model file (safetensors with its architecture, channel order and input
    size stored beside the weights) and return a ready :class:`fuseface.infer.embedder.FaceModel`.

    ``path`` may also name a fetched pretrained model: ``"dlib-resnet"`` (after
    ``fuseface models fetch dlib-resnet``)."""
    from fuseface.infer.embedder import FaceModel

    return FaceModel.from_file(path, **kwargs)


def embed(model: Any, images: Any, **kwargs: Any) -> Any:
    """Embed images with a loaded model; see :meth:`FaceModel.embed`."""
    return model.embed(images, **kwargs)


def compare(model: Any, image_a: Any, image_b: Any, **kwargs: Any) -> Any:
    """Cosine similarity of two faces and a verdict; see :meth:`FaceModel.compare`."""
    return model.compare(image_a, image_b, **kwargs)


def fuse(features: Any, method: str = "average", **kwargs: Any) -> Any:
    """Fuse the embeddings of one probe set into a single L2-normalised template
    (:func:`fuseface.nn.fusion.fuse_features`); ``model=`` may be a fusion module or a fusion
    weights file path (:func:`fuseface.infer.fusion_file.resolve_fusion`)."""
    from fuseface.infer.fusion_file import resolve_fusion
    from fuseface.nn.fusion import fuse_features

    if "model" in kwargs:
        kwargs["model"] = resolve_fusion(kwargs["model"])
    return fuse_features(features, method=method, **kwargs)
