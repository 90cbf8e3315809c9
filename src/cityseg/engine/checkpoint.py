"""One checkpoint dict, written atomically by rank 0 and read back with ``weights_only=True``.

Keys: ``format`` ("cityseg"), ``version`` (1), ``config`` (``Config.to_dict()``), ``model``
(state dict without ``module.``/``_orig_mod.`` prefixes), ``optimizer``, ``scheduler``,
``scaler``, ``epoch`` (completed epochs), ``step`` (optimiser steps), ``rng``, ``best_miou``,
``metrics`` (the last epoch's record).

Everything in it is a tensor, a number, a string or a list/dict of those, so that
``torch.load(weights_only=True)`` (which refuses arbitrary pickled objects) can read it.
That is why the numpy and Python RNG states are converted to tensors and lists here.
"""

from __future__ import annotations

import pickle
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cityseg.errors import CitysegError
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
    """Read a cityseg checkpoint with ``torch.load(weights_only=True)``.

    Raises:
        CitysegError: the file is missing, unreadable, or not a cityseg checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CitysegError(f"{path}: checkpoint not found")
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
        raise CitysegError(f"{path}: not a readable cityseg checkpoint ({type(exc).__name__}: {_first_line(exc)})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CitysegError(f"{path}: not a cityseg checkpoint (no format={FORMAT!r} key; written by another tool?)")
    if ckpt.get("version") != VERSION:
        raise CitysegError(f"{path}: checkpoint version {ckpt.get('version')!r}; this cityseg reads version {VERSION}")
    bad = first_non_finite(ckpt.get("model"), "model")
    if bad is not None:
        raise CitysegError(f"{path}: tensor {bad} holds NaN or infinite values; a usable checkpoint holds "
                           "finite weights only")
    return ckpt


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


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
        first = str(exc).strip().splitlines()[0]
        raise CitysegError(f"{path}: weights do not fit model {expected_name!r} ({first})") from None


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, Any]:
    """Rebuild the model a checkpoint was trained with, load its weights, return ``(model.eval(), Config)``.

    The model is built with ``pretrained="none"``: the checkpoint already holds every weight.
    """
    from cityseg.config import config_from_dict
    from cityseg.models import build_model

    ckpt = load_checkpoint(path, map_location="cpu")
    require_model(ckpt, path)
    raw = dict(ckpt["config"])
    cfg = config_from_dict(raw, name=str(raw.pop("name", "checkpoint")))
    model = build_model(
        cfg.model.name,
        pretrained="none",
        aux_head=cfg.model.aux_head,
        freeze=list(cfg.model.freeze),
        output_stride=cfg.model.output_stride,
    )
    load_model_state(model, ckpt, path, cfg.model.name)
    return model.to(device).eval(), cfg


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
