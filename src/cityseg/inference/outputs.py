"""The files ``cityseg predict`` reads and writes.

For each input ``<stem>.png`` (any image type), at the input's size::

    OUT/trainIds/<stem>.png   trainIds (0-18 for Cityscapes), uint8
    OUT/labelIds/<stem>.png   label ids: Cityscapes' official ones, ready for the benchmark server and
                              ``evaluate --pred-dir``; another dataset's first id of each class
    OUT/color/<stem>.png      the dataset's palette (Cityscapes: the official one)
    OUT/overlay/<stem>.png    palette colours blended over the photo
    OUT/panel/<stem>.png      with a ground-truth folder: image | ground truth | prediction | errors

Videos (:data:`~cityseg.inference.video_io.VIDEO_EXTENSIONS`) are found beside the images and
written by :mod:`cityseg.inference.video`.

A bad input (missing, unreadable, a name another input already uses) is reported in one line
on stderr and skipped, and the others are still done; the functions that loop return how many
failed. A frame without ground truth gets its four maps and a one-line note instead of a panel
(not a failure); a ground truth that cannot be read or has another size is a failure.
"""

from __future__ import annotations

import glob
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cityseg import layout, logs
from cityseg.data.dataset import read_train_ids
from cityseg.datasets import DatasetSpec, load_dataset
from cityseg.errors import CitysegError
from cityseg.inference.predict import Predictor
from cityseg.inference.video_io import VIDEO_EXTENSIONS, is_video, probe
from cityseg.utils import read_image, save_png
from cityseg.viz import overlay, save_panel

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm")


# --- inputs -------------------------------------------------------------------------------------


def collect_inputs(inputs: list[str], exclude: str | Path | None = None) -> tuple[list[Path], list[str]]:
    """Expand files, folders and globs -> (image and video paths in order, one message per bad input).

    A path found twice is kept once; two different files with the same stem would write the same
    outputs, so the second is refused. Folders are searched recursively, skipping ``exclude``
    (the output folder, which may lie inside an input folder).
    """
    skip = Path(exclude).resolve() if exclude is not None else None
    files: list[Path] = []
    problems: list[str] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(
                p for p in path.rglob("*")
                if p.suffix.lower() in IMAGE_EXTENSIONS + VIDEO_EXTENSIONS and p.is_file()
                and not (skip and p.resolve().is_relative_to(skip))
            )
            if not found:
                problems.append(f"{path}: no images ({', '.join(IMAGE_EXTENSIONS)}) or videos in this folder")
            files += found
        elif path.is_file():
            files.append(path)
        elif glob.has_magic(item):
            found = sorted(Path(p) for p in glob.glob(item, recursive=True) if Path(p).is_file())
            if not found:
                problems.append(f"{item}: no file matches this pattern")
            files += found
        else:
            problems.append(f"{path}: no such file or folder")
    unique: dict[str, Path] = {}
    for path in files:
        key = path.stem
        if key in unique and unique[key].resolve() != path.resolve():
            problems.append(f"{path}: same name as {unique[key]}; its outputs would overwrite that one's, skipped")
        else:
            unique.setdefault(key, path)
    return list(unique.values()), problems


def image_sizes(paths: list[Path]) -> list[tuple[int, int]]:
    """(width, height) of each image that PIL can open, and of each frame of each video (its frame count
    and size from the stream's header), read from the file headers only (a file that cannot be opened
    is left out here and reported when it is segmented). For choosing the inference path by the work
    per input shape (:func:`cityseg.inference.passes.passes_per_shape`)."""
    from PIL import Image

    sizes = []
    for path in paths:
        if is_video(path):
            try:
                info = probe(path)
            except CitysegError:
                continue
            sizes += [(info.width, info.height)] * (info.frames or 1)
            continue
        try:
            with Image.open(path) as img:
                sizes.append(img.size)
        except (OSError, ValueError, Image.DecompressionBombError):
            continue
    return sizes


def index_ground_truth(root: Path) -> dict[str, Path]:
    """Frame name -> its best ground-truth file under ``root``, searched recursively (labelIds >
    labelTrainIds > color, :data:`cityseg.layout.LABEL_SUFFIXES`)."""
    if not root.is_dir():
        raise CitysegError(f"--gt {root}: no such folder")
    index: dict[str, Path] = {}
    for suffix in reversed(layout.LABEL_SUFFIXES.values()):  # later (preferred) suffixes overwrite earlier ones
        for path in root.rglob(f"*{suffix}"):
            index[path.name[: -len(suffix)]] = path
    if not index:
        raise CitysegError(f"--gt {root}: no *{layout.LABEL_IDS_SUFFIX} (or labelTrainIds/color) files in it")
    return index


# --- the loop -----------------------------------------------------------------------------------


def predict_files(
    predictor: Predictor, files: list[Path], out: Path, gt_index: dict[str, Path] | None, batch_size: int
) -> int:
    """Predict and write every file, ``batch_size`` at a time; returns the number that failed."""
    failed = 0
    with tqdm(total=len(files), unit="img", desc="predict", file=sys.stderr, dynamic_ncols=True,
              disable=logs.bar_disable()) as bar:
        for first in range(0, len(files), batch_size):
            batch = files[first : first + batch_size]
            images, paths = [], []
            for path in batch:
                image = _read(path, bar)
                if image is None:
                    failed += 1
                else:
                    images.append(image)
                    paths.append(path)
            preds = predictor.predict_batch(images) if images else []
            for path, image, pred in zip(paths, images, preds, strict=True):
                failed += not write_outputs(out, path.stem, image, pred, gt_index, bar, predictor.spec)
            bar.update(len(batch))
    return failed


def _read(path: Path, bar: tqdm) -> np.ndarray | None:
    try:
        return read_image(path, "RGB")
    except CitysegError as exc:
        bar.write(f"cityseg predict: {exc}", file=sys.stderr)
        return None


def write_outputs(
    out: Path, stem: str, image: np.ndarray, pred: np.ndarray, gt_index: dict[str, Path] | None, bar: tqdm,
    spec: DatasetSpec | None = None,
) -> bool:
    """Write the four maps of (H, W) uint8 trainIds (and the panel) in the ids and colours of ``spec``
    (None: Cityscapes); report a failure in one line and return False."""
    spec = spec or load_dataset("cityscapes")
    try:
        save_png(pred, out / "trainIds" / f"{stem}.png")
        save_png(spec.train_ids_to_ids(pred), out / "labelIds" / f"{stem}.png")
        save_png(spec.colorize(pred), out / "color" / f"{stem}.png")
        save_png(overlay(image, pred, normalized=False, spec=spec), out / "overlay" / f"{stem}.png")
        if gt_index is not None:
            write_panel(out, stem, image, pred, gt_index, spec)
    except CitysegError as exc:
        bar.write(f"cityseg predict: {exc}", file=sys.stderr)
        return False
    except OSError as exc:
        bar.write(f"cityseg predict: {out}: cannot write the outputs of {stem} ({exc.strerror or exc})", file=sys.stderr)
        return False
    return True


def write_panel(out: Path, stem: str, image: np.ndarray, pred: np.ndarray, gt_index: dict[str, Path],
                spec: DatasetSpec | None = None) -> None:
    """OUT/panel/<stem>.png: image | ground truth | prediction | errors.

    A frame with no ground truth in ``gt_index`` is noted on stderr and skipped; CitysegError if
    its ground truth is unreadable or of another size.
    """
    key = layout.frame_of_stem(stem)
    if key not in gt_index:
        tqdm.write(f"cityseg predict: note: no ground truth {key}_gtFine_*.png under --gt; no panel for {stem}",
                   file=sys.stderr)
        return
    gt = read_train_ids(gt_index[key], spec).numpy()
    if gt.shape != pred.shape:
        raise CitysegError(
            f"{gt_index[key]}: ground truth is {gt.shape[1]}x{gt.shape[0]}, the image {pred.shape[1]}x{pred.shape[0]} "
            "(WxH); panel not written"
        )
    save_panel(out / "panel" / f"{stem}.png", image, gt, pred, names=[key], normalized=False, spec=spec)
