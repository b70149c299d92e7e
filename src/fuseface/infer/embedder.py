"""``FaceModel``: a backbone that knows its channel order and input size, and embeds images.

``embed_aligned`` takes aligned crops (uint8 H x W x 3, **RGB**, the project-wide convention for
arrays in memory), converts them to the channel order the network was trained on, normalises them
with the model file's ``(x - pixel_mean) / pixel_std`` (insightface's ``(x/255 - 0.5)/0.5`` by
default) and returns un-normalised embeddings with their norms.

``embed`` also takes photos (paths or arrays): anything that is not already an ``input_size``
square crop (or everything, with ``detect=True``) goes through MTCNN detection and the 5-point
alignment onto the model's template (``meta.template``, :mod:`fuseface.align`), keeping one
face per photo (``policy``: the largest by default). A photo that cannot be read or has no face
does not stop the batch: its row is NaN and the reason is reported (``embed_photos`` returns the
reasons, ``embed`` warns).
``compare`` gives the cosine similarity of two faces and a same/different verdict at a stated
threshold.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fuseface.errors import ConfigError, DataError
from fuseface.infer.model_file import (
    ModelMeta,
    check_input_size,
    load_model,
)
from fuseface.ops import to_input_tensor  # the one image -> input conversion (re-exported here)

#: Default cosine-similarity threshold of ``compare`` (a typical ArcFace operating point on LFW;
#: calibrate your own with ``fuseface eval`` — a model file may store ``extra["threshold"]``).
DEFAULT_THRESHOLD = 0.3


@dataclass
class EmbedResult:
    """Per-input results of :meth:`FaceModel.embed_photos` (rows of failed inputs are NaN)."""

    embeddings: np.ndarray
    norms: np.ndarray
    errors: dict[int, str] = field(default_factory=dict)
    boxes: list[np.ndarray | None] = field(default_factory=list)
    scores: list[float | None] = field(default_factory=list)

    @property
    def ok(self) -> np.ndarray:
        """Boolean mask of the inputs that produced an embedding."""
        mask = np.ones(len(self.embeddings), dtype=bool)
        mask[list(self.errors)] = False
        return mask


#: ``FaceModel(precision=...)``: the network as given, or its static int8 ONNX Runtime version.
PRECISIONS = ("fp32", "int8")


class FaceModel:
    """A loaded face-recognition network plus what is needed to feed it correctly.

    ``precision="int8"`` replaces the network by its post-training static int8 version
    (:mod:`fuseface.infer.quantize`: batch norms folded, ONNX export, QDQ quantisation calibrated on
    ``calibration``, run by ONNX Runtime on the CPU). ``calibration``: aligned uint8 RGB crops
    (N, S, S, 3) or a folder of aligned crop images, a few hundred real faces like the ones the
    model will see; ``int8_path``: where the int8 ONNX file goes (default a temporary folder);
    ``calibration_method``: ``"minmax"`` or ``"percentile"`` activation ranges.
    """

    def __init__(
        self,
        net: nn.Module,
        meta: ModelMeta,
        device: str | torch.device = "cpu",
        precision: str = "fp32",
        calibration: np.ndarray | str | Path | None = None,
        int8_path: str | Path | None = None,
        calibration_method: str = "minmax",
    ) -> None:
        check_input_size(net, meta, f"FaceModel({meta.arch})")
        if precision not in PRECISIONS:
            raise ConfigError(f"precision={precision!r}: expected one of {', '.join(PRECISIONS)}")
        self.meta = meta
        self.device = torch.device(device)
        self.precision = precision
        if precision == "int8":
            net = self._int8_network(net.eval(), calibration, int8_path, calibration_method)
        self.net = net.to(device).eval()

    def _int8_network(
        self, net: nn.Module, calibration: np.ndarray | str | Path | None, path: str | Path | None, method: str
    ) -> nn.Module:
        """The static int8 ONNX Runtime backbone of ``net``, calibrated on ``calibration``."""
        import tempfile

        from fuseface.infer.quantize import OnnxBackbone, quantize_backbone, read_calibration_crops

        if self.device.type != "cpu":
            raise ConfigError(f'precision="int8" runs on the CPU (ONNX Runtime), not on {self.device}')
        if calibration is None:
            raise ConfigError(
                'precision="int8" needs calibration=: aligned face crops (N, S, S, 3 uint8) or a folder of them'
            )
        if isinstance(calibration, (str, Path)):
            calibration = read_calibration_crops(calibration, self.input_size)
        crops = np.asarray(calibration)
        if crops.ndim != 4 or crops.shape[1:] != (self.input_size, self.input_size, 3) or crops.dtype != np.uint8:
            raise ConfigError(
                f"calibration: expected uint8 crops of shape (N, {self.input_size}, {self.input_size}, 3), "
                f"got {crops.dtype} {crops.shape}"
            )
        if path is None:
            path = Path(tempfile.mkdtemp(prefix="fuseface-int8-")) / "model.int8.onnx"
        calib = to_input_tensor(crops, self.meta.channel_order, **self.meta.pixel_norm()).numpy()
        return OnnxBackbone(quantize_backbone(net, calib, path, self.input_size, method=method), self.input_size)

    @property
    def channel_order(self) -> str:
        return self.meta.channel_order

    @property
    def input_size(self) -> int:
        return self.meta.input_size

    @property
    def template(self) -> str:
        """Name of the alignment template the model's crops are made with."""
        return self.meta.template

    def to_input(self, images: np.ndarray) -> torch.Tensor:
        """Aligned uint8 RGB crops (N, S, S, 3) -> the network's input tensor on its device."""
        x = to_input_tensor(images, self.meta.channel_order, **self.meta.pixel_norm())
        return self._match_input(x.to(self.device))

    @classmethod
    def from_file(cls, path: str | Path, device: str | torch.device = "cpu", **kwargs: Any) -> FaceModel:
        """Load a model file; ``kwargs`` go to the constructor (``precision``, ``calibration``, ...)."""
        net, meta = load_model(path, device=device)
        return cls(net, meta, device=device, **kwargs)

    @torch.inference_mode()
    def embed_aligned(
        self,
        images: np.ndarray | Sequence[np.ndarray] | Iterable[np.ndarray],
        batch_size: int = 64,
        flip: bool = False,
        progress: bool = False,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Embed aligned RGB crops; returns ``(embeddings (N, D) float32, norms (N,))``.

        With ``flip=True`` the embedding of the horizontally flipped crop is added (insightface's
        flip-sum fusion of raw embeddings).
        """
        batches = _batched(images, batch_size)
        outs: list[np.ndarray] = []
        iterator: Any = batches
        if progress:
            from tqdm import tqdm

            iterator = tqdm(batches, desc="embedding", unit="batch")
        for batch in iterator:
            x = self.to_input(batch)
            emb = self.net(x)
            if flip:
                emb = emb + self.net(torch.flip(x, dims=[3]))
            outs.append(emb.float().cpu().numpy())
        feats = np.concatenate(outs) if outs else np.zeros((0, 0), np.float32)
        return feats, np.linalg.norm(feats, axis=1)

    @torch.inference_mode()
    def embed_with_styles(
        self, images: np.ndarray | Sequence[np.ndarray], stages: Sequence[int] = (1, 2), batch_size: int = 64
    ) -> tuple[np.ndarray, np.ndarray]:
        """Un-normalised embeddings (N, D) and CAFace styles (N, ΣC, 2) of aligned RGB crops from one
        forward pass each (:func:`fuseface.nn.fusion.caface.stage_styles` of ``stages``), the input
        prepared exactly as :meth:`embed_aligned` prepares it (this model's channel order, input
        size and pixel mean / std), so the embeddings are the ones :meth:`embed_aligned` returns."""
        from fuseface.nn.fusion.caface import stage_styles

        feats: list[np.ndarray] = []
        styles: list[np.ndarray] = []
        for batch in _batched(images, batch_size):
            emb, maps = self.net(self.to_input(batch), return_stages=True)
            feats.append(emb.float().cpu().numpy())
            styles.append(stage_styles(maps, stages).cpu().numpy())
        if not feats:
            raise DataError("embed_with_styles: no images given")
        return np.concatenate(feats), np.concatenate(styles)

    def to_int8(
        self, calibration: np.ndarray | str | Path, path: str | Path | None = None, method: str = "minmax"
    ) -> FaceModel:
        """A copy of this model with ``precision="int8"`` (see the class docstring), calibrated on
        ``calibration``; the ONNX file goes to ``path`` (default: a temporary folder)."""
        return FaceModel(
            self.net,
            self.meta,
            self.device,
            precision="int8",
            calibration=calibration,
            int8_path=path,
            calibration_method=method,
        )

    def _match_input(self, x: torch.Tensor) -> torch.Tensor:
        """Cast the batch to the network's dtype and memory format (set by ``optimize``)."""
        param = next(self.net.parameters(), None)
        if param is not None and param.dtype != x.dtype and param.dtype.is_floating_point:
            x = x.to(param.dtype)
        if getattr(self.net, "fuseface_channels_last", False):
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    # -- photos ------------------------------------------------------------------------------
    @property
    def detector(self) -> Any:
        """The face detector used for photos (MTCNN, created on first use)."""
        if getattr(self, "_detector", None) is None:
            from fuseface.align.mtcnn import MTCNN

            self._detector = MTCNN()
        return self._detector

    @detector.setter
    def detector(self, value: Any) -> None:
        self._detector = value

    def prepare(self, item: Any, detect: bool | None = None, policy: str = "largest") -> tuple[np.ndarray, Any]:
        """One input (path or uint8 RGB array) -> ``(aligned crop, detection info or None)``.

        ``detect=None`` detects only when the input is not already an ``input_size`` square crop.
        Raises :class:`DataError` naming the input when it cannot be read or holds no face.
        """
        from fuseface.infer.pipeline import prepare_photos

        (prepared,) = prepare_photos(
            [item], lambda: self.detector, self.input_size, self.template, detect=detect, policy=policy
        )
        if prepared.error:
            raise DataError(prepared.error)
        return prepared.crop, prepared.face

    def embed_photos(
        self,
        items: Any,
        batch_size: int = 64,
        flip: bool = False,
        detect: bool | None = None,
        policy: str = "largest",
        progress: bool = False,
    ) -> EmbedResult:
        """Embed photos or crops; failures are recorded per input and the batch goes on."""
        if isinstance(items, (str, Path)) or (isinstance(items, np.ndarray) and items.ndim == 3):
            items = [items]
        items = list(items)
        crops: list[np.ndarray] = []
        good: list[int] = []
        result = EmbedResult(np.zeros((0, 0), np.float32), np.zeros((0,), np.float32))
        iterator: Any = enumerate(items)
        if progress:
            from tqdm import tqdm

            iterator = tqdm(iterator, total=len(items), desc="detect+align", unit="image")
        for i, item in iterator:
            try:
                crop, face = self.prepare(item, detect=detect, policy=policy)
            except DataError as exc:
                result.errors[i] = str(exc)
                result.boxes.append(None)
                result.scores.append(None)
                continue
            crops.append(crop)
            good.append(i)
            result.boxes.append(None if face is None else face.box)
            result.scores.append(None if face is None else face.score)
        feats, _ = self.embed_aligned(np.stack(crops) if crops else [], batch_size=batch_size, flip=flip)
        dim = feats.shape[1] if len(good) else int(getattr(self.net, "num_features", 512))
        emb = np.full((len(items), dim), np.nan, dtype=np.float32)
        if good:
            emb[good] = feats
        result.embeddings = emb
        result.norms = np.linalg.norm(emb, axis=1)
        return result

    def embed(
        self,
        images: Any,
        batch_size: int = 64,
        flip: bool = False,
        progress: bool = False,
        detect: bool | None = None,
        policy: str = "largest",
    ) -> Any:
        """Embed aligned crops, or photos (paths / arrays) after detection and alignment.

        Returns ``(embeddings (N, D) float32 un-normalised, norms (N,))``. A uint8 array of shape
        (N, S, S, 3) with S = ``input_size`` is taken as aligned crops (fast path). Inputs that fail
        (unreadable, no face) give NaN rows and a warning naming them; use :meth:`embed_photos` to
        get the reasons programmatically.
        """
        if (
            detect is not True
            and isinstance(images, np.ndarray)
            and images.ndim == 4
            and images.shape[1:3] == (self.input_size, self.input_size)
        ):
            return self.embed_aligned(images, batch_size=batch_size, flip=flip, progress=progress)
        res = self.embed_photos(
            images, batch_size=batch_size, flip=flip, detect=detect, policy=policy, progress=progress
        )
        for msg in res.errors.values():
            warnings.warn(msg, stacklevel=2)
        return res.embeddings, res.norms

    def compare(self, image_a: Any, image_b: Any, threshold: float | None = None, flip: bool = False) -> dict[str, Any]:
        """Cosine similarity of the faces in two inputs and the verdict ``similarity >= threshold``.

        The threshold defaults to the model file's ``extra["threshold"]`` or :data:`DEFAULT_THRESHOLD`.
        Raises :class:`DataError` when either input cannot be used.
        """
        if threshold is None:
            threshold = float(self.meta.extra.get("threshold", DEFAULT_THRESHOLD))
        res = self.embed_photos([image_a, image_b], flip=flip)
        if res.errors:
            raise DataError("; ".join(res.errors.values()))
        a, b = res.embeddings
        sim = float(np.dot(a, b) / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))
        return {
            "similarity": sim,
            "threshold": threshold,
            "same": sim >= threshold,
            "norms": (float(res.norms[0]), float(res.norms[1])),
        }

    def optimize(self, **kwargs: Any) -> FaceModel:
        """Fold batch norms etc. in place (see :func:`fuseface.infer.optimize.prepare_for_inference`)."""
        from fuseface.infer.optimize import prepare_for_inference

        self.net = prepare_for_inference(self.net, **kwargs)
        return self


def _batched(images: Any, batch_size: int) -> list[np.ndarray]:
    if isinstance(images, np.ndarray):
        if images.ndim == 3:
            images = images[None]
        return [images[i : i + batch_size] for i in range(0, len(images), batch_size)]
    out: list[np.ndarray] = []
    buf: list[np.ndarray] = []
    for img in images:
        buf.append(np.asarray(img))
        if len(buf) == batch_size:
            out.append(np.stack(buf))
            buf = []
    if buf:
        out.append(np.stack(buf))
    return out
