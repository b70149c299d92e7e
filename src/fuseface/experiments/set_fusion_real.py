"""Set fusion on real faces: set-to-set verification and 1:N identification on held-out identities.

Input: a feature store made from an identity split (``fuseface features extract --split ...
--degrade surveillance --scores onet``): per photo a clean copy (copy 0) and degraded copies, the
frozen backbone's un-normalised embeddings and style statistics, and a detector score per copy.
Only the **test** identities of the split are used here (the aggregator trains on the others).

Protocol (our design, seeded):

* per repetition, each test identity's photos are shuffled and cut into two halves A and B, so the
  two sets of an identity never share a photo;
* a set of size N from a half holds ``n_clean = floor(N·p + 1/2)`` clean copies of distinct photos
  and ``N - n_clean`` degraded copies drawn without replacement among the half's (photo, degraded
  copy) pairs, in random order; ``p`` = 0.25 for the *mixed* setting, 0 for *all-degraded*; an
  identity takes part at size N only if both halves can supply such a set;
* verification: every A-set template against every B-set template of the same repetition; the
  diagonal is genuine, the rest impostor; AUC and TAR at FAR 1e-3 / 1e-2 over all repetitions;
* identification: A-sets are probes, B-sets the gallery (one template per identity), rank-1;
* d' (genuine vs impostor separation) beside them, because the rates saturate at 100 % for
  large sets of a strong backbone;
* 95 % intervals: bootstrap over identities (the same resampled identities for every method, so
  the interval of a difference between two methods is paired).

Methods: ``average`` (unit features), ``norm_weighted`` (raw features), ``score_weighted``
(insightface pooling, unit features × detector score), ``caface`` (one chunk) and ``caface_stream``
(chunks of ``stream_chunk`` images through the memory, as a video would arrive). CAFace templates
are computed batched over sets of equal size; :func:`caface_templates` equals
:meth:`CAFace.fuse` / ``start``-``update``-``read`` (tested).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

SETTINGS: dict[str, float] = {"mixed": 0.25, "degraded": 0.0}
SET_SIZES = (1, 2, 4, 8, 16, 32, 64)
METHODS = ("average", "norm_weighted", "score_weighted", "caface", "caface_stream")
POOLINGS = ("average", "norm_weighted", "score_weighted")
METRICS = ("auc", "tar@1e-3", "tar@1e-2", "rank1", "dprime")

__all__ = ["caface_templates", "draw_sets", "evaluate_store", "load_test_identities", "markdown", "plot"]


def load_test_identities(store_dir: str | Path) -> dict[str, Any]:
    """Features, styles, scores and labels of the held-out identities of a split store."""
    from fuseface.data.feature_store import FeatureStore
    from fuseface.errors import DataError

    store = FeatureStore(store_dir)
    sides = store.spec.meta.get("identity_sides")
    if sides is None:
        raise DataError(f"{store_dir}: the store has no identity split (extract it with --split)")
    features, styles, labels = store.load()
    extras = store.load_extras()
    test = np.asarray([s == "test" for s in sides])
    rows = np.flatnonzero(test[labels])
    scores = extras.get("score", np.ones(features.shape[:2], np.float32))
    return {
        "features": features[rows],
        "styles": styles[rows],
        "scores": np.nan_to_num(scores[rows], nan=1.0),
        "severity": extras.get("severity", np.zeros(features.shape[:2], np.float32))[rows],
        "labels": labels[rows],
        "copies": store.copies,
    }


def _half_set(photos: np.ndarray, n: int, p_clean: float, copies: int, rng: np.random.Generator) -> np.ndarray | None:
    """(n, 2) [row, copy] of one set from the photos of a half, or None if they cannot supply it."""
    n_clean = math.floor(n * p_clean + 0.5)
    degraded = [(r, c) for r in photos for c in range(1, copies)]
    if n_clean > len(photos) or n - n_clean > len(degraded):
        return None
    clean = [(r, 0) for r in rng.choice(photos, size=n_clean, replace=False)]
    pick = rng.choice(len(degraded), size=n - n_clean, replace=False)
    items = np.asarray(clean + [degraded[i] for i in pick], dtype=np.int64).reshape(-1, 2)
    return items[rng.permutation(len(items))]


def draw_sets(
    labels: np.ndarray, n: int, p_clean: float, copies: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One repetition at size ``n``: ``(identities (T,), A items (T, n, 2), B items (T, n, 2))``."""
    ids, a_sets, b_sets = [], [], []
    for ident in np.unique(labels):
        photos = rng.permutation(np.flatnonzero(labels == ident))
        half = len(photos) // 2
        a = _half_set(photos[:half], n, p_clean, copies, rng)
        b = _half_set(photos[half:], n, p_clean, copies, rng)
        if a is not None and b is not None:
            ids.append(ident)
            a_sets.append(a)
            b_sets.append(b)
    if not ids:
        return np.zeros(0, np.int64), np.zeros((0, n, 2), np.int64), np.zeros((0, n, 2), np.int64)
    return np.asarray(ids), np.stack(a_sets), np.stack(b_sets)


@torch.inference_mode()
def caface_templates(
    caface: Any, features: np.ndarray, styles: np.ndarray, chunk_size: int | None = None, batch: int = 256
) -> np.ndarray:
    """L2-normalised CAFace templates (B, D) of B sets of equal size N: ``features`` (B, N, D),
    ``styles`` (B, N, S, 2); the official chunks (``chunk_indices``) merged with the memory in
    order. Equals ``caface.fuse(features[b], styles[b], chunk_size)`` for finite inputs."""
    from fuseface.nn.fusion.caface import CAFaceMemory, chunk_indices

    caface.eval()
    out = []
    chunks = chunk_indices(features.shape[1], chunk_size)
    for s in range(0, len(features), batch):
        f = torch.as_tensor(features[s : s + batch], dtype=torch.float32)
        st = torch.as_tensor(styles[s : s + batch], dtype=torch.float32)
        memory: CAFaceMemory | None = None
        for idx in chunks:
            t = torch.from_numpy(idx)
            _, mass, mu, sigma = caface.cluster(f[:, t], caface.style_input(st[:, t]))
            memory = CAFaceMemory(mass, mu, sigma) if memory is None else memory.merge(mass, mu, sigma)
        assert memory is not None
        agg, _ = caface.fusion_net.aggregate(memory.features, memory.styles)
        out.append(agg.numpy())
    t = np.concatenate(out).astype(np.float32)
    return t / (np.linalg.norm(t, axis=1, keepdims=True) + 1e-8)


def pooled_templates(method: str, features: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Batched pooling baselines (B, N, D) -> (B, D), L2-normalised; the same sums as
    :mod:`fuseface.nn.fusion.pooling` (``score_weighted``: unit features × score, one media each)."""
    f = features.astype(np.float64)
    unit = f / (np.linalg.norm(f, axis=-1, keepdims=True) + 1e-12)
    if method == "average":
        t = unit.mean(1)
    elif method == "norm_weighted":
        t = f.mean(1)
    elif method == "score_weighted":
        t = (unit * scores[..., None]).sum(1)
    else:
        raise ValueError(f"unknown pooling {method!r}")
    return (t / (np.linalg.norm(t, axis=1, keepdims=True) + 1e-12)).astype(np.float32)


def _templates(method: str, data: dict[str, Any], items: np.ndarray, caface: Any, stream_chunk: int) -> np.ndarray:
    rows, cps = items[..., 0], items[..., 1]
    feats = data["features"][rows, cps]
    if method in POOLINGS:
        return pooled_templates(method, feats, data["scores"][rows, cps])
    chunk = None if method == "caface" else stream_chunk
    return caface_templates(caface, feats, data["styles"][rows, cps], chunk)


def _verification(genuine: np.ndarray, impostor: np.ndarray) -> dict[str, float]:
    from fuseface.eval.roc import auc, roc_curve, tar_at_far_from_roc

    scores = np.concatenate([genuine, impostor])
    labels = np.concatenate([np.ones(len(genuine), bool), np.zeros(len(impostor), bool)])
    fpr, tpr, _ = roc_curve(labels, scores)
    tar = tar_at_far_from_roc(fpr, tpr, (1e-3, 1e-2))
    return {"auc": auc(fpr, tpr), "tar@1e-3": tar[1e-3], "tar@1e-2": tar[1e-2]}


def _metrics(sims: list[np.ndarray], hits: list[np.ndarray], pick: list[np.ndarray]) -> dict[str, float]:
    """Metrics over repetitions; ``pick[r]`` the (resampled) identity positions of repetition r."""
    gen, imp, hit = [], [], []
    for s, h, idx in zip(sims, hits, pick, strict=True):
        sub = s[np.ix_(idx, idx)]
        same = idx[:, None] == idx[None, :]
        gen.append(np.diagonal(sub))
        imp.append(sub[~same])
        hit.append(h[idx])
    g, i = np.concatenate(gen), np.concatenate(imp)
    out = _verification(g, i)
    out["rank1"] = float(np.concatenate(hit).mean())
    # d' = (mean genuine - mean impostor) / pooled std: does not saturate when TAR and rank-1 reach 100 %
    out["dprime"] = float((g.mean() - i.mean()) / np.sqrt((g.var() + i.var()) / 2 + 1e-12))
    return out


def evaluate_store(
    store_dir: str | Path,
    caface_path: str | Path,
    *,
    sizes: Sequence[int] = SET_SIZES,
    settings: dict[str, float] | None = None,
    repetitions: int = 5,
    bootstrap: int = 200,
    stream_chunk: int = 4,
    min_identities: int = 10,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Every (setting, size, method) of the protocol (module docstring) -> rows with 95 % intervals
    and, per (setting, size), the paired interval of CAFace minus the best pooling per metric."""
    from fuseface.infer.fusion_file import load_fusion

    caface = load_fusion(caface_path)
    data = load_test_identities(store_dir)
    settings = dict(SETTINGS if settings is None else settings)
    rows: list[dict[str, Any]] = []
    comparisons: list[dict[str, Any]] = []
    for setting, p_clean in settings.items():
        for n in sizes:
            rng = np.random.default_rng([seed, n, int(p_clean * 1000)])
            draws = [draw_sets(data["labels"], n, p_clean, data["copies"], rng) for _ in range(repetitions)]
            counts = [len(d[0]) for d in draws]
            if min(counts) < min_identities:
                continue
            sims: dict[str, list[np.ndarray]] = {m: [] for m in METHODS}
            hits: dict[str, list[np.ndarray]] = {m: [] for m in METHODS}
            for _, a_items, b_items in draws:
                for m in METHODS:
                    ta = _templates(m, data, a_items, caface, stream_chunk)
                    tb = _templates(m, data, b_items, caface, stream_chunk)
                    s = ta.astype(np.float64) @ tb.T.astype(np.float64)
                    sims[m].append(s)
                    hits[m].append(s.argmax(1) == np.arange(len(s)))
            full = [np.arange(c) for c in counts]
            boot_rng = np.random.default_rng([seed, n, 7])
            picks = [[boot_rng.integers(0, c, size=c) for c in counts] for _ in range(bootstrap)]
            point = {m: _metrics(sims[m], hits[m], full) for m in METHODS}
            boots = {m: [_metrics(sims[m], hits[m], pk) for pk in picks] for m in METHODS}
            for m in METHODS:
                row = {
                    "setting": setting,
                    "clean_fraction": p_clean,
                    "size": n,
                    "method": m,
                    "identities": int(np.mean(counts)),
                    "repetitions": repetitions,
                }
                for k in METRICS:
                    lo, hi = np.percentile([b[k] for b in boots[m]], [2.5, 97.5])
                    row[k], row[k + "_ci"] = point[m][k], [float(lo), float(hi)]
                rows.append(row)
            for k in METRICS:
                best = max(POOLINGS, key=lambda m, k=k: point[m][k])
                for cm in ("caface", "caface_stream"):
                    diff = [b_c[k] - b_p[k] for b_c, b_p in zip(boots[cm], boots[best], strict=True)]
                    lo, hi = np.percentile(diff, [2.5, 97.5])
                    comparisons.append(
                        {
                            "setting": setting,
                            "size": n,
                            "metric": k,
                            "caface": cm,
                            "best_pooling": best,
                            "difference": point[cm][k] - point[best][k],
                            "difference_ci": [float(lo), float(hi)],
                            "caface_value": point[cm][k],
                            "average_value": point["average"][k],
                            "average_difference": point[cm][k] - point["average"][k],
                            "average_difference_ci": [
                                float(x)
                                for x in np.percentile(
                                    [b_c[k] - b_a[k] for b_c, b_a in zip(boots[cm], boots["average"], strict=True)],
                                    [2.5, 97.5],
                                )
                            ],
                        }
                    )
            if progress:
                c = {m: round(point[m]["tar@1e-2"], 3) for m in METHODS}
                print(f"{setting} N={n} ids={int(np.mean(counts))} TAR@1e-2 {c}", flush=True)
    return {
        "rows": rows,
        "comparisons": comparisons,
        "store": str(store_dir),
        "caface": str(caface_path),
        "settings": settings,
        "repetitions": repetitions,
        "bootstrap": bootstrap,
        "stream_chunk": stream_chunk,
        "seed": seed,
    }


def _fmt(row: dict[str, Any], k: str) -> str:
    lo, hi = row[k + "_ci"]
    if k == "dprime":
        return f"{row[k]:.2f} [{lo:.2f}, {hi:.2f}]"
    return f"{100 * row[k]:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"


def markdown(result: dict[str, Any]) -> str:
    """Tables per setting: every method and metric (95 % intervals) per set size, then the paired
    CAFace − best pooling differences."""
    lines: list[str] = []
    for setting, p in result["settings"].items():
        rows = [r for r in result["rows"] if r["setting"] == setting]
        if not rows:
            continue
        lines += [
            f"**{setting}** (clean fraction {p:g}); values in %, 95 % bootstrap intervals over identities",
            "",
            "| N | ids | method | AUC | TAR@FAR=1e-3 | TAR@FAR=1e-2 | rank-1 | d' |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            lines.append(
                f"| {r['size']} | {r['identities']} | {r['method']} | " + " | ".join(_fmt(r, k) for k in METRICS) + " |"
            )
        lines += ["", "| N | metric | CAFace − best pooling (which) | CAFace − average |", "|---|---|---|---|"]
        for c in result["comparisons"]:
            if c["setting"] != setting or c["caface"] != "caface":
                continue
            lo, hi = c["difference_ci"]
            alo, ahi = c["average_difference_ci"]
            u = 1 if c["metric"] == "dprime" else 100
            lines.append(
                f"| {c['size']} | {c['metric']} | {u * c['difference']:+.2f} [{u * lo:+.2f}, {u * hi:+.2f}]"
                f" ({c['best_pooling']}) | {u * c['average_difference']:+.2f} [{u * alo:+.2f}, {u * ahi:+.2f}] |"
            )
        lines.append("")
    return "\n".join(lines)


def plot(result: dict[str, Any], path: str | Path, metric: str = "tar@1e-2") -> Path:
    """``metric`` against set size, one panel per setting, intervals as bands."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = [s for s in result["settings"] if any(r["setting"] == s for r in result["rows"])]
    fig, axes = plt.subplots(1, max(1, len(settings)), figsize=(5.5 * max(1, len(settings)), 4), squeeze=False)
    for ax, setting in zip(axes[0], settings, strict=False):
        for m in METHODS:
            rs = sorted(
                (r for r in result["rows"] if r["setting"] == setting and r["method"] == m), key=lambda r: r["size"]
            )
            x = [r["size"] for r in rs]
            ax.plot(x, [r[metric] for r in rs], marker="o", label=m)
            ax.fill_between(x, [r[metric + "_ci"][0] for r in rs], [r[metric + "_ci"][1] for r in rs], alpha=0.15)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("set size N")
        ax.set_ylabel(metric)
        ax.set_title(f"{setting} (clean fraction {result['settings'][setting]:g})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    from fuseface.eval.report import save_figure

    return save_figure(fig, path, dpi=110)


def write_json(result: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1, default=float))
    return path
