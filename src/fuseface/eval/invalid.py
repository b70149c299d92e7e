"""One rule for invalid features, shared by every protocol (docs/evaluation.md, "Invalid features").

* A feature row is **invalid** when it holds a NaN/inf or is all zeros (zero norm): a failed
  detection, a broken image, an overflow. A template pooled from no valid image is a zero row, so
  it is invalid by the same test.
* Invalid rows are never dropped from a denominator. They are counted, and scored as a **miss**:

  - verification pair with an invalid side: a genuine pair is rejected and an impostor pair
    accepted at every threshold (score ``-inf`` / ``+inf``, or distance ``+inf`` / ``-inf``);
  - identification: an invalid gallery entry scores ``-inf`` against every probe (it can never be
    retrieved, so a search for it misses and it raises no false alarm); an invalid probe scores
    ``-inf`` against its mates and ``+inf`` against everyone else (a mated search misses at every
    rank, a non-mated search is a false alarm at every threshold).
* Ranks are **pessimistic**: a mate shares its place with nothing, so non-mates scoring *equal* to
  the best mate rank ahead of it (``rank = 1 + #(non-mates with score >= best mate)``). A probe
  without a finite mate score gets :data:`MISS_RANK`, beyond every rank. The official scripts sort
  with ``argsort`` (order among ties arbitrary) or count strictly greater scores; without ties all
  agree, which the official-parity tests check.
"""

from __future__ import annotations

import numpy as np

ROW_CHUNK = 8192  # rows per block: 16 MiB of 512-d float32
MISS_RANK = np.iinfo(np.int64).max


def invalid_rows(features: np.ndarray) -> np.ndarray:
    """Boolean mask of rows that contain NaN/inf or are all zeros."""
    features = np.asarray(features)
    if features.ndim != 2:
        raise ValueError(f"expected a 2-D feature array, got shape {features.shape}")
    bad = np.zeros(features.shape[0], dtype=bool)
    for a in range(0, features.shape[0], ROW_CHUNK):
        block = features[a : a + ROW_CHUNK]
        bad[a : a + ROW_CHUNK] = ~np.isfinite(block).all(1) | ~block.any(1)
    return bad


def apply_to_scores(scores: np.ndarray, mates: np.ndarray, valid_probes: np.ndarray, valid_gallery: np.ndarray) -> None:
    """Overwrite, in place, the scores that involve an invalid probe or gallery row (module rule).

    ``scores`` (P, G) float; ``mates`` (P, G) bool (same subject); ``valid_*`` boolean masks."""
    bad_p = ~np.asarray(valid_probes, dtype=bool)
    if bad_p.any():
        scores[bad_p] = np.where(mates[bad_p], -np.inf, np.inf)
    bad_g = ~np.asarray(valid_gallery, dtype=bool)
    if bad_g.any():
        scores[:, bad_g] = -np.inf


def pessimistic_ranks(scores: np.ndarray, mates: np.ndarray) -> np.ndarray:
    """Rank of each probe's best mate: ``1 + #(non-mates scoring >= it)``; :data:`MISS_RANK` when the
    probe has no mate with a finite score (or no mate at all)."""
    best = np.where(mates, scores, -np.inf).max(1) if scores.shape[1] else np.full(len(scores), -np.inf)
    ranks = 1 + (~mates & (scores >= best[:, np.newaxis])).sum(1)
    ranks[~(best > -np.inf)] = MISS_RANK
    return ranks.astype(np.int64)


def pair_scores_as_misses(scores: np.ndarray, labels: np.ndarray, invalid_pairs: np.ndarray) -> np.ndarray:
    """Verification scores with every invalid pair scored as a miss: ``-inf`` for a genuine pair,
    ``+inf`` for an impostor pair (modifies and returns ``scores``)."""
    if invalid_pairs.any():
        scores[invalid_pairs] = np.where(np.asarray(labels, dtype=bool)[invalid_pairs], -np.inf, np.inf)
    return scores
