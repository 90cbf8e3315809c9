"""Segmentation models: ``MODELS``, a plain dict from name to builder, and ``build_model`` around it
(:mod:`~cityseg.models.build`, with the stage vocabulary ``model.freeze`` uses).

Architectures only; their published ImageNet weights are fetched by :mod:`cityseg.weights`, weights
files read by :mod:`cityseg.checkpoint`. Every model maps ``(N, 3, H, W)`` float32 images, normalised
with :func:`cityseg.imaging.normalize`, to ``{"out": (N, C, H, W) float logits at the input size}``,
plus ``"aux"`` (same shape) when built with ``aux_head=True`` -- torchvision's convention, so nothing
downstream branches on the model. An architecture a module:

* :mod:`~cityseg.models.deeplabv3`: ``deeplabv3_resnet50/101``, ``deeplabv3_convnext_tiny`` (output
  stride 8, 16 or 32), ``deeplabv3_mobilenet_v3_large`` (16), ``deeplabv3_efficientnet_liteN``;
* :mod:`~cityseg.models.lraspp`: ``lraspp_mobilenet_v3_large``, ``lraspp_efficientnet_liteN`` (no aux head);
* :mod:`~cityseg.models.fpn`: the FPN decoder (down to 1/2) and ``fpn_efficientnet_liteN``;
* :mod:`~cityseg.models.tiny`: ``cityseg_tiny``, 0.37M parameters, for the synthetic demo on the CPU;
* :mod:`~cityseg.models.small`: ``cityseg_small``, 1.4M parameters, residual encoder to 1/32 under the
  FPN decoder, for real frames on the CPU (``configs/pairs.yaml``);
* :mod:`~cityseg.models.backbones` (MobileNetV3, EfficientNet-Lite) and
  :mod:`~cityseg.models.efficientnet_lite` (timm's ``tf_efficientnet_liteN``: stages, weights-file
  layouts; inputs in [-1, 1], converted by the model itself, ``model.normalization``);
  :mod:`~cityseg.models.parts`: the pieces they share;
* ``hf:REPO_OR_DIR`` (not a key: any such name): a Hugging Face transformers model (SegFormer, UperNet,
  DPT, ...) starting from its own weights, :mod:`cityseg.hf`.
"""

from cityseg.modelinfo import CLASSIFIER_ATTRS, CONFIG_ATTR, classifier_convs, model_config
from cityseg.models.build import (MODELS, PRETRAINED, Builder, build_model, check_model_name, count_parameters,
                                  freeze_stages, set_frozen_bn_eval)
from cityseg.models.deeplabv3 import (CONVNEXT_TIMM_NAME, TimmDeepLab, deeplabv3_convnext_tiny,
                                      deeplabv3_mobilenet_v3_large, deeplabv3_resnet50, deeplabv3_resnet101)
from cityseg.models.fpn import LITE_FPN_DECODER, LITE_FPN_REFINE, FPNSegmenter
from cityseg.models.lraspp import TimmLRASPP, lraspp_mobilenet_v3_large
from cityseg.models.parts import ConvBNReLU, StageMap
from cityseg.models.small import BasicBlock, CitysegSmall, SmallEncoder, cityseg_small
from cityseg.models.tiny import CitysegTiny, TinyEncoder, cityseg_tiny

__all__ = [
    "CLASSIFIER_ATTRS", "CONFIG_ATTR", "CONVNEXT_TIMM_NAME", "LITE_FPN_DECODER", "LITE_FPN_REFINE", "MODELS",
    "PRETRAINED", "BasicBlock", "Builder", "CitysegSmall", "CitysegTiny", "ConvBNReLU", "FPNSegmenter",
    "SmallEncoder", "StageMap", "TimmDeepLab", "TimmLRASPP", "TinyEncoder", "build_model", "check_model_name",
    "classifier_convs", "cityseg_small", "cityseg_tiny", "count_parameters", "deeplabv3_convnext_tiny",
    "deeplabv3_mobilenet_v3_large", "deeplabv3_resnet50", "deeplabv3_resnet101", "freeze_stages",
    "lraspp_mobilenet_v3_large", "model_config", "set_frozen_bn_eval",
]
