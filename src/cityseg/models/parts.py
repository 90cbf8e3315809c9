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


# --- depthwise convolutions in float32 under CPU autocast ---------------------------------------


class _Float32Forward:
    """Mixin for a module class: its forward runs in float32, inputs cast up, when autocast is on."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        device = x.device.type
        if not torch.is_autocast_enabled(device):
            return super().forward(x)
        with torch.autocast(device, enabled=False):
            return super().forward(x.float())


_FLOAT32_CLASSES: dict[type, type] = {}


def is_depthwise(module: nn.Module) -> bool:
    """A convolution with one group per input channel (MobileNet's and EfficientNet's 3x3 and 5x5)."""
    return isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels


def float32_depthwise(model: nn.Module) -> int:
    """Make every depthwise convolution of ``model`` run in float32 under autocast; returns how many.

    Why (measured on a 2-core Xeon with AMX, torch 2.14, batch 8 at 192x192, channels_last): the
    CPU's bfloat16 kernel for the weight gradient of a depthwise convolution is 3-7x slower than the
    float32 one (Lite0's 1152-channel 5x5 convolution at 6x6: 12.0 ms against 3.1 ms; 240 channels at
    24x24: 25.2 against 4.2), and its input gradient at stride 2 is 19x slower (21.3 against 1.1 ms),
    while the forward costs the same in both. In an EfficientNet-Lite0 training step with the Focal +
    Dice loss they took ~180 of the step's ~460 ms (``torch.profiler``); with them in float32,
    ``benchmarks/bench_train_step.py`` (cross-entropy) gives 289 against 404 ms a step (1.40x).
    The other layers stay in bfloat16, where the AMX/AVX512-BF16 matrix units are faster.

    The module's class is swapped for a subclass (``Float32<name>``) whose forward turns autocast off
    around the original forward: parameters, state-dict keys, copies and export are unchanged, and
    without autocast (inference in float32, ONNX) the forward is the original one.
    """
    count = 0
    for module in model.modules():
        if is_depthwise(module) and not isinstance(module, _Float32Forward):
            cls = type(module)
            if cls not in _FLOAT32_CLASSES:
                _FLOAT32_CLASSES[cls] = type(f"Float32{cls.__name__}", (_Float32Forward, cls), {})
            module.__class__ = _FLOAT32_CLASSES[cls]
            count += 1
    return count
