"""What every architecture shares: the stage map type, the output-stride check, bilinear upsampling
to the input size, the first layer that converts the input's normalisation, and ConvBNReLU."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cityseg.errors import CitysegError
from cityseg.imaging import IMAGENET, Normalization, Renormalize

#: stage name -> parameter-name prefixes of the modules in that stage.
StageMap = dict[str, tuple[str, ...]]


def check_stride(output_stride: int, model_name: str) -> None:
    if output_stride not in (8, 16, 32):
        raise CitysegError(f"model.output_stride={output_stride} for {model_name}; valid: 8, 16, 32")


def upsample(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def input_norm(model: nn.Module, normalization: Normalization | None) -> nn.Module:
    """The first layer of ``model`` for a backbone that wants ``normalization`` (recorded as the model's
    ``normalization``, which :func:`cityseg.imaging.model_normalization` reads); Identity for ImageNet's."""
    if normalization is None or normalization == IMAGENET:
        return nn.Identity()
    model.normalization = normalization
    return Renormalize(normalization)


class ConvBNReLU(nn.Sequential):
    """3x3 (or 1x1) convolution, BatchNorm, ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1, dilation: int = 1, kernel: int = 3) -> None:
        pad = dilation * (kernel - 1) // 2
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride, pad, dilation=dilation, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )
