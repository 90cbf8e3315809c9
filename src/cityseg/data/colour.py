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
:class:`~cityseg.data.palette.Palette` (:mod:`cityseg.data.palette`). Every function takes
``palette=``: :data:`~cityseg.data.palette.CITYSCAPES` (the official table) when None, or
:func:`~cityseg.data.palette.palette_of` for a dataset described by
:class:`cityseg.datasets.DatasetSpec`. The method works on any palette of up to
:data:`~cityseg.data.palette.MAX_COLOURS` colours; its constants were tuned on Cityscapes masks.
Label maps themselves must only ever be resized with nearest-neighbour; this module exists for
masks where someone did not. How well it recovers degraded masks is measured by
:mod:`cityseg.data.colour_sim`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cityseg.data.palette import (
    CHROMA_WEIGHT,
    CITYSCAPES,
    NO_COLOUR,
    YCBCR,
    Palette,
    rgb_codes,
    ycc_distances,
)

# Noise model, in YCbCr intensity units (0..255). Tuned on the real fixture frames with
# benchmarks/bench_colour.py; see the module docstring for the role of each (the confidence
# thresholds and the void prior, which the palette's tables are built with: cityseg.data.palette).
SIGMA_LUMA = 3.0  # luma noise of JPEG at quality ~75
SIGMA_CHROMA = 10.0  # chroma noise, chroma residual after its own best mixing weight
SIGMA_CHROMA_LAG = 20.0  # allowed disagreement between the chroma and luma mixing weights
LOCAL_RADIUS = 2  # window radius (pixels) for "present nearby"
REGION_RADIUS = 8  # window radius for "present in the region"
NEAREST_LOCAL = 3  # first components tried: this many nearest local colours
COST_REGION = 5.0  # prior cost of a component present in the region but not nearby
COST_ABSENT = 10.0  # prior cost of a component not present in the region
MIN_SUPPORT = 4  # pixels of a 3x3 window (centre included) that make a confident pixel well supported
MAX_RESIDUAL = 25.0  # fit residual (in sigma^2 units) above which a pixel is unrecoverable
_CHUNK = 4096  # uncertain pixels per vectorised block: temporaries stay in the CPU cache


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


def confident_lut(palette: Palette | None = None) -> np.ndarray:
    """(2**24,) uint8: palette index of every confident RGB colour, NO_COLOUR elsewhere.

    Built once per palette (a fraction of a second; :attr:`Palette.lut`) so that classifying an
    image's confident pixels is one table lookup. ``cityseg prepare`` builds it once and hands it to
    its worker processes (:func:`cityseg.data.prepare._init_worker`).
    """
    return _resolve(palette).lut


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
    dy, dc = ycc_distances(ycc, pal)  # (M, P)
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
    padded = np.pad(idx, 1, constant_values=NO_COLOUR)
    count = np.zeros((h, w), np.uint8)
    for dy in range(3):
        for dx in range(3):
            count += padded[dy:dy + h, dx:dx + w] == idx
    return count


def _unmix(flat: np.ndarray, idx: np.ndarray, u: np.ndarray, shape: tuple[int, int],
           source_size: tuple[int, int], pal: Palette, weak: np.ndarray | None = None) -> np.ndarray:
    """Palette index (NO_COLOUR = unrecoverable) of the uncertain pixels ``u`` of a flat (H*W, 3) mask.

    ``idx`` holds the confident pixels' palette index (NO_COLOUR elsewhere); they give the
    candidates and the neighbour weights.
    """
    h, w = shape
    bit = pal.bit_dtype.type
    conf_bits = np.where(idx == NO_COLOUR, 0, np.left_shift(bit(1), np.minimum(idx, pal.n - 1).astype(bit)))
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
        ycc = flat[j].astype(np.float32) @ YCBCR.T
        a[j], b[j], t[j], residual = _fit_pairs(ycc, local[j], region[j], pal)
        bad[s:s + _CHUNK] = residual > MAX_RESIDUAL
    shift = (min(0.5, 0.5 * w / source_size[0]), min(0.5, 0.5 * h / source_size[1]))
    return np.where(bad, NO_COLOUR, _decide(a, b, t, u, shape, shift)).astype(np.uint8)


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
        (H, W) uint8 index into ``palette.colours`` (NO_COLOUR = unrecoverable) and the pixel counts.
    """
    if rgb.ndim != 3 or rgb.shape[2] not in (3, 4) or rgb.dtype != np.uint8:
        raise ValueError(f"expected (H, W, 3|4) uint8 colours, got {rgb.shape} {rgb.dtype}")
    pal = _resolve(palette)
    h, w = rgb.shape[:2]
    if source_size is None:
        source_size = pal.frame_size or (w, h)
    flat = rgb[..., :3].reshape(-1, 3)
    idx = pal.lut[rgb_codes(flat)]  # (H*W,) palette index of confident pixels, NO_COLOUR elsewhere
    exact = (idx != NO_COLOUR) & (pal.colours[np.minimum(idx, pal.n - 1)] == flat).all(1)
    known = rgb[..., 3].reshape(-1) != 0 if rgb.shape[2] == 4 else np.ones(h * w, bool)
    idx[~known] = NO_COLOUR
    weak = None
    if MIN_SUPPORT:
        weak = (idx != NO_COLOUR) & ~exact & (_support(idx.reshape(h, w)).reshape(-1) < MIN_SUPPORT)
    uncertain = np.flatnonzero(((idx == NO_COLOUR) & known) | (weak if weak is not None else False))
    if len(uncertain):
        idx[uncertain] = _unmix(flat, idx, uncertain, (h, w), source_size, pal, weak)
    n_exact = int(np.count_nonzero(exact & known))
    n_ignored = int(np.count_nonzero(idx == NO_COLOUR))
    return idx.reshape(h, w), ColourStats(h * w, n_exact, h * w - n_exact - n_ignored, n_ignored)


#: Least share of a colour mask's pixels that must lie near a palette colour (:func:`palette_share`);
#: below it the image is not a colour mask and its "recovered" labels would be made up. It lies
#: between the shares of masks and of photos measured in BENCHMARKS.md ("Telling colour masks from
#: photos"); used for every palette: one with fewer colours leaves a photo even fewer pixels near one.
MIN_PALETTE_SHARE = 0.5


def palette_share(rgb: np.ndarray, *, palette: Palette | None = None) -> float:
    """Share of the pixels of a (H, W, 3|4) uint8 image whose colour is near a colour of ``palette``
    (None: :data:`CITYSCAPES`).

    "Near" is the confidence distance of step 1 of the recovery (:func:`confident_lut`), so the
    share is that of pixels the recovery keeps without unmixing. Pixels with alpha 0 are left out;
    1.0 when no pixel is left.
    """
    near = confident_lut(palette)[rgb_codes(rgb[..., :3])] != NO_COLOUR
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
