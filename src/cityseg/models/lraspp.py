"""LR-ASPP: torchvision's Lite R-ASPP head (no aux head) on MobileNetV3-Large and EfficientNet-Lite."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.segmentation.lraspp import LRASPP

from cityseg.errors import CitysegError
from cityseg.imaging import Normalization
from cityseg.models import efficientnet_lite as lite
from cityseg.models.backbones import lite_backbone, mobilenet_features, mobilenet_stages
from cityseg.models.parts import StageMap, input_norm, upsample


def lraspp_mobilenet_v3_large(
    num_classes: int, aux_head: bool, output_stride: int, imagenet: bool
) -> tuple[nn.Module, StageMap]:
    """torchvision's LR-ASPP-MobileNetV3-Large (its ``_lraspp_mobilenetv3``); no aux head."""
    if aux_head:
        raise CitysegError("lraspp_mobilenet_v3_large has no auxiliary head; set model.aux_head=false")
    features, idx = mobilenet_features(imagenet, "lraspp_mobilenet_v3_large")
    low, high = idx[-4], idx[-1]  # C2 (stride 8) and C5 (stride 16), as torchvision
    backbone = IntermediateLayerGetter(features, return_layers={str(low): "low", str(high): "high"})
    model = LRASPP(backbone, features[low].out_channels, features[high].out_channels, num_classes)
    return model, mobilenet_stages(idx)


class TimmLRASPP(LRASPP):
    """torchvision's LR-ASPP head on a five-level timm backbone: ``low`` is the stride-8 level, ``high``
    the last (as torchvision's MobileNetV3 model takes C2 and C5).

    Shape:
        x: (N, 3, H, W) float. Returns ``{"out": (N, C, H, W)}``.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, normalization: Normalization | None = None) -> None:
        channels = backbone.feature_info.channels()
        super().__init__(backbone, channels[2], channels[-1], num_classes)
        self.input_norm = input_norm(self, normalization)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.backbone(self.input_norm(x))
        return {"out": upsample(self.classifier({"low": feats[2], "high": feats[-1]}), x.shape[-2:])}


def lraspp_lite(
    variant: str, num_classes: int, aux_head: bool, output_stride: int, imagenet: bool
) -> tuple[nn.Module, StageMap]:
    """LR-ASPP (torchvision's head) on an EfficientNet-Lite; no aux head."""
    if aux_head:
        raise CitysegError(f"lraspp_{variant} has no auxiliary head; set model.aux_head=false")
    backbone = lite_backbone(variant, output_stride, imagenet)
    return TimmLRASPP(backbone, num_classes, lite.normalization(variant)), lite.stage_prefixes()
