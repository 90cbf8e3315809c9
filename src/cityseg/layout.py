"""Cityscapes names on disk: folders, file suffixes, frame names, where an image's label lies.

The official layout (``root`` is the folder holding ``leftImg8bit`` and ``gtFine``)::

    root/leftImg8bit/<split>/<city>/<frame>_leftImg8bit.png
    root/gtFine/<split>/<city>/<frame>_gtFine_{labelIds,labelTrainIds,color}.png   (one or more)
    root/gtFine/<split>/<city>/<frame>_gtFine_instanceIds.png                      (for iIoU)

A *frame name* is what precedes the suffix: ``<city>_<seq>_<frame>`` on Cityscapes
(``aachen_000000_000019``), any stem elsewhere (the numeric stems of a prepared pairs tree).
Label-id predictions for the benchmark server are ``<frame>_leftImg8bit.png`` in a folder per
city. Standard library only: ``cityseg evaluate --pred-dir`` and the data package both use it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from cityseg.errors import CitysegError

IMAGE_DIR = "leftImg8bit"
LABEL_DIR = "gtFine"
IMAGE_SUFFIX = "_leftImg8bit.png"
#: Label kinds in order of preference (what :func:`find_label` picks first) -> file suffix.
LABEL_SUFFIXES: dict[str, str] = {
    "labelIds": "_gtFine_labelIds.png",
    "labelTrainIds": "_gtFine_labelTrainIds.png",
    "color": "_gtFine_color.png",
}
LABEL_IDS_SUFFIX = LABEL_SUFFIXES["labelIds"]
TRAIN_IDS_SUFFIX = LABEL_SUFFIXES["labelTrainIds"]
COLOR_SUFFIX = LABEL_SUFFIXES["color"]
INSTANCE_SUFFIX = "_gtFine_instanceIds.png"
#: A Cityscapes frame name, ``<city>_<seq>_<frame>``: its predictions go to a folder named after the city.
#: The description a prepared folder was made for (``cityseg prepare --dataset``), at its root.
DATASET_FILE = "dataset.yaml"
CITYSCAPES_NAME = re.compile(r"^(.+)_(\d{6})_(\d{6})$")


# --- frame names ------------------------------------------------------------------------------


def frame_of_image(image_path: str | os.PathLike) -> str:
    """``.../aachen_000000_000019_leftImg8bit.png`` -> ``aachen_000000_000019``; CitysegError for
    a file not named like a Cityscapes image."""
    name = Path(image_path).name
    if not name.endswith(IMAGE_SUFFIX):
        raise CitysegError(f"{image_path}: not a Cityscapes image; names must end with {IMAGE_SUFFIX}")
    return name[: -len(IMAGE_SUFFIX)]


def frame_of_stem(stem: str) -> str:
    """A photo's stem -> its frame name: ``frankfurt_000000_002196_leftImg8bit`` ->
    ``frankfurt_000000_002196``; any other stem is taken as it is."""
    suffix = IMAGE_SUFFIX[: -len(".png")]
    return stem[: -len(suffix)] if stem.endswith(suffix) else stem


def frame_of_prediction(file_name: str, frames: dict[str, Path] | set[str]) -> str | None:
    """The frame in ``frames`` a prediction PNG belongs to, else None.

    That is the longest frame name ``k`` with ``file_name`` == ``k.png`` or ``k_*.png``: on
    Cityscapes names the official script's ``<city>_<seq>_<frame>*.png``, and it takes other
    names too (``101_leftImg8bit.png`` and ``101.png`` are both frame ``101``).
    """
    parts = file_name[: -len(".png")].split("_")
    for n in range(len(parts), 0, -1):
        key = "_".join(parts[:n])
        if key in frames:
            return key
    return None


def label_kind(path: str | os.PathLike) -> str:
    """'labelIds', 'labelTrainIds' or 'color' from the file name; CitysegError otherwise."""
    name = Path(path).name
    for kind, suffix in LABEL_SUFFIXES.items():
        if name.endswith(suffix):
            return kind
    raise CitysegError(f"{path}: not a label file; names must end with one of {', '.join(LABEL_SUFFIXES.values())}")


# --- paths ------------------------------------------------------------------------------------


def label_dirs(image_path: str | os.PathLike) -> list[Path]:
    """Folders that may hold an image's labels: the mirrored ``gtFine/<split>/<city>/``, then the image's own."""
    # The official layout mirrors leftImg8bit/<split>/<city>/ under gtFine/; some copies keep
    # labels beside the images, so that folder is tried too.
    image_path = Path(image_path)
    parts = image_path.parent.parts
    dirs = []
    if IMAGE_DIR in parts:
        i = len(parts) - 1 - parts[::-1].index(IMAGE_DIR)
        dirs.append(Path(*parts[:i], LABEL_DIR, *parts[i + 1 :]))
    dirs.append(image_path.parent)
    return dirs


def label_path(image_path: str | os.PathLike, suffix: str) -> Path:
    """The file with ``suffix`` (e.g. :data:`INSTANCE_SUFFIX`) of an image, in the mirrored ``gtFine`` folder."""
    return label_dirs(image_path)[0] / f"{frame_of_image(image_path)}{suffix}"


def find_label(image_path: str | os.PathLike) -> Path:
    """The label file of a ``*_leftImg8bit.png`` image: labelIds > labelTrainIds > color.

    Looks in the mirrored ``gtFine/<split>/<city>/`` folder, then beside the image.
    Raises CitysegError naming the image and the files looked for when there is none.
    """
    image_path = Path(image_path)
    frame = frame_of_image(image_path)
    dirs = label_dirs(image_path)
    for suffix in LABEL_SUFFIXES.values():
        for folder in dirs:
            candidate = folder / f"{frame}{suffix}"
            if candidate.is_file():
                return candidate
    looked = " or ".join(str(d) for d in dirs)
    raise CitysegError(
        f"{image_path}: no label found; looked for {frame}_gtFine_{{labelIds,labelTrainIds,color}}.png in {looked}"
    )


def prediction_path(out_dir: Path, name: str) -> Path:
    """Where a label-id prediction of frame ``name`` goes for the benchmark server:
    ``out_dir/<city>/<name>_leftImg8bit.png`` for a Cityscapes name ``<city>_<seq>_<frame>``,
    else ``out_dir/<name>_leftImg8bit.png``."""
    match = CITYSCAPES_NAME.match(name)
    folder = out_dir / match.group(1) if match else out_dir
    return folder / f"{name}{IMAGE_SUFFIX}"


# --- walking a tree ---------------------------------------------------------------------------


def find_images(root: str | os.PathLike, split: str) -> list[Path]:
    """Sorted ``root/leftImg8bit/<split>/<city>/*_leftImg8bit.png``; CitysegError naming what is missing."""
    root = Path(root)
    layout = f"{IMAGE_DIR}/<split>/<city>/<name>{IMAGE_SUFFIX} with labels in {LABEL_DIR}/<split>/<city>/"
    if not root.is_dir():
        raise CitysegError(f"{root}: data folder not found (expected the Cityscapes layout {layout})")
    split_dir = root / IMAGE_DIR / split
    if not split_dir.is_dir():
        if not (root / IMAGE_DIR).is_dir():
            raise CitysegError(f"{root}: not a Cityscapes-layout folder, no {IMAGE_DIR}/ (expected {layout})")
        splits = sorted(p.name for p in (root / IMAGE_DIR).iterdir() if p.is_dir())
        raise CitysegError(f"{split_dir}: split {split!r} not found; splits here: {', '.join(splits) or 'none'}")
    images = sorted(split_dir.glob(f"*/*{IMAGE_SUFFIX}"))
    if not images:
        raise CitysegError(f"{split_dir}: split {split!r} is empty, no <city>/<name>{IMAGE_SUFFIX} files (expected {layout})")
    return images


def frames_without_photo(root: str | os.PathLike, split: str, photos: list[Path]) -> list[str]:
    """Frames with a label file in ``root/gtFine/<split>/<city>/`` but no photo among ``photos``:
    sorted ``<city>/<frame>`` names (such frames cannot be used; callers say how many were skipped)."""
    label_root = Path(root) / LABEL_DIR / split
    if not label_root.is_dir():
        return []
    have = {(p.parent.name, frame_of_image(p)) for p in photos}
    orphans = set()
    for suffix in LABEL_SUFFIXES.values():
        for path in label_root.glob(f"*/*{suffix}"):
            key = (path.parent.name, path.name[: -len(suffix)])
            if key not in have:
                orphans.add("/".join(key))
    return sorted(orphans)


def has_instances(root: str | os.PathLike, split: str) -> bool:
    """Whether ``root/gtFine/<split>/<city>/`` holds any ``*_gtFine_instanceIds.png`` (iIoU can be scored)."""
    return any((Path(root) / LABEL_DIR / split).glob(f"*/*{INSTANCE_SUFFIX}"))


def walk(root: str | os.PathLike, suffix: str) -> list[Path]:
    """Every file under ``root`` (recursively) whose name ends with ``suffix``, in no particular order."""
    # os.walk is several times faster than Path.rglob on big trees
    return [Path(d) / f for d, _, files in os.walk(root) for f in files if f.endswith(suffix)]


def prepared_dataset(root: str | os.PathLike) -> Path | None:
    """The dataset description ``cityseg prepare --dataset`` left in ``root``, or None."""
    path = Path(root) / DATASET_FILE
    return path if path.is_file() else None
