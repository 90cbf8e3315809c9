"""Cityscapes in its official layout (:mod:`cityseg.layout`), with whichever label format each frame has.

The label of each frame is found by ``layout.find_label`` (labelIds > labelTrainIds > color).
labelIds, labelTrainIds and instanceIds PNGs are decoded with ``cityseg.data.png`` (libdeflate
and a run-aware unfilter: ~0.5 ms for a 2048x1024 labelIds map, ~10x faster than libpng) where
they are plain greyscale files, else with ``torchvision.io``, and mapped to trainIds with one
table lookup; colour masks go through ``formats.read_label``, which recovers classes from
blended border colours.

Items are dicts (so v2 transforms carry any extra keys along untouched)::

    {"image": tv_tensors.Image (3, H, W) uint8 RGB,      # float32 normalised after the transform
     "mask": tv_tensors.Mask (H, W) int64 trainIds,      # IGNORE_INDEX where not evaluated
     "name": str,                                        # the frame's stem, e.g. aachen_000000_000019
     "instance_ids": tv_tensors.Mask (H, W) int64}       # only with with_instances=True

The transform sees the mask as uint8 trainIds (cheaper to crop and flip than int64); whatever it
returns, the item leaves the dataset with an int64 mask, ready for the losses.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.io import ImageReadMode, decode_image, read_file

from cityseg import labels, layout, logs
from cityseg.data import formats, png
from cityseg.data.palette import palette_of
from cityseg.datasets import DatasetSpec, load_dataset
from cityseg.errors import CitysegError
from cityseg.layout import (
    INSTANCE_SUFFIX,
    LABEL_IDS_SUFFIX,
    TRAIN_IDS_SUFFIX,
    find_images,
    find_label,
    frame_of_image,
    label_path,
)

log = logging.getLogger(__name__)

_TORCH_ERROR_PREFIX = re.compile(r"^\w+, \S+:\d+, ")


def _decode(path: Path, mode: ImageReadMode = ImageReadMode.UNCHANGED) -> torch.Tensor:
    """torchvision.io decode of one file -> (C, H, W) tensor; CitysegError on missing/corrupt files."""
    try:
        with warnings.catch_warnings():
            # torchvision 0.29 deprecates its decoders in favour of TorchCodec, not a dependency
            # here; they remain the fast path for PNGs and would otherwise warn on every frame.
            warnings.simplefilter("ignore", DeprecationWarning)
            return decode_image(read_file(str(path)), mode=mode)
    except RuntimeError as exc:
        reason = _TORCH_ERROR_PREFIX.sub("", str(exc).splitlines()[0])
        if not path.is_file():
            raise CitysegError(f"{path}: file not found") from None
        raise CitysegError(f"{path}: cannot decode image ({reason})") from None


def _decode_grey(path: Path) -> torch.Tensor | None:
    """(H, W) uint8/uint16 map of a plain greyscale PNG by the fast decoder, else None (then
    ``_decode`` reads the file and names what is wrong with it)."""
    grey = png.read_grey(path)
    return None if grey is None else torch.from_numpy(grey)


def read_image(path: Path) -> torch.Tensor:
    """(3, H, W) uint8 RGB image."""
    return _decode(path, ImageReadMode.RGB)


def read_train_ids(path: Path, spec: DatasetSpec | None = None) -> torch.Tensor:
    """(H, W) uint8 trainIds from any label file (``IGNORE_INDEX`` where not evaluated) of the dataset
    ``spec`` (None: Cityscapes)."""
    name = path.name
    spec = spec or load_dataset("cityscapes")
    if name.endswith(LABEL_IDS_SUFFIX) or name.endswith(TRAIN_IDS_SUFFIX):
        grey = _decode_grey(path)
        raw = grey[None] if grey is not None else _decode(path)
        if raw.shape[0] == 1 and raw.dtype == torch.uint8:  # the official 8-bit grey maps
            ids = raw[0]
            if name.endswith(TRAIN_IDS_SUFFIX):
                return _checked_train_ids(ids, path, spec.num_classes)
            return _label_ids_to_train_ids(ids, path, spec)
    # colour masks, and id maps saved in unusual PNG modes: the readers of formats.py
    return torch.from_numpy(formats.read_label(path, palette=palette_of(spec)))


@functools.cache
def _id_lut(spec: DatasetSpec) -> torch.Tensor:
    # labelIds -> trainIds as a torch table; index_select with int32 indices is the fastest
    # lookup in torch for a uint8 map (1.5 ms per 2048x1024 frame vs 8 ms for lut[map.long()]).
    return torch.from_numpy(spec.id_to_train_id.copy())


def _label_ids_to_train_ids(ids: torch.Tensor, path: Path, spec: DatasetSpec) -> torch.Tensor:
    # the description's ids; void and unlisted ids are ignored, and ids above the table's highest
    # refused (the official table, the only one with a highest: cityseg.datasets.IdTable)
    top, highest = int(ids.max()), spec.id_table.max_label_id
    if highest is not None and top > highest:
        raise CitysegError(f"{path}: label id {top} is not in the Cityscapes table (valid: 0..{highest})")
    return _id_lut(spec).index_select(0, ids.reshape(-1).int()).view(ids.shape)


def _checked_train_ids(ids: torch.Tensor, path: Path, num_classes: int = labels.NUM_CLASSES) -> torch.Tensor:
    bad = ids[(ids >= num_classes) & (ids != labels.IGNORE_INDEX)]
    if bad.numel():
        raise CitysegError(
            f"{path}: trainId {int(bad[0])} is not valid (valid: 0..{num_classes - 1} and {labels.IGNORE_INDEX})"
        )
    return ids


def read_instance_ids(path: Path) -> torch.Tensor:
    """(H, W) int64 instanceIds (labelId * 1000 + k for instances, the labelId elsewhere)."""
    grey = _decode_grey(path)
    raw = grey[None] if grey is not None else _decode(path)
    if raw.shape[0] != 1:
        raise CitysegError(f"{path}: an instanceIds map must have one channel, got {raw.shape[0]}")
    return raw[0].to(torch.int64)  # official files are 16-bit; int64 is what the evaluator indexes with


class CityscapesDataset(Dataset):
    """One split of a Cityscapes-layout folder.

    Args:
        root: folder holding ``leftImg8bit/`` and ``gtFine/``.
        split: ``train``, ``val``, ``test`` or any split folder name.
        transform: called on the item dict (see module docstring); e.g. ``build_transforms``.
        with_instances: also load ``*_gtFine_instanceIds.png`` as ``item["instance_ids"]``.
        spec: the dataset's class table (None: Cityscapes): how label files map to trainIds.

    Raises:
        CitysegError: the folder lacks the layout, the split is missing or empty, or an image
            has no label (or no instanceIds map when asked for). Reading an item raises it for
            unreadable files and for an image and label of different sizes.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str,
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        with_instances: bool = False,
        spec: DatasetSpec | None = None,
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.spec = spec
        self.transform = transform
        self.images = find_images(self.root, split)
        self.labels = [find_label(p) for p in self.images]  # CitysegError when one is missing
        orphans = layout.frames_without_photo(self.root, split, self.images)
        if orphans:
            log.warning("%s: skipped %d frame(s) of split %r with labels but no photo in %s/%s/ (e.g. %s)",
                        self.root, len(orphans), split, layout.IMAGE_DIR, split, orphans[0])
        self.instances: list[Path] | None = None
        self.cache: list[dict[str, Any]] | None = None
        if with_instances:
            self.instances = [label_path(p, INSTANCE_SUFFIX) for p in self.images]
            missing = [p for p in self.instances if not p.is_file()]
            if missing:
                raise CitysegError(f"{missing[0]}: instanceIds map not found ({len(missing)} missing in {split!r})")

    def __len__(self) -> int:
        return len(self.images)

    def name(self, index: int) -> str:
        """The frame's stem, e.g. ``aachen_000000_000019``."""
        return frame_of_image(self.images[index])

    def load(self, index: int) -> dict[str, Any]:
        """The untransformed item: uint8 image (3, H, W) and uint8 trainIds mask (H, W)."""
        image_path, label_path = self.images[index], self.labels[index]
        image = read_image(image_path)
        mask = read_train_ids(label_path, self.spec)
        _check_same_size(image_path, image, label_path, mask)
        item = {"image": tv_tensors.Image(image), "mask": tv_tensors.Mask(mask), "name": self.name(index)}
        if self.instances is not None:
            inst = read_instance_ids(self.instances[index])
            _check_same_size(image_path, image, self.instances[index], inst)
            item["instance_ids"] = tv_tensors.Mask(inst)
        return item

    def preload(self, progress: bool = False) -> None:
        """Decode every frame once and keep the untransformed items in memory.

        Worth it for small frames read every epoch (the 3,075 256x256 pairs take ~0.8 GB and
        decode in seconds, against one PNG decode per image per epoch); DataLoader workers
        forked afterwards share the decoded frames.
        """
        from tqdm import tqdm

        frames = tqdm(range(len(self)), desc=f"decode {self.split}", unit="frame", disable=logs.bar_disable(progress),
                      leave=False)
        self.cache = [self.load(i) for i in frames]

    def __getitem__(self, index: int) -> dict[str, Any]:
        # a shallow copy: transforms make new tensors and never write into the cached ones
        item = dict(self.cache[index]) if self.cache is not None else self.load(index)
        if self.transform is not None:
            item = self.transform(item)
        item["mask"] = item["mask"].to(torch.int64)  # no-op after build_transforms; tv_tensor type kept
        return item


def _check_same_size(image_path: Path, image: torch.Tensor, label_path: Path, label: torch.Tensor) -> None:
    (h, w), (lh, lw) = image.shape[-2:], label.shape[-2:]
    if (h, w) != (lh, lw):
        raise CitysegError(
            f"{image_path}: image is {w}x{h} but its label {label_path.name} is {lw}x{lh} (WxH); they must match"
        )
