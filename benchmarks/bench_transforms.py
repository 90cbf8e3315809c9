"""Training-sample cost on one core: a real 2048x1024 frame -> a normalised 1024x512 crop.

Usage: python benchmarks/bench_transforms.py [--fixtures ../shared/fixtures] [--repeats 6]

Pipelines, all in this one run, one thread, over the 8 real frames of
``fixtures/cityscapes/leftImg8bit/train/aachen`` with their ``_gtFine_labelIds.png``:

* ``decode floor``: torchvision.io decode of image + label, nothing else.
* ``references PIL``: the torchvision references' segmentation recipe
  (references/segmentation/transforms.py): PIL open, RandomResize of the whole frame (shorter
  side uniform in 512..2048, i.e. scale 0.5-2.0), pad if smaller, RandomCrop, flip, PILToTensor,
  to float, Normalize; labelIds -> trainIds with ``Image.point``.
* ``naive v2``: torchvision.io decode, the same labelIds -> trainIds lookup as ours, then v2
  as offered: ScaleJitter (scale 0.5-2.0 of the frame) + RandomCrop(pad_if_needed) + flip +
  ToDtype + ColorJitter + Normalize.
* ``ours``: ``CityscapesDataset`` + ``build_transforms(train=True)``, i.e. RandomScaleCrop.

The three augmenting pipelines draw from the same distribution of scales and crops (the v2 ones
also flip and jitter). Each sample is timed with CPU time of this thread (``time.thread_time``),
which other jobs on a shared machine do not inflate, and with wall time; pipelines are interleaved
frame by frame so drifts in machine load hit all of them alike. Medians per pipeline, and ratios to
the decode floor. The target (issue 4) is ours <= 1.2x the floor.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.io import decode_image, read_file
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from cityseg import labels
from cityseg.config import DataConfig
from cityseg.data.dataset import CityscapesDataset, read_train_ids
from cityseg.data.transforms import build_transforms
from cityseg.imaging import IMAGENET_MEAN, IMAGENET_STD

FRAME = (1024, 2048)  # (H, W) of a Cityscapes frame
CROP = (512, 1024)  # (H, W): 512 high, 1024 wide
SCALES = (0.5, 2.0)
DEFAULT_FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"


def references_pil(image_path: Path, label_path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """pytorch/vision references/segmentation: RandomResize -> pad -> RandomCrop -> flip -> tensor."""
    image = Image.open(image_path).convert("RGB")
    target = Image.open(label_path).point(labels.ID_TO_TRAIN_ID.tolist())
    size = random.randint(int(SCALES[0] * FRAME[0]), int(SCALES[1] * FRAME[0]))  # shorter side
    image = F.resize(image, size, antialias=True)
    target = F.resize(target, size, interpolation=v2.InterpolationMode.NEAREST)
    ow, oh = image.size
    padding = [0, 0, max(CROP[1] - ow, 0), max(CROP[0] - oh, 0)]
    if any(padding):
        image, target = F.pad(image, padding, fill=0), F.pad(target, padding, fill=labels.IGNORE_INDEX)
    top, left, h, w = v2.RandomCrop.get_params(image, CROP)
    image, target = F.crop(image, top, left, h, w), F.crop(target, top, left, h, w)
    if random.random() < 0.5:
        image, target = F.horizontal_flip(image), F.horizontal_flip(target)
    x = F.normalize(F.to_dtype(F.pil_to_tensor(image), torch.float32, scale=True), IMAGENET_MEAN, IMAGENET_STD)
    return x, torch.as_tensor(F.pil_to_tensor(target)[0], dtype=torch.int64)


def naive_v2_transform(jitter: float) -> v2.Compose:
    """The v2 recipe as the docs suggest it: ScaleJitter + RandomCrop resize the whole frame."""
    fill = {tv_tensors.Mask: labels.IGNORE_INDEX, "others": 0}
    return v2.Compose(
        [
            v2.ScaleJitter(target_size=(FRAME[1], FRAME[0]), scale_range=SCALES, antialias=True),
            v2.RandomCrop(CROP, pad_if_needed=True, fill=fill),
            v2.RandomHorizontalFlip(p=0.5),
            v2.ToDtype({tv_tensors.Image: torch.float32, tv_tensors.Mask: torch.int64, "others": None}, scale=True),
            v2.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def run(fixtures: Path, repeats: int) -> dict[str, tuple[float, float]]:
    """Median (CPU ms, wall ms) per sample of each pipeline."""
    root = fixtures / "cityscapes"
    cfg = DataConfig(crop_size=f"{CROP[1]}x{CROP[0]}", scale_range=list(SCALES), hflip=True, color_jitter=0.2)
    ours = CityscapesDataset(root, "train", transform=build_transforms(cfg, train=True))
    naive = naive_v2_transform(cfg.color_jitter)
    pairs = list(zip(ours.images, ours.labels))

    def floor(i: int) -> object:
        return decode_image(read_file(str(pairs[i][0]))), decode_image(read_file(str(pairs[i][1])))

    def naive_v2(i: int) -> object:
        item = {
            "image": tv_tensors.Image(decode_image(read_file(str(pairs[i][0])))),
            "mask": tv_tensors.Mask(read_train_ids(pairs[i][1])),
        }
        return naive(item)

    pipelines: dict[str, Callable[[int], object]] = {
        "decode floor": floor,
        "references PIL": lambda i: references_pil(*pairs[i]),
        "naive v2": naive_v2,
        "ours": lambda i: ours[i],
    }
    names = list(pipelines)
    cpu: dict[str, list[float]] = {n: [] for n in names}
    wall: dict[str, list[float]] = {n: [] for n in names}
    for name in names:  # warm-up: page cache, lazy inits, kernel dispatch tables
        pipelines[name](0)
    for rep in range(repeats):
        for i in range(len(pairs)):
            order = names[(i + rep) % len(names) :] + names[: (i + rep) % len(names)]
            for name in order:
                c0, w0 = time.thread_time(), time.perf_counter()
                pipelines[name](i)
                cpu[name].append((time.thread_time() - c0) * 1000)
                wall[name].append((time.perf_counter() - w0) * 1000)
    return {n: (statistics.median(cpu[n]), statistics.median(wall[n])) for n in names}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fixtures", type=Path, default=DEFAULT_FIXTURES)
    parser.add_argument("--repeats", type=int, default=6, help="passes over the 8 frames")
    args = parser.parse_args()
    if not (args.fixtures / "cityscapes" / "leftImg8bit" / "train").is_dir():
        print(f"{args.fixtures}: real-frame fixtures not found", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    torch.manual_seed(0)
    random.seed(0)
    results = run(args.fixtures, args.repeats)
    floor_cpu, floor_wall = results["decode floor"]
    print(f"threads=1 frames=8 repeats={args.repeats} crop={CROP[1]}x{CROP[0]} (WxH) scale={SCALES}")
    print(f"{'pipeline':16s} {'CPU ms':>8s} {'x floor':>8s} {'wall ms':>8s} {'x floor':>8s}")
    for name, (c, w) in results.items():
        print(f"{name:16s} {c:8.1f} {c / floor_cpu:8.2f} {w:8.1f} {w / floor_wall:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
