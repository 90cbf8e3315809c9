"""What a photo is in numbers: the ImageNet mean/std every model's input is normalised with, and the
two ways an image is handed to a model.

An RGB image is ``uint8`` 0-255 on disk and in the Python API. A torch model takes it
*normalised*: float32 ``(x / 255 - mean) / std`` per channel (:func:`normalize`). An ONNX file
written by ``cityseg export`` takes the uint8 *pixels* and normalises inside its graph, so the
inference code hands it RGB values 0-255 instead (a runner's ``input_space``, see
:mod:`cityseg.inference.runtime`). :func:`denormalize` goes back, for pictures.
"""

from __future__ import annotations

import torch

#: RGB mean and std (0-1 scale) of ImageNet; every model expects inputs normalised with them.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

#: Input spaces of a model runner: ImageNet-normalised float32, or float32 RGB values 0-255.
NORMALIZED = "normalized"
PIXELS = "pixels"


def mean_std(
    scale: float = 1.0, dim: int = -3, ndim: int = 3, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """IMAGENET_MEAN and IMAGENET_STD times ``scale`` as float32 tensors that broadcast over channel
    axis ``dim`` of an ``ndim``-dimensional image (``scale=255``: for images in 0-255)."""
    shape = [1] * ndim
    shape[dim] = 3
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32, device=device).view(shape) * scale
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32, device=device).view(shape) * scale
    return mean, std


def normalize(image: torch.Tensor, dim: int = -3) -> torch.Tensor:
    """uint8 RGB (0-255) or float RGB (0-1), channels on axis ``dim`` -> float32 normalised (a new tensor).

    Which scale a float image has is not guessed: floats are taken as 0-1 (a float 0-255 image
    is ``image / 255`` first).
    """
    x = image.float().div_(255) if image.dtype == torch.uint8 else image.float()
    mean, std = mean_std(dim=dim, ndim=x.ndim, device=x.device)
    return (x - mean) / std


def denormalize(x: torch.Tensor, dim: int = -3) -> torch.Tensor:
    """Inverse of :func:`normalize`: normalised float, channels on axis ``dim`` -> float32 RGB on the
    0-1 scale (not clipped: a model input resampled with overshoot leaves it slightly)."""
    mean, std = mean_std(dim=dim, ndim=x.ndim, device=x.device)
    return x.float() * std + mean
