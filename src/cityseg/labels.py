"""The official Cityscapes label table and everything derived from it.

This is the one place that spells out the Cityscapes labels. The table is copied from the
dataset authors' ``cityscapesscripts/helpers/labels.py`` (and tested against that package);
the number of train classes, the ignore value, the id <-> trainId lookups and the palettes
are all derived from it below.

Colour collisions in the official table (several labels share one colour):

* ``(0, 0, 0)`` is shared by the void labels unlabeled, ego vehicle, rectification border,
  out of roi and static; all map to the ignore value.
* ``(153, 153, 153)`` is shared by pole (train class) and polegroup (void): a colour mask
  cannot tell them apart, so the colour maps to pole.
* ``(0, 0, 142)`` is shared by car (train class) and license plate (void): the colour maps
  to car.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Label:
    """One row of the official table."""

    name: str
    id: int
    train_id: int  # 255 (or -1 for license plate) means: not evaluated
    category: str
    category_id: int
    has_instances: bool
    ignore_in_eval: bool
    color: tuple[int, int, int]


# fmt: off
LABELS: tuple[Label, ...] = (
    #     name                    id  trainId  category       catId  hasInst  ignoreEval  color
    Label("unlabeled",             0,  255, "void",          0, False, True,  (0, 0, 0)),
    Label("ego vehicle",           1,  255, "void",          0, False, True,  (0, 0, 0)),
    Label("rectification border",  2,  255, "void",          0, False, True,  (0, 0, 0)),
    Label("out of roi",            3,  255, "void",          0, False, True,  (0, 0, 0)),
    Label("static",                4,  255, "void",          0, False, True,  (0, 0, 0)),
    Label("dynamic",               5,  255, "void",          0, False, True,  (111, 74, 0)),
    Label("ground",                6,  255, "void",          0, False, True,  (81, 0, 81)),
    Label("road",                  7,    0, "flat",          1, False, False, (128, 64, 128)),
    Label("sidewalk",              8,    1, "flat",          1, False, False, (244, 35, 232)),
    Label("parking",               9,  255, "flat",          1, False, True,  (250, 170, 160)),
    Label("rail track",           10,  255, "flat",          1, False, True,  (230, 150, 140)),
    Label("building",             11,    2, "construction",  2, False, False, (70, 70, 70)),
    Label("wall",                 12,    3, "construction",  2, False, False, (102, 102, 156)),
    Label("fence",                13,    4, "construction",  2, False, False, (190, 153, 153)),
    Label("guard rail",           14,  255, "construction",  2, False, True,  (180, 165, 180)),
    Label("bridge",               15,  255, "construction",  2, False, True,  (150, 100, 100)),
    Label("tunnel",               16,  255, "construction",  2, False, True,  (150, 120, 90)),
    Label("pole",                 17,    5, "object",        3, False, False, (153, 153, 153)),
    Label("polegroup",            18,  255, "object",        3, False, True,  (153, 153, 153)),
    Label("traffic light",        19,    6, "object",        3, False, False, (250, 170, 30)),
    Label("traffic sign",         20,    7, "object",        3, False, False, (220, 220, 0)),
    Label("vegetation",           21,    8, "nature",        4, False, False, (107, 142, 35)),
    Label("terrain",              22,    9, "nature",        4, False, False, (152, 251, 152)),
    Label("sky",                  23,   10, "sky",           5, False, False, (70, 130, 180)),
    Label("person",               24,   11, "human",         6, True,  False, (220, 20, 60)),
    Label("rider",                25,   12, "human",         6, True,  False, (255, 0, 0)),
    Label("car",                  26,   13, "vehicle",       7, True,  False, (0, 0, 142)),
    Label("truck",                27,   14, "vehicle",       7, True,  False, (0, 0, 70)),
    Label("bus",                  28,   15, "vehicle",       7, True,  False, (0, 60, 100)),
    Label("caravan",              29,  255, "vehicle",       7, True,  True,  (0, 0, 90)),
    Label("trailer",              30,  255, "vehicle",       7, True,  True,  (0, 0, 110)),
    Label("train",                31,   16, "vehicle",       7, True,  False, (0, 80, 100)),
    Label("motorcycle",           32,   17, "vehicle",       7, True,  False, (0, 0, 230)),
    Label("bicycle",              33,   18, "vehicle",       7, True,  False, (119, 11, 32)),
    Label("license plate",        -1,   -1, "vehicle",       7, False, True,  (0, 0, 142)),
)
# fmt: on

#: The value that marks a pixel as not evaluated (the table's trainId of void labels).
IGNORE_INDEX: int = 255

#: Labels that are trained and evaluated, in trainId order.
TRAIN_LABELS: tuple[Label, ...] = tuple(
    sorted((lb for lb in LABELS if not lb.ignore_in_eval), key=lambda lb: lb.train_id)
)
#: Number of train classes.
NUM_CLASSES: int = len(TRAIN_LABELS)
#: Official class names, indexed by trainId.
CLASS_NAMES: tuple[str, ...] = tuple(lb.name for lb in TRAIN_LABELS)

#: Official categories in categoryId order, without void (the evaluated categories).
CATEGORIES: tuple[str, ...] = tuple(
    dict.fromkeys(lb.category for lb in sorted(LABELS, key=lambda lb: lb.category_id) if lb.category_id > 0)
)
#: Category index (into CATEGORIES) of each train class, indexed by trainId.
CLASS_CATEGORY: tuple[int, ...] = tuple(CATEGORIES.index(lb.category) for lb in TRAIN_LABELS)

#: Label ids (0..33) that occur in labelIds maps; -1 (license plate) never does.
MAX_LABEL_ID: int = max(lb.id for lb in LABELS)
VALID_LABEL_IDS: tuple[int, ...] = tuple(lb.id for lb in LABELS if lb.id >= 0)

LABEL_BY_ID: dict[int, Label] = {lb.id: lb for lb in LABELS}
LABEL_BY_NAME: dict[str, Label] = {lb.name: lb for lb in LABELS}


def _id_to_train_id_lut() -> np.ndarray:
    # 256 entries so that any uint8 map can be indexed; ids outside the table give IGNORE_INDEX
    # (callers that must reject unknown ids check with VALID_LABEL_IDS first).
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for lb in LABELS:
        if lb.id >= 0 and not lb.ignore_in_eval:
            lut[lb.id] = lb.train_id
    return lut


#: ``ID_TO_TRAIN_ID[label_id]`` -> trainId (IGNORE_INDEX for void); uint8, 256 entries.
ID_TO_TRAIN_ID: np.ndarray = _id_to_train_id_lut()


def _train_id_to_id_lut() -> np.ndarray:
    lut = np.zeros(256, dtype=np.uint8)  # anything not a train class -> 0 (unlabeled)
    for lb in TRAIN_LABELS:
        lut[lb.train_id] = lb.id
    return lut


#: ``TRAIN_ID_TO_ID[train_id]`` -> label id (0 = unlabeled for IGNORE_INDEX); uint8, 256 entries.
TRAIN_ID_TO_ID: np.ndarray = _train_id_to_id_lut()


def _train_palette() -> np.ndarray:
    pal = np.zeros((256, 3), dtype=np.uint8)  # ignore and unknown values draw black
    for lb in TRAIN_LABELS:
        pal[lb.train_id] = lb.color
    return pal


#: ``TRAIN_PALETTE[train_id]`` -> RGB colour; (256, 3) uint8, black for ignore.
TRAIN_PALETTE: np.ndarray = _train_palette()


def _id_palette() -> np.ndarray:
    pal = np.zeros((256, 3), dtype=np.uint8)
    for lb in LABELS:
        if lb.id >= 0:
            pal[lb.id] = lb.color
    return pal


#: ``ID_PALETTE[label_id]`` -> RGB colour of the official ``_gtFine_color.png``; (256, 3) uint8.
ID_PALETTE: np.ndarray = _id_palette()


def _color_to_train_id() -> dict[tuple[int, int, int], int]:
    # Every distinct colour of the table -> the trainId it stands for. A colour shared by a
    # train class and a void label (pole/polegroup, car/license plate) goes to the train class.
    out: dict[tuple[int, int, int], int] = {}
    for lb in LABELS:
        tid = lb.train_id if not lb.ignore_in_eval else IGNORE_INDEX
        if lb.color not in out or out[lb.color] == IGNORE_INDEX:
            out[lb.color] = tid
    return out


#: Each distinct official colour (train and void) -> trainId (IGNORE_INDEX for void colours).
COLOR_TO_TRAIN_ID: dict[tuple[int, int, int], int] = _color_to_train_id()


def train_ids_to_label_ids(train_ids: np.ndarray) -> np.ndarray:
    """Map a trainId map (any shape, uint8) to official label ids (void -> 0)."""
    return TRAIN_ID_TO_ID[train_ids]


def label_ids_to_train_ids(label_ids: np.ndarray) -> np.ndarray:
    """Map a labelIds map (any shape, integer in 0..255) to trainIds (void -> IGNORE_INDEX)."""
    return ID_TO_TRAIN_ID[label_ids]


def colorize(train_ids: np.ndarray) -> np.ndarray:
    """(H, W) uint8 trainIds -> (H, W, 3) uint8 RGB in the official palette (ignore black)."""
    return TRAIN_PALETTE[train_ids]
