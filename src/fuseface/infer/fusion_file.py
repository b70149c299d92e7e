"""The fusion weights file: a set-fusion module's weights in safetensors, beside the model file
format (:mod:`fuseface.infer.model_file`).

A file written by :func:`save_fusion` holds the module's state dict plus the metadata
``fuseface_fusion="1"``, ``method`` (its :mod:`fuseface.registry` fusion name), ``kwargs`` (JSON
constructor arguments, :func:`fusion_kwargs`) and ``extra`` (free JSON). :func:`load_fusion`
rebuilds the module through the registry and loads the weights strictly, in eval mode.
:func:`resolve_fusion` turns what callers pass as ``model=`` (a module, a file path or nothing)
into the module :func:`fuseface.nn.fusion.fuse_features` runs; files loaded that way are cached
by resolved path and modification time, so fusing many templates with one file reads it once.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from fuseface.errors import CheckpointError

__all__ = ["FUSION_FORMAT", "fusion_kwargs", "load_fusion", "resolve_fusion", "save_fusion"]

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


def resolve_fusion(model: Any) -> Any:
    """``model=`` as :func:`fuseface.nn.fusion.fuse_features` takes it: a fusion weights file path
    becomes its module (loaded once per path and modification time); a module or None is returned
    as it is."""
    if isinstance(model, (str, Path)):
        p = Path(model)
        key = (str(p.resolve()), p.stat().st_mtime if p.exists() else 0.0)
        if key not in _CACHE:
            _CACHE[key] = load_fusion(p)
        return _CACHE[key]
    return model
