"""Run a frozen backbone over a dataset and write a feature store for set fusion (CAFace).

For each image the store gets the **un-normalised** embedding and the style statistics of the
chosen stage outputs: per channel the mean and the **unbiased** std over the H·W positions
(``METHODS.md`` §3.3: torch's default ``std``), concatenated in stage order. With the CAFace default
``stages=(1, 2)`` (0-based: the outputs of stage 2 and stage 3, 128 + 256 channels) the styles are
(N, 384, 2). The model must support ``model(x, return_stages=True) -> (embedding, [s1, s2, s3, s4])``
(fuseface ``IResNet`` and ``AdaFaceIR`` do).

Channel order: images come in as uint8 H x W x 3 **RGB**; they are fed in the model's
``channel_order`` (attribute of the module, e.g. ``"bgr"`` for AdaFace / CAFace weights, or the
``channel_order`` argument), normalised ``(x/255 - 0.5)/0.5``.

Augmented copies (``augment_copies=A``): copy 0 is the clean image, copies 1..A follow the CAFace
precompute recipe (§3.9, preprocess/image_augmenter.py): copy 1 is a *strong* augmentation
(geometric, then photometric, then blur), copies 2..A a single *weak* augmentation (one of
photometric, blur, geometric) applied on top of that strong one; every augmented copy is flipped
horizontally with probability 0.5. Families: geometric = random resized crop (scale 0.2-1, ratio
3/4-4/3) pasted on a zero canvas | affine (zoom 0.5-1.5, translate ±20 %) | rotation (±25°);
photometric = brightness/contrast/saturation jitter 0.5; blur = box k∈[1,10) | Gaussian σ∈[0,4) |
motion k∈[5,20) at ±45° | low-resolution round trip (side 0.2-1, random cv2 interpolations).
The augmentation of image ``i`` depends only on ``(seed, i)``, so a resumed extraction writes
exactly what an uninterrupted one would.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np
import torch
from torch import nn

from fuseface.data.feature_store import FeatureStore, FeatureStoreWriter, StoreSpec
from fuseface.errors import DataError

__all__ = [
    "ArraySource",
    "CAFaceAugmenter",
    "FolderSource",
    "ImageSource",
    "RecordIOSource",
    "extract_features",
    "load_backbone",
    "load_backbone_meta",
    "stage_styles",
]


# --------------------------------------------------------------------------------------------
# styles
# --------------------------------------------------------------------------------------------


def stage_styles(stages: Sequence[torch.Tensor], which: Sequence[int] = (1, 2)) -> torch.Tensor:
    """(B, ΣC, 2): per-channel [mean, unbiased std] over H·W of ``stages[i]`` for ``i`` in ``which``."""
    parts = []
    for i in which:
        x = stages[i].flatten(2).float()
        parts.append(torch.stack([x.mean(-1), x.std(-1, unbiased=True)], dim=-1))
    return torch.cat(parts, dim=1)


# --------------------------------------------------------------------------------------------
# sources of uint8 RGB images
# --------------------------------------------------------------------------------------------


class Degradation(Protocol):
    """``apply(image, rng) -> (degraded image, JSON parameters with kind_id and severity)``."""

    def apply(self, image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]: ...


class ImageSource(Protocol):
    """``len(source)`` images; ``source[i] -> (uint8 H x W x 3 RGB, int label)``."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]: ...


class ArraySource:
    """Images (N, H, W, 3) uint8 RGB and labels (N,) held in memory."""

    def __init__(self, images: np.ndarray, labels: Sequence[int]) -> None:
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels = images, np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        return np.asarray(self.images[index]), int(self.labels[index])


class FolderSource:
    """One sub-folder per identity (sorted names -> labels 0..K-1), images read with cv2."""

    EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"{self.root}: image folder not found")
        self.items: list[tuple[Path, int]] = []
        for label, d in enumerate(sorted(p for p in self.root.iterdir() if p.is_dir())):
            for f in sorted(d.iterdir()):
                if f.suffix.lower() in self.EXTENSIONS:
                    self.items.append((f, label))
        if not self.items:
            raise DataError(f"{self.root}: no images in identity sub-folders")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        from fuseface.data.images import read_image

        path, label = self.items[index]
        return read_image(path, channel_order="rgb"), label


class RecordIOSource:
    """An insightface RecordIO folder (``train.rec``/``train.idx``) through ``fuseface.data.recordio``."""

    def __init__(self, root: str | Path) -> None:
        from fuseface.data.recordio import RecordIODataset

        self.dataset = RecordIODataset(str(root), channel_order="rgb")

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        image, label = self.dataset.load(index)  # decoded uint8 RGB, no transform
        return image, int(label)


def open_source(path: str | Path) -> ImageSource:
    """RecordIO folder (has ``train.rec``) or identity-folder tree."""
    p = Path(path)
    if (p / "train.rec").is_file():
        return RecordIOSource(p)
    return FolderSource(p)


# --------------------------------------------------------------------------------------------
# CAFace precompute augmentations (own implementation of the §3.9 families)
# --------------------------------------------------------------------------------------------


class CAFaceAugmenter:
    """Strong / weak augmentations of the CAFace feature precompute (see the module docstring)."""

    def geometric(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        h, w = img.shape[:2]
        kind = int(rng.integers(3))
        if kind == 0:  # random resized crop pasted back on a zero canvas at its place
            for _ in range(10):
                area = h * w * rng.uniform(0.2, 1.0)
                ratio = float(np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3))))
                cw, ch = round(float(np.sqrt(area * ratio))), round(float(np.sqrt(area / ratio)))
                if 0 < cw <= w and 0 < ch <= h:
                    y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
                    out = np.zeros_like(img)
                    out[y : y + ch, x : x + cw] = img[y : y + ch, x : x + cw]
                    return out
            return img.copy()
        if kind == 1:  # affine: zoom and translation
            zoom = rng.uniform(0.5, 1.5)
            tx, ty = rng.uniform(-0.2, 0.2) * w, rng.uniform(-0.2, 0.2) * h
            M = cv2.getRotationMatrix2D((w / 2, h / 2), 0.0, zoom)
            M[:, 2] += (tx, ty)
        else:  # rotation
            M = cv2.getRotationMatrix2D((w / 2, h / 2), rng.uniform(-25, 25), 1.0)
        return cv2.warpAffine(img, M, (w, h), flags=cv2.INTER_LINEAR, borderValue=0)

    def photometric(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        x = img.astype(np.float32)
        for op in rng.permutation(3):
            f = rng.uniform(0.5, 1.5)
            if op == 0:  # brightness
                x = x * f
            elif op == 1:  # contrast around the mean grey
                x = (x - x.mean()) * f + x.mean()
            else:  # saturation around the per-pixel grey (ITU-R 601, RGB)
                grey = x @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
                x = (x - grey[..., None]) * f + grey[..., None]
            x = np.clip(x, 0, 255)
        return x.astype(np.uint8)

    def blur(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        h, w = img.shape[:2]
        kind = int(rng.integers(4))
        if kind == 0:
            k = int(rng.integers(1, 10))
            return cv2.blur(img, (k, k))
        if kind == 1:
            sigma = rng.uniform(0, 4)
            return img.copy() if sigma < 1e-3 else cv2.GaussianBlur(img, (0, 0), sigma)
        if kind == 2:
            k = int(rng.integers(5, 20))
            kernel = np.zeros((k, k), np.float32)
            kernel[k // 2, :] = 1.0
            rot = cv2.getRotationMatrix2D((k / 2 - 0.5, k / 2 - 0.5), rng.uniform(-45, 45), 1.0)
            kernel = cv2.warpAffine(kernel, rot, (k, k))
            return cv2.filter2D(img, -1, kernel / max(kernel.sum(), 1e-6))
        side = rng.uniform(0.2, 1.0)
        interps = (cv2.INTER_NEAREST, cv2.INTER_LINEAR, cv2.INTER_AREA, cv2.INTER_CUBIC, cv2.INTER_LANCZOS4)
        small = cv2.resize(
            img, (max(1, int(w * side)), max(1, int(h * side))), interpolation=interps[int(rng.integers(len(interps)))]
        )
        return cv2.resize(small, (w, h), interpolation=interps[int(rng.integers(len(interps)))])

    def strong(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return self.blur(self.photometric(self.geometric(img, rng), rng), rng)

    def weak(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return (self.photometric, self.blur, self.geometric)[int(rng.integers(3))](img, rng)

    def copies(self, img: np.ndarray, count: int, rng: np.random.Generator) -> list[np.ndarray]:
        """``count`` augmented versions: strong, then weak-on-strong; each flipped with p=0.5."""
        if count <= 0:
            return []
        strong = self.strong(img, rng)
        out = [strong] + [self.weak(strong, rng) for _ in range(count - 1)]
        return [np.ascontiguousarray(o[:, ::-1]) if rng.random() < 0.5 else o for o in out]


# --------------------------------------------------------------------------------------------
# backbone loading and extraction
# --------------------------------------------------------------------------------------------


def load_backbone_meta(spec: str) -> tuple[nn.Module, Any]:
    """Like :func:`load_backbone`, but returns the :class:`fuseface.infer.model_file.ModelMeta`
    (channel order, input size, alignment template, pixel mean / std) beside the model."""
    from fuseface.infer.model_file import ModelMeta, load_model

    if spec.startswith("random:") or spec.split(":", 1)[0] in ("adaface", "insightface"):
        model, order = load_backbone(spec)
        return model, ModelMeta(arch=spec.split(":")[1], channel_order=order)
    return load_model(spec)


def load_backbone(spec: str) -> tuple[nn.Module, str]:
    """``(model in eval mode, channel_order)`` from a fuseface model file, ``adaface:ir_101:ckpt``,
    ``insightface:iresnet50:pth`` (official weights through ``fuseface.compat``), or ``random:ir18``
    (an untrained registered backbone, for tests)."""
    if spec.startswith("random:"):
        import fuseface

        model = fuseface.create_backbone(spec.split(":", 1)[1]).eval()
        return model, getattr(model, "channel_order", "rgb")
    parts = spec.split(":", 2)
    if len(parts) == 3 and parts[0] in ("adaface", "insightface"):
        from fuseface.compat import from_official

        source, arch, path = parts
        if not Path(path).is_file():
            raise DataError(f"{path}: checkpoint not found")
        sd = torch.load(path, map_location="cpu", weights_only=True)
        model = from_official(source, arch, sd)
        return model.eval(), getattr(model, "channel_order", "bgr" if source == "adaface" else "rgb")
    from fuseface.infer.model_file import load_model

    model, meta = load_model(spec)
    return model, meta.channel_order


def _to_input(
    images: list[np.ndarray],
    channel_order: str,
    size: int,
    pixel_mean: Sequence[float] | None = None,
    pixel_std: Sequence[float] | None = None,
) -> torch.Tensor:
    from fuseface.infer.embedder import to_input_tensor

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
) -> FeatureStore | None:
    """Write (or resume) the feature store of ``source`` at ``out_dir``; returns it when complete.

    ``threads > 0`` sets torch's intra-op thread count for the run (0 leaves it as it is).

    ``degradation``: instead of the CAFace precompute augmentations, copy ``c`` (1..A) of image
    ``i`` is ``degradation.apply(image, default_rng([seed, i, c]))`` (e.g.
    :class:`fuseface.data.transforms.SurveillanceDegradation`); its parameters are stored per copy
    (:meth:`FeatureStore.copy_params`) and its ``kind_id`` / ``severity`` as the extras ``kind`` /
    ``severity`` (N, C) (copy 0: kind 0, severity 0). ``scorer``: a quality / detector score per
    image version (list of uint8 RGB crops -> (n,) scores), stored as the extra ``score`` (N, C).
    ``max_shards`` stops after that many new shards (returns None if the store is not complete
    yet), which is how the tests interrupt an extraction.
    """
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
    augmenter = CAFaceAugmenter()
    bar = None
    if progress:
        from tqdm import tqdm

        already = len(source) - sum(e - s for _, s, e in pending)
        bar = tqdm(total=len(source), desc="features", unit="img", initial=already)
    for done, (shard_id, start, stop) in enumerate(pending):
        if max_shards is not None and done >= max_shards:
            break
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

        for i in range(start, stop):
            image, label = source[i]
            labels[i - start] = label
            if degradation is None:
                versions = [image, *augmenter.copies(image, augment_copies, np.random.default_rng([seed, i]))]
                params.append([{"kind": "clean"}] + [{"kind": "caface_precompute"}] * augment_copies)
            else:
                made = [degradation.apply(image, np.random.default_rng([seed, i, c])) for c in range(1, copies)]
                versions = [image, *(m[0] for m in made)]
                params.append([{"kind": "clean", "kind_id": 0, "severity": 0.0}, *(m[1] for m in made)])
                for c, (_, p) in enumerate(made, start=1):
                    kinds[i - start, c], severity[i - start, c] = int(p["kind_id"]), float(p["severity"])
            for c, v in enumerate(versions):
                queue.append((i - start, c, v))
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
    if bar is not None:
        bar.close()
    return FeatureStore(out_dir) if writer.complete else None


def extract_options(
    model_meta: Any,
    data: str,
    split: str = "",
    landmarks: str = "",
    template: str = "",
    degrade: str = "caface",
    scores: str = "none",
    input_size: int = 0,
) -> dict[str, Any]:
    """Keyword arguments of :func:`extract_features` for the command line: the image source
    (``data`` itself, or with ``split`` the split's photos under ``data`` aligned from the
    ``landmarks`` journal to ``template``, default the model's), the degradation, the scorer,
    the input size and pixel normalisation of the model, and the store metadata they imply."""
    from fuseface.infer.model_file import DEFAULT_PIXEL_MEAN, DEFAULT_PIXEL_STD

    size = input_size or int(getattr(model_meta, "input_size", 112))
    meta: dict[str, Any] = {}
    if split:
        from fuseface.data.photo_sets import read_split, split_source

        if not landmarks:
            raise DataError("--split needs --landmarks (the faces.jsonl journal of `fuseface align`)")
        tmpl = template or getattr(model_meta, "template", "arcface")
        source, meta = split_source(read_split(split), data, landmarks, tmpl, size)
    else:
        source = open_source(data)
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
    pm, ps = (
        tuple(getattr(model_meta, "pixel_mean", DEFAULT_PIXEL_MEAN)),
        tuple(getattr(model_meta, "pixel_std", DEFAULT_PIXEL_STD)),
    )
    default = pm == DEFAULT_PIXEL_MEAN and ps == DEFAULT_PIXEL_STD
    return {
        "source": source,
        "degradation": degradation,
        "scorer": scorer,
        "input_size": size,
        "pixel_mean": None if default else pm,
        "pixel_std": None if default else ps,
        "meta": meta,
    }
