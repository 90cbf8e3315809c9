"""Cityscapes scores the way the official evaluator computes them, plus Dice and boundary F1.

NumPy only (no torch): ``cityseg evaluate --pred-dir`` imports this in every worker process.

Everything starts from counts that add up over frames (and over DDP processes):

* the **confusion matrix** in label-id space, ``(NUM_IDS, NUM_IDS)`` int64, rows ground truth,
  columns prediction. It is the official script's ``confMatrix``. Label ids rather than train
  ids, because a label-id prediction may name a void label (``0`` unlabeled, ``9`` parking,
  ``29`` caravan ...): the official script counts such a pixel as a false negative of the true
  class, and counts caravan/trailer predictions as vehicle in the category iIoU. A train-id
  model's output is mapped to label ids (:data:`labels.TRAIN_ID_TO_ID`) before counting.
* the **instance counts** for iIoU: per class and per instance category, the true- and
  false-negative pixels of every ground-truth instance, each weighted by the official average
  class size over the instance's size (``evalPixelLevelSemanticLabeling.evaluatePair``);
* the **boundary counts** for boundary F1 (defined in :func:`boundary_counts`).

:func:`scores` turns counts into the numbers of the ``cityseg evaluate`` JSON. Its IoU, iIoU,
category IoU/iIoU and their averages follow ``cityscapesscripts.evaluation.
evalPixelLevelSemanticLabeling`` formula by formula (tested against it): a pixel whose ground
truth is void is never counted; a score whose denominator is zero (a class absent from both
ground truth and prediction) is NaN and left out of every average.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cityseg.labels import (
    CATEGORIES,
    CLASS_NAMES,
    LABEL_BY_NAME,
    LABELS,
    MAX_LABEL_ID,
    NUM_CLASSES,
    TRAIN_ID_TO_ID,
    TRAIN_LABELS,
    TRAIN_PALETTE,
)

#: Size of the label-id axes of the confusion matrix (ids 0..MAX_LABEL_ID).
NUM_IDS: int = MAX_LABEL_ID + 1
#: Label id of each train class, indexed by trainId: the rows/columns that are scored.
EVAL_IDS: np.ndarray = TRAIN_ID_TO_ID[:NUM_CLASSES].astype(np.intp)
#: Official instanceIds encoding: ``label_id * INSTANCE_OFFSET + index``; smaller values are
#: plain label ids of pixels that belong to no instance.
INSTANCE_OFFSET: int = 1000

# Average pixel size of an instance of each class over the Cityscapes training set, copied from
# cityscapesscripts/evaluation/evalPixelLevelSemanticLabeling.py (``args.avgClassSize``,
# cityscapesScripts 2.2/2.3). iIoU weighs every instance by avg_size / its size so that small
# instances count as much as big ones.
AVG_CLASS_SIZE: dict[str, float] = {
    "bicycle": 4672.3249222261,
    "caravan": 36771.8241758242,
    "motorcycle": 6298.7200839748,
    "rider": 3930.4788056518,
    "bus": 35732.1511111111,
    "train": 67583.7075812274,
    "car": 12794.0202738185,
    "person": 3462.4756337644,
    "truck": 27855.1264367816,
    "trailer": 16926.9763313609,
}

#: Default boundary tolerance in pixels (Euclidean distance) of boundary F1.
DEFAULT_BOUNDARY_TOLERANCE: int = 2

# --- lookup tables derived from the label table -----------------------------------------------

_ID_BITS = MAX_LABEL_ID.bit_length()  # label ids fit in this many bits: pair keys are gt << bits | pred
_PRED_MASK = (1 << _ID_BITS) - 1

#: label id (0-255) -> scored (a train class). This and the tables below are public for the torch
#: Evaluator (cityseg.engine.evaluator), which counts with them on the device.
IS_EVAL_ID = np.zeros(256, dtype=bool)
IS_EVAL_ID[EVAL_IDS] = True

#: label id (0-255) -> trainId, -1 for void.
TRAIN_ID_OF_ID = np.full(256, -1, dtype=np.intp)
TRAIN_ID_OF_ID[EVAL_IDS] = np.arange(NUM_CLASSES)


#: Per category (CATEGORIES order): label ids of its scored classes (category IoU merges these).
CATEGORY_IDS: tuple[tuple[int, ...], ...] = tuple(
    tuple(lb.id for lb in TRAIN_LABELS if lb.category == c) for c in CATEGORIES
)


def _instance_category_ids(category: str) -> tuple[int, ...] | None:
    # The official script gives a category an iIoU only when every label in it (id >= 0) has
    # instances (human, vehicle); its ids then include void ones (caravan, trailer).
    members = [lb for lb in LABELS if lb.category == category and lb.id >= 0]
    if not all(lb.has_instances for lb in members):
        return None
    return tuple(lb.id for lb in members)


#: Per category: all label ids of an instance category, or None for categories without iIoU.
INSTANCE_CATEGORY_IDS: tuple[tuple[int, ...] | None, ...] = tuple(_instance_category_ids(c) for c in CATEGORIES)

#: trainIds of the classes that have instances (iIoU is defined for them only).
INSTANCE_CLASSES: tuple[int, ...] = tuple(lb.train_id for lb in TRAIN_LABELS if lb.has_instances)

#: label id -> instance weight numerator (official average size), NaN for labels not scored by iIoU.
AVG_SIZE_OF_ID = np.full(NUM_IDS, np.nan)
for _t in INSTANCE_CLASSES:
    AVG_SIZE_OF_ID[EVAL_IDS[_t]] = AVG_CLASS_SIZE[CLASS_NAMES[_t]]
#: label id -> index into CATEGORIES of its instance category, for predictions (-1: none) and
#: ground-truth instances (-2: none, so that two "none"s never match).
PRED_INSTANCE_CATEGORY = np.full(256, -1, dtype=np.intp)
GT_INSTANCE_CATEGORY = np.full(NUM_IDS, -2, dtype=np.intp)
for _k, _ids in enumerate(INSTANCE_CATEGORY_IDS):
    if _ids is not None:
        PRED_INSTANCE_CATEGORY[list(_ids)] = _k
        GT_INSTANCE_CATEGORY[[i for i in _ids if IS_EVAL_ID[i]]] = _k
assert all(LABEL_BY_NAME[name].has_instances for name in AVG_CLASS_SIZE)


@dataclass(frozen=True, eq=False)
class ScoreTable:
    """What is scored and how it is named: the official Cityscapes table (:data:`CITYSCAPES`:
    label-id axes, categories, iIoU), or a dataset's own (:func:`table_for`: train-id axes plus one
    void id, categories where its description names them, no iIoU).

    Attributes:
        names: class names by train id.
        eval_ids: (K,) the id of each train class on the confusion matrix's axes.
        num_ids: size of the confusion matrix's axes.
        void_id: the id a void or ignored prediction is counted as.
        categories: category names; ``category_ids``: per category, the ids of its classes.
        official: the Cityscapes table (instance scores and the official parity apply).
        palette: (K, 3) uint8 class colours, for plots.
    """

    names: tuple[str, ...]
    eval_ids: np.ndarray
    num_ids: int
    void_id: int
    categories: tuple[str, ...] = ()
    category_ids: tuple[tuple[int, ...], ...] = ()
    official: bool = False
    palette: np.ndarray | None = None

    @property
    def num_classes(self) -> int:
        return len(self.names)

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.names


#: The official Cityscapes table: every score of the official evaluator.
CITYSCAPES = ScoreTable(tuple(CLASS_NAMES), EVAL_IDS, NUM_IDS, 0, tuple(CATEGORIES), CATEGORY_IDS, official=True,
                        palette=TRAIN_PALETTE[:NUM_CLASSES])


def table_for(spec: Any) -> ScoreTable:
    """The :class:`ScoreTable` of a :class:`cityseg.datasets.DatasetSpec`: :data:`CITYSCAPES` for a
    dataset with the Cityscapes classes and ids (cityscapes, kitti), else train-id axes with the
    void id K (K classes) and the categories its description names."""
    from cityseg.datasets import is_cityscapes_table

    if spec is None or is_cityscapes_table(spec):
        return CITYSCAPES
    k = spec.num_classes
    cats = tuple(spec.categories)
    members = tuple(tuple(i for i, c in enumerate(spec.classes) if c.category == cat) for cat in cats)
    return ScoreTable(tuple(spec.class_names), np.arange(k, dtype=np.intp), k + 1, k, cats, members,
                      palette=spec.palette)


# --- counts -----------------------------------------------------------------------------------


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
        table: what the counts score (None: :data:`CITYSCAPES`, whose axes are label ids).
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


def _pair_key(pred_ids: np.ndarray, gt_ids: np.ndarray) -> np.ndarray:
    """Flat uint16 ``gt << bits | pred`` of two label-id maps (values already checked <= MAX_LABEL_ID)."""
    key = np.left_shift(gt_ids, _ID_BITS, dtype=np.uint16)
    key |= pred_ids
    return key.ravel()


def _row_changes(key: np.ndarray) -> np.ndarray:
    """Flat indices i where key[i] != key[i + 1]: run ends and horizontal neighbours that differ."""
    return np.flatnonzero(key[1:] != key[:-1])


def id_confusion(pred_ids: np.ndarray, gt_ids: np.ndarray) -> np.ndarray:
    """(NUM_IDS, NUM_IDS) int64 confusion matrix of two (H, W) label-id maps (values <= MAX_LABEL_ID)."""
    key = _pair_key(np.asarray(pred_ids), np.asarray(gt_ids))
    return _confusion_from_key(key, _row_changes(key))


def _confusion_from_key(key: np.ndarray, changes: np.ndarray) -> np.ndarray:
    # Label maps are piecewise constant: count runs of equal (gt, pred) pairs, weighted by their
    # length, instead of every pixel. A bincount over 2 M pixels costs ~3x as much, because
    # consecutive equal keys serialise on one counter.
    starts = np.empty(changes.size + 1, dtype=np.intp)
    starts[0] = 0
    starts[1:] = changes + 1
    lengths = np.diff(starts, append=key.size)
    counts = np.bincount(key[starts], weights=lengths, minlength=1 << (2 * _ID_BITS))
    counts = counts.astype(np.int64).reshape(1 << _ID_BITS, 1 << _ID_BITS)  # float64 is exact below 2**53
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
    key <<= _ID_BITS
    key |= np.asarray(pred_ids).ravel()[where]
    starts = np.flatnonzero(np.concatenate([[True], key[1:] != key[:-1]]))
    lengths = np.diff(starts, append=key.size).astype(np.float64)
    key = key[starts]
    ids = (key >> _ID_BITS).astype(np.intp)
    pred = (key & ((1 << _ID_BITS) - 1)).astype(np.intp)
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


# --- boundary F1 ------------------------------------------------------------------------------


def disk_offsets(tolerance: int) -> list[tuple[int, int]]:
    """(dy, dx) offsets within Euclidean distance ``tolerance``, nearest first."""
    r = int(tolerance)
    offs = [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1) if dy * dy + dx * dx <= r * r]
    return sorted(offs, key=lambda o: (o[0] ** 2 + o[1] ** 2, o))


def boundary_counts(
    pred_ids: np.ndarray, gt_ids: np.ndarray, tolerance: int = DEFAULT_BOUNDARY_TOLERANCE
) -> np.ndarray:
    """Boundary pixels of each class in prediction and ground truth, and how many are matched.

    Definition (the same in :class:`cityseg.engine.evaluator.Evaluator`): only pixels whose ground
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
    key = _pair_key(np.asarray(pred_ids), gt_ids)
    return _boundary_from_key(key, _row_changes(key), gt_ids.shape, tolerance)


def _boundary_from_key(
    key: np.ndarray, row_changes: np.ndarray, shape: tuple[int, int], tolerance: int
) -> np.ndarray:
    # Works on the few pixels next to a change of (gt, pred) only: a frame has ~2 M pixels but
    # some 10^4-10^5 boundary pixels, so full-image passes (a dilation or distance transform per
    # class) would cost 10-50x more. Neighbour pairs that differ come from the horizontal changes
    # already found for the confusion matrix plus one vertical comparison.
    h, w = shape
    # np.compress, not a[mask]: boolean indexing with an irregular mask is ~5x slower (branch misses)
    horizontal = np.compress((row_changes % w) != w - 1, row_changes)  # no pairs that wrap to the next row
    vertical = np.flatnonzero(key[w:] != key[:-w])
    # per direction: first pixel of each differing pair, its step to the second, and both pixels'
    # (pred, gt) label ids; only pairs whose two gt labels are scored classes take part
    pairs = []
    for first, step in ((horizontal, 1), (vertical, w)):
        k1, k2 = key[first], key[first + step]
        g1, g2 = k1 >> _ID_BITS, k2 >> _ID_BITS
        take = IS_EVAL_ID[g1] & IS_EVAL_ID[g2]
        p1, p2 = k1 & _PRED_MASK, k2 & _PRED_MASK
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
        lab = key[pos] >> _ID_BITS if side else key[pos] & _PRED_MASK
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


# --- one frame --------------------------------------------------------------------------------


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
    key = _pair_key(pred_ids, gt_ids)
    changes = _row_changes(key)
    counts = Counts(conf=_confusion_from_key(key, changes))
    if instance_ids is not None:
        counts.instances = instance_counts(pred_ids, instance_ids)
    if boundary_tolerance is not None:
        counts.boundary = _boundary_from_key(key, changes, gt_ids.shape, boundary_tolerance)
        counts.boundary_tolerance = int(boundary_tolerance)
    return counts


# --- scores -----------------------------------------------------------------------------------


def _ratio(num: np.ndarray | float, den: np.ndarray | float) -> np.ndarray:
    """num / den with NaN where den == 0 (the official script's "nan" for absent classes)."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return out


def nan_mean(values: np.ndarray) -> float:
    """Mean over the non-NaN entries; NaN when there are none (the official getScoreAverage)."""
    values = np.asarray(values, dtype=np.float64)
    valid = values[~np.isnan(values)]
    return float(valid.mean()) if valid.size else math.nan


def _lift(conf: np.ndarray, t: ScoreTable | None = None) -> np.ndarray:
    """Place a (K, K) trainId confusion matrix onto the axes of ``t`` (Cityscapes: label ids)."""
    t = t or CITYSCAPES
    out = np.zeros((t.num_ids, t.num_ids), dtype=np.int64)
    out[np.ix_(t.eval_ids, t.eval_ids)] = conf
    return out


def boundary_f1(boundary: np.ndarray) -> np.ndarray:
    """(NUM_CLASSES,) float64 boundary F1 from :func:`boundary_counts` sums; NaN for a class with
    no boundary pixel in prediction or ground truth."""
    pred_n, pred_hit, gt_n, gt_hit = np.asarray(boundary, dtype=np.float64)
    precision = np.nan_to_num(_ratio(pred_hit, pred_n))
    recall = np.nan_to_num(_ratio(gt_hit, gt_n))
    f1 = np.nan_to_num(_ratio(2 * precision * recall, precision + recall))
    f1[(pred_n == 0) & (gt_n == 0)] = np.nan
    return f1


def scores(
    conf: np.ndarray,
    instances: np.ndarray | None = None,
    boundary: np.ndarray | None = None,
    table: ScoreTable | None = None,
) -> dict[str, Any]:
    """The scores of ``cityseg evaluate``, NaN where undefined.

    Args:
        conf: (num_ids, num_ids) confusion matrix of ``table`` (Cityscapes: label ids,
            :func:`id_confusion`), or a (K, K) trainId one (:func:`confusion`).
        instances: :attr:`Counts.instances` sums, or None (iIoU NaN); Cityscapes only.
        boundary: :attr:`Counts.boundary` sums, or None (boundary F1 NaN).
        table: what is scored (default :data:`CITYSCAPES`).

    Returns:
        ``{"miou", "iiou", "category_miou", "category_iiou", "mean_dice", "pixel_accuracy",
        "mean_class_accuracy", "boundary_f1", "classes": {name: {"iou", "iiou", "dice",
        "accuracy", "boundary_f1"}}, "categories": {name: {"iou", "iiou"}}}`` with Python floats;
        the iIoU keys only for the Cityscapes table, the category keys only where the table has
        categories. Pixel accuracy is tp / all pixels of scored ground truth; a class's accuracy
        is tp / (tp + fn) (its recall, NaN when absent from the ground truth), and the mean class
        accuracy their mean over the classes present. A void prediction counts as wrong.
    """
    t = table or CITYSCAPES
    k, ids = t.num_classes, t.eval_ids
    conf = np.asarray(conf, dtype=np.int64)
    if conf.shape == (k, k):
        conf = _lift(conf, t)
    if conf.shape != (t.num_ids, t.num_ids):
        expected = f"{(t.num_ids, t.num_ids)} or {(k, k)}"
        raise ValueError(f"confusion matrix of shape {conf.shape}; expected {expected}")
    scored = conf[ids]  # rows of scored gt classes; void gt rows are never used
    tp = scored[np.arange(k), ids]
    fn = scored.sum(1) - tp  # every prediction counts, void ones too
    fp = scored[:, ids].sum(0) - tp  # predictions on scored gt only
    iou = _ratio(tp, tp + fp + fn)
    dice = _ratio(2 * tp, 2 * tp + fp + fn)
    accuracy = _ratio(tp, tp + fn)
    iiou = np.full(k, np.nan)
    if instances is not None and t.official:
        cls = list(INSTANCE_CLASSES)
        tpw, fnw = instances[0, cls], instances[1, cls]
        iiou[cls] = _ratio(tpw, tpw + fp[cls] + fnw)
    cat_iou, cat_iiou = _category_scores(conf, instances, t)
    bf1 = boundary_f1(boundary) if boundary is not None else np.full(k, np.nan)
    out = {
        "miou": nan_mean(iou),
        "iiou": nan_mean(iiou),
        "category_miou": nan_mean(cat_iou),
        "category_iiou": nan_mean(cat_iiou),
        "mean_dice": nan_mean(dice),
        "pixel_accuracy": float(_ratio(tp.sum(), scored.sum())),
        "mean_class_accuracy": nan_mean(accuracy),
        "boundary_f1": nan_mean(bf1),
        "classes": {
            name: {"iou": float(iou[i]), "iiou": float(iiou[i]), "dice": float(dice[i]),
                   "accuracy": float(accuracy[i]), "boundary_f1": float(bf1[i])}
            for i, name in enumerate(t.names)
        },
        "categories": {
            name: {"iou": float(cat_iou[j]), "iiou": float(cat_iiou[j])} for j, name in enumerate(t.categories)
        },
    }
    return _defined_keys(out, t)


def _defined_keys(result: dict[str, Any], t: ScoreTable) -> dict[str, Any]:
    """Drop the scores ``t`` does not define: iIoU outside Cityscapes, categories where it has none."""
    if not t.official:
        for key in ("iiou", "category_iiou"):
            result.pop(key)
        for entry in [*result["classes"].values(), *result["categories"].values()]:
            entry.pop("iiou")
    if not t.categories:
        for key in ("categories", "category_miou", "category_iiou"):
            result.pop(key, None)
    return result


def _category_scores(
    conf: np.ndarray, instances: np.ndarray | None, t: ScoreTable
) -> tuple[np.ndarray, np.ndarray]:
    """Category IoU and iIoU (official getIouScoreForCategory / getInstanceIouScoreForCategory)."""
    iou = np.full(len(t.categories), np.nan)
    iiou = np.full(len(t.categories), np.nan)
    for k, ids in enumerate(t.category_ids):
        if not ids:
            continue
        ids = list(ids)
        others = [i for i in t.eval_ids if i not in ids]  # scored gt outside the category
        tp = conf[np.ix_(ids, ids)].sum()
        fn = conf[ids].sum() - tp
        fp = conf[np.ix_(others, ids)].sum()
        iou[k] = _ratio(tp, tp + fp + fn)
        inst_ids = INSTANCE_CATEGORY_IDS[k] if t.official else None
        if instances is not None and inst_ids is not None:
            tpw, fnw = instances[0, NUM_CLASSES + k], instances[1, NUM_CLASSES + k]
            fp_inst = conf[np.ix_(others, list(inst_ids))].sum()  # caravan/trailer columns included
            iiou[k] = _ratio(tpw, tpw + fp_inst + fnw)
    return iou, iiou


# --- output -----------------------------------------------------------------------------------


def write_json(counts: Counts, path: str | os.PathLike, result: dict[str, Any] | None = None) -> None:
    """Write the scores (``result``, default ``counts.scores()``; NaN as null) and the confusion matrix
    (:func:`confusion_json`) of ``counts`` as JSON, atomically."""
    from cityseg.utils import atomic_path

    result = counts.scores() if result is None else result
    data = {**json_ready(result), "confusion_matrix": confusion_json(counts.conf, counts.table)}
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")


def json_ready(result: dict[str, Any]) -> dict[str, Any]:
    """Copy of a :func:`scores` dict with NaN replaced by None (JSON null)."""
    if isinstance(result, dict):
        return {k: json_ready(v) for k, v in result.items()}
    if isinstance(result, float) and math.isnan(result):
        return None
    return result


def _fmt(value: float) -> str:
    return "    -" if value is None or math.isnan(value) else f"{value:5.3f}"


def format_table(result: dict[str, Any], boundary_tolerance: int | None = None) -> str:
    """Terminal table: per class IoU, iIoU, Dice, accuracy, boundary F1, then averages and
    categories; ``boundary_tolerance`` (pixels), when given, is stated under it."""
    instances = "iiou" in result  # the columns of the scores this table defines (see scores())
    width = max(len(n) for n in [*result["classes"], *result.get("categories", {}), "category"]) + 2
    columns = [("IoU", "iou", "miou"), ("iIoU", "iiou", "iiou"), ("Dice", "dice", "mean_dice"),
               ("Acc", "accuracy", "mean_class_accuracy"), ("BF1", "boundary_f1", "boundary_f1")]
    columns = [c for c in columns if instances or c[0] != "iIoU"]
    head = f"{'class':<{width}}  " + "  ".join(f"{c[0]:>5}" for c in columns)
    rule = "-" * len(head)
    lines = [head, rule]
    for name, s in result["classes"].items():
        lines.append(f"{name:<{width}}  " + "  ".join(_fmt(s[c[1]]) for c in columns))
    lines += [rule, f"{'average':<{width}}  " + "  ".join(_fmt(result[c[2]]) for c in columns), ""]
    if "categories" in result:
        keys = ("iou", "iiou") if instances else ("iou",)
        sub = width + 7 * len(keys)
        lines += [f"{'category':<{width}}  {'IoU':>5}" + (f"  {'iIoU':>5}" if instances else ""), "-" * sub]
        for name, s in result["categories"].items():
            lines.append(f"{name:<{width}}  " + "  ".join(_fmt(s[k]) for k in keys))
        averages = "  ".join(_fmt(result[k]) for k in ("category_miou", "category_iiou")[: len(keys)])
        lines += ["-" * sub, f"{'average':<{width}}  {averages}", ""]
    lines.append(f"pixel accuracy {_fmt(result['pixel_accuracy'])}, "
                 f"mean class accuracy {_fmt(result['mean_class_accuracy'])} (Acc: tp / ground-truth pixels)")
    if boundary_tolerance is not None:
        lines.append(f"BF1: boundary F1, boundary pixels matched within {boundary_tolerance} px (Euclidean)")
    return "\n".join(lines)


def train_confusion(conf: np.ndarray, table: ScoreTable | None = None) -> np.ndarray:
    """(K, K + 1) int64 view of a confusion matrix of ``table`` (default Cityscapes: label ids)
    for plots: rows scored gt classes, columns predicted classes plus one column of predictions of
    void labels. A (K, K) trainId matrix is taken too (its void column is zero)."""
    t = table or CITYSCAPES
    conf = np.asarray(conf)
    if conf.shape == (t.num_classes, t.num_classes):
        conf = _lift(conf, t)
    scored = conf[t.eval_ids]
    classes = scored[:, t.eval_ids]
    return np.concatenate([classes, (scored.sum(1) - classes.sum(1))[:, None]], axis=1)


def confusion_json(conf: np.ndarray, table: ScoreTable | None = None) -> dict[str, Any]:
    """The :func:`train_confusion` table for the JSON: ``{"rows": ground-truth class names
    (trainId order), "columns": predicted class names + "(void)" (a void label id predicted),
    "counts": rows of ints}``. IoU, Dice and the accuracies of :func:`scores` follow from it."""
    names = list((table or CITYSCAPES).names)
    return {
        "rows": names,
        "columns": [*names, "(void)"],
        "counts": [[int(v) for v in row] for row in train_confusion(conf, table)],
    }
