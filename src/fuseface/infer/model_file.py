"""The fuseface model file: weights in safetensors with everything needed to rebuild and feed
the model stored as metadata beside them.

Metadata keys (all strings, as safetensors requires):

* ``fuseface_format``: ``"1"``;
* ``arch``: a registered backbone name (``ir50``, ``msnet50``, ``adaface_ir101`` ...);
* ``arch_kwargs``: JSON of the keyword arguments for :func:`fuseface.create_backbone`;
* ``channel_order``: ``"rgb"`` or ``"bgr"``, the order the network was trained on;
* ``input_size``: side of the square aligned crop (112);
* ``template``: the alignment template the crops are made with (a name in
  :data:`fuseface.align.similarity.TEMPLATES`; ``"arcface"`` when absent);
* ``pixel_mean`` / ``pixel_std``: JSON lists of 3 numbers on the 0..255 scale, in the network's
  channel order: the input is ``(x - mean) / std`` (absent: 127.5 / 127.5, i.e. insightface's
  ``(x / 255 - 0.5) / 0.5``);
* ``embedding_size``: width of the embedding (absent in older files);
* ``extra``: free JSON (training run, source checkpoint, licence, calibrated ``threshold`` ...).

Files written before ``template``, ``pixel_mean``, ``pixel_std`` and ``embedding_size`` existed
read with those defaults.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fuseface.errors import CheckpointError

FORMAT_VERSION = "1"
#: insightface's input normalisation ``(x / 255 - 0.5) / 0.5`` as a mean and std on the 0..255 scale.
DEFAULT_PIXEL_MEAN = (127.5, 127.5, 127.5)
DEFAULT_PIXEL_STD = (127.5, 127.5, 127.5)
#: The :class:`ModelMeta` fields a backbone's registry entry states.
_REGISTRY_FIELDS = ("channel_order", "input_size", "template", "pixel_mean", "pixel_std", "embedding_size")


@dataclass
class ModelMeta:
    """What a model file says about its network."""

    arch: str
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    channel_order: str = "rgb"
    input_size: int = 112
    extra: dict[str, Any] = field(default_factory=dict)
    template: str = "arcface"
    pixel_mean: tuple[float, float, float] = DEFAULT_PIXEL_MEAN
    pixel_std: tuple[float, float, float] = DEFAULT_PIXEL_STD
    embedding_size: int | None = None

    def pixel_norm(self) -> dict[str, tuple[float, float, float] | None]:
        """``pixel_mean`` / ``pixel_std`` keywords for :func:`fuseface.ops.to_input_tensor`: None for
        insightface's default, so the default input is exactly ``(x / 255 - 0.5) / 0.5``."""
        mean, std = tuple(self.pixel_mean), tuple(self.pixel_std)
        if mean == DEFAULT_PIXEL_MEAN and std == DEFAULT_PIXEL_STD:
            return {"pixel_mean": None, "pixel_std": None}
        return {"pixel_mean": mean, "pixel_std": std}

    def to_strings(self) -> dict[str, str]:
        if self.channel_order not in ("rgb", "bgr"):
            raise ValueError(f"channel_order must be 'rgb' or 'bgr', got {self.channel_order!r}")
        out = {
            "fuseface_format": FORMAT_VERSION,
            "arch": self.arch,
            "arch_kwargs": json.dumps(self.arch_kwargs, sort_keys=True),
            "channel_order": self.channel_order,
            "input_size": str(self.input_size),
            "template": self.template,
            "pixel_mean": json.dumps([float(v) for v in self.pixel_mean]),
            "pixel_std": json.dumps([float(v) for v in self.pixel_std]),
            "extra": json.dumps(self.extra, sort_keys=True, default=str),
        }
        if self.embedding_size is not None:
            out["embedding_size"] = str(int(self.embedding_size))
        return out

    @classmethod
    def from_registry(cls, arch: str, arch_kwargs: dict[str, Any] | None = None, **fields: Any) -> ModelMeta:
        """The metadata a registered backbone states (:func:`fuseface.registry.settings`: channel
        order, input size, pixel mean / std, embedding size, template); ``fields`` override them."""
        from fuseface import registry

        kwargs = dict(arch_kwargs or {})
        stated = registry.settings(arch, **kwargs)
        values = {k: stated[k] for k in _REGISTRY_FIELDS}
        values["pixel_mean"], values["pixel_std"] = tuple(values["pixel_mean"]), tuple(values["pixel_std"])
        return cls(arch=arch, arch_kwargs=kwargs, **{**values, **fields})

    @classmethod
    def from_strings(cls, meta: dict[str, str], path: str | Path) -> ModelMeta:
        if meta.get("fuseface_format") != FORMAT_VERSION or "arch" not in meta:
            raise CheckpointError(f"{path}: not a fuseface model file (metadata {sorted(meta)})")
        try:
            return cls(
                arch=meta["arch"],
                arch_kwargs=json.loads(meta.get("arch_kwargs", "{}")),
                channel_order=meta.get("channel_order", "rgb"),
                input_size=int(meta.get("input_size", "112")),
                extra=json.loads(meta.get("extra", "{}")),
                template=meta.get("template", "arcface"),
                pixel_mean=_three_floats(meta.get("pixel_mean"), DEFAULT_PIXEL_MEAN, "pixel_mean"),
                pixel_std=_three_floats(meta.get("pixel_std"), DEFAULT_PIXEL_STD, "pixel_std"),
                embedding_size=int(meta["embedding_size"]) if "embedding_size" in meta else None,
            )
        except (ValueError, TypeError) as exc:
            raise CheckpointError(f"{path}: malformed model file metadata ({exc})") from exc


def _three_floats(text: str | None, default: tuple[float, float, float], key: str) -> tuple[float, float, float]:
    if text is None:
        return default
    values = json.loads(text)
    if not isinstance(values, list) or len(values) != 3:
        raise ValueError(f"{key} must be a list of 3 numbers, got {text!r}")
    return (float(values[0]), float(values[1]), float(values[2]))


def check_input_size(model: nn.Module, meta: ModelMeta, where: str) -> None:
    """Refuse a ``meta.input_size`` that contradicts the size the network was built for (its
    ``input_size`` attribute, when it has one): crops would be prepared at the wrong size."""
    built_for = getattr(model, "input_size", None)
    if isinstance(built_for, int) and built_for != meta.input_size:
        raise ValueError(
            f"{where}: the model was built for {built_for}x{built_for} inputs but ModelMeta.input_size is "
            f"{meta.input_size}; set ModelMeta(input_size={built_for})"
        )


def save_model(path: str | Path, model: nn.Module, meta: ModelMeta) -> Path:
    """Write ``model``'s state dict and ``meta`` to ``path`` atomically (temp file, rename)."""
    from safetensors.torch import save_file

    path = Path(path)
    check_input_size(model, meta, str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata=meta.to_strings())
    tmp.replace(path)
    return path


def read_model_file(path: str | Path) -> tuple[dict[str, torch.Tensor], ModelMeta]:
    """Read the tensors and metadata of a model file, with a clear error when it is not one."""
    from safetensors import safe_open

    from fuseface.infer.pretrained import resolve_model_path

    path = resolve_model_path(path)  # a pretrained name such as "dlib-resnet" -> its cached file
    if not path.is_file():
        raise CheckpointError(f"{path}: model file not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = ModelMeta.from_strings(dict(f.metadata() or {}), path)
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no iterator)
    except CheckpointError:
        raise
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise CheckpointError(f"{path}: cannot read model file ({exc})") from exc
    return tensors, meta


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, ModelMeta]:
    """Rebuild the network named in the file, load its weights strictly, return it in eval mode."""
    import fuseface

    tensors, meta = read_model_file(path)
    model = fuseface.create_backbone(meta.arch, **meta.arch_kwargs)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not match {meta.arch} {meta.arch_kwargs}: {exc}") from exc
    return model.to(device).eval(), meta


def model_fingerprint(model: nn.Module, meta: ModelMeta) -> str:
    """SHA-256 of what decides a model's embeddings: architecture, its arguments, channel order,
    input size, alignment template, pixel normalisation and every weight tensor (name, dtype,
    shape, bytes, in key order). Two files holding the same network give the same fingerprint;
    any changed weight gives another."""
    import hashlib

    h = hashlib.sha256()
    decisive = ("arch", "arch_kwargs", "channel_order", "input_size", "template", "pixel_mean", "pixel_std")
    head = {k: v for k, v in meta.to_strings().items() if k in decisive}
    h.update(json.dumps(head, sort_keys=True).encode())
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
