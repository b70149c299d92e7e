"""The ``recognition`` task: backbone + margin loss + Partial FC on labelled face images.

Data (``cfg.data``):

* ``recordio`` — an insightface RecordIO folder (``train.rec``/``train.idx``/``property``, e.g.
  MS1MV3), read with :class:`fuseface.data.recordio.RecordIODataset`;
* ``folder`` — one sub-folder of aligned images per identity
  (:class:`fuseface.data.folder.ImageFolderDataset`);
* ``synthetic`` — rendered once by :func:`fuseface.data.synthetic.generate_recordio` into a cache
  folder keyed by its settings (rank 0 renders, the others wait), then read as RecordIO.

Images are decoded in ``data.channel_order`` (``rgb`` for insightface, ``bgr`` for AdaFace),
resized to ``data.image_size`` when they differ, and augmented by
:func:`fuseface.data.transforms.build_train_transform` with a generator seeded by
``(train.seed, epoch, sample index)``: the augmentation of a sample does not depend on the number
of processes or workers, nor on where a run was resumed.

Model: ``create_backbone(model.name, **model.kwargs)``, embedding size ``model.kwargs.num_features``
(512). Loss: :class:`fuseface.nn.losses.partial_fc.PartialFC` around the margin loss of
``cfg.loss``. Auxiliary embeddings (LGAF branches): when ``loss.aux_weights`` is set, the backbone is
called with ``return_aux=True`` and each ``aux["aux_embeddings"][name]`` adds
``weight * PartialFC(emb_name)`` (the same class centres).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fuseface.errors import ConfigError, DataError
from fuseface.train import distributed as D
from fuseface.train.task import BaseTask, ShardSpec


class _KeepImage:
    """A 'transform' that leaves the decoded uint8 image as it is."""

    def __call__(self, image: np.ndarray, rng: Any = None) -> np.ndarray:
        return image


class TrainImages(torch.utils.data.Dataset):
    """Wraps a dataset with ``load(i) -> (uint8 image, label)``: resize, seeded augmentation, tensor."""

    def __init__(self, base: Any, transform: Any, seed: int, image_size: int) -> None:
        self.base = base
        self.transform = transform
        self.seed = int(seed)
        self.image_size = int(image_size)
        self.epoch = 0
        self.labels = np.asarray(base.labels)
        self.num_classes = int(base.num_classes)

    def __len__(self) -> int:
        return len(self.base)

    def _load(self, index: int) -> tuple[np.ndarray, int]:
        if not getattr(self.base, "skip_corrupt", False):
            return self.base.load(index)
        for attempt in range(min(len(self.base), 64)):
            j = (index + attempt) % len(self.base)
            try:
                return self.base.load(j)
            except DataError as exc:
                self.base.skipped.mark(j, str(exc))
        raise DataError(f"{getattr(self.base, 'root', 'dataset')}: 64 consecutive unreadable samples from {index}")

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        import cv2

        image, label = self._load(int(index))
        if image.shape[0] != self.image_size or image.shape[1] != self.image_size:
            image = cv2.resize(image, (self.image_size, self.image_size), interpolation=cv2.INTER_AREA)
        rng = np.random.default_rng([self.seed, self.epoch, int(index)])
        return self.transform(image, rng), int(label)


def synthetic_cache_dir(cfg: Any) -> Path:
    s = cfg.data.synthetic
    if s.cache_dir:
        return Path(s.cache_dir).expanduser()
    key = json.dumps([s.num_identities, s.images_per_identity, s.seed, s.nuisance, cfg.data.image_size])
    digest = hashlib.sha1(key.encode()).hexdigest()[:10]
    return Path(cfg.out_dir).expanduser().parent / ".synthetic_cache" / f"synth_{digest}"


def ensure_synthetic(cfg: Any) -> Path:
    """Render the synthetic RecordIO set once (rank 0; written to a temp folder then renamed)."""
    folder = synthetic_cache_dir(cfg)
    if D.rank() == 0 and not (folder / "train.rec").is_file():
        from fuseface.data.synthetic import generate_recordio

        s = cfg.data.synthetic
        tmp = folder.with_name(folder.name + f".tmp{np.random.default_rng().integers(1 << 30)}")
        generate_recordio(
            tmp,
            s.num_identities,
            s.images_per_identity,
            seed=s.seed,
            nuisance=s.nuisance,
            progress=cfg.log.progress,
            image_size=cfg.data.image_size,
        )
        try:
            tmp.replace(folder)
        except OSError:  # another run finished first
            shutil.rmtree(tmp, ignore_errors=True)
    D.barrier()
    return folder


class RecognitionTask(BaseTask):
    """Backbone + Partial FC margin softmax (see the module docstring)."""

    replicated = ("backbone",)

    def build_dataset(self) -> TrainImages:
        cfg = self.ctx.cfg
        from fuseface.data.transforms import build_train_transform

        data = cfg.data
        if data.kind == "synthetic":
            root = ensure_synthetic(cfg)
        else:
            root = Path(data.root).expanduser()
            if not root.exists():
                raise ConfigError(f"data.root: {root} does not exist")
        if data.kind in ("recordio", "synthetic"):
            from fuseface.data.recordio import RecordIODataset

            base = RecordIODataset(
                root, transform=_KeepImage(), skip_corrupt=data.skip_corrupt, channel_order=data.channel_order
            )
        else:
            from fuseface.data.folder import ImageFolderDataset

            base = ImageFolderDataset(
                root, transform=_KeepImage(), channel_order=data.channel_order, skip_corrupt=data.skip_corrupt
            )
        transform = build_train_transform(
            flip=data.flip, adaface_aug=data.adaface_aug, occlusion_p=data.occlusion_p, channel_order=data.channel_order
        )
        self.dataset = TrainImages(base, transform, cfg.train.seed, data.image_size)
        self.num_classes = data.num_classes or self.dataset.num_classes
        if self.num_classes <= int(self.dataset.labels.max(initial=0)):
            raise ConfigError(
                f"data.num_classes={self.num_classes} but {root} has labels up to {int(self.dataset.labels.max())}"
            )
        return self.dataset

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self, "dataset"):
            self.dataset.epoch = epoch

    def build_modules(self) -> dict[str, nn.Module]:
        from fuseface import create_backbone
        from fuseface.nn.losses.margin import build_margin_loss
        from fuseface.nn.losses.partial_fc import PartialFC

        cfg = self.ctx.cfg
        try:
            backbone = create_backbone(cfg.model.name, **cfg.model.kwargs)
        except KeyError as exc:
            raise ConfigError(f"model.name: {exc.args[0]}") from None
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"model.kwargs for {cfg.model.name}: {exc}") from None
        lc = cfg.loss
        margin = build_margin_loss(
            lc.name,
            s=lc.s,
            m1=lc.m1,
            m2=lc.m2,
            m3=lc.m3,
            m=lc.m,
            h=lc.h,
            t_alpha=lc.t_alpha,
            no_grad_margin=lc.no_grad_margin,
        )
        emb_size = int(cfg.model.kwargs.get("num_features", 512))
        head = PartialFC(
            margin,
            emb_size,
            self.num_classes,
            sample_rate=lc.sample_rate,
            init_std=lc.fc_init_std,
            init_seed=cfg.train.seed,
            rank=self.ctx.rank,
            world_size=self.ctx.world_size,
        )
        return {"backbone": backbone, "head": head}

    def param_groups(self, modules: Mapping[str, nn.Module]) -> list[dict[str, Any]]:
        def trainable(m: nn.Module) -> list[nn.Parameter]:
            return [p for p in m.parameters() if p.requires_grad]

        return [
            {"params": trainable(modules["backbone"]), "name": "backbone"},
            {"params": trainable(modules["head"]), "name": "head"},
        ]

    def sharded_params(self, modules: Mapping[str, nn.Module]) -> dict[nn.Parameter, ShardSpec]:
        head = modules["head"]
        return {head.weight: ShardSpec(head.class_start, head.class_start + head.num_local, head.num_classes)}

    def training_step(self, batch: Any, modules: Mapping[str, nn.Module]) -> tuple[torch.Tensor, dict[str, float]]:
        images, labels = batch
        images = images.to(self.ctx.device, non_blocking=True)
        labels = labels.to(self.ctx.device, non_blocking=True)
        aux_weights = self.ctx.cfg.loss.aux_weights
        if aux_weights:
            emb, aux = modules["backbone"](images, return_aux=True)
        else:
            emb, aux = modules["backbone"](images), {}
        head = modules["head"]
        loss = head(emb.float(), labels)
        metrics = {"loss_main": float(loss.detach())}
        if aux_weights:
            branches = aux.get("aux_embeddings", {}) if isinstance(aux, dict) else {}
            for name, weight in aux_weights.items():
                if name not in branches:
                    raise ConfigError(
                        f"loss.aux_weights: the model returned no aux embedding {name!r} (has: {sorted(branches)})"
                    )
                aux_loss = head(branches[name].float(), labels)
                metrics[f"loss_{name}"] = float(aux_loss.detach())
                loss = loss + weight * aux_loss
        return loss, metrics

    def export(self, modules: Mapping[str, nn.Module], path: Path) -> Path:
        from fuseface import registry
        from fuseface.infer.model_file import ModelMeta, save_model

        cfg = self.ctx.cfg
        stated = registry.settings(cfg.model.name, **cfg.model.kwargs)  # what the backbone entry states
        meta = ModelMeta(
            arch=cfg.model.name,
            arch_kwargs=dict(cfg.model.kwargs),
            channel_order=cfg.data.channel_order,
            input_size=cfg.data.image_size,
            template=stated["template"],
            embedding_size=stated["embedding_size"],
            extra={"trained_by": "fuseface train", "loss": cfg.loss.name, "num_classes": self.num_classes},
        )
        return save_model(path, modules["backbone"], meta)
