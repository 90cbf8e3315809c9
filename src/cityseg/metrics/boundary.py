"""The boundary kernel: boundary pixels of each class and how many of them are matched, for boundary F1.

:func:`boundary_counts` states the definition, which the torch
:class:`~cityseg.metrics.evaluator.Evaluator` follows too; :func:`cityseg.metrics.formulas.boundary_f1`
turns the summed counts into F1.
"""

from __future__ import annotations

import numpy as np

from cityseg.labels import NUM_CLASSES
from cityseg.metrics.pairs import ID_BITS, PRED_MASK, pair_key, row_changes
from cityseg.metrics.tables import EVAL_IDS, IS_EVAL_ID

#: Default boundary tolerance in pixels (Euclidean distance) of boundary F1.
DEFAULT_BOUNDARY_TOLERANCE: int = 2


def disk_offsets(tolerance: int) -> list[tuple[int, int]]:
    """(dy, dx) offsets within Euclidean distance ``tolerance``, nearest first."""
    r = int(tolerance)
    offs = [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1) if dy * dy + dx * dx <= r * r]
    return sorted(offs, key=lambda o: (o[0] ** 2 + o[1] ** 2, o))


def boundary_counts(
    pred_ids: np.ndarray, gt_ids: np.ndarray, tolerance: int = DEFAULT_BOUNDARY_TOLERANCE
) -> np.ndarray:
    """Boundary pixels of each class in prediction and ground truth, and how many are matched.

    Definition (the same in :class:`cityseg.metrics.evaluator.Evaluator`): only pixels whose ground
    truth is a scored class take part, so void regions neither make nor hide a boundary. A pixel
    of map M (prediction or ground truth) is a boundary pixel of class c when M = c there, c is a
    scored class, and one of its 4 neighbours that takes part has another value in M. A
    predicted boundary pixel of class c is matched when a true boundary pixel of class c lies
    within ``tolerance`` pixels (Euclidean), and the other way round. Boundary precision of c is
    matched/all predicted boundary pixels, recall matched/all true ones.

    Args:
        pred_ids, gt_ids: (H, W) label-id maps, values <= MAX_LABEL_ID.
        tolerance: matching distance in pixels, >= 0.

    Returns:
        (4, NUM_CLASSES) int64: predicted boundary pixels, matched; true boundary pixels, matched.
    """
    gt_ids = np.asarray(gt_ids)
    key = pair_key(np.asarray(pred_ids), gt_ids)
    return boundary_from_key(key, row_changes(key), gt_ids.shape, tolerance)


def boundary_from_key(
    key: np.ndarray, changes: np.ndarray, shape: tuple[int, int], tolerance: int
) -> np.ndarray:
    """:func:`boundary_counts` from a frame's flat pair keys (:func:`~cityseg.metrics.pairs.pair_key`)
    and their :func:`~cityseg.metrics.pairs.row_changes`, which the confusion matrix reuses."""
    # Works on the few pixels next to a change of (gt, pred) only: a frame has ~2 M pixels but
    # some 10^4-10^5 boundary pixels, so full-image passes (a dilation or distance transform per
    # class) would cost 10-50x more. Neighbour pairs that differ come from the horizontal changes
    # already found for the confusion matrix plus one vertical comparison.
    h, w = shape
    # np.compress, not a[mask]: boolean indexing with an irregular mask is ~5x slower (branch misses)
    horizontal = np.compress((changes % w) != w - 1, changes)  # no pairs that wrap to the next row
    vertical = np.flatnonzero(key[w:] != key[:-w])
    # per direction: first pixel of each differing pair, its step to the second, and both pixels'
    # (pred, gt) label ids; only pairs whose two gt labels are scored classes take part
    pairs = []
    for first, step in ((horizontal, 1), (vertical, w)):
        k1, k2 = key[first], key[first + step]
        g1, g2 = k1 >> ID_BITS, k2 >> ID_BITS
        take = IS_EVAL_ID[g1] & IS_EVAL_ID[g2]
        p1, p2 = k1 & PRED_MASK, k2 & PRED_MASK
        pairs.append((np.compress(take, first), step, *(np.compress(take, a) for a in (p1, p2, g1, g2))))
    r = int(tolerance)
    padded_w = w + 2 * r
    sides = []
    for side in (0, 1):  # prediction, then ground truth
        ends = []
        for first, step, *labels in pairs:
            a, b = labels[2 * side], labels[2 * side + 1]
            differ = np.compress(a != b, first)
            ends += [differ, differ + step]
        pos = _sorted_unique(np.concatenate(ends))
        lab = key[pos] >> ID_BITS if side else key[pos] & PRED_MASK
        scored = IS_EVAL_ID[lab]
        pos, lab = np.compress(scored, pos), np.compress(scored, lab).astype(np.uint8)
        pos += (pos // w) * (2 * r) + r * (padded_w + 1)  # index into the image padded by r on every side
        # 0: no boundary, else label id + 1
        image = _buffer(f"boundary{side}", (h + 2 * r) * padded_w, np.uint8)
        image.fill(0)
        image[pos] = lab + 1
        sides.append((pos, lab, image))
    rings = _offset_rings(r, padded_w)
    out = np.zeros((4, NUM_CLASSES), dtype=np.int64)
    for row, ((pos, lab, own), (_, _, other)) in enumerate(((sides[0], sides[1]), (sides[1], sides[0]))):
        out[2 * row] = _count_by_class(lab)
        for ring in rings:  # nearest first; matched pixels drop out after each ring
            want = own[pos]
            miss = other[pos + ring[0]] != want
            for off in ring[1:]:
                miss &= other[pos + off] != want
            pos = np.compress(miss, pos)
            if pos.size == 0:
                break
        out[2 * row + 1] = out[2 * row] - _count_by_class(own[pos] - 1)  # all minus the unmatched
    return out


def _offset_rings(tolerance: int, width: int) -> list[list[int]]:
    """Flat offsets (in an image ``width`` wide) of :func:`disk_offsets`, grouped by distance."""
    rings: dict[int, list[int]] = {}
    for dy, dx in disk_offsets(tolerance):
        rings.setdefault(dy * dy + dx * dx, []).append(dy * width + dx)
    return list(rings.values())


def _sorted_unique(values: np.ndarray) -> np.ndarray:
    """np.unique for a concatenation of a few sorted runs: a stable sort merges runs in linear time."""
    values = np.sort(values, kind="stable")
    keep = np.empty(values.size, dtype=bool)
    keep[:1] = True
    np.not_equal(values[1:], values[:-1], out=keep[1:])
    return np.compress(keep, values)


_BUFFERS: dict[str, np.ndarray] = {}


def _buffer(name: str, size: int, dtype: type) -> np.ndarray:
    """A scratch array kept between frames of the same size.

    A fresh multi-megabyte array costs more in page faults (touched at scattered cells) than the
    sparse work done in it; reusing one per process avoids that. Contents are left over.
    """
    buf = _BUFFERS.get(name)
    if buf is None or buf.size != size or buf.dtype != dtype:
        buf = _BUFFERS[name] = np.empty(size, dtype=dtype)
    return buf


def _count_by_class(label_ids: np.ndarray) -> np.ndarray:
    """(NUM_CLASSES,) counts of each scored class's label id among ``label_ids``."""
    return np.bincount(label_ids, minlength=256)[EVAL_IDS]

