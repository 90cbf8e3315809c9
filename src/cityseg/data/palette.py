"""Colour tables for colour-mask recovery (:mod:`cityseg.data.colour`): a dataset's colours and
everything the recovery derives from them, in one :class:`Palette`.

A palette holds the distinct colours of a dataset's classes and void labels with their train and
label ids, and, computed on first use and cached on it, their YCbCr values and distances, the void
priors, and the lookup table of the recovery's first step (:attr:`Palette.lut`): the palette index
of every RGB colour near enough to a palette colour to be kept without unmixing. :data:`CITYSCAPES`
is the official table; :func:`palette_of` gives any dataset's (:class:`cityseg.datasets.DatasetSpec`).
In the Cityscapes palette, colours shared by several labels (see :mod:`cityseg.labels`) map as
follows: black -> unlabeled (void), (153, 153, 153) -> pole, (0, 0, 142) -> car.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from cityseg import labels
from cityseg.errors import CitysegError

if TYPE_CHECKING:
    from cityseg.datasets import Color, DatasetSpec

#: Size of an official Cityscapes frame (width, height): where the Cityscapes palette's masks are
#: assumed to come from when deciding where NEAREST would have sampled (only affects near-ties).
CITYSCAPES_SIZE: tuple[int, int] = (2048, 1024)

#: Most colours a palette may hold: the colours present around a pixel are the bits of one uint64
#: (uint32 up to 32 colours, which is what Cityscapes' 29 use).
MAX_COLOURS = 64

NO_COLOUR = np.iinfo(np.uint8).max  # palette index of "no colour recovered" (the last uint8)

# The confident colours and the void prior, in YCbCr intensity units (0..255); the rest of the
# noise model, and how it was tuned, is in cityseg.data.colour.
CONFIDENT_LUMA = 5.0  # a pixel is confident if dY^2 + (CHROMA_WEIGHT dC)^2 <= this^2 ...
CHROMA_WEIGHT = 0.5
CONFIDENT_VOID = 2.0  # ... or this^2 for void colours other than black (rare, crowded)
COST_VOID = 10.0  # prior cost of a void component other than black

YCBCR = np.array(  # JPEG's RGB -> YCbCr (offsets dropped: only differences matter)
    [[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]], np.float32
)


@dataclass(frozen=True, eq=False, repr=False)
class Palette:
    """Everything the recovery derives from one colour table.

    Use :data:`CITYSCAPES` or :meth:`from_spec`; :meth:`from_table` builds the arrays. The derived
    tables are computed on first use and cached on the instance, the 16 MB :attr:`lut` included:
    built once in ``cityseg prepare``'s process and handed to its workers. Palettes compare
    by identity.

    Attributes:
        name: the dataset's name, for messages ("not a Cityscapes colour mask").
        colours: (P, 3) uint8 distinct colours, sorted (the order decides exact ties of the fit).
        train_ids: (256,) uint8 palette index -> train id; NO_COLOUR (unrecoverable) -> ignore.
        label_ids: (256,) uint8 palette index -> raw label id; NO_COLOUR -> 0.
        frame_size: (width, height) the dataset's masks are drawn at (the default ``source_size`` of
            :func:`cityseg.data.colour.recover_palette_index`); None when unknown: each mask is then
            taken at its own size.
    """

    name: str
    colours: np.ndarray
    train_ids: np.ndarray
    label_ids: np.ndarray
    frame_size: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        assert self.colours.dtype == np.uint8 and self.colours.shape == (self.n, 3) and self.n <= MAX_COLOURS
        assert self.train_ids.shape == self.label_ids.shape == (256,)
        for table in (self.colours, self.train_ids, self.label_ids):
            table.flags.writeable = False  # the cached tables below are derived from them

    def __repr__(self) -> str:
        return f"Palette({self.name!r}, {self.n} colours)"

    @classmethod
    def from_table(cls, name: str, table: Mapping[Color, tuple[int, int]],
                   frame_size: tuple[int, int] | None = None) -> Palette:
        """Distinct colour -> (train id, label id) -> a palette; CitysegError naming ``name`` over MAX_COLOURS."""
        if len(table) > MAX_COLOURS:
            raise CitysegError(f"{name}: {len(table)} distinct label colours; colour recovery handles at most "
                               f"{MAX_COLOURS} (give its labels as grey id files instead)")
        colours = sorted(table)
        train_ids = np.full(256, labels.IGNORE_INDEX, np.uint8)  # index NO_COLOUR -> ignore
        label_ids = np.zeros(256, np.uint8)  # index NO_COLOUR -> 0
        for k, colour in enumerate(colours):
            train_ids[k], label_ids[k] = table[colour]
        return cls(name, np.array(colours, np.uint8).reshape(-1, 3), train_ids, label_ids, frame_size)

    @classmethod
    def from_spec(cls, spec: DatasetSpec) -> Palette:
        """A dataset's class and void colours (:class:`cityseg.datasets.DatasetSpec`).

        Class ``i``'s colour -> train id ``i`` and label id its first id (a class described by its
        colour alone has one of its own, given when the description is read); void
        colours -> ignore and the first void id (0 when none). Black, when void, is the common void
        (no prior cost, like Cityscapes' unlabeled); other void colours are rare (COST_VOID).
        """
        void_id = spec.void_ids[0] if spec.void_ids else 0
        table = {colour: (labels.IGNORE_INDEX, void_id) for colour in spec.void_colors}
        table.update({c.color: (i, c.ids[0] if c.ids else 0) for i, c in enumerate(spec.classes)})
        return cls.from_table(spec.name, table)

    @property
    def n(self) -> int:
        """P, the number of colours."""
        return len(self.colours)

    @property
    def bit_dtype(self) -> np.dtype:
        """Unsigned integer with a bit per colour: a set of palette colours."""
        return np.dtype(np.uint32 if self.n <= 32 else np.uint64)

    @functools.cached_property
    def ycc(self) -> np.ndarray:
        """(P, 3) float32 YCbCr of the colours."""
        return self.colours.astype(np.float32) @ YCBCR.T

    @functools.cached_property
    def luma_dist(self) -> np.ndarray:
        """(P, P) float32 squared luma distances between the colours."""
        return (self.ycc[:, None, 0] - self.ycc[None, :, 0]) ** 2

    @functools.cached_property
    def chroma_dist(self) -> np.ndarray:
        """(P, P) float32 squared chroma distances between the colours."""
        return ((self.ycc[:, None, 1:] - self.ycc[None, :, 1:]) ** 2).sum(-1)

    @functools.cached_property
    def rare_void(self) -> np.ndarray:
        """(P,) bool: void colours other than black (rare, crowded: stricter confidence, a prior cost)."""
        return (self.train_ids[: self.n] == labels.IGNORE_INDEX) & (self.colours.sum(1) > 0)

    @functools.cached_property
    def void_prior(self) -> np.ndarray:
        """(P,) float32 prior cost of each colour as a mixture component (COST_VOID for rare void)."""
        return np.where(self.rare_void, COST_VOID, 0.0).astype(np.float32)

    @functools.cached_property
    def lut(self) -> np.ndarray:
        """(2**24,) uint8: palette index of every confident RGB colour (:func:`_build_confident_lut`)."""
        return _build_confident_lut(self)


def _cityscapes() -> Palette:
    # Distinct colours of the official table; a colour shared by a train class and a void
    # label maps to the train class (labels.COLOR_TO_TRAIN_ID), and to the lowest label id
    # that trains as that class (black -> 0 unlabeled, grey -> 17 pole, blue -> 26 car).
    table = {}
    for colour, train_id in labels.COLOR_TO_TRAIN_ID.items():
        table[colour] = train_id, min(lb.id for lb in labels.LABELS
                                      if lb.color == colour and lb.id >= 0 and labels.ID_TO_TRAIN_ID[lb.id] == train_id)
    return Palette.from_table("Cityscapes", table, CITYSCAPES_SIZE)


#: The official Cityscapes colours: the palette of every function of :mod:`cityseg.data.colour` when none is given.
CITYSCAPES = _cityscapes()
#: Its tables under their first names: (P, 3) uint8 colours; (256,) uint8 palette index (or
#: NO_COLOUR) -> trainId (ignore) / label id (0).
PALETTE, PALETTE_TRAIN_IDS, PALETTE_LABEL_IDS = CITYSCAPES.colours, CITYSCAPES.train_ids, CITYSCAPES.label_ids


@functools.cache
def palette_of(spec: DatasetSpec) -> Palette:
    """The palette of a dataset, built once per description (its lookup tables are cached on it):
    :data:`CITYSCAPES` for the official table (cityscapes, kitti: its void colours keep their own
    label ids), else :meth:`Palette.from_spec`."""
    return CITYSCAPES if spec.id_table.official else Palette.from_spec(spec)


def rgb_codes(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 -> (...) int32 packed 0xRRGGBB."""
    rgb = rgb.astype(np.int32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def _build_confident_lut(pal: Palette) -> np.ndarray:
    """The table of :attr:`Palette.lut` (:func:`cityseg.data.colour.confident_lut`), testing only the
    RGB box around each palette colour that can reach the confidence ellipsoid."""
    lut = np.full(1 << 24, NO_COLOUR, np.uint8)
    reach = int(np.ceil(CONFIDENT_LUMA * (1 + 1.8 / CHROMA_WEIGHT)))  # bounds |dR|, |dG|, |dB|
    step = np.arange(-reach, reach + 1)
    box = np.stack(np.meshgrid(step, step, step, indexing="ij"), -1).reshape(-1, 3)
    ycc = box.astype(np.float32) @ YCBCR.T  # the metric is translation invariant
    box = box[ycc[:, 0] ** 2 + CHROMA_WEIGHT**2 * (ycc[:, 1:] ** 2).sum(1) <= CONFIDENT_LUMA**2]
    pts = (pal.colours[:, None, :].astype(np.int32) + box).reshape(-1, 3)
    pts = pts[((pts >= 0) & (pts <= np.iinfo(np.uint8).max)).all(1)]
    index, dist = _nearest(pts.astype(np.float32) @ YCBCR.T, pal)
    ok = dist <= np.where(pal.rare_void[index], CONFIDENT_VOID, CONFIDENT_LUMA) ** 2
    lut[rgb_codes(pts[ok])] = index[ok]
    return lut


def ycc_distances(ycc: np.ndarray, pal: Palette) -> tuple[np.ndarray, np.ndarray]:
    """(M, 3) YCbCr -> squared luma and chroma distances to every palette colour, (M, P) each."""
    dy = (ycc[:, 0:1] - pal.ycc[:, 0]) ** 2
    c = ycc[:, 1:]
    # |c - p|^2 = |c|^2 - 2 c.p + |p|^2 as a matrix product (much faster than broadcasting)
    dc = (c * c).sum(1, keepdims=True) - 2 * c @ pal.ycc[:, 1:].T + (pal.ycc[:, 1:] ** 2).sum(1)
    return dy, np.maximum(dc, 0)


def _nearest(ycc: np.ndarray, pal: Palette) -> tuple[np.ndarray, np.ndarray]:
    """(M, 3) YCbCr -> nearest palette index (M,) and its weighted squared distance (M,)."""
    dy, dc = ycc_distances(ycc, pal)
    d = dy + CHROMA_WEIGHT**2 * dc
    k = d.argmin(1)
    return k.astype(np.uint8), d[np.arange(len(k)), k]
