"""``cityseg prepare``: turn a Cityscapes source into the official layout with trainIds.

Writes, for each frame::

    OUT/leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png        (copied, linked, or the pair's left half)
    OUT/gtFine/<split>/<city>/<stem>_gtFine_labelIds.png         (the source's, or derived: void/unknown -> 0)
    OUT/gtFine/<split>/<city>/<stem>_gtFine_labelTrainIds.png

so that OUT serves both training and evaluation. SRC is only read. Every file is written
atomically, and last a record of what the frame was made from (name, size and mtime of each
source file) in ``OUT/.cityseg-prepare/<split>/<city>/<stem>.json``. A frame whose outputs
exist and whose record matches its source files now is finished: a second run skips it, a
killed run resumes where it stopped, and a frame whose source changed (or that has no record)
is made again; ``force`` makes every frame again.

The format is told from SRC only when it is recognised: ``cityscapes`` needs ``leftImg8bit/``
and ``gtFine/``; ``pairs`` needs split folders whose sampled images each hold a photo on the
left and mostly label colours on the right. Anything else is refused, naming the known formats.

Sources:
  * ``cityscapes``: ``SRC/leftImg8bit/<split>/<city>/*_leftImg8bit.png`` with labels found
    by :func:`cityseg.layout.find_label` (labelIds > labelTrainIds > color).
  * ``pairs``: ``SRC/<split>/*.jpg|*.png``, photo left and colour mask right; written under
    the city folder ``city`` with the file's own stem.
  * ``dataset``: any dataset with a description (:mod:`cityseg.datasets`; ``kitti``, ``camvid`` or
    a YAML file): frames found by its ``images`` and ``labels`` patterns, labels mapped by its
    table (grey files: ids; RGB files: colours, recovered along blended borders as for
    Cityscapes); written under the city folder named after the dataset, each under its frame name
    (every field the patterns capture but ``{split}``, joined by ``_``: ``<seq>_<stem>`` for
    ``{split}/{seq}/{stem}.png``), with the description (patterns pointing at OUT's layout, every
    class's ids listed) in ``OUT/dataset.yaml``, which train and evaluate adopt.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cityseg import layout, logs
from cityseg.data import formats
from cityseg.data.colour import (
    CITYSCAPES,
    MIN_PALETTE_SHARE,
    ColourStats,
    color_to_train_ids,
    confident_lut,
    palette_of,
    palette_share,
)
from cityseg.datasets import IGNORE_INDEX, DatasetSpec, check_patterns, dataset_splits, find_files, load_dataset
from cityseg.errors import CitysegError
from cityseg.processes import WorkerPool
from cityseg.utils import atomic_path, read_image, save_png

log = logging.getLogger(__name__)

FORMATS = ("auto", "cityscapes", "pairs")
LINKS = ("hard", "sym")
PAIR_SUFFIXES = (".jpg", ".jpeg", ".png")
DEFAULT_PAIRS_CITY = "pairs"
RECORDS = ".cityseg-prepare"  # OUT/<this>/<split>/<city>/<stem>.json: what each frame was made from
DETECT_SAMPLES = 3  # files of each split folder looked at to tell a pairs source (first, middle, last)
KNOWN_FORMATS = (
    f"cityscapes ({layout.IMAGE_DIR}/<split>/<city>/*{layout.IMAGE_SUFFIX} beside {layout.LABEL_DIR}/)",
    "pairs (<split>/*.jpg|*.png, each a photo on the left and its colour mask on the right)",
)


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


@dataclass
class Summary:
    """Totals of one ``prepare`` run."""

    out: Path
    format: str
    written: int = 0
    stale: int = 0  # of the written: replaced outputs made from another version of their source
    skipped: int = 0
    stats: ColourStats = field(default_factory=ColourStats)
    bad: list[Result] = field(default_factory=list)

    def lines(self) -> list[str]:
        s = self.stats
        total = self.written + self.skipped + len(self.bad)
        remade = f" ({self.stale} of them made again: source changed or unrecorded)" if self.stale else ""
        out = [
            f"prepared {total} files ({self.format}) into {self.out}: {self.written} written{remade}, "
            f"{self.skipped} already done, {len(self.bad)} bad",
        ]
        if self.written:
            out.append(
                f"label pixels of the files written: {s.pixels:,} in all, {s.exact:,} mapped exactly, "
                f"{s.recovered:,} recovered from blended or noisy colours, {s.ignored:,} set to ignore (unrecoverable)"
            )
        if self.bad:
            out.append(f"skipped {len(self.bad)} bad files:")
            out.extend(f"  {r.message}" for r in self.bad)
        return out


def detect_format(src: Path, splits: list[str] | None = None) -> str:
    """'cityscapes' or 'pairs' when SRC is recognised as one (see the module docstring); otherwise
    CitysegError saying why and naming the known formats. ``splits``: look only at these split folders."""
    if (src / layout.IMAGE_DIR).is_dir():
        if (src / layout.LABEL_DIR).is_dir():
            return "cityscapes"
        raise _unknown(src, "leftImg8bit/ without gtFine/ (--format cityscapes also reads labels kept beside "
                            "the images)")
    folders = [d for d in _subdirs(src) if _pair_files(d)]
    if not folders:
        _refuse_split_folder(src)
        raise _unknown(src, "neither leftImg8bit/ with gtFine/ nor split folders of images")
    chosen = [d for d in folders if d.name in splits] if splits else []
    for folder in chosen or folders:  # (a split named but missing is reported by discover)
        why = _not_pairs(folder)
        if why is not None:
            raise _unknown(src, why)
    return "pairs"


def _unknown(src: Path, why: str) -> CitysegError:
    return CitysegError(f"{src}: cannot tell the format: {why}; known formats: {'; '.join(KNOWN_FORMATS)}")


def _not_pairs(folder: Path) -> str | None:
    """Why the images of ``folder`` are not photo | colour mask pairs; None when the sampled ones are.

    Unreadable files are passed over (converting them reports or skips them); when no sampled
    file can be read, the error of the last one is raised.
    """
    files = _pair_files(folder)
    last = len(files) - 1
    picks = sorted({files[round(i * last / max(DETECT_SAMPLES - 1, 1))] for i in range(DETECT_SAMPLES)})
    judged, error = 0, None
    for path in picks:
        try:
            photo, mask = formats.read_pair(path)
        except CitysegError as exc:
            error = exc
            continue
        judged += 1
        left, right = palette_share(photo), palette_share(mask)
        if right < MIN_PALETTE_SHARE or left >= MIN_PALETTE_SHARE:
            return (f"{path} is not a photo | colour mask pair: label colours make {right:.0%} of its right "
                    f"half (a colour mask: at least {MIN_PALETTE_SHARE:.0%}) and {left:.0%} of its left half "
                    "(a photo: less)")  # fmt: skip
    if not judged:
        raise error
    return None


def _refuse_split_folder(src: Path) -> None:
    """CitysegError when SRC holds pairs files itself but none of its subfolders do: a split folder."""
    if _pair_files(src) and not any(_pair_files(d) for d in _subdirs(src)):
        parent = src.parent if src.name and src.parent != Path(".") else src.absolute().parent
        raise CitysegError(
            f"{src}: holds the pair images itself, so it is a split folder; give its parent folder "
            f"{parent} (the one with the train/ val/ split folders)"
        )


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _pair_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in PAIR_SUFFIXES)


def _pick_splits(available: list[Path], splits: list[str] | None, root: Path) -> list[Path]:
    names = [p.name for p in available]
    if not splits:
        return available
    missing = [s for s in splits if s not in names]
    if missing:
        raise CitysegError(f"{root}: no split {', '.join(missing)}; found: {', '.join(names) or 'none'}")
    return [p for p in available if p.name in splits]


def _targets(out: Path, split: str, city: str, stem: str) -> tuple[Path, Path, Path, Path]:
    gt = out / layout.LABEL_DIR / split / city
    return (
        out / layout.IMAGE_DIR / split / city / f"{stem}{layout.IMAGE_SUFFIX}",
        gt / f"{stem}{layout.LABEL_IDS_SUFFIX}",
        gt / f"{stem}{layout.TRAIN_IDS_SUFFIX}",
        out / RECORDS / split / city / f"{stem}.json",
    )


def discover_dataset(src: Path, out: Path, spec: DatasetSpec, splits: list[str] | None = None) -> list[Job]:
    """The frames of a described dataset as jobs: every frame name (:func:`cityseg.datasets.find_files`)
    with an image and a label in each split (``splits``, else those its patterns find; a pattern
    without ``{split}`` gives ``train``), written under that name."""
    names = splits or dataset_splits(spec, src) or ["train"]
    jobs = []
    for split in names:
        images, found = find_files(spec, src, split, "images"), find_files(spec, src, split, "labels")
        for frame, label in found.items():
            if frame in images:
                jobs.append(Job("dataset", images[frame], *_targets(out, split, spec.name, frame), label=label,
                                spec=spec))
        missing = [s for s in found if s not in images]
        if missing:
            log.warning("%s: skipped %d frame(s) of split %r with a label but no image (e.g. %s; images: %r)",
                        src, len(missing), split, missing[0], spec.images)
    if not jobs:
        check_patterns(spec, src, names[0])  # names the pattern that matches nothing
        raise CitysegError(f"{src}: no frame has both an image ({spec.images!r}) and a label ({spec.labels!r})")
    return jobs


def discover(src: Path, out: Path, fmt: str, splits: list[str] | None = None, city: str | None = None) -> list[Job]:
    """List the frames of SRC as jobs (nothing is read but folder listings)."""
    if fmt == "cityscapes":
        if city is not None:
            raise CitysegError("--city names the output city of --format pairs; cityscapes keeps its own cities")
        root = src / layout.IMAGE_DIR
        if not root.is_dir():
            raise CitysegError(f"{src}: no leftImg8bit/ folder; not a Cityscapes tree")
        jobs = []
        for split_dir in _pick_splits(_subdirs(root), splits, root):
            images = sorted(split_dir.glob(f"*/*{layout.IMAGE_SUFFIX}"))
            for image in images:
                targets = _targets(out, split_dir.name, image.parent.name, layout.frame_of_image(image))
                jobs.append(Job("cityscapes", image, *targets))
            orphans = layout.frames_without_photo(src, split_dir.name, images)
            if orphans:
                log.warning("%s: skipped %d frame(s) of split %r with labels but no photo in %s/%s/ (e.g. %s)",
                            src, len(orphans), split_dir.name, layout.IMAGE_DIR, split_dir.name, orphans[0])
        where = f"{root}/<split>/<city>/*{layout.IMAGE_SUFFIX}"
    else:
        city = city or DEFAULT_PAIRS_CITY
        if not city or "/" in city or city.startswith("."):
            raise CitysegError(f"--city {city!r}: not a folder name")
        _refuse_split_folder(src)
        jobs = [
            Job("pairs", f, *_targets(out, d.name, city, f.stem))
            for d in _pick_splits(_subdirs(src), splits, src)
            for f in _pair_files(d)
        ]
        where = f"{src}/<split>/*.jpg|*.png"
    if not jobs:
        raise CitysegError(f"{src}: no images found (looked for {where})")
    return jobs


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


def write_description(out: Path, spec: DatasetSpec) -> None:
    """``OUT/dataset.yaml``: ``spec`` with patterns of the prepared layout (raw ids in the labelIds files)."""
    import dataclasses

    import yaml

    prepared = dataclasses.replace(
        spec,
        images=f"{layout.IMAGE_DIR}/{{split}}/{{city}}/{{stem}}{layout.IMAGE_SUFFIX}",
        labels=f"{layout.LABEL_DIR}/{{split}}/{{city}}/{{stem}}{layout.LABEL_IDS_SUFFIX}",
    )
    with atomic_path(out / layout.DATASET_FILE) as tmp:
        tmp.write_text(yaml.safe_dump(prepared.to_dict(), sort_keys=False), encoding="utf-8")


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


def _run_job_star(args: tuple[Job, str | None, bool]) -> Result:
    return run_job(*args)


def _check_paths(src: Path, out: Path) -> None:
    if not src.is_dir():
        raise CitysegError(f"{src}: not a folder")
    s, o = src.resolve(), out.resolve()
    if o == s or s in o.parents:
        raise CitysegError(f"{out}: is inside the source {src}; prepare never writes into SRC")


def prepare(src: str | os.PathLike, out: str | os.PathLike, fmt: str = "auto", splits: list[str] | None = None,
            city: str | None = None, workers: int = 1, skip_bad: bool = False, link: str | None = None,
            progress: bool = True, force: bool = False, dataset: str | DatasetSpec | None = None) -> Summary:
    """Convert SRC into the official layout under OUT (see the module docstring).

    Args:
        fmt: "auto", "cityscapes" or "pairs".
        splits: split folder names to convert (default: all found).
        city: output city folder of pairs (default "pairs").
        workers: processes; 1 runs in this process.
        skip_bad: go on past bad files and list them in the summary; otherwise the first bad
            file raises CitysegError (files finished so far stay, a rerun resumes).
        link: None copies images, "hard" or "sym" links them (cityscapes sources only).
        force: make every frame again, even those whose outputs match their sources.
        dataset: a description (name, file or spec) other than Cityscapes': SRC is read through
            its patterns and table (format ``dataset``).
    """
    from tqdm import tqdm

    src, out = Path(src), Path(out)
    _check_paths(src, out)
    if fmt not in FORMATS:
        raise CitysegError(f"format {fmt!r}: valid formats are {', '.join(FORMATS)}")
    if link is not None and link not in LINKS:
        raise CitysegError(f"link {link!r}: valid values are {', '.join(LINKS)}")
    spec = load_dataset(dataset) if dataset is not None else None
    if spec is not None and spec != load_dataset("cityscapes"):
        if fmt != "auto" or city is not None:
            raise CitysegError(f"--dataset {spec.name}: its description gives the layout; drop --format and --city")
        fmt = "dataset"
        if link:
            raise CitysegError(f"--dataset {spec.name}: images are re-encoded as PNG and cannot be linked; "
                               "drop --link/--symlink")
    fmt = detect_format(src, splits) if fmt == "auto" else fmt
    if link and fmt == "pairs":
        raise CitysegError(f"{src}: images of pairs files are cut out of them and cannot be linked; drop --link/--symlink")
    jobs = discover_dataset(src, out, spec, splits) if fmt == "dataset" else discover(src, out, fmt, splits, city)
    if fmt == "dataset":
        write_description(out, spec)
    summary = Summary(out, fmt)
    todo = [(job, link, force) for job in jobs]
    pool = None
    if workers > 1 and len(jobs) > 1:
        # Build the colour tables once, here; each worker adopts them (_init_worker).
        lut_spec = spec if spec is not None and fmt == "dataset" else None
        luts = [confident_lut()] + ([confident_lut(palette_of(lut_spec))] if lut_spec is not None else [])
        pool = WorkerPool(min(workers, len(jobs)), f"prepare {src}", [__name__], _init_worker, (lut_spec, luts))
        results = pool.map(_run_job_star, todo, ordered=False, describe=lambda args: str(args[0].source))
    else:
        results = map(_run_job_star, todo)
    try:
        for result in tqdm(results, total=len(jobs), desc="prepare", unit="file", disable=logs.bar_disable(progress)):
            if result.status == "bad":
                if not skip_bad:
                    raise CitysegError(result.message)
                summary.bad.append(result)
            elif result.status == "skipped":
                summary.skipped += 1
            else:
                summary.written += 1
                summary.stale += result.stale
                summary.stats = summary.stats + result.stats
    finally:
        if pool is not None:
            pool.close()  # after a bad file: the frames not started are dropped, those running finish
    summary.bad.sort(key=lambda r: str(r.source))
    return summary


def _init_worker(spec: DatasetSpec | None, luts: list[np.ndarray]) -> None:
    """Initializer of prepare's worker processes: adopt the parent's colour tables (16 MB each, a
    third of a second to build) as those of the Cityscapes palette and of ``spec``'s, so that no
    worker builds them again. Workers share no memory with the parent (:mod:`cityseg.processes`)."""
    palettes = [CITYSCAPES] + ([palette_of(spec)] if spec is not None else [])
    for palette, lut in zip(palettes, luts):
        vars(palette)["lut"] = lut  # where the functools.cached_property Palette.lut keeps its value
