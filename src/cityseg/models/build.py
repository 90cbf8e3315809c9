"""``MODELS``, the plain dict from name to builder, and ``build_model`` around it: the ImageNet backbone
when asked, and frozen early stages.

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
(:data:`cityseg.models.efficientnet_lite.STAGE_BLOCKS`). cityseg_small: as cityseg_tiny, plus layer4
(1/32). SegFormer (``hf:``): its patch embedding at 1/4 (stem) and its four encoder blocks (layer1-layer4).

Frozen stages get ``requires_grad=False``; call ``set_frozen_bn_eval(model)`` after every
``model.train()`` so that their BatchNorm layers keep their running statistics.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

from torch import nn

from cityseg import labels
from cityseg.errors import CitysegError
from cityseg.hf import build_hf, hf_ref, is_hf
from cityseg.models import efficientnet_lite as lite
from cityseg.models.deeplabv3 import (
    deeplabv3_convnext_tiny,
    deeplabv3_lite,
    deeplabv3_mobilenet_v3_large,
    deeplabv3_resnet50,
    deeplabv3_resnet101,
)
from cityseg.models.fpn import fpn_lite
from cityseg.models.lraspp import lraspp_lite, lraspp_mobilenet_v3_large
from cityseg.models.parts import StageMap
from cityseg.models.small import cityseg_small
from cityseg.models.tiny import cityseg_tiny

#: ``pretrained`` values :func:`build_model` takes; a weights file is :func:`cityseg.pretrained.build_starting_model`'s.
PRETRAINED = ("none", "imagenet")

#: builder(num_classes, aux_head, output_stride, imagenet) -> (model, its stages).
Builder = Callable[[int, bool, int, bool], tuple[nn.Module, StageMap]]


def _lite_models() -> dict[str, Builder]:
    heads = {"deeplabv3": deeplabv3_lite, "lraspp": lraspp_lite, "fpn": fpn_lite}
    return {f"{head}_{variant}": partial(build, variant) for head, build in heads.items() for variant in lite.VARIANTS}


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
            weights from a file: :func:`cityseg.pretrained.build_starting_model`.
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
                           "(weights files load through cityseg.pretrained.build_starting_model)")
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
