"""Small numeric operations every layer may import (``nn/`` included): the one ``l2_normalize``
the one conversion from aligned uint8 images to model input, :func:`to_input_tensor`, and
its pixel scaling :func:`scale_pixels`.

Nothing here reads files or knows a model: arrays and tensors in, arrays and tensors out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import torch


def l2_normalize(x: Any, eps: float = 0.0, dtype: Any = np.float64) -> np.ndarray:
    """Rows (last axis) divided by their L2 norm; a 1-D input is one row.

    ``eps=0`` is ``sklearn.preprocessing.normalize`` (the insightface evaluation's): the norm comes
    from ``einsum`` and a row of norm 0 is left unchanged. ``eps > 0`` divides by ``norm + eps``
    (CAFace's evaluation uses ``1e-8``). The result is a new array of ``dtype`` (float64 by default;
    ``None`` keeps a floating input's dtype).
    """
    x = np.asarray(x)
    if dtype is None:
        dtype = x.dtype if x.dtype.kind == "f" else np.float64
    x = np.array(x, dtype=dtype, copy=True)
    if x.ndim == 0:
        raise ValueError("l2_normalize needs at least one axis")
    norms = np.sqrt(np.einsum("...i,...i->...", x, x))[..., np.newaxis]
    if eps > 0:
        x /= norms + eps
    else:
        norms[norms == 0.0] = 1.0
        x /= norms
    return x


def scale_pixels(x: Any) -> Any:
    """``(x / 255 - 0.5) / 0.5``: maps 0..255 pixel values to -1..1, insightface's input scaling
    (tensor in -> float tensor out; array in -> float32 array out)."""
    import torch

    if isinstance(x, torch.Tensor):
        return (x.float() / 255.0 - 0.5) / 0.5
    return ((np.asarray(x, dtype=np.float32) / 255.0 - 0.5) / 0.5).astype(np.float32)


def to_input_tensor(
    images: np.ndarray,
    channel_order: str = "rgb",
    pixel_mean: Sequence[float] | None = None,
    pixel_std: Sequence[float] | None = None,
) -> torch.Tensor:
    """uint8 (N, H, W, 3) RGB -> float (N, 3, H, W) in the model's channel order, normalised.

    Without ``pixel_mean`` / ``pixel_std`` this is insightface's ``(x / 255 - 0.5) / 0.5`` (values in
    [-1, 1]); with them (0..255 scale, in the model's channel order) it is ``(x - mean) / std``.
    A single (H, W, 3) image gives a (3, H, W) tensor. ``channel_order="bgr"`` reverses the channels;
    arrays already in the model's order (the training datasets decode in it) pass ``"rgb"``.
    """
    import torch

    images = np.asarray(images)
    single = images.ndim == 3
    if single:
        images = images[None]
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected images of shape (N, H, W, 3), got {images.shape}")
    if channel_order == "bgr":
        images = images[..., ::-1]
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    if pixel_mean is None and pixel_std is None:
        x = scale_pixels(x)
    else:
        mean = torch.tensor(list(pixel_mean or (127.5,) * 3), dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(list(pixel_std or (127.5,) * 3), dtype=torch.float32).view(1, 3, 1, 1)
        x = (x - mean) / std
    return x[0] if single else x
