"""One frame of ``cityseg prepare`` (:mod:`cityseg.data.prepare`): where it comes from and where it
goes in the official layout (:class:`Job`), whether it is done (the record of its source files), and
converting it (:func:`run_job`: a Cityscapes frame, a photo | colour mask pair, or a described
dataset's image and label).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cityseg import layout
from cityseg.data import formats
from cityseg.data.colour import ColourStats, color_to_train_ids
from cityseg.data.palette import palette_of
from cityseg.datasets import IGNORE_INDEX, DatasetSpec
from cityseg.errors import CitysegError
from cityseg.utils import atomic_path, read_image, save_png

RECORDS = ".cityseg-prepare"  # OUT/<this>/<split>/<city>/<stem>.json: what each frame was made from


@dataclass(frozen=True)
class Job:
    """One frame to convert: where it comes from and where it goes."""

    kind: str  # "cityscapes", "pairs" or "dataset"
    source: Path  # the image (cityscapes, dataset) or the pairs file
    out_image: Path
    out_label_ids: Path
    out_train_ids: Path
    record: Path  # JSON: name, size and mtime_ns of each source file the outputs were made from
    label: Path | None = None  # the label file (dataset)
    spec: DatasetSpec | None = None  # the description (dataset)

    def outputs_exist(self) -> bool:
        return self.out_image.is_file() and self.out_label_ids.is_file() and self.out_train_ids.is_file()

    @property
    def out_instances(self) -> Path:
        """Where the frame's instanceIds map goes (cityscapes sources that have one: iIoU needs it)."""
        stem = self.out_train_ids.name[: -len(layout.TRAIN_IDS_SUFFIX)]
        return self.out_train_ids.with_name(f"{stem}{layout.INSTANCE_SUFFIX}")

    def source_instances(self) -> Path | None:
        """The source's ``*_gtFine_instanceIds.png`` of this frame, if it has one."""
        if self.kind != "cityscapes":
            return None
        path = layout.label_path(self.source, layout.INSTANCE_SUFFIX)
        return path if path.is_file() else None

    def sources(self) -> list[Path]:
        """The files the frame is made from: the pairs file, or the image, its label and instanceIds map."""
        if self.kind == "pairs":
            return [self.source]
        if self.kind == "dataset":
            return [self.source, self.label]
        instances = self.source_instances()
        return [self.source, layout.find_label(self.source)] + ([instances] if instances else [])

    def done(self, stamp: list) -> bool:
        """True when the outputs exist and were made from source files stamped ``stamp`` (:func:`source_stamp`)."""
        if not (self.record.is_file() and self.outputs_exist()):
            return False
        try:
            return json.loads(self.record.read_text()).get("sources") == stamp
        except (OSError, ValueError, AttributeError):  # unreadable or not ours: make the frame again
            return False


def source_stamp(paths: list[Path]) -> list[list]:
    """``[[name, size, mtime_ns], ...]`` of source files (symlinks followed), as a frame's record keeps them."""
    out = []
    for path in paths:
        try:
            st = path.stat()
        except OSError as exc:
            raise CitysegError(f"{path}: cannot read ({exc.strerror})") from None
        out.append([path.name, st.st_size, st.st_mtime_ns])
    return out


@dataclass
class Result:
    """What happened to one job: "written", "skipped" (already done) or "bad" (+ message).

    ``stale``: written over outputs that were not made from the source files as they are now.
    """

    source: Path
    status: str
    stats: ColourStats = field(default_factory=ColourStats)
    message: str = ""
    stale: bool = False


def frame_targets(out: Path, split: str, city: str, stem: str) -> tuple[Path, Path, Path, Path]:
    """(image, labelIds, labelTrainIds, record) paths of frame ``stem`` of ``city`` in ``split`` under OUT:
    the :class:`Job` fields after ``source``."""
    gt = out / layout.LABEL_DIR / split / city
    return (
        out / layout.IMAGE_DIR / split / city / f"{stem}{layout.IMAGE_SUFFIX}",
        gt / f"{stem}{layout.LABEL_IDS_SUFFIX}",
        gt / f"{stem}{layout.TRAIN_IDS_SUFFIX}",
        out / RECORDS / split / city / f"{stem}.json",
    )


def _place_image(source: Path, target: Path, link: str | None) -> None:
    """Copy or link ``source`` to ``target`` atomically (hard links fall back to a copy across devices)."""
    with atomic_path(target) as tmp:
        if link:
            tmp.unlink()
            try:
                if link == "sym":
                    tmp.symlink_to(source.resolve())
                else:
                    os.link(source, tmp)
                return
            except OSError:
                if link == "sym":
                    raise
        shutil.copyfile(source, tmp)


def _convert_cityscapes(job: Job, link: str | None) -> ColourStats:
    label_path = layout.find_label(job.source)
    maps = formats.load_label(label_path)
    image = read_image(job.source)  # decoding the whole file catches truncated images
    if image.shape[:2] != maps.train_ids.shape:
        raise CitysegError(
            f"{job.source}: image is {image.shape[1]}x{image.shape[0]} but its label {label_path.name} "
            f"is {maps.train_ids.shape[1]}x{maps.train_ids.shape[0]}"
        )
    instances = job.source_instances()
    if instances is not None:
        _check_instances(instances, maps.train_ids.shape)
    _place_image(job.source, job.out_image, link)
    if instances is not None:  # copied (or linked) as it is: the official 16-bit format, for iIoU
        _place_image(instances, job.out_instances, link)
    save_png(maps.label_ids, job.out_label_ids)
    save_png(maps.train_ids, job.out_train_ids)  # last: its presence marks the frame done
    return maps.stats


def _check_instances(path: Path, shape: tuple[int, ...]) -> None:
    """CitysegError unless ``path`` is a readable PNG of the label's size (``shape`` = (H, W))."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            width, height = img.size
            img.verify()
    except (OSError, UnidentifiedImageError, SyntaxError) as exc:
        raise CitysegError(f"{path}: unreadable instanceIds map ({exc})") from None
    if (height, width) != tuple(shape):
        raise CitysegError(f"{path}: instanceIds map is {width}x{height} but the label is {shape[1]}x{shape[0]}")


def _convert_dataset(job: Job) -> ColourStats:
    spec = job.spec
    image = read_image(job.source, "RGB")
    train_ids, label_ids, stats = read_dataset_label(job.label, spec)
    if image.shape[:2] != train_ids.shape:
        raise CitysegError(
            f"{job.source}: image is {image.shape[1]}x{image.shape[0]} but its label {job.label.name} "
            f"is {train_ids.shape[1]}x{train_ids.shape[0]} (WxH); they must match"
        )
    save_png(image, job.out_image)
    save_png(label_ids, job.out_label_ids)
    save_png(train_ids, job.out_train_ids)
    return stats


def read_dataset_label(path: Path, spec: DatasetSpec) -> tuple[np.ndarray, np.ndarray, ColourStats]:
    """A described dataset's label file -> ((H, W) uint8 trainIds, raw ids, pixel counts). Grey (and
    palette-indexed) files hold ids, mapped by the table; RGB files hold colours, recovered along
    blended borders with the dataset's palette (:mod:`cityseg.data.colour`). The raw ids of an RGB
    file are each class's first id (a colour-only class's own one, :mod:`cityseg.datasets`)."""
    raw = read_image(path, None)
    if raw.ndim == 2:
        if raw.dtype != np.uint8 and raw.size and int(raw.max()) > 255:
            raise CitysegError(f"{path}: label id {int(raw.max())} is outside 0-255 (dataset {spec.name})")
        ids = raw.astype(np.uint8)
        spec.check_own_ids(ids, path)
        train_ids = spec.id_to_train_id[ids]
        stats = ColourStats(pixels=ids.size, exact=int((train_ids != IGNORE_INDEX).sum()),
                            ignored=int((train_ids == IGNORE_INDEX).sum()))
        return train_ids, ids, stats
    rgb = raw[..., :3]
    train_ids, stats = color_to_train_ids(rgb, (rgb.shape[1], rgb.shape[0]), palette=palette_of(spec))  # own size
    return train_ids, spec.train_ids_to_ids(train_ids), stats


def _convert_pair(job: Job) -> ColourStats:
    photo, maps = formats.load_pair(job.source)
    save_png(photo, job.out_image)
    save_png(maps.label_ids, job.out_label_ids)
    save_png(maps.train_ids, job.out_train_ids)
    return maps.stats


def run_job(job: Job, link: str | None = None, force: bool = False) -> Result:
    """Convert one frame unless it is done (:meth:`Job.done`; ``force``: even then); bad input becomes a
    "bad" result, never an exception. Outputs not made from the source as it is now are removed first,
    so that a frame that turns out bad leaves none behind."""
    try:
        stamp = source_stamp(job.sources())  # before reading them: a change meanwhile shows on the next run
    except CitysegError as exc:
        _remove_outputs(job)
        return Result(job.source, "bad", message=str(exc))
    if not force and job.done(stamp):
        return Result(job.source, "skipped")
    stale = not force and job.outputs_exist()
    _remove_outputs(job)
    try:
        convert = {"cityscapes": lambda: _convert_cityscapes(job, link), "pairs": lambda: _convert_pair(job),
                   "dataset": lambda: _convert_dataset(job)}
        stats = convert[job.kind]()
    except CitysegError as exc:
        return Result(job.source, "bad", message=str(exc))
    with atomic_path(job.record) as tmp:  # last: the frame is done
        tmp.write_text(json.dumps({"sources": stamp}) + "\n")
    return Result(job.source, "written", stats, stale=stale)


def _remove_outputs(job: Job) -> None:
    for path in (job.record, job.out_train_ids, job.out_label_ids, job.out_instances, job.out_image):
        path.unlink(missing_ok=True)
