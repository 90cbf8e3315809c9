"""Scoring a folder of label-id prediction PNGs against the ground truth: ``cityseg evaluate --pred-dir``.

Each ground truth ``<frame>_gtFine_labelIds.png`` is matched to the one prediction
``<frame>.png`` or ``<frame>_*.png`` (:func:`cityseg.layout.frame_of_prediction`): on
Cityscapes names this is the official ``evalPixelLevelSemanticLabeling`` matching, and it also
takes other names, such as the numeric stems of a prepared pairs tree. iIoU needs
``*_gtFine_instanceIds.png`` beside every ground truth and is skipped, with a note, when there
are none. Frames are scored by a pool of processes (decoding the PNGs is most of the work, see
:func:`cityseg.data.png.read_map`; :class:`cityseg.processes.WorkerPool`) and their counts summed
in frame order. NumPy only: this
path never imports torch.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cityseg import logs
from cityseg.data.png import read_map
from cityseg.errors import CitysegError
from cityseg.labels import MAX_LABEL_ID
from cityseg.layout import IMAGE_SUFFIX, INSTANCE_SUFFIX, LABEL_IDS_SUFFIX, frame_of_prediction, walk
from cityseg.metrics.counts import Counts, frame_counts
from cityseg.processes import WorkerPool, keep_freed_memory, usable_cores

log = logging.getLogger(__name__)

#: One scoring job: (prediction, labelIds, instanceIds or None, boundary tolerance or None).
Job = tuple[Path, Path, Path | None, int | None]


def evaluate_pred_dir(
    pred_dir: Path, gt_dir: Path, tolerance: int | None, workers: int | None = None
) -> tuple[Counts, float, int]:
    """Score every ground-truth frame under ``gt_dir`` against its prediction under ``pred_dir``.

    Args:
        tolerance: boundary F1 matching distance in pixels; None skips boundary F1.
        workers: processes (None: the usable CPU cores; 0 or 1: this process).

    Returns:
        (summed :class:`cityseg.metrics.counts.Counts`, seconds, number of frames).

    Raises:
        CitysegError: see :func:`find_frames` and :func:`score_frame`.
    """
    start = time.perf_counter()
    frames = find_frames(pred_dir, gt_dir)
    jobs = [(p, g, i, tolerance) for p, g, i in frames]
    workers = min(workers or usable_cores(), len(jobs))
    total = Counts()
    # disable=None: no bar when stderr is not a terminal (logs, benchmarks)
    with tqdm(total=len(jobs), unit="frame", desc="evaluate", disable=logs.bar_disable(), file=sys.stderr) as bar:
        if workers <= 1:  # this process: its malloc settings are the caller's, left as they are
            for job in jobs:
                total.add(score_frame(job))
                bar.update()
        else:
            # In frame order, one frame per task: balanced across processes, and the sums are added
            # in frame order, so repeated runs give identical floats. keep_freed_memory only in the
            # workers, which end with the run.
            what = f"evaluate --pred-dir {pred_dir} --gt-dir {gt_dir}"
            with WorkerPool(workers, what, [__name__], initializer=keep_freed_memory) as pool:
                for counts in pool.map(score_frame, jobs, chunksize=1, describe=lambda job: f"frame {job[1]}"):
                    total.add(counts)
                    bar.update()
    return total, time.perf_counter() - start, len(jobs)


# --- matching -----------------------------------------------------------------------------------


def find_frames(pred_dir: Path, gt_dir: Path) -> list[tuple[Path, Path, Path | None]]:
    """(prediction, labelIds, instanceIds or None) of every ground-truth frame under ``gt_dir``.

    Predictions that match no frame are ignored. instanceIds are None for every frame when no
    frame has one (iIoU is skipped, with a note on stderr).

    Raises:
        CitysegError: a folder is missing, there is no ground truth, two ground truths share a
            frame name, no prediction matches at all, a frame has no prediction or several, or
            some frames have an instanceIds map and others not.
    """
    for folder, flag in ((pred_dir, "--pred-dir"), (gt_dir, "--gt-dir")):
        if not folder.is_dir():
            raise CitysegError(f"{flag} {folder}: folder not found")
    gts = _ground_truth_by_frame(gt_dir)
    preds = _predictions_by_frame(pred_dir, gts)
    if not preds:
        example = next(iter(gts))
        raise CitysegError(
            f"--pred-dir {pred_dir}: no prediction matches a ground-truth frame of --gt-dir {gt_dir}; a frame "
            f"<frame>{LABEL_IDS_SUFFIX} needs the prediction <frame>.png or <frame>_*.png (e.g. {example}{IMAGE_SUFFIX})"
        )
    frames, missing = [], []
    for key, gt in gts.items():
        found = preds.get(key, [])
        if len(found) > 1:
            names = ", ".join(str(p) for p in sorted(found)[:3])
            raise CitysegError(f"{gt}: several predictions under --pred-dir {pred_dir} match {key}.png or "
                               f"{key}_*.png: {names}; keep one per frame")
        if not found:
            missing.append(gt)
        else:
            frames.append((found[0], gt))
    if missing:
        key = missing[0].name[: -len(LABEL_IDS_SUFFIX)]
        raise CitysegError(
            f"{missing[0]}: no prediction {key}.png or {key}_*.png under {pred_dir} ({len(missing)} of {len(gts)} "
            "frames have none); every ground-truth frame needs one"
        )
    return _with_instances(frames, gt_dir)


def _ground_truth_by_frame(gt_dir: Path) -> dict[str, Path]:
    """Frame name -> its ``*_gtFine_labelIds.png`` under ``gt_dir``, in path order."""
    gts: dict[str, Path] = {}
    for gt in sorted(walk(gt_dir, LABEL_IDS_SUFFIX)):
        key = gt.name[: -len(LABEL_IDS_SUFFIX)]
        if key in gts:
            raise CitysegError(f"{gt}: frame {key} also at {gts[key]}; frame names under --gt-dir {gt_dir} must be "
                               "unique (score one split at a time)")
        gts[key] = gt
    if not gts:
        raise CitysegError(f"--gt-dir {gt_dir}: no *{LABEL_IDS_SUFFIX} files found (searched recursively)")
    return gts


def _predictions_by_frame(pred_dir: Path, frames: dict[str, Path]) -> dict[str, list[Path]]:
    """Frame name -> the ``.png`` files under ``pred_dir`` that belong to it."""
    preds: dict[str, list[Path]] = {}
    for path in walk(pred_dir, ".png"):
        key = frame_of_prediction(path.name, frames)
        if key is not None:
            preds.setdefault(key, []).append(path)
    return preds


def _with_instances(frames: list[tuple[Path, Path]], gt_dir: Path) -> list[tuple[Path, Path, Path | None]]:
    """Add the instanceIds map beside each ground truth: all of them, or None for all when there are none."""
    instances = [gt.with_name(gt.name[: -len(LABEL_IDS_SUFFIX)] + INSTANCE_SUFFIX) for _, gt in frames]
    present = [path.is_file() for path in instances]
    if not any(present):
        log.warning(f"no *{INSTANCE_SUFFIX} files beside the ground truth in {gt_dir}: iIoU is not computed")
        return [(pred, gt, None) for pred, gt in frames]
    if not all(present):
        absent = instances[present.index(False)]
        raise CitysegError(f"{absent}: instanceIds map not found ({sum(present)} of {len(frames)} frames have one); "
                           f"iIoU needs one beside every *{LABEL_IDS_SUFFIX}, or none to skip it")
    return [(pred, gt, inst) for (pred, gt), inst in zip(frames, instances, strict=True)]


# --- one frame ----------------------------------------------------------------------------------


def read_id_map(path: Path, limit: int | None, what: str) -> np.ndarray:
    """(H, W) map of a single-channel PNG whose values must lie in ``0..limit`` (None: unchecked).

    Raises:
        CitysegError: missing or unreadable file, several channels, or a value outside the range.
    """
    arr = read_map(path)
    if arr.ndim != 2:
        raise CitysegError(f"{path}: {what} must be a single-channel PNG, this one has {arr.shape[2]} channels")
    if limit is not None:
        high = int(arr.max())
        low = int(arr.min()) if arr.dtype.kind == "i" else 0  # unsigned PNG data cannot be negative
        if low < 0 or high > limit:
            bad = high if high > limit else low
            raise CitysegError(f"{path}: value {bad} is not a valid {what} (valid: 0..{limit})")
    return arr


def score_frame(job: Job) -> Counts:
    """Counts of one frame (runs in a worker process); no iIoU counts when the instanceIds path
    is None. CitysegError names the bad file."""
    pred_path, gt_path, inst_path, tolerance = job
    gt = read_id_map(gt_path, MAX_LABEL_ID, "Cityscapes label id")
    pred = read_id_map(pred_path, MAX_LABEL_ID, "Cityscapes label id")
    if pred.shape != gt.shape:
        raise CitysegError(
            f"{pred_path}: prediction is {pred.shape[1]}x{pred.shape[0]}, its ground truth {gt_path.name} is "
            f"{gt.shape[1]}x{gt.shape[0]} (WxH); predictions must have the ground truth's size"
        )
    inst = None
    if inst_path is not None:
        inst = read_id_map(inst_path, None, "instanceId")  # instance_counts checks the ids it uses
        if inst.shape != gt.shape:
            raise CitysegError(f"{inst_path}: instanceIds map is {inst.shape[1]}x{inst.shape[0]}, {gt_path.name} is "
                               f"{gt.shape[1]}x{gt.shape[0]}")
    try:
        return frame_counts(pred, gt, inst, tolerance)
    except ValueError as exc:  # the only one frame_counts raises: an instance id that names no label
        raise CitysegError(f"{inst_path}: {exc}") from None

