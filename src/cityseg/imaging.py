"""What a photo is in numbers: the ImageNet mean/std every model's input is normalised with, and the
two ways an image is handed to a model.

An RGB image is ``uint8`` 0-255 on disk and in the Python API. A torch model takes it
*normalised*: float32 ``(x / 255 - mean) / std`` per channel (:func:`normalize`). An ONNX file
written by ``cityseg export`` takes the uint8 *pixels* and normalises inside its graph, so the
inference code hands it RGB values 0-255 instead (a runner's ``input_space``, see
:mod:`cityseg.inference.runtime`). :func:`denormalize` goes back, for pictures.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

#: RGB mean and std (0-1 scale) of ImageNet; every model expects inputs normalised with them.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Normalization:
    """A model's input normalisation: RGB ``mean`` and ``std`` on the 0-1 scale, from its weights."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def to_dict(self) -> dict[str, list[float]]:
        return {"mean": [float(v) for v in self.mean], "std": [float(v) for v in self.std]}

    @classmethod
    def from_dict(cls, value: dict) -> Normalization:
        return cls(tuple(float(v) for v in value["mean"]), tuple(float(v) for v in value["std"]))


#: torchvision's and timm's ResNet/ConvNeXt/MobileNet weights, cityseg's own models, and every checkpoint
#: written before models carried their normalisation.
IMAGENET = Normalization(IMAGENET_MEAN, IMAGENET_STD)


def input_affine(target: Normalization) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel ``(scale, shift)``, (3,) float32, mapping cityseg's ImageNet-normalised input to ``target``'s.

    cityseg's input is ``x = (p - m_in) / s_in`` of the 0-1 pixel values ``p``; ``target`` wants
    ``(p - mean) / std``. Substituting ``p = x s_in + m_in`` makes it ``x * scale + shift``.
    Computed in float64, so that ImageNet's own statistics give exactly 1 and 0.
    """
    m_in, s_in = torch.tensor(IMAGENET_MEAN, dtype=torch.float64), torch.tensor(IMAGENET_STD, dtype=torch.float64)
    mean, std = torch.tensor(target.mean, dtype=torch.float64), torch.tensor(target.std, dtype=torch.float64)
    return (s_in / std).float(), ((m_in - mean) / std).float()


def affine_normalization(scale: torch.Tensor, shift: torch.Tensor, digits: int = 6) -> Normalization:
    """Inverse of :func:`input_affine`: the normalisation a ``(3,)`` scale and shift map to, rounded to
    ``digits`` decimals (float32 maps do not give back the decimal statistics exactly)."""
    m_in, s_in = torch.tensor(IMAGENET_MEAN, dtype=torch.float64), torch.tensor(IMAGENET_STD, dtype=torch.float64)
    std = s_in / scale.double().cpu()
    mean = m_in - shift.double().cpu() * std
    return Normalization(tuple(round(float(v), digits) for v in mean), tuple(round(float(v), digits) for v in std))


class Renormalize(nn.Module):
    """First layer of a model whose weights want another normalisation than ImageNet's.

    Every image enters every cityseg model ImageNet-normalised (:func:`normalize`, the one input
    convention of the pipeline, the ONNX graphs and the runtimes); this layer turns that into the
    model's own ``(x - mean) / std`` by one per-channel affine map, so the normalisation travels
    inside the model: training, evaluation, every runtime (ONNX and int8 export the layer with the
    graph) and the Predictor follow it without being told. Its constants are not saved in the state
    dict: they follow from the architecture (``normalization`` attribute of the model).

    Shape:
        x: (N, 3, H, W) float, ImageNet-normalised. Returns the same shape in the model's normalisation.
    """

    def __init__(self, target: Normalization) -> None:
        super().__init__()
        scale, shift = input_affine(target)
        self.register_buffer("scale", scale.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", shift.view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


def model_normalization(model: nn.Module) -> Normalization:
    """The input normalisation ``model``'s weights want (its ``normalization`` attribute; ImageNet's
    for models without one, among them every model built before models carried theirs)."""
    return getattr(model, "normalization", IMAGENET)


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


def to_pixels(x: torch.Tensor, dim: int = -3) -> torch.Tensor:
    """Normalised float images -> uint8 RGB pixels (:func:`denormalize`, x 255, rounded, clipped): the
    pixels a validation transform's output came from, exactly where nothing resampled them."""
    return denormalize(x, dim).mul_(255).round_().clamp_(0, 255).to(torch.uint8)
