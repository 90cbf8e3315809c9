"""What a run saves to be continued (``cityseg train --resume``), and how it is restored.

Every epoch ``checkpoints/last.pt`` (and ``best.pt`` after a new best val mIoU) holds the config,
the class table, the weights, the optimiser, schedule and grad scaler states, the counters
(:class:`RunState`) and every RNG (torch, numpy, python, cuda, the DataLoader generator) of every
process, so the continued run repeats exactly what the uninterrupted run would have done; lines of
``metrics.jsonl`` newer than the checkpoint are cut away (:class:`~cityseg.engine.runlog.RunLog`).
A weights-only ``.safetensors`` export cannot be resumed from (:func:`resume_folder`); it starts a
new run as ``model.pretrained``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cityseg.checkpoint import (
    capture_rng,
    is_safetensors,
    load_checkpoint,
    load_model_state,
    model_state,
    restore_rng,
    save_checkpoint,
)
from cityseg.config import Config
from cityseg.datasets import DatasetSpec
from cityseg.engine import distributed as D
from cityseg.engine.schedule import LRSchedule
from cityseg.errors import CitysegError

logger = logging.getLogger(__name__)

#: What ``--resume`` needs from ``last.pt`` besides the model and its config.
_RESUME_KEYS = ("model", "optimizer", "scheduler", "rng", "epoch", "step", "best_miou")


@dataclass
class RunState:
    """Counters that a checkpoint carries across a restart."""

    epoch: int = 0  # completed epochs
    step: int = 0  # optimiser steps taken
    best_miou: float = -1.0
    best_epoch: int = 0
    stale: int = 0  # validations since the best one (early stopping)
    elapsed: float = 0.0  # wall-time seconds of the run (the train.max_minutes budget)

    def update_best(self, miou: float, epoch: int) -> bool:
        """Record one validation's mIoU; True when it is a new best."""
        if miou > self.best_miou:
            self.best_miou, self.best_epoch, self.stale = miou, epoch, 0
            return True
        self.stale += 1
        return False


@dataclass
class Resumable:
    """The objects of a run whose state a checkpoint saves and :func:`restore` loads back."""

    model: nn.Module  # the bare model (no DDP or compile wrapper)
    optimizer: torch.optim.Optimizer
    schedule: LRSchedule
    scaler: torch.amp.GradScaler | None  # fp16 only
    generator: torch.Generator  # the training loader's: shuffling order and worker seeds


def save_state(
    out: Path,
    cfg: Config,
    spec: DatasetSpec,
    parts: Resumable,
    state: RunState,
    record: dict[str, Any],
    best: bool,
) -> None:
    """Write ``last.pt`` (and ``best.pt`` when ``best``) from rank 0, with every process's RNG state.

    ``spec``: the run's class table (``cfg``'s dataset, resolved once per run); ``record``: the
    epoch's ``metrics.jsonl`` line.
    """
    rngs = D.all_gather_object(capture_rng(parts.generator))  # collective: every rank must call it
    if D.is_main_process():
        ckpt = {
            "config": cfg.to_dict(),
            "dataset": spec.to_dict(),  # the class table, readable without cityseg's built-ins
            **model_state(parts.model),  # the weights (and an hf: model's transformers config)
            "optimizer": parts.optimizer.state_dict(),
            "scheduler": parts.schedule.state_dict(),
            "scaler": parts.scaler.state_dict() if parts.scaler is not None else None,
            "epoch": state.epoch,
            "step": state.step,
            "rng": rngs,
            "best_miou": state.best_miou,
            "best_epoch": state.best_epoch,
            "stale": state.stale,
            "elapsed": state.elapsed,
            "metrics": record,
        }
        if best:
            save_checkpoint(out / "checkpoints" / "best.pt", ckpt)
        save_checkpoint(out / "checkpoints" / "last.pt", ckpt)
    D.barrier()


def restore(path: Path, cfg: Config, parts: Resumable) -> RunState:
    """Load ``last.pt`` into the freshly built objects; return the counters to continue from."""
    ckpt = load_checkpoint(path, map_location="cpu")
    missing = [key for key in _RESUME_KEYS if key not in ckpt]
    if missing:
        raise CitysegError(f"{path}: cannot resume from it: no {', '.join(map(repr, missing))} "
                           "(a weights-only checkpoint starts a new run with model.pretrained=FILE)")
    load_model_state(parts.model, ckpt, path, cfg.model.name)
    parts.optimizer.load_state_dict(ckpt["optimizer"])
    parts.schedule.load_state_dict(ckpt["scheduler"])
    if parts.scaler is not None and ckpt.get("scaler"):
        parts.scaler.load_state_dict(ckpt["scaler"])
    rngs = ckpt["rng"]
    if len(rngs) == D.get_world_size():
        restore_rng(rngs[D.get_rank()], parts.generator)
    elif D.is_main_process():
        logger.warning(f"{path} was written by {len(rngs)} processes, this run has {D.get_world_size()}; "
                       "the data order after resuming differs from an uninterrupted run")
    return RunState(
        epoch=int(ckpt["epoch"]),
        step=int(ckpt["step"]),
        best_miou=float(ckpt["best_miou"]),
        best_epoch=int(ckpt.get("best_epoch", 0)),
        stale=int(ckpt.get("stale", 0)),
        elapsed=float(ckpt.get("elapsed", 0.0)),
    )


def resume_folder(path: str | Path, out: str | Path | None = None) -> Path:
    """The run folder that ``--resume LAST_PT`` continues: the one whose ``checkpoints/last.pt`` is ``path``.

    Raises:
        CitysegError: ``path`` is missing, is a weights-only file (a safetensors export), is not a
            run's ``checkpoints/last.pt``, or lies outside ``out`` (``--out``) when that is given.
    """
    path = Path(path)
    if not path.is_file():
        raise CitysegError(f"--resume {path}: no such file; give a run's checkpoints/last.pt, or --resume alone "
                           "to continue the run in --out")
    if is_safetensors(path):
        raise CitysegError(f"--resume {path}: the file holds weights only; resuming needs the run's full training "
                           "checkpoint (runs/NAME/checkpoints/last.pt: optimiser, schedule, random state); to start "
                           f"a new run from these weights, --set model.pretrained={path}")
    if path.name != "last.pt" or path.parent.name != "checkpoints":
        raise CitysegError(f"--resume {path}: a run continues from its checkpoints/last.pt "
                           "(e.g. runs/demo/checkpoints/last.pt)")
    run = path.parent.parent
    if out is not None and Path(out).resolve() != run.resolve():
        raise CitysegError(f"--resume {path}: belongs to the run in {run}, not to --out {out}; give one of them")
    return run
