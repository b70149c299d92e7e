"""IJB-B / IJB-C 1:1 verification (TAR@FAR) and 1:N open-set identification (TPIR@FPIR, CMC).

References: insightface ``arcface_torch/eval_ijbc.py`` (1:1), ``_evaluation_/ijb/ijb_evals.py``
(``evaluation_1N``: galleries evaluated separately) and ``_evaluation_/ijb/ijb_1n.py`` (legacy pooled
gallery); PROTOCOLS.md §5.3, B §2.2-2.3.

Switches (named for what they do; the references' flag names contradict each other):

* ``flip_test``: add the features of the mirrored images (when ``flip_features`` are given);
* ``keep_norm``: keep each image feature's norm as a quality weight (``False``: L2-normalise it);
* ``detector_score``: multiply each image feature by its detector faceness score.

Defaults (all ``True``) are arcface_torch's ``eval_ijbc.py`` mode (F1, N1 "norm kept", D1).

1:1 pipeline: image features -> template features (:mod:`fuseface.eval.templates`) -> pair
scores = cosine of the two template features (:func:`score_template_pairs`) -> ROC and TAR at the
nearest FPR (:mod:`fuseface.eval.roc`).

Scoring at IJB-C scale (15.66 M pairs) is done block-wise without sorting the pairs: the first
templates are cut into blocks, each pair gets its block's id, and for one block the dot products
with all second templates are one float64 matrix product into a reused buffer, from which the
block's pairs are picked; when a block's pairs fill less than 1/16 of that product, they are scored
one by one (``einsum``) instead. Memory is bounded by ``chunk_elems`` (default 8 M float64 = 64 MiB).
The reference computes ``np.sum(f1 * f2, -1)``; a matrix product adds the same terms in another
order, so scores agree to ~1e-16 (the metrics are identical unless two scores tie within that).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fuseface.data.ijb import IJBProtocol, load_ijb
from fuseface.eval.invalid import MISS_RANK, apply_to_scores, invalid_rows, pair_scores_as_misses
from fuseface.eval.roc import DEFAULT_FARS, auc, roc_curve, tar_at_far_from_roc
from fuseface.eval.roc import tar_at_far as tar_at_far  # re-exported: the IJB metric lives in roc
from fuseface.eval.templates import TemplateFeatures, image_features, pool_templates

DEFAULT_FPIRS: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1)
DEFAULT_RANKS: tuple[int, ...] = (1, 5, 10)


MASK_PASSES_MAX = 32  # up to this many blocks, find each block's pairs with one pass over a block-id array


def _pairs_by_block(block_of_pair: np.ndarray, n_blocks: int) -> Iterator[tuple[int, np.ndarray]]:
    """``(block, pair indices in ascending order)`` for every non-empty block.

    Few blocks: one ``flatnonzero(block_of_pair == b)`` pass per block (cheap on a uint16 array and
    no full-length index array at once). Many blocks: one stable radix argsort of the block ids."""
    if n_blocks <= MASK_PASSES_MAX:
        for b in range(n_blocks):
            idx = np.flatnonzero(block_of_pair == b)
            if idx.size:
                yield b, idx
        return
    order = np.argsort(block_of_pair, kind="stable")
    bounds = np.r_[0, np.cumsum(np.bincount(block_of_pair, minlength=n_blocks))]
    for b in range(n_blocks):
        if bounds[b + 1] > bounds[b]:
            yield b, order[bounds[b] : bounds[b + 1]]


def score_template_pairs(
    template_feats: np.ndarray, rows1: np.ndarray, rows2: np.ndarray, chunk_elems: int = 8_000_000
) -> np.ndarray:
    """Dot products ``template_feats[rows1[k]] . template_feats[rows2[k]]`` for every pair k.

    ``template_feats``: (T, D) float64 (L2-normalised: the scores are cosines).
    The first templates that occur are cut, in row order, into blocks of ``chunk_elems //
    n_second`` rows; a block's scores against every second template are one float64 matrix
    product into a reused (block x n_second) buffer, from which its pairs are picked. A block whose
    pairs fill less than 1/16 of that product scores them one by one (``einsum``) instead. Memory
    beyond the output is O(chunk_elems) float64, a uint16/32 block id per pair, one block's pair
    indices and one gathered copy of the second templates' features; no sort of the pairs.

    The product buffer and the gathered right-hand side are allocated once and reused by every
    block: a fresh 64 MiB temporary per block means fresh pages every time (glibc maps allocations
    that large directly), and on virtual machines first-touching pages costs more than the
    arithmetic.
    """
    rows1 = np.asarray(rows1, dtype=np.intp)
    rows2 = np.asarray(rows2, dtype=np.intp)
    n_t, dim = template_feats.shape
    scores = np.empty(rows1.size, dtype=np.float64)
    if rows1.size == 0:
        return scores
    t1_rows = np.flatnonzero(np.bincount(rows1, minlength=n_t))  # every first template, once
    mark = np.zeros(n_t, dtype=bool)
    mark[rows2] = True
    cols = np.flatnonzero(mark)  # every second template, once
    colmap = np.zeros(n_t, dtype=np.intp)
    colmap[cols] = np.arange(cols.size)
    rows_per_block = max(1, chunk_elems // cols.size)
    n_blocks = -(-t1_rows.size // rows_per_block)
    rank = np.arange(t1_rows.size)
    block_dtype = np.uint16 if n_blocks <= np.iinfo(np.uint16).max else np.uint32
    block_of_row = np.zeros(n_t, dtype=block_dtype)
    block_of_row[t1_rows] = rank // rows_per_block
    rowmap = np.zeros(n_t, dtype=np.intp)  # row of a first template inside its block's product
    rowmap[t1_rows] = rank % rows_per_block
    step = max(1, chunk_elems // max(1, dim))
    right: np.ndarray | None = None  # (D, len(cols)), gathered for the first dense block
    product: np.ndarray | None = None  # (rows_per_block, len(cols)), reused
    for b, idx in _pairs_by_block(block_of_row[rows1], n_blocks):
        used = t1_rows[b * rows_per_block : (b + 1) * rows_per_block]
        p1, p2 = rows1[idx], rows2[idx]
        if idx.size * 16 >= used.size * cols.size:
            if right is None:
                right = template_feats[cols].T  # F-ordered view: BLAS reads it transposed, no copy
                product = np.empty((min(rows_per_block, t1_rows.size), cols.size), dtype=np.float64)
            assert product is not None
            out = product[: used.size]
            np.matmul(template_feats[used], right, out=out)
            flat = rowmap[p1]
            flat *= cols.size
            flat += colmap[p2]
            scores[idx] = out.reshape(-1)[flat]
        else:
            for c in range(0, idx.size, step):
                e = min(idx.size, c + step)
                scores[idx[c:e]] = np.einsum("ij,ij->i", template_feats[p1[c:e]], template_feats[p2[c:e]])
    return scores


def _check_features(features: np.ndarray | None, proto: IJBProtocol, what: str) -> None:
    if features is None:
        return
    if features.ndim != 2 or features.shape[0] != proto.num_images:
        raise ValueError(
            f"{what} have shape {features.shape}; the {proto.target} protocol needs one row per image "
            f"({proto.num_images}) in the order of its landmark file"
        )


def build_template_features(
    proto: IJBProtocol,
    features: np.ndarray | None,
    flip_features: np.ndarray | None = None,
    *,
    flip_test: bool = True,
    keep_norm: bool = True,
    detector_score: bool = True,
    template_features: TemplateFeatures | tuple[np.ndarray, np.ndarray] | None = None,
    overwrite_features: bool = False,
) -> tuple[TemplateFeatures, dict[str, Any]]:
    """Template features of every template of the protocol, plus the effective switches."""
    if template_features is not None:
        if isinstance(template_features, tuple):
            ids, rows = (np.asarray(x) for x in template_features)
            order = np.argsort(ids)
            from fuseface.eval.verification import l2_normalize

            rows = np.asarray(rows, dtype=np.float64)[order]
            bad = invalid_rows(rows)
            rows[bad] = 0.0
            template_features = TemplateFeatures(ids[order].astype(np.int64), l2_normalize(rows), 0, int(bad.sum()))
        return template_features, {"pooling": "precomputed template features"}
    if features is None:
        raise ValueError("give image features or template_features")
    _check_features(features, proto, "features")
    _check_features(flip_features, proto, "flip features")
    inplace = overwrite_features and features.dtype == np.float32 and features.flags.writeable
    feats = image_features(
        features,
        flip_features,
        proto.faceness,
        flip_test=flip_test,
        keep_norm=keep_norm,
        detector_score=detector_score,
        out=features if inplace else None,
    )
    valid = ~invalid_rows(feats)  # NaN/inf propagate and all-zero rows stay zero through the switches
    tf = pool_templates(feats, proto.templates, proto.medias, valid)
    switches = {
        "flip_test": bool(flip_test and flip_features is not None),
        "keep_norm": bool(keep_norm),
        "detector_score": bool(detector_score),
        "pooling": "insightface media mean, template sum, L2",
    }
    return tf, switches


def evaluate_1to1(
    root: str | Path | IJBProtocol,
    target: str = "IJBC",
    features: np.ndarray | None = None,
    flip_features: np.ndarray | None = None,
    *,
    flip_test: bool = True,
    keep_norm: bool = True,
    detector_score: bool = True,
    template_features: TemplateFeatures | tuple[np.ndarray, np.ndarray] | None = None,
    fars: Sequence[float] = DEFAULT_FARS,
    return_scores: bool = False,
    overwrite_features: bool = False,
) -> dict[str, Any]:
    """IJB 1:1 verification: ``tar_at_far`` ({far: tar}), ``auc`` and the counts of what was used.

    ``root`` holds ``<target>/meta/...`` (or pass a loaded :class:`IJBProtocol`); ``features``:
    (N, D) raw image features in the landmark file's order. ``template_features``: one
    precomputed row per template, ``(template_ids, rows)`` (e.g. from CAFace), replaces pooling.
    Pairs that involve a template without any valid image are scored as misses (a genuine pair
    ``-inf``, an impostor pair ``+inf``: :mod:`fuseface.eval.invalid`) and counted in
    ``pairs_with_empty_template``. ``overwrite_features=True`` lets the per-image weighting
    reuse a float32 ``features`` array (saves ~1 GB at IJB-C scale; the array is modified).
    """
    # from a folder: a helper process parses the 15.66 M-line pair file while the features are pooled
    proto = root if isinstance(root, IJBProtocol) else load_ijb(root, target, one_to_n=False, pairs="background")
    tf, switches = build_template_features(
        proto,
        features,
        flip_features,
        flip_test=flip_test,
        keep_norm=keep_norm,
        detector_score=detector_score,
        template_features=template_features,
        overwrite_features=overwrite_features,
    )
    if np.array_equal(tf.ids, proto.template_ids):
        r1, r2 = proto.pair_rows()  # computed once, when the pairs were checked
    else:
        r1, r2 = tf.rows(proto.pair_t1), tf.rows(proto.pair_t2)
    scores = score_template_pairs(tf.features, r1, r2)
    empty = ~tf.features.any(1)
    labels = proto.pair_labels
    invalid_pairs = empty[r1] | empty[r2]
    with_empty = int(invalid_pairs.sum())
    pair_scores_as_misses(scores, labels, invalid_pairs)
    del r1, r2, invalid_pairs
    if return_scores:
        result_scores = scores.copy()
    # the ROC sorts the scores in place: no second 125 MB array at IJB-C scale
    fpr, tpr, _ = roc_curve(labels, scores, overwrite_scores=True)
    result: dict[str, Any] = {
        "protocol": f"{proto.target} 1:1",
        "switches": switches,
        "tar_at_far": tar_at_far_from_roc(fpr, tpr, tuple(fars)),
        "auc": auc(fpr, tpr),
        "num_images": proto.num_images,
        "num_templates": len(tf.ids),
        "num_pairs": int(labels.size),
        "num_genuine": int(labels.sum()),
        "num_impostor": int(labels.size - labels.sum()),
        "invalid_images": tf.invalid_images,
        "empty_templates": tf.empty_templates,
        "pairs_with_empty_template": with_empty,
        "roc": {"fpr": fpr, "tpr": tpr},
    }
    if return_scores:
        result["scores"] = result_scores
    return result


def _unique_first(tids: np.ndarray, sids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique template ids (ascending) with the subject id of their first row (reference rule)."""
    u, idx = np.unique(tids, return_index=True)
    return u, sids[idx]


def open_set_1toN(  # noqa: N802 (reference name)
    probe_feats: np.ndarray,
    probe_ids: np.ndarray,
    gallery_feats: np.ndarray,
    gallery_ids: np.ndarray,
    fpirs: Sequence[float] = DEFAULT_FPIRS,
    ranks: Sequence[int] = DEFAULT_RANKS,
) -> dict[str, Any]:
    """One gallery of ``ijb_evals.evaluation_1N``: TPIR at FPIR and rank-k counts of mated probes.

    A probe is mated when its subject is in the gallery; its mate is the first gallery entry of
    that subject. Mated: correct when the mate's score is strictly above every other subject's
    best score; TPIR(FPIR) = fraction of mated probes correct **and** above the threshold
    ``sort_desc(max score of each non-mated probe)[max(int(n_nonmated * fpir) - 1, 0)]``.
    Rank of the mate = 1 + number of other gallery entries scoring at least as high (pessimistic:
    ties rank the mate behind; the reference's ``argsort`` order is arbitrary there). Invalid
    (zero or non-finite) probe or gallery rows follow :mod:`fuseface.eval.invalid`: scored as misses.
    """
    gallery_ids = np.asarray(gallery_ids)
    probe_ids = np.asarray(probe_ids)
    with np.errstate(invalid="ignore", over="ignore"):
        sim = np.asarray(probe_feats, np.float64) @ np.asarray(gallery_feats, np.float64).T
    same = probe_ids[:, np.newaxis] == gallery_ids[np.newaxis, :]
    apply_to_scores(sim, same, ~invalid_rows(probe_feats), ~invalid_rows(gallery_feats))
    g_sorted = np.argsort(gallery_ids, kind="stable")
    pos = np.searchsorted(gallery_ids[g_sorted], probe_ids)
    pos = np.minimum(pos, len(gallery_ids) - 1)
    mated = gallery_ids[g_sorted][pos] == probe_ids
    mate = g_sorted[pos]  # first gallery entry of the subject (stable sort)
    mi = np.flatnonzero(mated)
    pos_sims = sim[mi, mate[mi]]
    other = sim[mi].copy()
    other[same[mi]] = -np.inf
    correct = pos_sims > other.max(1) if other.shape[1] else np.ones(mi.size, bool)
    ahead = sim[mi] >= pos_sims[:, np.newaxis]
    ahead[np.arange(mi.size), mate[mi]] = False  # the mate itself
    rank = 1 + ahead.sum(1)
    rank[~(pos_sims > -np.inf)] = MISS_RANK
    nonmated_max = np.sort(sim[~mated].max(1))[::-1] if (~mated).any() and sim.shape[1] else np.zeros(0)
    tpir: dict[float, float] = {}
    thresholds: dict[float, float] = {}
    for f in fpirs:
        if nonmated_max.size == 0 or mi.size == 0:
            tpir[float(f)], thresholds[float(f)] = float("nan"), float("nan")
            continue
        th = nonmated_max[max(int(nonmated_max.shape[0] * f) - 1, 0)]
        tpir[float(f)] = float(np.logical_and(correct, pos_sims > th).sum() / mi.size)
        thresholds[float(f)] = float(th)
    return {
        "tpir_at_fpir": tpir,
        "thresholds": thresholds,
        "rank_counts": {int(k): int((rank <= k).sum()) for k in ranks},
        "num_mated": int(mi.size),
        "num_nonmated": int((~mated).sum()),
        "mated_rank": rank,
    }


def legacy_pooled_1toN(  # noqa: N802 (reference name)
    probe_feats: np.ndarray,
    probe_ids: np.ndarray,
    gallery_feats: np.ndarray,
    gallery_ids: np.ndarray,
    fpirs: Sequence[float] = DEFAULT_FPIRS,
    ranks: Sequence[int] = DEFAULT_RANKS,
) -> dict[str, Any]:
    """``ijb_1n.py``: one pooled gallery in which every probe subject appears exactly once; rank-k
    and "TPIR" are divided by every probe; the threshold is the ``ceil(n_probe * fpir)``-th largest
    of all non-mate similarities and TPIR counts mates scoring above it (no rank-1 condition)."""
    gallery_ids = np.asarray(gallery_ids)
    probe_ids = np.asarray(probe_ids)
    uniq, counts = np.unique(gallery_ids, return_counts=True)
    g_sorted = np.argsort(gallery_ids, kind="stable")
    pos = np.minimum(np.searchsorted(gallery_ids[g_sorted], probe_ids), len(gallery_ids) - 1)
    found = gallery_ids[g_sorted][pos] == probe_ids
    cnt = dict(zip(uniq.tolist(), counts.tolist(), strict=True))
    if not found.all() or any(cnt[int(s)] != 1 for s in np.unique(probe_ids)):
        bad = probe_ids[~found][0] if not found.all() else next(s for s in probe_ids if cnt[int(s)] != 1)
        raise ValueError(f"legacy 1:N needs exactly one gallery template per probe subject (subject {bad})")
    mate = g_sorted[pos]
    n = probe_ids.size
    with np.errstate(invalid="ignore", over="ignore"):
        sim = np.asarray(probe_feats, np.float64) @ np.asarray(gallery_feats, np.float64).T
    rows = np.arange(n)
    is_mate = np.zeros(sim.shape, dtype=bool)
    is_mate[rows, mate] = True
    apply_to_scores(sim, is_mate, ~invalid_rows(probe_feats), ~invalid_rows(gallery_feats))
    pos_sims = sim[rows, mate].copy()
    rank = 1 + (~is_mate & (sim >= pos_sims[:, np.newaxis])).sum(1)  # pessimistic on ties
    rank[~(pos_sims > -np.inf)] = MISS_RANK
    neg = sim[~is_mate]
    tpir: dict[float, float] = {}
    thresholds: dict[float, float] = {}
    for f in fpirs:
        k = int(np.ceil(n * f))
        k = min(max(k, 1), neg.size)
        th = np.partition(neg, neg.size - k)[neg.size - k]
        tpir[float(f)] = float(np.sum(pos_sims > th) / n)
        thresholds[float(f)] = float(th)
    return {
        "tpir_at_fpir": tpir,
        "thresholds": thresholds,
        "cmc": {int(k): float((rank <= k).sum() / n) for k in ranks},
        "num_probes": int(n),
    }


def evaluate_1toN(  # noqa: N802 (public interface name)
    root: str | Path | IJBProtocol,
    target: str = "IJBC",
    features: np.ndarray | None = None,
    flip_features: np.ndarray | None = None,
    *,
    flip_test: bool = True,
    keep_norm: bool = True,
    detector_score: bool = True,
    legacy: bool = False,
    template_features: TemplateFeatures | tuple[np.ndarray, np.ndarray] | None = None,
    fpirs: Sequence[float] = DEFAULT_FPIRS,
    ranks: Sequence[int] = DEFAULT_RANKS,
    overwrite_features: bool = False,
) -> dict[str, Any]:
    """IJB 1:N open-set identification.

    Default: each gallery (G1, G2 / S1, S2) separately as ``ijb_evals.evaluation_1N``;
    ``tpir_at_fpir`` = mean over the two galleries; ``cmc`` = fraction of mated searches, pooled
    over both galleries, whose mate is within rank k; ``cmc_per_probe`` = the reference's figure
    ((hits G1 + hits G2) / number of probes; equal to ``cmc`` when each probe is mated once).
    ``legacy=True``: ``ijb_1n.py``'s pooled gallery (see :func:`legacy_pooled_1toN`).
    """
    proto = root if isinstance(root, IJBProtocol) else load_ijb(root, target, one_to_n=True, pairs=False)
    if not proto.galleries or proto.probes is None:
        raise ValueError(f"{proto.target}: the 1:N protocol files were not loaded")
    tf, switches = build_template_features(
        proto,
        features,
        flip_features,
        flip_test=flip_test,
        keep_norm=keep_norm,
        detector_score=detector_score,
        template_features=template_features,
        overwrite_features=overwrite_features,
    )
    p_t, p_s = _unique_first(*proto.probes)
    p_rows = tf.rows(p_t)
    probe_feats = tf.features[p_rows]
    empty = ~tf.features.any(1)
    result: dict[str, Any] = {
        "protocol": f"{proto.target} 1:N" + (" legacy pooled gallery" if legacy else ""),
        "switches": {**switches, "legacy": bool(legacy)},
        "num_probes": int(p_t.size),
        "invalid_images": tf.invalid_images,
        "empty_templates": tf.empty_templates,
        "empty_probe_templates": int(empty[p_rows].sum()),
    }
    if legacy:
        g_t = np.concatenate([g[0] for g in proto.galleries.values()])
        g_s = np.concatenate([g[1] for g in proto.galleries.values()])
        g_t, g_s = _unique_first(g_t, g_s)
        out = legacy_pooled_1toN(probe_feats, p_s, tf.features[tf.rows(g_t)], g_s, fpirs, ranks)
        result.update(
            tpir_at_fpir=out["tpir_at_fpir"], cmc=out["cmc"], thresholds=out["thresholds"], num_gallery=int(g_t.size)
        )
        return result
    per: dict[str, Any] = {}
    hits = dict.fromkeys(ranks, 0)
    mated_total = 0
    ranks_all = []
    for name, (tids, sids) in proto.galleries.items():
        g_t, g_s = _unique_first(tids, sids)
        g_rows = tf.rows(g_t)
        out = open_set_1toN(probe_feats, p_s, tf.features[g_rows], g_s, fpirs, ranks)
        out["empty_gallery_templates"] = int(empty[g_rows].sum())
        for k in ranks:
            hits[k] += out["rank_counts"][k]
        mated_total += out["num_mated"]
        ranks_all.append(out.pop("mated_rank"))
        per[name] = {**out, "num_gallery": int(g_t.size)}
    result["galleries"] = per
    result["tpir_at_fpir"] = {float(f): float(np.mean([per[g]["tpir_at_fpir"][float(f)] for g in per])) for f in fpirs}
    result["cmc"] = {int(k): (hits[k] / mated_total if mated_total else float("nan")) for k in ranks}
    result["cmc_per_probe"] = {int(k): hits[k] / p_t.size for k in ranks}
    result["num_mated_searches"] = int(mated_total)
    result["mated_ranks"] = np.concatenate(ranks_all) if ranks_all else np.zeros(0, int)
    return result
