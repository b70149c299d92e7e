"""CAFace: cluster-and-aggregate set fusion (Kim, Liu, Jain, Liu, NeurIPS 2022), written from
``METHODS.md`` §3 (facts read in mk-minchul/caface: nets/aggregator.py, nets/styler.py,
nets/transformer/cluster_transformer.py, transformer_module.py, tconfig.py; nothing copied).

Per probe of N images with un-normalised backbone features ``f_n`` (N, 512) and style statistics
``styles`` (N, 384, 2) (per-channel [mean, unbiased std] of the stage-2 and stage-3 outputs):

1. **SIM** (``style_maker``, §3.4): ``z_c = cfc[c,0]·mean_c + cfc[c,1]·std_c`` → PReLU → Linear(384→64)
   → BatchNorm1d(64); ``cfc`` starts at 0 (quirk Q5).
2. **Norm embedding** (``norm_emb``, §3.5): ``k = long(clip(BN(‖f‖), -3, 3)·10) + 30`` indexes a fixed
   61×64 sinusoidal table, times a learnable ``scale`` (0.1).
3. **Cluster network** (``fusion_net.clustering_layer``, §3.6): the tokens ``x_n = [s_n; e_n]`` (128-d)
   and the M learnable centres go through ``depth`` pre-LN transformer blocks together; the centres
   coming out are discarded. A one-head cross attention assigns each image a unit mass over the M
   clusters (softmax over the *cluster* axis), ``cnt_m = Σ_n A[m,n]`` and
   ``Â = A / max(cnt_m, 1)`` (divisor detached, clipped at 1: quirk Q3; ``exact_mass_normalisation=True``
   divides by ``cnt_m`` itself). Cluster features ``μ = Â v`` (``v`` = unit features), cluster styles
   ``σ = Â LN(x')``.
4. **Memory** (§3.8): ``μ̄ ← (K μ̄ + k μ) / max(K + k, 1e-6)`` (same for σ̄), ``K ← K + k`` with the chunk
   mass ``k`` taken *before* the clipping. After all chunks ``μ̄ = Σ_t k_t μ_t / Σ_t k_t``: symmetric
   in the chunks, so the template does not depend on the order in which chunks arrive.
5. **Aggregation network** (``fusion_net.conf_mlp``, §3.7): ``h = [c; σ̄]`` (M×256) → ``depth`` gated
   MLP-Mixer blocks with one shared LayerNorm each (quirk Q4) → Mlp(256→256→confidence_dim) →
   softmax over M per channel → ``F = Σ_m w_m ⊙ μ̄_m``.

Attribute names follow the official module tree, so ``state_dict()`` keys equal the released
checkpoint's ``aggregator.*`` keys with the prefix removed (``fuseface.compat.caface`` does that),
including the duplicated ``style_maker.cfcs.0`` / ``style_maker.cfc`` entry the official
``nn.ParameterList`` trick produces.

The fusion API (:meth:`CAFace.fuse`, :meth:`CAFace.start` / :meth:`update` / :meth:`read`) follows the
official IJB evaluation (validation_IJBB_IJBC/fusion/cluster_and_aggregate.py): the probe is split
into ``ceil(N / chunk_size)`` contiguous chunks with ``np.array_split``, NaN rows are dropped inside each
chunk, the chunks run with the memory, and the output after the last chunk, L2-normalised, is the
template. :meth:`fuse` computes the per-chunk cluster network for many chunks in one batched call
(the chunks are independent until the memory merge) and then folds them in order with the same
incremental mean, which gives the one-chunk-at-a-time result at a fraction of the Python overhead.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fuseface.errors import DataError
from fuseface.ops import l2_normalize

__all__ = ["CAFace", "CAFaceMemory", "CAFaceOutput", "caface_small", "chunk_indices", "stage_styles"]


def stage_styles(stages: Sequence[torch.Tensor], which: Sequence[int] = (1, 2)) -> torch.Tensor:
    """The style input of CAFace: (B, ΣC, 2) per-channel [mean, **unbiased** std] over the H·W
    positions of ``stages[i]`` for ``i`` in ``which`` (METHODS.md §3.3, torch's default ``std``),
    concatenated in stage order; ``which=(1, 2)`` (stage-2 and stage-3 outputs, 128 + 256
    channels) gives the (B, 384, 2) the released weights read."""
    parts = []
    for i in which:
        x = stages[i].flatten(2).float()
        parts.append(torch.stack([x.mean(-1), x.std(-1, unbiased=True)], dim=-1))
    return torch.cat(parts, dim=1)


# --------------------------------------------------------------------------------------------
# building blocks (names mirror the official module tree; see the module docstring)
# --------------------------------------------------------------------------------------------


class StyleInputMaker(nn.Module):
    """SIM: SRM-style channel integration of [mean, std] followed by PReLU, Linear and BN (§3.4)."""

    def __init__(self, in_channels: int = 384, out_dim: int = 64, cfc_init_zero: bool = True) -> None:
        super().__init__()
        # The official layer keeps cfc in a ParameterList *and* as an attribute, so its state dict
        # holds both ``cfcs.0`` and ``cfc`` (one tensor). Reproduced for strict key compatibility.
        self.cfcs = nn.ParameterList([nn.Parameter(torch.zeros(in_channels, 2))])
        self.cfc = self.cfcs[0]
        if not cfc_init_zero:
            nn.init.normal_(self.cfc, std=0.02)
        self.relu = nn.PReLU()
        self.linear = nn.Linear(in_channels, out_dim)
        self.bn = nn.BatchNorm1d(out_dim)

    def forward(self, styles: torch.Tensor) -> torch.Tensor:
        """``styles`` (..., C, 2) -> (..., out_dim). BN statistics are taken over all leading dims."""
        lead = styles.shape[:-2]
        # same products and one addition per channel as (styles * cfc).sum(-1), without a size-2 reduction
        z = (styles[..., 0] * self.cfc[:, 0] + styles[..., 1] * self.cfc[:, 1]).reshape(-1, styles.shape[-2])
        z = self.bn(self.linear(self.relu(z)))
        return z.reshape(*lead, -1)


class SinusoidalNormEmbedding(nn.Module):
    """Feature-norm embedding: BN (no affine) of ‖f‖, clipped and quantised into a sinusoidal table (§3.5)."""

    def __init__(self, d_model: int = 64, clip_val: int = 3, clip_multi: int = 10) -> None:
        super().__init__()
        self.clip_val = clip_val
        self.clip_multi = clip_multi
        self.norm_bn = nn.BatchNorm1d(1, affine=False)
        max_len = clip_val * clip_multi * 2 + 1
        position = torch.arange(max_len, dtype=torch.float32).unsqueeze(1)
        div_term = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
        pe = torch.zeros(max_len, d_model)
        pe[:, 0::2] = torch.sin(position * div_term)
        pe[:, 1::2] = torch.cos(position * div_term)
        self.register_buffer("pe", pe)
        self.scale = nn.Parameter(torch.tensor(0.1))

    def forward(self, norms: torch.Tensor) -> torch.Tensor:
        """``norms`` (..., 1) -> (..., d_model); BN statistics over every leading element in training."""
        lead = norms.shape[:-1]
        u = self.norm_bn(norms.reshape(-1, 1))
        u = torch.clip(u, -self.clip_val, self.clip_val) * self.clip_multi
        index = u.long().view(-1) + self.clip_val * self.clip_multi  # long() truncates toward zero
        index = index.clamp(0, self.pe.shape[0] - 1)  # no-op for finite norms; keeps NaN norms in range
        return self.scale * self.pe[index].reshape(*lead, -1)


class Mlp(nn.Module):
    """Linear -> GELU -> Linear (``fc1``, ``fc2``)."""

    def __init__(self, in_features: int, hidden_features: int, out_features: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DropPath(nn.Module):
    """Stochastic depth per sample (identity in eval mode)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p <= 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class SelfAttention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` projection and an output ``proj``."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        # scale (C/h)^-1/2 is SDPA's default, as in the official Attention
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(out.transpose(1, 2).reshape(B, N, C))


class AttnBlock(nn.Module):
    """Pre-LN transformer block: ``x += DropPath(MHSA(LN x))``; ``x += DropPath(MLP(LN x))``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, num_heads)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class AssignAttention(nn.Module):
    """One-head cross attention centres -> images; only ``q_proj`` and ``k_proj`` carry weights."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.scale = dim**-0.5
        self.q_proj = nn.Linear(dim, dim, bias=True)
        self.k_proj = nn.Linear(dim, dim, bias=True)

    def forward(self, centres: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Assignment ``A`` (B, M, N): softmax over the cluster axis (each image spreads a unit mass)."""
        logits = self.q_proj(centres) @ self.k_proj(x).transpose(-2, -1) * self.scale
        return logits.softmax(dim=-2)


class ClusteringBlock(nn.Module):
    """LayerNorms of centres and tokens plus the assignment (``norm_tokens``, ``norm_x``, ``assign``)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm_tokens = nn.LayerNorm(dim)
        self.norm_x = nn.LayerNorm(dim)
        self.assign = AssignAttention(dim)


class ClusteringLayer(nn.Module):
    """Cluster network (CN): information propagation over [tokens; centres], then the assignment."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        num_clusters: int,
        drop_path: Sequence[float],
        combined_propagation: bool = True,
    ) -> None:
        super().__init__()
        centres = torch.randn(num_clusters, dim)
        nn.init.orthogonal_(centres)
        self.group_token = nn.Parameter((centres / centres.norm(dim=-1, keepdim=True)).unsqueeze(0))
        self.blocks = nn.ModuleList(AttnBlock(dim, num_heads, drop_path=float(p)) for p in drop_path)
        self.cluster_block = ClusteringBlock(dim)
        self.combined_propagation = combined_propagation

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``tokens`` (B, N, dim) -> (assignment A (B, M, N), normalised transformed tokens (B, N, dim))."""
        B, N, _ = tokens.shape
        centres = self.group_token.expand(B, -1, -1)
        h = torch.cat([tokens, centres], dim=1) if self.combined_propagation else tokens
        for blk in self.blocks:
            h = blk(h)
        x = h[:, :N]  # the transformed centres are discarded on purpose (§3.6)
        cb = self.cluster_block
        x_norm = cb.norm_x(x)
        assignment = cb.assign(cb.norm_tokens(centres), x_norm)
        return assignment, x_norm


class MixerBlock(nn.Module):
    """Gated MLP-Mixer block over the M cluster tokens; ``ln`` is shared by both mixings (quirk Q4)
    unless ``shared_norm=False`` (adds ``ln2``, not in the released layout)."""

    def __init__(self, num_tokens: int, channels: int, shared_norm: bool = True) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(channels)
        self.tokens_mlp_block = Mlp(num_tokens, num_tokens * 2, num_tokens)
        self.channels_mlp_block = Mlp(channels, channels // 2, channels)
        self.skip_connect_gate = nn.Parameter(torch.tensor(1.0))
        self.ln2 = None if shared_norm else nn.LayerNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.tokens_mlp_block(self.ln(x).transpose(1, 2)).transpose(1, 2)
        out = x * self.skip_connect_gate + y
        ln2 = self.ln if self.ln2 is None else self.ln2
        return out + self.channels_mlp_block(ln2(out))


class ClusterAggregate(nn.Module):
    """CN (``clustering_layer``) and AGN (``conf_mlp``) as in the official ``fusion_net``."""

    def __init__(
        self,
        embed_dim: int,
        depth: int,
        num_heads: int,
        num_clusters: int,
        confidence_dim: int,
        drop_path_rate: float,
        combined_propagation: bool,
        shared_mixer_norm: bool,
    ) -> None:
        super().__init__()
        dpr = torch.linspace(0, drop_path_rate, depth).tolist()
        self.clustering_layer = ClusteringLayer(
            embed_dim, depth, num_heads, num_clusters, dpr, combined_propagation=combined_propagation
        )
        layers: list[nn.Module] = [
            MixerBlock(num_clusters, 2 * embed_dim, shared_norm=shared_mixer_norm) for _ in range(depth)
        ]
        layers.append(Mlp(2 * embed_dim, 2 * embed_dim, confidence_dim))
        self.conf_mlp = nn.Sequential(*layers)
        self.apply(_init_weights)

    def aggregate(
        self, cluster_features: torch.Tensor, cluster_styles: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """AGN: per-channel softmax weights over the clusters and the fused feature ``Σ_m w_m ⊙ μ_m``."""
        centres = self.clustering_layer.group_token.expand(cluster_styles.shape[0], -1, -1)
        weights = self.conf_mlp(torch.cat([centres, cluster_styles], dim=-1)).softmax(dim=-2)
        return (cluster_features * weights).sum(-2), weights


def _init_weights(m: nn.Module) -> None:
    """trunc_normal(0.02) Linear weights with zero bias, LayerNorm (1, 0), as the official CN/AGN."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


# --------------------------------------------------------------------------------------------
# memory and outputs
# --------------------------------------------------------------------------------------------


@dataclass
class CAFaceMemory:
    """State carried between chunks: cumulative cluster mass ``K`` (B, M, 1), running cluster
    features ``μ̄`` (B, M, D) and running cluster styles ``σ̄`` (B, M, E) (§3.8)."""

    mass: torch.Tensor
    features: torch.Tensor
    styles: torch.Tensor

    def merge(self, mass: torch.Tensor, features: torch.Tensor, styles: torch.Tensor) -> CAFaceMemory:
        """Incremental mean ``(K x̄ + k x) / max(K + k, 1e-6)``, and ``K + k``."""
        total = self.mass + mass
        denom = total.clamp_min(1e-6)
        return CAFaceMemory(
            mass=total,
            features=(self.mass * self.features + mass * features) / denom,
            styles=(self.mass * self.styles + mass * styles) / denom,
        )

    def detach(self) -> CAFaceMemory:
        return CAFaceMemory(self.mass.detach(), self.features.detach(), self.styles.detach())


@dataclass
class CAFaceOutput:
    """What one forward call returns. ``aggregated`` (B, D) is un-normalised."""

    aggregated: torch.Tensor
    memory: CAFaceMemory
    assignment: torch.Tensor  # (B, M, N) before the mass clipping
    weights: torch.Tensor  # (B, M, confidence_dim) softmax over clusters


def chunk_indices(n: int, chunk_size: int | None) -> list[np.ndarray]:
    """Indices of the chunks the official evaluation uses: ``np.array_split(arange(n), ceil(n/chunk))``
    when ``n > chunk_size``, one chunk otherwise."""
    if chunk_size is None or chunk_size <= 0 or n <= chunk_size:
        return [np.arange(n)]
    return np.array_split(np.arange(n), math.ceil(n / chunk_size))


# --------------------------------------------------------------------------------------------
# the aggregator
# --------------------------------------------------------------------------------------------


class CAFace(nn.Module):
    """SIM + norm embedding + CN + AGN with the incremental-mean memory (released config by default).

    Args:
        num_clusters: M (released 4; ablations 1..64).
        depth: transformer depth of the CN and number of mixer blocks of the AGN (released 2, ``small``).
        num_heads: heads of the CN self-attention (8).
        confidence_dim: 512 = per-channel weights (``conf512``); 1 = one weight per cluster.
        style_channels: channels of the style input (384 = 128 from stage 2 + 256 from stage 3).
        style_dim: SIM output size (64); ``norm_dim``: norm-embedding size (64); tokens are
            ``style_dim + norm_dim`` = 128-d.
        feature_dim: backbone embedding size (512).
        drop_path_rate: stochastic depth of the CN blocks, ``linspace(0, rate, depth)``.
        combined_propagation: run the CN self-attention over [tokens; centres]
            (``key_query_combined_info_propagate=True`` in the release).
        exact_mass_normalisation: False (default, quirk Q3) divides the assignment by
            ``max(cnt, 1)``; True by ``cnt`` itself, so every chunk contributes an exact mean.
        shared_mixer_norm: True (default, quirk Q4) shares one LayerNorm in each mixer block.
        cfc_init_zero: True (default, quirk Q5) starts the SIM's ``cfc`` at 0.
    """

    channel_order = "bgr"  # the released aggregator is fed by an AdaFace IR-101 reading BGR images

    def __init__(
        self,
        num_clusters: int = 4,
        depth: int = 2,
        num_heads: int = 8,
        confidence_dim: int = 512,
        style_channels: int = 384,
        style_dim: int = 64,
        norm_dim: int = 64,
        feature_dim: int = 512,
        drop_path_rate: float = 0.1,
        combined_propagation: bool = True,
        exact_mass_normalisation: bool = False,
        shared_mixer_norm: bool = True,
        cfc_init_zero: bool = True,
    ) -> None:
        super().__init__()
        self.config: dict[str, Any] = {
            "num_clusters": num_clusters,
            "depth": depth,
            "num_heads": num_heads,
            "confidence_dim": confidence_dim,
            "style_channels": style_channels,
            "style_dim": style_dim,
            "norm_dim": norm_dim,
            "feature_dim": feature_dim,
            "drop_path_rate": drop_path_rate,
            "combined_propagation": combined_propagation,
            "exact_mass_normalisation": exact_mass_normalisation,
            "shared_mixer_norm": shared_mixer_norm,
            "cfc_init_zero": cfc_init_zero,
        }
        if confidence_dim not in (1, feature_dim):
            raise ValueError(f"confidence_dim must be 1 or feature_dim={feature_dim}, got {confidence_dim}")
        self.num_clusters = num_clusters
        self.feature_dim = feature_dim
        self.style_channels = style_channels
        self.exact_mass_normalisation = exact_mass_normalisation
        embed_dim = style_dim + norm_dim
        self.style_maker = StyleInputMaker(style_channels, style_dim, cfc_init_zero=cfc_init_zero)
        self.fusion_net = ClusterAggregate(
            embed_dim,
            depth,
            num_heads,
            num_clusters,
            confidence_dim,
            drop_path_rate,
            combined_propagation,
            shared_mixer_norm,
        )
        self.norm_emb = SinusoidalNormEmbedding(norm_dim)
        self.input_maker = nn.Identity()
        self._stream: CAFaceMemory | None = None
        self._stream_dropped = 0
        self._stream_count = 0

    # ---- differentiable core ------------------------------------------------------------------

    def style_input(self, styles: torch.Tensor) -> torch.Tensor:
        """SIM on raw styles (..., style_channels, 2) -> (..., style_dim)."""
        return self.style_maker(styles)

    def cluster(self, features: torch.Tensor, sim_tokens: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """CN on one chunk per batch row.

        ``features`` (B, N, D) un-normalised, ``sim_tokens`` (B, N, style_dim) (SIM output).
        Returns ``(assignment A (B,M,N), mass k (B,M,1), cluster features μ (B,M,D), cluster styles σ (B,M,E))``.
        """
        norms = features.norm(dim=-1, keepdim=True)
        values = features / (norms + 1e-5)
        tokens = self.input_maker(torch.cat([sim_tokens, self.norm_emb(norms)], dim=-1))
        assignment, x_norm = self.fusion_net.clustering_layer(tokens)
        mass = assignment.sum(-1, keepdim=True)
        divisor = mass.clamp_min(1e-6) if self.exact_mass_normalisation else mass.clamp_min(1.0)
        a_hat = assignment / divisor.detach()
        return assignment, mass, a_hat @ values, a_hat @ x_norm

    def forward(
        self, features: torch.Tensor, sim_tokens: torch.Tensor, memory: CAFaceMemory | None = None
    ) -> CAFaceOutput:
        """One chunk per batch row, merged into ``memory`` if given (training keeps the graph;
        in eval mode the returned memory is detached, as the official code clones it)."""
        assignment, mass, mu, sigma = self.cluster(features, sim_tokens)
        new_memory = CAFaceMemory(mass, mu, sigma) if memory is None else memory.merge(mass, mu, sigma)
        aggregated, weights = self.fusion_net.aggregate(new_memory.features, new_memory.styles)
        if not self.training:
            new_memory = new_memory.detach()
        return CAFaceOutput(aggregated, new_memory, assignment, weights)

    # ---- fusion API -----------------------------------------------------------------------------

    @torch.inference_mode()
    def fuse(
        self,
        features: Any,
        styles: Any,
        chunk_size: int | None = None,
        *,
        return_dropped: bool = False,
        chunks_per_batch: int = 16,
    ) -> np.ndarray | tuple[np.ndarray, int]:
        """L2-normalised template (D,) of one probe, exactly as the official IJB evaluation computes it.

        ``features`` (N, D) un-normalised, ``styles`` (N, style_channels, 2). The probe is cut into
        ``ceil(N/chunk_size)`` contiguous chunks (``None`` = one chunk), NaN rows are dropped inside
        each chunk (their number is warned about, or returned with ``return_dropped``), and the chunks
        are merged with the memory in order. Chunks of equal length run through the cluster network
        together (``chunks_per_batch`` at a time); the memory fold is the sequential one.
        Always computed in eval mode (running BN statistics, no drop path).
        """
        feats, stys = _as_probe(features, styles, self.feature_dim, self.style_channels)
        was_training = self.training
        self.eval()
        try:
            chunks, dropped = _clean_chunks(feats, stys, chunk_size)
            per_chunk = self._cluster_chunks(feats, stys, chunks, chunks_per_batch)
            memory: CAFaceMemory | None = None
            for mass, mu, sigma in per_chunk:
                memory = CAFaceMemory(mass, mu, sigma) if memory is None else memory.merge(mass, mu, sigma)
            assert memory is not None
            aggregated, _ = self.fusion_net.aggregate(memory.features, memory.styles)
        finally:
            self.train(was_training)
        template = _l2(aggregated[0].numpy())
        if dropped and not return_dropped:
            warnings.warn(f"CAFace.fuse: dropped {dropped} NaN rows of {len(feats)}", RuntimeWarning, stacklevel=2)
        return (template, dropped) if return_dropped else template

    def _cluster_chunks(
        self, feats: torch.Tensor, stys: torch.Tensor, chunks: list[np.ndarray], chunks_per_batch: int
    ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Per-chunk (mass, μ, σ) in chunk order; chunks of one length are batched (no padding needed).
        The SIM runs per batch of chunks (per image in eval mode), so the working memory stays bounded by
        ``chunks_per_batch × chunk`` images whatever N."""
        results: list[Any] = [None] * len(chunks)
        by_length: dict[int, list[int]] = {}
        for i, idx in enumerate(chunks):
            by_length.setdefault(len(idx), []).append(i)
        for order in by_length.values():
            for start in range(0, len(order), max(1, chunks_per_batch)):
                group = order[start : start + max(1, chunks_per_batch)]
                index = torch.from_numpy(np.stack([chunks[i] for i in group]))
                _, mass, mu, sigma = self.cluster(feats[index], self.style_input(stys[index]))
                for j, i in enumerate(group):
                    results[i] = (mass[j : j + 1], mu[j : j + 1], sigma[j : j + 1])
        return results

    def start(self) -> None:
        """Begin a new probe for the stateful form (``update`` chunk by chunk, then ``read``)."""
        self._stream = None
        self._stream_dropped = 0
        self._stream_count = 0

    @torch.inference_mode()
    def update(self, features_chunk: Any, styles_chunk: Any) -> int:
        """Merge one chunk (n, D) / (n, C, 2) into the running memory in constant memory; returns
        the number of NaN rows dropped from it. Eval-mode semantics (like :meth:`fuse`)."""
        feats, stys = _as_probe(features_chunk, styles_chunk, self.feature_dim, self.style_channels, allow_empty=True)
        keep = _finite_rows(feats, stys)
        dropped = int((~keep).sum())
        self._stream_dropped += dropped
        self._stream_count += len(feats)
        if keep.sum() == 0:
            return dropped
        feats, stys = feats[torch.from_numpy(keep)], stys[torch.from_numpy(keep)]
        was_training = self.training
        self.eval()
        try:
            _, mass, mu, sigma = self.cluster(feats[None], self.style_input(stys)[None])
        finally:
            self.train(was_training)
        self._stream = CAFaceMemory(mass, mu, sigma) if self._stream is None else self._stream.merge(mass, mu, sigma)
        return dropped

    @torch.inference_mode()
    def read(self) -> np.ndarray:
        """The L2-normalised template of everything ``update`` has seen since ``start``."""
        if self._stream is None:
            raise DataError(
                f"CAFace.read: empty probe (no valid rows among {self._stream_count} seen; "
                f"{self._stream_dropped} NaN rows dropped)"
            )
        aggregated, _ = self.fusion_net.aggregate(self._stream.features, self._stream.styles)
        return _l2(aggregated[0].numpy())

    @property
    def stream_dropped(self) -> int:
        """NaN rows dropped by ``update`` since the last ``start``."""
        return self._stream_dropped


def caface_small(**kwargs: Any) -> CAFace:
    """The released configuration (``catv9_g4_conf512_small``): M=4, depth 2, confidence 512."""
    return CAFace(**kwargs)


# --------------------------------------------------------------------------------------------
# input checks shared with the baselines
# --------------------------------------------------------------------------------------------


def _l2(x: np.ndarray) -> np.ndarray:
    """``x / (‖x‖ + 1e-8)`` as the official evaluation's ``l2_normalize``."""
    return l2_normalize(np.asarray(x, dtype=np.float32).reshape(-1), eps=1e-8, dtype=np.float32)


def _as_probe(
    features: Any, styles: Any, feature_dim: int, style_channels: int, allow_empty: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    feats = torch.as_tensor(np.asarray(features, dtype=np.float32))
    if styles is None:
        raise ValueError(f"CAFace needs styles (N, {style_channels}, 2) beside the features")
    stys = torch.as_tensor(np.asarray(styles, dtype=np.float32))
    if feats.ndim != 2 or feats.shape[1] != feature_dim:
        raise DataError(f"features must be (N, {feature_dim}), got {tuple(feats.shape)}")
    if stys.shape != (feats.shape[0], style_channels, 2):
        raise DataError(f"styles must be (N, {style_channels}, 2) with N={feats.shape[0]}, got {tuple(stys.shape)}")
    if feats.shape[0] == 0 and not allow_empty:
        raise DataError("empty probe: no features to fuse")
    return feats, stys


def _finite_rows(feats: torch.Tensor, stys: torch.Tensor) -> np.ndarray:
    """Rows whose features and styles are all finite. A row sum is NaN/inf iff the row holds a NaN/inf
    (finite embeddings and styles cannot overflow float32 when summed), and is ~10x cheaper than isfinite."""
    ok = torch.isfinite(feats.sum(-1)) & torch.isfinite(stys.flatten(1).sum(-1))
    return ok.numpy()


def _clean_chunks(feats: torch.Tensor, stys: torch.Tensor, chunk_size: int | None) -> tuple[list[np.ndarray], int]:
    """Official chunk boundaries, then NaN rows removed per chunk (empty chunks skipped)."""
    keep = _finite_rows(feats, stys)
    chunks = [idx[keep[idx]] for idx in chunk_indices(len(feats), chunk_size)]
    chunks = [c for c in chunks if len(c)]
    dropped = int((~keep).sum())
    if not chunks:
        raise DataError(f"empty probe: all {len(feats)} rows contain NaN/inf")
    return chunks, dropped
