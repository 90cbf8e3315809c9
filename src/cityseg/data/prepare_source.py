"""What a ``cityseg prepare`` source holds (:mod:`cityseg.data.prepare`): its format, told from the
folder only when it is recognised (:func:`detect_format`), and its frames as jobs (:func:`discover`,
:func:`discover_dataset`), found from folder listings alone.
"""

from __future__ import annotations

import logging
from pathlib import Path

from cityseg import layout
from cityseg.data import formats
from cityseg.data.colour import MIN_PALETTE_SHARE, palette_share
from cityseg.data.prepare_frame import Job, frame_targets
from cityseg.datasets import DatasetSpec, check_patterns, dataset_splits, find_files
from cityseg.errors import CitysegError

log = logging.getLogger(__name__)

PAIR_SUFFIXES = (".jpg", ".jpeg", ".png")
DEFAULT_PAIRS_CITY = "pairs"
DETECT_SAMPLES = 3  # files of each split folder looked at to tell a pairs source (first, middle, last)
KNOWN_FORMATS = (
    f"cityscapes ({layout.IMAGE_DIR}/<split>/<city>/*{layout.IMAGE_SUFFIX} beside {layout.LABEL_DIR}/)",
    "pairs (<split>/*.jpg|*.png, each a photo on the left and its colour mask on the right)",
)


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
                    "(a photo: less)")
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
                jobs.append(Job("dataset", images[frame], *frame_targets(out, split, spec.name, frame), label=label,
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
                targets = frame_targets(out, split_dir.name, image.parent.name, layout.frame_of_image(image))
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
            Job("pairs", f, *frame_targets(out, d.name, city, f.stem))
            for d in _pick_splits(_subdirs(src), splits, src)
            for f in _pair_files(d)
        ]
        where = f"{src}/<split>/*.jpg|*.png"
    if not jobs:
        raise CitysegError(f"{src}: no images found (looked for {where})")
    return jobs
