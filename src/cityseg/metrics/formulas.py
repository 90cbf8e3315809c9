"""The score formulas: summed counts in, the numbers of the ``cityseg evaluate`` JSON out.

:func:`scores` computes IoU, iIoU, category IoU/iIoU and their averages following
``cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling`` formula by formula (tested against
it), plus Dice, pixel and class accuracy and boundary F1: a pixel whose ground truth is void is
never counted; a score whose denominator is zero (a class absent from both ground truth and
prediction) is NaN and left out of every average.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from cityseg.labels import NUM_CLASSES
from cityseg.metrics.tables import CITYSCAPES, ScoreTable, lift


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


def boundary_f1(boundary: np.ndarray) -> np.ndarray:
    """(NUM_CLASSES,) float64 boundary F1 from :func:`~cityseg.metrics.boundary.boundary_counts` sums;
    NaN for a class with no boundary pixel in prediction or ground truth."""
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
            :func:`~cityseg.metrics.counts.id_confusion`), or a (K, K) trainId one
            (:func:`~cityseg.metrics.counts.confusion`).
        instances: :attr:`~cityseg.metrics.counts.Counts.instances` sums, or None (iIoU NaN); Cityscapes only.
        boundary: :attr:`~cityseg.metrics.counts.Counts.boundary` sums, or None (boundary F1 NaN).
        table: what is scored (default :data:`~cityseg.metrics.tables.CITYSCAPES`).

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
        conf = lift(conf, t)
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
    if instances is not None and t.instance_classes:
        cls = list(t.instance_classes)
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
    if not t.instance_classes:
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
        inst_ids = t.instance_category_ids[k]
        if instances is not None and inst_ids is not None:
            tpw, fnw = instances[0, t.num_classes + k], instances[1, t.num_classes + k]
            fp_inst = conf[np.ix_(others, list(inst_ids))].sum()  # caravan/trailer columns included
            iiou[k] = _ratio(tpw, tpw + fp_inst + fnw)
    return iou, iiou

