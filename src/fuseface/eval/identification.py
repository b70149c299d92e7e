"""Identification metrics on feature arrays: closed-set CMC and open-set TPIR@FPIR.

* :func:`cmc` is TinyFace's metric (AdaFace ``validation_lq/validate_tinyface.py``: PFE's
  ``DIR_FAR(score, label, ranks, FARs=[1.0])``, PROTOCOLS.md §5.4): score = inner product of the
  features as given (L2-normalise them first for cosine), only probes with at least one mate in
  the gallery count, and with FAR = 1.0 the threshold is the lowest score, so DIR at rank k is
  the fraction of those probes whose best-scoring mate is within the top k. Gallery distractors
  carry label -100 (never a mate). Rank of a probe = 1 + number of non-mates scoring at least as
  high as its best mate (ties rank the mate behind: the pessimistic rank).
* Invalid features (NaN/inf or zero rows, e.g. a template pooled from no valid image) follow the
  rule of :mod:`fuseface.eval.invalid`: counted, never dropped, scored as misses.
* :func:`tpir_at_fpir` is the open-set rule of insightface ``ijb_evals.evaluation_1N`` (used
  here for IJB-S and SCFace-style reports): threshold = the ``max(int(n_nonmated * fpir) - 1, 0)``-th
  largest of the non-mated probes' best scores; a mated probe counts when its best mate is
  rank 1 **and** scores strictly above the threshold.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

DISTRACTOR_LABEL = -100


def _scores(probe_feats: np.ndarray, probe_labels: np.ndarray, gallery_feats: np.ndarray, gallery_labels: np.ndarray):
    """Inner products (float64) with the invalid-feature rule applied, and the mate mask."""
    from fuseface.eval.invalid import apply_to_scores, invalid_rows

    p = np.asarray(probe_feats, np.float64)
    g = np.asarray(gallery_feats, np.float64)
    mates = np.asarray(probe_labels)[:, np.newaxis] == np.asarray(gallery_labels)[np.newaxis, :]
    mates &= np.asarray(gallery_labels)[np.newaxis, :] != DISTRACTOR_LABEL
    with np.errstate(invalid="ignore", over="ignore"):
        s = p @ g.T
    apply_to_scores(s, mates, ~invalid_rows(p), ~invalid_rows(g))
    return s, mates


def mate_ranks(
    probe_feats: np.ndarray,
    probe_labels: np.ndarray,
    gallery_feats: np.ndarray,
    gallery_labels: np.ndarray,
    chunk: int = 4096,
) -> tuple[np.ndarray, np.ndarray]:
    """``(ranks of mated probes, mask of mated probes)``; scores are inner products.

    Ranks are pessimistic (non-mates scoring equal to the best mate rank ahead of it); an invalid
    probe, or one whose mates are all invalid, gets :data:`~fuseface.eval.invalid.MISS_RANK`."""
    from fuseface.eval.invalid import pessimistic_ranks

    probe_labels = np.asarray(probe_labels)
    gallery_labels = np.asarray(gallery_labels)
    ranks = []
    mated = []
    for a in range(0, len(probe_feats), chunk):
        s, mates = _scores(probe_feats[a : a + chunk], probe_labels[a : a + chunk], gallery_feats, gallery_labels)
        has_mate = mates.any(1)
        ranks.append(pessimistic_ranks(s, mates)[has_mate])
        mated.append(has_mate)
    return (np.concatenate(ranks) if ranks else np.zeros(0, np.int64)), (
        np.concatenate(mated) if mated else np.zeros(0, bool)
    )


def cmc(
    probe_feats: np.ndarray,
    probe_labels: np.ndarray,
    gallery_feats: np.ndarray,
    gallery_labels: np.ndarray,
    ranks: Sequence[int] = (1, 5, 20),
) -> dict[int, float]:
    """Closed-set identification rate at each rank over the probes that have a mate."""
    r, _ = mate_ranks(probe_feats, probe_labels, gallery_feats, gallery_labels)
    if r.size == 0:
        return {int(k): float("nan") for k in ranks}
    return {int(k): float(np.mean(r <= k)) for k in ranks}


def closed_set(
    probe_feats: np.ndarray,
    probe_labels: np.ndarray,
    gallery_feats: np.ndarray,
    gallery_labels: np.ndarray,
    ranks: Sequence[int] = (1, 5, 20),
) -> dict:
    """:func:`cmc` with the counts every result carries: probes, mated probes, invalid probes and
    gallery entries (scored as misses, see :mod:`fuseface.eval.invalid`) and the mated ranks."""
    from fuseface.eval.invalid import invalid_rows

    r, mated = mate_ranks(probe_feats, probe_labels, gallery_feats, gallery_labels)
    return {
        "cmc": {int(k): (float(np.mean(r <= k)) if r.size else float("nan")) for k in ranks},
        "num_probes": len(probe_labels),
        "num_mated_probes": int(mated.sum()),
        "num_gallery": len(gallery_labels),
        "invalid_probes": int(invalid_rows(np.asarray(probe_feats)).sum()),
        "invalid_gallery": int(invalid_rows(np.asarray(gallery_feats)).sum()),
        "mated_ranks": r,
    }


def tpir_at_fpir(
    probe_feats: np.ndarray,
    probe_labels: np.ndarray,
    gallery_feats: np.ndarray,
    gallery_labels: np.ndarray,
    fpirs: Sequence[float] = (0.01,),
) -> dict[float, float]:
    """Open-set TPIR at each FPIR (``ijb_evals.evaluation_1N`` rule, see module docstring)."""
    s, mates = _scores(probe_feats, probe_labels, gallery_feats, gallery_labels)
    has_mate = mates.any(1)
    empty = np.full(len(s), -np.inf)
    best = np.where(mates, s, -np.inf).max(1) if s.shape[1] else empty
    best_other = np.where(mates, -np.inf, s).max(1) if s.shape[1] else empty
    nonmated = np.sort(s[~has_mate].max(1))[::-1] if (~has_mate).any() and s.shape[1] else np.zeros(0)
    correct = (best > best_other)[has_mate]
    pos = best[has_mate]
    out: dict[float, float] = {}
    for f in fpirs:
        if nonmated.size == 0 or pos.size == 0:
            out[float(f)] = float("nan")
            continue
        th = nonmated[max(int(nonmated.size * f) - 1, 0)]
        out[float(f)] = float(np.mean(correct & (pos > th)))
    return out


def dir_far(
    score_mat: np.ndarray,
    label_mat: np.ndarray,
    ranks: Sequence[int] = (1,),
    fars: Sequence[float] = (1.0,),
    far_rounding: str = "round",
) -> tuple[np.ndarray, np.ndarray]:
    """PFE's ``DIR_FAR`` (used by AdaFace for TinyFace and IJB-S): detection and identification
    rate at each (FAR, rank), over the probes with a mate.

    Thresholds: FAR >= 1 alone -> ``min(score) - 1e-10`` (closed set); otherwise from the best
    score of each non-mated probe sorted high to low: ``k = round(n_nonmated * far)`` false alarms
    (``np.round``, as AdaFace's ``tinyface_helper.find_thresholds_by_FAR``; checked against its
    output in ``tests/test_official_parity_metrics.py``; PFE's original truncates, ``far_rounding="floor"``);
    ``k == 0`` -> highest + 1e-8, else the k-th highest. A mated probe counts at (far, rank) when its mate's
    score is ``>=`` the threshold and a mate is within the top ``rank`` (mate rank = 1 + number of
    non-mates scoring at least as high as the best mate: the pessimistic rank of
    :mod:`fuseface.eval.invalid`; PFE sorts with ``argsort``, whose order among equal scores is
    arbitrary). Returns ``(DIRs (F, R), thresholds (F,))``.
    """
    from fuseface.eval.invalid import pessimistic_ranks

    score_mat = np.asarray(score_mat, dtype=np.float64)
    label_mat = np.asarray(label_mat, dtype=bool)
    if np.isnan(score_mat).any():
        raise ValueError("scores contain NaN: apply fuseface.eval.invalid.apply_to_scores first")
    mated = label_mat.any(1)
    s_m, l_m = score_mat[mated], label_mat[mated]
    best = np.where(l_m, s_m, -np.inf).max(1) if s_m.size else np.zeros(0)
    rank = pessimistic_ranks(s_m, l_m) if s_m.size else np.zeros(0, np.int64)
    if len(fars) == 1 and fars[0] >= 1.0:
        thresholds = np.array([np.min(score_mat) - 1e-10])
    else:
        nm = score_mat[~mated]
        if nm.shape[0] == 0:
            raise ValueError("open-set identification (FAR < 1) needs at least one non-mated probe")
        neg = np.sort(nm.max(1))[::-1]
        if far_rounding not in ("round", "floor"):
            raise ValueError(f"far_rounding must be 'round' or 'floor', got {far_rounding!r}")
        counts = len(neg) * np.asarray(fars)
        ks = (np.round(counts) if far_rounding == "round" else counts).astype(np.int32)
        thresholds = np.array([neg[0] + 1e-8 if k == 0 else neg[k - 1] for k in ks])
    dirs = np.zeros((len(thresholds), len(ranks)))
    for i, th in enumerate(thresholds):
        for j, r in enumerate(ranks):
            dirs[i, j] = float(np.mean((best >= th) & (rank <= r))) if best.size else float("nan")
    return dirs, thresholds


def two_gallery_identification(
    probe_feats: np.ndarray,
    probe_labels: np.ndarray,
    galleries: Sequence[tuple[np.ndarray, np.ndarray]],
    ranks: Sequence[int] = (1, 5, 10),
    fars: Sequence[float] = (0.01, 0.1),
) -> dict:
    """PFE / AdaFace IJB-S identification: closed-set DIR at ``ranks`` with both galleries stacked,
    open-set DIR (rank 1) at ``fars`` per gallery, averaged over the galleries. Scores are inner
    products of the features as given (normalise first for cosine)."""
    from fuseface.eval.invalid import invalid_rows

    probe_labels = np.asarray(probe_labels)
    pairs = [_scores(probe_feats, probe_labels, g, lab) for g, lab in galleries]
    scores = [s for s, _ in pairs]
    labels = [m for _, m in pairs]
    closed, _ = dir_far(np.hstack(scores), np.hstack(labels), ranks=ranks)
    opens = [dir_far(s, lab, ranks=(1,), fars=fars)[0][:, 0] for s, lab in zip(scores, labels, strict=True)]
    open_mean = np.mean(opens, axis=0)
    return {
        "cmc": {int(r): float(v) for r, v in zip(ranks, closed[0], strict=True)},
        "tpir_at_fpir": {float(f): float(v) for f, v in zip(fars, open_mean, strict=True)},
        "num_probes": len(probe_labels),
        "invalid_probes": int(invalid_rows(np.asarray(probe_feats)).sum()),
        "invalid_gallery": int(sum(invalid_rows(np.asarray(g)).sum() for g, _ in galleries)),
    }
