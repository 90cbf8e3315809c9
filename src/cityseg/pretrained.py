"""Starting weights for a training run, ``model.pretrained=PATH``: the model a run starts from
(:func:`build_starting_model`), with the weights of a cityseg checkpoint, a full-model state dict or a
backbone state dict (an ImageNet classifier's), ``.pt``/``.pth`` or ``.safetensors``
(:func:`load_pretrained`).

Reading and writing cityseg's own weights files is :mod:`cityseg.checkpoint`'s; the published
ImageNet weights ``model.pretrained=imagenet`` starts from are downloaded by :mod:`cityseg.weights`.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cityseg.checkpoint import (
    FORMAT,
    checkpoint_model_name,
    is_safetensors,
    read_safetensors,
    safetensors_checkpoint,
    strip_prefixes,
)
from cityseg.errors import CitysegError, first_line
from cityseg.hf import is_hf
from cityseg.models import PRETRAINED, build_model, check_model_name
from cityseg.models import efficientnet_lite as lite

log = logging.getLogger(__name__)


def build_starting_model(name: str, pretrained: str = "none", **options: Any) -> nn.Module:
    """The model a training run starts from: :func:`cityseg.models.build_model` of ``name`` with
    ``options`` (its other arguments: ``num_classes``, ``aux_head``, ``freeze``, ``output_stride``,
    ``class_names``), where ``pretrained`` may also be the path of a weights file, loaded by
    :func:`load_pretrained`.

    Raises:
        CitysegError: as build_model; the file is missing, unreadable or does not fit the model.
    """
    if pretrained in PRETRAINED:
        return build_model(name, pretrained=pretrained, **options)
    check_model_name(name)
    if not Path(pretrained).is_file():
        raise CitysegError(f"model.pretrained={pretrained!r}: no such file; expected imagenet, none or a weights file")
    model = build_model(name, pretrained="none", **options)
    load_pretrained(model, Path(pretrained), name)  # frozen parameters are loaded too (load_state_dict copies)
    return model


def load_pretrained(model: nn.Module, path: Path, model_name: str) -> None:
    """Load starting weights from ``path`` into ``model`` (built as ``model_name``).

    Accepted files: a cityseg checkpoint (``{"format": "cityseg", "model": ...}``; must hold the
    same model), a full-model state dict (keys start with ``backbone.``), or a backbone state dict
    such as an ImageNet classifier's (its head's keys are reported and ignored). Keys lose their
    ``module.``/``_orig_mod.`` prefixes. Missing and unexpected keys are logged.

    Raises:
        CitysegError: unreadable file, another model's checkpoint, no matching key, or a shape mismatch.
    """
    raw = _read_weights(path)
    if raw.get("format") == "cityseg":
        found = checkpoint_model_name(raw)
        if found != model_name:
            raise CitysegError(f"{path}: checkpoint holds model {found!r}, but model.name is {model_name!r}")
        raw = raw["model"]
    elif isinstance(raw.get("state_dict"), dict):  # common wrapper of other training tools
        raw = raw["state_dict"]
    state = strip_prefixes({k: v for k, v in raw.items() if isinstance(v, torch.Tensor)})
    if is_hf(model_name) or any(k.startswith("backbone.") for k in state):  # hf: models have no .backbone
        load_state(model, state, path)
    elif variant := lite.variant_of(model_name):  # exact: every backbone tensor, or one line naming both variants
        weights, classifier = lite.backbone_state(state, model.backbone, variant, str(path))
        load_state(model.backbone, weights, path, what="backbone")
        log.info("%s: %d tensors of the ImageNet classifier ignored (%s)", path, len(classifier), _examples(classifier))
    else:
        load_state(model.backbone, _to_backbone_keys(state, model.backbone), path, what="backbone")


def _read_weights(path: Path) -> dict:
    """The dict in a ``.pt``/``.pth`` file read with ``weights_only=True``, or in a ``.safetensors`` file:
    the checkpoint dict of a cityseg export (:func:`save_safetensors`), else its plain tensors."""
    if is_safetensors(path):
        tensors, meta = read_safetensors(path)
        return safetensors_checkpoint(path, tensors, meta) if meta.get("format") == FORMAT else tensors
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and OS errors: all "not a weights file"
        raise CitysegError(f"{path}: not a readable weights file ({first_line(exc)})") from None
    if not isinstance(obj, dict):
        raise CitysegError(f"{path}: holds a {type(obj).__name__}, not a checkpoint or state dict")
    return obj


def _to_backbone_keys(state: dict[str, torch.Tensor], backbone: nn.Module) -> dict[str, torch.Tensor]:
    """Rename a classification model's keys to our backbone's where they differ.

    torchvision MobileNetV3 keeps its blocks under ``features.`` (our backbone is ``features``
    itself); timm's ``features_only`` wrapper flattens ``stem.0``/``stages.0`` to ``stem_0``/``stages_0``.
    Keys that already match are kept as they are.
    """
    own = set(backbone.state_dict())
    out = {}
    for key, value in state.items():
        if key not in own:
            alt = re.sub(r"^(stem|stages)\.(\d+)\.", r"\1_\2.", re.sub(r"^features\.", "", key))
            key = alt if alt in own else key
        out[key] = value
    return out


def load_state(module: nn.Module, state: dict[str, torch.Tensor], path: Path, what: str = "model") -> None:
    """Copy the tensors of ``state`` into ``module`` by name, checking shapes; log what did not match.

    Raises:
        CitysegError: no key matches at all, or a matching key has another shape (names the key).
    """
    own = module.state_dict()
    shared = [k for k in state if k in own]
    if not shared:
        raise CitysegError(
            f"{path}: none of its {len(state)} tensors fits the {what} (its keys look like "
            f"{_examples(state)}; the {what}'s like {_examples(own)})"
        )
    for key in shared:
        if state[key].shape != own[key].shape:
            raise CitysegError(
                f"{path}: tensor {key} has shape {tuple(state[key].shape)}, the {what} needs {tuple(own[key].shape)}"
            )
    result = module.load_state_dict({k: state[k] for k in shared}, strict=False)
    unexpected = [k for k in state if k not in own]
    log.info("loaded %d tensors from %s into the %s", len(shared), path, what)
    if result.missing_keys:
        log.warning("%s: %d %s tensors not in the file, left as initialised: %s",
                    path, len(result.missing_keys), what, _examples(result.missing_keys, 8))
    if unexpected:
        log.warning("%s: %d tensors ignored (not in the %s): %s", path, len(unexpected), what, _examples(unexpected, 8))


def _examples(keys, n: int = 3) -> str:
    keys = list(keys)
    return ", ".join(keys[:n]) + (f", ... ({len(keys)} in all)" if len(keys) > n else "")
