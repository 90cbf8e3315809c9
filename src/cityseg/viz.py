"""Pictures: palette overlays, image | ground truth | prediction | errors panels, training curves,
confusion matrices, per-class IoU bars, and a sweep's trials over the keys it searched.

Figures are drawn with matplotlib's object API on an Agg canvas (no pyplot, so no global
backend switch and nothing left open) and written atomically, so a run folder never holds a
half-written PNG. Label maps are trainIds; colours come from the official palette in
``labels.py``; ignore pixels are black.
"""

from __future__ import annotations

import json
import logging
import math
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from cityseg import labels
from cityseg.datasets import DatasetSpec
from cityseg.errors import CitysegError
from cityseg.imaging import denormalize
from cityseg.utils import atomic_path

log = logging.getLogger(__name__)

ERROR_COLOR = (255, 0, 0)  # wrong pixels in the error map
CORRECT_COLOR = (235, 235, 235)  # right pixels: light grey, so red and black (ignore) stand out
ArrayLike = np.ndarray | torch.Tensor


def to_rgb_uint8(image: ArrayLike, *, normalized: bool | None = None) -> np.ndarray:
    """Any image the pipeline holds -> (H, W, 3) uint8 RGB for drawing.

    Accepts (H, W, 3) or (3, H, W), numpy or torch. uint8 is taken as it is; a float image must say
    what it holds: ``normalized=True`` for ImageNet-normalised model input (undone here),
    ``normalized=False`` for RGB in [0, 1]. (Guessing from the value range misread light
    normalised images, whose values all lie in [0, 1], as unnormalised.)

    Raises:
        ValueError: not an RGB image; a float image without ``normalized``; uint8 with ``normalized=True``.
    """
    x = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if x.ndim != 3 or 3 not in (x.shape[0], x.shape[-1]):
        raise ValueError(f"expected an RGB image (3, H, W) or (H, W, 3), got shape {x.shape}")
    if x.shape[-1] != 3:
        x = np.moveaxis(x, 0, -1)
    if x.dtype == np.uint8:
        if normalized:
            raise ValueError("a uint8 image cannot be normalised; pass normalized=False or leave it out")
        return np.ascontiguousarray(x)
    if normalized is None:
        raise ValueError(f"{x.dtype} image: say normalized=True (ImageNet-normalised model input) "
                         "or normalized=False (RGB in [0, 1])")
    x = x.astype(np.float32)
    if normalized:
        x = denormalize(torch.from_numpy(x), dim=-1).numpy()
    return (np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8)


def _label_map(ids: ArrayLike) -> np.ndarray:
    x = ids.detach().cpu().numpy() if isinstance(ids, torch.Tensor) else np.asarray(ids)
    if x.ndim != 2:
        raise ValueError(f"expected a (H, W) label map, got shape {x.shape}")
    return x.astype(np.uint8)  # trainIds and IGNORE_INDEX fit; colorize indexes a 256-entry table


def _classes(spec: DatasetSpec | None) -> tuple[Sequence[str], np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    """(class names, (K, 3) uint8 palette, trainIds -> RGB) of a dataset; the official table for None.
    The plots take a :class:`cityseg.metrics.ScoreTable` too (it has class_names and palette)."""
    if spec is None:
        return labels.CLASS_NAMES, labels.TRAIN_PALETTE[: labels.NUM_CLASSES], labels.colorize
    return spec.class_names, np.asarray(spec.palette, dtype=np.uint8), getattr(spec, "colorize", labels.colorize)


def overlay(
    image: ArrayLike, train_ids: ArrayLike, alpha: float = 0.5, *, normalized: bool | None = None,
    spec: DatasetSpec | None = None,
) -> np.ndarray:
    """Blend the palette colours of (H, W) trainIds over an image -> (H, W, 3) uint8.

    ``image`` and ``normalized``: as :func:`to_rgb_uint8`. Ignore pixels keep the image as it is.
    ``spec``: the dataset whose colours are used (None: Cityscapes).
    """
    rgb = to_rgb_uint8(image, normalized=normalized).astype(np.float32)
    ids = _label_map(train_ids)
    colour = _classes(spec)[2](ids).astype(np.float32)
    a = np.where(ids == labels.IGNORE_INDEX, 0.0, alpha)[..., None]
    return (rgb * (1 - a) + colour * a + 0.5).astype(np.uint8)


def error_map(gt: ArrayLike, pred: ArrayLike) -> np.ndarray:
    """(H, W, 3) uint8: wrong pixels red, ignore (in gt) black, right pixels light grey."""
    g, p = _label_map(gt), _label_map(pred)
    out = np.empty((*g.shape, 3), np.uint8)
    out[:] = CORRECT_COLOR
    out[g != p] = ERROR_COLOR
    out[g == labels.IGNORE_INDEX] = 0
    return out


def _resize_rgb(rgb: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    if rgb.shape[:2] == size_hw:
        return rgb
    from PIL import Image

    return np.asarray(Image.fromarray(rgb).resize((size_hw[1], size_hw[0]), Image.BILINEAR))


def save_panel(
    path: str | os.PathLike,
    image: ArrayLike | Sequence[ArrayLike],
    gt: ArrayLike | Sequence[ArrayLike],
    pred: ArrayLike | Sequence[ArrayLike],
    names: Sequence[str] | None = None,
    *,
    normalized: bool | None = None,
    spec: DatasetSpec | None = None,
) -> Path:
    """Write a PNG of image | ground truth | prediction | errors, one row per frame.

    Args:
        path: output PNG (written atomically).
        image: (3, H, W) or (H, W, 3) image, or a list of them (one row each); uint8, or float
            with ``normalized`` saying which kind (:func:`to_rgb_uint8`). Resized to the label
            size when it differs (validation at ``data.val_size`` scores labels at full size).
        gt: (H, W) trainIds ground truth (IGNORE_INDEX where not evaluated), or a list.
        pred: (H, W) trainIds prediction, or a list.
        names: optional frame names, shown in the row titles.
        normalized: required for float images: True for ImageNet-normalised model input.
        spec: the dataset whose class names and colours are drawn (None: Cityscapes).

    A legend below lists the classes present in any ground truth or prediction shown; the error
    column's title gives each frame's pixel accuracy over evaluated pixels.
    """
    class_names, palette, colorize = _classes(spec)
    images = _as_list(image, frame_ndim=3)
    gts, preds = [_label_map(g) for g in _as_list(gt, 2)], [_label_map(p) for p in _as_list(pred, 2)]
    if not len(images) == len(gts) == len(preds) > 0:
        raise ValueError(f"need as many images, gts and preds, got {len(images)}, {len(gts)}, {len(preds)}")
    h, w = gts[0].shape
    col_w = 4.0
    row_h = col_w * h / w + 0.35
    fig = Figure(figsize=(4 * col_w, row_h * len(images) + 0.9), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(images), 4, squeeze=False)
    for r, (img, g, p) in enumerate(zip(images, gts, preds)):
        if g.shape != p.shape:
            raise ValueError(f"ground truth {g.shape} and prediction {p.shape} differ in size")
        valid = g != labels.IGNORE_INDEX
        acc = float((g == p)[valid].mean()) if valid.any() else float("nan")
        title = f"{names[r]}: " if names else ""
        tiles = [
            (_resize_rgb(to_rgb_uint8(img, normalized=normalized), g.shape), f"{title}image"),
            (colorize(g), "ground truth"),
            (colorize(p), "prediction"),
            (error_map(g, p), f"errors (pixel acc {acc:.1%})"),
        ]
        for ax, (tile, text) in zip(axes[r], tiles):
            ax.imshow(tile, interpolation="nearest")
            ax.set_title(text, fontsize=9)
            ax.set_axis_off()
    present = np.unique(np.concatenate([np.unique(x) for x in gts + preds]))
    handles = [
        Patch(color=palette[c] / 255, label=class_names[c]) for c in present if c < len(class_names)
    ]
    handles += [Patch(color="black", label="ignore"), Patch(color=np.array(ERROR_COLOR) / 255, label="error")]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 8), fontsize=8, frameon=False)
    fig.subplots_adjust(left=0.01, right=0.99, top=1 - 0.35 / fig.get_figheight(), bottom=0.75 / fig.get_figheight(),
                        wspace=0.03, hspace=0.25)
    return _save(fig, path)


def _as_list(x: Any, frame_ndim: int) -> list[Any]:
    """A list of frames from a list, a batch (one more dimension than a frame) or one frame."""
    if isinstance(x, (list, tuple)):
        return list(x)
    return list(x) if x.ndim == frame_ndim + 1 else [x]


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Epoch records of a ``metrics.jsonl`` (one JSON object per line); the last record of an epoch wins."""
    path = Path(path)
    if not path.is_file():
        raise CitysegError(f"{path}: metrics file not found")
    by_epoch: dict[int, dict[str, Any]] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            by_epoch[int(record["epoch"])] = record
        except (ValueError, KeyError, TypeError):
            raise CitysegError(f"{path}:{n}: not a JSON object with an 'epoch' key") from None
    return [by_epoch[e] for e in sorted(by_epoch)]


def plot_curves(metrics_jsonl_path: str | os.PathLike, out_png: str | os.PathLike) -> Path:
    """Training curves from ``metrics.jsonl``: losses, validation mIoU and Dice, learning rate, by epoch.

    Keys read per record: ``epoch``, ``train_loss``, ``val_loss``, ``val_miou``, ``val_dice``,
    ``lr``; missing or null values (e.g. epochs without validation) are skipped.
    """
    records = read_metrics(metrics_jsonl_path)
    if not records:
        raise CitysegError(f"{metrics_jsonl_path}: no epochs recorded yet")
    fig = Figure(figsize=(13, 3.6), dpi=110)
    FigureCanvasAgg(fig)
    ax_loss, ax_score, ax_lr = fig.subplots(1, 3)
    _plot_series(ax_loss, records, {"train_loss": "train", "val_loss": "validation"}, "loss")
    _plot_series(ax_score, records, {"val_miou": "mIoU", "val_dice": "mean Dice"}, "validation score")
    _plot_series(ax_lr, records, {"lr": "learning rate"}, "learning rate")
    if any(r.get("lr") for r in records):
        ax_lr.set_yscale("log")
    best = max((r for r in records if r.get("val_miou") is not None), key=lambda r: r["val_miou"], default=None)
    if best is not None:
        ax_score.annotate(
            f"best {best['val_miou']:.3f}", (best["epoch"], best["val_miou"]), textcoords="offset points",
            xytext=(0, 6), ha="center", fontsize=8,
        )
    fig.tight_layout()
    return _save(fig, out_png)


def _plot_series(ax: Any, records: list[dict[str, Any]], keys: dict[str, str], ylabel: str) -> None:
    for key, label in keys.items():
        pts = [(r["epoch"], r[key]) for r in records if r.get(key) is not None and math.isfinite(r[key])]
        if pts:
            x, y = zip(*pts)
            ax.plot(x, y, marker="o", markersize=3, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)


def normalize_confusion(conf: ArrayLike) -> np.ndarray:
    """(C, C) counts (rows ground truth, columns prediction) -> rows summing to 1 (recall).

    Rows of classes absent from the ground truth are NaN.
    """
    c = np.asarray(conf.cpu() if isinstance(conf, torch.Tensor) else conf, dtype=np.float64)
    total = c.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, c / total, np.nan)


def plot_confusion(conf: ArrayLike, out_png: str | os.PathLike, spec: DatasetSpec | None = None) -> Path:
    """Row-normalised confusion matrix heatmap with the class names of ``spec`` (None: Cityscapes).

    Args:
        conf: (K, K) counts, rows ground truth, columns prediction; or (K, K + 1) with a last
            column of pixels predicted as a void label (:func:`cityseg.metrics.train_confusion`).
    """
    norm = normalize_confusion(conf)
    class_names = _classes(spec)[0]
    n = len(class_names)
    if norm.shape not in ((n, n), (n, n + 1)):
        raise ValueError(f"expected a ({n}, {n}) or ({n}, {n + 1}) confusion matrix, got {norm.shape}")
    columns = list(class_names) + ["(void)"] * (norm.shape[1] - n)
    fig = Figure(figsize=(9 + 0.4 * (len(columns) - n), 8), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    im = ax.imshow(np.nan_to_num(norm), cmap="Blues", vmin=0, vmax=1)
    for i in range(n):
        for j in range(len(columns)):
            if np.isfinite(norm[i, j]) and norm[i, j] >= 0.01:
                ax.text(j, i, f"{round(100 * norm[i, j])}", ha="center", va="center", fontsize=6,
                        color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(columns)), columns, rotation=90, fontsize=8)
    absent = ~np.isfinite(norm).all(axis=1)
    ax.set_yticks(range(n), [f"{name} (absent)" if a else name for name, a in zip(class_names, absent)], fontsize=8)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    ax.set_title("confusion matrix (% of each ground-truth class)")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    return _save(fig, out_png)


def plot_class_iou(ious: ArrayLike, out_png: str | os.PathLike, spec: DatasetSpec | None = None) -> Path:
    """Horizontal bars of per-class IoU in the class colours; NaN (class absent) marked n/a.

    Args:
        ious: (K,) IoU per trainId in [0, 1], NaN where undefined.
        spec: the dataset whose names and colours are drawn (None: Cityscapes).
    """
    v = np.asarray(ious.cpu() if isinstance(ious, torch.Tensor) else ious, dtype=np.float64)
    class_names, palette, _ = _classes(spec)
    n = len(class_names)
    if v.shape != (n,):
        raise ValueError(f"expected ({n},) IoUs, got shape {v.shape}")
    fig = Figure(figsize=(7, 6), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    y = np.arange(n)
    colours = palette / 255
    ax.barh(y, np.nan_to_num(v), color=colours, edgecolor="black", linewidth=0.4)
    for i, value in enumerate(v):
        ax.text((0 if np.isnan(value) else value) + 0.01, i, "n/a" if np.isnan(value) else f"{value:.2f}",
                va="center", fontsize=7)
    mean = float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")
    if np.isfinite(mean):
        ax.axvline(mean, color="grey", linestyle="--", linewidth=1)
    ax.set_yticks(y, class_names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.08)
    ax.set_xlabel("IoU")
    ax.set_title(f"per-class IoU (mIoU {mean:.3f})")
    fig.tight_layout()
    return _save(fig, out_png)


def plot_scores(counts: Any, out_dir: str | os.PathLike, result: dict[str, Any] | None = None) -> None:
    """``confusion.png`` (row-normalised) and ``iou.png`` of :class:`cityseg.metrics.Counts` in ``out_dir``,
    with its table's class names and colours (``result``: its scores, when already computed)."""
    from cityseg import metrics

    table = counts.table or metrics.CITYSCAPES
    result = counts.scores() if result is None else result
    plot_confusion(metrics.train_confusion(counts.conf, table), Path(out_dir) / "confusion.png", table)
    plot_class_iou([c["iou"] for c in result["classes"].values()], Path(out_dir) / "iou.png", table)


def plot_trials(
    points: dict[str, list[tuple[float, float, float | None]]],
    axes: tuple[str, str],
    base: tuple[float | None, ...],
    best: tuple[float, float, str] | None,
    title: str,
    out_png: str | os.PathLike,
) -> Path:
    """A sweep's trials as points: complete ones coloured by val mIoU, pruned ones hollow, failed ones
    crossed; the best trial starred, the base config a plus (a dashed line when it has one value).

    Args:
        points: ``{"complete" | "pruned" | "failed": [(x, y, val mIoU or None), ...]}``.
        axes: the labels of x and y (the searched config keys, or one key and val mIoU).
        base: the base config's (x, y), or (x,): drawn when no value is None.
        best: (x, y, legend label) of the best trial; None when no trial completed.
    """
    fig = Figure(figsize=(6.5, 5), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    if points.get("complete"):
        x, y, v = zip(*points["complete"])
        sc = ax.scatter(x, y, c=v, cmap="viridis", s=60, edgecolors="black", linewidths=0.5, label="complete")
        fig.colorbar(sc, ax=ax, label="val mIoU (best epoch)")
    if best is not None:
        ax.scatter([best[0]], [best[1]], marker="*", s=320, facecolors="none", edgecolors="red", linewidths=1.5,
                   label=best[2])
    if points.get("pruned"):
        x, y, _ = zip(*points["pruned"])
        ax.scatter(x, y, marker="o", s=40, facecolors="none", edgecolors="grey", label="pruned")
    if points.get("failed"):
        x, y, _ = zip(*points["failed"])
        ax.scatter(x, y, marker="x", s=50, color="red", label="failed (non-finite loss)")
    if None not in base:
        label = f"base config ({' / '.join(f'{v:g}' for v in base)})"
        if len(base) == 2:
            ax.scatter([base[0]], [base[1]], marker="P", s=90, color="black", label=label)
        else:
            ax.axvline(base[0], color="black", linestyle="--", linewidth=1, label=label)
    ax.set_xlabel(axes[0])
    ax.set_ylabel(axes[1])
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return _save(fig, out_png)


def save_pyplot(
    draw: Callable[[], Any], out_png: str | os.PathLike, what: str, ignore: tuple[type[Warning], ...] = ()
) -> Path | None:
    """Save the pyplot figure another library draws (``draw()`` returns its axes: Optuna's matplotlib
    plots) at 8x5 inches; None, with a warning naming ``what``, when drawing fails (e.g. importances of
    constant parameters). ``ignore``: warning categories silenced meanwhile. Pyplot's settings are
    restored afterwards (Optuna's plots switch it to their ggplot style for good otherwise)."""
    import matplotlib
    import matplotlib.pyplot as plt

    figures = []
    try:
        with warnings.catch_warnings(), matplotlib.rc_context():
            for category in ignore:
                warnings.simplefilter("ignore", category)
            axes = draw()
            fig = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
            figures.append(fig)
            fig.set_size_inches(8, 5)
            fig.tight_layout()
            with atomic_path(out_png) as tmp:
                fig.savefig(tmp, dpi=110)
        return Path(out_png)
    except (ValueError, RuntimeError, ZeroDivisionError) as exc:
        log.warning(f"no {what} ({exc})")
        return None
    finally:
        for fig in figures:
            plt.close(fig)


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path
