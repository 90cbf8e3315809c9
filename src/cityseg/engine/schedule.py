"""Learning-rate schedule: linear warmup per optimiser step, times one of plateau | poly | cosine | constant.

Written by hand rather than chained from ``torch.optim.lr_scheduler`` because the seed's
recipe mixes a per-step warmup with ``ReduceLROnPlateau`` stepped per epoch on the
validation loss, and torch's ``SequentialLR``/``ChainedScheduler`` do not accept
``ReduceLROnPlateau``. Each group's rate is one closed-form product, so it is simple to test
against torch's own schedulers (the tests use them as the oracle)::

    lr = warmup(step) * main(step) * plateau_scale          (per parameter group)

* ``warmup(step)`` rises linearly from ``warmup_factor`` to 1 over ``warmup_iters`` steps.
* ``main``: ``poly`` ``min_lr + (base - min_lr) * (1 - t) ** power`` (torchvision's
  segmentation reference, mmseg); ``cosine`` the same shape as ``CosineAnnealingLR``;
  ``constant`` and ``plateau`` the base rate. ``t`` is the fraction of the run done:
  ``step / total`` by default, or the fraction of a wall-time budget (``train.max_minutes``)
  when :meth:`LRSchedule.step` is given one (see :class:`Budget`).
* ``plateau_scale`` follows ``ReduceLROnPlateau(mode="min", factor, patience, threshold=1e-4
  relative)``: after more than ``patience`` epochs without improving the validation loss it is
  multiplied by ``factor``; the rate never drops below ``min_lr``.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from cityseg.config import SchedConfig
from cityseg.errors import CitysegError

SCHEDULES = ("plateau", "poly", "cosine", "constant")
_THRESHOLD = 1e-4  # ReduceLROnPlateau's default relative improvement threshold


class LRSchedule:
    """Sets ``param_group["lr"]`` of an optimiser; call :meth:`step` after every optimiser step
    and :meth:`epoch_end` with the validation loss after every validation.

    Args:
        optimizer: its groups' current ``lr`` values are taken as the base rates.
        cfg: the ``sched`` config section.
        total_steps: optimiser steps in the whole run (poly and cosine decay over them).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: SchedConfig, total_steps: int) -> None:
        if cfg.name not in SCHEDULES:
            raise CitysegError(f"unknown sched.name {cfg.name!r}; valid: {', '.join(SCHEDULES)}")
        self.optimizer = optimizer
        self.cfg = cfg
        self.total_steps = max(int(total_steps), 1)
        self.base_lrs = [group.get("initial_lr", group["lr"]) for group in optimizer.param_groups]
        for group, base in zip(optimizer.param_groups, self.base_lrs):
            group["initial_lr"] = base
        self.step_num = 0
        self.fraction = 0.0  # of the run done: what poly and cosine decay over
        self.plateau_scale = 1.0
        self.best = math.inf
        self.bad_epochs = 0
        self._apply()

    def warmup_factor(self, step: int) -> float:
        """Multiplier in [warmup_factor, 1] rising linearly over the first ``warmup_iters`` steps."""
        n = self.cfg.warmup_iters
        if n <= 0 or step >= n:
            return 1.0
        return self.cfg.warmup_factor + (1.0 - self.cfg.warmup_factor) * step / n

    def main_lr(self, base: float, t: float) -> float:
        """The schedule's rate for a group whose base rate is ``base`` with a fraction ``t`` of the
        run done, before warmup and plateau."""
        t = min(max(t, 0.0), 1.0)
        lo = min(self.cfg.min_lr, base)
        if self.cfg.name == "poly":
            return lo + (base - lo) * (1.0 - t) ** self.cfg.power
        if self.cfg.name == "cosine":
            return lo + (base - lo) * 0.5 * (1.0 + math.cos(math.pi * t))
        return base  # plateau, constant

    def lrs(self) -> list[float]:
        """Current rate of every parameter group."""
        return [group["lr"] for group in self.optimizer.param_groups]

    def step(self, fraction: float | None = None) -> None:
        """Advance one optimiser step; ``fraction`` of the run done (default ``step / total_steps``)."""
        self.step_num += 1
        self.fraction = self.step_num / self.total_steps if fraction is None else fraction
        self._apply()

    def epoch_end(self, val_loss: float) -> bool:
        """Feed one epoch's validation loss (plateau only). Returns True when the rate was cut."""
        if self.cfg.name != "plateau":
            return False
        if math.isfinite(val_loss) and val_loss < self.best * (1.0 - _THRESHOLD):
            self.best, self.bad_epochs = val_loss, 0
            return False
        self.bad_epochs += 1
        if self.bad_epochs <= self.cfg.patience:
            return False
        self.bad_epochs = 0
        self.plateau_scale *= self.cfg.factor
        self._apply()
        return True

    def _apply(self) -> None:
        warm = self.warmup_factor(self.step_num)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            lr = warm * self.main_lr(base, self.fraction) * self.plateau_scale
            if self.cfg.name == "plateau":  # ReduceLROnPlateau's floor; the others reach min_lr by shape
                lr = max(lr, min(self.cfg.min_lr, warm * base))
            group["lr"] = lr

    def state_dict(self) -> dict[str, Any]:
        return {
            "step_num": self.step_num,
            "fraction": self.fraction,
            "plateau_scale": self.plateau_scale,
            "best": self.best,
            "bad_epochs": self.bad_epochs,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step_num = int(state["step_num"])
        self.fraction = float(state.get("fraction", self.step_num / self.total_steps))
        self.plateau_scale = float(state["plateau_scale"])
        self.best = float(state["best"])
        self.bad_epochs = int(state["bad_epochs"])
        self._apply()


def build_schedule(optimizer: torch.optim.Optimizer, cfg: SchedConfig, total_steps: int) -> LRSchedule:
    """The run's learning-rate schedule (see the module docstring)."""
    return LRSchedule(optimizer, cfg, total_steps)


class Budget:
    """How much of a run is done: the larger of the step fraction and the wall-time fraction.

    A run ends when either is used up: ``total_steps`` (``train.epochs`` x steps per epoch, or
    ``train.max_steps`` when smaller) or ``max_minutes`` of wall time (training and validation,
    counted across ``--resume``). Poly and cosine schedules decay over this fraction, so a
    time-limited run anneals to its floor on time on a machine of any speed.
    """

    def __init__(self, total_steps: int, max_minutes: float | None = None, elapsed: float = 0.0) -> None:
        self.total_steps = max(int(total_steps), 1)
        self.max_seconds = None if max_minutes is None else 60.0 * max_minutes
        self.before = elapsed  # seconds spent before this process started (resume)
        self.started = time.perf_counter()

    def elapsed(self) -> float:
        """Wall-time seconds of the run so far."""
        return self.before + time.perf_counter() - self.started

    def fraction(self, step: int) -> float:
        """Fraction of the run done after ``step`` optimiser steps, in [0, 1]."""
        done = step / self.total_steps
        if self.max_seconds is not None:
            done = max(done, self.elapsed() / self.max_seconds)
        return min(done, 1.0)

    def spent(self, step: int) -> bool:
        """True once either budget is used up."""
        return self.fraction(step) >= 1.0
