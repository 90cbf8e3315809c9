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

Colours shared by several labels (see :mod:`cityseg.labels`): black -> unlabeled (void),
(153, 153, 153) -> pole, (0, 0, 142) -> car. Label maps themselves must only ever be
resized with nearest-neighbour; this module exists for masks where someone did not.
"""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass

import numpy as np

from cityseg import labels

#: Size of an official Cityscapes frame (width, height). Resized masks are assumed to come
#: from it when deciding where NEAREST would have sampled (only affects near-ties).
CITYSCAPES_SIZE: tuple[int, int] = (2048, 1024)

_NO_COLOUR = np.iinfo(np.uint8).max  # palette index of "no colour recovered" (the last uint8)


def _palette() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # Distinct colours of the official table; a colour shared by a train class and a void
    # label maps to the train class (labels.COLOR_TO_TRAIN_ID), and to the lowest label id
    # that trains as that class (black -> 0 unlabeled, grey -> 17 pole, blue -> 26 car).
    colours = sorted(labels.COLOR_TO_TRAIN_ID)
    train_ids = np.full(256, labels.IGNORE_INDEX, np.uint8)  # index _NO_COLOUR -> ignore
    label_ids = np.zeros(256, np.uint8)  # index _NO_COLOUR -> 0 (unlabeled)
    for k, colour in enumerate(colours):
        train_ids[k] = labels.COLOR_TO_TRAIN_ID[colour]
        label_ids[k] = min(
            lb.id for lb in labels.LABELS
            if lb.color == colour and lb.id >= 0 and labels.ID_TO_TRAIN_ID[lb.id] == train_ids[k]
        )
    return np.array(colours, np.uint8), train_ids, label_ids


#: (P, 3) uint8: the distinct official colours; ``PALETTE_TRAIN_IDS`` / ``PALETTE_LABEL_IDS``
#: (256,) uint8 map a palette index (or _NO_COLOUR) to a trainId (ignore) / label id (0).
PALETTE, PALETTE_TRAIN_IDS, PALETTE_LABEL_IDS = _palette()
_N = len(PALETTE)
assert _N <= 32, "palette indices are kept as bits of a uint32"

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
_PAL_YCC = PALETTE.astype(np.float32) @ _YCBCR.T
_PAL_DY = (_PAL_YCC[:, None, 0] - _PAL_YCC[None, :, 0]) ** 2  # (P, P) squared luma distances
_PAL_DC = ((_PAL_YCC[:, None, 1:] - _PAL_YCC[None, :, 1:]) ** 2).sum(-1)  # (P, P) chroma
_RARE_VOID = (PALETTE_TRAIN_IDS[:_N] == labels.IGNORE_INDEX) & (PALETTE.sum(1) > 0)
_VOID_PRIOR = np.where(_RARE_VOID, COST_VOID, 0.0).astype(np.float32)  # (P,)


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


@functools.cache
def confident_lut() -> np.ndarray:
    """(2**24,) uint8: palette index of every confident RGB colour, _NO_COLOUR elsewhere.

    Built once per process (a fraction of a second) by testing only the RGB box around each palette
    colour that can reach the confidence ellipsoid, so that classifying an image's
    confident pixels is one table lookup. Called before forking worker processes, it is built once
    and shared by them (``cityseg prepare``).
    """
    lut = np.full(1 << 24, _NO_COLOUR, np.uint8)
    reach = int(np.ceil(CONFIDENT_LUMA * (1 + 1.8 / CHROMA_WEIGHT)))  # bounds |dR|, |dG|, |dB|
    step = np.arange(-reach, reach + 1)
    box = np.stack(np.meshgrid(step, step, step, indexing="ij"), -1).reshape(-1, 3)
    ycc = box.astype(np.float32) @ _YCBCR.T  # the metric is translation invariant
    box = box[ycc[:, 0] ** 2 + CHROMA_WEIGHT**2 * (ycc[:, 1:] ** 2).sum(1) <= CONFIDENT_LUMA**2]
    pts = (PALETTE[:, None, :].astype(np.int32) + box).reshape(-1, 3)
    pts = pts[((pts >= 0) & (pts <= np.iinfo(np.uint8).max)).all(1)]
    index, dist = _nearest(pts.astype(np.float32) @ _YCBCR.T)
    ok = dist <= np.where(_RARE_VOID[index], CONFIDENT_VOID, CONFIDENT_LUMA) ** 2
    lut[_codes(pts[ok])] = index[ok]
    return lut


def _distances(ycc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(M, 3) YCbCr -> squared luma and chroma distances to every palette colour, (M, P) each."""
    dy = (ycc[:, 0:1] - _PAL_YCC[:, 0]) ** 2
    c = ycc[:, 1:]
    # |c - p|^2 = |c|^2 - 2 c.p + |p|^2 as a matrix product (much faster than broadcasting)
    dc = (c * c).sum(1, keepdims=True) - 2 * c @ _PAL_YCC[:, 1:].T + (_PAL_YCC[:, 1:] ** 2).sum(1)
    return dy, np.maximum(dc, 0)


def _nearest(ycc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(M, 3) YCbCr -> nearest palette index (M,) and its weighted squared distance (M,)."""
    dy, dc = _distances(ycc)
    d = dy + CHROMA_WEIGHT**2 * dc
    k = d.argmin(1)
    return k.astype(np.uint8), d[np.arange(len(k)), k]


def _or_filter(bits: np.ndarray, radius: int) -> np.ndarray:
    """Bitwise OR of a (H, W) uint32 map over a (2r+1)^2 window (separable: rows, then columns)."""
    rows = bits.copy()
    for s in range(1, radius + 1):
        rows[:, s:] |= bits[:, :-s]
        rows[:, :-s] |= bits[:, s:]
    out = rows.copy()
    for s in range(1, radius + 1):
        out[s:] |= rows[:-s]
        out[:-s] |= rows[s:]
    return out


def _bit_table(bits: np.ndarray) -> np.ndarray:
    """(M,) uint32 bitmasks -> (M, P) bool (bit k = palette colour k)."""
    as_bytes = np.ascontiguousarray(bits, dtype="<u4").view(np.uint8).reshape(-1, 4)
    return np.unpackbits(as_bytes, axis=1, bitorder="little")[:, :_N].astype(bool)


def _fit_pairs(ycc: np.ndarray, local: np.ndarray, region: np.ndarray) -> tuple[np.ndarray, ...]:
    """Best two-colour mixture for each uncertain pixel.

    Args:
        ycc: (M, 3) float32 YCbCr of the pixels.
        local, region: (M,) uint32 bitmasks of palette colours present nearby / in the region.

    Returns:
        a, b: (M,) uint8 palette indices; t: (M,) float32 weight of ``b``; residual: (M,)
        fit residual in sigma^2 units (priors excluded).
    """
    m = len(ycc)
    dy, dc = _distances(ycc)  # (M, P)
    near, reg = _bit_table(local), _bit_table(region)
    prior = np.where(near, 0, np.where(reg, COST_REGION, COST_ABSENT)).astype(np.float32) + _VOID_PRIOR
    # first component: the nearest colours among those present nearby (others sort last)
    order = np.where(near, 0, np.float32(1e9)) + dy + CHROMA_WEIGHT**2 * dc
    top = np.argpartition(order, NEAREST_LOCAL - 1, axis=1)[:, :NEAREST_LOCAL]  # (M, K)
    rows = np.arange(m)[:, None]
    # Projection onto the segment a-b from squared distances only (law of cosines):
    # e.v = (|x-a|^2 + |b-a|^2 - |x-b|^2) / 2, so no (M, K, P, 3) arrays are needed.
    dya, dca = dy[rows, top][..., None], dc[rows, top][..., None]  # (M, K, 1)
    dyab, dcab = _PAL_DY[top], _PAL_DC[top]  # (M, K, P)
    ey = 0.5 * (dya + dyab - dy[:, None, :])
    ec = 0.5 * (dca + dcab - dc[:, None, :])
    ty = np.clip(ey / np.maximum(dyab, 1e-6), 0, 1)  # mixing weight seen by luma
    tc = np.clip(ec / np.maximum(dcab, 1e-6), 0, 1)  # ... and by chroma
    residual = np.maximum(dya - ty * (2 * ey - ty * dyab), 0) / SIGMA_LUMA**2
    residual += np.maximum(dca - tc * (2 * ec - tc * dcab), 0) / SIGMA_CHROMA**2
    # chroma must also roughly agree with the luma weight (JPEG smears it, hence the loose sigma)
    residual += np.maximum(dca - ty * (2 * ec - ty * dcab), 0) / SIGMA_CHROMA_LAG**2
    # a single colour (b == a) pays its prior once
    cost = residual + prior[rows, top][..., None] + np.where(top[..., None] == np.arange(_N), 0, prior[:, None, :])
    best = cost.reshape(m, -1).argmin(1)
    ka, kb = np.divmod(best, _N)
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
           source_size: tuple[int, int], weak: np.ndarray | None = None) -> np.ndarray:
    """Palette index (_NO_COLOUR = unrecoverable) of the uncertain pixels ``u`` of a flat (H*W, 3) mask.

    ``idx`` holds the confident pixels' palette index (_NO_COLOUR elsewhere); they give the
    candidates and the neighbour weights.
    """
    h, w = shape
    conf_bits = np.where(idx == _NO_COLOUR, 0, np.left_shift(np.uint32(1), np.minimum(idx, _N - 1).astype(np.uint32)))
    conf_bits = conf_bits.astype(np.uint32).reshape(h, w)
    local = _or_filter(conf_bits, LOCAL_RADIUS).reshape(-1)
    region = _or_filter(conf_bits, REGION_RADIUS).reshape(-1)
    if weak is not None and weak.any():
        strong_bits = np.where(weak.reshape(h, w), 0, conf_bits).astype(np.uint32)
        local_strong = _or_filter(strong_bits, LOCAL_RADIUS).reshape(-1)
        local = np.where(weak, local_strong, local)
    a, b, t = idx.copy(), idx.copy(), np.zeros(h * w, np.float32)
    bad = np.zeros(len(u), bool)
    for s in range(0, len(u), _CHUNK):
        j = u[s:s + _CHUNK]
        ycc = flat[j].astype(np.float32) @ _YCBCR.T
        a[j], b[j], t[j], residual = _fit_pairs(ycc, local[j], region[j])
        bad[s:s + _CHUNK] = residual > MAX_RESIDUAL
    shift = (min(0.5, 0.5 * w / source_size[0]), min(0.5, 0.5 * h / source_size[1]))
    return np.where(bad, _NO_COLOUR, _decide(a, b, t, u, shape, shift)).astype(np.uint8)


def recover_palette_index(rgb: np.ndarray, source_size: tuple[int, int] = CITYSCAPES_SIZE) -> tuple[np.ndarray, ColourStats]:
    """Recover the palette colour of every pixel of a (possibly degraded) colour mask.

    Args:
        rgb: (H, W, 3) or (H, W, 4) uint8 colour mask; alpha 0 marks a pixel as unknown.
        source_size: (width, height) the mask was resized from, to know where NEAREST samples.

    Returns:
        (H, W) uint8 index into :data:`PALETTE` (_NO_COLOUR = unrecoverable) and the pixel counts.
    """
    if rgb.ndim != 3 or rgb.shape[2] not in (3, 4) or rgb.dtype != np.uint8:
        raise ValueError(f"expected (H, W, 3|4) uint8 colours, got {rgb.shape} {rgb.dtype}")
    h, w = rgb.shape[:2]
    flat = rgb[..., :3].reshape(-1, 3)
    idx = confident_lut()[_codes(flat)]  # (H*W,) palette index of confident pixels, _NO_COLOUR elsewhere
    exact = (idx != _NO_COLOUR) & (PALETTE[np.minimum(idx, _N - 1)] == flat).all(1)
    known = rgb[..., 3].reshape(-1) != 0 if rgb.shape[2] == 4 else np.ones(h * w, bool)
    idx[~known] = _NO_COLOUR
    weak = None
    if MIN_SUPPORT:
        weak = (idx != _NO_COLOUR) & ~exact & (_support(idx.reshape(h, w)).reshape(-1) < MIN_SUPPORT)
    uncertain = np.flatnonzero(((idx == _NO_COLOUR) & known) | (weak if weak is not None else False))
    if len(uncertain):
        idx[uncertain] = _unmix(flat, idx, uncertain, (h, w), source_size, weak)
    n_exact = int(np.count_nonzero(exact & known))
    n_ignored = int(np.count_nonzero(idx == _NO_COLOUR))
    return idx.reshape(h, w), ColourStats(h * w, n_exact, h * w - n_exact - n_ignored, n_ignored)


#: Least share of a colour mask's pixels that must lie near a palette colour (:func:`palette_share`);
#: below it the image is not a colour mask and its "recovered" labels would be made up. Measured
#: on all 3,075 files of the pairs copy of Cityscapes (JPEG masks squashed from 2048x1024 to
#: 256x256, so with wide blended borders): masks 0.647 at worst (train/1309.jpg), median 0.808;
#: photos (their left halves) 0.341 at most, median 0.076; Cityscapes and KITTI photos 0.27 at most.
MIN_PALETTE_SHARE = 0.5


def palette_share(rgb: np.ndarray) -> float:
    """Share of the pixels of a (H, W, 3|4) uint8 image whose colour is near a palette colour.

    "Near" is the confidence distance of step 1 of the recovery (:func:`confident_lut`), so the
    share is that of pixels the recovery keeps without unmixing. Pixels with alpha 0 are left out;
    1.0 when no pixel is left.
    """
    near = confident_lut()[_codes(rgb[..., :3])] != _NO_COLOUR
    if rgb.shape[2] == 4:
        near = near[rgb[..., 3] != 0]
    return float(near.mean()) if near.size else 1.0


def color_to_train_ids(rgb: np.ndarray, source_size: tuple[int, int] = CITYSCAPES_SIZE) -> tuple[np.ndarray, ColourStats]:
    """(H, W, 3|4) uint8 colour mask -> ((H, W) uint8 trainIds, stats); unrecoverable -> ignore."""
    index, stats = recover_palette_index(rgb, source_size)
    return PALETTE_TRAIN_IDS[index], stats


def color_to_label_ids(rgb: np.ndarray, source_size: tuple[int, int] = CITYSCAPES_SIZE) -> tuple[np.ndarray, np.ndarray, ColourStats]:
    """Colour mask -> ((H, W) uint8 trainIds, (H, W) uint8 labelIds, stats).

    Label ids keep void classes that have their own colour (parking, dynamic, ...);
    black and unrecoverable pixels become 0 (unlabeled).
    """
    index, stats = recover_palette_index(rgb, source_size)
    return PALETTE_TRAIN_IDS[index], PALETTE_LABEL_IDS[index], stats


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
    """Render, resize and save a colour mask the way people's scripts do.

    Args:
        label_ids: (H, W) uint8 official labelIds (2048x1024 for real frames).
        size: (width, height) to resize to with PIL's ``Image.resize`` (antialiased).
        resample: "nearest", "bilinear", "bicubic" or "lanczos".
        jpeg_quality: save as JPEG with this quality (PIL defaults otherwise, i.e. 4:2:0
            chroma subsampling); None saves as PNG (lossless).

    Returns:
        (h, w, 3) uint8 degraded colour mask, and the (h, w) uint8 reference trainIds: the
        labelIds -> trainIds map resized with NEAREST (how label maps must be resized).
    """
    from PIL import Image

    filters = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC,
               "lanczos": Image.LANCZOS}
    colour = Image.fromarray(labels.ID_PALETTE[label_ids]).resize(size, filters[resample])
    buf = io.BytesIO()
    if jpeg_quality is None:
        colour.save(buf, format="PNG")
    else:
        colour.save(buf, format="JPEG", quality=jpeg_quality)
    buf.seek(0)
    with Image.open(buf) as img:
        degraded = np.asarray(img.convert("RGB"))
    reference = np.asarray(Image.fromarray(labels.ID_TO_TRAIN_ID[label_ids]).resize(size, Image.NEAREST))
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

    ``convert``: (H, W, 3) uint8 -> (H, W) uint8 trainIds; default the robust recovery.
    """
    degraded, reference = degrade_colour_mask(label_ids, size, resample, jpeg_quality)
    if convert is None:
        convert = lambda rgb: color_to_train_ids(rgb)[0]  # noqa: E731
    return score_recovery(convert(degraded), reference)
