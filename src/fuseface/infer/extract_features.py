"""The feature extraction loop: run a frozen backbone over an image source and write a feature
store for set fusion (CAFace).

For each image the store gets the **un-normalised** embedding and the style statistics of the
chosen stage outputs: per channel the mean and the **unbiased** std over the H·W positions
(``METHODS.md`` §3.3: torch's default ``std``), concatenated in stage order. With the CAFace default
``stages=(1, 2)`` (0-based: the outputs of stage 2 and stage 3, 128 + 256 channels) the styles are
(N, 384, 2). The model must support ``model(x, return_stages=True) -> (embedding, [s1, s2, s3, s4])``
(fuseface ``IResNet`` and ``AdaFaceIR`` do).

Input preparation: images come in as uint8 H x W x 3 **RGB** (from a
:class:`fuseface.data.image_sources.ImageSource`) and go through
:func:`fuseface.ops.to_input_tensor` with the model's settings (channel order, input size, pixel
mean / std: its :class:`fuseface.infer.model_file.ModelMeta`, which :func:`load_backbone_meta`
returns for every kind of model spec).

Augmented copies (``augment_copies=A``): copy 0 is the clean image, copies 1..A are
:class:`fuseface.data.transforms.CAFaceAugmenter` copies (the CAFace precompute recipe) or, with
``degradation``, one :class:`fuseface.data.transforms.Degradation` each. The augmentation of image
``i`` depends only on ``(seed, i)``, so a resumed extraction writes exactly what an uninterrupted
one would.

Worker processes (``workers=N``): reading, decoding and augmenting an image do not depend on any
other image, so they run in ``N`` processes (one torch / OpenCV thread each, started by a fork
server, :mod:`fuseface.parallel`) while this process embeds. The images of the shards to write are
cut into *chunks* of ``chunk_size`` consecutive indices (never across a shard boundary); a worker
turns a chunk into every image's versions, copy parameters and label, and
:func:`fuseface.parallel.ordered_map` hands the chunks back in index order, with a bounded number
submitted and not yet collected (one embedding batch's worth plus two per worker), so memory
stays bounded however far the workers could run ahead. This process then fills the embedding
batches exactly as the in-process path does (``workers=0``, the same preparation run here chunk
by chunk): the same versions in the same batches, so the store is the same bit for bit whatever
the worker count (at the same torch thread count of this process, which sets the float rounding
of the network). A worker that dies ends the run with one :class:`fuseface.errors.FusefaceError`
line; the shards written so far are kept and a run started again resumes from them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from itertools import chain
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn

from fuseface.data.feature_store import FeatureStore, FeatureStoreWriter, StoreSpec
from fuseface.data.image_sources import ImageSource
from fuseface.data.transforms import CAFaceAugmenter, Degradation
from fuseface.errors import ConfigError, DataError
from fuseface.infer.model_file import ModelMeta, load_model
from fuseface.nn.fusion.caface import stage_styles
from fuseface.parallel import default_start_method, init_worker_with, ordered_map, process_context, worker_resource

__all__ = [
    "embed_with_styles",
    "extract_features",
    "extract_options",
    "load_backbone",
    "load_backbone_meta",
    "stage_styles",
]


# --------------------------------------------------------------------------------------------
# backbone loading and extraction
# --------------------------------------------------------------------------------------------


def load_backbone_meta(spec: str) -> tuple[nn.Module, ModelMeta]:
    """``(model in eval mode, its ModelMeta)`` from a fuseface model file (its stored metadata),
    ``adaface:ir_101:ckpt`` / ``insightface:iresnet50:pth`` (official weights through
    ``fuseface.compat``) or ``random:ir18`` (an untrained registered backbone, for tests); for the
    last two the metadata is what the backbone's registry entry states
    (:meth:`ModelMeta.from_registry`)."""
    if spec.startswith("random:"):
        import fuseface

        arch = spec.split(":", 1)[1]
        return fuseface.create_backbone(arch).eval(), ModelMeta.from_registry(arch)
    parts = spec.split(":", 2)
    if len(parts) == 3 and parts[0] in ("adaface", "insightface"):
        from fuseface.compat import from_official

        source, arch, path = parts
        if not Path(path).is_file():
            raise DataError(f"{path}: checkpoint not found")
        sd = torch.load(path, map_location="cpu", weights_only=True)
        model = from_official(source, arch, sd)
        return model.eval(), ModelMeta.from_registry(model.arch_name)
    return load_model(spec)


def load_backbone(spec: str) -> tuple[nn.Module, str]:
    """``(model in eval mode, channel_order)`` of :func:`load_backbone_meta`."""
    model, meta = load_backbone_meta(spec)
    return model, meta.channel_order


def _to_input(
    images: list[np.ndarray],
    channel_order: str,
    size: int,
    pixel_mean: Sequence[float] | None = None,
    pixel_std: Sequence[float] | None = None,
) -> torch.Tensor:
    from fuseface.ops import to_input_tensor

    batch = [
        im if im.shape[:2] == (size, size) else cv2.resize(im, (size, size), interpolation=cv2.INTER_LINEAR)
        for im in images
    ]
    return to_input_tensor(np.stack(batch), channel_order, pixel_mean, pixel_std)


@torch.inference_mode()
def embed_with_styles(
    model: nn.Module,
    images: list[np.ndarray],
    channel_order: str,
    stages: Sequence[int] = (1, 2),
    input_size: int = 112,
    pixel_mean: Sequence[float] | None = None,
    pixel_std: Sequence[float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Un-normalised embeddings (B, D) and styles (B, ΣC, 2) of uint8 RGB images (normalised with
    the model's ``pixel_mean`` / ``pixel_std`` when given, else ``(x/255 - 0.5)/0.5``)."""
    x = _to_input(images, channel_order, input_size, pixel_mean, pixel_std)
    emb, maps = model(x, return_stages=True)
    return emb.float().numpy(), stage_styles(maps, stages).numpy()


@dataclass
class _PreparedImage:
    """One image of the source with its versions: ``versions[0]`` the clean image, then the
    augmented copies; per version its copy parameters, kind id and severity (0 for the clean
    image and for CAFace copies)."""

    label: int
    versions: list[np.ndarray]
    params: list[dict[str, Any]]
    kinds: list[int]
    severity: list[float]


@dataclass
class _Preparer:
    """Reads images from ``source`` and makes their copies; called on an index range ``(start,
    stop)``, in this process or in a worker (it is what the workers receive, so it pickles)."""

    source: ImageSource
    augment_copies: int
    seed: int
    degradation: Degradation | None = None
    augmenter: CAFaceAugmenter = field(default_factory=CAFaceAugmenter)

    def image(self, i: int) -> _PreparedImage:
        """Image ``i`` and its ``augment_copies`` copies, drawn from generators seeded by ``(seed, i)``
        (``(seed, i, c)`` per degradation copy ``c``)."""
        image, label = self.source[i]
        extra = self.augment_copies
        if self.degradation is None:
            versions = [image, *self.augmenter.copies(image, extra, np.random.default_rng([self.seed, i]))]
            params = [{"kind": "clean"}] + [{"kind": "caface_precompute"}] * extra
            return _PreparedImage(int(label), versions, params, [0] * (1 + extra), [0.0] * (1 + extra))
        made = [self.degradation.apply(image, np.random.default_rng([self.seed, i, c])) for c in range(1, 1 + extra)]
        return _PreparedImage(
            int(label),
            [image, *(m[0] for m in made)],
            [{"kind": "clean", "kind_id": 0, "severity": 0.0}, *(m[1] for m in made)],
            [0, *(int(m[1]["kind_id"]) for m in made)],
            [0.0, *(float(m[1]["severity"]) for m in made)],
        )

    def __call__(self, bounds: tuple[int, int]) -> list[_PreparedImage]:
        return [self.image(i) for i in range(*bounds)]


#: Imported once by the fork server, so that the workers start without importing them again.
_PRELOAD = ("fuseface.infer.extract_features", "fuseface.data.recordio", "fuseface.data.photo_sets", "cv2")


def _prepare_in_worker(bounds: tuple[int, int]) -> list[_PreparedImage]:
    """A worker's chunk, prepared by its :class:`_Preparer` (:func:`fuseface.parallel.worker_resource`)."""
    return worker_resource()(bounds)


def extract_features(
    model: nn.Module,
    source: ImageSource,
    out_dir: str | Path,
    *,
    channel_order: str | None = None,
    stages: Sequence[int] = (1, 2),
    augment_copies: int = 0,
    seed: int = 0,
    batch_size: int = 64,
    shard_size: int = 4096,
    dtype: str = "float16",
    input_size: int = 112,
    meta: dict[str, Any] | None = None,
    progress: bool = True,
    max_shards: int | None = None,
    on_shard: Callable[[int], None] | None = None,
    degradation: Degradation | None = None,
    scorer: Callable[[list[np.ndarray]], np.ndarray] | None = None,
    pixel_mean: Sequence[float] | None = None,
    pixel_std: Sequence[float] | None = None,
    threads: int = 0,
    workers: int = 0,
    chunk_size: int = 8,
) -> FeatureStore | None:
    """Write (or resume) the feature store of ``source`` at ``out_dir``; returns it when complete.

    ``threads > 0`` sets torch's intra-op thread count for the run (0 leaves it as it is).

    ``workers > 0`` reads and augments the images in that many worker processes while this one
    embeds (see the module docstring; ``chunk_size`` images per work unit); the store is the same
    as with ``workers=0``, which does everything here. The source and ``degradation`` are pickled
    to each worker once; each worker builds its own :class:`_Preparer` from them. This process
    keeps its torch threads (``threads``): on a machine with few cores give it the cores the
    workers leave.

    ``degradation``: instead of the CAFace precompute augmentations, copy ``c`` (1..A) of image
    ``i`` is ``degradation.apply(image, default_rng([seed, i, c]))`` (e.g.
    :class:`fuseface.data.transforms.SurveillanceDegradation`); its parameters are stored per copy
    (:meth:`FeatureStore.copy_params`) and its ``kind_id`` / ``severity`` as the extras ``kind`` /
    ``severity`` (N, C) (copy 0: kind 0, severity 0). ``scorer``: a quality / detector score per
    image version (list of uint8 RGB crops -> (n,) scores), stored as the extra ``score`` (N, C),
    computed in this process. ``max_shards`` stops after that many new shards (returns None if the
    store is not complete yet), which is how the tests interrupt an extraction.
    """
    if workers < 0 or chunk_size < 1:
        raise ConfigError(f"workers must be >= 0 and chunk_size >= 1, got {workers} and {chunk_size}")
    if threads > 0:
        torch.set_num_threads(threads)
    model = model.eval()
    order = channel_order or getattr(model, "channel_order", "rgb")
    if order not in ("rgb", "bgr"):
        raise ValueError(f"channel_order must be rgb or bgr, got {order!r}")
    if len(source) == 0:
        raise DataError(f"{out_dir}: the source has no images")
    norm = {"pixel_mean": pixel_mean, "pixel_std": pixel_std}
    probe_emb, probe_sty = embed_with_styles(model, [source[0][0]], order, stages, input_size, **norm)
    copies = 1 + augment_copies
    spec = StoreSpec(
        num_images=len(source),
        feature_dim=probe_emb.shape[1],
        style_channels=probe_sty.shape[1],
        copies=copies,
        shard_size=shard_size,
        dtype=dtype,
        meta={
            "channel_order": order,
            "stages": list(stages),
            "augment_copies": augment_copies,
            "seed": seed,
            "augmentation": (
                "none" if not augment_copies else type(degradation).__name__ if degradation else "caface_precompute"
            ),
            "scores": getattr(scorer, "__name__", type(scorer).__name__) if scorer is not None else "none",
            **(meta or {}),
        },
    )
    writer = FeatureStoreWriter(out_dir, spec)
    pending = writer.pending()
    todo = pending if max_shards is None else pending[: max(0, max_shards)]
    chunks = [(a, min(a + chunk_size, stop)) for _, start, stop in todo for a in range(start, stop, chunk_size)]
    make_preparer = partial(_Preparer, source, augment_copies, seed, degradation)
    bar = None
    if progress:
        from tqdm import tqdm

        already = len(source) - sum(e - s for _, s, e in pending)
        bar = tqdm(total=len(source), desc="features", unit="img", initial=already)
    executor: ProcessPoolExecutor | None = None
    try:
        if workers > 0 and chunks:
            ctx = process_context(default_start_method(), _PRELOAD)
            executor = ProcessPoolExecutor(
                workers, mp_context=ctx, initializer=init_worker_with, initargs=(make_preparer,)
            )
        in_flight = 2 * workers + -(-batch_size // (copies * chunk_size))
        broken = "a feature-extraction worker process died; the shards written so far are kept: run again to resume"
        prepare = _prepare_in_worker if executor is not None else make_preparer()
        images = chain.from_iterable(ordered_map(prepare, chunks, executor, in_flight, broken))
        for shard_id, start, stop in todo:
            feats = np.zeros((stop - start, copies, spec.feature_dim), np.float32)
            styles = np.zeros((stop - start, copies, spec.style_channels, 2), np.float32)
            labels = np.zeros(stop - start, np.int64)
            kinds = np.zeros((stop - start, copies), np.int64)
            severity = np.zeros((stop - start, copies), np.float32)
            scores = np.full((stop - start, copies), np.nan, np.float32)
            params: list[list[dict[str, Any]]] = []
            queue: list[tuple[int, int, np.ndarray]] = []

            def flush(
                queue: list[tuple[int, int, np.ndarray]] = queue,
                feats: np.ndarray = feats,
                styles: np.ndarray = styles,
                scores: np.ndarray = scores,
            ) -> None:
                if not queue:
                    return
                e, s = embed_with_styles(model, [q[2] for q in queue], order, stages, input_size, **norm)
                for (row, copy, _), fe, st in zip(queue, e, s, strict=True):
                    feats[row, copy], styles[row, copy] = fe, st
                if scorer is not None:
                    for (row, copy, _), sc in zip(queue, scorer([q[2] for q in queue]), strict=True):
                        scores[row, copy] = sc
                queue.clear()

            for row in range(stop - start):
                item = next(images)
                labels[row], kinds[row], severity[row] = item.label, item.kinds, item.severity
                params.append(item.params)
                for c, v in enumerate(item.versions):
                    queue.append((row, c, v))
                    if len(queue) >= batch_size:
                        flush()
                if bar is not None:
                    bar.update(1)
            flush()
            if not np.isfinite(feats).all():
                bad = int((~np.isfinite(feats).all(axis=(1, 2))).sum())
                import warnings

                warnings.warn(f"{out_dir}: shard {shard_id} has {bad} images with non-finite features", stacklevel=2)
            extras: dict[str, np.ndarray] = {"kind": kinds, "severity": severity} if degradation is not None else {}
            if scorer is not None:
                extras["score"] = scores
            writer.write_shard(shard_id, feats, styles, labels, extras=extras, copy_params=params)
            if on_shard is not None:
                on_shard(shard_id)
    finally:
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
        if bar is not None:
            bar.close()
    return FeatureStore(out_dir) if writer.complete else None


def extract_options(
    model_meta: ModelMeta,
    data: str,
    split: str = "",
    landmarks: str = "",
    template: str = "",
    degrade: str = "caface",
    scores: str = "none",
    input_size: int = 0,
) -> dict[str, Any]:
    """Keyword arguments of :func:`extract_features` for the command line: the image source
    (:func:`fuseface.data.image_sources.photo_source`: ``data`` itself, or with ``split`` the
    split's photos under ``data`` aligned from the ``landmarks`` journal to ``template``, default
    the model's), the degradation, the scorer, the input size and pixel normalisation of the model
    (``model_meta``), and the store metadata they imply."""
    from fuseface.data.image_sources import photo_source

    size = input_size or int(model_meta.input_size)
    source, meta = photo_source(data, split, landmarks, template or model_meta.template, size)
    degradation = None
    if degrade == "surveillance":
        from fuseface.align.similarity import template_points
        from fuseface.data.transforms import SurveillanceDegradation

        points = template_points(meta["template"], size) if split else None
        degradation = SurveillanceDegradation(points=points)
    elif degrade != "caface":
        raise DataError(f"--degrade: unknown {degrade!r}; choose caface or surveillance")
    scorer = None
    if scores == "onet":
        from fuseface.align.mtcnn import MTCNN, faceness

        onet = MTCNN().onet.eval()

        def onet_faceness(crops: list[np.ndarray]) -> np.ndarray:
            return faceness(onet, crops)

        scorer = onet_faceness
    elif scores != "none":
        raise DataError(f"--scores: unknown {scores!r}; choose none or onet")
    return {
        "source": source,
        "degradation": degradation,
        "scorer": scorer,
        "input_size": size,
        **model_meta.pixel_norm(),
        "meta": meta,
    }
