"""The FPN decoder: top-down over a backbone's five levels (strides 2 ... 32) down to 1/2 resolution,
under ``cityseg_small`` (:mod:`cityseg.models.small`) and the EfficientNet-Lite backbones."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from cityseg.imaging import Normalization
from cityseg.models import efficientnet_lite as lite
from cityseg.models.backbones import lite_backbone
from cityseg.models.parts import ConvBNReLU, StageMap, input_norm, upsample

#: decoder width of fpn_efficientnet_lite*, and of the 1/2-resolution refinement before the classifier
LITE_FPN_DECODER, LITE_FPN_REFINE = 64, 32


class FPNSegmenter(nn.Module):
    """An FPN-style decoder over a backbone's five levels (strides 2, 4, 8, 16, 32), for small CPU models.

    The decoder goes top-down through 1/16, 1/8 and 1/4 (``decoder`` channels, additive skips from
    1x1 laterals, an image-level context vector added at the top) into a 1/2-resolution refinement
    that concatenates the stride-2 level, so thin classes (poles, signs) survive at 256x256. Plain
    3x3/1x1 convolutions, BatchNorm and ReLU only: the best-optimised CPU kernels, and fast under bf16.

    Args:
        backbone: returns the five levels as a list, finest first.
        channels: their channel counts.
        refine: channels of the 1/2-resolution refinement (the classifier's input); None: ``channels[0]``.
        normalization: the input normalisation the backbone's weights want (a :class:`Renormalize`
            first layer); None: ImageNet's, nothing to convert.

    Shape:
        x: (N, 3, H, W) float (any H, W). Returns ``{"out": (N, C, H, W)}`` (+ ``"aux"`` from 1/8).
    """

    def __init__(
        self,
        backbone: nn.Module,
        channels: Sequence[int],
        num_classes: int,
        aux_head: bool = False,
        decoder: int = 64,
        refine: int | None = None,
        normalization: Normalization | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        c0, *levels = channels
        refine = refine or c0
        self.input_norm = input_norm(self, normalization)
        self.context = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(levels[3], decoder, 1), nn.ReLU(inplace=True))
        self.lateral = nn.ModuleList(ConvBNReLU(c, decoder, kernel=1) for c in levels)
        self.fuse = nn.ModuleList(ConvBNReLU(decoder, decoder) for _ in range(3))
        self.refine = ConvBNReLU(decoder + c0, refine)  # 1/2 resolution: the decoder and the stem's edges
        self.classifier = nn.Conv2d(refine, num_classes, 1)
        self.aux_classifier = (
            nn.Sequential(ConvBNReLU(decoder, decoder), nn.Conv2d(decoder, num_classes, 1)) if aux_head else None
        )

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        size = x.shape[-2:]
        stem, *feats = self.backbone(self.input_norm(x))  # 1/2; 1/4, 1/8, 1/16, 1/32
        d = self.lateral[3](feats[3]) + self.context(feats[3])
        aux = None
        for i in (2, 1, 0):
            d = self.fuse[i](self.lateral[i](feats[i]) + upsample(d, feats[i].shape[-2:]))
            if i == 1:
                aux = d
        d = self.refine(torch.cat([upsample(d, stem.shape[-2:]), stem], dim=1))
        out = {"out": upsample(self.classifier(d), size)}
        if self.aux_classifier is not None:
            out["aux"] = upsample(self.aux_classifier(aux), size)
        return out


def fpn_lite(
    variant: str, num_classes: int, aux_head: bool, output_stride: int, imagenet: bool
) -> tuple[nn.Module, StageMap]:
    """:class:`FPNSegmenter` on an EfficientNet-Lite: all five levels, decoded top-down to 1/2."""
    backbone = lite_backbone(variant, output_stride, imagenet)
    model = FPNSegmenter(backbone, backbone.feature_info.channels(), num_classes, aux_head,
                         LITE_FPN_DECODER, LITE_FPN_REFINE, lite.normalization(variant))
    return model, lite.stage_prefixes()
