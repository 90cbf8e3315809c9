"""Scoring a checkpoint on one split of a Cityscapes-layout folder: ``cityseg evaluate --checkpoint``,
and training's closing score of its best checkpoint (:func:`score_best`).

The checkpoint is loaded by :meth:`cityseg.inference.predict.Predictor.from_checkpoint`, the one
loader, and runs as its ``eval`` section says (whole image or sliding window, multi-scale and flip
test-time augmentation, changed by the command line's choices) on the path its ``--precision`` and
``--runtime`` choose; it is scored by the
:class:`~cityseg.metrics.evaluator.Evaluator` training validates with, on the folder
:func:`cityseg.data.synthetic.data_root` picks for the config, as training does: a checkpoint
scored on its own run's data gives the val mIoU that training logged, and the data is only read.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from cityseg import layout, logs, metrics
from cityseg.config import Config
from cityseg.data.dataset import CityscapesDataset
from cityseg.data.synthetic import data_root
from cityseg.data.transforms import build_transforms
from cityseg.datasets import DatasetSpec, load_dataset
from cityseg.engine import distributed as D
from cityseg.engine.build import adopt_dataset
from cityseg.engine.runlog import EVAL_FILE, RunLog, nan_to_zero
from cityseg.inference.options import InferenceChoices
from cityseg.inference.predict import Predictor
from cityseg.metrics.evaluator import Evaluator
from cityseg.utils import save_png

log = logging.getLogger(__name__)


def evaluate_checkpoint(
    path: str | Path,
    device: str = "auto",
    overrides: Sequence[str] = (),
    *,
    data: str | None = None,
    split: str | None = None,
    choices: InferenceChoices | None = None,
    workers: int | None = None,
    boundary_tolerance: int | None = None,
    save_pred: str | Path | None = None,
    dataset: str | None = None,
    precision: str = "fp32",
    runtime: str = "torch",
    calibration: str | Path | None = None,
    batch_size: int = 1,
) -> tuple[metrics.Counts, float, int]:
    """Load a checkpoint as a :class:`~cityseg.inference.predict.Predictor` and :func:`evaluate` it.

    Args:
        path: a cityseg checkpoint, or ``hf:REPO_OR_DIR`` (a transformers model).
        device: auto | cpu | cuda.
        overrides: ``section.key=value`` changes of the checkpoint's config.
        data, split: the folder and split (default: the config's ``data.root`` or the
            synthetic default data, and ``data.val_split``).
        choices: changes to the checkpoint's ``eval`` section (:mod:`cityseg.inference.options`);
            None keeps it, as training's closing score does.
        workers: DataLoader workers (default: ``data.workers``).
        boundary_tolerance: boundary F1 distance in pixels (default: ``eval.boundary_tolerance``); < 0 skips it.
        save_pred: also write label-id PNGs there (:func:`cityseg.layout.prediction_path`).
        dataset: the data's dataset (name or description file) when it is not the checkpoint's;
            it must have the classes the model predicts (:func:`cityseg.checkpoint.with_dataset`).
        precision, runtime, calibration, batch_size: as for ``cityseg predict``
            (:meth:`~cityseg.inference.predict.Predictor.from_model`); the default, eager fp32, gives the
            scores training logs (without amp). ``"auto"`` chooses by the split's work as predict does.

    Returns:
        (summed :class:`cityseg.metrics.Counts`, seconds, number of frames); score them with
        ``counts.scores()``.
    """
    scored: dict[str, Any] = {}

    def frame_sizes(cfg: Config) -> list[tuple[int, int]]:
        # the split to score, from the checkpoint's config: its frames are the work that picks the path
        if data:
            cfg.data.root = str(data)
        if split:
            cfg.data.val_split = split
        if workers is not None:
            cfg.data.workers = workers
        if boundary_tolerance is not None:
            cfg.eval.boundary_tolerance = boundary_tolerance
        scored["split"] = _dataset(cfg)
        frames = scored["split"][0]
        if len(frames) == 0:
            return []
        height, width = frames[0]["image"].shape[-2:]  # Cityscapes splits have one size; else compiles per size
        return [(width, height)] * len(frames)

    predictor = Predictor.from_checkpoint(path, device, precision, runtime, overrides=overrides, dataset=dataset,
                                          choices=choices, sizes=frame_sizes, calibration=calibration,
                                          batch_size=batch_size)
    log.info(f"evaluate: {predictor.describe_inference()}; {predictor.describe()}")
    dataset_, with_instances = scored["split"]
    return evaluate(predictor, predictor.config, dataset_, with_instances, Path(save_pred) if save_pred else None)


def evaluate(
    predictor: Predictor,
    cfg: Config,
    dataset: CityscapesDataset,
    with_instances: bool,
    save_pred: Path | None = None,
) -> tuple[metrics.Counts, float, int]:
    """Score ``predictor`` on ``dataset`` (the ``data.val_split`` of ``cfg``'s data, :func:`_dataset`)
    with the Evaluator training validates with.

    iIoU is scored when ``with_instances``; boundary F1 unless ``eval.boundary_tolerance`` is
    negative. Predictions at another size than the label (``data.val_size``) are resized bilinearly
    to it before the argmax.

    Returns:
        (summed :class:`cityseg.metrics.Counts`, seconds, number of frames).
    """
    spec = dataset.spec
    device = predictor.device
    loader = DataLoader(dataset, batch_size=1, num_workers=cfg.data.workers)
    tolerance = cfg.eval.boundary_tolerance
    evaluator = Evaluator(spec.num_classes, device, boundary_tolerance=None if tolerance < 0 else tolerance,
                          instances=with_instances, table=metrics.table_for(spec))
    start = time.perf_counter()
    # disable=None: no bar when stderr is not a terminal (logs, benchmarks)
    bar = tqdm(total=len(dataset), unit="frame", desc="evaluate", disable=logs.bar_disable(), file=sys.stderr)
    with torch.inference_mode(), bar:
        for index, item in enumerate(loader):
            target = item["mask"].to(device)
            probs = predictor.probabilities_of(item["image"])
            if probs.shape[-2:] != target.shape[-2:]:  # data.val_size: scored at the label's size
                probs = F.interpolate(probs.float(), size=target.shape[-2:], mode="bilinear", align_corners=False)
            pred = probs.argmax(1)
            instance_ids = item["instance_ids"].to(device) if "instance_ids" in item else None
            evaluator.update(pred, target, instance_ids)
            if save_pred is not None:
                save_prediction(pred[0], save_pred, dataset.name(index), spec)
            bar.update()
    evaluator.reduce()
    return evaluator.counts(), time.perf_counter() - start, len(dataset)


def score_best(cfg: Config, out: Path, root: Path, dev: torch.device, log: RunLog) -> dict[str, Any]:
    """Score a finished run's best checkpoint once as its config's ``eval`` section infers (multi-scale,
    flip, sliding) when that is more than validation's one whole-image pass; ``{}`` otherwise.

    Writes ``OUT/`` :data:`~cityseg.engine.runlog.EVAL_FILE` (as ``cityseg evaluate --json``) and returns
    ``{"best_miou_eval": ...}``: the figure ``cityseg evaluate --checkpoint`` and ``cityseg predict`` give
    for that checkpoint, while the per-epoch val mIoU (which picks the best checkpoint) stays one cheap
    pass. ``root`` is the run's data folder, ``log`` the run's (the lines go into its ``train.log``).
    """
    best = out / "checkpoints" / "best.pt"
    if cfg.eval.single_pass() or not best.is_file() or not D.is_main_process():
        return {}
    recipe = f"eval.scales {','.join(f'{s:g}' for s in cfg.eval.scales)}{' + flip' if cfg.eval.flip else ''}"
    if D.is_dist():  # the Evaluator would wait for the other processes' counts
        log.info(f"score the best checkpoint with its {recipe}: cityseg evaluate --checkpoint {best}")
        return {}
    counts, seconds, frames = evaluate_checkpoint(best, dev.type, data=str(root))
    result = counts.scores()
    metrics.write_json(counts, out / EVAL_FILE, result)
    log.info(f"best checkpoint with its {recipe} ({cfg.eval.mode}): val mIoU {nan_to_zero(result['miou']):.4f}, "
             f"pixel accuracy {result['pixel_accuracy']:.3f}, mean class accuracy "
             f"{nan_to_zero(result['mean_class_accuracy']):.3f} ({frames} frames, {seconds:.0f} s; "
             f"{out / EVAL_FILE})")
    return {"best_miou_eval": nan_to_zero(result["miou"])}


def _dataset(cfg: Config) -> tuple[CityscapesDataset, bool]:
    """(the split as a CityscapesDataset, whether it has instanceIds): iIoU when every frame has one."""
    root = data_root(cfg.data)
    _, spec = adopt_dataset(cfg, root)
    # CityscapesDataset names any frame that lacks an instanceIds map when asked for instances
    scores_instances = bool(metrics.table_for(spec).instance_classes)  # the official table's iIoU
    with_instances = scores_instances and layout.has_instances(root, cfg.data.val_split)
    if not with_instances and scores_instances:
        log.warning(f"no *{layout.INSTANCE_SUFFIX} files in {root}: iIoU is not computed")
    transform = build_transforms(cfg.data, train=False)
    dataset = CityscapesDataset(root, cfg.data.val_split, transform=transform, with_instances=with_instances,
                                spec=spec)
    return dataset, with_instances


def save_prediction(pred: torch.Tensor, out_dir: Path, name: str, spec: DatasetSpec | None = None) -> None:
    """Write (H, W) trainIds as the label ids of ``spec`` (None: Cityscapes, whose are the official
    ones) to :func:`cityseg.layout.prediction_path`."""
    spec = spec or load_dataset("cityscapes")
    save_png(spec.train_ids_to_ids(pred.to("cpu").numpy().astype("uint8")), layout.prediction_path(out_dir, name))
