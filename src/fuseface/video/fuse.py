"""One template per track, streamed: constant memory however many frames the track has.

A :class:`TrackStream` receives a track's faces one frame at a time and keeps only

* the **fusion state**: the running sum of unit features (``average``), the running sum of raw
  features (``norm_weighted``), or the CAFace memory (cumulative cluster mass ``K``, running
  cluster features and styles, METHODS.md §3.8) plus a buffer of at most ``chunk_size`` faces;
* a bounded set of the **best frames** for the contact sheet (a min-heap of ``keep_best`` crops by
  feature norm, the quality signal the models learn, METHODS.md §3.5);
* a few numbers per frame (index, box, detector score, norm, and for CAFace the M assignment weights
  of the face in its chunk) so the track JSON can list every frame with its quality and fusion weight.
  With ``keep_features=True`` (used by the CAFace-demo plot) the features (and CAFace styles) are
  kept too.

Per-frame fusion weights (what each frame contributes to the template before the final L2
normalisation, reported normalised to sum 1):

* ``average``: ``1/N``;
* ``norm_weighted``: ``‖f_n‖ / Σ‖f‖`` (the mean of raw features is ``Σ ‖f_n‖ f̂_n / N``);
* ``caface``: the template is ``F = Σ_m w_m ⊙ μ̄_m`` with ``μ̄_m = Σ_t k_{t,m} μ_{t,m} / K_m`` and
  ``μ_{t,m} = Σ_{n∈t} Â_{m,n} f̂_n`` (chunk ``t``, its cluster mass ``k_t``, the normalised assignment
  ``Â``), so frame ``n`` contributes ``Σ_m w_m (k_{t,m}/K_m) Â_{m,n}`` per channel; the reported
  weight is its mean over channels. This decomposition is exact (``F`` is linear in the f̂_n once
  the assignment and the softmax weights are fixed).

Equality with one-shot fusion: the pooling templates equal :func:`fuseface.nn.fusion.fuse_features`
on all the track's features (sums in float64). CAFace chunks are consecutive runs of ``chunk_size``
faces (the last one partial), merged with :class:`fuseface.nn.fusion.caface.CAFaceMemory`; they are
the chunks of :meth:`CAFace.fuse` whenever ``N <= chunk_size`` or ``N`` is a multiple of it, and then
the templates are equal. Reading the template does not consume the partial buffer, so a stream can
be read mid-way and continued.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from fuseface.errors import DataError

__all__ = ["STREAM_METHODS", "TrackStream"]

STREAM_METHODS = ("average", "norm_weighted", "caface")


@dataclass
class FrameRecord:
    """What a track keeps per frame (small, fixed size)."""

    frame: int
    box: list[float]
    score: float
    norm: float
    assignment: list[float] | None = None  # CAFace Â[:, n] (M values)
    chunk: int = -1  # CAFace chunk index


@dataclass
class _CAFaceState:
    module: Any
    chunk_size: int
    buffer_feats: list[np.ndarray] = field(default_factory=list)
    buffer_styles: list[np.ndarray] = field(default_factory=list)
    memory: Any = None
    chunk_masses: list[np.ndarray] = field(default_factory=list)


class TrackStream:
    """Streamed fusion of one track (see the module docstring).

    Args:
        method: ``average``, ``norm_weighted`` or ``caface``.
        caface: the CAFace module (required for ``caface``).
        chunk_size: CAFace chunk length.
        keep_best: how many best crops to keep for the contact sheet.
        keep_features: also keep every feature (memory grows with the track).
    """

    def __init__(
        self,
        method: str = "norm_weighted",
        caface: Any = None,
        chunk_size: int = 64,
        keep_best: int = 6,
        keep_features: bool = False,
    ) -> None:
        if method not in STREAM_METHODS:
            raise ValueError(f"unknown stream fusion {method!r}; known: {', '.join(STREAM_METHODS)}")
        if method == "caface" and caface is None:
            raise ValueError("stream fusion 'caface' needs a CAFace module")
        self.method = method
        self.records: list[FrameRecord] = []
        self.keep_best = int(keep_best)
        self._best: list[tuple[float, int, np.ndarray]] = []
        self._sum: np.ndarray | None = None
        self.kept_features: list[np.ndarray] | None = [] if keep_features else None
        self.kept_styles: list[np.ndarray] | None = [] if keep_features and method == "caface" else None
        self._caface = None
        if method == "caface":
            caface.eval()
            self._caface = _CAFaceState(caface, int(chunk_size))

    def __len__(self) -> int:
        return len(self.records)

    def add(
        self, frame: int, box: Any, score: float, feature: np.ndarray, crop: np.ndarray | None = None, style: Any = None
    ) -> None:
        """Add one face (un-normalised ``feature`` (D,), ``style`` (C,2) for CAFace)."""
        feature = np.asarray(feature, np.float32)
        if not np.isfinite(feature).all():
            return  # a NaN feature never enters a template
        norm = float(np.linalg.norm(feature))
        self.records.append(FrameRecord(int(frame), [float(v) for v in box], float(score), norm))
        if self.kept_features is not None:
            self.kept_features.append(feature.copy())
        if self.kept_styles is not None and style is not None:
            self.kept_styles.append(np.asarray(style, np.float32).copy())
        if crop is not None and self.keep_best > 0:
            item = (norm, int(frame), np.asarray(crop))
            if len(self._best) < self.keep_best:
                heapq.heappush(self._best, item)
            elif norm > self._best[0][0]:
                heapq.heapreplace(self._best, item)
        if self._caface is None:
            contribution = feature.astype(np.float64)
            if self.method == "average":
                contribution = contribution / (norm + 1e-12)
            self._sum = contribution if self._sum is None else self._sum + contribution
            return
        if style is None:
            raise DataError("CAFace stream fusion needs the style statistics of every face")
        state = self._caface
        state.buffer_feats.append(feature)
        state.buffer_styles.append(np.asarray(style, np.float32))
        if len(state.buffer_feats) == state.chunk_size:
            state.memory = self._merge_buffer(commit=True)

    # -- CAFace ---------------------------------------------------------------------------------
    @torch.inference_mode()
    def _merge_buffer(self, commit: bool) -> Any:
        """Cluster the buffered chunk and merge it into the memory (committed or on a copy)."""
        from fuseface.nn.fusion.caface import CAFaceMemory

        state = self._caface
        assert state is not None
        if not state.buffer_feats:
            return state.memory
        module = state.module
        feats = torch.from_numpy(np.stack(state.buffer_feats))[None]
        styles = torch.from_numpy(np.stack(state.buffer_styles))[None]
        assignment, mass, mu, sigma = module.cluster(feats, module.style_input(styles))
        memory = CAFaceMemory(mass, mu, sigma) if state.memory is None else state.memory.merge(mass, mu, sigma)
        if commit:
            divisor = mass.clamp_min(1e-6) if module.exact_mass_normalisation else mass.clamp_min(1.0)
            a_hat = (assignment / divisor)[0].numpy()  # (M, n)
            start = len(self.records) - len(state.buffer_feats)
            chunk = len(state.chunk_masses)
            for j, rec in enumerate(self.records[start:]):
                rec.assignment = [float(v) for v in a_hat[:, j]]
                rec.chunk = chunk
            state.chunk_masses.append(mass[0, :, 0].numpy().astype(np.float64))
            state.buffer_feats.clear()
            state.buffer_styles.clear()
        return memory

    # -- outputs --------------------------------------------------------------------------------
    @torch.inference_mode()
    def template(self) -> np.ndarray:
        """The L2-normalised template (D,) of every face added so far."""
        if not self.records:
            raise DataError("empty track: no face to fuse")
        if self._caface is None:
            assert self._sum is not None
            return (self._sum / (np.linalg.norm(self._sum) + 1e-8)).astype(np.float32)
        memory = self._merge_buffer(commit=False)
        aggregated, _ = self._caface.module.fusion_net.aggregate(memory.features, memory.styles)
        out = aggregated[0].numpy().astype(np.float32)
        return (out / (np.linalg.norm(out) + 1e-8)).astype(np.float32)

    @torch.inference_mode()
    def weights(self) -> np.ndarray:
        """Per-frame fusion weights (N,), normalised to sum 1 (see the module docstring).

        For CAFace a partial last chunk is committed first (call at the end of the track)."""
        n = len(self.records)
        if n == 0:
            return np.zeros(0)
        if self.method == "average":
            return np.full(n, 1.0 / n)
        if self.method == "norm_weighted":
            norms = np.array([r.norm for r in self.records])
            return norms / norms.sum()
        state = self._caface
        assert state is not None
        state.memory = self._merge_buffer(commit=True)
        _, w = state.module.fusion_net.aggregate(state.memory.features, state.memory.styles)
        cluster_weight = w[0].numpy().astype(np.float64).mean(-1)  # (M,) mean over channels
        total_mass = np.sum(state.chunk_masses, axis=0)  # K_m
        out = np.empty(n)
        for i, rec in enumerate(self.records):
            share = state.chunk_masses[rec.chunk] / np.maximum(total_mass, 1e-6)
            out[i] = float(np.sum(cluster_weight * share * np.asarray(rec.assignment)))
        return out / max(out.sum(), 1e-12)

    def best_frames(self) -> list[tuple[int, float, np.ndarray]]:
        """The kept crops, best first: ``(frame, norm, crop)``."""
        return [(f, q, c) for q, f, c in sorted(self._best, key=lambda t: (-t[0], t[1]))]

    def features(self) -> np.ndarray:
        """Every feature (N, D), when ``keep_features`` was set."""
        if self.kept_features is None:
            raise ValueError("features were not kept (keep_features=False)")
        return np.stack(self.kept_features) if self.kept_features else np.zeros((0, 0), np.float32)

    def styles(self) -> np.ndarray | None:
        """Every CAFace style (N, C, 2), when ``keep_features`` was set with ``caface``."""
        return np.stack(self.kept_styles) if self.kept_styles else None
