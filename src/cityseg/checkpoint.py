"""Every weights file cityseg reads or writes.

* The cityseg checkpoint: one dict, written atomically by rank 0 and read back with
  ``weights_only=True`` (:func:`save_checkpoint`, :func:`load_checkpoint`, :func:`load_model`).
* The weights-only export: the model's tensors in a ``.safetensors`` file whose metadata holds
  what :func:`load_model` needs besides them (:func:`save_safetensors`); :func:`load_checkpoint`
  reads it as the inference part of a checkpoint, so every ``--checkpoint`` takes it.
* Starting weights for training (``model.pretrained=PATH``) are read from any of these files, or from a
  plain state dict, by :mod:`cityseg.pretrained`.
* The published ImageNet weights ``model.pretrained=imagenet`` starts from are downloaded by
  :mod:`cityseg.weights`, beside this module but below the models, whose builders fetch them.

* A Hugging Face transformers model, ``hf:REPO_OR_DIR`` (:mod:`cityseg.hf`): :func:`load_model` takes
  the reference in place of a checkpoint path.

Checkpoint keys: ``format`` ("cityseg"), ``version`` (1), ``config`` (``Config.to_dict()``), ``model``
(state dict without ``module.``/``_orig_mod.`` prefixes), ``optimizer``, ``scheduler``,
``scaler``, ``epoch`` (completed epochs), ``step`` (optimiser steps), ``rng``, ``best_miou``,
``metrics`` (the last epoch's record); for an ``hf:`` model also ``hf_config`` (its transformers
config as a dict, :func:`model_state`), so that it is rebuilt without its folder or the network.

Everything in it is a tensor, a number, a string or a list/dict of those, so that
``torch.load(weights_only=True)`` (which refuses arbitrary pickled objects) can read it.
That is why the numpy and Python RNG states are converted to tensors and lists here.

Safetensors metadata (all strings): ``format`` ("cityseg"), ``version`` (the checkpoint version),
``cityseg_version``, ``model_name``, ``config`` (JSON), ``normalization`` (JSON), ``dataset`` (JSON)
when the checkpoint has one, and for an ``hf:`` model ``hf_config`` (JSON: its transformers config, from
which :func:`load_model` rebuilds it without the model folder or the network). The optimiser,
schedule and RNG states are not exported: ``--resume`` needs the ``.pt``.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cityseg._version import __version__
from cityseg.config import Config, config_from_dict, dataset_value
from cityseg.datasets import load_dataset
from cityseg.errors import CitysegError, first_line
from cityseg.hf import HfSegmentation, from_config_dict, hf_ref, is_hf, load_hf
from cityseg.imaging import IMAGENET, Normalization, model_normalization
from cityseg.modelinfo import CONFIG_ATTR
from cityseg.models import build_model
from cityseg.utils import atomic_path

FORMAT = "cityseg"
VERSION = 1
_PREFIXES = ("module.", "_orig_mod.")


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically: a kill mid-write leaves the previous file intact."""
    state = {"format": FORMAT, "version": VERSION, **state}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a cityseg checkpoint with ``torch.load(weights_only=True)``, or a ``.safetensors``
    export of one (:func:`save_safetensors`), which gives ``format``, ``version``, ``model``,
    ``config`` and ``dataset`` when it has one: the inference part of a checkpoint, no training state.

    Raises:
        CitysegError: the file is missing, unreadable, not a cityseg checkpoint, or holds non-finite weights.
    """
    path = Path(path)
    if not path.is_file():
        raise CitysegError(f"{path}: checkpoint not found")
    if is_safetensors(path):
        ckpt = safetensors_checkpoint(path, *read_safetensors(path, map_location))
    else:
        ckpt = _torch_load(path, map_location)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CitysegError(f"{path}: not a cityseg checkpoint (no format={FORMAT!r} key; written by another tool?)")
    if ckpt.get("version") != VERSION:
        raise CitysegError(f"{path}: checkpoint version {ckpt.get('version')!r}; this cityseg reads version {VERSION}")
    bad = first_non_finite(ckpt.get("model"), "model")
    if bad is not None:
        raise CitysegError(f"{path}: tensor {bad} holds NaN or infinite values; a usable checkpoint holds "
                           "finite weights only")
    return ckpt


def _torch_load(path: Path, map_location: str | torch.device) -> Any:
    """``torch.load(path, weights_only=True)``; CitysegError (one line) for any file it cannot read safely."""
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        # PyTorch's message goes on to say how the file "can still be loaded" (weights_only=False):
        # cityseg never does that, so the hint is not passed on
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if found:
            raise CitysegError(f"{path}: refused: the file holds Python objects ({found.group(1)}) besides tensors, "
                               "numbers and strings; cityseg never executes checkpoint code") from None
        raise CitysegError(f"{path}: not a readable cityseg checkpoint (not a PyTorch file, or damaged)") from None
    except Exception as exc:  # noqa: BLE001 - the weights-only unpickler raises KeyError, IndexError, ... on garbage
        raise CitysegError(f"{path}: not a readable cityseg checkpoint ({type(exc).__name__}: {first_line(exc)})") from None
    return ckpt


# --- weights-only files: .safetensors ----------------------------------------------------------


def is_safetensors(path: str | Path) -> bool:
    """Whether ``path`` is (or is named as) a safetensors file: the ``.safetensors`` suffix, or the
    format's opening (an 8-byte little-endian header length, then the JSON header's ``{``)."""
    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        return True
    try:
        with path.open("rb") as f:
            head = f.read(9)
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{" and 2 <= int.from_bytes(head[:8], "little") < 100_000_000


def save_safetensors(path: str | Path, ckpt: dict[str, Any]) -> None:
    """Write the weights of checkpoint ``ckpt`` to ``path`` as safetensors, atomically.

    The tensors lose their ``module.``/``_orig_mod.`` prefixes and are made contiguous; tensors that
    share memory (tied weights) are copied, which safetensors requires. The metadata (see the
    module docstring) carries the model name, the config, the dataset description and, for an
    ``hf:`` model, its transformers config.

    Raises:
        CitysegError: ``ckpt`` has no ``model`` weights or ``config``; an ``hf:`` model's has no ``hf_config``.
    """
    from safetensors.torch import save_file

    require_model(ckpt, path)
    metadata = {"format": FORMAT, "version": str(VERSION), "cityseg_version": __version__,
                "model_name": checkpoint_model_name(ckpt), "config": json.dumps(ckpt["config"]),
                "normalization": json.dumps(checkpoint_normalization(ckpt).to_dict())}
    for key in ("dataset", "hf_config"):  # hf_config: a transformers model is rebuilt from it, offline
        if ckpt.get(key) is not None:
            metadata[key] = json.dumps(ckpt[key])
    if is_hf(metadata["model_name"]) and "hf_config" not in metadata:
        raise CitysegError(f"{path}: the checkpoint of {metadata['model_name']} holds no transformers config "
                           "(hf_config), without which the file cannot be loaded offline; save it with a "
                           "current cityseg first")
    with atomic_path(path) as tmp:
        save_file(_unshared(strip_prefixes(ckpt["model"])), str(tmp), metadata=metadata)


def _unshared(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` on the CPU, contiguous, each tensor with memory of its own (later sharers are cloned)."""
    out, seen = {}, set()
    for key, value in state.items():
        tensor = value.detach().cpu().contiguous()
        storage = tensor.untyped_storage().data_ptr()
        out[key] = tensor.clone() if storage in seen and tensor.numel() else tensor
        seen.add(storage)
    return out


def safetensors_checkpoint(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> dict[str, Any]:
    """The checkpoint dict of the ``tensors`` and ``meta`` of a file written by :func:`save_safetensors`.

    Raises:
        CitysegError: no cityseg metadata, or metadata that does not parse.
    """
    if meta.get("format") != FORMAT:
        raise CitysegError(f"{path}: no cityseg metadata (model name, config); a weights-only file from another "
                           "tool can start a training run with --set model.pretrained=FILE")
    try:
        ckpt = {"format": FORMAT, "version": int(meta.get("version", "")), "model": tensors,
                "config": json.loads(meta["config"])}
        for key in ("dataset", "normalization", "hf_config"):
            if key in meta:
                ckpt[key] = json.loads(meta[key])
    except (KeyError, ValueError) as exc:
        raise CitysegError(f"{path}: damaged cityseg metadata ({type(exc).__name__}: {first_line(exc)}); "
                           "export the checkpoint again with cityseg export --safetensors") from None
    return ckpt


def read_safetensors(path: Path, map_location: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor],
                                                                                   dict[str, str]]:
    """(tensors, metadata) of any safetensors file; CitysegError (one line) when it is damaged."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device=str(map_location)) as f:
            return {key: f.get_tensor(key) for key in f.keys()}, dict(f.metadata() or {})
    except Exception as exc:  # noqa: BLE001 - SafetensorError, OSError, ... on a damaged or truncated file
        raise CitysegError(f"{path}: not a readable safetensors file "
                           f"(damaged or truncated: {first_line(exc)})") from None


def require_model(ckpt: dict[str, Any], path: str | Path) -> None:
    """CitysegError when a checkpoint lacks the ``model`` weights or the ``config`` they were trained with."""
    for key in ("model", "config"):
        if not isinstance(ckpt.get(key), dict):
            raise CitysegError(f"{path}: damaged cityseg checkpoint: no {key!r} mapping (a checkpoint holds "
                               "'model' weights and the 'config' it was trained with)")


def first_non_finite(tree: Any, name: str) -> str | None:
    """Dotted name of the first floating-point tensor in ``tree`` (nested dicts, lists) with a NaN or an
    infinity; None when every one is finite."""
    if isinstance(tree, torch.Tensor):
        floating = tree.is_floating_point() or tree.is_complex()
        return name if floating and not bool(torch.isfinite(tree).all()) else None
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, (list, tuple)) else ()
    for key, value in items:
        found = first_non_finite(value, f"{name}.{key}")
        if found is not None:
            return found
    return None


def strip_prefixes(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove the ``module.`` (DDP) and ``_orig_mod.`` (torch.compile) prefixes from every key."""
    out = {}
    for key, value in state_dict.items():
        changed = True
        while changed:
            changed = False
            for prefix in _PREFIXES:
                if key.startswith(prefix):
                    key = key[len(prefix) :]
                    changed = True
        out[key] = value
    return out


def checkpoint_model_name(ckpt: dict[str, Any]) -> str:
    """The ``model.name`` a checkpoint was trained with."""
    return str(ckpt.get("config", {}).get("model", {}).get("name", "?"))


def load_model_state(model: nn.Module, ckpt: dict[str, Any], path: str | Path, expected_name: str) -> None:
    """Load ``ckpt["model"]`` into ``model`` (built as ``expected_name``), strictly.

    Raises:
        CitysegError: the checkpoint holds another model (names both) or its tensors do not fit.
    """
    found = checkpoint_model_name(ckpt)
    if found != expected_name:
        raise CitysegError(f"{path}: checkpoint holds model {found!r}, but the config builds {expected_name!r}")
    target = model.module if hasattr(model, "module") else model
    target = getattr(target, "_orig_mod", target)
    try:
        target.load_state_dict(strip_prefixes(ckpt["model"]), strict=True)
    except RuntimeError as exc:
        raise CitysegError(f"{path}: weights do not fit model {expected_name!r} ({first_line(exc)})") from None
    check_normalization(ckpt, target, path)  # after loading: an hf: model's input map is in its state dict


def load_model(
    path: str | Path, device: str | torch.device = "cpu", dataset: str | dict | None = None, *,
    ckpt: dict[str, Any] | None = None,
) -> tuple[nn.Module, Config]:
    """Rebuild the model a checkpoint (``.pt`` or ``.safetensors``) was trained with, load its weights,
    return ``(model.eval(), Config)``.

    The model is built with ``pretrained="none"``: the checkpoint already holds every weight, and
    records the config (:data:`cityseg.modelinfo.CONFIG_ATTR`; :func:`cityseg.modelinfo.model_config`).
    ``ckpt``: the checkpoint of ``path`` when it has already been read (:func:`load_checkpoint`).
    ``path`` may also be ``hf:REPO_OR_DIR``, a transformers model with its own weights
    (:func:`load_hf_model`), whose classes must be those of ``dataset`` (``--dataset NAME|FILE``;
    None: Cityscapes); for a checkpoint ``dataset`` is checked by :func:`with_dataset`.
    """
    if is_hf(str(path)):
        model, cfg = load_hf_model(str(path), dataset)
        return _recorded(model, cfg).to(device).eval(), cfg
    ckpt = load_checkpoint(path, map_location="cpu") if ckpt is None else ckpt
    require_model(ckpt, path)
    raw = dict(ckpt["config"])
    cfg = config_from_dict(raw, name=str(raw.pop("name", "checkpoint")))
    if is_hf(cfg.model.name) and isinstance(ckpt.get("hf_config"), dict):
        model: nn.Module = from_config_dict(ckpt["hf_config"], str(path))
    else:
        model = build_model(
            cfg.model.name,
            num_classes=cfg.spec().num_classes,
            pretrained="none",
            aux_head=cfg.model.aux_head,
            freeze=list(cfg.model.freeze),
            output_stride=cfg.model.output_stride,
            class_names=cfg.spec().class_names,
        )
    load_model_state(model, ckpt, path, cfg.model.name)
    return _recorded(model, cfg).to(device).eval(), cfg


def _recorded(model: nn.Module, cfg: Config) -> nn.Module:
    """``model`` with the config it was loaded with recorded on it (:data:`cityseg.modelinfo.CONFIG_ATTR`),
    so what is made from the model alone (an int8 file, :func:`cityseg.inference.int8.int8_metadata`)
    names the checkpoint's own dataset."""
    setattr(model, CONFIG_ATTR, cfg.to_dict())
    return model


def load_hf_model(name: str, dataset: str | dict | None = None) -> tuple[nn.Module, Config]:
    """``hf:REPO_OR_DIR`` with its own weights, and a default Config naming it (``model.name``) and
    ``dataset`` (None: Cityscapes), whose class table the model's ``id2label`` must be.

    Raises:
        CitysegError: as :func:`cityseg.hf.load_hf`; transformers missing (names the extra).
    """
    cfg = config_from_dict({"model": {"name": name, "freeze": []}, "dataset": dataset_value(dataset)},
                           name=Path(hf_ref(name)).name or "hf")
    return load_hf(name, cfg.spec()), cfg


def checkpoint_normalization(ckpt: dict[str, Any]) -> Normalization:
    """The input normalisation a checkpoint records; ImageNet's for one written before checkpoints
    recorded it (every model then took ImageNet-normalised input)."""
    value = ckpt.get("normalization")
    return IMAGENET if value is None else Normalization.from_dict(value)


def check_normalization(ckpt: dict[str, Any], model: nn.Module, path: str | Path) -> None:
    """CitysegError when the checkpoint's recorded normalisation is not the one its rebuilt model applies
    (a file edited by hand, or a model whose normalisation changed since)."""
    try:
        saved = checkpoint_normalization(ckpt)
    except (KeyError, TypeError, ValueError):
        raise CitysegError(f"{path}: damaged 'normalization' entry {ckpt.get('normalization')!r}; "
                           "valid: {'mean': [r, g, b], 'std': [r, g, b]}") from None
    own = model_normalization(model)
    if saved != own:
        raise CitysegError(f"{path}: the checkpoint says its model takes mean/std {saved.mean}/{saved.std}, but "
                           f"{checkpoint_model_name(ckpt)} normalises with {own.mean}/{own.std}")


def model_state(model: nn.Module) -> dict[str, Any]:
    """The checkpoint entries of a trained model: ``model`` (its state dict, prefixes stripped) and,
    ``normalization`` (the input mean/std its weights want, for readers of the file: the model applies
    it itself, :class:`cityseg.imaging.Renormalize`) and, for a transformers model, ``hf_config`` (its
    config as a dict: :func:`load_model` rebuilds the architecture from it, so the checkpoint needs
    neither the model folder nor the network)."""
    bare_model = getattr(model, "_orig_mod", getattr(model, "module", model))
    entries: dict[str, Any] = {"model": strip_prefixes(model.state_dict()),
                               "normalization": model_normalization(bare_model).to_dict()}
    if isinstance(bare_model, HfSegmentation):
        entries["hf_config"] = bare_model.hf_config
    return entries


def with_dataset(cfg: Config, dataset: str | dict | None, path: str | Path) -> Config:
    """``cfg`` (a checkpoint's) with ``dataset`` (``--dataset NAME|FILE``) as its class table when the
    model predicts the same classes (e.g. a Cityscapes model on KITTI); unchanged for None.

    Raises:
        CitysegError: the dataset's classes are not the ones the model predicts (names both).
    """
    if dataset is None:
        return cfg
    value = dataset_value(dataset)
    ours, theirs = cfg.spec(), load_dataset(value)
    if ours.class_names != theirs.class_names:
        raise CitysegError(f"{path}: predicts the {ours.num_classes} classes of {ours.name} "
                           f"({', '.join(ours.class_names[:4])}, ...), not the {theirs.num_classes} of dataset "
                           f"{theirs.name} ({', '.join(theirs.class_names[:4])}, ...)")
    return dataclasses.replace(cfg, dataset=value)


# --- RNG states ------------------------------------------------------------------------------


def capture_rng(generator: torch.Generator | None = None) -> dict[str, Any]:
    """Every RNG the training touches, as tensors and lists (``weights_only``-loadable).

    ``generator``: the DataLoader's shuffling/worker-seed generator, whose state decides the
    next epoch's order and augmentation seeds.
    """
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {"version": py_version, "internal": list(py_internal), "gauss_next": py_gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if generator is not None:
        state["generator"] = generator.get_state()
    return state


def restore_rng(state: dict[str, Any], generator: torch.Generator | None = None) -> None:
    """Inverse of :func:`capture_rng`."""
    torch.set_rng_state(state["torch"].cpu())
    np_s = state["numpy"]
    np.random.set_state(
        ("MT19937", np_s["keys"].numpy().astype(np.uint32), np_s["pos"], np_s["has_gauss"], np_s["cached_gaussian"])
    )
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    if generator is not None and "generator" in state:
        generator.set_state(state["generator"].cpu())
