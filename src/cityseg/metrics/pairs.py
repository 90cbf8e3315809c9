"""(gt, pred) pair keys: the one uint16 per pixel that both counting kernels scan.

A pixel's ground-truth and predicted label ids are packed as ``gt << ID_BITS | pred``. Label maps
are piecewise constant, so the kernels work on where the key changes (:func:`row_changes`)
rather than on every pixel: the confusion matrix (:mod:`cityseg.metrics.counts`) counts runs of
equal keys, the boundary counts (:mod:`cityseg.metrics.boundary`) start from neighbours that differ.
"""

from __future__ import annotations

import numpy as np

from cityseg.labels import MAX_LABEL_ID

#: Label ids fit in this many bits: pair keys are ``gt << ID_BITS | pred``.
ID_BITS = MAX_LABEL_ID.bit_length()
#: The prediction's bits of a pair key.
PRED_MASK = (1 << ID_BITS) - 1


def pair_key(pred_ids: np.ndarray, gt_ids: np.ndarray) -> np.ndarray:
    """Flat uint16 ``gt << bits | pred`` of two label-id maps (values already checked <= MAX_LABEL_ID)."""
    key = np.left_shift(gt_ids, ID_BITS, dtype=np.uint16)
    key |= pred_ids
    return key.ravel()


def row_changes(key: np.ndarray) -> np.ndarray:
    """Flat indices i where key[i] != key[i + 1]: run ends and horizontal neighbours that differ."""
    return np.flatnonzero(key[1:] != key[:-1])
