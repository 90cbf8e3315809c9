"""Class pixel frequencies of a dataset's splits and the class weights they suggest (``cityseg stats``).

Counting is one ``numpy.bincount`` per label map. Cityscapes-layout folders are read through
:mod:`cityseg.layout` and the dataset reader (labelIds > labelTrainIds > colour masks, as training
reads them); any other dataset through its description's ``labels`` pattern
(:mod:`cityseg.datasets`): 8-bit grey files hold raw ids (mapped by ``id_to_train_id``), RGB files
colours (exact match with the class and void colours; any other colour is ignored).

Weights, from the class frequencies ``p_c`` (pixels of class ``c`` over all labelled pixels):

* ``inverse``: ``1 / (N p_c)`` (N classes; 1 for every class of a balanced set);
* ``median``: median-frequency balancing (Eigen & Fergus, ICCV 2015): ``median(f) / f_c`` with
  ``f_c`` the pixels of ``c`` over the labelled pixels of the frames where ``c`` occurs;
* ``enet``: ``1 / ln(1.02 + p_c)`` (Paszke et al., ENet, 2016).

A class that never occurs gets weight 0 from ``inverse`` and ``median`` (no pixel to weigh).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from cityseg.datasets import IGNORE_INDEX, DatasetSpec, check_patterns, find_files, load_dataset
from cityseg.errors import CitysegError
from cityseg.utils import atomic_path

METHODS = ("median", "inverse", "enet")
ENET_C = 1.02
WEIGHTS_NAME, STATS_NAME, CHART_NAME = "class_weights.yaml", "stats.yaml", "class_frequencies.png"


@dataclass
class SplitCounts:
    """Pixel counts of one split: ``pixels[c]`` of train id c, ``ignored`` (void and unknown), and
    ``frame_pixels[c]``: the labelled pixels of the frames where class c occurs."""

    split: str
    num_classes: int
    frames: int = 0
    pixels: np.ndarray = field(default=None)  # type: ignore[assignment]
    frame_pixels: np.ndarray = field(default=None)  # type: ignore[assignment]
    ignored: int = 0

    def __post_init__(self) -> None:
        if self.pixels is None:
            self.pixels = np.zeros(self.num_classes, dtype=np.int64)
        if self.frame_pixels is None:
            self.frame_pixels = np.zeros(self.num_classes, dtype=np.int64)

    def add(self, train_ids: np.ndarray) -> None:
        """Count one (H, W) uint8 train-id map."""
        counts = np.bincount(np.asarray(train_ids, dtype=np.uint8).ravel(), minlength=256)
        own = counts[: self.num_classes].astype(np.int64)
        labelled = int(own.sum())
        self.pixels += own
        self.frame_pixels[own > 0] += labelled
        self.ignored += int(train_ids.size) - labelled
        self.frames += 1

    @property
    def labelled(self) -> int:
        return int(self.pixels.sum())

    @property
    def frequency(self) -> np.ndarray:
        """(N,) share of each class among the labelled pixels (zeros when none is labelled)."""
        return self.pixels / self.labelled if self.labelled else np.zeros(self.num_classes)


def pixel_shares(train_ids: np.ndarray, num_classes: int) -> np.ndarray:
    """(num_classes,) share of each class among all the pixels of one (H, W) train-id map, ignored ones
    included in the whole (a prediction's: ``cityseg predict``'s classes.csv, ``cityseg serve``'s JSON);
    zeros for an empty map."""
    counts = np.bincount(np.asarray(train_ids, dtype=np.uint8).ravel(), minlength=256)[:num_classes]
    return counts / train_ids.size if train_ids.size else np.zeros(num_classes)


def class_weights(counts: SplitCounts) -> dict[str, np.ndarray]:
    """The three weightings (module docstring) of ``counts``: method -> (N,) float64."""
    if not counts.labelled:
        raise CitysegError(f"split {counts.split}: no labelled pixel in {counts.frames} frames; "
                           "no class weights can be computed (check the dataset description)")
    n, p, present = counts.num_classes, counts.frequency, counts.pixels > 0
    inverse = np.zeros(n)
    inverse[present] = 1.0 / (n * p[present])
    f = np.zeros(n)
    f[present] = counts.pixels[present] / counts.frame_pixels[present]
    median = np.zeros(n)
    median[present] = np.median(f[present]) / f[present]
    enet = 1.0 / np.log(ENET_C + p)
    return {"median": median, "inverse": inverse, "enet": enet}


# --- reading ----------------------------------------------------------------------------------


def _is_cityscapes(spec: DatasetSpec) -> bool:
    return spec == load_dataset("cityscapes")


def read_train_ids(spec: DatasetSpec, path: str | os.PathLike) -> np.ndarray:
    """A label file of a described dataset -> (H, W) uint8 train ids: single-channel files hold raw
    ids (through ``spec.id_to_train_id``), RGB(A) files colours (exact match; other colours ignored)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("RGB", "RGBA"):
                return _colours_to_train_ids(spec, np.asarray(img.convert("RGB")))
            if img.mode in ("I;16", "I;16B", "I"):  # 16-bit grey: ids above 255 are no one's
                ids = np.asarray(img).astype(np.int64)
                spec.check_own_ids(ids, path)
                out = np.full(ids.shape, IGNORE_INDEX, dtype=np.uint8)
                small = ids <= 255
                out[small] = spec.id_to_train_id[ids[small]]
                return out
            ids = np.asarray(img if img.mode in ("L", "P") else img.convert("L"))
    except (OSError, UnidentifiedImageError) as exc:
        raise CitysegError(f"{path}: cannot read the label image ({exc})") from None
    spec.check_own_ids(ids, path)
    return spec.id_to_train_id[ids]


def _colours_to_train_ids(spec: DatasetSpec, rgb: np.ndarray) -> np.ndarray:
    table = spec.color_to_train_id()
    keys = np.array([(r << 16) | (g << 8) | b for r, g, b in table], dtype=np.int64)
    values = np.array(list(table.values()), dtype=np.uint8)
    order = np.argsort(keys)
    keys, values = keys[order], values[order]
    code = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    at = np.clip(np.searchsorted(keys, code), 0, len(keys) - 1)
    return np.where(keys[at] == code, values[at], IGNORE_INDEX).astype(np.uint8)


def _spread(items: list[Any], limit: int | None) -> list[Any]:
    """At most ``limit`` of ``items``, evenly spread over the list (all of them when None)."""
    if limit is None or limit >= len(items):
        return items
    return [items[i] for i in np.linspace(0, len(items) - 1, limit).round().astype(int)]


def label_readers(spec: DatasetSpec, root: str | os.PathLike, split: str,
                  limit: int | None = None) -> list[Callable[[], np.ndarray]]:
    """One function per frame of ``split`` (at most ``limit``, evenly spread) returning its train ids."""
    if _is_cityscapes(spec):
        from cityseg.data.dataset import read_train_ids as read_cityscapes
        from cityseg.layout import find_images, find_label

        images = _spread(find_images(root, split), limit)
        return [lambda image=image: read_cityscapes(find_label(image)).numpy() for image in images]
    check_patterns(spec, root, split)
    files = _spread(list(find_files(spec, root, split).values()), limit)
    return [lambda path=path: read_train_ids(spec, path) for path in files]


def count_split(spec: DatasetSpec, root: str | os.PathLike, split: str, limit: int | None = None,
                progress: bool | None = None, readers: list[Callable[[], np.ndarray]] | None = None) -> SplitCounts:
    """Count the train-id pixels of ``split`` under ``root`` (``readers``: :func:`label_readers`'s, when made already)."""
    from tqdm import tqdm

    from cityseg.logs import bar_disable

    counts = SplitCounts(split, spec.num_classes)
    if readers is None:
        readers = label_readers(spec, root, split, limit)
    for read in tqdm(readers, desc=f"counting {split}", unit="frame", leave=False,
                     disable=True if progress is False else bar_disable()):
        counts.add(read())
    return counts


# --- output -----------------------------------------------------------------------------------


def _round(values: np.ndarray) -> list[float]:
    return [float(f"{v:.6g}") for v in values]


def weights_yaml(spec: DatasetSpec, counts: SplitCounts, method: str, weights: dict[str, np.ndarray]) -> str:
    """The ``loss: class_weights:`` snippet of ``method``, the other methods as comments."""
    def flow(values: np.ndarray) -> str:
        return "[" + ", ".join(repr(v) for v in _round(values)) + "]"

    lines = [
        f"# class weights of {spec.name}, split {counts.split} ({counts.frames} frames, "
        f"{counts.labelled:,} labelled pixels): {method} (cityseg stats)",
        f"# train ids 0..{spec.num_classes - 1}: {', '.join(spec.class_names)}",
        *[f"# {m}: {flow(w)}" for m, w in weights.items() if m != method],
        "loss:",
        f"  class_weights: {flow(weights[method])}",
    ]
    return "\n".join(lines) + "\n"


def stats_dict(spec: DatasetSpec, splits: list[SplitCounts], weights: dict[str, np.ndarray]) -> dict[str, Any]:
    """Everything counted, for ``stats.yaml``."""
    return {
        "dataset": spec.to_dict(),
        "splits": {
            c.split: {
                "frames": c.frames, "labelled_pixels": c.labelled, "ignored_pixels": c.ignored,
                "pixels": {name: int(v) for name, v in zip(spec.class_names, c.pixels)},
                "frequency": {name: float(f"{v:.6g}") for name, v in zip(spec.class_names, c.frequency)},
            }
            for c in splits
        },
        "weights_from": splits[0].split,
        "weights": {m: dict(zip(spec.class_names, _round(w))) for m, w in weights.items()},
    }


def table(spec: DatasetSpec, splits: list[SplitCounts], weights: dict[str, np.ndarray]) -> str:
    """The stdout table: class, % of labelled pixels per split, the three weights."""
    width = max(8, *(len(n) for n in spec.class_names))
    head = f"{'id':>3}  {'class':<{width}}" + "".join(f"  {c.split[:9] + ' %':>11}" for c in splits)
    head += "".join(f"  {m:>8}" for m in weights)
    rows = [head]
    for i, name in enumerate(spec.class_names):
        row = f"{i:>3}  {name:<{width}}" + "".join(f"  {100 * c.frequency[i]:>11.3f}" for c in splits)
        rows.append(row + "".join(f"  {w[i]:>8.4f}" for w in weights.values()))
    foot = f"{'':>3}  {'ignored':<{width}}" + "".join(
        f"  {100 * c.ignored / max(1, c.ignored + c.labelled):>11.3f}" for c in splits)
    rows.append(foot + f"   (% of all pixels; weights from {splits[0].split})")
    return "\n".join(rows)


def plot(spec: DatasetSpec, splits: list[SplitCounts], weights: np.ndarray, method: str,
         out_png: str | os.PathLike) -> Path:
    """Bars of the class frequencies (log scale, one bar per split) and of the chosen weights, in the class colours."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = spec.num_classes
    fig = Figure(figsize=(10, max(3.0, 0.3 * n + 1.2)), dpi=110)
    FigureCanvasAgg(fig)
    ax_f, ax_w = fig.subplots(1, 2, sharey=True)
    y = np.arange(n)
    colours = spec.palette / 255
    height = 0.8 / len(splits)
    for k, c in enumerate(splits):
        freq = np.where(c.frequency > 0, 100 * c.frequency, np.nan)
        ax_f.barh(y - 0.4 + height * (k + 0.5), np.nan_to_num(freq), height=height, color=colours,
                  edgecolor="black", linewidth=0.4, alpha=1.0 if k == 0 else 0.5, label=c.split)
    if any(c.labelled for c in splits):
        ax_f.set_xscale("log")
    ax_f.set_xlabel("% of labelled pixels" + (" (bars: " + ", ".join(c.split for c in splits) + ")" if len(splits) > 1 else ""))
    ax_f.set_title(f"{spec.name}: class frequencies")
    ax_f.set_yticks(y, spec.class_names, fontsize=8)
    ax_f.invert_yaxis()
    ax_w.barh(y, weights, color=colours, edgecolor="black", linewidth=0.4)
    for i, v in enumerate(weights):
        ax_w.text(v, i, f" {v:.3g}", va="center", fontsize=7)
    ax_w.set_xlabel(f"{method} weight")
    ax_w.set_title(f"class weights ({splits[0].split})")
    ax_w.set_xlim(0, max(1e-9, float(np.max(weights))) * 1.2)
    fig.tight_layout()
    path = Path(out_png)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def write_outputs(spec: DatasetSpec, splits: list[SplitCounts], method: str, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``class_weights.yaml`` (the snippet), ``stats.yaml`` and the chart into ``out_dir``."""
    import yaml

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = class_weights(splits[0])
    paths = {"weights": out_dir / WEIGHTS_NAME, "stats": out_dir / STATS_NAME, "chart": out_dir / CHART_NAME}
    with atomic_path(paths["weights"]) as tmp:
        tmp.write_text(weights_yaml(spec, splits[0], method, weights), encoding="utf-8")
    with atomic_path(paths["stats"]) as tmp:
        tmp.write_text(yaml.safe_dump(stats_dict(spec, splits, weights), sort_keys=False, allow_unicode=True,
                                      default_flow_style=None),
                       encoding="utf-8")
    plot(spec, splits, weights[method], method, paths["chart"])
    return paths


def check_limit(limit: int | None) -> None:
    if limit is not None and limit < 1:
        raise CitysegError(f"--limit {limit}: count at least 1 frame (or leave --limit out for all)")

