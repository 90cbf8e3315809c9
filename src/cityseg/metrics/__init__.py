"""Cityscapes scores the way the official evaluator computes them, plus Dice and boundary F1.

Everything starts from counts that add up over frames (and over DDP processes), and one code turns
counts into numbers, so training's validation, ``evaluate --checkpoint`` and ``evaluate --pred-dir``
agree. The rooms, lowest first:

* :mod:`~cityseg.metrics.tables`: what is scored, on which axes (:class:`ScoreTable`,
  :data:`CITYSCAPES`, :func:`table_for`) and the label-id lookup tables;
* :mod:`~cityseg.metrics.pairs`: the (gt, pred) pair keys both counting kernels scan;
* :mod:`~cityseg.metrics.boundary`: the boundary kernel (:func:`boundary_counts`, its definition);
* :mod:`~cityseg.metrics.formulas`: counts -> scores (:func:`scores`), formula by formula as
  ``cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling``;
* :mod:`~cityseg.metrics.counts`: the confusion matrix and instance counts, :class:`Counts`,
  :func:`frame_counts`;
* :mod:`~cityseg.metrics.output`: the terminal table and the JSON;
* :mod:`~cityseg.metrics.pred_dir`: scoring a folder of prediction PNGs (``--pred-dir``);
* :mod:`~cityseg.metrics.evaluator`: the torch :class:`~cityseg.metrics.evaluator.Evaluator` of
  training and ``--checkpoint``. Not imported here: this package is NumPy only, because
  ``cityseg evaluate --pred-dir`` imports it in every worker process and never imports torch.
"""

from cityseg.metrics.boundary import DEFAULT_BOUNDARY_TOLERANCE, boundary_counts, disk_offsets
from cityseg.metrics.counts import Counts, confusion, frame_counts, id_confusion, instance_counts
from cityseg.metrics.formulas import boundary_f1, nan_mean, scores
from cityseg.metrics.output import confusion_json, format_table, json_ready, train_confusion, write_json
from cityseg.metrics.tables import (
    AVG_CLASS_SIZE, AVG_SIZE_OF_ID, CATEGORY_IDS, CITYSCAPES, EVAL_IDS, GT_INSTANCE_CATEGORY, INSTANCE_CATEGORY_IDS,
    INSTANCE_CLASSES, INSTANCE_OFFSET, IS_EVAL_ID, NUM_IDS, PRED_INSTANCE_CATEGORY, TRAIN_ID_OF_ID, ScoreTable,
    table_for,
)

__all__ = [
    "AVG_CLASS_SIZE", "AVG_SIZE_OF_ID", "CATEGORY_IDS", "CITYSCAPES", "DEFAULT_BOUNDARY_TOLERANCE", "EVAL_IDS",
    "GT_INSTANCE_CATEGORY", "INSTANCE_CATEGORY_IDS", "INSTANCE_CLASSES", "INSTANCE_OFFSET", "IS_EVAL_ID", "NUM_IDS",
    "PRED_INSTANCE_CATEGORY", "TRAIN_ID_OF_ID", "Counts", "ScoreTable", "boundary_counts", "boundary_f1",
    "confusion", "confusion_json", "disk_offsets", "format_table", "frame_counts", "id_confusion", "instance_counts",
    "json_ready", "nan_mean", "scores", "table_for", "train_confusion", "write_json",
]
