"""ONNX export of a backbone with a dynamic batch axis, checked against onnxruntime.

``torch.onnx.export`` is called with ``dynamo=False`` (the TorchScript-tracing exporter) and opset
17 first: it handles IResNet/MSConv/LGAF graphs (PReLU, BN, flatten, Linear) without the extra
constraints of the dynamo exporter; if it fails, the dynamo exporter is tried
(``dynamic_shapes`` on the batch dimension). The graph has one input ``input`` of shape
``(batch, 3, S, S)`` (normalised ``(x - pixel_mean) / pixel_std`` as the model file states, stored
with the alignment template in the ONNX metadata; insightface's ``(x/255 - 0.5)/0.5`` by default,
in the model's channel order) and one output ``embedding`` ``(batch, D)``, un-normalised.

:func:`check_onnx` runs the file with onnxruntime (CPU) and returns the max absolute difference to
the PyTorch model on the same random batch. The exports refuse (:class:`~fuseface.errors.ExportError`,
the CLI exits 2) a file whose difference exceeds ``ONNX_ATOL + ONNX_RTOL * max|torch output|``:
float32 graphs reordered by onnxruntime agree to ~1e-6 relative, so a larger gap is a wrong graph.
Without the ``onnx`` extra the export says which package to install.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fuseface.errors import ConfigError, ExportError

OPSET = 17
ONNX_RTOL = 1e-4  # of max|torch output|
ONNX_ATOL = 1e-5
INSTALL_HINT = "pip install 'fuseface[onnx]' (onnx, onnxruntime, onnxscript)"


def require_onnx() -> None:
    """Raise :class:`ExportError` with the install command when the ``onnx`` extra is missing."""
    import importlib

    for name in ("onnx", "onnxruntime"):
        try:
            importlib.import_module(name)
        except ImportError:
            raise ExportError(
                f"ONNX export needs the '{name}' package, which is not installed: {INSTALL_HINT}"
            ) from None


def check_tolerance(path: str | Path, diff: float, scale: float) -> None:
    """Refuse an export whose onnxruntime output differs from PyTorch's beyond the stated tolerance."""
    limit = ONNX_ATOL + ONNX_RTOL * scale
    if not diff <= limit:
        raise ExportError(
            f"{path}: onnxruntime disagrees with PyTorch (max abs diff {diff:.3g} > tolerance {limit:.3g} = "
            f"{ONNX_ATOL:g} + {ONNX_RTOL:g} x max|output| {scale:.3g}); the exported graph is not the model"
        )


class _EmbeddingOnly(nn.Module):
    """Wrap a backbone so ``forward(x)`` returns only the embedding tensor."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        return out[0] if isinstance(out, tuple) else out


def export_onnx(
    net: nn.Module,
    path: str | Path,
    input_size: int = 112,
    opset: int = OPSET,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Export ``net`` (eval mode, fp32) to ``path`` with a dynamic batch axis; returns the path."""
    require_onnx()
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapped = _EmbeddingOnly(net).eval()
    example = torch.randn(2, 3, input_size, input_size)
    try:
        torch.onnx.export(
            wrapped,
            (example,),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=["input"],
            output_names=["embedding"],
            dynamic_axes={"input": {0: "batch"}, "embedding": {0: "batch"}},
        )
    except Exception as first:  # fall back to the dynamo exporter
        try:
            batch = torch.export.Dim("batch", min=1, max=4096)
            program = torch.onnx.export(
                wrapped,
                (example,),
                dynamo=True,
                opset_version=opset,
                input_names=["input"],
                output_names=["embedding"],
                dynamic_shapes=({0: batch},),
            )
            program.save(str(path))
        except Exception as second:
            raise ConfigError(f"ONNX export failed: {first}; dynamo exporter: {second}") from second
    if metadata:
        model = onnx.load(str(path))
        for key, value in metadata.items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(model, str(path))
    return path


def run_onnx(path: str | Path, x: np.ndarray) -> np.ndarray:
    """Run an exported model with onnxruntime on a float32 (N, 3, S, S) batch."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.astype(np.float32)})[0]


def check_onnx(
    net: nn.Module, path: str | Path, input_size: int = 112, batch: int = 3, seed: int = 0, *, strict: bool = False
) -> float:
    """Max absolute difference between PyTorch and onnxruntime outputs on a random batch (of a
    size different from the one used at export, which also checks the dynamic axis); with
    ``strict`` a difference beyond the tolerance raises :class:`ExportError`."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 3, input_size, input_size, generator=gen) * 2 - 1
    with torch.inference_mode():
        ref = _EmbeddingOnly(net).eval()(x).float().numpy()
    out = run_onnx(path, x.numpy())
    if out.shape != ref.shape:
        raise ExportError(f"{path}: onnxruntime output shape {out.shape} != torch {ref.shape}")
    diff = float(np.abs(out - ref).max())
    if strict:
        check_tolerance(path, diff, float(np.abs(ref).max()))
    return diff


def export_model_file(model_path: str | Path, onnx_path: str | Path, fold_bn: bool = False) -> dict[str, Any]:
    """Export a fuseface model file; returns ``{"path", "max_abs_diff", "arch", ...}``."""
    from fuseface.infer.model_file import load_model

    require_onnx()
    net, meta = load_model(model_path)
    if fold_bn:
        from fuseface.infer.optimize import prepare_for_inference

        net = prepare_for_inference(net, channels_last=False)
    props = {
        "fuseface_arch": meta.arch,
        "fuseface_arch_kwargs": json.dumps(meta.arch_kwargs),
        "channel_order": meta.channel_order,
        "input_size": str(meta.input_size),
        "template": meta.template,
        "pixel_mean": json.dumps(list(meta.pixel_mean)),
        "pixel_std": json.dumps(list(meta.pixel_std)),
    }
    export_onnx(net, onnx_path, input_size=meta.input_size, metadata=props)
    diff = check_onnx(net, onnx_path, input_size=meta.input_size, strict=True)
    return {
        "path": str(onnx_path),
        "max_abs_diff": diff,
        "arch": meta.arch,
        "channel_order": meta.channel_order,
        "input_size": meta.input_size,
        "opset": OPSET,
    }


class MaskedCAFace(nn.Module):
    """CAFace fusion of one chunk of at most ``N`` images, padded, with a validity mask.

    ``forward(features (B, N, D), styles (B, N, C, 2), mask (B, N)) -> templates (B, D)``,
    L2-normalised; equals ``CAFace.fuse(valid rows, chunk_size=None)`` (one chunk). Reuses the
    weights of a :class:`fuseface.nn.fusion.caface.CAFace` (e.g. from a fusion weights file); what
    the mask changes (our addition for a fixed-size graph): padded tokens are excluded as keys of
    the cluster network's self-attention and get zero cluster assignment, so they change nothing.
    Padded rows should hold zeros (any finite value works).
    """

    def __init__(self, caface: nn.Module) -> None:
        super().__init__()
        self.caface = caface.eval()

    @staticmethod
    def _bn_eval(bn: nn.modules.batchnorm._BatchNorm, x: torch.Tensor) -> torch.Tensor:
        """Eval-mode BN on the last axis as plain arithmetic (the ONNX tracer cannot export a
        BatchNorm1d on a reshape of unknown size)."""
        y = (x - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps)
        return y * bn.weight + bn.bias if bn.affine else y

    def _style_input(self, styles: torch.Tensor) -> torch.Tensor:
        """CAFace's SIM (``StyleInputMaker.forward`` in eval mode)."""
        sim = self.caface.style_maker
        z = styles[..., 0] * sim.cfc[:, 0] + styles[..., 1] * sim.cfc[:, 1]
        return self._bn_eval(sim.bn, sim.linear(sim.relu(z)))

    def _norm_embedding(self, norms: torch.Tensor) -> torch.Tensor:
        """CAFace's ``SinusoidalNormEmbedding.forward`` in eval mode (truncation toward zero kept)."""
        emb = self.caface.norm_emb
        u = torch.clip(self._bn_eval(emb.norm_bn, norms), -emb.clip_val, emb.clip_val) * emb.clip_multi
        index = (u.long() + emb.clip_val * emb.clip_multi).clamp(0, emb.pe.shape[0] - 1)
        return emb.scale * emb.pe[index.squeeze(-1)]

    def forward(self, features: torch.Tensor, styles: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        c = self.caface
        layer = c.fusion_net.clustering_layer
        keep = mask.to(features.dtype)
        norms = features.norm(dim=-1, keepdim=True)
        values = features / (norms + 1e-5)
        tokens = c.input_maker(torch.cat([self._style_input(styles), self._norm_embedding(norms)], dim=-1))
        batch, n, dim = tokens.shape
        centres = layer.group_token.expand(batch, -1, -1)
        if layer.combined_propagation:
            h = torch.cat([tokens, centres], dim=1)
            key_ok = torch.cat([keep, torch.ones(batch, centres.shape[1], dtype=keep.dtype)], dim=1) > 0.5
        else:
            h, key_ok = tokens, keep > 0.5
        attn_mask = key_ok[:, None, None, :]  # (B, 1, 1, L): True = may be attended to
        for blk in layer.blocks:
            attn = blk.attn
            y = blk.norm1(h)
            length = y.shape[1]
            qkv = attn.qkv(y).reshape(batch, length, 3, attn.num_heads, dim // attn.num_heads).permute(2, 0, 3, 1, 4)
            out = torch.nn.functional.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=attn_mask)
            h = h + attn.proj(out.transpose(1, 2).reshape(batch, length, dim))
            h = h + blk.mlp(blk.norm2(h))
        x_norm = layer.cluster_block.norm_x(h[:, :n])
        assignment = layer.cluster_block.assign(layer.cluster_block.norm_tokens(centres), x_norm) * keep[:, None, :]
        mass = assignment.sum(-1, keepdim=True)
        divisor = mass.clamp_min(1e-6) if c.exact_mass_normalisation else mass.clamp_min(1.0)
        a_hat = assignment / divisor
        aggregated, _ = c.fusion_net.aggregate(a_hat @ values, a_hat @ x_norm)
        return aggregated / (aggregated.norm(dim=-1, keepdim=True) + 1e-8)


def export_caface(caface: nn.Module, path: str | Path, max_images: int = 32, opset: int = OPSET) -> Path:
    """Fixed-size ONNX export of the CAFace aggregator: inputs ``features`` (B, max_images, D),
    ``styles`` (B, max_images, C, 2), ``mask`` (B, max_images) float 1/0; output ``template`` (B, D).
    The batch axis is dynamic; probes longer than ``max_images`` must be fused in chunks in PyTorch
    (``CAFace.fuse(chunk_size=...)``) — the graph holds one chunk, not the memory loop."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapped = MaskedCAFace(caface).eval()
    d, ch = caface.feature_dim, caface.style_channels
    example = (torch.randn(1, max_images, d), torch.randn(1, max_images, ch, 2), torch.ones(1, max_images))
    torch.onnx.export(
        wrapped,
        example,
        str(path),
        dynamo=False,
        opset_version=opset,
        input_names=["features", "styles", "mask"],
        output_names=["template"],
        dynamic_axes={"features": {0: "batch"}, "styles": {0: "batch"}, "mask": {0: "batch"}, "template": {0: "batch"}},
    )
    return path


def export_fusion_file(fusion_path: str | Path, onnx_path: str | Path, max_images: int = 32) -> dict[str, Any]:
    """Export a CAFace fusion weights file (``fuseface.infer.fusion_file.save_fusion``) with
    :func:`export_caface` and check it against ``CAFace.fuse`` on a random half-full probe."""
    require_onnx()
    import onnxruntime as ort

    from fuseface.infer.fusion_file import load_fusion

    caface = load_fusion(fusion_path)
    if not hasattr(caface, "fusion_net"):
        raise ConfigError(f"{fusion_path}: only CAFace fusion files can be exported to ONNX")
    export_caface(caface, onnx_path, max_images=max_images)
    gen = torch.Generator().manual_seed(0)
    n = max(1, max_images // 2)
    feats = torch.randn(n, caface.feature_dim, generator=gen) * 20
    styles = torch.randn(n, caface.style_channels, 2, generator=gen)
    ref = caface.fuse(feats.numpy(), styles.numpy())
    f = np.zeros((1, max_images, caface.feature_dim), np.float32)
    s = np.zeros((1, max_images, caface.style_channels, 2), np.float32)
    m = np.zeros((1, max_images), np.float32)
    f[0, :n], s[0, :n], m[0, :n] = feats.numpy(), styles.numpy(), 1.0
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    out = session.run(None, {"features": f, "styles": s, "mask": m})[0][0]
    diff = float(np.abs(out - ref).max())
    check_tolerance(onnx_path, diff, float(np.abs(ref).max()))
    return {
        "path": str(onnx_path),
        "max_abs_diff": diff,
        "max_images": max_images,
        "opset": OPSET,
    }


def is_fusion_file(path: str | Path) -> bool:
    """True for a fusion weights file (safetensors metadata ``fuseface_fusion``)."""
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return "fuseface_fusion" in (f.metadata() or {})
    except Exception:
        return False
