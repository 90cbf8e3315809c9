"""What a built model says about itself, for the code that runs it without knowing its architecture.

* :func:`classifier_convs`: the convolutions that write its class logits (the bf16 runner keeps them
  in fp32, :func:`cityseg.inference.runtime.keep_fp32_ends`), found from the heads the model names,
  never from a class count;
* :func:`model_config`: the config a checkpoint's model was loaded with (:data:`CONFIG_ATTR`, set by
  :func:`cityseg.checkpoint.load_model`), whose dataset an int8 file made from it names.

Below :mod:`cityseg.models` (which re-exports these) so that inference reads them without importing
the model zoo.
"""

from __future__ import annotations

from torch import nn
from torchvision.models.segmentation.lraspp import LRASPPHead

#: Attributes under which cityseg's models (and torchvision's segmentation models, whose convention
#: they follow) keep the heads that write class logits: the main classifier and the auxiliary one.
CLASSIFIER_ATTRS = ("classifier", "aux_classifier")

#: The attribute :func:`cityseg.checkpoint.load_model` records a loaded model's config under (its
#: ``Config.to_dict()``, the dataset included): what an int8 file made from it says it predicts.
CONFIG_ATTR = "cityseg_config"


def _core(model: nn.Module) -> nn.Module:
    """``model`` without a DDP (``module``) or ``torch.compile`` (``_orig_mod``) wrapper."""
    return getattr(model, "_orig_mod", getattr(model, "module", model))


def _last_conv(module: nn.Module, prefix: str) -> list[str]:
    """[the qualified name of ``module``'s last convolution in module order] ([] when it has none)."""
    convs = [name for name, m in module.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        return []
    return [".".join(part for part in (prefix, convs[-1]) if part)]


def classifier_convs(model: nn.Module) -> list[str]:
    """Qualified names (as ``model.named_modules()`` gives them) of the convolutions that write the
    model's class logits, found from the model's own structure, whatever its class count:

    * a model that names them itself (a ``classifier_convs()`` method: :class:`~cityseg.hf.HfSegmentation`);
    * torchvision's LR-ASPP head (``lraspp_*``): its two branch classifiers, whose sum is the logits;
    * every other model keeps its heads as ``classifier`` and ``aux_classifier`` (:data:`CLASSIFIER_ATTRS`,
      torchvision's convention, which every cityseg architecture follows): the last convolution of each;
    * a model without such a head (not a cityseg one): its last convolution in module order.

    Convolutions already wrapped (e.g. :class:`cityseg.inference.runtime.Fp32`) are named inside their wrapper.
    """
    own = getattr(model, "classifier_convs", None)
    if callable(own):
        return list(own())
    names: list[str] = []
    for attr in CLASSIFIER_ATTRS:
        head = getattr(model, attr, None)
        if not isinstance(head, nn.Module):
            continue
        if isinstance(head, LRASPPHead):
            names += [f"{attr}.low_classifier", f"{attr}.high_classifier"]
        else:
            names += _last_conv(head, attr)
    return names or _last_conv(model, "")


def model_config(model: nn.Module) -> dict | None:
    """The config a model was loaded with (:data:`CONFIG_ATTR`); None for a model built in Python."""
    value = getattr(_core(model), CONFIG_ATTR, None)
    return value if isinstance(value, dict) else None


__all__ = ["CLASSIFIER_ATTRS", "CONFIG_ATTR", "classifier_convs", "model_config"]
