"""Reading every form in which people hold Cityscapes labels.

In order of preference (what :func:`cityseg.layout.find_label` picks when several sit beside an image):

1. ``*_gtFine_labelIds.png``: official label ids -> trainIds with a lookup table. This
   reproduces the evaluation ground truth exactly.
2. ``*_gtFine_labelTrainIds.png``: trainIds as they are.
3. ``*_gtFine_color.png`` (RGB or RGBA): colours -> trainIds with the robust recovery of
   :mod:`cityseg.data.colour` (blended borders of resized or JPEG masks included).

Colour masks are read in the Cityscapes colours unless a ``palette``
(:class:`cityseg.data.palette.Palette`, e.g. ``Palette.from_spec(spec)``) says otherwise;
:func:`load_colour` reads one under any file name. Id files always hold Cityscapes ids.

Also the "pairs" copy of Cityscapes: one JPEG or PNG per frame holding the photo on its left
half and the colour mask on its right half (:func:`read_pair`).

Label maps are only ever resized with nearest-neighbour; a map that was interpolated must
come in as a colour mask, where the recovery undoes the blending.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cityseg import labels
from cityseg.data.colour import (
    MIN_PALETTE_SHARE,
    ColourStats,
    color_to_label_ids,
    color_to_train_ids,
    palette_share,
)
from cityseg.data.palette import CITYSCAPES, Palette
from cityseg.data.png import read_map
from cityseg.errors import CitysegError
from cityseg.layout import label_kind
from cityseg.utils import read_image

__all__ = [
    "LabelMaps", "ColourStats", "color_to_train_ids", "color_to_label_ids", "read_label_ids", "read_train_ids",
    "read_colour", "load_colour", "derive_label_ids", "load_label", "read_label", "read_pair", "load_pair",
    "check_colour_mask",
]

_VALID_ID = np.zeros(256, bool)
_VALID_ID[list(labels.VALID_LABEL_IDS)] = True
_VALID_TRAIN_ID = np.zeros(256, bool)
_VALID_TRAIN_ID[: labels.NUM_CLASSES] = True
_VALID_TRAIN_ID[labels.IGNORE_INDEX] = True


@dataclass
class LabelMaps:
    """Both label maps of one frame and how they were obtained.

    ``train_ids`` / ``label_ids``: (H, W) uint8. ``label_ids`` are the source's own where it
    has them, else derived (void and unknown -> 0). ``stats`` counts exact, recovered and
    ignored pixels (every pixel of a labelIds/labelTrainIds file is exact).
    """

    train_ids: np.ndarray
    label_ids: np.ndarray
    stats: ColourStats = field(default_factory=ColourStats)


def _read_single_channel(path: Path, what: str) -> np.ndarray:
    """Read a single-channel map (:func:`cityseg.data.png.read_map`) into an int64 (H, W) array (values unchecked)."""
    array = read_map(path)
    if array.ndim != 2:
        raise CitysegError(f"{path}: has {array.shape[2]} channels; a {what} file holds one channel of integer values")
    return array.astype(np.int64)


def _bad_values_message(path: Path, values: np.ndarray, valid: str) -> str:
    bad = np.unique(values)
    shown = ", ".join(str(v) for v in bad[:8]) + (", ..." if len(bad) > 8 else "")
    return f"{path}: values outside the label table: {shown} (valid: {valid})"


def read_label_ids(path: str | os.PathLike) -> np.ndarray:
    """Read a ``*_gtFine_labelIds.png`` -> (H, W) uint8 official label ids.

    Every value must be an id of the official table (labels.VALID_LABEL_IDS); otherwise
    CitysegError names the file and the bad values.
    """
    path = Path(path)
    ids = _read_single_channel(path, "labelIds")
    inside = (ids >= 0) & (ids < len(_VALID_ID))
    ok = inside & _VALID_ID[np.where(inside, ids, 0)]
    if not ok.all():
        raise CitysegError(_bad_values_message(path, ids[~ok], f"{min(labels.VALID_LABEL_IDS)}-{labels.MAX_LABEL_ID}"))
    return ids.astype(np.uint8)


def read_train_ids(path: str | os.PathLike) -> np.ndarray:
    """Read a ``*_gtFine_labelTrainIds.png`` -> (H, W) uint8 trainIds, checked.

    Values must be below labels.NUM_CLASSES or equal labels.IGNORE_INDEX.
    """
    path = Path(path)
    ids = _read_single_channel(path, "labelTrainIds")
    inside = (ids >= 0) & (ids < len(_VALID_TRAIN_ID))
    ok = inside & _VALID_TRAIN_ID[np.where(inside, ids, 0)]
    if not ok.all():
        raise CitysegError(_bad_values_message(path, ids[~ok], f"0-{labels.NUM_CLASSES - 1} or {labels.IGNORE_INDEX}"))
    return ids.astype(np.uint8)


def read_colour(path: str | os.PathLike) -> np.ndarray:
    """Read a colour mask -> (H, W, 3) or (H, W, 4) uint8 (palette PNGs are expanded)."""
    path = Path(path)
    array = read_image(path)
    if array.ndim == 2:
        from PIL import Image

        with Image.open(path) as img:  # a palette PNG reads as indices: expand its colours
            if img.mode not in ("P", "PA"):
                raise CitysegError(f"{path}: is a single-channel image; a colour mask is RGB or RGBA")
        array = read_image(path, "RGBA")
    if array.shape[2] not in (3, 4):
        raise CitysegError(f"{path}: has {array.shape[2]} channels; a colour mask is RGB or RGBA")
    return array


def load_colour(path: str | os.PathLike, *, palette: Palette | None = None) -> LabelMaps:
    """Read a colour mask in ``palette``'s colours (None: Cityscapes) -> train ids, label ids and pixel counts.

    CitysegError naming the file when it is not mostly palette colours (:func:`check_colour_mask`).
    A mask of another palette is taken at its own size (its ``frame_size`` is unknown).
    """
    rgb = read_colour(path)
    check_colour_mask(rgb, path, palette=palette)
    train, ids, stats = color_to_label_ids(rgb, palette=palette)
    return LabelMaps(train, ids, stats)


def derive_label_ids(train_ids: np.ndarray) -> np.ndarray:
    """(H, W) uint8 trainIds -> (H, W) uint8 official label ids (ignore -> 0 unlabeled).

    Lets any output serve as evaluation ground truth: id -> trainId of the result gives
    back ``train_ids`` exactly.
    """
    if not _VALID_TRAIN_ID[train_ids].all():
        bad = np.unique(train_ids[~_VALID_TRAIN_ID[train_ids]])
        raise ValueError(f"not trainIds: values {bad.tolist()}")
    return labels.train_ids_to_label_ids(train_ids)


def load_label(path: str | os.PathLike, *, palette: Palette | None = None) -> LabelMaps:
    """Read any label file (kind from its suffix) -> trainIds, labelIds and pixel counts.

    ``palette``: the colours of a colour mask (:func:`load_colour`); None for Cityscapes'.
    """
    path = Path(path)
    kind = label_kind(path)
    if kind == "labelIds":
        ids = read_label_ids(path)
        return LabelMaps(labels.label_ids_to_train_ids(ids), ids, ColourStats(ids.size, ids.size))
    if kind == "labelTrainIds":
        train = read_train_ids(path)
        return LabelMaps(train, derive_label_ids(train), ColourStats(train.size, train.size))
    return load_colour(path, palette=palette)


def read_label(path: str | os.PathLike, *, palette: Palette | None = None) -> np.ndarray:
    """Read any label file -> (H, W) uint8 trainIds (IGNORE_INDEX for void/unrecoverable).

    ``palette``: the colours of a colour mask; None for Cityscapes'.
    """
    return load_label(path, palette=palette).train_ids


def read_pair(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a "pairs" file (photo left, colour mask right; JPEG or PNG).

    Returns:
        (H, W/2, 3) uint8 photo and (H, W/2, 3) uint8 colour mask.
    """
    path = Path(path)
    both = read_image(path, "RGB")
    width = both.shape[1]
    if width % 2:
        raise CitysegError(f"{path}: width {width} is odd; a pairs file holds the photo and its colour mask side by side")
    return both[:, : width // 2], both[:, width // 2:]


def load_pair(path: str | os.PathLike, *, palette: Palette | None = None) -> tuple[np.ndarray, LabelMaps]:
    """Read a pairs file -> photo (H, W/2, 3) uint8 and the label maps recovered in ``palette``'s
    colours (None: Cityscapes)."""
    photo, colour = read_pair(path)
    check_colour_mask(colour, path, "its right half", palette=palette)
    train, ids, stats = color_to_label_ids(colour, palette=palette)
    return photo, LabelMaps(train, ids, stats)


def check_colour_mask(rgb: np.ndarray, path: str | os.PathLike, part: str = "", *,
                      palette: Palette | None = None) -> None:
    """CitysegError naming ``path`` unless most pixels of the (H, W, 3|4) uint8 ``rgb`` are near a
    colour of ``palette`` (None: Cityscapes; :data:`cityseg.data.colour.MIN_PALETTE_SHARE`): a photo
    or a map in another palette would otherwise become confident, made-up labels."""
    share = palette_share(rgb, palette=palette)
    if share < MIN_PALETTE_SHARE:
        what = f"{part} is not" if part else "not"
        name = (palette or CITYSCAPES).name
        raise CitysegError(
            f"{path}: {what} a {name} colour mask: {1 - share:.1%} of its pixels are far from every "
            f"label colour; a colour mask has at least {MIN_PALETTE_SHARE:.0%} of its pixels near one"
        )
