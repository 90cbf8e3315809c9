"""Everything ``train()`` builds before its loop: threads and seeds, data loaders, model
(channels_last, SyncBatchNorm, DDP, compile), loss, optimiser, and the :class:`StepSettings` that says
how one optimiser step runs (mixed precision, gradient accumulation, clipping).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from cityseg.pretrained import build_starting_model
from cityseg import layout
from cityseg.config import Config, dataset_value
from cityseg.data import synthetic
from cityseg.data.dataset import CityscapesDataset
from cityseg.data.transforms import build_transforms
from cityseg.datasets import DatasetSpec, load_dataset
from cityseg.device import native_bf16, no_bf16_reason
from cityseg.engine import distributed as D
from cityseg.engine.schedule import SCHEDULES
from cityseg.errors import CitysegError
from cityseg.hf import is_hf, read_config
from cityseg.losses import build_loss
from cityseg.models import check_model_name
from cityseg.models.parts import float32_depthwise

log = logging.getLogger(__name__)

#: Values of ``train.amp`` (see :func:`build_step_settings`).
AMP_MODES = ("auto", "bf16-native", "bf16", "fp16", "none")


@dataclass
class StepSettings:
    """How one optimiser step runs: device, mixed precision, accumulation, clipping."""

    device: torch.device
    amp_dtype: torch.dtype | None
    scaler: torch.amp.GradScaler | None
    accum: int  # micro-batches per optimiser step
    grad_clip: float | None
    channels_last: bool
    aux_weight: float

    @property
    def amp_name(self) -> str:
        """The precision the step runs in, as ``train.amp`` names it: none, bf16 or fp16."""
        return {None: "none", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.amp_dtype]

    def autocast(self) -> contextlib.AbstractContextManager:
        """``torch.autocast`` to the mixed-precision dtype, or nothing in float32."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def to_device(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 3, H, W) float images (channels_last if set) and (N, H, W) int64 targets on the device."""
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        images = images.to(self.device, non_blocking=True, memory_format=fmt)
        return images, targets.to(self.device, non_blocking=True).long()


def setup_torch(cfg: Config, dev: torch.device) -> None:
    """Thread count, and deterministic kernels where torch has them (warn-only: a few CUDA ops have none),
    without torch's NaN fill of new tensors."""
    if cfg.train.threads is not None:
        if cfg.train.threads < 1:
            raise CitysegError(f"train.threads={cfg.train.threads}: must be >= 1 (or null for one per core)")
        torch.set_num_threads(cfg.train.threads)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = not cfg.train.deterministic
        torch.backends.cuda.matmul.allow_tf32 = True  # TF32 matmuls: ~free accuracy-wise for segmentation
        torch.backends.cudnn.allow_tf32 = True
        if cfg.train.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(cfg.train.deterministic, warn_only=True)
    # Deterministic mode also fills the memory of every new tensor with NaN before use, a debugging aid
    # for code that reads memory it never wrote. None in cityseg is known to: src/ reads no torch.empty,
    # and the one kernel known to (torch's antialiased resize, at output samples with no source pixel
    # under them) is never asked for one, as data.resample plans each crop's source slice with a
    # margin (test_transforms checks its crops against a full resize). The fill costs 1.14x an
    # FPN-EfficientNet-Lite0 training step on 2 CPU cores (435 -> 381 ms, forward and backward alike:
    # benchmarks/bench_train_phases.py, BENCHMARKS.md "Where a training step goes").
    torch.utils.deterministic.fill_uninitialized_memory = False


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_data_root(cfg: Config) -> Path:
    """``data.root``, or the synthetic default data (generated once; safe when ranks race): see
    :func:`cityseg.data.synthetic.data_root`, which ``cityseg evaluate --checkpoint`` uses too."""
    return synthetic.data_root(cfg.data)


def adopt_dataset(cfg: Config, root: Path) -> tuple[Config, DatasetSpec]:
    """(``cfg``, its dataset description): ``cfg`` with the dataset a prepared folder was made for
    (its ``dataset.yaml``, written by ``cityseg prepare --dataset``) when the config names none but
    Cityscapes; unchanged otherwise. The description is resolved here once for the whole run.

    Raises:
        CitysegError: the config's dataset and the folder's have different class tables.
    """
    ours = cfg.spec()
    found = layout.prepared_dataset(root)
    if found is None:
        return cfg, ours
    folder = load_dataset(found)
    if folder.classes == ours.classes:
        return cfg, ours
    if cfg.dataset == "cityscapes":
        log.info("%s: prepared for dataset %s (%d classes); using its class table", root, folder.name,
                 folder.num_classes)
        cfg = dataclasses.replace(cfg, dataset=dataset_value(str(found)))
        return cfg, cfg.spec()
    raise CitysegError(f"{root}: prepared for dataset {folder.name!r} ({folder.num_classes} classes), but the config's "
                       f"dataset is {ours.name!r} ({ours.num_classes} classes); pass --dataset {found}")


@dataclass
class TrainingParts:
    """What a training run is made of, built from its config the way ``cityseg train`` builds it."""

    cfg: Config  # the run's config, with a prepared folder's dataset adopted (adopt_dataset)
    spec: DatasetSpec
    root: Path
    train_loader: DataLoader
    val_loader: DataLoader
    generator: torch.Generator
    model: nn.Module  # the model to call (DDP or compiled where configured)
    bare_model: nn.Module
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    step_settings: StepSettings
    float32_layers: int  # layers apply_precision_policy switched to float32


def build_training(cfg: Config, dev: torch.device) -> TrainingParts:
    """The data, model, loss, optimiser and step settings of ``cfg`` on ``dev``, with the precision
    policy applied: the one place ``cityseg train`` and the training benchmarks build a run."""
    root = resolve_data_root(cfg)
    cfg, spec = adopt_dataset(cfg, root)  # the run's class table, resolved once
    train_loader, val_loader, generator = build_loaders(cfg, spec, root, dev)
    model, bare_model = build_train_model(cfg, spec, dev)
    criterion, optimizer = build_criterion(cfg, spec), build_optimizer(cfg, bare_model)
    step_settings = build_step_settings(cfg, dev, micro_batch=train_loader.batch_size)
    float32_layers = apply_precision_policy(bare_model, step_settings)
    return TrainingParts(cfg, spec, root, train_loader, val_loader, generator, model, bare_model, criterion,
                         optimizer, step_settings, float32_layers)


def build_loaders(
    cfg: Config, spec: DatasetSpec, root: Path, dev: torch.device
) -> tuple[DataLoader, DataLoader, torch.Generator]:
    """Training loader (shuffled, sharded under DDP, seeded) and validation loader (sharded, in order)
    of the frames of ``root``, labelled with ``spec``'s classes (``cfg``'s dataset).

    ``generator`` draws the shuffling order and the workers' base seed (torch seeds each
    worker's torch, numpy and random from it), so its state in the checkpoint fixes the next
    epoch's batches and augmentations. Workers are not persistent for the same reason: every
    epoch draws fresh worker seeds from the generator.
    """
    train_set = CityscapesDataset(root, cfg.data.train_split, build_transforms(cfg.data, train=True), spec=spec)
    val_set = CityscapesDataset(root, cfg.data.val_split, build_transforms(cfg.data, train=False), spec=spec)
    if cfg.data.cache:  # before the workers fork, so that they share the decoded frames
        train_set.preload(progress=D.is_main_process())
        val_set.preload(progress=D.is_main_process())
    micro = micro_batch_size(cfg)
    generator = torch.Generator().manual_seed(cfg.train.seed + D.get_rank())
    common = dict(num_workers=cfg.data.workers, pin_memory=dev.type == "cuda", generator=generator)
    if D.is_dist():
        sampler = DistributedSampler(train_set, shuffle=True, seed=cfg.train.seed, drop_last=True)
        train_loader = DataLoader(train_set, micro, sampler=sampler, drop_last=True, **common)
    else:
        train_loader = DataLoader(train_set, micro, shuffle=True, drop_last=True, **common)
    val_loader = DataLoader(val_set, cfg.train.val_batch_size, sampler=ShardSampler(len(val_set)), **common)
    return train_loader, val_loader, generator


class ShardSampler(torch.utils.data.Sampler):
    """Indices ``rank, rank + world, ...``: every validation image exactly once across processes
    (``DistributedSampler`` pads with repeats, which would count some frames twice)."""

    def __init__(self, n: int) -> None:
        self.indices = list(range(D.get_rank(), n, D.get_world_size()))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def micro_batch_size(cfg: Config) -> int:
    """Per-process batch of one forward pass; the global batch is reached by accumulation."""
    world = D.get_world_size()
    micro = cfg.train.micro_batch_size or max(cfg.train.batch_size // world, 1)
    if cfg.train.batch_size % (micro * world):
        raise CitysegError(
            f"train.batch_size={cfg.train.batch_size} is not a multiple of train.micro_batch_size={micro} "
            f"x {world} processes"
        )
    return micro


def build_train_model(cfg: Config, spec: DatasetSpec, dev: torch.device) -> tuple[nn.Module, nn.Module]:
    """Return ``(model to call, bare model)`` predicting ``spec``'s classes: channels_last,
    SyncBatchNorm, DDP and compile as configured."""
    bare_model = build_starting_model(
        cfg.model.name,
        num_classes=spec.num_classes,
        pretrained=cfg.model.pretrained,
        aux_head=cfg.model.aux_head,
        freeze=list(cfg.model.freeze),
        output_stride=cfg.model.output_stride,
        class_names=spec.class_names,
    )
    if D.is_dist() and cfg.model.sync_bn and dev.type == "cuda":  # SyncBatchNorm has no CPU kernel
        bare_model = nn.SyncBatchNorm.convert_sync_batchnorm(bare_model)
    memory_format = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    bare_model = bare_model.to(dev, memory_format=memory_format)
    model = bare_model
    if D.is_dist():
        model = nn.parallel.DistributedDataParallel(bare_model, device_ids=[dev.index] if dev.type == "cuda" else None)
    if cfg.train.compile:
        model = torch.compile(model)
    return model, bare_model


def build_criterion(cfg: Config, spec: DatasetSpec) -> nn.Module:
    """The weighted loss of ``cfg.loss`` over ``spec``'s classes (called on the main head, and on the
    aux head by the loop)."""
    return build_loss(cfg.loss, spec.num_classes)


OPTIMIZERS = ("adamw", "sgd")


def check_names(cfg: Config) -> None:
    """CitysegError naming the key when ``model.name``, ``optim.name`` or ``sched.name`` is not one
    cityseg knows: checked before any data is drawn or read, so a typo fails in a second (for an
    ``hf:`` model: its config is read, so a missing folder or an unsupported architecture too)."""
    check_model_name(cfg.model.name, "config key model.name")
    if is_hf(cfg.model.name):
        read_config(cfg.model.name)
    for key, value, valid in (("optim.name", cfg.optim.name, OPTIMIZERS), ("sched.name", cfg.sched.name, SCHEDULES)):
        if value not in valid:
            raise CitysegError(f"config key {key}: {value!r} is unknown; valid: {', '.join(valid)}")


def build_optimizer(cfg: Config, model: nn.Module) -> torch.optim.Optimizer:
    """AdamW or SGD over the trainable parameters; the head's rate is ``head_lr_mult`` x the backbone's.

    The backbone is the parameters under ``backbone.``, or under the model's ``backbone_prefixes``
    where it has them (a transformers model: :class:`cityseg.hf.HfSegmentation`).
    """
    o = cfg.optim
    prefixes = tuple(getattr(model, "backbone_prefixes", ("backbone.",)))
    backbone = [p for n, p in model.named_parameters() if p.requires_grad and n.startswith(prefixes)]
    head = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith(prefixes)]
    groups = [{"params": backbone, "lr": o.lr}, {"params": head, "lr": o.lr * o.head_lr_mult}]
    groups = [g for g in groups if g["params"]]
    if o.name == "adamw":
        return torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
    if o.name == "sgd":
        return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    raise CitysegError(f"config key optim.name: {o.name!r} is unknown; valid: {', '.join(OPTIMIZERS)}")


def build_step_settings(cfg: Config, dev: torch.device, micro_batch: int) -> StepSettings:
    """Mixed precision, accumulation and clipping settings.

    ``train.amp: auto`` is bf16 on GPUs that support it (no scaler needed), fp16 with a
    GradScaler on older GPUs, and none (float32) on the CPU, where autocast is slower than float32 on
    most processors and would change the reproducible CPU results. ``bf16-native`` is bf16 where
    the device computes it in hardware (:func:`cityseg.device.native_bf16`: CPUs with AVX512-BF16
    or AMX, GPUs with bf16) and float32 elsewhere: the CPU recipes' setting, since on a CPU without
    them bf16 is emulated and a training step takes ~8x float32's time (BENCHMARKS.md, "bf16 on a
    CPU without AVX512-BF16"). ``bf16`` asked for there still runs, with a one-line warning.
    """
    mode = cfg.train.amp
    if mode not in AMP_MODES:
        raise CitysegError(f"unknown train.amp {mode!r}; valid: {', '.join(AMP_MODES)}")
    if mode == "auto":
        mode = "none" if dev.type != "cuda" else ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
    elif mode == "bf16-native":
        mode = "bf16" if native_bf16(dev) else "none"
        if mode == "none":
            log.info("train.amp bf16-native: %s, so training runs in float32", no_bf16_reason(dev))
    elif mode == "bf16" and not native_bf16(dev):
        log.warning("train.amp bf16: %s, so bf16 is emulated (on the CPU a training step takes ~8x float32's "
                    "time); train.amp=bf16-native or none trains in float32 here", no_bf16_reason(dev))
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}[mode]
    scaler = torch.amp.GradScaler(dev.type) if dtype is torch.float16 else None
    return StepSettings(
        device=dev,
        amp_dtype=dtype,
        scaler=scaler,
        accum=cfg.train.batch_size // (micro_batch * D.get_world_size()),
        grad_clip=cfg.train.grad_clip,
        channels_last=cfg.train.channels_last,
        aux_weight=cfg.loss.aux_weight,
    )


def apply_precision_policy(model: nn.Module, step_settings: StepSettings) -> int:
    """Layers that train faster in float32 than under the step's autocast, switched to float32;
    returns how many. Today: depthwise convolutions under bfloat16 autocast on the CPU, whose
    bfloat16 gradient kernels are several times slower than float32's
    (:func:`cityseg.models.parts.float32_depthwise` has the figures). GPUs keep every layer in the
    autocast dtype."""
    if step_settings.device.type != "cpu" or step_settings.amp_dtype is not torch.bfloat16:
        return 0
    count = float32_depthwise(model)
    if count:
        log.info("%d depthwise convolutions run in float32 under bf16 autocast (faster on the CPU)", count)
    return count


def steps_per_epoch(
    cfg: Config, loader: DataLoader, step_settings: StepSettings, root: Path, max_steps: int | None
) -> int:
    """Optimiser steps per epoch: full accumulations of the loader's (drop-last) micro-batches."""
    steps = len(loader) // step_settings.accum
    if max_steps is not None:
        steps = min(steps, max_steps)
    if steps < 1:
        raise CitysegError(
            f"{root}: {len(loader.dataset)} training images per process make no full batch of "
            f"train.batch_size={cfg.train.batch_size}; lower it or add images"
        )
    return steps
