"""Backbones that several heads share, with their ImageNet weights and stage maps: torchvision's
dilated MobileNetV3-Large (DeepLabV3 and LR-ASPP) and timm's EfficientNet-Lite (DeepLabV3, LR-ASPP
and FPN; :mod:`cityseg.models.efficientnet_lite`)."""

from __future__ import annotations

from torch import nn
from torchvision.models import MobileNet_V3_Large_Weights, mobilenet_v3_large

from cityseg.models import efficientnet_lite as lite
from cityseg.models.parts import StageMap, check_stride
from cityseg.weights import fetch_timm_weights, fetch_torchvision_weights


def mobilenet_features(imagenet: bool, model_name: str) -> tuple[nn.Sequential, list[int]]:
    """MobileNetV3-Large features, dilated as in torchvision's segmentation models (output stride 16).

    Returns the features and the indices of their strided blocks ``[0, C1, ..., C4, last]``
    (torchvision's ``stage_indices``).
    """
    net = mobilenet_v3_large(weights=None, dilated=True)
    if imagenet:  # IMAGENET1K_V1 is what torchvision's segmentation models start from
        net.load_state_dict(fetch_torchvision_weights(MobileNet_V3_Large_Weights.IMAGENET1K_V1, model_name))
    features = net.features
    strided = [i for i, block in enumerate(features) if getattr(block, "_is_cn", False)]
    return features, [0, *strided, len(features) - 1]


def mobilenet_stages(stage_indices: list[int]) -> StageMap:
    bounds = [0, *stage_indices[1:-1], stage_indices[-1] + 1]  # block ranges between strided blocks
    names = ["stem", "layer1", "layer2", "layer3", "layer4"]
    return {
        name: tuple(f"backbone.{i}." for i in range(lo, hi))
        for name, lo, hi in zip(names, bounds[:-1], bounds[1:], strict=True)
    }


def lite_backbone(variant: str, output_stride: int, imagenet: bool) -> nn.Module:
    """timm's ``tf_efficientnet_liteN`` as a features_only model returning its five levels (strides
    2 ... 32, the last ones dilated for output stride 8 or 16), with its ImageNet weights from the
    Hugging Face cache when asked."""
    check_stride(output_stride, variant)
    file = str(fetch_timm_weights(lite.hub_name(variant), f"the {variant} models")) if imagenet else None
    return lite.create_backbone(variant, output_stride, file)
