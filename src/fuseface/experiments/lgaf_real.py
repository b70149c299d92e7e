"""LGAF on a frozen real trunk: does the quality-weighted fusion of local and global features help
on real faces, and do its branch weights follow the damage?

Setting (our design; LGAF's own training recipe is not public, ``METHODS.md`` section 4.1):

* **Trunk**: dlib's ResNet (``fuseface models fetch dlib-resnet``), frozen. The **global** branch
  (GFE) is its own 128-d descriptor, unchanged, so "global only" is exactly the pretrained model.
  The **local** branch (MHMS, :class:`fuseface.nn.heads.lgaf.MHMS`) reads one level map of the same
  forward pass (``return_stages=True``; default ``alevel2``, 128 x 8 x 8 at 150 px) and is trained,
  with the LGF weights, as an :class:`fuseface.nn.heads.lgaf.LGAFHead`.
* **Data**: LFW photos of a seeded identity-disjoint split (``fuseface features split``), aligned
  from MTCNN landmarks to the model's ``dlib_150`` template. Training uses the split's training
  people only: every photo clean plus ``train_copies`` damaged copies (occlusion or deformation at
  a random strength, mirrored with probability 0.5). The trunk is run once; its descriptor and
  level map are cached, so training the head costs seconds per epoch.
* **Damage** (:func:`occlude`, :func:`deform`), both with a strength ``s`` in [0, 1]:
  *occlusion* blanks a region covering a fraction ``s`` of the crop (a band over the eyes, the
  lower face from the chin up, or a box anywhere) with a flat colour or noise; *deformation* warps
  the crop with a smooth random displacement field (a 4 x 4 grid of U(-1, 1) vectors, bicubic) of
  amplitude ``s * 0.1 * side`` pixels.
* **Claim test**: verification pairs of the held-out people (half genuine, half impostor, seeded):
  the gallery photo clean, the probe photo clean or damaged at each strength; 10-fold accuracy
  (``fuseface.eval.verification.evaluate``) of global only, local only, fused (learned weights) and
  equal weights (0.5 / 0.5), plus the learned weights of the fused head against the strength.

The pairs (who is compared with whom) are the same in every condition; only the probe's damage
changes. One seed, small data: the figures describe this implementation on this data.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

MODES = ("global", "local", "fused", "equal")
KINDS = ("occlusion", "deformation")

__all__ = [
    "FrozenTrunkLGAF",
    "TrunkFeatures",
    "damage",
    "deform",
    "evaluate_modes",
    "fit_fusion_weights",
    "make_pairs",
    "occlude",
    "people_halves",
    "train_head",
    "trunk_features",
]


# ---------------------------------------------------------------------------------------------
# damage
# ---------------------------------------------------------------------------------------------


def _fill(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    if rng.random() < 0.5:
        return np.broadcast_to(rng.integers(0, 256, 3, dtype=np.uint8), shape)
    return rng.integers(0, 256, shape, dtype=np.uint8)


def occlude(image: np.ndarray, strength: float, rng: np.random.Generator, points: np.ndarray) -> np.ndarray:
    """Blank a region covering ``strength`` of the crop's area (one of three kinds, drawn uniformly).

    ``points`` are the crop's 5 template points (eyes, nose, mouth corners) in pixels. Kinds: a
    full-width band centred on the eye line; the lower face, a full-width band from the bottom up;
    a box of aspect U(0.5, 2) anywhere inside the crop.
    """
    h, w = image.shape[:2]
    out = image.copy()
    area = float(np.clip(strength, 0.0, 1.0)) * h * w
    if area < 1:
        return out
    kind = int(rng.integers(3))
    if kind == 0:
        band = round(min(h, area / w))
        cy = float(points[:2, 1].mean())
        y0 = int(np.clip(round(cy - band / 2), 0, h - band))
        box = (y0, y0 + band, 0, w)
    elif kind == 1:
        band = round(min(h, area / w))
        box = (h - band, h, 0, w)
    else:
        aspect = float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))
        bh = int(min(h, max(1, round(math.sqrt(area / aspect)))))
        bw = int(min(w, max(1, round(area / bh))))
        y0 = int(rng.integers(0, h - bh + 1))
        x0 = int(rng.integers(0, w - bw + 1))
        box = (y0, y0 + bh, x0, x0 + bw)
    y0, y1, x0, x1 = box
    out[y0:y1, x0:x1] = _fill((y1 - y0, x1 - x0, image.shape[2]), rng)
    return out


def deform(image: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Warp the crop with a smooth random displacement field of amplitude ``strength * 0.1 * side``.

    ``out(p) = image(p + d(p))``; ``d`` is a 4 x 4 grid of U(-1, 1) vectors resized bicubically to the
    crop, scaled to the amplitude; borders reflect.
    """
    from fuseface.data.synthetic import smooth_displacement_field

    h, w = image.shape[:2]
    field = smooth_displacement_field((h, w), float(strength) * 0.1 * max(h, w), rng)
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return cv2.remap(image, gx + field[..., 0], gy + field[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)


def damage(image: np.ndarray, kind: str, strength: float, rng: np.random.Generator, points: np.ndarray) -> np.ndarray:
    """``kind`` in ``("clean", "occlusion", "deformation")`` at ``strength``."""
    if kind == "clean" or strength <= 0:
        return image
    if kind == "occlusion":
        return occlude(image, strength, rng, points)
    if kind == "deformation":
        return deform(image, strength, rng)
    raise ValueError(f"unknown damage {kind!r}; choose clean, occlusion or deformation")


# ---------------------------------------------------------------------------------------------
# frozen trunk
# ---------------------------------------------------------------------------------------------


@dataclass
class TrunkFeatures:
    """What the frozen trunk gives per image: its descriptor and one level map."""

    global_: np.ndarray  # (N, D) float32, un-normalised
    level: np.ndarray  # (N, C, H, W) float16

    def __len__(self) -> int:
        return len(self.global_)


@torch.inference_mode()
def trunk_features(
    face_model: Any,
    crops: Sequence[np.ndarray] | Callable[[int], np.ndarray],
    count: int | None = None,
    level: int = 2,
    batch_size: int = 64,
    progress: Callable[[int], None] | None = None,
) -> TrunkFeatures:
    """Run ``face_model`` (a :class:`fuseface.infer.embedder.FaceModel` whose net supports
    ``return_stages``) over aligned uint8 RGB crops; ``crops`` is a list or ``index -> crop``."""
    n = len(crops) if count is None else count  # type: ignore[arg-type]
    get = crops if callable(crops) else crops.__getitem__
    globals_, levels = [], []
    for start in range(0, n, batch_size):
        batch = np.stack([get(i) for i in range(start, min(n, start + batch_size))])
        emb, stages = face_model.net(face_model.to_input(batch), return_stages=True)
        globals_.append(emb.float().numpy())
        levels.append(stages[level].numpy().astype(np.float16))
        if progress is not None:
            progress(len(batch))
    return TrunkFeatures(np.concatenate(globals_), np.concatenate(levels))


# ---------------------------------------------------------------------------------------------
# the head on a frozen trunk
# ---------------------------------------------------------------------------------------------


class FrozenTrunkLGAF(nn.Module):
    """An :class:`~fuseface.nn.heads.lgaf.LGAFHead` fed by cached trunk outputs.

    ``forward(global_embedding, level_map) -> (embedding, aux)``, ``aux`` as the head's (branch
    weights, energies, branch embeddings).
    """

    def __init__(self, level_channels: int, level_size: int, num_features: int, mode: str = "fused", **head_kw: Any):
        super().__init__()
        from fuseface.nn.heads.lgaf import LGAFHead

        kw = {"kernel_sizes": (3, 5, 7, 9), "merge_channels": 128, "pool_size": min(4, level_size), **head_kw}
        self.head = LGAFHead((level_channels,), (level_size,), num_features, mode=mode, tap_stage=1, **kw)

    def forward(self, global_embedding: torch.Tensor, level_map: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        return self.head([level_map.float()], global_embedding.float())


def train_head(
    features: TrunkFeatures,
    labels: np.ndarray,
    mode: str,
    epochs: int = 12,
    batch_size: int = 128,
    lr: float = 2e-3,
    aux_weight: float = 0.5,
    seed: int = 0,
    log: Callable[[dict[str, float]], None] | None = None,
) -> FrozenTrunkLGAF:
    """Train the head (local branch + LGF weights) with ArcFace (s 32, m 0.3) over the training people.

    The fused output gets the main loss; in ``fused`` / ``equal`` mode the local branch also gets an
    auxiliary loss of weight ``aux_weight`` (the global branch is frozen, so its loss would train
    nothing). AdamW with a cosine schedule; the order of samples depends only on ``seed``.
    """
    from fuseface.nn.losses.margin import ArcFace
    from fuseface.nn.losses.partial_fc import PartialFC

    if mode == "global":
        raise ValueError("the global branch is the frozen trunk: nothing to train")
    torch.manual_seed(seed)
    _, channels, size, _ = features.level.shape
    dim = features.global_.shape[1]
    classes = int(labels.max()) + 1
    model = FrozenTrunkLGAF(channels, size, dim, mode=mode)
    main = PartialFC(ArcFace(s=32.0, m=0.3), dim, classes, init_seed=seed, rank=0, world_size=1)
    aux = PartialFC(ArcFace(s=32.0, m=0.3), dim, classes, init_seed=seed + 1, rank=0, world_size=1)
    params = list(model.parameters()) + list(main.parameters()) + list(aux.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=5e-4)
    n = len(labels)
    steps_per_epoch = max(1, n // batch_size)
    total = epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total, pct_start=0.1)
    g_all = torch.from_numpy(features.global_)
    lv_all = torch.from_numpy(features.level)
    y_all = torch.from_numpy(labels.astype(np.int64))
    rng = np.random.default_rng(seed)
    step = 0
    model.train()
    for epoch in range(epochs):
        order = rng.permutation(n)
        running = 0.0
        for k in range(steps_per_epoch):
            idx = torch.from_numpy(order[k * batch_size : (k + 1) * batch_size])
            emb, out = model(g_all[idx], lv_all[idx])
            y = y_all[idx]
            loss = main(F.normalize(emb), y)
            if mode in ("fused", "equal"):
                loss = loss + aux_weight * aux(F.normalize(out["local"]), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 5.0)
            opt.step()
            sched.step()
            step += 1
            running += float(loss.detach())
        if log is not None:
            log({"epoch": epoch + 1, "step": step, "loss": running / steps_per_epoch})
    return model.eval()


def fit_fusion_weights(
    model: FrozenTrunkLGAF,
    features: TrunkFeatures,
    labels: np.ndarray,
    epochs: int = 10,
    batch_size: int = 128,
    lr: float = 5e-2,
    seed: int = 0,
    log: Callable[[dict[str, float]], None] | None = None,
) -> FrozenTrunkLGAF:
    """Cross-fitting: a copy of a trained fused head whose LGF weights are re-learned on people the
    branches never saw (``features`` / ``labels``), with both branches frozen.

    Only the per-branch scale and bias of the normalised energies are trained (and the energy
    statistics re-estimated). The objective is ArcFace (s 32, m 0.3) against **prototypes**: at the
    start of every epoch each person's centre is the normalised mean of their fused embeddings, so
    the weights are judged by how tightly unseen people's photos gather around their own mean, as
    verification judges them, not by a classifier that could fit either branch. Weights learned on
    the people the local branch was trained on see that branch at its training-set best; these see
    it as a test does.
    """
    import copy

    from fuseface.nn.losses.margin import ArcFace

    torch.manual_seed(seed)
    fitted = copy.deepcopy(model).eval()
    head = fitted.head
    head.mode = "fused"
    for p in fitted.parameters():
        p.requires_grad_(False)
    head.quality_scale.requires_grad_(True)
    head.quality_bias.requires_grad_(True)
    head.quality_norm.num_batches_tracked.zero_()
    with torch.inference_mode():
        g_all = torch.from_numpy(features.global_).float()
        l_all = torch.cat(
            [head.local(torch.from_numpy(features.level[i : i + 512]).float()) for i in range(0, len(features), 512)]
        )
    g_all, l_all = g_all.clone(), l_all.clone()
    _, y_idx = np.unique(labels, return_inverse=True)
    y_all = torch.from_numpy(y_idx.astype(np.int64))
    classes = int(y_all.max()) + 1
    margin = ArcFace(s=32.0, m=0.3)
    opt = torch.optim.Adam([head.quality_scale, head.quality_bias], lr=lr)
    rng = np.random.default_rng(seed)
    n = len(y_all)
    steps = max(1, n // batch_size)
    head.quality_norm.train()
    for epoch in range(epochs):
        with torch.no_grad():
            fused_all = F.normalize(head.fuse(g_all, l_all)[0])
            centres = F.normalize(torch.zeros(classes, fused_all.shape[1]).index_add_(0, y_all, fused_all))
        order = rng.permutation(n)
        running = 0.0
        for k in range(steps):
            idx = torch.from_numpy(order[k * batch_size : (k + 1) * batch_size])
            y = y_all[idx]
            fused, _ = head.fuse(g_all[idx], l_all[idx])
            loss = F.cross_entropy(margin(F.normalize(fused) @ centres.T, y), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            running += float(loss.detach())
        if log is not None:
            scale, bias = head.quality_scale.detach().tolist(), head.quality_bias.detach().tolist()
            log({"epoch": epoch + 1, "loss": running / steps, "scale": scale, "bias": bias})
    head.quality_norm.eval()
    return fitted


@torch.inference_mode()
def embed_modes(model: FrozenTrunkLGAF, features: TrunkFeatures, batch_size: int = 512) -> dict[str, np.ndarray]:
    """Embeddings of every mode of one trained head, and its learned weights and raw branch
    energies in fused mode (``weights``, ``energies``: (N, 2), [global, local])."""
    out: dict[str, list[np.ndarray]] = {m: [] for m in (*MODES, "weights", "energies")}
    head = model.head
    trained_mode = head.mode
    try:
        for start in range(0, len(features), batch_size):
            g = torch.from_numpy(features.global_[start : start + batch_size])
            lv = torch.from_numpy(features.level[start : start + batch_size])
            for m in MODES:
                head.mode = m
                emb, aux = model(g, lv)
                out[m].append(emb.numpy())
                if m == "fused":
                    out["weights"].append(aux["weights"].numpy())
                    out["energies"].append(aux["energies"].numpy())
    finally:
        head.mode = trained_mode
    return {k: np.concatenate(v) for k, v in out.items()}


# ---------------------------------------------------------------------------------------------
# claim test
# ---------------------------------------------------------------------------------------------


def make_pairs(labels: np.ndarray, count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(gallery index, probe index, issame)``: ``count // 2`` genuine pairs (two different photos of
    one person) and as many impostor pairs (photos of two people), seeded, interleaved."""
    rng = np.random.default_rng(seed)
    by_person: dict[int, np.ndarray] = {int(p): np.flatnonzero(labels == p) for p in np.unique(labels)}
    people = [p for p, v in by_person.items() if len(v) >= 2]
    if not people:
        raise ValueError("no person with two photos: cannot draw genuine pairs")
    half = count // 2
    a, b, same = [], [], []
    for _k in range(half):
        p = people[int(rng.integers(len(people)))]
        i, j = rng.choice(by_person[p], 2, replace=False)
        a.append(i), b.append(j), same.append(True)
        p1, p2 = rng.choice(len(by_person), 2, replace=False)
        keys = list(by_person)
        a.append(int(rng.choice(by_person[keys[p1]]))), b.append(int(rng.choice(by_person[keys[p2]])))
        same.append(False)
    return np.asarray(a), np.asarray(b), np.asarray(same)


def people_halves(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """Boolean mask of the rows whose person falls in half A of a seeded split of the people."""
    people = np.unique(labels)
    chosen = np.random.default_rng([seed, 17]).permutation(people)[: len(people) // 2]
    return np.isin(labels, chosen)


def evaluate_modes(
    gallery: dict[str, np.ndarray], probe: dict[str, np.ndarray], gi: np.ndarray, pi: np.ndarray, issame: np.ndarray
) -> dict[str, dict[str, float]]:
    """10-fold accuracy and VAL@FAR=1e-3 per mode, for gallery rows ``gi`` against probe rows ``pi``."""
    from fuseface.eval.verification import evaluate

    out = {}
    for m in MODES:
        r = evaluate(gallery[m][gi], probe[m][pi], issame)
        out[m] = {
            "accuracy": float(r["accuracy_mean"]),
            "accuracy_std": float(r["accuracy_std"]),
            "val": float(r["val"]),
        }
    return out


def weight_summary(weights: np.ndarray, energies: np.ndarray) -> dict[str, float]:
    """Mean and spread of the fused head's global-branch weight over a set of images, and the mean
    log energy (log L2 norm) of each branch."""
    w = weights[:, 0]
    log_e = np.log(np.clip(energies, 1e-12, None))
    return {
        "w_global_mean": float(w.mean()),
        "w_global_std": float(w.std()),
        "w_global_q10": float(np.quantile(w, 0.1)),
        "w_global_q90": float(np.quantile(w, 0.9)),
        "log_energy_global": float(log_e[:, 0].mean()),
        "log_energy_local": float(log_e[:, 1].mean()),
    }


def crops_from_split(
    split: dict[str, Any], root: str | Path, journal: str | Path, side: str, max_photos: int, template: str, size: int
) -> tuple[Any, np.ndarray, list[str]]:
    """Aligned crops of one side of a split (at most ``max_photos`` per person, split order),
    their 0-based person labels and the photo paths."""
    from fuseface.data.photo_sets import AlignedPhotoSource, read_face_journal

    people = sorted(split[side])
    photos, labels = [], []
    for k, name in enumerate(people):
        chosen = split[side][name][: max_photos or None]
        photos += chosen
        labels += [k] * len(chosen)
    source = AlignedPhotoSource(root, photos, labels, read_face_journal(journal), template, size)
    return source, np.asarray(labels, dtype=np.int64), photos


def save_features(path: str | Path, feats: TrunkFeatures, **extra: np.ndarray) -> None:
    """Write cached trunk outputs (``.npz``; written to a temporary name, then renamed)."""
    path = Path(path)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, global_=feats.global_, level=feats.level, **extra)
    tmp.replace(path)


def load_features(path: str | Path) -> tuple[TrunkFeatures, dict[str, np.ndarray]]:
    """Read what :func:`save_features` wrote (no pickle)."""
    with np.load(path, allow_pickle=False) as z:
        rest = {k: z[k] for k in z.files if k not in ("global_", "level")}
        return TrunkFeatures(z["global_"], z["level"]), rest
