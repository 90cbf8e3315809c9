"""``cityseg_tiny``: a 0.37M-parameter encoder-decoder for training from scratch on the CPU (the demo)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from cityseg.errors import CitysegError
from cityseg.models.parts import ConvBNReLU, StageMap, upsample


class TinyEncoder(nn.Module):
    """Four strided stages, 16-32-64-128 channels, at 1/2, 1/4, 1/8 and 1/16 of the input."""

    def __init__(self, widths: Sequence[int] = (16, 32, 64, 128)) -> None:
        super().__init__()
        w0, w1, w2, w3 = widths
        self.stem = ConvBNReLU(3, w0, stride=2)
        self.layer1 = nn.Sequential(ConvBNReLU(w0, w1, stride=2), ConvBNReLU(w1, w1))
        self.layer2 = nn.Sequential(ConvBNReLU(w1, w2, stride=2), ConvBNReLU(w2, w2))
        # dilation widens the receptive field (to 119 px) at the cheapest resolution
        self.layer3 = nn.Sequential(ConvBNReLU(w2, w3, stride=2), ConvBNReLU(w3, w3, dilation=2))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        c1 = self.layer1(self.stem(x))
        c2 = self.layer2(c1)
        return {"c1": c1, "c2": c2, "c3": self.layer3(c2)}


class CitysegTiny(nn.Module):
    """A small U-Net-like encoder-decoder for from-scratch training on the CPU.

    Why it exists: the library models are made for fine-tuning ImageNet weights, and none of
    them trains from scratch on 2 CPU cores in a few minutes. The smallest, LR-ASPP-MobileNetV3
    (3.2M parameters; depthwise convolutions, squeeze-excitation, hard-swish, which are slow per
    FLOP on a CPU), costs 4x this model's CPU time per training step at 256x128 (482 vs 124 ms
    for a batch of 8 on one thread; benchmarks/bench_models.py), DeepLabV3-ResNet-50 90x. This
    one has about 0.37M parameters, only 3x3/1x1 convolutions with BatchNorm and ReLU (the
    best-optimised CPU kernels), a global-context vector, and additive skip connections from
    1/8 and 1/4 that recover the boundaries.

    Shape:
        x: (N, 3, H, W) float (any H, W). Returns ``{"out": (N, C, H, W)}`` (+ ``"aux"`` from 1/8).
    """

    def __init__(self, num_classes: int, aux_head: bool = False, widths: Sequence[int] = (16, 32, 64, 128)) -> None:
        super().__init__()
        _, w1, w2, w3 = widths
        self.backbone = TinyEncoder(widths)
        self.context = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(w3, w3, 1), nn.ReLU(inplace=True))
        self.lateral3 = ConvBNReLU(w3, w2, kernel=1)
        self.fuse2 = ConvBNReLU(w2, w2)
        self.lateral2 = ConvBNReLU(w2, w1, kernel=1)
        self.fuse1 = ConvBNReLU(w1, w1)
        self.classifier = nn.Conv2d(w1, num_classes, 1)
        self.aux_classifier = nn.Sequential(ConvBNReLU(w2, w1), nn.Conv2d(w1, num_classes, 1)) if aux_head else None

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        size = x.shape[-2:]
        f = self.backbone(x)
        c3 = f["c3"] + self.context(f["c3"])  # broadcast: the image-level vector added everywhere
        d2 = self.fuse2(f["c2"] + upsample(self.lateral3(c3), f["c2"].shape[-2:]))
        d1 = self.fuse1(f["c1"] + upsample(self.lateral2(d2), f["c1"].shape[-2:]))
        out = {"out": upsample(self.classifier(d1), size)}
        if self.aux_classifier is not None:
            out["aux"] = upsample(self.aux_classifier(d2), size)
        return out


def cityseg_tiny(num_classes: int, aux_head: bool, output_stride: int, imagenet: bool) -> tuple[nn.Module, StageMap]:
    """The CPU demo model (:class:`CitysegTiny`); fixed output stride, no pretrained weights."""
    if imagenet:
        raise CitysegError("cityseg_tiny has no ImageNet weights; set model.pretrained=none (or a PATH)")
    stages = {name: (f"backbone.{name}.",) for name in ("stem", "layer1", "layer2", "layer3")}
    return CitysegTiny(num_classes, aux_head), stages
