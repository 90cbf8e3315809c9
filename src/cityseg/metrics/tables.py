"""What is scored and on which axes: the score tables and the lookup tables derived from the label table.

The official Cityscapes table (:data:`CITYSCAPES`) counts on label-id axes, ``(NUM_IDS, NUM_IDS)``;
a dataset with its own classes gets train-id axes plus one void id (:func:`table_for`). The
numpy arrays below map a label id to what the counting kernels (:mod:`cityseg.metrics.counts`,
:mod:`cityseg.metrics.boundary`) and the torch :class:`~cityseg.metrics.evaluator.Evaluator`
need to know about it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
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

# --- lookup tables derived from the label table -----------------------------------------------

#: label id (0-255) -> scored (a train class). This and the tables below are public for the torch
#: Evaluator (cityseg.metrics.evaluator), which counts with them on the device.
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
        instance_classes: train ids scored by iIoU (the official instance table; empty: no iIoU).
        instance_category_ids: per category, the ids of an instance category (its iIoU), or None.
        palette: (K, 3) uint8 class colours, for plots.
    """

    names: tuple[str, ...]
    eval_ids: np.ndarray
    num_ids: int
    void_id: int
    categories: tuple[str, ...] = ()
    category_ids: tuple[tuple[int, ...], ...] = ()
    instance_classes: tuple[int, ...] = ()
    instance_category_ids: tuple[tuple[int, ...] | None, ...] = ()
    palette: np.ndarray | None = None

    @property
    def num_classes(self) -> int:
        return len(self.names)

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.names


#: The official Cityscapes table: every score of the official evaluator.
CITYSCAPES = ScoreTable(tuple(CLASS_NAMES), EVAL_IDS, NUM_IDS, 0, tuple(CATEGORIES), CATEGORY_IDS,
                        INSTANCE_CLASSES, INSTANCE_CATEGORY_IDS, palette=TRAIN_PALETTE[:NUM_CLASSES])


def table_for(spec: Any) -> ScoreTable:
    """The :class:`ScoreTable` of a :class:`cityseg.datasets.DatasetSpec` (None: Cityscapes), on the
    axes its :attr:`~cityseg.datasets.DatasetSpec.id_table` gives: :data:`CITYSCAPES` for the
    official table (cityscapes, kitti), else the categories its description names and no iIoU."""
    return CITYSCAPES if spec is None else _table(spec)


@functools.cache
def _table(spec: Any) -> ScoreTable:
    ids = spec.id_table
    if ids.official:  # its categories, instance table and average sizes are the official ones above
        return CITYSCAPES
    cats = tuple(spec.categories)
    members = tuple(tuple(ids.eval_ids[i] for i, c in enumerate(spec.classes) if c.category == cat) for cat in cats)
    return ScoreTable(tuple(spec.class_names), np.array(ids.eval_ids, dtype=np.intp), ids.num_ids, ids.void_id,
                      cats, members, (), (None,) * len(cats), palette=spec.palette)


def lift(conf: np.ndarray, t: ScoreTable | None = None) -> np.ndarray:
    """Place a (K, K) trainId confusion matrix onto the axes of ``t`` (Cityscapes: label ids)."""
    t = t or CITYSCAPES
    out = np.zeros((t.num_ids, t.num_ids), dtype=np.int64)
    out[np.ix_(t.eval_ids, t.eval_ids)] = conf
    return out
