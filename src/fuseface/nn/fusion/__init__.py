"""Set / template fusion: one template from the embeddings of many images of one identity.

``fuse_features(features, method, styles, scores, chunk_size, model)`` is the one entry point
(what :func:`fuseface.fuse` and ``fuseface eval ijb --fusion M`` call per template). Methods:

=================  =========================================================  ======================
method             what                                                       needs
=================  =========================================================  ======================
``average``        mean of unit features                                      —
``norm_weighted``  mean of un-normalised features                             —
``score_weighted`` insightface media/template pooling with detector scores    ``scores`` (N,)
``self_attention`` quadratic self-attention pooling                           ``model`` (else untrained)
``caface``         cluster-and-aggregate with the chunked memory              ``styles``, ``model``
=================  =========================================================  ======================

``model`` is a fusion module. Fusion weights files (written and read by
:mod:`fuseface.infer.fusion_file`) are opened by the callers: :func:`fuseface.fuse` accepts a
file path and resolves it there, so this package never reads a file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

__all__ = ["METHODS", "fuse_features"]

#: The built-in methods; any ``fusion`` entry of :mod:`fuseface.registry` is accepted, user ones too.
METHODS = ("average", "norm_weighted", "score_weighted", "self_attention", "caface")


def _resolve_model(method: str, model: Any) -> nn.Module:
    from fuseface import registry

    if isinstance(model, (str, Path)):
        raise TypeError(
            f"fuse_features takes a fusion module, not the file {model}; "
            "use fuseface.fuse(..., model=path) or fuseface.infer.fusion_file.load_fusion(path)"
        )
    if model is None:
        if method == "caface":
            raise ValueError("fusion 'caface' needs model= (a CAFace module or a fusion weights file)")
        return registry.create("fusion", method)
    return model


def fuse_features(
    features: Any,
    method: str = "average",
    styles: Any = None,
    scores: Any = None,
    chunk_size: int | None = None,
    model: Any = None,
    **kwargs: Any,
) -> np.ndarray:
    """Fuse one probe into an L2-normalised template (D,), float32.

    ``features`` (N, D) un-normalised embeddings; ``styles`` (N, 384, 2) for CAFace; ``scores`` (N,)
    detector scores for ``score_weighted``; ``chunk_size`` the CAFace chunk (None = one chunk);
    ``model`` a fusion module (required for ``caface``; :func:`fuseface.fuse` also takes a fusion
    weights file path). Extra
    keywords go to the module's ``fuse`` (e.g. ``media=`` for ``score_weighted``). NaN rows are
    dropped with a warning; an empty probe raises :class:`fuseface.errors.DataError`.
    """
    from fuseface import registry

    known = registry.names("fusion")
    if method not in known:
        raise ValueError(f"unknown fusion method {method!r}; known: {', '.join(known)}")
    module = _resolve_model(method, model)
    if method == "caface":
        return module.fuse(features, styles, chunk_size=chunk_size, **kwargs)
    return module.fuse(features, styles=styles, scores=scores, chunk_size=chunk_size, **kwargs)
