"""LGAF: local and global features fused by their quality (Wang & Wei, arXiv 2411.16169).

What is known about LGAF comes from its abstract and two third-party summaries only
(``METHODS.md`` section 4.1): a **GFE** global branch, an **MHMS** (multi-head multi-scale) local
branch whose heads use different kernel sizes with *spatial attention followed by channel
attention*, and an **LGF** fusion that allocates attention between the two by their "normalized
feature energies". Everything else (heads, kernels, tap stage, the energy and its normalisation,
the weighting, the fusion formula, losses) is a design of this project, exposed as an option and
documented with its default in ``docs/lgaf.md``. The design follows the sketch in ``METHODS.md``
section 4.2, which is itself not from the paper.

Data flow for one image (shapes for an IResNet at 112x112, ``tap_stage=3``)::

    stage 4 (512x7x7) -> backbone bn2/fc/features ----------------------------> g (B,512)  [GFE]
    stage 3 (256x14x14) -> split into H channel groups
        head h: depthwise conv k_h (dilation d_h) -> 1x1 -> BN -> PReLU
                -> spatial attention (CBAM) -> channel attention (SE)
        concat -> 1x1 conv (512) -> BN -> PReLU -> pool 7x7 -> flatten -> fc -> BN1d -> l (B,512)  [MHMS]
    energies e_b = ||b||_2 ; z_b = (log e_b - mu_b) / sigma_b  (running statistics, frozen in eval)
    [w_g, w_l] = softmax((a_b z_b + c_b) / tau)                                              [LGF]
    f = (w_g g/e_g + w_l l/e_l) * (w_g e_g + w_l e_l)

The global embedding is the backbone's own output layer, so insightface ``ir*`` weights still
load into a model with this head (the head only adds ``head.*`` keys); with ``mode="global"`` the
model returns exactly the plain IResNet embedding.

Norm of the fused embedding: margin losses L2-normalise, but downstream code reads the norm as a
quality. ``f`` has direction ``w_g g_hat + w_l l_hat`` and norm ``||w_g g_hat + w_l l_hat|| *
(w_g e_g + w_l e_l)``: the weighted branch energy times the agreement of the two unit vectors
(1 when they point the same way, smaller when the branches disagree). In the single-branch
ablations this reduces to the branch itself (``f = g`` or ``f = l``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

MODES = ("fused", "global", "local", "equal")
FUSIONS = ("sum", "concat")
QUALITY_NORMS = ("running", "batch", "none")
BRANCHES = ("global", "local")


class SpatialGate(nn.Module):
    """CBAM spatial attention (Woo et al. 2018): ``x * sigmoid(conv_k([mean_c(x); max_c(x)]))``.

    One gate per position, shared by every channel: it emphasises informative regions of the map.
    """

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"spatial attention kernel must be odd, got {kernel_size}")
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.conv(pooled))


class SEChannelGate(nn.Module):
    """SE channel attention (Hu et al. 2018): ``x * sigmoid(fc(relu(fc(avgpool(x)))))``.

    One gate per channel, shared by every position: it suppresses redundant channels.
    """

    def __init__(self, channels: int, reduction: int = 16, min_hidden: int = 8) -> None:
        super().__init__()
        hidden = max(min_hidden, channels // reduction)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.adaptive_avg_pool2d(x, 1)
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(s))))


class MHMSHead(nn.Module):
    """One MHMS head: a depthwise conv at its own scale, then spatial, then channel attention.

    The scale is the receptive field of the depthwise conv: ``dilation * (kernel_size - 1) + 1``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        dilation: int = 1,
        spatial_kernel: int = 7,
        se_reduction: int = 16,
    ) -> None:
        super().__init__()
        if kernel_size % 2 != 1 or kernel_size < 1:
            raise ValueError(f"MHMS kernel sizes must be odd and positive, got {kernel_size}")
        if dilation < 1:
            raise ValueError(f"MHMS dilations must be >= 1, got {dilation}")
        padding = dilation * (kernel_size - 1) // 2
        self.depthwise = nn.Conv2d(
            in_channels, in_channels, kernel_size, padding=padding, dilation=dilation, groups=in_channels, bias=False
        )
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=1e-5)
        self.act = nn.PReLU(out_channels)
        self.spatial = SpatialGate(spatial_kernel)
        self.channel = SEChannelGate(out_channels, se_reduction)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.bn(self.pointwise(self.depthwise(x))))
        return self.channel(self.spatial(y))


class MHMS(nn.Module):
    """Multi-head multi-scale local feature extraction: a stage map -> a local embedding.

    The map's channels are split into ``H = len(kernel_sizes)`` groups (``split_channels=True``)
    or every head sees all channels; head ``h`` works at scale ``kernel_sizes[h]`` (dilation
    ``dilations[h]``). The heads' outputs are concatenated and merged exactly like the IResNet
    output layer builds the global embedding: 1x1 conv to ``merge_channels``, BN, PReLU, average
    pool to ``pool_size`` (keeps the spatial layout, so the embedding stays *local*: each fc
    input belongs to one face region), flatten, dropout, fc, BatchNorm1d with its weight fixed at 1
    (as insightface's ``features`` layer, so both branches' norms live on the same scale).
    """

    def __init__(
        self,
        in_channels: int,
        in_size: int,
        num_features: int,
        kernel_sizes: Sequence[int] = (3, 5, 7, 9),
        dilations: Sequence[int] | None = None,
        split_channels: bool = True,
        head_channels: int | None = None,
        spatial_kernel: int = 7,
        se_reduction: int = 16,
        merge_channels: int = 512,
        pool_size: int = 7,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        kernel_sizes = [int(k) for k in kernel_sizes]
        dilations = [1] * len(kernel_sizes) if dilations is None else [int(d) for d in dilations]
        if not kernel_sizes:
            raise ValueError("MHMS needs at least one head (kernel_sizes is empty)")
        if len(dilations) != len(kernel_sizes):
            raise ValueError(f"dilations {dilations} must have one entry per kernel size {kernel_sizes}")
        num_heads = len(kernel_sizes)
        if split_channels and in_channels % num_heads:
            raise ValueError(f"{in_channels} tap channels cannot be split into {num_heads} heads")
        self.split_channels = split_channels
        self.head_in = in_channels // num_heads if split_channels else in_channels
        head_out = head_channels or self.head_in
        self.heads = nn.ModuleList(
            MHMSHead(self.head_in, head_out, k, d, spatial_kernel, se_reduction)
            for k, d in zip(kernel_sizes, dilations, strict=True)
        )
        self.merge = nn.Sequential(
            nn.Conv2d(head_out * num_heads, merge_channels, 1, bias=False),
            nn.BatchNorm2d(merge_channels, eps=1e-5),
            nn.PReLU(merge_channels),
        )
        self.pool_size = min(pool_size, in_size)
        self.pool = nn.AdaptiveAvgPool2d(self.pool_size)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(merge_channels * self.pool_size * self.pool_size, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=1e-5)
        self._init()

    def _init(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # SE gates start near 1/2 everywhere and spatial gates near uniform: small last layers.
        for head in self.heads:
            nn.init.normal_(head.spatial.conv.weight, 0.0, 0.01)
            nn.init.normal_(head.channel.fc2.weight, 0.0, 0.01)
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.split_channels:
            parts = torch.split(x, self.head_in, dim=1)
        else:
            parts = [x] * len(self.heads)
        y = torch.cat([head(p) for head, p in zip(self.heads, parts, strict=True)], dim=1)
        y = self.pool(self.merge(y))
        y = self.dropout(torch.flatten(y, 1))
        return self.features(self.fc(y.float()))


class QualityNorm(nn.Module):
    """Per-branch standardisation of the feature energy, independent of the batch at inference.

    Input ``q`` (B, 2): one energy (or log-energy) per branch. Like BatchNorm, it keeps running
    estimates of each branch's mean and variance (EMA with ``momentum``; the first batch seeds
    them). ``stats="running"`` standardises with the running estimates in training and eval
    alike (the estimates are updated from the detached batch beforehand), so no sample ever
    depends on its batch-mates; ``stats="batch"`` uses the batch statistics in training and the
    running ones in eval (exactly BatchNorm's convention); ``stats="none"`` passes ``q`` through.
    """

    def __init__(self, num_branches: int = 2, stats: str = "running", momentum: float = 0.1, eps: float = 1e-5):
        super().__init__()
        if stats not in QUALITY_NORMS:
            raise ValueError(f"quality_norm must be one of {QUALITY_NORMS}, got {stats!r}")
        self.stats = stats
        self.momentum = momentum
        self.eps = eps
        self.register_buffer("running_mean", torch.zeros(num_branches))
        self.register_buffer("running_var", torch.ones(num_branches))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    @torch.no_grad()
    def _update(self, q: torch.Tensor) -> None:
        mean = q.mean(dim=0)
        var = q.var(dim=0, unbiased=True) if q.shape[0] > 1 else self.running_var.clone()
        if int(self.num_batches_tracked) == 0:
            self.running_mean.copy_(mean)
            self.running_var.copy_(var)
        else:
            self.running_mean.lerp_(mean, self.momentum)
            self.running_var.lerp_(var, self.momentum)
        self.num_batches_tracked += 1

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        if self.stats == "none":
            return q
        if self.training:
            self._update(q.detach())
            if self.stats == "batch" and q.shape[0] > 1:
                return (q - q.mean(dim=0)) / torch.sqrt(q.var(dim=0, unbiased=False) + self.eps)
        return (q - self.running_mean) / torch.sqrt(self.running_var + self.eps)


class LGAFHead(nn.Module):
    """Local (MHMS) and global (GFE) embeddings fused by their normalised feature energies (LGF).

    Built by the backbone as ``HeadCls(stage_channels, stage_sizes, num_features, **head_kw)``;
    ``forward(stages, global_embedding) -> (embedding, aux)``.

    Args:
        stage_channels, stage_sizes, num_features: given by the backbone.
        mode: ``"fused"`` (learned quality weights, default), ``"global"`` (GFE only: the local
            branch is not even run), ``"local"`` (MHMS only: the global embedding is ignored, so
            the backbone's bn2/fc/features get no gradient) or ``"equal"`` (both, fixed 0.5/0.5).
        tap_stage: which stage map (1-4) MHMS reads; 3 by default (14x14 at 112 input).
        kernel_sizes: one odd kernel size per head (the number of heads is its length).
        dilations: one dilation per head (default 1 everywhere); scale = dilation * (k - 1) + 1.
        split_channels: heads share out the tap channels (True) or each sees all of them.
        head_channels: output channels of each head (default: its input channels).
        spatial_kernel, se_reduction: CBAM spatial kernel and SE reduction in each head.
        merge_channels, pool_size, dropout: the local output layer (1x1 conv, pool, fc).
        energy: ``"log_norm"`` (default), ``"norm"`` or ``"sq_norm"``: the per-branch quality
            proxy computed from the un-normalised branch embedding.
        quality_norm: ``"running"`` (default), ``"batch"`` or ``"none"``; see :class:`QualityNorm`.
        quality_momentum: EMA momentum of the running statistics.
        temperature: softmax temperature tau of the branch weights.
        learn_affine: learn a per-branch scale and bias on the normalised energies before the
            softmax (initialised to 1 and 0, i.e. starts as pure energy comparison).
        detach_quality: stop the gradient through the weights into the branch norms.
        fusion: ``"sum"`` (weighted sum of unit embeddings, rescaled, see module docstring) or
            ``"concat"`` (``[w_g g_hat, w_l l_hat]`` -> Linear(2D, D) -> BatchNorm1d).

    ``aux`` holds ``weights`` (B, 2) for [global, local], ``energies`` (B, 2) raw branch norms
    (NaN for a branch that was not run), ``quality`` (B, 2) the normalised energies, the branch
    embeddings ``global`` / ``local`` (absent when not run) and ``aux_embeddings`` = the branches
    that were run, for the trainer's auxiliary margin losses (``cfg.loss.aux_weights``).
    """

    def __init__(
        self,
        stage_channels: Sequence[int] = (64, 128, 256, 512),
        stage_sizes: Sequence[int] = (56, 28, 14, 7),
        num_features: int = 512,
        mode: str = "fused",
        tap_stage: int = 3,
        kernel_sizes: Sequence[int] = (3, 5, 7, 9),
        dilations: Sequence[int] | None = None,
        split_channels: bool = True,
        head_channels: int | None = None,
        spatial_kernel: int = 7,
        se_reduction: int = 16,
        merge_channels: int = 512,
        pool_size: int = 7,
        dropout: float = 0.0,
        energy: str = "log_norm",
        quality_norm: str = "running",
        quality_momentum: float = 0.1,
        temperature: float = 1.0,
        learn_affine: bool = True,
        detach_quality: bool = False,
        fusion: str = "sum",
    ) -> None:
        super().__init__()
        if tap_stage not in (1, 2, 3, 4):
            raise ValueError(f"tap_stage must be 1..4, got {tap_stage}")
        if energy not in ("log_norm", "norm", "sq_norm"):
            raise ValueError(f"energy must be 'log_norm', 'norm' or 'sq_norm', got {energy!r}")
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.mode = mode
        self.tap_stage = tap_stage
        self.num_features = num_features
        self.energy = energy
        self.temperature = float(temperature)
        self.detach_quality = detach_quality
        self.fusion = fusion
        self.local = MHMS(
            in_channels=stage_channels[tap_stage - 1],
            in_size=stage_sizes[tap_stage - 1],
            num_features=num_features,
            kernel_sizes=kernel_sizes,
            dilations=dilations,
            split_channels=split_channels,
            head_channels=head_channels,
            spatial_kernel=spatial_kernel,
            se_reduction=se_reduction,
            merge_channels=merge_channels,
            pool_size=pool_size,
            dropout=dropout,
        )
        self.quality_norm = QualityNorm(2, quality_norm, quality_momentum)
        self.quality_scale = nn.Parameter(torch.ones(2), requires_grad=learn_affine)
        self.quality_bias = nn.Parameter(torch.zeros(2), requires_grad=learn_affine)
        self.project: nn.Module | None = None
        if fusion == "concat":
            self.project = nn.Sequential(
                nn.Linear(2 * num_features, num_features, bias=False),
                nn.BatchNorm1d(num_features, eps=1e-5),
            )

    @property
    def mode(self) -> str:
        """The ablation switch; may be changed after construction (e.g. to probe one branch)."""
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        if value not in MODES:
            raise ValueError(f"LGAF mode must be one of {MODES}, got {value!r}")
        self._mode = value

    def _energy(self, emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(raw L2 norm, quality proxy) of un-normalised embeddings (B, D)."""
        norm = emb.norm(dim=1)
        if self.energy == "log_norm":
            proxy = torch.log(norm.clamp_min(1e-6))
        elif self.energy == "sq_norm":
            proxy = norm.square()
        else:
            proxy = norm
        return norm, proxy

    def branch_weights(self, g: torch.Tensor, l: torch.Tensor) -> dict[str, torch.Tensor]:
        """LGF weights for both branches: energies, normalised quality and softmax weights (B, 2)."""
        norm_g, proxy_g = self._energy(g)
        norm_l, proxy_l = self._energy(l)
        energies = torch.stack([norm_g, norm_l], dim=1)
        proxy = torch.stack([proxy_g, proxy_l], dim=1)
        if self.detach_quality:
            proxy = proxy.detach()
        quality = self.quality_norm(proxy.float())
        if self.mode == "equal":
            weights = torch.full_like(quality, 0.5)
        else:
            logits = (self.quality_scale * quality + self.quality_bias) / self.temperature
            weights = torch.softmax(logits, dim=1)
        return {"energies": energies, "quality": quality, "weights": weights}

    def forward(
        self, stages: list[torch.Tensor], global_embedding: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        g = global_embedding.float()
        batch = g.shape[0]
        if self.mode == "global":
            weights = torch.tensor([1.0, 0.0], device=g.device).expand(batch, 2)
            nan = torch.full((batch,), math.nan, device=g.device)
            aux = {"weights": weights, "energies": torch.stack([g.norm(dim=1), nan], dim=1), "global": g}
            aux["aux_embeddings"] = {"global": g}
            return g, aux
        l = self.local(stages[self.tap_stage - 1])
        if self.mode == "local":
            weights = torch.tensor([0.0, 1.0], device=l.device).expand(batch, 2)
            nan = torch.full((batch,), math.nan, device=l.device)
            aux = {"weights": weights, "energies": torch.stack([nan, l.norm(dim=1)], dim=1), "local": l}
            aux["aux_embeddings"] = {"local": l}
            return l, aux
        return self.fuse(g, l)

    def fuse(self, g: torch.Tensor, l: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        """LGF on given branch embeddings (B, D) each: the weights (``fused`` or ``equal``) and the
        fused embedding, as :meth:`forward` computes them after running the branches."""
        lgf = self.branch_weights(g, l)
        w = lgf["weights"]
        norms = lgf["energies"].clamp_min(1e-12)
        g_unit = g / norms[:, :1]
        l_unit = l / norms[:, 1:]
        if self.project is not None:
            fused = self.project(torch.cat([w[:, :1] * g_unit, w[:, 1:] * l_unit], dim=1))
        else:
            direction = w[:, :1] * g_unit + w[:, 1:] * l_unit
            fused = direction * (w * norms).sum(dim=1, keepdim=True)
        aux = {**lgf, "global": g, "local": l, "aux_embeddings": {"global": g, "local": l}}
        return fused, aux
