"""Colour masks (``*_gtFine_color.png``) -> label maps, robust to resizing and JPEG.

A colour mask that was resized with interpolation (PIL's ``Image.resize`` antialiases) or
saved as JPEG holds blended colours along every object border. Exact matching loses those
pixels, and snapping to the nearest palette colour often picks a third class whose colour
happens to lie between the two real ones (car + black looks like truck). We treat each
pixel as a mixture instead:

1. **Confident pixels** (one lookup in a 2**24-entry table): colours within a small
   distance of a palette colour keep that colour: exact ones always, near ones when at
   least ``MIN_SUPPORT`` pixels of their 3x3 window agree. Most pixels end here. A
   thinner line of one near colour is often a blend that happens to hit a third colour
   (the 50/50 border of car and black is the colour of truck), so it is re-fitted
   below, with candidates taken only from well-supported pixels.
2. **Local candidates**: the palette colours of confident pixels within ``LOCAL_RADIUS``
   (and, at a small cost, within ``REGION_RADIUS``) are the likely components of a blend;
   any other colour may still be used (a pole that is never pure at low resolution) but
   pays a prior cost ``COST_ABSENT``. Neighbourhoods are bitmasks (one bit per palette
   colour) OR-ed over a window, so there is no loop over classes.
3. **Unmixing**: every other pixel is fitted as ``(1 - t) * colour_a + t * colour_b`` with
   ``a`` among the ``NEAREST_LOCAL`` nearest local colours and ``b`` any palette colour;
   the pair with the lowest cost (fit residual + priors) wins. The fit is done in JPEG's
   YCbCr space, luma and chroma separately, because JPEG keeps luma sharp but smears
   chroma (4:2:0 subsampling).
4. **Decision**: the pixel takes the component with the larger weight, evaluated half a
   source pixel towards the bottom right, where PIL's NEAREST resize samples a label map
   (``floor((x + 0.5) * scale)``); this settles the many exact 50/50 ties on
   axis-aligned borders. A colour that no pair explains (residual above
   ``MAX_RESIDUAL``) becomes the ignore index rather than a guess.

Everything the method derives from a colour table (the colours, their train and label ids,
their YCbCr distances, the void priors, the lookup table of step 1) lives in one
:class:`Palette`. Every function takes ``palette=``: :data:`CITYSCAPES` (the official table)
when None, or :meth:`Palette.from_spec` for a dataset described by
:class:`cityseg.datasets.DatasetSpec`. The method works on any palette of up to
:data:`MAX_COLOURS` colours; its constants were tuned on Cityscapes masks. In the Cityscapes
palette, colours shared by several labels (see :mod:`cityseg.labels`) map as follows: black ->
unlabeled (void), (153, 153, 153) -> pole, (0, 0, 142) -> car. Label maps themselves must only
ever be resized with nearest-neighbour; this module exists for masks where someone did not.
"""

from __future__ import annotations

import functools
import io
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

_NO_COLOUR = np.iinfo(np.uint8).max  # palette index of "no colour recovered" (the last uint8)

# Noise model, in YCbCr intensity units (0..255). Tuned on the real fixture frames with
# benchmarks/bench_colour.py; see the module docstring for the role of each.
SIGMA_LUMA = 3.0  # luma noise of JPEG at quality ~75
SIGMA_CHROMA = 10.0  # chroma noise, chroma residual after its own best mixing weight
SIGMA_CHROMA_LAG = 20.0  # allowed disagreement between the chroma and luma mixing weights
CONFIDENT_LUMA = 5.0  # a pixel is confident if dY^2 + (CHROMA_WEIGHT dC)^2 <= this^2 ...
CHROMA_WEIGHT = 0.5
CONFIDENT_VOID = 2.0  # ... or this^2 for void colours other than black (rare, crowded)
LOCAL_RADIUS = 2  # window radius (pixels) for "present nearby"
REGION_RADIUS = 8  # window radius for "present in the region"
NEAREST_LOCAL = 3  # first components tried: this many nearest local colours
COST_REGION = 5.0  # prior cost of a component present in the region but not nearby
COST_ABSENT = 10.0  # prior cost of a component not present in the region
COST_VOID = 10.0  # prior cost of a void component other than black
MIN_SUPPORT = 4  # pixels of a 3x3 window (centre included) that make a confident pixel well supported
MAX_RESIDUAL = 25.0  # fit residual (in sigma^2 units) above which a pixel is unrecoverable
_CHUNK = 4096  # uncertain pixels per vectorised block: temporaries stay in the CPU cache

_YCBCR = np.array(  # JPEG's RGB -> YCbCr (offsets dropped: only differences matter)
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
        train_ids: (256,) uint8 palette index -> train id; _NO_COLOUR (unrecoverable) -> ignore.
        label_ids: (256,) uint8 palette index -> raw label id; _NO_COLOUR -> 0.
        frame_size: (width, height) the dataset's masks are drawn at (:func:`recover_palette_index`'s
            default ``source_size``); None when unknown: each mask is then taken at its own size.
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
        train_ids = np.full(256, labels.IGNORE_INDEX, np.uint8)  # index _NO_COLOUR -> ignore
        label_ids = np.zeros(256, np.uint8)  # index _NO_COLOUR -> 0
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
        return self.colours.astype(np.float32) @ _YCBCR.T

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
        """(2**24,) uint8: palette index of every confident RGB colour (:func:`confident_lut`)."""
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


#: The official Cityscapes colours: the palette of every function here when none is given.
CITYSCAPES = _cityscapes()
#: Its tables under their first names: (P, 3) uint8 colours; (256,) uint8 palette index (or
#: _NO_COLOUR) -> trainId (ignore) / label id (0).
PALETTE, PALETTE_TRAIN_IDS, PALETTE_LABEL_IDS = CITYSCAPES.colours, CITYSCAPES.train_ids, CITYSCAPES.label_ids


@functools.cache
def palette_of(spec: DatasetSpec) -> Palette:
    """The palette of a dataset, built once per description (its lookup tables are cached on it):
    :data:`CITYSCAPES` for the Cityscapes table (cityscapes, kitti), else :meth:`Palette.from_spec`."""
    from cityseg.datasets import is_cityscapes_table

    return CITYSCAPES if is_cityscapes_table(spec) else Palette.from_spec(spec)


def _resolve(palette: Palette | None) -> Palette:
    return CITYSCAPES if palette is None else palette


@dataclass
class ColourStats:
    """Pixel counts of one conversion (they add up over files with ``+``)."""

    pixels: int = 0
    exact: int = 0  # colour equal to a palette colour
    recovered: int = 0  # blended or noisy colour assigned a palette colour
    ignored: int = 0  # unrecoverable (or transparent) -> ignore index

    def __add__(self, other: "ColourStats") -> "ColourStats":
        return ColourStats(*(a + b for a, b in zip(self.astuple(), other.astuple())))

    def astuple(self) -> tuple[int, int, int, int]:
        return self.pixels, self.exact, self.recovered, self.ignored


def _codes(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 -> (...) int32 packed 0xRRGGBB."""
    rgb = rgb.astype(np.int32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def confident_lut(palette: Palette | None = None) -> np.ndarray:
    """(2**24,) uint8: palette index of every confident RGB colour, _NO_COLOUR elsewhere.

    Built once per palette (a fraction of a second; :attr:`Palette.lut`) so that classifying an
    image's confident pixels is one table lookup. ``cityseg prepare`` builds it once and hands it to
    its worker processes (:func:`cityseg.data.prepare._init_worker`).
    """
    return _resolve(palette).lut


def _build_confident_lut(pal: Palette) -> np.ndarray:
    """The table of :func:`confident_lut`, testing only the RGB box around each palette colour
    that can reach the confidence ellipsoid."""
    lut = np.full(1 << 24, _NO_COLOUR, np.uint8)
    reach = int(np.ceil(CONFIDENT_LUMA * (1 + 1.8 / CHROMA_WEIGHT)))  # bounds |dR|, |dG|, |dB|
    step = np.arange(-reach, reach + 1)
    box = np.stack(np.meshgrid(step, step, step, indexing="ij"), -1).reshape(-1, 3)
    ycc = box.astype(np.float32) @ _YCBCR.T  # the metric is translation invariant
    box = box[ycc[:, 0] ** 2 + CHROMA_WEIGHT**2 * (ycc[:, 1:] ** 2).sum(1) <= CONFIDENT_LUMA**2]
    pts = (pal.colours[:, None, :].astype(np.int32) + box).reshape(-1, 3)
    pts = pts[((pts >= 0) & (pts <= np.iinfo(np.uint8).max)).all(1)]
    index, dist = _nearest(pts.astype(np.float32) @ _YCBCR.T, pal)
    ok = dist <= np.where(pal.rare_void[index], CONFIDENT_VOID, CONFIDENT_LUMA) ** 2
    lut[_codes(pts[ok])] = index[ok]
    return lut


def _distances(ycc: np.ndarray, pal: Palette) -> tuple[np.ndarray, np.ndarray]:
    """(M, 3) YCbCr -> squared luma and chroma distances to every palette colour, (M, P) each."""
    dy = (ycc[:, 0:1] - pal.ycc[:, 0]) ** 2
    c = ycc[:, 1:]
    # |c - p|^2 = |c|^2 - 2 c.p + |p|^2 as a matrix product (much faster than broadcasting)
    dc = (c * c).sum(1, keepdims=True) - 2 * c @ pal.ycc[:, 1:].T + (pal.ycc[:, 1:] ** 2).sum(1)
    return dy, np.maximum(dc, 0)


def _nearest(ycc: np.ndarray, pal: Palette) -> tuple[np.ndarray, np.ndarray]:
    """(M, 3) YCbCr -> nearest palette index (M,) and its weighted squared distance (M,)."""
    dy, dc = _distances(ycc, pal)
    d = dy + CHROMA_WEIGHT**2 * dc
    k = d.argmin(1)
    return k.astype(np.uint8), d[np.arange(len(k)), k]


def _or_filter(bits: np.ndarray, radius: int) -> np.ndarray:
    """Bitwise OR of a (H, W) unsigned map over a (2r+1)^2 window (separable: rows, then columns)."""
    rows = bits.copy()
    for s in range(1, radius + 1):
        rows[:, s:] |= bits[:, :-s]
        rows[:, :-s] |= bits[:, s:]
    out = rows.copy()
    for s in range(1, radius + 1):
        out[s:] |= rows[:-s]
        out[:-s] |= rows[s:]
    return out


def _bit_table(bits: np.ndarray, n: int) -> np.ndarray:
    """(M,) uint32 or uint64 bitmasks -> (M, n) bool (bit k = palette colour k)."""
    little = np.ascontiguousarray(bits, dtype=bits.dtype.newbyteorder("<"))
    as_bytes = little.view(np.uint8).reshape(-1, little.dtype.itemsize)
    return np.unpackbits(as_bytes, axis=1, bitorder="little")[:, :n].astype(bool)


def _fit_pairs(ycc: np.ndarray, local: np.ndarray, region: np.ndarray, pal: Palette) -> tuple[np.ndarray, ...]:
    """Best two-colour mixture of ``pal``'s colours for each uncertain pixel.

    Args:
        ycc: (M, 3) float32 YCbCr of the pixels.
        local, region: (M,) ``pal.bit_dtype`` bitmasks of palette colours present nearby / in the region.

    Returns:
        a, b: (M,) uint8 palette indices; t: (M,) float32 weight of ``b``; residual: (M,)
        fit residual in sigma^2 units (priors excluded).
    """
    m = len(ycc)
    dy, dc = _distances(ycc, pal)  # (M, P)
    near, reg = _bit_table(local, pal.n), _bit_table(region, pal.n)
    prior = np.where(near, 0, np.where(reg, COST_REGION, COST_ABSENT)).astype(np.float32) + pal.void_prior
    # first component: the nearest colours among those present nearby (others sort last)
    order = np.where(near, 0, np.float32(1e9)) + dy + CHROMA_WEIGHT**2 * dc
    top = np.argpartition(order, NEAREST_LOCAL - 1, axis=1)[:, :NEAREST_LOCAL]  # (M, K)
    rows = np.arange(m)[:, None]
    # Projection onto the segment a-b from squared distances only (law of cosines):
    # e.v = (|x-a|^2 + |b-a|^2 - |x-b|^2) / 2, so no (M, K, P, 3) arrays are needed.
    dya, dca = dy[rows, top][..., None], dc[rows, top][..., None]  # (M, K, 1)
    dyab, dcab = pal.luma_dist[top], pal.chroma_dist[top]  # (M, K, P)
    ey = 0.5 * (dya + dyab - dy[:, None, :])
    ec = 0.5 * (dca + dcab - dc[:, None, :])
    ty = np.clip(ey / np.maximum(dyab, 1e-6), 0, 1)  # mixing weight seen by luma
    tc = np.clip(ec / np.maximum(dcab, 1e-6), 0, 1)  # ... and by chroma
    residual = np.maximum(dya - ty * (2 * ey - ty * dyab), 0) / SIGMA_LUMA**2
    residual += np.maximum(dca - tc * (2 * ec - tc * dcab), 0) / SIGMA_CHROMA**2
    # chroma must also roughly agree with the luma weight (JPEG smears it, hence the loose sigma)
    residual += np.maximum(dca - ty * (2 * ec - ty * dcab), 0) / SIGMA_CHROMA_LAG**2
    # a single colour (b == a) pays its prior once
    cost = residual + prior[rows, top][..., None] + np.where(top[..., None] == np.arange(pal.n), 0, prior[:, None, :])
    best = cost.reshape(m, -1).argmin(1)
    ka, kb = np.divmod(best, pal.n)
    r = np.arange(m)
    pick = lambda arr: arr[r, ka, kb]  # noqa: E731
    # the weight of b: luma and chroma estimates averaged by their precision
    wy, wc = pick(dyab) / SIGMA_LUMA**2, pick(dcab) / SIGMA_CHROMA**2
    t = (pick(ty) * wy + pick(tc) * wc) / np.maximum(wy + wc, 1e-9)
    return top[r, ka].astype(np.uint8), kb.astype(np.uint8), t.astype(np.float32), pick(residual)


def _decide(a: np.ndarray, b: np.ndarray, t: np.ndarray, idx: np.ndarray, shape: tuple[int, int],
            shift: tuple[float, float]) -> np.ndarray:
    """Pick ``a`` or ``b`` at pixels ``idx`` by their weights sampled ``shift`` pixels down-right.

    ``a, b, t`` are full (H*W,) maps (confident pixels: a == b, t == 0); the weight of a
    class at the shifted point is estimated with central differences of the neighbours'.
    """
    h, w = shape
    y, x = np.divmod(idx, w)
    nbr = {  # flat indices of the 4 neighbours, clamped at the image border
        "r": y * w + np.minimum(x + 1, w - 1), "l": y * w + np.maximum(x - 1, 0),
        "d": np.minimum(y + 1, h - 1) * w + x, "u": np.maximum(y - 1, 0) * w + x,
    }

    def weight_at(cls: np.ndarray, j: np.ndarray) -> np.ndarray:
        return np.where(a[j] == cls, 1 - t[j], 0) + np.where((b[j] == cls) & (a[j] != b[j]), t[j], 0)

    def shifted(cls: np.ndarray, own: np.ndarray) -> np.ndarray:
        gx = (weight_at(cls, nbr["r"]) - weight_at(cls, nbr["l"])) / 2
        gy = (weight_at(cls, nbr["d"]) - weight_at(cls, nbr["u"])) / 2
        return own + shift[0] * gx + shift[1] * gy

    ai, bi, ti = a[idx], b[idx], t[idx]
    return np.where(shifted(bi, ti) > shifted(ai, 1 - ti), bi, ai)


def _support(idx: np.ndarray) -> np.ndarray:
    """(H, W) uint8 count of pixels in each 3x3 window (centre included) with the centre's index."""
    h, w = idx.shape
    padded = np.pad(idx, 1, constant_values=_NO_COLOUR)
    count = np.zeros((h, w), np.uint8)
    for dy in range(3):
        for dx in range(3):
            count += padded[dy:dy + h, dx:dx + w] == idx
    return count


def _unmix(flat: np.ndarray, idx: np.ndarray, u: np.ndarray, shape: tuple[int, int],
           source_size: tuple[int, int], pal: Palette, weak: np.ndarray | None = None) -> np.ndarray:
    """Palette index (_NO_COLOUR = unrecoverable) of the uncertain pixels ``u`` of a flat (H*W, 3) mask.

    ``idx`` holds the confident pixels' palette index (_NO_COLOUR elsewhere); they give the
    candidates and the neighbour weights.
    """
    h, w = shape
    bit = pal.bit_dtype.type
    conf_bits = np.where(idx == _NO_COLOUR, 0, np.left_shift(bit(1), np.minimum(idx, pal.n - 1).astype(bit)))
    conf_bits = conf_bits.astype(bit).reshape(h, w)
    local = _or_filter(conf_bits, LOCAL_RADIUS).reshape(-1)
    region = _or_filter(conf_bits, REGION_RADIUS).reshape(-1)
    if weak is not None and weak.any():
        strong_bits = np.where(weak.reshape(h, w), 0, conf_bits).astype(bit)
        local_strong = _or_filter(strong_bits, LOCAL_RADIUS).reshape(-1)
        local = np.where(weak, local_strong, local)
    a, b, t = idx.copy(), idx.copy(), np.zeros(h * w, np.float32)
    bad = np.zeros(len(u), bool)
    for s in range(0, len(u), _CHUNK):
        j = u[s:s + _CHUNK]
        ycc = flat[j].astype(np.float32) @ _YCBCR.T
        a[j], b[j], t[j], residual = _fit_pairs(ycc, local[j], region[j], pal)
        bad[s:s + _CHUNK] = residual > MAX_RESIDUAL
    shift = (min(0.5, 0.5 * w / source_size[0]), min(0.5, 0.5 * h / source_size[1]))
    return np.where(bad, _NO_COLOUR, _decide(a, b, t, u, shape, shift)).astype(np.uint8)


def recover_palette_index(rgb: np.ndarray, source_size: tuple[int, int] | None = None, *,
                          palette: Palette | None = None) -> tuple[np.ndarray, ColourStats]:
    """Recover the palette colour of every pixel of a (possibly degraded) colour mask.

    Args:
        rgb: (H, W, 3) or (H, W, 4) uint8 colour mask; alpha 0 marks a pixel as unknown.
        source_size: (width, height) the mask was resized from, to know where NEAREST samples
            (only settles near-ties). None: the palette's ``frame_size`` (CITYSCAPES_SIZE for
            Cityscapes), else the mask's own size.
        palette: the colours the mask was drawn in; None for :data:`CITYSCAPES`.

    Returns:
        (H, W) uint8 index into ``palette.colours`` (_NO_COLOUR = unrecoverable) and the pixel counts.
    """
    if rgb.ndim != 3 or rgb.shape[2] not in (3, 4) or rgb.dtype != np.uint8:
        raise ValueError(f"expected (H, W, 3|4) uint8 colours, got {rgb.shape} {rgb.dtype}")
    pal = _resolve(palette)
    h, w = rgb.shape[:2]
    if source_size is None:
        source_size = pal.frame_size or (w, h)
    flat = rgb[..., :3].reshape(-1, 3)
    idx = pal.lut[_codes(flat)]  # (H*W,) palette index of confident pixels, _NO_COLOUR elsewhere
    exact = (idx != _NO_COLOUR) & (pal.colours[np.minimum(idx, pal.n - 1)] == flat).all(1)
    known = rgb[..., 3].reshape(-1) != 0 if rgb.shape[2] == 4 else np.ones(h * w, bool)
    idx[~known] = _NO_COLOUR
    weak = None
    if MIN_SUPPORT:
        weak = (idx != _NO_COLOUR) & ~exact & (_support(idx.reshape(h, w)).reshape(-1) < MIN_SUPPORT)
    uncertain = np.flatnonzero(((idx == _NO_COLOUR) & known) | (weak if weak is not None else False))
    if len(uncertain):
        idx[uncertain] = _unmix(flat, idx, uncertain, (h, w), source_size, pal, weak)
    n_exact = int(np.count_nonzero(exact & known))
    n_ignored = int(np.count_nonzero(idx == _NO_COLOUR))
    return idx.reshape(h, w), ColourStats(h * w, n_exact, h * w - n_exact - n_ignored, n_ignored)


#: Least share of a colour mask's pixels that must lie near a palette colour (:func:`palette_share`);
#: below it the image is not a colour mask and its "recovered" labels would be made up. Measured
#: on all 3,075 files of the pairs copy of Cityscapes (JPEG masks squashed from 2048x1024 to
#: 256x256, so with wide blended borders): masks 0.647 at worst (train/1309.jpg), median 0.808;
#: photos (their left halves) 0.341 at most, median 0.076; Cityscapes and KITTI photos 0.27 at most.
#: Used for every palette: one with fewer colours leaves a photo even fewer pixels near one.
MIN_PALETTE_SHARE = 0.5


def palette_share(rgb: np.ndarray, *, palette: Palette | None = None) -> float:
    """Share of the pixels of a (H, W, 3|4) uint8 image whose colour is near a colour of ``palette``
    (None: :data:`CITYSCAPES`).

    "Near" is the confidence distance of step 1 of the recovery (:func:`confident_lut`), so the
    share is that of pixels the recovery keeps without unmixing. Pixels with alpha 0 are left out;
    1.0 when no pixel is left.
    """
    near = confident_lut(palette)[_codes(rgb[..., :3])] != _NO_COLOUR
    if rgb.shape[2] == 4:
        near = near[rgb[..., 3] != 0]
    return float(near.mean()) if near.size else 1.0


def color_to_train_ids(rgb: np.ndarray, source_size: tuple[int, int] | None = None, *,
                       palette: Palette | None = None) -> tuple[np.ndarray, ColourStats]:
    """(H, W, 3|4) uint8 colour mask -> ((H, W) uint8 train ids, stats); unrecoverable -> ignore.

    ``source_size`` and ``palette`` as in :func:`recover_palette_index`.
    """
    index, stats = recover_palette_index(rgb, source_size, palette=palette)
    return _resolve(palette).train_ids[index], stats


def color_to_label_ids(rgb: np.ndarray, source_size: tuple[int, int] | None = None, *,
                       palette: Palette | None = None) -> tuple[np.ndarray, np.ndarray, ColourStats]:
    """Colour mask -> ((H, W) uint8 train ids, (H, W) uint8 label ids, stats).

    Label ids keep void classes that have their own colour (Cityscapes: parking, dynamic, ...);
    black and unrecoverable pixels become 0 (unlabeled). Arguments as in :func:`recover_palette_index`.
    """
    index, stats = recover_palette_index(rgb, source_size, palette=palette)
    pal = _resolve(palette)
    return pal.train_ids[index], pal.label_ids[index], stats


# --------------------------------------------------------------------------------------
# Simulation of degraded masks, shared by benchmarks/bench_colour.py and the tests.


@dataclass
class RecoveryScore:
    """Share of reference pixels recovered, over valid pixels and over boundary pixels."""

    valid: int
    valid_ok: int
    boundary: int
    boundary_ok: int

    @property
    def valid_rate(self) -> float:
        return self.valid_ok / max(self.valid, 1)

    @property
    def boundary_rate(self) -> float:
        return self.boundary_ok / max(self.boundary, 1)

    def __add__(self, other: "RecoveryScore") -> "RecoveryScore":
        return RecoveryScore(self.valid + other.valid, self.valid_ok + other.valid_ok,
                             self.boundary + other.boundary, self.boundary_ok + other.boundary_ok)


def degrade_colour_mask(label_ids: np.ndarray, size: tuple[int, int], resample: str = "bilinear",
                        jpeg_quality: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Render a Cityscapes labelIds map in the official colours, then :func:`degrade_colours` it.

    Args:
        label_ids: (H, W) uint8 official labelIds (2048x1024 for real frames).
        size, resample, jpeg_quality: as in :func:`degrade_colours`.

    Returns:
        (h, w, 3) uint8 degraded colour mask, and the (h, w) uint8 reference trainIds: the
        labelIds -> trainIds map resized with NEAREST (how label maps must be resized).
    """
    return degrade_colours(labels.ID_PALETTE[label_ids], labels.ID_TO_TRAIN_ID[label_ids], size, resample, jpeg_quality)


def degrade_colours(colours: np.ndarray, train_ids: np.ndarray, size: tuple[int, int], resample: str = "bilinear",
                    jpeg_quality: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Resize and save a colour mask of any palette the way people's scripts do.

    Args:
        colours: (H, W, 3) uint8 clean colour mask.
        train_ids: (H, W) uint8 train ids of the same pixels.
        size: (width, height) to resize to with PIL's ``Image.resize`` (antialiased).
        resample: "nearest", "bilinear", "bicubic" or "lanczos".
        jpeg_quality: save as JPEG with this quality (PIL defaults otherwise, i.e. 4:2:0
            chroma subsampling); None saves as PNG (lossless).

    Returns:
        (h, w, 3) uint8 degraded colour mask, and the (h, w) uint8 reference: ``train_ids``
        resized with NEAREST (how label maps must be resized).
    """
    from PIL import Image

    filters = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC,
               "lanczos": Image.LANCZOS}
    resized = Image.fromarray(colours).resize(size, filters[resample])
    buf = io.BytesIO()
    if jpeg_quality is None:
        resized.save(buf, format="PNG")
    else:
        resized.save(buf, format="JPEG", quality=jpeg_quality)
    buf.seek(0)
    with Image.open(buf) as img:
        degraded = np.asarray(img.convert("RGB"))
    reference = np.asarray(Image.fromarray(train_ids).resize(size, Image.NEAREST))
    return degraded, reference


def _holds_other_label(label_map: np.ndarray) -> np.ndarray:
    """(H, W) bool: the 3x3 neighbourhood holds a value other than the centre (edges replicated)."""
    h, w = label_map.shape
    padded = np.pad(label_map, 1, mode="edge")
    out = np.zeros((h, w), bool)
    for dy in range(3):
        for dx in range(3):
            out |= padded[dy:dy + h, dx:dx + w] != label_map
    return out


def score_recovery(pred: np.ndarray, reference: np.ndarray) -> RecoveryScore:
    """Compare (H, W) trainIds with the reference; ignore in ``pred`` counts as a miss.

    A boundary pixel is a valid reference pixel whose 3x3 neighbourhood holds another
    label (ignore included); the image border replicates the edge pixels.
    """
    valid = reference != labels.IGNORE_INDEX
    boundary = valid & _holds_other_label(reference)
    ok = pred == reference
    return RecoveryScore(int(valid.sum()), int((ok & valid).sum()), int(boundary.sum()), int((ok & boundary).sum()))


def measure_recovery(label_ids: np.ndarray, size: tuple[int, int], resample: str = "bilinear",
                     jpeg_quality: int | None = None, convert=None) -> RecoveryScore:
    """Degrade a real labelIds frame (:func:`degrade_colour_mask`), convert it back, score it.

    ``convert``: (H, W, 3) uint8 -> (H, W) uint8 trainIds; default the robust recovery. Cityscapes
    only (label ids are drawn in its colours); for another palette, degrade a mask with
    :func:`degrade_colours` and score with :func:`score_recovery`.
    """
    degraded, reference = degrade_colour_mask(label_ids, size, resample, jpeg_quality)
    if convert is None:
        convert = lambda rgb: color_to_train_ids(rgb)[0]  # noqa: E731
    return score_recovery(convert(degraded), reference)
