"""CAFace training on stored features (``task: caface``), following ``METHODS.md`` §3.9.

The backbone is frozen and not even loaded: training reads a feature store
(:mod:`fuseface.data.feature_store`, written by ``fuseface features extract``) holding per image
``C`` copies (clean + augmented) of the un-normalised embedding and the style statistics.

* **Identities**: a store extracted from an identity split (``fuseface features split``) names the
  side of every identity; only training identities are used (``caface.identities: train``), for
  the sets and for the centres alike.
* **Class centres** (preprocess/make_center.py): per identity, the mean of the unit-normalised
  clean embeddings (copy 0), L2-normalised; frozen (``caface.centres_from: all`` averages every
  copy). (The official script adds every embedding twice in a "flip" loop that does not flip; the
  mean is the same.)
* **Set sampler** (``MultiAugMxFeatureDatasetV3``): one item per stored image (the anchor). Draw
  ``set_size - 1`` more images of the same identity with replacement, permute the ``set_size``; build
  two halves of ``set_size/2``: each picks 1..``max_sources`` source images among them, splits the
  slots at random cut points, and fills each source's slots with copies drawn with replacement.
  The randomness of item ``i`` depends on ``(seed, epoch, i)`` only.
* **Forward** (``dual_multi_v1``): SIM on each half (batch statistics over B×half); (a) every even
  prefix 2, 4, ..., half of each half, memory off; (b) the memory path: half 1, then half 2 with
  half 1 in memory; (c) all images at once.
* **Losses** (caface/trainer.py, losses/cossim.py): ``ℓ(F, y) = 1 - cos(F, centre_y)`` (centre detached);
  ``L_c = ¼ [mean_i ℓ(F¹_i) + mean_i ℓ(F²_i) + ℓ(F_mem) + ℓ(F_all)]``;
  ``L_m = mean(1 - cos(F_mem, F_all)) / B`` with the per-process batch size ``B`` (quirk Q2, switch
  ``memory_loss_batch_scaling: false`` for the nominal weight); both sides get gradients.
  ``L = λ_c L_c + λ_m L_m``.
* **Optimiser** (set in the YAML): AdamW lr 1e-3, wd 5e-4 on every parameter (the official
  ``bn_weight_decay = weight_decay`` for AdamW), MultiStep at epochs 6 and 9, 10 epochs, no
  gradient clipping (``optim.clip_grad_norm: 0``).

The exported file is a fusion weights file (:func:`fuseface.infer.fusion_file.save_fusion`), usable as
``model=`` of :func:`fuseface.nn.fusion.fuse_features` and ``fuseface eval ijb --fusion caface``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fuseface.errors import ConfigError, DataError
from fuseface.nn.fusion.caface import CAFace
from fuseface.train.task import BaseTask

__all__ = ["CAFaceConfig", "CAFaceSetObjective", "CAFaceTask", "SetDataset", "class_centres", "training_rows"]


@dataclass
class CAFaceConfig:
    """The ``caface:`` section of a training YAML."""

    store: str = ""  # feature store directory (required)
    set_size: int = 32  # images per item: two halves of set_size / 2
    max_sources: int = 3  # source images per half: 1..max_sources
    prefix_step: int = 2  # prefixes 2, 4, ..., half (memory off)
    num_clusters: int = 4
    depth: int = 2
    num_heads: int = 8
    confidence_dim: int = 512
    exact_mass_normalisation: bool = False
    center_loss_weight: float = 1.0
    memory_loss_weight: float = 1.0
    memory_loss_batch_scaling: bool = True  # quirk Q2: divide the memory loss by the per-process batch
    init_from: str = ""  # optional fusion weights file to start from
    seed: int = 42
    identities: str = "train"  # stores with identity sides (a split): train | all (no held-out identities)
    centres_from: str = "clean"  # class centres from the clean copy (official) or from all copies


def training_rows(meta: Mapping[str, Any], labels: np.ndarray, identities: str = "train") -> np.ndarray:
    """Indices of the store rows a CAFace run may use: with ``identities="train"`` and a store made
    from an identity split (``meta["identity_sides"]``), only the rows of training identities; every
    row otherwise. Nothing of a held-out identity reaches the sets or the class centres."""
    if identities not in ("train", "all"):
        raise ConfigError(f"caface.identities must be 'train' or 'all', got {identities!r}")
    sides = meta.get("identity_sides")
    if identities == "all" or sides is None:
        return np.arange(len(labels))
    allowed = np.asarray([side == "train" for side in sides], dtype=bool)
    return np.flatnonzero(allowed[labels])


def class_centres(features: np.ndarray, labels: np.ndarray, copies: str = "clean") -> np.ndarray:
    """(num_ids, D): per identity the mean of the unit embeddings of the clean copy (copy 0, the
    official preprocess/make_center.py) or of all copies (``copies="all"``), L2-normalised."""
    if copies not in ("clean", "all"):
        raise ConfigError(f"caface.centres_from must be 'clean' or 'all', got {copies!r}")
    if features.ndim == 3 and copies == "all":
        labels = np.repeat(labels, features.shape[1])
        features = features.reshape(-1, features.shape[-1])
    f = features[:, 0] if features.ndim == 3 else features
    unit = f / (np.linalg.norm(f, axis=1, keepdims=True) + 1e-12)
    num_ids = int(labels.max()) + 1
    sums = np.zeros((num_ids, f.shape[1]), np.float64)
    np.add.at(sums, labels, unit)
    return (sums / (np.linalg.norm(sums, axis=1, keepdims=True) + 1e-12)).astype(np.float32)


class SetDataset(torch.utils.data.Dataset):
    """Video-like training sets from a feature store (see the module docstring)."""

    def __init__(
        self,
        features: np.ndarray,
        styles: np.ndarray,
        labels: np.ndarray,
        set_size: int = 32,
        max_sources: int = 3,
        seed: int = 42,
    ) -> None:
        if set_size < 4 or set_size % 2:
            raise ConfigError(f"caface.set_size must be an even number >= 4, got {set_size}")
        self.features, self.styles = features, styles
        self.labels = np.asarray(labels, dtype=np.int64)
        self.set_size, self.max_sources, self.seed = set_size, max_sources, seed
        self.epoch = 0
        order = np.argsort(self.labels, kind="stable")
        ids, starts = np.unique(self.labels[order], return_index=True)
        self.members = dict(zip(ids.tolist(), np.split(order, starts[1:]), strict=True))

    def __len__(self) -> int:
        return len(self.labels)

    def _half(self, pool: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        half = self.set_size // 2
        sources = rng.choice(pool, size=int(rng.integers(1, self.max_sources + 1)), replace=False)
        cuts = np.sort(rng.choice(np.arange(1, half), size=len(sources) - 1, replace=False)) if len(sources) > 1 else []
        counts = np.diff(np.concatenate([[0], cuts, [half]])).astype(int)
        rows = np.repeat(sources, counts)
        copies = rng.integers(0, self.features.shape[1], size=half)
        return self.features[rows, copies], self.styles[rows, copies]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int, torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.epoch, int(index)])
        label = int(self.labels[index])
        others = rng.choice(self.members[label], size=self.set_size - 1, replace=True)
        pool = rng.permutation(np.concatenate([[index], others]))
        f1, s1 = self._half(pool, rng)
        f2, s2 = self._half(pool, rng)
        as_t = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))  # noqa: E731
        return as_t(f1), as_t(s1), label, as_t(f2), as_t(s2)


class CAFaceSetObjective(nn.Module):
    """Wraps a :class:`CAFace` so one ``forward`` computes every aggregation of a training step
    (keeps DDP to a single forward per step). Returns un-normalised fused features."""

    def __init__(self, caface: CAFace, prefix_step: int = 2) -> None:
        super().__init__()
        self.caface = caface
        self.prefix_step = prefix_step

    def forward(self, f1: torch.Tensor, s1: torch.Tensor, f2: torch.Tensor, s2: torch.Tensor) -> dict[str, Any]:
        agg = self.caface
        t1, t2 = agg.style_input(s1), agg.style_input(s2)  # SIM per half, as the official feature_extract
        half = f1.shape[1]
        prefixes = list(range(self.prefix_step, half + 1, self.prefix_step))
        out: dict[str, Any] = {
            "aggregated_1": [agg(f1[:, :i], t1[:, :i]).aggregated for i in prefixes],
            "aggregated_2": [agg(f2[:, :i], t2[:, :i]).aggregated for i in prefixes],
        }
        first = agg(f1, t1)
        out["memory_aggregated"] = agg(f2, t2, memory=first.memory).aggregated
        out["single_aggregated"] = agg(torch.cat([f1, f2], 1), torch.cat([t1, t2], 1)).aggregated
        return out


def cossim_loss(x: torch.Tensor, y: torch.Tensor, detach_y: bool = True) -> torch.Tensor:
    """``mean(1 - cos(x, y))`` with the official ``+1e-5`` in the norms."""
    if detach_y:
        y = y.detach()
    x = x / (x.norm(dim=-1, keepdim=True) + 1e-5)
    y = y / (y.norm(dim=-1, keepdim=True) + 1e-5)
    return (1 - (x * y).sum(-1)).mean()


class CAFaceTask(BaseTask):
    """``task: caface`` for :func:`fuseface.train.trainer.train` (see the module docstring)."""

    config_section = "caface"
    config_class = CAFaceConfig
    replicated = ("sets",)

    def __init__(self, ctx: Any) -> None:
        super().__init__(ctx)
        self.cc: CAFaceConfig = ctx.cfg.sections["caface"]
        if not self.cc.store:
            raise ConfigError("caface.store: required (a feature store from `fuseface features extract`)")
        from fuseface.data.feature_store import FeatureStore

        store = FeatureStore(Path(self.cc.store).expanduser())
        features, styles, labels = store.load()
        rows = training_rows(store.spec.meta, labels, self.cc.identities)
        features, styles = features[rows], styles[rows]
        # labels 0..K-1 over the identities used (class centres are indexed by them)
        self.identity_labels, labels = np.unique(labels[rows], return_inverse=True)
        bad = ~(np.isfinite(features).all(axis=(1, 2)) & np.isfinite(styles).all(axis=(1, 2, 3)))
        if bad.any():
            raise DataError(
                f"{self.cc.store}: {int(bad.sum())} of {len(bad)} images have non-finite features "
                "or styles; re-extract them (e.g. with --dtype float32)"
            )
        self.centres = torch.from_numpy(class_centres(features, labels, self.cc.centres_from))
        self.style_channels = styles.shape[2]
        self.feature_dim = features.shape[2]
        if max(np.abs(features).max(), np.abs(styles).max()) < 6e4:  # halve the memory when float16 holds it
            features, styles = features.astype(np.float16), styles.astype(np.float16)
        self.dataset = SetDataset(features, styles, labels, self.cc.set_size, self.cc.max_sources, self.cc.seed)

    def build_modules(self) -> dict[str, nn.Module]:
        cc = self.cc
        # confidence_dim > 1 means per-channel weights: as many as the backbone has channels (512 released)
        confidence = 1 if cc.confidence_dim == 1 else self.feature_dim
        caface = CAFace(
            num_clusters=cc.num_clusters,
            depth=cc.depth,
            num_heads=cc.num_heads,
            confidence_dim=confidence,
            style_channels=self.style_channels,
            feature_dim=self.feature_dim,
            exact_mass_normalisation=cc.exact_mass_normalisation,
        )
        if cc.init_from:
            from fuseface.infer.fusion_file import load_fusion

            caface.load_state_dict(load_fusion(cc.init_from).state_dict(), strict=True)
        return {"sets": CAFaceSetObjective(caface, cc.prefix_step)}

    def param_groups(self, modules: Mapping[str, nn.Module]) -> list[dict[str, Any]]:
        """One group: the official AdamW setup decays every parameter (1-D ones too)."""
        params = [p for p in modules["sets"].parameters() if p.requires_grad]
        return [{"params": params, "name": "caface"}]

    def build_dataset(self) -> torch.utils.data.Dataset:
        return self.dataset

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.dataset.epoch = epoch

    def training_step(self, batch: Any, modules: Mapping[str, nn.Module]) -> tuple[torch.Tensor, dict[str, float]]:
        dev = self.ctx.device
        f1, s1, labels, f2, s2 = (t.to(dev) for t in batch)
        out = modules["sets"](f1.float(), s1.float(), f2.float(), s2.float())
        centre = self.centres.to(dev)[labels]
        keys = ("aggregated_1", "aggregated_2", "memory_aggregated", "single_aggregated")
        center_loss = 0.0
        for key in keys:
            items = out[key] if isinstance(out[key], list) else [out[key]]
            center_loss = center_loss + sum(cossim_loss(a, centre) for a in items) / len(items) / len(keys)
        memory_loss = cossim_loss(out["memory_aggregated"], out["single_aggregated"], detach_y=False)
        if self.cc.memory_loss_batch_scaling:
            memory_loss = memory_loss / len(labels)
        loss = self.cc.center_loss_weight * center_loss + self.cc.memory_loss_weight * memory_loss
        with torch.no_grad():
            cos_all = F.cosine_similarity(out["single_aggregated"], centre, dim=-1).mean()
        return loss, {
            "center_loss": float(center_loss.detach()),
            "memory_loss": float(memory_loss.detach()),
            "cos_full_set": float(cos_all),
        }

    def export(self, modules: Mapping[str, nn.Module], path: Path) -> Path:
        from fuseface.infer.fusion_file import save_fusion

        objective = modules["sets"]
        objective = getattr(objective, "module", objective)
        return save_fusion(
            path, objective.caface, "caface", extra={"task": "caface", "store": self.cc.store, "config": vars(self.cc)}
        )
