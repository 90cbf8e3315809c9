"""Training throughput of ``cityseg train`` against a plain torchvision-references-style loop.

Usage: python benchmarks/bench_train_cpu.py --data data/pairs [--config pairs] [--steps 40] [--rounds 3]

Both loops train the same model (the config's, from scratch) with the same loss on the same
frames with the same batch size; what differs is what cityseg's loop does for the CPU:

* cityseg (``cityseg.engine`` as ``cityseg train`` builds it from the config): frames decoded
  once into memory (``data.cache``), crop-before-resize v2 augmentation in the training process,
  bf16 autocast where the config asks for it, channels_last, the config's thread count.
* reference (``pytorch/vision`` ``references/segmentation/train.py`` style): a DataLoader with
  worker processes that reads and decodes every PNG every time (PIL), RandomResize ->
  RandomHorizontalFlip -> RandomCrop on PIL images, ToImage/ToDtype/Normalize, float32,
  contiguous tensors, torch's default thread count.

Each round times ``--steps`` optimiser steps of each loop after ``--warmup`` steps (oneDNN builds
its kernels on the first calls), alternating the two; the medians and their ratio are printed
with the load average, since a busy machine inflates both.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from cityseg.config import load_config
from cityseg.data.dataset import CityscapesDataset
from cityseg.engine.build import build_criterion, build_optimizer, build_train_model, build_training
from cityseg.engine.schedule import build_schedule
from cityseg.engine.train import compute_loss, optimizer_step
from cityseg.labels import IGNORE_INDEX
from cityseg.layout import TRAIN_IDS_SUFFIX, label_path
from cityseg.imaging import IMAGENET_MEAN, IMAGENET_STD
from cityseg.utils import parse_size


class PilPairs(Dataset):
    """The reference's dataset: PIL image and trainIds label read from disk for every item."""

    def __init__(self, files: CityscapesDataset, transform: v2.Transform) -> None:
        self.images, self.transform = files.images, transform
        self.labels = [label_path(p, TRAIN_IDS_SUFFIX) for p in files.images]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = Image.open(self.images[i]).convert("RGB")
        target = tv_tensors.Mask(torch.from_numpy(np.array(Image.open(self.labels[i]))))
        return self.transform(image, target)


def reference_transform(crop: tuple[int, int], scale: list[float]) -> v2.Compose:
    """references/segmentation/presets.py SegmentationPresetTrain, with the config's sizes."""
    w, h = crop
    return v2.Compose([
        v2.RandomResize(int(scale[0] * h), int(scale[1] * h)),
        v2.RandomHorizontalFlip(0.5),
        v2.RandomCrop((h, w), pad_if_needed=True, fill={tv_tensors.Mask: IGNORE_INDEX, "others": 0}),
        v2.ToImage(),
        v2.ToDtype({tv_tensors.Image: torch.float32, tv_tensors.Mask: torch.int64, "others": None}, scale=True),
        v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def time_steps(step, batches, steps: int, warmup: int) -> float:
    """Seconds for ``steps`` optimiser steps after ``warmup`` steps, data loading included."""
    for _ in range(warmup):
        step(next(batches))
    started = time.perf_counter()
    for _ in range(steps):
        step(next(batches))
    return time.perf_counter() - started


def cityseg_loop(cfg):
    """One optimiser step of cityseg's own loop, and an endless iterator over its batches."""
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    run = build_training(cfg, torch.device("cpu"))  # cfg.data.root: the frames
    model, criterion, optimizer, step_settings = run.model, run.criterion, run.optimizer, run.step_settings
    loader = run.train_loader
    schedule = build_schedule(optimizer, cfg.sched, total_steps=10**6)
    model.train()

    def step(batch) -> None:
        images, targets = step_settings.to_device(batch["image"], batch["mask"])
        with step_settings.autocast():
            loss = compute_loss(criterion, model(images), targets, step_settings.aux_weight)
        loss.backward()
        optimizer_step(model, optimizer, step_settings)
        schedule.step()

    return step, itertools.chain.from_iterable(itertools.repeat(loader))


def reference_loop(cfg, root: Path, workers: int):
    """One optimiser step of the reference-style loop, and an endless iterator over its batches."""
    torch.set_num_threads(os.cpu_count() or 1)
    files = CityscapesDataset(root, cfg.data.train_split)
    data = PilPairs(files, reference_transform(parse_size(cfg.data.crop_size), cfg.data.scale_range))
    loader = DataLoader(data, cfg.train.batch_size, shuffle=True, num_workers=workers, drop_last=True,
                        persistent_workers=workers > 0)
    _, bare_model = build_train_model(_plain(cfg), cfg.spec(), torch.device("cpu"))
    criterion, optimizer = build_criterion(cfg, cfg.spec()), build_optimizer(cfg, bare_model)
    bare_model.train()

    def step(batch) -> None:
        images, targets = batch
        loss = compute_loss(criterion, bare_model(images), targets, cfg.loss.aux_weight)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step, itertools.chain.from_iterable(itertools.repeat(loader))


def _plain(cfg):
    """The config without cityseg's CPU measures (contiguous tensors, no compile)."""
    from copy import deepcopy

    plain = deepcopy(cfg)
    plain.train.channels_last = False
    return plain


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="prepared folder (official layout), e.g. data/pairs")
    parser.add_argument("--config", default="configs/pairs.yaml")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1, help="reference loader processes (2 cores: 1)")
    args = parser.parse_args()
    cfg = load_config(args.config)
    cfg.data.root = args.data
    root = Path(args.data)
    torch.manual_seed(0)
    started = time.perf_counter()
    ours, theirs = cityseg_loop(cfg), reference_loop(cfg, root, args.workers)
    print(f"set-up (data caching included) {time.perf_counter() - started:.1f} s")
    images = args.steps * cfg.train.batch_size
    rates: dict[str, list[float]] = {"cityseg": [], "reference": []}
    for r in range(args.rounds):
        for name, (step, batches) in (("reference", theirs), ("cityseg", ours)):
            torch.set_num_threads(cfg.train.threads if name == "cityseg" and cfg.train.threads else os.cpu_count() or 1)
            seconds = time_steps(step, batches, args.steps, args.warmup if r == 0 else 0)
            rates[name].append(images / seconds)
            print(f"round {r + 1} {name:9s} {images / seconds:6.2f} images/s", flush=True)
    a, b = statistics.median(rates["cityseg"]), statistics.median(rates["reference"])
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"model {cfg.model.name}, batch {cfg.train.batch_size}, crop {cfg.data.crop_size}, train.amp {cfg.train.amp}")
    print(f"median images/s: cityseg {a:.2f}, reference {b:.2f}, ratio {a / b:.2f}x (load average {load})")


if __name__ == "__main__":
    main()
