"""From image features to template features, exactly as the insightface IJB scripts do it.

Reference: insightface ``arcface_torch/eval_ijbc.py`` and ``_evaluation_/ijb/ijb_evals.py``
(``image2template_feature``; identical in AdaFace, CAFace, FaceX-Zoo, TFace; PROTOCOLS.md B §2.2).

Per image (:func:`image_features`), in float32 like the reference:

* ``flip_test``: ``f + f_flipped`` (only when flipped features are given);
* ``keep_norm=False``: ``f / sqrt(sum(f ** 2))``; ``keep_norm=True`` keeps the raw norm (the
  reference's ``use_norm_score=True`` in ``eval_ijbc.py``, the *inverted* flag of ``ijb_evals.py``);
* ``detector_score``: ``f * faceness`` (last column of ``*_name_5pts_score.txt``).

Per template (:func:`pool_templates`): media feature = mean of the template's images of that media
(a single image is used as is), template feature = sum of its media features in ascending media id
order (float32), then cast to float64 and L2-normalised. The loops of the reference are replaced by
one stable sort of the images by (template, media) and ``np.add.reduceat``, which adds rows in the
same order as the reference, so the template features are equal bit for bit.

Bad features (our rule, :mod:`fuseface.eval.invalid`; the reference has none): an image whose
feature row contains NaN/inf or is all zeros is **dropped from its template** and counted; a
template left without any valid image gets a zero vector, which is itself invalid, so its pairs
and searches are scored as misses; both counts are reported in every result.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fuseface.data.ijb import index_in_sorted
from fuseface.eval.invalid import invalid_rows
from fuseface.eval.verification import l2_normalize

ROW_CHUNK = 8192  # rows per block of the per-image passes: 16 MiB of 512-d float32


def image_features(
    features: np.ndarray,
    flip_features: np.ndarray | None = None,
    faceness: np.ndarray | None = None,
    *,
    flip_test: bool = True,
    keep_norm: bool = True,
    detector_score: bool = True,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Per-image input features of the template pooling (float32, computed in row chunks).

    ``out``: where to write them (may be ``features`` itself when it is float32 and expendable,
    which saves a copy of the whole feature matrix)."""
    n = features.shape[0]
    if flip_features is not None and flip_features.shape != features.shape:
        raise ValueError(f"flip features {flip_features.shape} do not match features {features.shape}")
    if detector_score and (faceness is None or faceness.shape[0] != n):
        raise ValueError("detector_score needs one faceness score per image")
    if out is None:
        out = np.empty(features.shape, dtype=np.float32)
    w = np.asarray(faceness, dtype=np.float32)[:, np.newaxis] if detector_score else None
    in_place = out is features
    for a in range(0, n, ROW_CHUNK):
        b = min(n, a + ROW_CHUNK)
        dst = out[a:b]
        # the same float32 operations as the reference, written into ``dst`` (no temporaries)
        if features.dtype == np.float32:
            f = features[a:b]
        else:
            f = np.asarray(features[a:b], dtype=np.float32)
        if flip_test and flip_features is not None:
            g = flip_features[a:b]
            np.add(f, g if g.dtype == np.float32 else np.asarray(g, dtype=np.float32), out=dst)
        elif not in_place:
            np.copyto(dst, f)
        if not keep_norm:
            with np.errstate(invalid="ignore", divide="ignore"):
                np.divide(dst, np.sqrt(np.sum(dst**2, -1, keepdims=True)), out=dst)
        if w is not None:
            np.multiply(dst, w[a:b], out=dst)
    return out


@dataclass
class TemplateFeatures:
    """One L2-normalised float64 row per template id (``ids`` ascending)."""

    ids: np.ndarray
    features: np.ndarray
    invalid_images: int = 0
    empty_templates: int = 0

    def rows(self, template_ids: np.ndarray) -> np.ndarray:
        """Row index of each template id (raises KeyError naming the first unknown id)."""
        idx = index_in_sorted(self.ids, template_ids)
        if idx.size and idx.min() < 0:
            raise KeyError(f"template {np.asarray(template_ids)[idx < 0][0]} has no feature")
        return idx


def segment_sums_sequential(x: np.ndarray, rows: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Sum of ``x[rows[starts[g] : starts[g] + lengths[g]]]`` for every segment g, adding the rows
    one after another in that order (as numpy's axis-0 reduction in the reference does), in x's
    dtype. The segments must tile ``rows`` (``starts`` ascending, no gaps).

    Done as one sparse product ``S @ x`` with ``S`` the (segments x len(x)) CSR matrix of ones whose
    row g lists ``rows[starts[g] : starts[g] + lengths[g]]``: scipy's CSR-times-dense kernel adds
    ``1 * x[j]`` to a zero row in index order, so every sum is the same sequential float sum
    (``1 * v`` is exact), in one pass over the gathered rows and without temporaries. Equality with
    the reference's sums is checked in ``tests/test_ijb.py``.
    """
    from scipy.sparse import csr_matrix

    rows = np.asarray(rows)
    indptr = np.r_[np.asarray(starts, dtype=np.int64), int(np.sum(lengths))]
    if rows.size != indptr[-1] or (indptr.size > 1 and np.any(np.diff(indptr) != lengths)):
        raise ValueError("segments must tile the row list")
    ones = np.ones(rows.size, dtype=x.dtype)
    s = csr_matrix((ones, rows, indptr), shape=(len(starts), x.shape[0]))
    return np.asarray(s @ np.ascontiguousarray(x))


def pool_templates(
    img_feats: np.ndarray, templates: np.ndarray, medias: np.ndarray, valid: np.ndarray | None = None
) -> TemplateFeatures:
    """insightface media-mean / template-sum / L2 pooling of every template (see module docstring)."""
    templates = np.asarray(templates, dtype=np.int64)
    medias = np.asarray(medias, dtype=np.int64)
    ids = np.unique(templates)
    if valid is None:
        valid = ~invalid_rows(img_feats)
    order = np.lexsort((medias, templates))  # stable: images of one media keep their file order
    order = order[valid[order]]
    d = img_feats.shape[1]
    tsum = np.zeros((len(ids), d), dtype=np.float32)
    has = np.zeros(len(ids), dtype=bool)
    if order.size:
        t_sorted, m_sorted = templates[order], medias[order]
        mstart = np.flatnonzero(np.r_[True, (t_sorted[1:] != t_sorted[:-1]) | (m_sorted[1:] != m_sorted[:-1])])
        mlen = np.diff(np.r_[mstart, order.size])
        media = segment_sums_sequential(img_feats, order, mstart, mlen).astype(np.float32, copy=False)
        multi = mlen > 1
        media[multi] /= mlen[multi, np.newaxis].astype(np.float32)
        mt = t_sorted[mstart]
        tstart = np.flatnonzero(np.r_[True, mt[1:] != mt[:-1]])
        tlen = np.diff(np.r_[tstart, mt.size])
        rows = np.searchsorted(ids, mt[tstart])
        tsum[rows] = segment_sums_sequential(media, np.arange(media.shape[0]), tstart, tlen)
        has[rows] = True
    feats = l2_normalize(tsum)
    return TemplateFeatures(ids, feats, int((~valid).sum()), int((~has).sum()))


def fuse_templates(
    raw_features: np.ndarray,
    templates: np.ndarray,
    method: str,
    *,
    styles: np.ndarray | None = None,
    scores: np.ndarray | None = None,
    chunk_size: int | None = None,
    valid: np.ndarray | None = None,
    model: object | None = None,
) -> TemplateFeatures:
    """One row per template from a set-fusion method (``fuseface.nn.fusion.fuse_features``) fed
    with all valid images of the template (no media pooling, as CAFace's IJB script does)."""
    from fuseface.nn.fusion import fuse_features

    templates = np.asarray(templates, dtype=np.int64)
    if valid is None:
        valid = ~invalid_rows(raw_features)
    ids = np.unique(templates)
    order = np.argsort(templates, kind="stable")
    starts = np.searchsorted(templates[order], ids)
    ends = np.r_[starts[1:], len(order)]
    out = np.zeros((len(ids), raw_features.shape[1]), dtype=np.float64)
    empty = 0
    for k, (a, b) in enumerate(zip(starts, ends, strict=True)):
        idx = order[a:b]
        idx = idx[valid[idx]]
        if idx.size == 0:
            empty += 1
            continue
        kw: dict = {}
        if model is not None:
            kw["model"] = model
        if styles is not None:
            kw["styles"] = styles[idx]
        if scores is not None:
            kw["scores"] = scores[idx]
        out[k] = np.asarray(fuse_features(raw_features[idx], method=method, chunk_size=chunk_size, **kw))
    return TemplateFeatures(ids, l2_normalize(out), int((~valid).sum()), empty)


def fuse_row_sets(
    features: np.ndarray,
    row_sets: list[np.ndarray],
    method: str = "norm_sum",
    *,
    styles: np.ndarray | None = None,
    chunk_size: int | None = None,
    model: object | None = None,
) -> tuple[np.ndarray, int]:
    """One L2-normalised template per set of feature rows, as the IJB-S evaluation builds them:
    ``(templates (len(row_sets), D) float64, number of empty templates)``.

    Invalid rows (:func:`fuseface.eval.invalid.invalid_rows`) are dropped from their set first; a
    set left empty gives a zero template (invalid, so its searches are misses) and is counted.
    ``method="norm_sum"`` sums the raw features (float64), any other name is a set-fusion method
    (:func:`fuseface.nn.fusion.fuse_features`, fed ``styles`` rows for CAFace, ``model`` a fusion
    module or None).
    """
    from fuseface.nn.fusion import fuse_features

    bad = invalid_rows(features)
    out = np.zeros((len(row_sets), features.shape[1]))
    empty = 0
    for k, rows in enumerate(row_sets):
        rows = rows[~bad[rows]] if len(rows) else rows
        if len(rows) == 0:
            empty += 1
        elif method == "norm_sum":
            out[k] = features[rows].astype(np.float64).sum(0)
        else:
            kw = {"styles": styles[rows]} if styles is not None else {}
            out[k] = fuse_features(features[rows], method=method, chunk_size=chunk_size, model=model, **kw)
    return l2_normalize(out), empty
