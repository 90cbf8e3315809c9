"""Scoring a checkpoint on one split of a Cityscapes-layout folder: ``cityseg evaluate --checkpoint``.

The model runs as ``cfg.eval`` says (whole image or sliding window, multi-scale and flip
test-time augmentation, :func:`cityseg.inference.predict.predict_logits`) and is scored by the
:class:`~cityseg.engine.evaluator.Evaluator` training validates with, on the folder
:func:`cityseg.data.synthetic.data_root` picks for the config, as training does: a checkpoint
scored on its own run's data gives the val mIoU that training logged, and the data is only read.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from cityseg import layout, logs, metrics
from cityseg.checkpoint import load_model, with_dataset
from cityseg.config import Config, apply_overrides, config_from_dict
from cityseg.data.dataset import CityscapesDataset
from cityseg.data.synthetic import data_root
from cityseg.data.transforms import build_transforms
from cityseg.device import resolve_device
from cityseg.engine.evaluator import Evaluator
from cityseg.errors import CitysegError
from cityseg.inference.predict import eval_options, passes_per_shape, predict_logits
from cityseg.inference.runtime import build_runner, path_reason, select_path
from cityseg.datasets import DatasetSpec
from cityseg.engine.build import adopt_dataset
from cityseg.labels import train_ids_to_label_ids
from cityseg.utils import parse_scales, parse_size, save_png

log = logging.getLogger(__name__)


def evaluate_checkpoint(
    path: str | Path,
    device: str = "auto",
    overrides: Sequence[str] = (),
    *,
    data: str | None = None,
    split: str | None = None,
    mode: str | None = None,
    crop: str | None = None,
    stride: str | None = None,
    scales: str | None = None,
    flip: bool = False,
    workers: int | None = None,
    boundary_tolerance: int | None = None,
    save_pred: str | Path | None = None,
    dataset: str | None = None,
    precision: str = "fp32",
    runtime: str = "torch",
) -> tuple[metrics.Counts, float, int]:
    """Load a checkpoint and :func:`evaluate` it with its config, changed by the options.

    Args:
        path: a cityseg checkpoint, or ``hf:REPO_OR_DIR`` (a transformers model).
        device: auto | cpu | cuda.
        overrides: ``section.key=value`` changes of the checkpoint's config.
        data, split: the folder and split (default: the config's ``data.root`` or the
            synthetic default data, and ``data.val_split``).
        mode, crop, stride, scales, flip: inference options as the command line spells them
            (``"whole"``, ``"1024x512"``, ``"0.75,1,1.25"``); None keeps the config's ``eval`` values.
        workers: DataLoader workers (default: ``data.workers``).
        boundary_tolerance: boundary F1 distance in pixels (default: ``eval.boundary_tolerance``); < 0 skips it.
        save_pred: also write label-id PNGs there (:func:`cityseg.layout.prediction_path`).
        dataset: the data's dataset (name or description file) when it is not the checkpoint's;
            it must have the classes the model predicts (:func:`cityseg.checkpoint.with_dataset`).
        precision, runtime: the inference path (:func:`fast_model`); the default, eager fp32 NCHW
            torch, gives the exact scores. ``"auto"`` chooses by the work as ``cityseg predict`` does.

    Returns:
        (summed :class:`cityseg.metrics.Counts`, seconds, number of frames); score them with
        ``counts.scores(metrics.table_for(cfg.spec()))`` (:func:`evaluate` logs which).
    """
    dev = resolve_device(device)
    model, cfg = load_model(path, dev, dataset)
    cfg = with_dataset(cfg, dataset, path)
    if overrides:
        cfg = config_from_dict(apply_overrides(cfg.to_dict(), list(overrides)), name=cfg.name)
    if mode:
        cfg.eval.mode = mode
    if crop:
        parse_size(crop, "--crop")
        cfg.eval.crop_size = crop
    if stride:
        parse_size(stride, "--stride")
        cfg.eval.stride = stride
    if scales:
        cfg.eval.scales = parse_scales(scales)
    if flip:
        cfg.eval.flip = True
    if data:
        cfg.data.root = str(data)
    if split:
        cfg.data.val_split = split
    if workers is not None:
        cfg.data.workers = workers
    if boundary_tolerance is not None:
        cfg.eval.boundary_tolerance = boundary_tolerance
    return evaluate(model, cfg, dev, Path(save_pred) if save_pred else None, precision, runtime)


#: ``evaluate --precision/--runtime`` choices: torch paths only, since the Evaluator's loader
#: gives ImageNet-normalised float images (score int8 or onnxruntime output with ``--pred-dir``).
PRECISIONS, RUNTIMES = ("fp32", "auto", "bf16"), ("torch", "auto", "compile")


def fast_model(
    model: nn.Module, dataset: CityscapesDataset, infer: dict, device: torch.device, precision: str, runtime: str
) -> nn.Module:
    """``model`` as it is for eager fp32 torch (the exact scores, what training logs without amp),
    else a runner (:func:`cityseg.inference.runtime.build_runner`) on the path ``precision`` and
    ``runtime`` select for this split's work: its frames times the passes ``infer`` (the config's
    :func:`~cityseg.inference.predict.eval_options`) makes per frame
    (:func:`cityseg.inference.predict.passes_per_shape`), taking every frame to have the first
    frame's size (true of Cityscapes splits; a split of mixed sizes compiles once per size).
    ``"auto"`` is eager bf16 where the hardware has it natively (0.002-0.03 points of mIoU from
    fp32 on trained checkpoints, BENCHMARKS.md), compiled from ~60 passes of one shape.
    """
    if precision not in PRECISIONS or runtime not in RUNTIMES:
        raise CitysegError(f"evaluate --precision {precision} --runtime {runtime}: valid precisions "
                           f"{', '.join(PRECISIONS)}, runtimes {', '.join(RUNTIMES)}")
    if (precision, runtime) == ("fp32", "torch") or len(dataset) == 0:
        return model
    height, width = dataset[0]["image"].shape[-2:]
    work = max(passes_per_shape([(width, height)] * len(dataset), **infer).values())
    path = select_path(device, precision, runtime, work)
    if path == "onnxruntime":  # default_path's fp32 pick without a C++ compiler: takes pixels, not normalised
        path = "channels_last"
    log.info(f"evaluate: {path_reason(path, work, runtime)}")
    return build_runner(path, model, device)


def evaluate(
    model: nn.Module,
    cfg: Config,
    device: torch.device,
    save_pred: Path | None = None,
    precision: str = "fp32",
    runtime: str = "torch",
) -> tuple[metrics.Counts, float, int]:
    """Score ``model`` (in eval mode, on ``device``) on the ``data.val_split`` of the config's data,
    run on the path :func:`fast_model` picks for ``precision`` and ``runtime``.

    iIoU is scored when the split has instanceIds maps (a note on stderr when it has none);
    boundary F1 unless ``eval.boundary_tolerance`` is negative. Predictions at another size than
    the label (``data.val_size``) are resized bilinearly to it before the argmax.

    Returns:
        (summed :class:`cityseg.metrics.Counts`, seconds, number of frames).
    """
    dataset, with_instances = _dataset(cfg)
    spec = dataset.spec
    loader = DataLoader(dataset, batch_size=1, num_workers=cfg.data.workers)
    tolerance = cfg.eval.boundary_tolerance
    evaluator = Evaluator(spec.num_classes, device, boundary_tolerance=None if tolerance < 0 else tolerance,
                          instances=with_instances, table=metrics.table_for(spec))
    infer = eval_options(cfg)
    model = fast_model(model, dataset, infer, device, precision, runtime)
    start = time.perf_counter()
    # disable=None: no bar when stderr is not a terminal (logs, benchmarks)
    bar = tqdm(total=len(dataset), unit="frame", desc="evaluate", disable=logs.bar_disable(), file=sys.stderr)
    with torch.inference_mode(), bar:
        for index, item in enumerate(loader):
            image = item["image"].to(device, non_blocking=True).float()
            target = item["mask"].to(device)
            probs = predict_logits(model, image, **infer)
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


def _dataset(cfg: Config) -> tuple[CityscapesDataset, bool]:
    """(the split as a CityscapesDataset, whether it has instanceIds): iIoU when every frame has one."""
    root = data_root(cfg.data)
    spec = adopt_dataset(cfg, root).spec()
    # CityscapesDataset names any frame that lacks an instanceIds map when asked for instances
    official = metrics.table_for(spec).official  # iIoU exists for the Cityscapes table only
    with_instances = official and layout.has_instances(root, cfg.data.val_split)
    if not with_instances and official:
        log.warning(f"no *{layout.INSTANCE_SUFFIX} files in {root}: iIoU is not computed")
    transform = build_transforms(cfg.data, train=False)
    dataset = CityscapesDataset(root, cfg.data.val_split, transform=transform, with_instances=with_instances,
                                spec=spec)
    return dataset, with_instances


def save_prediction(pred: torch.Tensor, out_dir: Path, name: str, spec: DatasetSpec | None = None) -> None:
    """Write (H, W) trainIds as label ids (official ones for Cityscapes; else the first id of each
    class of ``spec``) to :func:`cityseg.layout.prediction_path`."""
    train_ids = pred.to("cpu").numpy().astype("uint8")
    generic = spec is not None and not metrics.table_for(spec).official
    ids = spec.train_ids_to_ids(train_ids) if generic else train_ids_to_label_ids(train_ids)
    save_png(ids, layout.prediction_path(out_dir, name))
