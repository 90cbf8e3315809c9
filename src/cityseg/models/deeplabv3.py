"""DeepLabV3: torchvision's ASPP head (``DeepLabHead``) with an FCN aux head, on ResNet-50/101,
timm's ConvNeXt-Tiny, MobileNetV3-Large and EfficientNet-Lite.

The ResNet and ConvNeXt models take output stride 8 (torchvision's ``replace_stride_with_dilation=
[False, True, True]``), 16 or 32, with the ASPP rates scaled to match; MobileNetV3's is fixed at 16.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import ResNet50_Weights, ResNet101_Weights, resnet50, resnet101

# IntermediateLayerGetter is what torchvision's own segmentation builders assemble their
# backbones with; we assemble ourselves because those builders hard-code output stride 8 and
# download weights inside, where an offline failure is a bare traceback.
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.segmentation import DeepLabV3
from torchvision.models.segmentation.deeplabv3 import DeepLabHead
from torchvision.models.segmentation.fcn import FCNHead

from cityseg.imaging import Normalization
from cityseg.models import efficientnet_lite as lite
from cityseg.models.backbones import lite_backbone, mobilenet_features, mobilenet_stages
from cityseg.models.parts import StageMap, check_stride, input_norm, upsample
from cityseg.weights import fetch_timm_weights, fetch_torchvision_weights

#: The timm weights of ``deeplabv3_convnext_tiny``: plain ImageNet-1k (not the default in12k tag).
CONVNEXT_TIMM_NAME = "convnext_tiny.fb_in1k"

_ASPP_RATES_OS8 = (12, 24, 36)  # DeepLabV3's rates at output stride 8; halved at 16 (the paper's 6, 12, 18)


def _aspp_rates(output_stride: int) -> tuple[int, ...]:
    # The rates keep the same field of view in pixels of the input whatever the stride.
    return tuple(r * 8 // output_stride for r in _ASPP_RATES_OS8)


def _deeplabv3_resnet(
    depth: int, num_classes: int, aux_head: bool, output_stride: int, imagenet: bool
) -> tuple[nn.Module, StageMap]:
    """torchvision's DeepLabV3-ResNet (its ``_deeplabv3_resnet``) with a choice of output stride."""
    name = f"deeplabv3_resnet{depth}"
    check_stride(output_stride, name)
    make, weights = {50: (resnet50, ResNet50_Weights), 101: (resnet101, ResNet101_Weights)}[depth]
    dilate = {8: [False, True, True], 16: [False, False, True], 32: [False, False, False]}[output_stride]
    resnet = make(weights=None, replace_stride_with_dilation=dilate)
    if imagenet:  # V2: torchvision's better recipe (80.9 / 81.9 % top-1 vs V1's 76.1 / 77.4 %), same layers
        resnet.load_state_dict(fetch_torchvision_weights(weights.IMAGENET1K_V2, name))
    return_layers = {"layer4": "out", **({"layer3": "aux"} if aux_head else {})}
    backbone = IntermediateLayerGetter(resnet, return_layers=return_layers)
    classifier = DeepLabHead(2048, num_classes, atrous_rates=_aspp_rates(output_stride))
    aux = FCNHead(1024, num_classes) if aux_head else None
    stages = {"stem": ("backbone.conv1.", "backbone.bn1.")}
    stages |= {f"layer{i}": (f"backbone.layer{i}.",) for i in range(1, 5)}
    return DeepLabV3(backbone, classifier, aux), stages


def deeplabv3_resnet50(
    num_classes: int, aux_head: bool, output_stride: int, imagenet: bool
) -> tuple[nn.Module, StageMap]:
    """The seed's model: DeepLabV3 on ResNet-50 (ImageNet weights ``IMAGENET1K_V2``)."""
    return _deeplabv3_resnet(50, num_classes, aux_head, output_stride, imagenet)


def deeplabv3_resnet101(
    num_classes: int, aux_head: bool, output_stride: int, imagenet: bool
) -> tuple[nn.Module, StageMap]:
    """DeepLabV3 on ResNet-101 (ImageNet weights ``IMAGENET1K_V2``)."""
    return _deeplabv3_resnet(101, num_classes, aux_head, output_stride, imagenet)


class TimmDeepLab(nn.Module):
    """DeepLabV3 head on a timm ``features_only`` backbone that returns ``[stage 3, stage 4]``.

    Shape:
        x: (N, 3, H, W) float. Returns ``{"out": (N, C, H, W)}`` (+ ``"aux"``), bilinearly
        upsampled from the backbone's output stride to the input size.
    """

    def __init__(
        self,
        backbone: nn.Module,
        classifier: nn.Module,
        aux_classifier: nn.Module | None,
        normalization: Normalization | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.classifier = classifier
        self.aux_classifier = aux_classifier
        self.input_norm = input_norm(self, normalization)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        size = x.shape[-2:]
        stage3, stage4 = self.backbone(self.input_norm(x))[-2:]  # the last two levels (ConvNeXt: its only two)
        out = {"out": upsample(self.classifier(stage4), size)}
        if self.aux_classifier is not None:
            out["aux"] = upsample(self.aux_classifier(stage3), size)
        return out


def _timm_backbone(output_stride: int, imagenet: bool) -> nn.Module:
    """ConvNeXt-Tiny as a timm ``features_only`` model returning stages 3 and 4."""
    import timm  # imported here: only this model needs it, and it is slow to import

    kwargs = dict(features_only=True, out_indices=(2, 3), output_stride=output_stride)
    if imagenet:
        # timm loads the file (and maps its keys) itself; we only choose where it comes from
        file = fetch_timm_weights(CONVNEXT_TIMM_NAME, "deeplabv3_convnext_tiny")
        kwargs |= dict(pretrained=True, pretrained_cfg_overlay=dict(file=str(file)))
    return timm.create_model(CONVNEXT_TIMM_NAME, **kwargs)


def deeplabv3_convnext_tiny(
    num_classes: int, aux_head: bool, output_stride: int, imagenet: bool
) -> tuple[nn.Module, StageMap]:
    """DeepLabV3 (torchvision's ASPP head) on timm's ConvNeXt-Tiny, dilated to ``output_stride``."""
    check_stride(output_stride, "deeplabv3_convnext_tiny")
    backbone = _timm_backbone(output_stride, imagenet)
    c3, c4 = backbone.feature_info.channels()
    classifier = DeepLabHead(c4, num_classes, atrous_rates=_aspp_rates(output_stride))
    aux = FCNHead(c3, num_classes) if aux_head else None
    # timm's features_only wrapper flattens ``stem.0`` to ``stem_0`` and ``stages.0`` to ``stages_0``.
    stages = {"stem": ("backbone.stem_",)} | {f"layer{i + 1}": (f"backbone.stages_{i}.",) for i in range(4)}
    return TimmDeepLab(backbone, classifier, aux), stages


def deeplabv3_mobilenet_v3_large(
    num_classes: int, aux_head: bool, output_stride: int, imagenet: bool
) -> tuple[nn.Module, StageMap]:
    """torchvision's DeepLabV3-MobileNetV3-Large (its ``_deeplabv3_mobilenetv3``); output stride 16."""
    features, idx = mobilenet_features(imagenet, "deeplabv3_mobilenet_v3_large")
    out_pos, aux_pos = idx[-1], idx[-4]  # C5 (stride 16) and C2 (stride 8), as torchvision
    return_layers = {str(out_pos): "out", **({str(aux_pos): "aux"} if aux_head else {})}
    backbone = IntermediateLayerGetter(features, return_layers=return_layers)
    classifier = DeepLabHead(features[out_pos].out_channels, num_classes)
    aux = FCNHead(features[aux_pos].out_channels, num_classes) if aux_head else None
    return DeepLabV3(backbone, classifier, aux), mobilenet_stages(idx)


def deeplabv3_lite(
    variant: str, num_classes: int, aux_head: bool, output_stride: int, imagenet: bool
) -> tuple[nn.Module, StageMap]:
    """The seed's DeepLabV3 ASPP head (torchvision's ``DeepLabHead``) on an EfficientNet-Lite's last level;
    aux FCN head on the stride-16 level."""
    backbone = lite_backbone(variant, output_stride, imagenet)
    c3, c4 = backbone.feature_info.channels()[-2:]
    classifier = DeepLabHead(c4, num_classes, atrous_rates=_aspp_rates(output_stride))
    aux = FCNHead(c3, num_classes) if aux_head else None
    return TimmDeepLab(backbone, classifier, aux, lite.normalization(variant)), lite.stage_prefixes()
