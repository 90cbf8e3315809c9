"""Class probabilities of a batch of images: whole-image and sliding-window passes, averaged over
test-time augmentation (scales, flips).

:func:`predict_probs` is the one inference routine: ``cityseg evaluate --checkpoint``,
``cityseg predict`` and :class:`~cityseg.inference.predict.Predictor` all call it. It takes any
callable that maps ``(N, 3, h, w)`` images to logits (a cityseg model, whose forward returns
``{"out": ...}``, or one of the runners of :mod:`cityseg.inference.runtime`) and returns averaged
softmax probabilities at the input size. The images are in the space the callable takes
(:func:`~cityseg.inference.runtime.input_space`): ImageNet-normalised floats for torch, the RGB
pixels for onnxruntime, whose graph normalises them.

Sliding windows follow mmsegmentation's ``slide_inference``: windows of ``crop`` every
``stride``, the last row and column shifted back to end at the image border, so every window has
the same size and the windows can be batched; overlapping pixels average their probabilities.
A ``(C, H, W)`` probability buffer and an ``(H, W)`` count map per image are all that is held at
full resolution, so 2048x1024 frames fit in a few hundred MB whatever the model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from cityseg.errors import CitysegError

#: Anything that maps (N, 3, h, w) float images to (N, C, h, w) logits or ``{"out": logits}``.
LogitsFn = Callable[[torch.Tensor], "torch.Tensor | dict[str, torch.Tensor]"]

MODES = ("whole", "sliding")


def model_logits(model: LogitsFn, x: torch.Tensor) -> torch.Tensor:
    """Run ``model`` on ``x`` (N, 3, h, w) -> (N, C, h, w) float32 logits at ``x``'s size.

    Accepts models returning torchvision's ``{"out": ...}`` dict or a bare tensor; outputs
    at another size (a model without a final upsampling) are resized bilinearly.
    """
    out = model(x)
    logits = out["out"] if isinstance(out, dict) else out
    logits = logits.float()
    if logits.shape[-2:] != x.shape[-2:]:
        logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
    return logits


def window_starts(size: int, crop: int, stride: int) -> list[int]:
    """Start offsets of sliding windows along one axis (mmsegmentation's grid).

    The windows ``[s, s + min(crop, size))`` cover ``[0, size)``; the last one is shifted back to
    end at the border, so all have the same length. E.g. ``window_starts(10, 4, 3) == [0, 3, 6]``.
    """
    crop = min(crop, size)
    count = max(size - crop + stride - 1, 0) // stride + 1
    return sorted({min(i * stride, size - crop) for i in range(count)})


def check_window(crop: tuple[int, int], stride: tuple[int, int]) -> None:
    """Raise CitysegError unless ``0 < stride <= crop`` on both axes (else pixels go unseen)."""
    for axis, c, s in zip("wh", crop, stride, strict=True):
        if c <= 0 or s <= 0:
            raise CitysegError(f"sliding window: crop {crop} and stride {stride} (WxH) must be positive")
        if s > c:
            raise CitysegError(
                f"sliding window: stride {s} > crop {c} along {'width' if axis == 'w' else 'height'} leaves pixels "
                "unpredicted; use a stride <= the crop size"
            )


def _whole_probs(model: LogitsFn, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Softmax of the model on whole images, ``batch_size`` at a time -> (N, C, h, w) float32."""
    return torch.cat([model_logits(model, chunk).softmax(1) for chunk in x.split(batch_size)])


def _sliding_probs(
    model: LogitsFn, x: torch.Tensor, crop: tuple[int, int], stride: tuple[int, int], batch_size: int
) -> torch.Tensor:
    """Average softmax over sliding windows -> (N, C, h, w) float32 at ``x``'s size.

    ``crop`` and ``stride`` are (width, height). Windows of one image are run ``batch_size``
    at a time and accumulated into a probability buffer and a count map.
    """
    n, _, h, w = x.shape
    (cw, ch), (sw, sh) = crop, stride
    ch, cw = min(ch, h), min(cw, w)
    boxes = [(y, xx) for y in window_starts(h, ch, sh) for xx in window_starts(w, cw, sw)]
    outputs = []
    for image in x:
        probs: torch.Tensor | None = None
        count = torch.zeros((1, h, w), dtype=torch.float32, device=x.device)
        for first in range(0, len(boxes), batch_size):
            chunk = boxes[first : first + batch_size]
            crops = torch.stack([image[:, y : y + ch, xx : xx + cw] for y, xx in chunk])
            window_probs = model_logits(model, crops).softmax(1)
            if probs is None:  # the class count is known only after the first forward pass
                probs = window_probs.new_zeros((window_probs.shape[1], h, w))
            for (y, xx), p in zip(chunk, window_probs, strict=True):
                probs[:, y : y + ch, xx : xx + cw] += p
                count[:, y : y + ch, xx : xx + cw] += 1
        outputs.append(probs / count)
    return torch.stack(outputs)


def _scaled(images: torch.Tensor, scale: float) -> torch.Tensor:
    """``images`` resized bilinearly by ``scale`` (uint8 pixels become float32 0-255 to be resized)."""
    if scale == 1.0:
        return images
    h, w = images.shape[-2:]
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    return F.interpolate(images.float(), size=size, mode="bilinear", align_corners=False)


def predict_probs(
    model: LogitsFn,
    images: torch.Tensor,
    mode: str = "whole",
    crop: tuple[int, int] = (1024, 512),
    stride: tuple[int, int] = (683, 341),
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    batch_size: int = 4,
) -> torch.Tensor:
    """Class probabilities of ``images``, averaged over scales, flips and sliding windows.

    Args:
        model: a cityseg model in eval mode, or any callable from images to logits (a runner).
        images: (N, 3, H, W) on the model's device, in the space ``model`` takes: float32 normalised
            with ImageNet mean/std, or RGB pixels (uint8 or float32 0-255) for a PIXELS runner.
        mode: ``"whole"`` (one pass per image) or ``"sliding"`` (windows of ``crop``).
        crop: sliding-window size (width, height); clipped to the (scaled) image.
        stride: sliding-window step (width, height); at most ``crop``.
        scales: multi-scale test-time augmentation; each scale resizes the image bilinearly
            and its probabilities are resized back to (H, W).
        flip: add a horizontally flipped pass per scale (its output is flipped back).
        batch_size: images (whole) or windows (sliding) per forward pass.

    Returns:
        (N, C, H, W) float32 probabilities: the mean over passes of the per-pass softmax.

    Raises:
        CitysegError: unknown mode, bad window, no or non-positive scales.
    """
    if mode not in MODES:
        raise CitysegError(f"inference mode {mode!r}; valid: {', '.join(MODES)}")
    if not scales or any(s <= 0 for s in scales):
        raise CitysegError(f"scales {list(scales)}: need at least one positive scale")
    if mode == "sliding":
        check_window(tuple(crop), tuple(stride))
    if images.ndim != 4 or images.shape[1] != 3:
        raise CitysegError(f"images must be (N, 3, H, W); got {tuple(images.shape)}")
    size = images.shape[-2:]
    total: torch.Tensor | None = None
    passes = 0
    with torch.inference_mode():
        for scale in scales:
            x = _scaled(images, float(scale))
            for flipped in (False, True) if flip else (False,):
                xi = x.flip(-1) if flipped else x
                if mode == "whole":
                    probs = _whole_probs(model, xi, batch_size)
                else:
                    probs = _sliding_probs(model, xi, tuple(crop), tuple(stride), batch_size)
                if flipped:
                    probs = probs.flip(-1)
                if probs.shape[-2:] != size:
                    probs = F.interpolate(probs, size=size, mode="bilinear", align_corners=False)
                total = probs if total is None else total.add_(probs)
                passes += 1
    assert total is not None
    return total / passes


def passes_per_shape(
    sizes: Sequence[tuple[int, int]],
    mode: str = "whole",
    crop: tuple[int, int] = (1024, 512),
    stride: tuple[int, int] = (683, 341),
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
) -> dict[tuple[int, int], int]:
    """Forward passes (per image) that :func:`predict_probs` makes for each input shape ``(h, w)``.

    ``sizes`` are the images' (width, height), as PIL's ``Image.size`` gives them (which reads only
    a file's header); the other options are those of :func:`predict_probs`. Each scale is its own
    shape, a flip doubles the passes of its shape, and sliding windows count once per window (all
    windows of an image have one shape). The largest count is the ``work`` of
    :func:`cityseg.inference.paths.default_path`.
    """
    counts: dict[tuple[int, int], int] = {}
    (cw, ch), (sw, sh) = crop, stride
    for width, height in sizes:
        for scale in scales:
            h, w = max(1, round(height * scale)), max(1, round(width * scale))
            if mode == "sliding":
                shape = (min(ch, h), min(cw, w))
                passes = len(window_starts(h, shape[0], sh)) * len(window_starts(w, shape[1], sw))
            else:
                shape, passes = (h, w), 1
            counts[shape] = counts.get(shape, 0) + passes * (2 if flip else 1)
    return counts
