"""The run folder and what training reports: ``config.yaml``, ``metrics.jsonl``, TensorBoard,
curves, panels, progress bars (plain log lines when stdout is not a terminal), the lines that open
and close a run.

Only rank 0 creates a :class:`RunLog` with ``enabled=True``; on other ranks every method is a
no-op, so the loop in ``train.py`` calls them without asking which process it is. Rank 0 also holds
the run folder's lock (:func:`hold_run_dir`) for the run's life: one writer per folder. Ctrl-C and
``kill`` stop a run between two steps (:class:`StopSignals`), so that the folder stays whole.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np
import torch

from cityseg.config import Config
from cityseg import logs
from cityseg.datasets import DatasetSpec
from cityseg.engine import distributed as D
from cityseg.errors import CitysegError
from cityseg.utils import atomic_path

if TYPE_CHECKING:
    from torch.utils.data import DataLoader

    from cityseg.engine.build import StepSettings
    from cityseg.engine.resume import RunState

log = logging.getLogger(__name__)

#: The best checkpoint scored with the eval section's inference at the end of a run (engine.evaluate.score_best).
EVAL_FILE = "eval_val.json"
#: What a run writes into its folder; ``--force`` removes exactly these, nothing else.
RUN_ARTEFACTS = ("config.yaml", "metrics.jsonl", "checkpoints", "tb", "curves.png", "panels.png", "report.html",
                 "train.log", EVAL_FILE)
#: The run folder's lock file (see :func:`lock_run_dir`); it is no artefact and never removed.
LOCK_FILE = ".lock"
_HELD_LOCKS: set[int] = set()  # file descriptors of the run-folder locks this process holds


def _close_locks_in_forked_child() -> None:
    # A forked child (a DataLoader worker) shares the lock's open file, which would keep the lock
    # alive after the run itself died; the child closes its copy (never unlocks: that is the run's).
    for fd in _HELD_LOCKS:
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD_LOCKS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_locks_in_forked_child)


def lock_run_dir(out: Path) -> int:
    """Take the exclusive lock of the run folder ``out`` (created if needed); return the open lock file.

    The lock is the operating system's (``flock`` on ``OUT/.lock``), held until the returned file
    descriptor is closed (:func:`unlock_run_dir`) or the process ends, however it ends: a crashed or
    killed run leaves no stale lock. The file holds the PID of its holder, for the refusal. It is
    never deleted, because a process that still has the old file open would then lock another file
    than a newcomer.

    Raises:
        CitysegError: another process holds the lock (names the folder and that process), or the
            folder cannot be created or written.
    """
    import fcntl

    path = out / LOCK_FILE
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except FileExistsError:
        raise CitysegError(f"--out {out}: exists and is not a folder; give a folder for the run") from None
    except OSError as exc:
        raise CitysegError(f"--out {out}: cannot write there ({exc.strerror}); give a writable folder") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        os.close(fd)
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise CitysegError(f"--out {out}: cannot lock {path} ({exc.strerror}); give a folder on a "
                               "file system with file locks") from None
        # held through another open file: another process, or another train() of this one
        who = f"process {holder}" if holder.isdigit() else "another process"
        raise CitysegError(
            f"--out {out}: {who} is writing a run into this folder (it holds {path}); "
            "wait for it to end or stop it, or give another --out"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _HELD_LOCKS.add(fd)
    return fd


def unlock_run_dir(fd: int) -> None:
    """Release a lock of :func:`lock_run_dir`."""
    import fcntl

    _HELD_LOCKS.discard(fd)
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


@contextlib.contextmanager
def hold_run_dir(out: Path) -> Iterator[None]:
    """Hold the run folder's lock (:func:`lock_run_dir`, rank 0) for the run's life, taken before
    anything in the folder is touched, so that no other ``train`` (``--resume``, ``--force``) writes or
    clears it meanwhile. A refusal is raised by every process, so none waits at a barrier."""
    fd, refusal = None, None
    if D.is_main_process():
        try:
            fd = lock_run_dir(out)
        except CitysegError as exc:
            refusal = str(exc)
    refusal = D.broadcast_object(refusal)
    if refusal is not None:
        raise CitysegError(refusal)
    try:
        yield
    finally:
        if fd is not None:
            unlock_run_dir(fd)


class StopSignals:
    """Ctrl-C (SIGINT) and ``kill`` (SIGTERM) while training.

    Until :meth:`defer` the first signal raises KeyboardInterrupt at once (nothing is written yet).
    Inside the training loop it only asks for a stop, which :meth:`check` raises at the next step or
    validation batch: raised between two arbitrary bytecodes it could land inside tensorboard's
    writer (``queue.put``) and leave ``close()`` waiting for ever on the writer thread (seen in CI).
    A second signal stops at once. Signals reach only the main thread, so elsewhere (a sweep's
    worker thread) nothing is installed and :meth:`check` never raises.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested, self.deferring = False, False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested or not self.deferring:
            raise KeyboardInterrupt
        self.requested = True

    def defer(self) -> None:
        """From now on a first signal waits for :meth:`check`."""
        self.deferring = True

    def check(self) -> None:
        """Raise KeyboardInterrupt when a stop was asked for (by any process, so all stop together)."""
        requested = self.requested
        if D.is_dist():
            requested = D.global_mean(torch.tensor(float(requested))) > 0
        if requested:
            raise KeyboardInterrupt


def prepare_run_dir(out: Path, resume: bool, force: bool, main: bool = True) -> None:
    """Refuse to overwrite an existing run unless ``resume`` or ``force``; ``force`` clears its artefacts.

    Every process calls it, so that all of them raise the same error (none is left waiting at a
    barrier); only the ``main`` one changes anything on disk.
    """
    if out.exists() and not out.is_dir():
        raise CitysegError(f"--out {out}: exists and is not a folder")
    if out.is_dir() and any(p.name != LOCK_FILE for p in out.iterdir()) and not (resume or force):
        raise CitysegError(
            f"--out {out}: folder already holds files; use --resume to continue that run, "
            "--force to start it afresh, or another --out"
        )
    if not main:
        return
    if force:
        for name in RUN_ARTEFACTS:
            path = out / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    out.mkdir(parents=True, exist_ok=True)


def truncate_metrics(path: Path, last_epoch: int) -> None:
    """Keep only the lines of ``metrics.jsonl`` with ``epoch <= last_epoch`` (atomically)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            if json.loads(line)["epoch"] <= last_epoch:
                kept.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            continue  # a line cut by a kill mid-write
    with atomic_path(path) as tmp:
        tmp.write_text("".join(f"{line}\n" for line in kept))


def nan_to_zero(x: float | None) -> float:
    """A score that is NaN (no class present at all) counts as 0 when comparing epochs."""
    return 0.0 if x is None or math.isnan(x) else float(x)


def json_safe(value: Any) -> Any:
    """NaN/inf -> None (JSON has no NaN), numpy/torch scalars -> Python numbers."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (torch.Tensor, np.generic)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class Progress:
    """A tqdm bar (loss, lr, images/s, ETA) on a terminal; a plain line every ``log_every`` steps otherwise."""

    def __init__(self, desc: str, total: int, enabled: bool, log_every: int = 10) -> None:
        self.desc, self.total, self.enabled, self.log_every = desc, total, enabled, max(log_every, 1)
        self.n, self.started = 0, time.perf_counter()
        self.bar = None
        if enabled and sys.stdout.isatty() and not logs.quiet():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, file=sys.stdout, dynamic_ncols=True, leave=False)

    def update(self, **values: float) -> None:
        self.n += 1
        if not self.enabled:
            return
        text = self._format(values)
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=False)
            self.bar.update(1)
        elif self.n % self.log_every == 0 or self.n == self.total:
            elapsed = time.perf_counter() - self.started
            eta = elapsed / self.n * (self.total - self.n)
            log.info(f"{self.desc} {self.n}/{self.total} {text} eta {_hms(eta)}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    @staticmethod
    def _format(values: dict[str, float]) -> str:
        parts = []
        for key, value in values.items():
            if key == "lr":
                parts.append(f"lr {value:.2e}")
            elif key == "speed":
                parts.append(f"{value:.1f} img/s")
            else:
                parts.append(f"{key} {value:.4f}")
        return " ".join(parts)


def _hms(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class RunLog:
    """Writes the run folder (rank 0 only; a no-op elsewhere).

    Args:
        resume_epoch: when resuming, the checkpoint's epoch: newer ``metrics.jsonl`` lines are cut
            and TensorBoard events after ``resume_step`` are purged.
    """

    def __init__(
        self, out: Path, cfg: Config, enabled: bool, resume_epoch: int | None = None, resume_step: int = 0
    ) -> None:
        self.out, self.cfg, self.enabled = out, cfg, enabled
        self.metrics_path = out / "metrics.jsonl"
        self.tb = None
        self.logfile: logs.RunFile | None = None
        self.started = time.perf_counter()
        if not enabled:
            return
        self.logfile = logs.RunFile(out / "train.log").__enter__()  # closed by close()
        with atomic_path(out / "config.yaml") as tmp:
            tmp.write_text(cfg.to_yaml())
        if resume_epoch is not None:
            truncate_metrics(self.metrics_path, resume_epoch)
        from torch.utils.tensorboard import SummaryWriter

        self.tb = SummaryWriter(str(out / "tb"), purge_step=resume_step + 1 if resume_epoch else None)

    def progress(self, desc: str, total: int) -> Progress:
        """A progress bar (or plain lines) on rank 0; silent elsewhere."""
        return Progress(desc, total, enabled=self.enabled, log_every=self.cfg.train.log_every)

    def info(self, message: str) -> None:
        """Print a line (rank 0 only)."""
        if self.enabled:
            log.info(message)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """TensorBoard scalars every ``train.log_every`` optimiser steps."""
        if self.tb is not None and step % self.cfg.train.log_every == 0:
            for key, value in values.items():
                self.tb.add_scalar(key, value, step)

    def epoch(self, record: dict[str, Any]) -> None:
        """Append the epoch's record to ``metrics.jsonl``, log it, redraw the curves."""
        if not self.enabled:
            return
        record = json_safe(record)
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        for key in ("train_loss", "val_loss", "val_miou", "val_dice", "lr"):
            if record.get(key) is not None:
                self.tb.add_scalar(f"epoch/{key}", record[key], record["step"])
        self.tb.flush()
        self.info(
            f"epoch {record['epoch']}: train_loss {record['train_loss']:.4f}"
            + (f" val_loss {record['val_loss']:.4f} val_miou {record['val_miou']:.4f} "
               f"val_dice {record['val_dice']:.4f}" if record.get("val_loss") is not None else "")
            + f" lr {record['lr']:.2e} ({record['time']:.0f} s)"
        )
        from cityseg.viz import plot_curves

        plot_curves(self.metrics_path, self.out / "curves.png")

    def panels(
        self, frames: list[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor]], epoch: int, spec: DatasetSpec
    ) -> None:
        """Draw image | ground truth | prediction | errors for a few validation frames into ``panels.png``.

        ``frames``: ``(name, (3, h, w) normalised image, (H, W) target, (H, W) prediction)``;
        ``spec``: the run's class table (names and colours).
        """
        if not self.enabled or not frames:
            return
        from cityseg.viz import save_panel

        names, images, targets, preds = zip(*frames)
        save_panel(
            self.out / "panels.png",
            [image.numpy() for image in images],
            [t.numpy() for t in targets],
            [p.numpy() for p in preds],
            names=[f"epoch {epoch}, {name}" for name in names],
            normalized=True,
            spec=spec,
        )

    def finish(self, state: RunState) -> dict[str, Any]:
        """Print where everything is and the best mIoU; return the same as a dict."""
        summary = {
            "run": str(self.out),
            "curves": str(self.out / "curves.png"),
            "panels": str(self.out / "panels.png"),
            "best_checkpoint": str(self.out / "checkpoints" / "best.pt"),
            "best_miou": state.best_miou,
            "best_epoch": state.best_epoch,
            "epochs": state.epoch,
            "minutes": (time.perf_counter() - self.started) / 60,
        }
        self.info(
            f"done in {summary['minutes']:.1f} min: best val mIoU {state.best_miou:.4f} (epoch {state.best_epoch})\n"
            f"  run folder  {summary['run']}\n  curves      {summary['curves']}\n"
            f"  panels      {summary['panels']}\n  best model  {summary['best_checkpoint']}"
        )
        return summary

    def close_logfile(self) -> None:
        """Stop copying log lines into ``train.log`` (after the run's last line)."""
        if self.logfile is not None:
            self.logfile.__exit__(None, None, None)
            self.logfile = None

    def close(self) -> None:
        """Close TensorBoard's writer (``train.log`` stays open for the summary: :meth:`close_logfile`)."""
        if self.tb is not None:
            self.tb.close()
            self.tb = None


# --- what a run says when it starts and when its budget ends it ------------------------------


def describe_run(
    cfg: Config,
    root: Path,
    dev: torch.device,
    step_settings: StepSettings,
    loaders: tuple[DataLoader, DataLoader],
    steps: int,
    state: RunState,
    resume: bool,
) -> str:
    """One line saying what is about to run: ``loaders`` are (train, val), ``steps`` per epoch."""
    train_loader, val_loader = loaders
    amp = step_settings.amp_name
    start = "starting (no checkpoint to resume yet)" if resume else "starting"
    start = f"resuming after epoch {state.epoch}" if state.epoch else start
    return (
        f"{start}: {cfg.model.name} on {dev} x{D.get_world_size()}, data {root} "
        f"({len(train_loader.dataset)} train / {len(val_loader.dataset)} val), "
        f"batch {cfg.train.batch_size} = {train_loader.batch_size} x {step_settings.accum} accum "
        f"x {D.get_world_size()}, "
        f"{steps} steps/epoch, {cfg.train.epochs} epochs{budget_note(cfg)}, amp {amp}"
    )


def budget_note(cfg: Config) -> str:
    """The step and time limits of a run, as a suffix of the run's opening line."""
    limits = [f"{cfg.train.max_steps} steps"] if cfg.train.max_steps else []
    limits += [f"{cfg.train.max_minutes:g} min"] if cfg.train.max_minutes else []
    return f" (at most {', '.join(limits)})" if limits else ""


def describe_budget(cfg: Config, state: RunState) -> str:
    """Where a budget-limited run ended."""
    t = cfg.train
    limit = f"train.max_minutes={t.max_minutes}" if t.max_minutes else f"train.max_steps={t.max_steps}"
    return f"{limit}, {state.step} steps in {state.elapsed / 60:.1f} min"
