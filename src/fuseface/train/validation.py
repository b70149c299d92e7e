"""Validation during training on insightface ``.bin`` verification sets (LFW, CFP-FP, AgeDB-30 ...).

Each set is read with :func:`fuseface.data.binfile.load_bin` (uint8 RGB pairs), fed in the
training channel order and size, embedded with the backbone in eval mode (optionally plus the
horizontally flipped image, insightface's flip-sum), and scored with the 10-fold protocol of
:func:`fuseface.eval.verification.evaluate` (arcface_torch ``eval/verification.py``). Runs on
rank 0 only; the backbone is put back in train mode afterwards.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn


@torch.no_grad()
def embed_images(
    backbone: nn.Module,
    images: np.ndarray,
    channel_order: str,
    image_size: int,
    device: torch.device,
    batch_size: int = 64,
    flip: bool = True,
) -> np.ndarray:
    """Embeddings (N, D) of uint8 RGB images (N, H, W, 3); with ``flip`` the flipped image's are added."""
    import torch.nn.functional as F

    from fuseface.ops import to_input_tensor

    was_training = backbone.training
    backbone.eval()
    out = []
    try:
        for start in range(0, len(images), batch_size):
            x = to_input_tensor(images[start : start + batch_size], channel_order).to(device)
            if x.shape[-1] != image_size or x.shape[-2] != image_size:
                x = F.interpolate(
                    x, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True
                )
            emb = backbone(x).float()
            if flip:
                emb = emb + backbone(torch.flip(x, dims=[3])).float()
            out.append(emb.cpu().numpy())
    finally:
        backbone.train(was_training)
    return np.concatenate(out, axis=0)


def validate_bins(backbone: nn.Module, cfg: Any, device: torch.device) -> dict[str, float]:
    """``{"val/<name>/accuracy": mean, "val/<name>/accuracy_std": std}`` for every ``cfg.val.bins``."""
    from fuseface.data.binfile import load_bin
    from fuseface.eval.verification import evaluate

    results: dict[str, float] = {}
    for path in cfg.val.bins:
        name = Path(path).stem
        images, issame = load_bin(path)
        emb = embed_images(
            backbone, images, cfg.data.channel_order, cfg.data.image_size, device, cfg.val.batch_size, cfg.val.flip
        )
        metrics = evaluate(emb[0::2], emb[1::2], np.asarray(issame, dtype=bool))
        results[f"val/{name}/accuracy"] = float(metrics["accuracy_mean"])
        results[f"val/{name}/accuracy_std"] = float(metrics["accuracy_std"])
    return results
