"""The training loop: ``train(cfg, out_dir)`` reads top to bottom, one epoch of
:func:`train_one_epoch` then :func:`evaluate`, a checkpoint, a line in ``metrics.jsonl``.

Same code on one CPU and on N GPUs under ``torchrun --nproc_per_node=N -m cityseg train``:
every process runs the loop on its shard of the data, gradients are averaged by DDP, the
validation confusion matrix is summed across processes, and only rank 0 writes files or logs.

Resuming (``--resume``) reloads ``checkpoints/last.pt``: weights, optimiser, schedule, grad
scaler, counters, and every RNG (torch, numpy, python, cuda, the DataLoader generator) of every
process, so the continued run repeats exactly what the uninterrupted run would have done; lines
of ``metrics.jsonl`` newer than the checkpoint are cut away. A weights-only ``.safetensors``
export cannot be resumed from (:func:`resume_folder`); it starts a new run as ``model.pretrained``.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from cityseg import logs, metrics
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
from cityseg.data.transforms import crop_at, set_crop
from cityseg.device import resolve_device
from cityseg.engine import distributed as D
from cityseg.engine.build import (
    Engine,
    adopt_dataset,
    build_criterion,
    build_engine,
    build_loaders,
    build_optimizer,
    build_train_model,
    check_names,
    resolve_data_root,
    seed_everything,
    setup_torch,
    steps_per_epoch,
)
from cityseg.engine.evaluator import Evaluator
from cityseg.engine.runlog import EVAL_FILE, Progress, RunLog, lock_run_dir, prepare_run_dir, unlock_run_dir
from cityseg.engine.schedule import Budget, LRSchedule, build_schedule
from cityseg.errors import CitysegError
from cityseg.models import set_frozen_bn_eval

logger = logging.getLogger(__name__)


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


class NonFiniteLoss(CitysegError):
    """The loss became NaN or infinite; training stops, the last good checkpoint is kept."""


Frame = tuple[str, torch.Tensor, torch.Tensor, torch.Tensor]  # name, image, target, prediction


def train(
    cfg: Config,
    out_dir: str | Path,
    device: str = "auto",
    resume: bool = False,
    force: bool = False,
    max_steps_per_epoch: int | None = None,
    on_validation: Callable[[int, dict], None] | None = None,
    final_score: bool = True,
) -> dict[str, Any]:
    """Train ``cfg`` into the run folder ``out_dir``; return the summary printed at the end.

    Args:
        device: ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
        resume: continue from ``out_dir/checkpoints/last.pt`` (from scratch when there is none).
        force: start afresh even if ``out_dir`` already holds a run.
        max_steps_per_epoch: cut every epoch short (tests); None trains on the whole split.
        on_validation: called as ``on_validation(epoch, record)`` after each validated epoch's
            checkpoint, ``record`` being its ``metrics.jsonl`` line; what it raises propagates
            (``cityseg sweep`` prunes a trial this way).
        final_score: score the best checkpoint once more with the ``eval`` section's inference when
            that is more than one pass (:func:`score_best`); ``cityseg sweep``'s trials skip it.

    Sets torch's process-wide thread count (``train.threads``) and deterministic-algorithms flag.

    Raises:
        CitysegError: bad config, data or checkpoint; another process training into ``out_dir``; a
            non-finite loss (:class:`NonFiniteLoss`).
        KeyboardInterrupt: Ctrl-C or SIGTERM; the checkpoints on disk stay valid for ``resume``.
    """
    logs.ensure_console()
    check_names(cfg)
    dev = resolve_device(device)
    D.init_distributed(dev)
    try:
        with hold_run_dir(Path(out_dir)), StopSignals() as stop:
            return _train(cfg, Path(out_dir), dev, resume, force, max_steps_per_epoch, on_validation, stop, final_score)
    finally:
        D.cleanup()


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
            requested = global_mean(torch.tensor(float(requested))) > 0
        if requested:
            raise KeyboardInterrupt


def _train(
    cfg: Config,
    out: Path,
    dev: torch.device,
    resume: bool,
    force: bool,
    max_steps: int | None,
    on_validation: Callable[[int, dict], None] | None = None,
    stop: StopSignals | None = None,
    final_score: bool = True,
) -> dict:
    stop = stop or StopSignals()
    prepare_run_dir(out, resume=resume, force=force, main=D.is_main_process())
    D.barrier()
    setup_torch(cfg, dev)
    seed_everything(cfg.train.seed + D.get_rank())
    root = resolve_data_root(cfg)
    cfg = adopt_dataset(cfg, root)
    train_loader, val_loader, generator = build_loaders(cfg, root, dev)
    model, core = build_train_model(cfg, dev)
    criterion, optimizer = build_criterion(cfg), build_optimizer(cfg, core)
    engine = build_engine(cfg, dev, micro_batch=train_loader.batch_size)
    steps = steps_per_epoch(cfg, train_loader, engine, root, max_steps)
    total = min(cfg.train.epochs * steps, cfg.train.max_steps or cfg.train.epochs * steps)
    schedule = build_schedule(optimizer, cfg.sched, total_steps=total)
    state, last = RunState(), out / "checkpoints" / "last.pt"
    if resume and last.is_file():
        state = restore(last, cfg, core, optimizer, schedule, engine, generator)
    budget = Budget(total, cfg.train.max_minutes, elapsed=state.elapsed)
    log = RunLog(out, cfg, D.is_main_process(), resume_epoch=state.epoch if resume else None, resume_step=state.step)
    log.info(describe_run(cfg, root, dev, engine, train_loader, val_loader, steps, state, resume))
    panel: tuple[int, list[Frame]] | None = None
    try:
        stop.defer()
        for epoch in range(state.epoch + 1, cfg.train.epochs + 1):
            started = time.perf_counter()
            if isinstance(train_loader.sampler, DistributedSampler):
                train_loader.sampler.set_epoch(epoch)
            crop = crop_at(cfg.data, agreed(budget.fraction(state.step)))
            if set_crop(train_loader.dataset.transform, crop):
                log.info(f"epoch {epoch}: training crops now {crop[1]}x{crop[0]} (data.crop_stages)")
            bar = log.progress(f"epoch {epoch}/{cfg.train.epochs}", steps)
            train_loss = train_one_epoch(
                model, criterion, optimizer, schedule, train_loader, engine, state, steps, bar, log, budget, stop
            )
            record: dict[str, Any] = {"epoch": epoch, "train_loss": train_loss}
            improved, done = False, agreed(budget.fraction(state.step)) >= 1.0
            if epoch % cfg.train.val_every == 0 or epoch == cfg.train.epochs or done:
                bar = log.progress("  val", len(val_loader))
                scores, frames = evaluate(model, criterion, val_loader, engine, cfg, bar, stop)
                schedule.epoch_end(scores["val_loss"])
                improved = state.update_best(scores["val_miou"], epoch)
                panel = (epoch, frames) if improved or panel is None else panel
                record.update(scores)
            state.epoch, state.elapsed = epoch, budget.elapsed()
            record.update(step=state.step, lr=schedule.lrs()[0], time=round(time.perf_counter() - started, 3))
            log.epoch(record)  # before the checkpoint: a kill in between re-runs this epoch, cutting the line
            save_state(out, cfg, core, optimizer, schedule, engine, generator, state, record, best=improved)
            if on_validation is not None and "val_miou" in record:
                on_validation(epoch, record)
            if cfg.train.early_stop is not None and state.stale >= cfg.train.early_stop:
                log.info(f"early stop: no better val mIoU in {state.stale} validations")
                break
            if done and epoch < cfg.train.epochs:
                log.info(f"budget used up in epoch {epoch}: {describe_budget(cfg, state)}")
                break
    except KeyboardInterrupt:
        saved = f"{last} holds epoch {state.epoch}" if last.is_file() else "no epoch was finished"
        log.info(f"\ninterrupted: {saved}; continue with --resume --out {out}")
        raise
    except NonFiniteLoss as exc:
        kept = f"{last} (epoch {state.epoch}) is intact" if last.is_file() else "no checkpoint was written yet"
        raise NonFiniteLoss(f"{exc}; {kept}") from None
    finally:
        log.close()
        if sys.exc_info()[0] is not None:  # leaving with an exception: the summary below is not written
            log.close_logfile()
    try:
        if panel is not None:
            log.panels(panel[1], epoch=panel[0])
        summary = log.finish(state)
        if final_score:
            summary.update(score_best(cfg, out, root, dev, log))
        return summary
    finally:
        log.close_logfile()


def score_best(cfg: Config, out: Path, root: Path, dev: torch.device, log: RunLog) -> dict[str, Any]:
    """Score the best checkpoint once as its config's ``eval`` section infers (multi-scale, flip,
    sliding) when that is more than validation's one whole-image pass; ``{}`` otherwise.

    Writes ``OUT/`` :data:`~cityseg.engine.runlog.EVAL_FILE` (as ``cityseg evaluate --json``) and returns ``{"best_miou_eval": ...}``:
    the figure ``cityseg evaluate --checkpoint`` and ``cityseg predict`` give for that checkpoint,
    while the per-epoch val mIoU (which picks the best checkpoint) stays one cheap pass.
    """
    best = out / "checkpoints" / "best.pt"
    if cfg.eval.single_pass() or not best.is_file() or not D.is_main_process():
        return {}
    recipe = f"eval.scales {','.join(f'{s:g}' for s in cfg.eval.scales)}{' + flip' if cfg.eval.flip else ''}"
    if D.is_dist():  # the Evaluator would wait for the other processes' counts
        log.info(f"score the best checkpoint with its {recipe}: cityseg evaluate --checkpoint {best}")
        return {}
    from cityseg.engine.evaluate import evaluate_checkpoint

    counts, seconds, frames = evaluate_checkpoint(best, dev.type, data=str(root))
    result = counts.scores()
    metrics.write_json(counts, out / EVAL_FILE, result)
    log.info(f"best checkpoint with its {recipe} ({cfg.eval.mode}): val mIoU {nan_to_zero(result['miou']):.4f}, "
             f"pixel accuracy {result['pixel_accuracy']:.3f}, mean class accuracy "
             f"{nan_to_zero(result['mean_class_accuracy']):.3f} ({frames} frames, {seconds:.0f} s; "
             f"{out / EVAL_FILE})")
    return {"best_miou_eval": nan_to_zero(result["miou"])}


def train_one_epoch(
    model: nn.Module,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: LRSchedule,
    loader: DataLoader,
    engine: Engine,
    state: RunState,
    steps: int,
    progress: Progress,
    log: RunLog,
    budget: Budget | None = None,
    stop: StopSignals | None = None,
) -> float:
    """``steps`` optimiser steps of ``engine.accum`` micro-batches each, fewer when ``budget`` runs
    out first; returns the mean loss. A stop asked for through ``stop`` is raised after a step."""
    budget = budget or Budget(schedule.total_steps)
    stop = stop or StopSignals()
    model.train()
    set_frozen_bn_eval(model)
    total, count, seen, started = 0.0, 0, 0, time.perf_counter()
    for i, batch in enumerate(itertools.islice(loader, steps * engine.accum)):
        images, targets = engine.to_device(batch["image"], batch["mask"])
        last_micro = (i + 1) % engine.accum == 0
        with maybe_no_sync(model, sync=last_micro), engine.autocast():
            loss = compute_loss(criterion, model(images), targets, engine.aux_weight)
        value = global_mean(loss.detach())  # also tells every process about a NaN on any one
        if not math.isfinite(value):
            raise NonFiniteLoss(f"loss is {value} at epoch {state.epoch + 1}, step {state.step + 1}")
        backward(loss / engine.accum, engine)
        total, count, seen = total + value, count + 1, seen + images.shape[0] * D.get_world_size()
        if last_micro:
            optimizer_step(model, optimizer, engine)
            state.step += 1
            fraction = agreed(budget.fraction(state.step))
            schedule.step(fraction)
            lr = schedule.lrs()[0]
            progress.update(loss=total / count, lr=lr, speed=seen / (time.perf_counter() - started))
            log.scalars(state.step, {"train/loss": value, "train/lr": lr})
            stop.check()
            if fraction >= 1.0:
                break
    progress.close()
    return total / max(count, 1)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    criterion: nn.Module,
    loader: DataLoader,
    engine: Engine,
    cfg: Config,
    progress: Progress,
    stop: StopSignals | None = None,
) -> tuple[dict[str, Any], list[Frame]]:
    """Validation loss and scores on whole images; returns (scores, the first frames for panels).

    Logits are upsampled to the label's size before the loss and the argmax, so the numbers
    are those ``cityseg evaluate`` gives for the same images and labels. The loss is the mean
    over batches weighted by their size; the scores come from one confusion matrix summed over
    every process.
    """
    model.eval()
    spec = cfg.spec()
    evaluator = Evaluator(spec.num_classes, engine.device, boundary_tolerance=cfg.eval.boundary_tolerance,
                          table=metrics.table_for(spec))
    loss_sum = torch.zeros(2, dtype=torch.float64, device=engine.device)  # (sum of loss x batch size, images)
    frames: list[Frame] = []
    for batch in loader:
        images, targets = engine.to_device(batch["image"], batch["mask"])
        with engine.autocast():
            logits = model(images)["out"]
        logits = F.interpolate(logits.float(), size=targets.shape[-2:], mode="bilinear", align_corners=False)
        n = images.shape[0]
        loss_sum += torch.stack([criterion(logits, targets).double() * n, loss_sum.new_tensor(n)])
        pred = logits.argmax(1)
        evaluator.update(pred, targets)
        for j in range(min(n, cfg.train.panels - len(frames))):
            frames.append((batch["name"][j], images[j].float().cpu(), targets[j].cpu(), pred[j].cpu()))
        progress.update(loss=(loss_sum[0] / loss_sum[1]).item())
        if stop is not None:
            stop.check()
    progress.close()
    D.all_reduce_sum(loss_sum)
    evaluator.reduce()
    result = evaluator.compute()
    scores = {
        "val_loss": (loss_sum[0] / loss_sum[1]).item(),
        "val_miou": nan_to_zero(result["miou"]),
        "val_dice": nan_to_zero(result["mean_dice"]),
        "val_pixel_accuracy": result["pixel_accuracy"],
        "val_mean_class_accuracy": nan_to_zero(result["mean_class_accuracy"]),
        "val_boundary_f1": result["boundary_f1"],
        "iou": {name: scores["iou"] for name, scores in result["classes"].items()},
    }
    return scores, frames


# --- one step ------------------------------------------------------------------------------


def compute_loss(
    criterion: nn.Module, outputs: dict[str, torch.Tensor], targets: torch.Tensor, aux_weight: float
) -> torch.Tensor:
    """Loss of the main head (plus ``aux_weight`` x the auxiliary head's), computed in float32.

    The logits are made contiguous first: channels_last models return channels_last logits, on
    which the per-pixel softmax of the losses runs 1.6x slower on the CPU (cross-entropy forward
    + backward at 8x19x256x256: 125 ms channels_last, 78 ms contiguous, copy included).
    """
    loss = criterion(outputs["out"].float().contiguous(), targets)
    if "aux" in outputs:
        loss = loss + aux_weight * criterion(outputs["aux"].float().contiguous(), targets)
    return loss


def backward(loss: torch.Tensor, engine: Engine) -> None:
    """Backpropagate ``loss`` (scaled first under fp16)."""
    if engine.scaler is not None:
        engine.scaler.scale(loss).backward()
    else:
        loss.backward()


def optimizer_step(model: nn.Module, optimizer: torch.optim.Optimizer, engine: Engine) -> None:
    """Unscale (fp16), clip, step, zero the gradients."""
    if engine.scaler is not None:
        engine.scaler.unscale_(optimizer)
    if engine.grad_clip is not None:
        nn.utils.clip_grad_norm_(model.parameters(), engine.grad_clip)
    if engine.scaler is not None:
        engine.scaler.step(optimizer)
        engine.scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def maybe_no_sync(model: nn.Module, sync: bool) -> contextlib.AbstractContextManager:
    """Skip DDP's gradient all-reduce on micro-batches before the last of an accumulation."""
    if sync or not isinstance(model, nn.parallel.DistributedDataParallel):
        return contextlib.nullcontext()
    return model.no_sync()


def global_mean(value: torch.Tensor) -> float:
    """Mean of a scalar over all processes (one tiny all-reduce; NaN anywhere gives NaN everywhere)."""
    t = value.float().reshape(1).clone()
    return D.all_reduce_sum(t).item() / D.get_world_size()


def agreed(fraction: float) -> float:
    """One value for every process (the mean), so all of them stop on the same step."""
    return global_mean(torch.tensor(fraction)) if D.is_dist() else fraction


def describe_budget(cfg: Config, state: RunState) -> str:
    """Where a budget-limited run ended."""
    limit = f"train.max_minutes={cfg.train.max_minutes}" if cfg.train.max_minutes else f"train.max_steps={cfg.train.max_steps}"
    return f"{limit}, {state.step} steps in {state.elapsed / 60:.1f} min"


def nan_to_zero(x: float | None) -> float:
    """A score that is NaN (no class present at all) counts as 0 when comparing epochs."""
    return 0.0 if x is None or math.isnan(x) else float(x)


def describe_run(cfg, root, dev, engine, train_loader, val_loader, steps, state, resume) -> str:
    """One line saying what is about to run."""
    amp = {None: "none", torch.bfloat16: "bf16", torch.float16: "fp16"}[engine.amp_dtype]
    start = "starting (no checkpoint to resume yet)" if resume else "starting"
    start = f"resuming after epoch {state.epoch}" if state.epoch else start
    return (
        f"{start}: {cfg.model.name} on {dev} x{D.get_world_size()}, data {root} "
        f"({len(train_loader.dataset)} train / {len(val_loader.dataset)} val), "
        f"batch {cfg.train.batch_size} = {train_loader.batch_size} x {engine.accum} accum x {D.get_world_size()}, "
        f"{steps} steps/epoch, {cfg.train.epochs} epochs{budget_note(cfg)}, amp {amp}"
    )


def budget_note(cfg: Config) -> str:
    """The step and time limits of a run, as a suffix of the run's opening line."""
    limits = [f"{cfg.train.max_steps} steps"] if cfg.train.max_steps else []
    limits += [f"{cfg.train.max_minutes:g} min"] if cfg.train.max_minutes else []
    return f" (at most {', '.join(limits)})" if limits else ""


# --- checkpoints ----------------------------------------------------------------------------


def save_state(
    out: Path,
    cfg: Config,
    core: nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: LRSchedule,
    engine: Engine,
    generator: torch.Generator,
    state: RunState,
    record: dict[str, Any],
    best: bool,
) -> None:
    """Write ``last.pt`` (and ``best.pt`` when ``best``) from rank 0, with every process's RNG state."""
    rngs = D.all_gather_object(capture_rng(generator))  # collective: every rank must call it
    if D.is_main_process():
        ckpt = {
            "config": cfg.to_dict(),
            "dataset": cfg.spec().to_dict(),  # the class table, readable without cityseg's built-ins
            **model_state(core),  # the weights (and an hf: model's transformers config)
            "optimizer": optimizer.state_dict(),
            "scheduler": schedule.state_dict(),
            "scaler": engine.scaler.state_dict() if engine.scaler is not None else None,
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


#: What ``--resume`` needs from ``last.pt`` besides the model and its config.
_RESUME_KEYS = ("model", "optimizer", "scheduler", "rng", "epoch", "step", "best_miou")


def restore(
    path: Path,
    cfg: Config,
    core: nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: LRSchedule,
    engine: Engine,
    generator: torch.Generator,
) -> RunState:
    """Load ``last.pt`` into the freshly built objects; return the counters to continue from."""
    ckpt = load_checkpoint(path, map_location="cpu")
    missing = [key for key in _RESUME_KEYS if key not in ckpt]
    if missing:
        raise CitysegError(f"{path}: cannot resume from it: no {', '.join(map(repr, missing))} "
                           "(a weights-only checkpoint starts a new run with model.pretrained=FILE)")
    load_model_state(core, ckpt, path, cfg.model.name)
    optimizer.load_state_dict(ckpt["optimizer"])
    schedule.load_state_dict(ckpt["scheduler"])
    if engine.scaler is not None and ckpt.get("scaler"):
        engine.scaler.load_state_dict(ckpt["scaler"])
    rngs = ckpt["rng"]
    if len(rngs) == D.get_world_size():
        restore_rng(rngs[D.get_rank()], generator)
    elif D.is_main_process():
        logger.warning(f"{path} was written by {len(rngs)} processes, this run has {D.get_world_size()}; "
                    "the data order after resuming differs from an uninterrupted run")  # fmt: skip
    return RunState(
        epoch=int(ckpt["epoch"]),
        step=int(ckpt["step"]),
        best_miou=float(ckpt["best_miou"]),
        best_epoch=int(ckpt.get("best_epoch", 0)),
        stale=int(ckpt.get("stale", 0)),
        elapsed=float(ckpt.get("elapsed", 0.0)),
    )


