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

**Fusion weights file** (what ``model`` may point to): a safetensors file written by
:func:`save_fusion`, the state dict of the module plus metadata ``fuseface_fusion="1"``,
``method`` (registry name) and ``kwargs`` (JSON constructor arguments) and ``extra`` (free JSON).
:func:`load_fusion` rebuilds the module in eval mode. Loaded files are cached by path.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from fuseface.errors import CheckpointError

__all__ = ["METHODS", "fuse_features", "load_fusion", "save_fusion"]

#: The built-in methods; any ``fusion`` entry of :mod:`fuseface.registry` is accepted, user ones too.
METHODS = ("average", "norm_weighted", "score_weighted", "self_attention", "caface")
FUSION_FORMAT = "1"
_CACHE: dict[tuple[str, float], nn.Module] = {}


def fusion_kwargs(module: nn.Module) -> dict[str, Any]:
    """Constructor arguments of a fusion module (``config`` for CAFace; simple attributes otherwise)."""
    config = getattr(module, "config", None)
    if isinstance(config, dict):
        return dict(config)
    if hasattr(module, "feature_dim") and hasattr(module, "num_heads"):  # SelfAttentionFusion
        return {"feature_dim": module.feature_dim, "dim": module.proj.in_features, "num_heads": module.num_heads}
    if hasattr(module, "keep_norm"):
        return {"keep_norm": module.keep_norm, "detector_score": module.detector_score}
    return {}


def save_fusion(path: str | Path, module: nn.Module, method: str, extra: dict[str, Any] | None = None) -> Path:
    """Write a fusion weights file (safetensors + metadata), atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # clone: the CAFace layout keeps one tensor under two keys (cfcs.0 / cfc), which safetensors refuses
    state = {k: v.detach().cpu().clone().contiguous() for k, v in module.state_dict().items()}
    meta = {
        "fuseface_fusion": FUSION_FORMAT,
        "method": method,
        "kwargs": json.dumps(fusion_kwargs(module), sort_keys=True),
        "extra": json.dumps(extra or {}, sort_keys=True, default=str),
    }
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata=meta)
    tmp.replace(path)
    return path


def load_fusion(path: str | Path) -> nn.Module:
    """Rebuild the fusion module stored by :func:`save_fusion` (eval mode; strict load)."""
    from safetensors import SafetensorError, safe_open

    from fuseface import registry

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: fusion weights file not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors fusion file ({exc})") from exc
    if meta.get("fuseface_fusion") != FUSION_FORMAT or "method" not in meta:
        raise CheckpointError(f"{path}: not a fuseface fusion weights file (metadata {sorted(meta)})")
    module = registry.create("fusion", meta["method"], **json.loads(meta.get("kwargs", "{}")))
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not match {meta['method']}: {exc}") from exc
    module.fusion_extra = json.loads(meta.get("extra", "{}"))
    return module.eval()


def _resolve_model(method: str, model: Any) -> nn.Module:
    from fuseface import registry

    if model is None:
        if method == "caface":
            raise ValueError("fusion 'caface' needs model= (a CAFace module or a fusion weights file)")
        return registry.create("fusion", method)
    if isinstance(model, (str, Path)):
        p = Path(model)
        key = (str(p.resolve()), p.stat().st_mtime if p.exists() else 0.0)
        if key not in _CACHE:
            _CACHE[key] = load_fusion(p)
        return _CACHE[key]
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
    ``model`` a fusion module or a fusion weights file path (required for ``caface``). Extra
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
