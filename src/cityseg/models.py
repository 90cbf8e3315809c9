"""Segmentation models: a plain dict from name to builder, and ``build_model`` around it.

Architectures only (and their published ImageNet weights); weights files are read by
:mod:`cityseg.checkpoint`. Every model maps ``(N, 3, H, W)`` float32 images, normalised with
:func:`cityseg.imaging.normalize`, to ``{"out": (N, C, H, W) float logits at the input size}``, plus
``"aux"`` (same shape) when built with ``aux_head=True`` -- torchvision's convention, so
nothing downstream branches on the model.

Models (``MODELS`` keys):

* ``deeplabv3_resnet50`` / ``deeplabv3_resnet101``: torchvision's DeepLabV3 (ASPP head, FCN aux
  head on layer3). Output stride 8 by default (torchvision's ``replace_stride_with_dilation=
  [False, True, True]``), 16 or 32 on request, with the ASPP rates scaled to match.
* ``deeplabv3_convnext_tiny``: a timm ``features_only`` ConvNeXt-Tiny backbone (dilated by timm to
  the requested output stride) under torchvision's ``DeepLabHead``; aux FCN head on stage 3.
* ``deeplabv3_mobilenet_v3_large`` / ``lraspp_mobilenet_v3_large``: torchvision's mobile models
  (fixed output stride 16; LR-ASPP has no aux head).
* ``cityseg_tiny``: a 0.37M-parameter encoder-decoder for training from scratch on the CPU.
* ``cityseg_small``: a 1.4M-parameter residual encoder (to 1/32) with an FPN decoder, for training
  from scratch on real frames on the CPU (``configs/pairs.yaml``); stages named as cityseg_tiny's,
  plus layer4 (1/32).
* ``deeplabv3_efficientnet_liteN`` / ``lraspp_efficientnet_liteN`` / ``fpn_efficientnet_liteN``
  (N = 0, 1, 2): timm's ``tf_efficientnet_liteN`` (:mod:`cityseg.efficientnet_lite`) under the seed's
  ASPP head, torchvision's LR-ASPP head, or :class:`FPNSegmenter` (cityseg_small's decoder, down to
  1/2). Their weights want inputs in [-1, 1]: the model converts the ImageNet-normalised input
  itself (a :class:`~cityseg.imaging.Renormalize` first layer; ``model.normalization``).
* ``hf:REPO_OR_DIR`` (not a key: any such name): a Hugging Face transformers segmentation model
  (SegFormer, UperNet, DPT, ...) starting from its own weights, :mod:`cityseg.hf`. SegFormer's
  stages are its patch embedding at 1/4 (stem) and its four encoder blocks (layer1-layer4).

Backbone stages share one vocabulary, so a ``freeze`` list means the same depth in every model:

=========  ===================  ======================  =============================  =================
stage      ResNet               ConvNeXt (timm)         MobileNetV3 ``features[i]``    cityseg_tiny
=========  ===================  ======================  =============================  =================
stem       conv1, bn1 (1/2)     stem.0, stem.1 (1/4)    0-1 (stride 2)                 stem (1/2)
layer1     layer1 (1/4)         stages.0 (1/4)          2-3 (stride 4)                 layer1 (1/4)
layer2     layer2 (1/8)         stages.1 (1/8)          4-6 (stride 8)                 layer2 (1/8)
layer3     layer3               stages.2                7-12                           layer3 (1/16)
layer4     layer4               stages.3                13-16                          --
=========  ===================  ======================  =============================  =================

EfficientNet-Lite (timm ``blocks.i``): stem = conv_stem, bn1, blocks.0 (1/2); layer1 = blocks.1 (1/4);
layer2 = blocks.2 (1/8); layer3 = blocks.3-4 (1/16); layer4 = blocks.5-6 (1/32)
(:data:`cityseg.efficientnet_lite.STAGE_BLOCKS`).

Frozen stages get ``requires_grad=False``; call ``set_frozen_bn_eval(model)`` after every
``model.train()`` so that their BatchNorm layers keep their running statistics.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import (
    MobileNet_V3_Large_Weights,
    ResNet50_Weights,
    ResNet101_Weights,
    WeightsEnum,
    mobilenet_v3_large,
    resnet50,
    resnet101,
)

# IntermediateLayerGetter is what torchvision's own segmentation builders assemble their
# backbones with; we assemble ourselves because those builders hard-code output stride 8 and
# download weights inside, where an offline failure is a bare traceback.
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.segmentation import DeepLabV3
from torchvision.models.segmentation.deeplabv3 import DeepLabHead
from torchvision.models.segmentation.fcn import FCNHead
from torchvision.models.segmentation.lraspp import LRASPP

from cityseg import efficientnet_lite as lite
from cityseg import labels
from cityseg.errors import CitysegError, first_line
from cityseg.hf import build_hf, hf_ref, is_hf
from cityseg.imaging import IMAGENET, Normalization, Renormalize
from cityseg.modelinfo import CLASSIFIER_ATTRS, CONFIG_ATTR, classifier_convs, model_config

#: ``pretrained`` values :func:`build_model` takes; a weights file is :func:`cityseg.checkpoint.build_starting_model`'s.
PRETRAINED = ("none", "imagenet")

#: The timm weights of ``deeplabv3_convnext_tiny``: plain ImageNet-1k (not the default in12k tag).
CONVNEXT_TIMM_NAME = "convnext_tiny.fb_in1k"

#: stage name -> parameter-name prefixes of the modules in that stage.
StageMap = dict[str, tuple[str, ...]]
#: builder(num_classes, aux_head, output_stride, imagenet) -> (model, its stages).
Builder = Callable[[int, bool, int, bool], tuple[nn.Module, StageMap]]

_ASPP_RATES_OS8 = (12, 24, 36)  # DeepLabV3's rates at output stride 8; halved at 16 (the paper's 6, 12, 18)


# --- weights ------------------------------------------------------------------------------------


def _fetch_torchvision(weights: WeightsEnum, model_name: str) -> dict[str, torch.Tensor]:
    """Download (or read from the torch hub cache) one torchvision weights file.

    Raises:
        CitysegError: the file is neither cached nor downloadable; says where to put it.
    """
    try:
        return weights.get_state_dict(progress=True, check_hash=True)
    except Exception as exc:  # urllib, socket, SSL and hash errors all mean "no usable file"
        file_name = weights.url.rsplit("/", 1)[-1]
        cache = Path(torch.hub.get_dir()) / "checkpoints"
        raise CitysegError(
            f"cannot get the ImageNet weights of {model_name} ({first_line(exc)}): download {weights.url} "
            f"and put {file_name} in {cache}, or set model.pretrained to the path of that file"
        ) from None


def _timm_backbone(output_stride: int, imagenet: bool) -> nn.Module:
    """ConvNeXt-Tiny as a timm ``features_only`` model returning stages 3 and 4."""
    import timm  # imported here: only this model needs it, and it is slow to import

    kwargs = dict(features_only=True, out_indices=(2, 3), output_stride=output_stride)
    if imagenet:
        # timm loads the file (and maps its keys) itself; we only choose where it comes from
        file = _fetch_timm_weights(CONVNEXT_TIMM_NAME, "deeplabv3_convnext_tiny")
        kwargs |= dict(pretrained=True, pretrained_cfg_overlay=dict(file=str(file)))
    return timm.create_model(CONVNEXT_TIMM_NAME, **kwargs)


def _fetch_timm_weights(timm_name: str, model_name: str, filename: str = "model.safetensors") -> Path:
    """Path of a timm weights file (``timm/<timm_name>`` on the Hugging Face Hub) in the Hugging Face
    cache, downloading it when missing.

    Raises:
        CitysegError: the file is neither cached nor downloadable; says where to put it.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.constants import HF_HUB_CACHE

    repo = f"timm/{timm_name}"
    try:  # the cache first: no request at all, so an offline machine with the file is not slowed down
        return Path(hf_hub_download(repo, filename, local_files_only=True))
    except FileNotFoundError:  # huggingface_hub's LocalEntryNotFoundError: not cached yet
        pass
    try:
        return Path(hf_hub_download(repo, filename))
    except Exception as exc:  # huggingface_hub raises several unrelated types when offline
        raise CitysegError(
            f"cannot get the ImageNet weights of {model_name} ({type(exc).__name__}): {filename} of "
            f"https://huggingface.co/{repo} must be in the Hugging Face cache {HF_HUB_CACHE} "
            f"(`huggingface-cli download {repo}` where there is network, then copy that cache), "
            f"or set model.pretrained to the path of a weights file"
        ) from None


# --- builders -----------------------------------------------------------------------------------


def _aspp_rates(output_stride: int) -> tuple[int, ...]:
    # The rates keep the same field of view in pixels of the input whatever the stride.
    return tuple(r * 8 // output_stride for r in _ASPP_RATES_OS8)


def _check_stride(output_stride: int, model_name: str) -> None:
    if output_stride not in (8, 16, 32):
        raise CitysegError(f"model.output_stride={output_stride} for {model_name}; valid: 8, 16, 32")


def _deeplabv3_resnet(
    depth: int, num_classes: int, aux_head: bool, output_stride: int, imagenet: bool
) -> tuple[nn.Module, StageMap]:
    """torchvision's DeepLabV3-ResNet (its ``_deeplabv3_resnet``) with a choice of output stride."""
    name = f"deeplabv3_resnet{depth}"
    _check_stride(output_stride, name)
    make, weights = {50: (resnet50, ResNet50_Weights), 101: (resnet101, ResNet101_Weights)}[depth]
    dilate = {8: [False, True, True], 16: [False, False, True], 32: [False, False, False]}[output_stride]
    resnet = make(weights=None, replace_stride_with_dilation=dilate)
    if imagenet:  # V2: torchvision's better recipe (80.9 / 81.9 % top-1 vs V1's 76.1 / 77.4 %), same layers
        resnet.load_state_dict(_fetch_torchvision(weights.IMAGENET1K_V2, name))
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
        self.input_norm = _input_norm(self, normalization)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        size = x.shape[-2:]
        stage3, stage4 = self.backbone(self.input_norm(x))[-2:]  # the last two levels (ConvNeXt: its only two)
        out = {"out": _upsample(self.classifier(stage4), size)}
        if self.aux_classifier is not None:
            out["aux"] = _upsample(self.aux_classifier(stage3), size)
        return out


def deeplabv3_convnext_tiny(
    num_classes: int, aux_head: bool, output_stride: int, imagenet: bool
) -> tuple[nn.Module, StageMap]:
    """DeepLabV3 (torchvision's ASPP head) on timm's ConvNeXt-Tiny, dilated to ``output_stride``."""
    _check_stride(output_stride, "deeplabv3_convnext_tiny")
    backbone = _timm_backbone(output_stride, imagenet)
    c3, c4 = backbone.feature_info.channels()
    classifier = DeepLabHead(c4, num_classes, atrous_rates=_aspp_rates(output_stride))
    aux = FCNHead(c3, num_classes) if aux_head else None
    # timm's features_only wrapper flattens ``stem.0`` to ``stem_0`` and ``stages.0`` to ``stages_0``.
    stages = {"stem": ("backbone.stem_",)} | {f"layer{i + 1}": (f"backbone.stages_{i}.",) for i in range(4)}
    return TimmDeepLab(backbone, classifier, aux), stages


def _mobilenet_features(imagenet: bool, model_name: str) -> tuple[nn.Sequential, list[int]]:
    """MobileNetV3-Large features, dilated as in torchvision's segmentation models (output stride 16).

    Returns the features and the indices of their strided blocks ``[0, C1, ..., C4, last]``
    (torchvision's ``stage_indices``).
    """
    net = mobilenet_v3_large(weights=None, dilated=True)
    if imagenet:  # IMAGENET1K_V1 is what torchvision's segmentation models start from
        net.load_state_dict(_fetch_torchvision(MobileNet_V3_Large_Weights.IMAGENET1K_V1, model_name))
    features = net.features
    strided = [i for i, block in enumerate(features) if getattr(block, "_is_cn", False)]
    return features, [0, *strided, len(features) - 1]


def _mobilenet_stages(stage_indices: list[int]) -> StageMap:
    bounds = [0, *stage_indices[1:-1], stage_indices[-1] + 1]  # block ranges between strided blocks
    names = ["stem", "layer1", "layer2", "layer3", "layer4"]
    return {
        name: tuple(f"backbone.{i}." for i in range(lo, hi))
        for name, lo, hi in zip(names, bounds[:-1], bounds[1:], strict=True)
    }


def deeplabv3_mobilenet_v3_large(
    num_classes: int, aux_head: bool, output_stride: int, imagenet: bool
) -> tuple[nn.Module, StageMap]:
    """torchvision's DeepLabV3-MobileNetV3-Large (its ``_deeplabv3_mobilenetv3``); output stride 16."""
    features, idx = _mobilenet_features(imagenet, "deeplabv3_mobilenet_v3_large")
    out_pos, aux_pos = idx[-1], idx[-4]  # C5 (stride 16) and C2 (stride 8), as torchvision
    return_layers = {str(out_pos): "out", **({str(aux_pos): "aux"} if aux_head else {})}
    backbone = IntermediateLayerGetter(features, return_layers=return_layers)
    classifier = DeepLabHead(features[out_pos].out_channels, num_classes)
    aux = FCNHead(features[aux_pos].out_channels, num_classes) if aux_head else None
    return DeepLabV3(backbone, classifier, aux), _mobilenet_stages(idx)


def lraspp_mobilenet_v3_large(
    num_classes: int, aux_head: bool, output_stride: int, imagenet: bool
) -> tuple[nn.Module, StageMap]:
    """torchvision's LR-ASPP-MobileNetV3-Large (its ``_lraspp_mobilenetv3``); no aux head."""
    if aux_head:
        raise CitysegError("lraspp_mobilenet_v3_large has no auxiliary head; set model.aux_head=false")
    features, idx = _mobilenet_features(imagenet, "lraspp_mobilenet_v3_large")
    low, high = idx[-4], idx[-1]  # C2 (stride 8) and C5 (stride 16), as torchvision
    backbone = IntermediateLayerGetter(features, return_layers={str(low): "low", str(high): "high"})
    model = LRASPP(backbone, features[low].out_channels, features[high].out_channels, num_classes)
    return model, _mobilenet_stages(idx)


# --- EfficientNet-Lite (timm) --------------------------------------------------------------------


def _input_norm(model: nn.Module, normalization: Normalization | None) -> nn.Module:
    """The first layer of ``model`` for a backbone that wants ``normalization`` (recorded as the model's
    ``normalization``, which :func:`cityseg.imaging.model_normalization` reads); Identity for ImageNet's."""
    if normalization is None or normalization == IMAGENET:
        return nn.Identity()
    model.normalization = normalization
    return Renormalize(normalization)


def _lite_backbone(variant: str, output_stride: int, imagenet: bool) -> nn.Module:
    """timm's ``tf_efficientnet_liteN`` as a features_only model returning its five levels (strides
    2 ... 32, the last ones dilated for output stride 8 or 16), with its ImageNet weights from the
    Hugging Face cache when asked."""
    _check_stride(output_stride, variant)
    file = str(_fetch_timm_weights(lite.hub_name(variant), f"the {variant} models")) if imagenet else None
    return lite.create_backbone(variant, output_stride, file)


def _deeplabv3_lite(
    variant: str, num_classes: int, aux_head: bool, output_stride: int, imagenet: bool
) -> tuple[nn.Module, StageMap]:
    """The seed's DeepLabV3 ASPP head (torchvision's ``DeepLabHead``) on an EfficientNet-Lite's last level;
    aux FCN head on the stride-16 level."""
    backbone = _lite_backbone(variant, output_stride, imagenet)
    c3, c4 = backbone.feature_info.channels()[-2:]
    classifier = DeepLabHead(c4, num_classes, atrous_rates=_aspp_rates(output_stride))
    aux = FCNHead(c3, num_classes) if aux_head else None
    return TimmDeepLab(backbone, classifier, aux, lite.normalization(variant)), lite.stage_prefixes()


class TimmLRASPP(LRASPP):
    """torchvision's LR-ASPP head on a five-level timm backbone: ``low`` is the stride-8 level, ``high``
    the last (as torchvision's MobileNetV3 model takes C2 and C5).

    Shape:
        x: (N, 3, H, W) float. Returns ``{"out": (N, C, H, W)}``.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, normalization: Normalization | None = None) -> None:
        channels = backbone.feature_info.channels()
        super().__init__(backbone, channels[2], channels[-1], num_classes)
        self.input_norm = _input_norm(self, normalization)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.backbone(self.input_norm(x))
        return {"out": _upsample(self.classifier({"low": feats[2], "high": feats[-1]}), x.shape[-2:])}


def _lraspp_lite(
    variant: str, num_classes: int, aux_head: bool, output_stride: int, imagenet: bool
) -> tuple[nn.Module, StageMap]:
    """LR-ASPP (torchvision's head) on an EfficientNet-Lite; no aux head."""
    if aux_head:
        raise CitysegError(f"lraspp_{variant} has no auxiliary head; set model.aux_head=false")
    backbone = _lite_backbone(variant, output_stride, imagenet)
    return TimmLRASPP(backbone, num_classes, lite.normalization(variant)), lite.stage_prefixes()


#: decoder width of fpn_efficientnet_lite*, and of the 1/2-resolution refinement before the classifier
LITE_FPN_DECODER, LITE_FPN_REFINE = 64, 32


def _fpn_lite(
    variant: str, num_classes: int, aux_head: bool, output_stride: int, imagenet: bool
) -> tuple[nn.Module, StageMap]:
    """:class:`FPNSegmenter` on an EfficientNet-Lite: all five levels, decoded top-down to 1/2."""
    backbone = _lite_backbone(variant, output_stride, imagenet)
    model = FPNSegmenter(backbone, backbone.feature_info.channels(), num_classes, aux_head,
                         LITE_FPN_DECODER, LITE_FPN_REFINE, lite.normalization(variant))
    return model, lite.stage_prefixes()


def _lite_models() -> dict[str, Builder]:
    heads = {"deeplabv3": _deeplabv3_lite, "lraspp": _lraspp_lite, "fpn": _fpn_lite}
    return {f"{head}_{variant}": partial(build, variant) for head, build in heads.items() for variant in lite.VARIANTS}


# --- cityseg_tiny -------------------------------------------------------------------------------


class ConvBNReLU(nn.Sequential):
    """3x3 (or 1x1) convolution, BatchNorm, ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1, dilation: int = 1, kernel: int = 3) -> None:
        pad = dilation * (kernel - 1) // 2
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride, pad, dilation=dilation, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )


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
        d2 = self.fuse2(f["c2"] + _upsample(self.lateral3(c3), f["c2"].shape[-2:]))
        d1 = self.fuse1(f["c1"] + _upsample(self.lateral2(d2), f["c1"].shape[-2:]))
        out = {"out": _upsample(self.classifier(d1), size)}
        if self.aux_classifier is not None:
            out["aux"] = _upsample(self.aux_classifier(d2), size)
        return out


def cityseg_tiny(num_classes: int, aux_head: bool, output_stride: int, imagenet: bool) -> tuple[nn.Module, StageMap]:
    """The CPU demo model (:class:`CitysegTiny`); fixed output stride, no pretrained weights."""
    if imagenet:
        raise CitysegError("cityseg_tiny has no ImageNet weights; set model.pretrained=none (or a PATH)")
    stages = {name: (f"backbone.{name}.",) for name in ("stem", "layer1", "layer2", "layer3")}
    return CitysegTiny(num_classes, aux_head), stages


# --- cityseg_small ------------------------------------------------------------------------------


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
        self.input_norm = _input_norm(self, normalization)
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
            d = self.fuse[i](self.lateral[i](feats[i]) + _upsample(d, feats[i].shape[-2:]))
            if i == 1:
                aux = d
        d = self.refine(torch.cat([_upsample(d, stem.shape[-2:]), stem], dim=1))
        out = {"out": _upsample(self.classifier(d), size)}
        if self.aux_classifier is not None:
            out["aux"] = _upsample(self.aux_classifier(aux), size)
        return out


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


def _upsample(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


#: name -> builder(num_classes, aux_head, output_stride, imagenet) -> (model, stage map).
MODELS: dict[str, Builder] = {
    "deeplabv3_resnet50": deeplabv3_resnet50,
    "deeplabv3_resnet101": deeplabv3_resnet101,
    "deeplabv3_convnext_tiny": deeplabv3_convnext_tiny,
    "deeplabv3_mobilenet_v3_large": deeplabv3_mobilenet_v3_large,
    "lraspp_mobilenet_v3_large": lraspp_mobilenet_v3_large,
    "cityseg_tiny": cityseg_tiny,
    "cityseg_small": cityseg_small,
    **_lite_models(),  # deeplabv3_, lraspp_ and fpn_efficientnet_lite0/1/2
}


# --- build_model --------------------------------------------------------------------------------


def check_model_name(name: str, what: str = "model") -> None:
    """CitysegError naming ``what`` (e.g. ``config key model.name``) when ``name`` is neither a key of
    :data:`MODELS` nor ``hf:REPO_OR_DIR``."""
    if is_hf(name):
        hf_ref(name)  # something after the prefix; whether it loads is known only when it is loaded
        return
    if name not in MODELS:
        raise CitysegError(f"{what}: {name!r} is not a model; valid: {', '.join(MODELS)}, hf:REPO_OR_DIR")


def build_model(
    name: str,
    num_classes: int = labels.NUM_CLASSES,
    pretrained: str = "none",
    aux_head: bool = False,
    freeze: Sequence[str] = ("stem", "layer1"),
    output_stride: int = 8,
    class_names: Sequence[str] | None = None,
) -> nn.Module:
    """Build a segmentation model by name, with its ImageNet backbone if asked, and freeze early stages.

    Args:
        name: a key of ``MODELS``, or ``hf:REPO_OR_DIR``: a transformers model with its own weights
            (:func:`cityseg.hf.build_hf`; ``pretrained`` must be ``"none"``).
        num_classes: output channels of the classifier (and aux classifier).
        pretrained: ``"none"`` (random init) or ``"imagenet"`` (ImageNet backbone through
            torchvision's weights API or timm; downloads into their caches when online). Starting
            weights from a file: :func:`cityseg.checkpoint.build_starting_model`.
        aux_head: add the auxiliary FCN head; the model then also returns ``"aux"``.
        freeze: backbone stages whose parameters stay fixed (see the module docstring).
        output_stride: 8, 16 or 32 for the ResNet and ConvNeXt models; ignored by the others,
            whose stride is fixed.
        class_names: the classes, in order (an ``hf:`` model keeps its classifier when they are its
            own); None: only the count is known.

    Returns:
        The model in train mode, with ``requires_grad=False`` on the frozen stages.

    Raises:
        CitysegError: unknown name or stage, bad output stride, pretrained neither none nor
            imagenet, ImageNet weights unavailable.
    """
    check_model_name(name)
    if pretrained not in PRETRAINED:
        raise CitysegError(f"pretrained={pretrained!r}: build_model takes none or imagenet "
                           "(weights files load through cityseg.checkpoint.build_starting_model)")
    if is_hf(name):
        model, stages = _hf_model(name, num_classes, pretrained, aux_head, class_names)
    else:
        model, stages = MODELS[name](num_classes, aux_head, output_stride, pretrained == "imagenet")
    freeze_stages(model, stages, freeze, name)
    return model


def _hf_model(
    name: str, num_classes: int, pretrained: str, aux_head: bool, class_names: Sequence[str] | None
) -> tuple[nn.Module, StageMap]:
    """A transformers model (:func:`cityseg.hf.build_hf`): it starts from the weights it names, so
    ``pretrained=imagenet`` (a backbone of our own models) means nothing for it."""
    if pretrained != "none":
        raise CitysegError(f"model.pretrained={pretrained} with {name}: a transformers model starts from its own "
                           "weights; set model.pretrained=none (or the path of a cityseg checkpoint of it)")
    if aux_head:
        raise CitysegError(f"{name}: transformers models have no cityseg auxiliary head; set model.aux_head=false")
    return build_hf(name, num_classes, class_names)


def freeze_stages(model: nn.Module, stages: StageMap, names: Sequence[str], model_name: str) -> None:
    """Set ``requires_grad=False`` on the parameters of the named backbone stages.

    Raises:
        CitysegError: a name is not a stage of this model (the message lists the stages).
    """
    unknown = [n for n in names if n not in stages]
    if unknown and not stages:
        raise CitysegError(f"model.freeze={list(names)} for {model_name}: cityseg knows no backbone stages of this "
                           "model; set model.freeze=[]")
    if unknown:
        raise CitysegError(
            f"unknown backbone stage {unknown[0]!r} in model.freeze for {model_name}; valid: {', '.join(stages)}"
        )
    prefixes = tuple(p for n in names for p in stages[n])
    if not prefixes:
        return
    for pname, param in model.named_parameters():
        if pname.startswith(prefixes):
            param.requires_grad_(False)


def set_frozen_bn_eval(model: nn.Module) -> nn.Module:
    """Put every BatchNorm whose parameters are frozen into eval mode; call after ``model.train()``.

    Frozen stages keep the (ImageNet) running statistics they were trained with: updating them
    from small segmentation batches while the weights cannot adapt hurts. Works on DDP- or
    compile-wrapped models and after SyncBatchNorm conversion (which keeps the parameters).
    """
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.weight is not None:
            if not module.weight.requires_grad:
                module.eval()
    return model


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (only those with ``requires_grad`` when ``trainable_only``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


__all__ = [
    "CLASSIFIER_ATTRS",
    "CONFIG_ATTR",
    "MODELS",
    "PRETRAINED",
    "build_model",
    "check_model_name",
    "classifier_convs",
    "count_parameters",
    "freeze_stages",
    "model_config",
    "set_frozen_bn_eval",
]
