"""Joint image + mask transforms for training and validation (torchvision transforms v2).

Samples are the dataset's dicts ``{"image": tv_tensors.Image, "mask": tv_tensors.Mask, ...}``;
v2 dispatches on the tv_tensor type, so every geometric step moves image and mask together,
masks are resampled with nearest neighbour and padded with ``IGNORE_INDEX`` by construction,
and photometric steps and normalisation touch the image only.

Training (``build_transforms(cfg.data, train=True)``)::

    RandomScaleCrop -> RandomHorizontalFlip -> FloatColorJitter (float32 image)
    -> ToDtype(int64 mask) -> Normalize(ImageNet)

Validation (``train=False``): the whole frame, optionally with the *image only* resized to
``data.val_size``. The mask keeps its full size, so labels are scored at their own resolution
exactly as ``cityseg evaluate`` scores them; whoever runs the model (train loop, evaluator)
upsamples the logits to the label size before the argmax.

Speed (issue 4 asks for a training sample within 1.2x of the cost of decoding it; see
benchmarks/bench_transforms.py): everything geometric runs on uint8 and only on the pixels
that end up in the crop (RandomScaleCrop); jitter runs on float, where each blend is one pass
instead of a uint8 -> float -> uint8 round trip, and in place (FloatColorJitter); Normalize
runs in place on that same buffer.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from cityseg.config import DataConfig
from cityseg.data.resample import plan_axis, resample_image, resample_mask
from cityseg.errors import CitysegError
from cityseg.labels import IGNORE_INDEX
from cityseg.imaging import IMAGENET_MEAN, IMAGENET_STD

#: Default padding values: masks get the ignore label, images black (0 before normalisation).
DEFAULT_FILL: dict[type | str, int] = {tv_tensors.Mask: IGNORE_INDEX, "others": 0}


def _uniform_offset(scaled: int, crop: int) -> int:
    """Window offset, uniform over every position that shows as much of the frame as possible."""
    return int(torch.randint(min(0, scaled - crop), max(0, scaled - crop) + 1, ()))


def _fill_for(fill: dict[type | str, int | float], inpt: Any) -> int | float:
    for key, value in fill.items():
        if isinstance(key, type) and isinstance(inpt, key):
            return value
    return fill.get("others", 0)


class RandomScaleCrop(v2.Transform):
    """Random rescale of the whole frame followed by a random crop, computed crop-first.

    Semantically ``ScaleJitter(frame size, scale_range)`` + ``RandomCrop(size)``: a scale
    ``s ~ U(scale_range)`` resizes the frame to ``int(H*s) x int(W*s)``, and a window of ``size``
    is taken at a uniformly drawn integer offset. Where the scaled frame is smaller than the
    window, the whole frame lands at a uniform offset inside it and the rest is padding
    (``fill``: ``IGNORE_INDEX`` for masks, 0 for images). Unlike ``RandomCrop(pad_if_needed=True)``,
    which pads each side by the full shortfall, this never crops image away while showing padding.

    Written by hand because chaining v2's ``RandomResize``/``ScaleJitter`` and ``RandomCrop``
    resizes the full frame (up to 4096x2048 at s=2) only to throw most of it away. Here the
    window is chosen in the scaled frame first, then only the source region under it (plus a
    kernel margin) is resampled on the full-frame grid: images with bilinear antialias, masks
    with nearest neighbour at pixel centres (``NEAREST_EXACT``), by :mod:`cityseg.data.resample`.
    The window may shift by under half an output pixel against an exact resize-then-crop (see
    :func:`cityseg.data.resample.plan_axis`); image and mask share the shift, so they stay exactly aligned.

    Args:
        size: output ``(height, width)``.
        scale_range: ``(min, max)`` of the uniform scale factor.
        fill: padding value per tv_tensor type (v2's dict convention, ``"others"`` as default).

    Inputs: ``tv_tensors.Image`` (or a pure tensor) ``(..., C, H, W)`` uint8/float32 and
    ``tv_tensors.Mask`` ``(..., H, W)`` of any integer dtype, all of the same ``H, W``.
    """

    _transformed_types = (tv_tensors.Image, tv_tensors.Mask, torch.Tensor)

    def __init__(
        self,
        size: Sequence[int],
        scale_range: Sequence[float] = (0.5, 2.0),
        fill: dict[type | str, int | float] | None = None,
    ) -> None:
        super().__init__()
        if len(size) != 2 or min(size) <= 0:
            raise ValueError(f"size must be (height, width) > 0, got {size}")
        if len(scale_range) != 2 or not 0 < scale_range[0] <= scale_range[1]:
            raise ValueError(f"scale_range must be (min, max) with 0 < min <= max, got {scale_range}")
        self.size = (int(size[0]), int(size[1]))
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        self.fill = dict(DEFAULT_FILL if fill is None else fill)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        sizes = {tuple(F.get_size(x)) for x in flat_inputs}
        if len(sizes) != 1:
            raise ValueError(f"RandomScaleCrop needs inputs of one size, got (H, W) sizes {sorted(sizes)}")
        (src_h, src_w) = sizes.pop()
        lo, hi = self.scale_range
        # Same draw and rounding as v2.ScaleJitter with the frame as target size.
        scale = lo + float(torch.rand(1)) * (hi - lo)
        scaled_h, scaled_w = max(1, int(src_h * scale)), max(1, int(src_w * scale))
        top = _uniform_offset(scaled_h, self.size[0])
        left = _uniform_offset(scaled_w, self.size[1])
        return self.plan((src_h, src_w), (scaled_h, scaled_w), top, left)

    def plan(self, src_size: tuple[int, int], scaled_size: tuple[int, int], top: int, left: int) -> dict[str, Any]:
        """The deterministic part: params for "resize ``src_size`` to ``scaled_size`` (H, W), then
        take the window at ``(top, left)`` of the scaled frame" (negative: window starts in padding).

        ``transform(x, plan(...))`` applies it; tests use this to pin a scale and position.
        """
        return {
            "scaled_size": scaled_size,
            "top": top,
            "left": left,
            "rows": plan_axis(src_size[0], scaled_size[0], self.size[0], top),
            "cols": plan_axis(src_size[1], scaled_size[1], self.size[1], left),
        }

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        rows, cols = params["rows"], params["cols"]
        plain = inpt.as_subclass(torch.Tensor)
        if isinstance(inpt, tv_tensors.Mask):
            window = resample_mask(plain, rows, cols)
        else:
            window = resample_image(plain, rows, cols)
        out = window
        if window.shape[-2:] != self.size:
            out = window.new_full((*window.shape[:-2], *self.size), _fill_for(self.fill, inpt))
            out[..., rows.keep_lo : rows.keep_hi, cols.keep_lo : cols.keep_hi] = window
        return tv_tensors.wrap(out, like=inpt) if isinstance(inpt, tv_tensors.TVTensor) else out


class FloatColorJitter(v2.ColorJitter):
    """``ToDtype(float32, scale=True)`` followed by ``ColorJitter``, in one float buffer.

    Same parameter draws (the inherited ``make_params``: factors and their random order) and the
    same arithmetic as v2's ColorJitter on float images, so the result equals
    ``v2.ToDtype(float32, scale=True)`` + ``v2.ColorJitter`` (tested); but each step works in
    place on the one float copy instead of allocating a new image, which halves the time of
    conversion plus jitter on a 1024x512 crop (measured). Images come out float32 in [0, 1],
    whether or not they were jittered; masks and other inputs pass through.
    """

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.TVTensor) and not isinstance(inpt, tv_tensors.Image):
            return inpt  # masks, boxes: colour does not apply
        image = inpt.as_subclass(torch.Tensor)
        x = F.to_dtype(image, torch.float32, scale=True)
        if x is image:  # already float32: work on a copy, never on the caller's tensor
            x = x.clone()
        for fn_id in params["fn_idx"].tolist():
            if fn_id == 0 and params["brightness_factor"] is not None:
                x.mul_(params["brightness_factor"]).clamp_(0, 1)
            elif fn_id == 1 and params["contrast_factor"] is not None:
                mean = F.rgb_to_grayscale(x).mean(dim=(-3, -2, -1), keepdim=True)
                _blend_(x, mean, params["contrast_factor"])
            elif fn_id == 2 and params["saturation_factor"] is not None and x.shape[-3] == 3:
                _blend_(x, F.rgb_to_grayscale(x), params["saturation_factor"])
            elif fn_id == 3 and params["hue_factor"] is not None:
                x = F.adjust_hue(x, params["hue_factor"])
        return tv_tensors.wrap(x, like=inpt) if isinstance(inpt, tv_tensors.Image) else x


def _blend_(image: torch.Tensor, other: torch.Tensor, ratio: float) -> None:
    # v2's _blend for float images, in place: ratio * image + (1 - ratio) * other, in [0, 1]
    image.mul_(ratio).add_(other, alpha=1.0 - ratio).clamp_(0, 1)


class ResizeImage(v2.Transform):
    """Resize images (bilinear, antialias) to ``size`` and pass masks through untouched.

    For validation at a reduced input size: the labels stay at full resolution and are scored
    there, after the logits are upsampled to the label size.

    Args:
        size: output ``(height, width)``.
    """

    def __init__(self, size: Sequence[int]) -> None:
        super().__init__()
        self.size = [int(size[0]), int(size[1])]

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.Mask):
            return inpt
        return F.resize(inpt, self.size, interpolation=v2.InterpolationMode.BILINEAR, antialias=True)


def crop_sizes(cfg: DataConfig) -> list[tuple[int, int]]:
    """The training crops ``(height, width)`` of the run's equal shares: ``data.crop_stages`` then
    ``data.crop_size`` (one entry without stages)."""
    return [(h, w) for w, h in [*(cfg.crop_stages or []), cfg.crop_size]]


def crop_at(cfg: DataConfig, fraction: float) -> tuple[int, int]:
    """The training crop ``(height, width)`` for a run ``fraction`` (0..1) done: progressive resizing.

    Why: on the CPU a 128x128 crop trains at ~1.9x the images per second of 192x192 (55 vs 29 on
    2 cores, cityseg_small, bf16), so early epochs on small crops buy more passes over the data,
    and the last share on ``crop_size`` gives the model its full context before the schedule ends
    (fast.ai's progressive resizing; EfficientNetV2's progressive learning).
    """
    sizes = crop_sizes(cfg)
    return sizes[min(int(max(fraction, 0.0) * len(sizes)), len(sizes) - 1)]


def set_crop(transform: v2.Compose, size: tuple[int, int]) -> bool:
    """Make the :class:`RandomScaleCrop` of a :func:`build_transforms` training transform crop
    ``size`` (height, width) from now on; True when that changed it. DataLoader workers that are not
    persistent (cityseg's) copy the dataset each epoch, so a change between epochs reaches them."""
    crop = next(t for t in transform.transforms if isinstance(t, RandomScaleCrop))
    changed = crop.size != tuple(size)
    crop.size = (int(size[0]), int(size[1]))
    return changed


def build_transforms(cfg: DataConfig, train: bool) -> v2.Compose:
    """The training (augmenting) or validation transform described by the ``data`` config section.

    Args:
        cfg: ``Config.data``; reads ``crop_size`` (the first of ``crop_stages`` when set: see
            :func:`set_crop`), ``scale_range``, ``hflip``, ``color_jitter`` (training) and
            ``val_size`` (validation).
        train: True for the augmenting training transform.

    Returns:
        A v2 transform mapping a dataset item (dict with ``"image"`` uint8 ``(3, H, W)`` and
        ``"mask"`` integer ``(H, W)``) to the same dict with ``"image"`` float32 normalised and
        ``"mask"`` int64: ``(3, h, w)`` / ``(h, w)`` crops in training; in validation the image
        is ``(3, H, W)`` or resized to ``val_size`` while the mask stays ``(H, W)``.
    """
    # Images to float32 in [0, 1] (a no-op after FloatColorJitter); every mask to int64 for the losses.
    to_tensors = v2.ToDtype({tv_tensors.Image: torch.float32, tv_tensors.Mask: torch.int64, "others": None}, scale=True)
    # In place: its input is always the fresh float copy made by FloatColorJitter or ToDtype.
    normalise = v2.Normalize(IMAGENET_MEAN, IMAGENET_STD, inplace=True)
    if not train:
        resize = []
        if cfg.val_size:
            w, h = cfg.val_size
            resize.append(ResizeImage((h, w)))
        return v2.Compose([*resize, to_tensors, normalise])

    h, w = crop_sizes(cfg)[0]
    scale_range = list(cfg.scale_range)
    if len(scale_range) != 2 or not 0 < scale_range[0] <= scale_range[1]:
        raise CitysegError(f"data.scale_range: {cfg.scale_range} is not [min, max] with 0 < min <= max")
    if cfg.color_jitter < 0:
        raise CitysegError(f"data.color_jitter: {cfg.color_jitter} must be >= 0 (0 disables jitter)")
    steps: list[v2.Transform] = [RandomScaleCrop((h, w), scale_range)]
    if cfg.hflip:
        steps.append(v2.RandomHorizontalFlip(p=0.5))
    if cfg.color_jitter > 0:
        j = cfg.color_jitter
        steps.append(FloatColorJitter(brightness=j, contrast=j, saturation=j))
    return v2.Compose([*steps, to_tensors, normalise])
