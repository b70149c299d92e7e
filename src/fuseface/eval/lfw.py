"""The LFW View-2 protocol on features: 10-fold verification of the pairs of ``pairs.txt``.

The pairs and the distinct images they name are read in :mod:`fuseface.data.lfw`
(``read_pairs``, ``pair_image_index``); this module takes the resulting arrays.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fuseface.eval.invalid import invalid_rows
from fuseface.eval.verification import evaluate


def lfw_pairs_protocol(
    features: np.ndarray, idx1: np.ndarray, idx2: np.ndarray, issame: np.ndarray, nfolds: int = 10
) -> dict[str, Any]:
    """10-fold verification (:func:`fuseface.eval.verification.evaluate`) of image features
    ``features`` (one row per distinct image) over the pairs ``(idx1[k], idx2[k])``; the 6,000 pairs
    in file order give the 10 contiguous folds of 600. Pairs with an invalid feature are scored as
    misses and counted (``invalid_pairs``, ``invalid_images``)."""
    features = np.asarray(features)
    result = evaluate(features[idx1], features[idx2], issame, nfolds=nfolds)
    result["invalid_images"] = int(invalid_rows(features).sum())
    return result
