"""Scores for people and files: the terminal table, the JSON of ``cityseg evaluate``, the confusion table of plots."""

from __future__ import annotations

import json
import math
import os
from typing import TYPE_CHECKING, Any

import numpy as np

from cityseg.metrics.tables import CITYSCAPES, ScoreTable, lift

if TYPE_CHECKING:
    from cityseg.metrics.counts import Counts


def write_json(counts: Counts, path: str | os.PathLike, result: dict[str, Any] | None = None) -> None:
    """Write the scores (``result``, default ``counts.scores()``; NaN as null) and the confusion matrix
    (:func:`confusion_json`) of ``counts`` as JSON, atomically."""
    from cityseg.utils import atomic_path

    result = counts.scores() if result is None else result
    data = {**json_ready(result), "confusion_matrix": confusion_json(counts.conf, counts.table)}
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")


def json_ready(result: dict[str, Any]) -> dict[str, Any]:
    """Copy of a :func:`~cityseg.metrics.formulas.scores` dict with NaN replaced by None (JSON null)."""
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
        conf = lift(conf, t)
    scored = conf[t.eval_ids]
    classes = scored[:, t.eval_ids]
    return np.concatenate([classes, (scored.sum(1) - classes.sum(1))[:, None]], axis=1)


def confusion_json(conf: np.ndarray, table: ScoreTable | None = None) -> dict[str, Any]:
    """The :func:`train_confusion` table for the JSON: ``{"rows": ground-truth class names
    (trainId order), "columns": predicted class names + "(void)" (a void label id predicted),
    "counts": rows of ints}``. IoU, Dice and the accuracies of
    :func:`~cityseg.metrics.formulas.scores` follow from it."""
    names = list((table or CITYSCAPES).names)
    return {
        "rows": names,
        "columns": [*names, "(void)"],
        "counts": [[int(v) for v in row] for row in train_confusion(conf, table)],
    }
