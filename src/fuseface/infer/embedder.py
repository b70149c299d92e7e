"""``FaceModel``: a backbone that knows its channel order and input size, and embeds images.

``embed`` takes aligned crops (uint8 H x W x 3, **RGB**, the project-wide convention for arrays in
memory), converts them to the channel order the network was trained on, normalises them with
``(x/255 - 0.5)/0.5`` and returns un-normalised embeddings with their norms.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fuseface.infer.model_file import ModelMeta, load_model


def to_input_tensor(images: np.ndarray, channel_order: str) -> torch.Tensor:
    """uint8 (N, H, W, 3) RGB -> float (N, 3, H, W) in the model's order, normalised to [-1, 1]."""
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected images of shape (N, H, W, 3), got {images.shape}")
    if channel_order == "bgr":
        images = images[..., ::-1]
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    return (x / 255.0 - 0.5) / 0.5


class FaceModel:
    """A loaded face-recognition network plus what is needed to feed it correctly."""

    def __init__(self, net: nn.Module, meta: ModelMeta, device: str | torch.device = "cpu") -> None:
        self.net = net.to(device).eval()
        self.meta = meta
        self.device = torch.device(device)

    @property
    def channel_order(self) -> str:
        return self.meta.channel_order

    @property
    def input_size(self) -> int:
        return self.meta.input_size

    @classmethod
    def from_file(cls, path: str | Path, device: str | torch.device = "cpu") -> FaceModel:
        net, meta = load_model(path, device=device)
        return cls(net, meta, device=device)

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
            x = to_input_tensor(batch, self.channel_order).to(self.device)
            emb = self.net(x)
            if flip:
                emb = emb + self.net(torch.flip(x, dims=[3]))
            outs.append(emb.float().cpu().numpy())
        feats = np.concatenate(outs) if outs else np.zeros((0, 0), np.float32)
        return feats, np.linalg.norm(feats, axis=1)

    def embed(self, images: Any, batch_size: int = 64, flip: bool = False, progress: bool = False) -> Any:
        """Embed aligned crops (see :meth:`embed_aligned`)."""
        return self.embed_aligned(images, batch_size=batch_size, flip=flip, progress=progress)


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
