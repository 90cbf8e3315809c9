"""The counting kernels: everything the scores need, as counts that add up over frames (and over DDP processes).

* the **confusion matrix** in label-id space, ``(NUM_IDS, NUM_IDS)`` int64, rows ground truth,
  columns prediction (:func:`id_confusion`). It is the official script's ``confMatrix``. Label ids
  rather than train ids, because a label-id prediction may name a void label (``0`` unlabeled,
  ``9`` parking, ``29`` caravan ...): the official script counts such a pixel as a false negative
  of the true class, and counts caravan/trailer predictions as vehicle in the category iIoU. A
  train-id model's output is mapped to label ids (:data:`labels.TRAIN_ID_TO_ID`) before counting;
  :func:`confusion` counts trainId maps.
* the **instance counts** for iIoU (:func:`instance_counts`): per class and per instance category,
  the true- and false-negative pixels of every ground-truth instance, each weighted by the
  official average class size over the instance's size (``evalPixelLevelSemanticLabeling.evaluatePair``);
* the **boundary counts** for boundary F1 (:func:`cityseg.metrics.boundary.boundary_counts`).

:func:`frame_counts` gathers all three for one frame into a :class:`Counts`; :meth:`Counts.add` sums
frames. NumPy only; the torch :class:`~cityseg.metrics.evaluator.Evaluator` counts the same on a device.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cityseg.labels import CATEGORIES, NUM_CLASSES
from cityseg.metrics.boundary import DEFAULT_BOUNDARY_TOLERANCE, boundary_from_key
from cityseg.metrics.formulas import scores
from cityseg.metrics.pairs import ID_BITS, pair_key, row_changes
from cityseg.metrics.tables import (
    AVG_SIZE_OF_ID,
    GT_INSTANCE_CATEGORY,
    INSTANCE_OFFSET,
    NUM_IDS,
    PRED_INSTANCE_CATEGORY,
    TRAIN_ID_OF_ID,
    ScoreTable,
)


@dataclass
class Counts:
    """Everything the scores need, summed over frames.

    Attributes:
        conf: (NUM_IDS, NUM_IDS) int64 confusion matrix, rows gt label id, columns predicted label id.
        instances: (2, NUM_CLASSES + len(CATEGORIES)) float64 weighted instance true positives
            (row 0) and false negatives (row 1): classes by trainId, then categories; None when
            no instance maps were given (iIoU is then NaN).
        boundary: (4, NUM_CLASSES) int64 per class: predicted boundary pixels, of them matched,
            true boundary pixels, of them matched; None when boundary F1 was not computed.
        boundary_tolerance: the matching distance in pixels that ``boundary`` was counted with.
        table: what the counts score (None: :data:`~cityseg.metrics.tables.CITYSCAPES`, whose axes are label ids).
    """

    conf: np.ndarray = field(default_factory=lambda: np.zeros((NUM_IDS, NUM_IDS), dtype=np.int64))
    instances: np.ndarray | None = None
    boundary: np.ndarray | None = None
    boundary_tolerance: int | None = None
    table: ScoreTable | None = None

    def add(self, other: Counts) -> Counts:
        """Add ``other`` into ``self`` (in place) and return ``self``."""
        if other.boundary is not None:
            if self.boundary is not None and self.boundary_tolerance != other.boundary_tolerance:
                raise ValueError(f"boundary counts at {self.boundary_tolerance} and {other.boundary_tolerance} px "
                                 "cannot be added")
            self.boundary_tolerance = other.boundary_tolerance
        self.conf += other.conf
        self.instances = _add_optional(self.instances, other.instances)
        self.boundary = _add_optional(self.boundary, other.boundary)
        return self

    def scores(self) -> dict[str, Any]:
        return scores(self.conf, self.instances, self.boundary, self.table)


def _add_optional(a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray | None:
    if b is None:
        return a
    return b.copy() if a is None else a + b


def confusion(pred: np.ndarray, gt: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """(C, C) int64 confusion matrix of trainId maps: rows gt, columns pred.

    Pixels whose ground truth or prediction lies outside ``[0, num_classes)`` (the ignore value)
    are skipped. Scores of label-id files need :func:`id_confusion`, which also counts valid
    pixels predicted as void.
    """
    pred = np.asarray(pred).ravel().astype(np.intp)
    gt = np.asarray(gt).ravel().astype(np.intp)
    keep = (gt >= 0) & (gt < num_classes) & (pred >= 0) & (pred < num_classes)
    counts = np.bincount(gt[keep] * num_classes + pred[keep], minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).astype(np.int64)


def id_confusion(pred_ids: np.ndarray, gt_ids: np.ndarray) -> np.ndarray:
    """(NUM_IDS, NUM_IDS) int64 confusion matrix of two (H, W) label-id maps (values <= MAX_LABEL_ID)."""
    key = pair_key(np.asarray(pred_ids), np.asarray(gt_ids))
    return _confusion_from_key(key, row_changes(key))


def _confusion_from_key(key: np.ndarray, changes: np.ndarray) -> np.ndarray:
    # Label maps are piecewise constant: count runs of equal (gt, pred) pairs, weighted by their
    # length, instead of every pixel. A bincount over 2 M pixels costs ~3x as much, because
    # consecutive equal keys serialise on one counter.
    starts = np.empty(changes.size + 1, dtype=np.intp)
    starts[0] = 0
    starts[1:] = changes + 1
    lengths = np.diff(starts, append=key.size)
    counts = np.bincount(key[starts], weights=lengths, minlength=1 << (2 * ID_BITS))
    counts = counts.astype(np.int64).reshape(1 << ID_BITS, 1 << ID_BITS)  # float64 is exact below 2**53
    return np.ascontiguousarray(counts[:NUM_IDS, :NUM_IDS])


def instance_counts(pred_ids: np.ndarray, instance_ids: np.ndarray) -> np.ndarray:
    """Weighted instance true positives and false negatives of one frame, as the official script.

    Args:
        pred_ids: (H, W) integer predicted label ids.
        instance_ids: (H, W) integer official instanceIds (``label_id * 1000 + index`` on instance
            pixels, else the label id).

    Returns:
        (2, NUM_CLASSES + len(CATEGORIES)) float64, see :attr:`Counts.instances`. An instance of
        a class counts ``tp`` = its pixels predicted as that class and ``fn`` = the rest, each
        times ``AVG_CLASS_SIZE[class] / instance size``; for its category, ``tp`` is the pixels
        predicted as any label of the category (void ones included, as the official script does).
        Instances of void classes (caravan, trailer) and of classes without instances are skipped.

    Raises:
        ValueError: an instance id names no label id (>= ``NUM_IDS * INSTANCE_OFFSET``).
    """
    inst = np.asarray(instance_ids).reshape(-1)  # a view also for the strided grey channel of a decoder
    where = np.flatnonzero(inst > INSTANCE_OFFSET)  # the official script's ``instanceNp > 1000``
    out = np.zeros((2, NUM_CLASSES + len(CATEGORIES)))
    if where.size == 0:
        return out
    # Runs of equal (instance, prediction) along the selected pixels, as in _confusion_from_key.
    key = inst[where].astype(np.uint32)
    top = int(key.max())
    if top >= NUM_IDS * INSTANCE_OFFSET:  # also keeps room for the prediction's bits in the key
        raise ValueError(f"instance id {top} is not label_id * {INSTANCE_OFFSET} + index of a Cityscapes label id")
    key <<= ID_BITS
    key |= np.asarray(pred_ids).ravel()[where]
    starts = np.flatnonzero(np.concatenate([[True], key[1:] != key[:-1]]))
    lengths = np.diff(starts, append=key.size).astype(np.float64)
    key = key[starts]
    ids = (key >> ID_BITS).astype(np.intp)
    pred = (key & ((1 << ID_BITS) - 1)).astype(np.intp)
    label = ids // INSTANCE_OFFSET
    size = np.bincount(ids, weights=lengths)
    hit = np.bincount(ids, weights=lengths * (pred == label), minlength=size.size)
    cat_hit = np.bincount(ids, weights=lengths * (PRED_INSTANCE_CATEGORY[pred] == GT_INSTANCE_CATEGORY[label]), minlength=size.size)
    inst_id = np.flatnonzero(size)
    inst_label = inst_id // INSTANCE_OFFSET
    weight = AVG_SIZE_OF_ID[inst_label] / size[inst_id]
    scored = ~np.isnan(weight)
    inst_id, inst_label, weight = inst_id[scored], inst_label[scored], weight[scored]
    n, tp, cat_tp = size[inst_id], hit[inst_id], cat_hit[inst_id]
    cls = TRAIN_ID_OF_ID[inst_label]
    out[0, :NUM_CLASSES] = np.bincount(cls, weights=tp * weight, minlength=NUM_CLASSES)
    out[1, :NUM_CLASSES] = np.bincount(cls, weights=(n - tp) * weight, minlength=NUM_CLASSES)
    cat = GT_INSTANCE_CATEGORY[inst_label]
    in_cat = cat >= 0
    k = len(CATEGORIES)
    out[0, NUM_CLASSES:] = np.bincount(cat[in_cat], weights=(cat_tp * weight)[in_cat], minlength=k)
    out[1, NUM_CLASSES:] = np.bincount(cat[in_cat], weights=((n - cat_tp) * weight)[in_cat], minlength=k)
    return out


def frame_counts(
    pred_ids: np.ndarray,
    gt_ids: np.ndarray,
    instance_ids: np.ndarray | None = None,
    boundary_tolerance: int | None = DEFAULT_BOUNDARY_TOLERANCE,
) -> Counts:
    """All counts of one frame.

    Args:
        pred_ids: (H, W) integer predicted label ids, values <= MAX_LABEL_ID.
        gt_ids: (H, W) integer ground-truth label ids, values <= MAX_LABEL_ID.
        instance_ids: (H, W) official instanceIds, or None to skip iIoU.
        boundary_tolerance: pixels for boundary F1, or None to skip it.
    """
    pred_ids = np.asarray(pred_ids, dtype=np.uint8)
    gt_ids = np.asarray(gt_ids, dtype=np.uint8)
    key = pair_key(pred_ids, gt_ids)
    changes = row_changes(key)
    counts = Counts(conf=_confusion_from_key(key, changes))
    if instance_ids is not None:
        counts.instances = instance_counts(pred_ids, instance_ids)
    if boundary_tolerance is not None:
        counts.boundary = boundary_from_key(key, changes, gt_ids.shape, boundary_tolerance)
        counts.boundary_tolerance = int(boundary_tolerance)
    return counts

