"""``cityseg_small``: a residual encoder to 1/32 under the FPN decoder, trained from scratch on real
frames on the CPU (``configs/pairs.yaml``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cityseg.errors import CitysegError
from cityseg.models.fpn import FPNSegmenter
from cityseg.models.parts import ConvBNReLU, StageMap


class BasicBlock(nn.Module):
    """ResNet's basic block (two 3x3 convolutions and a shortcut), BatchNorm and ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = ConvBNReLU(cin, cout, stride=stride)
        self.conv2 = nn.Sequential(nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv2(self.conv1(x)) + self.shortcut(x), inplace=True)


class SmallEncoder(nn.Module):
    """A half-width ResNet-18-like encoder: stem at 1/2, then one basic block per stage at
    1/4, 1/8, 1/16 and 1/32 (32-64-128-256 channels by default)."""

    def __init__(self, widths: Sequence[int] = (32, 64, 128, 256)) -> None:
        super().__init__()
        w0, w1, w2, w3 = widths
        self.stem = nn.Sequential(ConvBNReLU(3, w0 // 2, stride=2), ConvBNReLU(w0 // 2, w0))
        self.layer1 = BasicBlock(w0, w0, stride=2)
        self.layer2 = BasicBlock(w0, w1, stride=2)
        self.layer3 = BasicBlock(w1, w2, stride=2)
        self.layer4 = BasicBlock(w2, w3, stride=2)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        c0 = self.stem(x)
        c1 = self.layer1(c0)
        c2 = self.layer2(c1)
        c3 = self.layer3(c2)
        return [c0, c1, c2, c3, self.layer4(c3)]


class CitysegSmall(FPNSegmenter):
    """:class:`FPNSegmenter` on :class:`SmallEncoder`, for from-scratch training on real frames on the CPU.

    Why it exists: ``cityseg_tiny`` (0.37M parameters, 1/16 deepest) is sized for the synthetic
    demo and stalls near 0.3 mIoU on real Cityscapes pairs; the library models need ImageNet
    weights to be worth their cost. This one (1.5M parameters) adds residual blocks and a 1/32
    stage for context. Training cost at 256x256, batch 8, 2 cores: see benchmarks/bench_models.py.
    """

    def __init__(
        self, num_classes: int, aux_head: bool = False, widths: Sequence[int] = (32, 64, 128, 256), decoder: int = 64
    ) -> None:
        w0, w1, w2, w3 = widths
        super().__init__(SmallEncoder(widths), (w0, w0, w1, w2, w3), num_classes, aux_head, decoder)


def cityseg_small(num_classes: int, aux_head: bool, output_stride: int, imagenet: bool) -> tuple[nn.Module, StageMap]:
    """The real-data CPU model (:class:`CitysegSmall`); fixed output stride, no pretrained weights."""
    if imagenet:
        raise CitysegError("cityseg_small has no ImageNet weights; set model.pretrained=none (or a PATH)")
    stages = {name: (f"backbone.{name}.",) for name in ("stem", "layer1", "layer2", "layer3", "layer4")}
    return CitysegSmall(num_classes, aux_head), stages
