"""Crop-first resampling, the kernel of :class:`cityseg.data.transforms.RandomScaleCrop`: "resize the
whole frame, then crop a window" computed on only the source pixels under the window.

Per axis, :func:`plan_axis` chooses the source slice under the window (plus a kernel margin) and
where its samples land (:class:`AxisPlan`); :func:`resample_image` resamples that slice of an image
with bilinear antialias and :func:`resample_mask` that of a mask with nearest neighbour at pixel
centres, both on the full-frame grid (:func:`resample_aa_on_grid`, :func:`resample_nearest_on_grid`),
so the window equals the same window of a full resize up to a shift under half an output pixel that
image and mask share.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as nnf

#: ``F.interpolate``'s bilinear antialias kernel, sampling at the scale it is given (not one
#: recomputed from the sizes), so that sample ``i`` is centred on source ``(i + 0.5) / scale - 0.5``.
_AA = {"mode": "bilinear", "antialias": True, "recompute_scale_factor": False}


def resample_aa_on_grid(region: torch.Tensor, size: tuple[int, int], scales: tuple[float, float]) -> torch.Tensor:
    """Bilinear antialias resampling of ``region`` (N, C, h, w) to ``size`` (H, W) samples placed on the
    grid of a full-frame resize by ``scales`` (H, W): output ``i`` is centred on source ``(i + 0.5) / scale - 0.5``.

    The kernel of ``F.interpolate(mode="bilinear", antialias=True)`` and ``F.resize``, called as
    ``interpolate(scale_factor=scales, recompute_scale_factor=False)`` so that it samples on the
    frame's grid. That call takes no size and makes ``floor(h * scale)`` samples, one fewer than a
    window needs where it ends on the frame's right or bottom edge (208 of 300 such windows of a
    2048x1024 frame, scales 0.5-2). Padding the region alone does not give the missing sample, as the
    kernel renormalises its weights over the pixels of its input; so the region is zero-padded on the
    right/bottom until the call makes enough samples, and each sample whose kernel reaches the
    padding is divided by the share of its weight that fell inside the region. That is exact, not an
    approximation: the kernel computes ``sum_j w_j x_j / sum_j w_j`` over the taps in its input, the
    padded taps add exactly 0 to the numerator and only their weight to the denominator, and the
    share ``sum_(j < h) w_j / sum_j w_j`` is the same call on a row of ones then zeros (the kernel is
    separable: one row per axis, the 2-D share is their product). Float images come out within float
    rounding of the kernel called on the unpadded region with both size and scale (the private
    ``aten._upsample_bilinear2d_aa`` this replaces): <= 6.1e-5 on 0-255 values over random regions,
    scales 0.25-2.5 and 0-2 missing samples (tested). Samples that do not reach the padding are
    divided by exactly 1: the same bits.

    uint8 images, the CPU pipeline's (the uint8 kernel is 5x faster than the float one at s = 0.55),
    cannot be divided once the kernel has rounded them. There the padded call gives the samples that
    stay inside the region, and the last rows/columns, which reach the padding, are recomputed in
    float (``_redo_padded_samples``) and rounded once. The uint8 kernel works in fixed point, rounds
    twice and sets its precision from the largest weight among the samples it makes, so not every
    byte is the same: over 73 real-size windows that needed the extra sample, 0.02% of the pixels
    differ, by 1 (by 2 at most in small random cases; both stay within 1 of the float resample).
    Where no padding is needed it is the same call, byte for byte.

    The CPU kernel copies an axis whose sample count equals its pixel count, whatever the scale (the
    CUDA kernel resamples it): the direct call did that, so on the CPU we ask for it (scale 1), and
    where the padding would make the call copy an axis that it should resample, the padding goes on.
    The CPU kernel also resamples inputs one pixel wide wrongly, so the shares are resampled as rows,
    never as columns.

    Measured (benchmarks/bench_transforms.py --repeats 4, one thread, 8 real frames, run back to back
    on a shared 2-core machine at load average 2.4-2.6): a training sample costs 1.04x the decode floor
    in CPU time (1.05x wall) with this, 1.11x (1.12x) with the direct kernel call it replaces. Earlier
    runs: 1.05-1.11x for the direct call, 1.38-1.47x for the public resize-the-frame-then-crop (v2
    ``ScaleJitter`` + ``RandomCrop``). Issue 4's target is <= 1.2x.
    """
    lengths = (region.shape[-2], region.shape[-1])
    if region.device.type == "cpu":  # where the CPU kernel copies an axis, whatever the scale
        scales = (1.0 if size[0] == lengths[0] else scales[0], 1.0 if size[1] == lengths[1] else scales[1])
    padded = (_aa_length(lengths[0], scales[0], size[0]), _aa_length(lengths[1], scales[1], size[1]))
    if padded == lengths:
        return nnf.interpolate(region, scale_factor=scales, **_AA)[..., : size[0], : size[1]]
    x = nnf.pad(region, (0, padded[1] - lengths[1], 0, padded[0] - lengths[0]))
    out = nnf.interpolate(x, scale_factor=scales, **_AA)[..., : size[0], : size[1]]
    like = region if region.is_floating_point() else region.new_empty(0, dtype=torch.float32)
    rows = _in_image_share(lengths[0], padded[0], size[0], scales[0], like)
    cols = _in_image_share(lengths[1], padded[1], size[1], scales[1], like)
    if region.is_floating_point():
        return out.div_(rows[:, None] * cols)
    return _redo_padded_samples(region, out, (rows, cols), scales, padded)


def _aa_length(length: int, scale: float, samples: int) -> int:
    """The smallest length >= ``length`` of which ``interpolate`` makes >= ``samples`` samples by resampling.

    Where it would make as many samples as the length, the CPU kernel copies the axis instead, which
    is only wanted where ``samples == length`` (the caller passes scale 1 then). For scales just above
    1 that pads up to ``1 / (scale - 1)`` pixels: at most a frame's length in the pipeline, and rare.
    """
    while int(length * scale) < samples or (int(length * scale) == length and scale != 1.0):
        length += 1
    return length


def _in_image_share(length: int, padded: int, samples: int, scale: float, like: torch.Tensor) -> torch.Tensor:
    """(samples,) share of each sample's kernel weight on pixels ``[0, length)`` of ``padded``:
    exactly 1 for the samples whose kernel does not reach ``[length, padded)``. Dtype and device of ``like``.

    Resampled as (1, 1, 1, padded) rows whatever the axis: the CPU kernel mis-resamples columns one
    pixel wide. The share is read off the in-image row, not as 1 minus the padding's share, which
    would lose its digits where the padding takes nearly all of a sample's weight.
    """
    rows = like.new_zeros(1, 1, 2, padded)
    rows[0, 0, 0, :length] = 1  # the image
    rows[0, 0, 1, length:] = 1  # the padding: exactly 0 for the samples that do not reach it
    inside, padding = nnf.interpolate(rows, scale_factor=(1.0, scale), **_AA)[0, 0, :, :samples]
    return torch.where(padding == 0, 1.0, inside)


def _redo_padded_samples(
    region: torch.Tensor,
    out: torch.Tensor,
    shares: tuple[torch.Tensor, torch.Tensor],
    scales: tuple[float, float],
    padded: tuple[int, int],
) -> torch.Tensor:
    """Recompute in float, in ``out``, the samples of a uint8 resample of zero-padded ``region`` whose
    kernel reached the padding: the last rows and columns (``shares`` from ``_in_image_share``).

    Each is a strip: the rows' kernels applied to the last few region rows (weights from
    ``_edge_weights``), then resampled along the other axis by ``resample_aa_on_grid`` in float.
    """
    (h, w), (n0, n1) = region.shape[-2:], out.shape[-2:]
    # the samples that reach the padding are the last ones: count the leading shares of exactly 1
    first_row, first_col = (int((share == 1).cumprod(0).sum()) for share in shares)
    if first_col < n1:
        weights, lo = _edge_weights(w, padded[1], n1, first_col, scales[1])
        strip = (region[..., lo:].float() @ weights).transpose(-1, -2)  # (N, C, n1 - first_col, h)
        strip = resample_aa_on_grid(strip, (n1 - first_col, n0), (1.0, scales[0])).transpose(-1, -2)
        out[..., first_col:] = strip.round_().clamp_(0, 255)
    if first_row < n0:
        weights, lo = _edge_weights(h, padded[0], n0, first_row, scales[0])
        strip = weights.T @ region[..., lo:, :].float()  # (N, C, n0 - first_row, w)
        strip = resample_aa_on_grid(strip, (n0 - first_row, n1), (1.0, scales[1]))
        out[..., first_row:, :] = strip.round_().clamp_(0, 255)
    return out


def _edge_weights(length: int, padded: int, samples: int, first: int, scale: float) -> tuple[torch.Tensor, int]:
    """The kernel's weights of samples ``[first, samples)`` of an axis of ``length`` pixels, as a
    (length - lo, samples - first) float32 matrix over pixels ``[lo, length)``, and ``lo``.

    Read off the kernel itself: ``interpolate`` of one-hot rows (zero-padded to ``padded`` like the
    image), then each column divided by its sum, the weight that stays inside the axis.
    """
    support = max(1.0 / scale, 1.0)  # half-width of the tent in source pixels, as in plan_axis
    lo = max(0, math.floor((first + 0.5) / scale - support) - 1)  # at or before the first tap
    one_hot = torch.zeros(1, 1, length - lo, padded)
    one_hot[0, 0, :, lo:length] = torch.eye(length - lo)
    weights = nnf.interpolate(one_hot, scale_factor=(1.0, scale), **_AA)[0, 0, :, first:samples]
    return weights / weights.sum(0), lo


def resample_nearest_on_grid(mask: torch.Tensor, size: tuple[int, int], scales: tuple[float, float]) -> torch.Tensor:
    """Nearest-exact (pixel-centre) resampling of ``mask`` (N, 1, h, w) to ``size`` (H, W) samples on the
    grid of a full-frame resize by ``scales``: ``F.interpolate(mode="nearest-exact")``.

    ``interpolate`` with a scale gives ``floor(h * scale)`` samples; where the window needs more
    (its end on the frame's edge), the mask is first extended by copies of its last row/column,
    which is exactly what those samples read (nearest-exact clamps to the last pixel).
    """
    need_h = _length_for(mask.shape[-2], scales[0], size[0])
    need_w = _length_for(mask.shape[-1], scales[1], size[1])
    if need_h > mask.shape[-2]:
        mask = torch.cat([mask, mask[..., -1:, :].expand(*mask.shape[:-2], need_h - mask.shape[-2], -1)], dim=-2)
    if need_w > mask.shape[-1]:
        mask = torch.cat([mask, mask[..., -1:].expand(*mask.shape[:-1], need_w - mask.shape[-1])], dim=-1)
    out = nnf.interpolate(mask, scale_factor=scales, mode="nearest-exact", recompute_scale_factor=False)
    return out[..., : size[0], : size[1]]


def _length_for(length: int, scale: float, samples: int) -> int:
    """The smallest source length >= ``length`` of which ``interpolate`` makes >= ``samples`` samples."""
    while int(length * scale) < samples:  # interpolate's output size: input size * scale, truncated
        length += 1
    return length


@dataclass(frozen=True)
class AxisPlan:
    """How one axis (rows or columns) of the output window is filled.

    Output positions ``[keep_lo, keep_hi)`` show the image, the rest is padding. They come from
    resampling the source slice ``[src_lo, src_hi)`` to ``resample_len`` positions on the
    full-frame grid and keeping ``[offset, offset + keep_hi - keep_lo)`` of them.
    """

    scale: float  # scaled / source length: the full-frame resize factor
    keep_lo: int
    keep_hi: int
    src_lo: int
    src_hi: int
    offset: int
    resample_len: int

    def nearest(self) -> torch.Tensor:
        """(keep_hi - keep_lo,) int64 source index of each kept position, pixel-centre convention.

        The formula (and float32 arithmetic) of aten's nearest-exact kernel on the slice, so a
        gather with these indices equals that kernel's output.
        """
        step = torch.tensor(1.0 / self.scale, dtype=torch.float32)
        j = torch.arange(self.offset, self.resample_len, dtype=torch.float32)
        within = torch.floor((j + 0.5) * step).long().clamp_(max=self.src_hi - self.src_lo - 1)
        return within + self.src_lo


def plan_axis(src: int, scaled: int, crop: int, start: int) -> AxisPlan:
    """Plan one axis of "resize ``src`` -> ``scaled``, then take ``crop`` from ``start``".

    Args:
        src: source length in pixels.
        scaled: length after the (virtual) full-frame resize.
        crop: output length.
        start: window offset in the scaled frame; negative when the window starts in padding.
    """
    keep_lo, keep_hi = max(0, -start), min(crop, scaled - start)
    first = start + keep_lo  # first scaled-frame pixel shown
    step = src / scaled  # source pixels per scaled pixel
    support = max(step, 1.0)  # half-width of the antialias tent kernel, in source pixels
    # Read a little before the first needed source pixel so the kernel never sees the slice
    # edge; where the slice starts at 0 it clamps at the image edge exactly like a full resize.
    src_lo = max(0, math.floor(first * step - support) - 2)
    # Resampled position j of the slice is scaled-frame position j + src_lo/step. That shift is
    # an integer only in lucky cases (always when src_lo == 0), so we keep the nearest integer
    # offset: the window moves by under half an output pixel, the same for image and mask.
    offset = round(first - src_lo / step)
    resample_len = offset + keep_hi - keep_lo
    last_centre = src_lo + (resample_len - 0.5) * step - 0.5
    src_hi = min(src, math.ceil(last_centre + support) + 3)
    return AxisPlan(scaled / src, keep_lo, keep_hi, src_lo, src_hi, offset, resample_len)


def resample_image(image: torch.Tensor, rows: AxisPlan, cols: AxisPlan) -> torch.Tensor:
    """Bilinear-antialias resample of the planned source region of a (..., C, H, W) image."""
    region = image[..., rows.src_lo : rows.src_hi, cols.src_lo : cols.src_hi]
    lead = region.shape[:-3]
    region = region.reshape(-1, *region.shape[-3:])
    dtype = region.dtype
    # The region stays a view: for uint8 the native kernel repacks pixels anyway and writes a
    # contiguous (C, H, W) output, faster than any layout change made here (measured).
    if not dtype.is_floating_point and not (dtype == torch.uint8 and region.device.type == "cpu"):
        region = region.float()
    # scales: the full-frame factors, so sample centres land where F.resize would put them
    out = resample_aa_on_grid(region, (rows.resample_len, cols.resample_len), (rows.scale, cols.scale))
    out = out[..., rows.offset :, cols.offset :].contiguous()
    if out.dtype != dtype:
        out = out.round_().to(dtype)
    return out.reshape(*lead, *out.shape[-3:])


def resample_mask(mask: torch.Tensor, rows: AxisPlan, cols: AxisPlan) -> torch.Tensor:
    """Nearest-neighbour (pixel-centre) resample of the planned source region of a (..., H, W) mask."""
    if mask.dtype == torch.uint8 and mask.device.type == "cpu":
        # the nearest-exact kernel: 2x faster than the gather below, which it equals (tested)
        region = mask[..., rows.src_lo : rows.src_hi, cols.src_lo : cols.src_hi]
        batch = region.reshape(-1, 1, *region.shape[-2:])
        out = resample_nearest_on_grid(batch, (rows.resample_len, cols.resample_len), (rows.scale, cols.scale))
        out = out[..., rows.offset :, cols.offset :]
        return out.reshape(*region.shape[:-2], *out.shape[-2:])
    return mask.index_select(-2, rows.nearest().to(mask.device)).index_select(-1, cols.nearest().to(mask.device))
