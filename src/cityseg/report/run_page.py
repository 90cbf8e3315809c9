"""The report's page of a training run folder (``cityseg train --out``).

A summary of the best epoch (the one training kept as ``checkpoints/best.pt``), the training
curves, the per-class IoU/Dice of the best epoch (table and bar chart), the confusion matrix when
one was saved beside the run (``cityseg evaluate --json``/``--plots`` into the folder), the
prediction panels, per-epoch metrics with timing and throughput, the checkpoints and the resolved
config. Nothing is made up: what the folder lacks is said so on the page.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from cityseg.errors import CitysegError
from cityseg.report.html_kit import (Raw, config_section, drawn_figure, esc, files_under, generated, note, page,
                                     picture_list, png_figure, read_text, read_yaml_text, rel, table)

#: Keys of an epoch record read as images per second, when training logged one.
THROUGHPUT_KEYS = ("images_per_s", "img_per_s", "images_per_second", "throughput")


def best_record(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The validated epoch whose checkpoint training kept as ``best.pt``: the records' ``val_miou``
    replayed through training's own rule (:meth:`cityseg.engine.resume.RunState.update_best`, which
    keeps the first of equals); a record without a finite ``val_miou`` was not validated."""
    from cityseg.engine.resume import RunState  # the training stack, imported for a run's page only

    state, best = RunState(), None
    for r in records:
        v = r.get("val_miou")
        if isinstance(v, (int, float)) and math.isfinite(v) and state.update_best(v, r.get("epoch")):
            best = r
    return best


def scalar_keys(records: list[dict[str, Any]]) -> list[str]:
    """The keys of numeric (or null) values in the records, in the order they first appear."""
    keys: list[str] = []
    for r in records:
        for k, v in r.items():
            if k not in keys and (v is None or isinstance(v, (int, float))):
                keys.append(k)
    return keys


def dice_of_iou(iou: float | None) -> float | None:
    """Dice of one class from its IoU over the same confusion matrix: D = 2 J / (1 + J)."""
    if iou is None or not math.isfinite(iou):
        return None
    return 2 * iou / (1 + iou)


def run_dataset(cfg: dict[str, Any]) -> Any:
    """The :class:`~cityseg.datasets.DatasetSpec` of a run's config (Cityscapes when it names none or
    an unreadable one: a report shows what it can)."""
    from cityseg.datasets import load_dataset

    try:
        return load_dataset(cfg.get("dataset") or "cityscapes")
    except CitysegError:
        return load_dataset("cityscapes")


def class_swatch(name: str, spec: Any = None) -> Raw:
    """The class name with its colour in the dataset ``spec`` (None: Cityscapes; no colour for names
    outside the table)."""
    spec = spec or run_dataset({})
    if name in spec.class_names:
        r, g, b = (int(c) for c in spec.palette[spec.class_names.index(name)])
        return Raw(f'<span class="swatch" style="background: rgb({r},{g},{b})"></span>{esc(name)}')
    return Raw(esc(name))


def summary_section(records: list[dict[str, Any]], best: dict[str, Any] | None, cfg: dict[str, Any]) -> str:
    """Key figures of the run: epochs, best epoch and its scores, last epoch."""
    if not records:
        return note("metrics.jsonl holds no epoch yet: the run has not finished its first epoch")
    last = records[-1]
    train_cfg = cfg.get("train") if isinstance(cfg.get("train"), dict) else {}
    rows: list[tuple[str, Any]] = [
        ("epochs recorded", len(records)),
        ("last epoch", last.get("epoch")),
        ("epochs planned (train.epochs)", train_cfg.get("epochs")),
        ("optimiser steps", last.get("step")),
    ]
    if best is None:
        rows.append(("best epoch", "no validated epoch yet"))
    else:
        rows.append(("best epoch (highest val mIoU)", best.get("epoch")))
        for key in ("val_miou", "val_dice", "val_pixel_accuracy", "val_mean_class_accuracy", "val_boundary_f1",
                    "val_loss", "train_loss"):
            if key in best:
                rows.append((f"{key} at the best epoch", best[key]))
    if last is not best:
        rows += [(f"{k} at the last epoch", last[k]) for k in ("val_miou", "train_loss") if k in last]
    return table(["", "value"], rows, "summary")


def curves_section(folder: Path, metrics_path: Path, records: list[dict[str, Any]]) -> str:
    """``curves.png`` inlined; drawn now from ``metrics.jsonl`` when the run has none."""
    curves = folder / "curves.png"
    if curves.is_file():
        return png_figure(curves, "curves.png: losses, validation mIoU and Dice, learning rate by epoch", folder)
    if not records:
        return note("no curves: no epoch recorded yet")
    from cityseg.viz import plot_curves

    return drawn_figure(lambda p: plot_curves(metrics_path, p), "training curves",
                        "training curves, drawn from metrics.jsonl (the run folder has no curves.png)")


def class_section(records: list[dict[str, Any]], best: dict[str, Any] | None, spec: Any = None) -> str:
    """Per-class IoU and Dice of the best epoch (table and bar chart) in the classes of ``spec``."""
    if best is None:
        return note("no validated epoch yet: no per-class scores")
    ious = best.get("iou")
    if not isinstance(ious, dict) or not ious:
        return note(f"epoch {best.get('epoch')} recorded no per-class IoU (no 'iou' key in metrics.jsonl)")
    dices = best.get("dice") if isinstance(best.get("dice"), dict) else None
    last = records[-1] if records[-1] is not best and isinstance(records[-1].get("iou"), dict) else None
    header = ["class", f"IoU (epoch {best['epoch']})", f"Dice (epoch {best['epoch']})"]
    if last is not None:
        header.append(f"IoU (last epoch, {last['epoch']})")
    rows = []
    for name, iou in ious.items():
        iou = iou if isinstance(iou, (int, float)) else None
        dice = dices.get(name) if dices is not None else dice_of_iou(iou)
        row = [class_swatch(str(name), spec), iou, dice]
        if last is not None:
            row.append(last["iou"].get(name))
        rows.append(row)
    parts = [table(header, rows, "per-class")]
    if dices is None:
        parts.append(note("Dice per class is computed from the logged IoU, D = 2 IoU / (1 + IoU), which holds "
                          "exactly for one confusion matrix; an en dash marks a class absent from the validation "
                          "data and never predicted."))
    parts.append(class_chart(ious, best["epoch"], spec))
    return "\n".join(parts)


def class_chart(ious: dict[str, Any], epoch: Any, spec: Any = None) -> str:
    """:func:`cityseg.viz.plot_class_iou` of the per-class IoU, when the names are the classes of the
    run's dataset ``spec`` (None: Cityscapes)."""
    spec = spec or run_dataset({})
    if not any(name in spec.class_names for name in ious):
        return note(f"no bar chart: the per-class names are not the classes of {spec.name}")
    import numpy as np

    from cityseg.viz import plot_class_iou

    values = np.array([_float(ious.get(name)) for name in spec.class_names])
    return drawn_figure(lambda p: plot_class_iou(values, p, spec), "per-class IoU", f"per-class IoU at epoch {epoch}")


def _float(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else float("nan")


def find_confusions(folder: Path) -> tuple[list[Path], list[Path]]:
    """JSON files holding a ``confusion_matrix`` (``cityseg evaluate --json``) and ``confusion*.png`` files."""
    jsons = []
    for path in files_under(folder, "*.json"):
        if path.stat().st_size > 50_000_000:
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and isinstance(data.get("confusion_matrix"), dict):
            jsons.append(path)
    return jsons, files_under(folder, "confusion*.png")


def confusion_section(folder: Path, jsons: list[Path], pngs: list[Path]) -> str:
    """The saved confusion matrices (drawn from the JSON counts, or the PNGs), or a note that there is none."""
    if not jsons and not pngs:
        return note(
            "This run folder holds no confusion matrix: cityseg train keeps only its per-class IoU. "
            f"To add one: cityseg evaluate --checkpoint {folder / 'checkpoints' / 'best.pt'} "
            f"--json {folder / 'eval' / 'scores.json'} --plots {folder / 'eval'}, then cityseg report {folder} again."
        )
    parts = []
    for path in jsons:
        parts.append(confusion_from_json(path, folder))
    parts.append(picture_list(pngs, folder, "confusion pictures"))
    return "\n".join(parts)


def confusion_from_json(path: Path, root: Path) -> str:
    """The row-normalised heatmap of a ``confusion_matrix`` of ``cityseg evaluate --json``."""
    import numpy as np

    from cityseg.viz import plot_confusion

    name = rel(path, root)
    try:
        counts = np.asarray(json.loads(path.read_text(encoding="utf-8"))["confusion_matrix"]["counts"], dtype=np.int64)
    except (KeyError, TypeError, ValueError):
        return note(f"{name}: its confusion_matrix has no table of counts; not shown")
    try:
        return drawn_figure(lambda p: plot_confusion(counts, p), f"confusion matrix of {name}",
                            f"confusion matrix from {name} (rows: ground truth, % of each class)")
    except ValueError as exc:
        return note(f"{name}: {exc}; not shown")


def epochs_section(records: list[dict[str, Any]], best: dict[str, Any] | None) -> str:
    """Every epoch's scalar values, the best epoch highlighted."""
    if not records:
        return note("no epoch recorded yet")
    keys = scalar_keys(records)
    rows = [[r.get(k) for k in keys] for r in records]
    best_row = records.index(best) if best is not None else None
    return table(keys, rows, "epochs", best_row=best_row, text_columns=())


def timing_section(records: list[dict[str, Any]], cfg: dict[str, Any]) -> str:
    """Seconds per epoch, optimiser steps per second and images per second (logged, else estimated)."""
    timed = [r for r in records if isinstance(r.get("time"), (int, float))]
    if not timed:
        return note("metrics.jsonl records no epoch times ('time' key)")
    train_cfg = cfg.get("train") if isinstance(cfg.get("train"), dict) else {}
    batch = train_cfg.get("batch_size") if isinstance(train_cfg.get("batch_size"), int) else None
    logged = next((k for k in THROUGHPUT_KEYS if any(k in r for r in records)), None)
    header = ["epoch", "seconds", "steps", "steps/s", f"images/s ({logged})" if logged else "images/s (estimated)"]
    rows, previous_step = [], 0
    for r in records:
        step = r.get("step") if isinstance(r.get("step"), int) else None
        seconds = r.get("time") if isinstance(r.get("time"), (int, float)) else None
        steps = step - previous_step if step is not None else None
        previous_step = step if step is not None else previous_step
        rate = steps / seconds if steps is not None and seconds else None
        images = r.get(logged) if logged else (rate * batch if rate is not None and batch else None)
        rows.append([r.get("epoch"), seconds, steps, rate, images])
    total = sum(r["time"] for r in timed)
    parts = [
        table(["", "value"], [
            ("epochs timed", len(timed)),
            ("total seconds (sum of epochs)", total),
            ("total minutes", total / 60),
            ("mean seconds per epoch", total / len(timed)),
            ("train.batch_size (images per optimiser step)", batch),
            ("train.max_minutes (time budget)", train_cfg.get("max_minutes")),
        ], "timing-summary"),
        table(header, rows, "timing", text_columns=()),
    ]
    if not logged:
        parts.append(note("Training logs no images per second; the estimate is optimiser steps x train.batch_size "
                          "/ epoch seconds, and an epoch's seconds include its validation, so training alone is "
                          "faster than this."))
    return "\n".join(parts)


def checkpoints_section(folder: Path) -> str:
    """The checkpoint files with sizes and times (read from the file system; no checkpoint is loaded)."""
    ckpts = sorted((folder / "checkpoints").glob("*.pt")) if (folder / "checkpoints").is_dir() else []
    if not ckpts:
        return note("no checkpoints/*.pt in this folder")
    rows = []
    for p in ckpts:
        st = p.stat()
        rows.append([rel(p, folder), f"{st.st_size / 1e6:.1f} MB",
                     time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(st.st_mtime))])
    return table(["file", "size", "modified"], rows, "checkpoints", text_columns=(0, 1, 2))


def run_report(folder: Path) -> str:
    """The HTML page of a training run folder."""
    from cityseg.viz import read_metrics

    metrics_path = folder / "metrics.jsonl"
    records = read_metrics(metrics_path) if metrics_path.is_file() else []
    config_text = read_text(folder / "config.yaml") if (folder / "config.yaml").is_file() else ""
    cfg = read_yaml_text(config_text)
    best = best_record(records)
    jsons, confusion_pngs = find_confusions(folder)
    shown = [folder / "curves.png", *confusion_pngs]
    panels = files_under(folder, "*panel*.png", exclude=shown)
    others = files_under(folder, "*.png", exclude=[*shown, *panels])
    name = cfg.get("name") or folder.name
    sections = [
        ("summary", "Summary", summary_section(records, best, cfg) if metrics_path.is_file()
         else note("no metrics.jsonl in this folder: the run has not recorded an epoch")),
        ("curves", "Training curves", curves_section(folder, metrics_path, records)),
        ("classes", "Per-class IoU and Dice (best epoch)", class_section(records, best, run_dataset(cfg))),
        ("confusion", "Confusion matrix", confusion_section(folder, jsons, confusion_pngs)),
        ("panels", "Prediction panels", picture_list(panels, folder, "panels") if panels
         else note("no prediction panels (panels.png is written when training ends)")),
        ("timing", "Timing and throughput", timing_section(records, cfg)),
        ("epochs", "Metrics by epoch", epochs_section(records, best)),
        ("checkpoints", "Checkpoints", checkpoints_section(folder)),
        ("config", "Resolved config (config.yaml)", config_section(folder / "config.yaml", "config.yaml")),
    ]
    if others:
        sections.insert(5, ("pictures", "Other pictures in the folder", picture_list(others, folder, "pictures")))
    return page(f"cityseg run: {name}", generated(folder), sections)
