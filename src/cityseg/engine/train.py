"""The training loop: ``train(cfg, out_dir)`` reads top to bottom, one epoch of
:func:`train_one_epoch` then :func:`validate`, a checkpoint, a line in ``metrics.jsonl``.

Same code on one CPU and on N GPUs under ``torchrun --nproc_per_node=N -m cityseg train``:
every process runs the loop on its shard of the data, gradients are averaged by DDP, the
validation confusion matrix is summed across processes, and only rank 0 writes files or logs.

The rooms a run passes through: :mod:`~cityseg.engine.build` makes the loaders, model, loss,
optimiser and :class:`~cityseg.engine.build.StepSettings`; :mod:`~cityseg.engine.resume` saves every
epoch what ``--resume`` continues from (and restores it); :mod:`~cityseg.engine.runlog` keeps the
run folder (its lock, ``metrics.jsonl``, TensorBoard, the stop on Ctrl-C or ``kill``); at the end
:func:`cityseg.engine.evaluate.score_best` scores the best checkpoint as its ``eval`` section infers.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from cityseg import logs, metrics
from cityseg.config import Config
from cityseg.data.transforms import crop_at, set_crop
from cityseg.datasets import DatasetSpec
from cityseg.device import resolve_device
from cityseg.engine import distributed as D
from cityseg.engine.build import (
    StepSettings,
    build_training,
    check_names,
    seed_everything,
    setup_torch,
    steps_per_epoch,
)
from cityseg.engine.resume import Resumable, RunState, restore, save_state
from cityseg.engine.runlog import (
    Progress,
    RunLog,
    StopSignals,
    describe_budget,
    describe_run,
    hold_run_dir,
    nan_to_zero,
    prepare_run_dir,
)
from cityseg.engine.schedule import Budget, LRSchedule, build_schedule
from cityseg.errors import CitysegError
from cityseg.metrics.evaluator import Evaluator
from cityseg.models import set_frozen_bn_eval


class NonFiniteLoss(CitysegError):
    """The loss became NaN or infinite; training stops, the last good checkpoint is kept."""


Frame = tuple[str, torch.Tensor, torch.Tensor, torch.Tensor]  # name, image, target, prediction


@dataclass
class Loop:
    """What every epoch of one run shares besides the model, its optimiser and the data."""

    state: RunState  # the counters, advanced by every optimiser step
    log: RunLog
    budget: Budget  # the run ends when its steps or minutes are used up
    steps: int  # optimiser steps per epoch
    stop: StopSignals = field(default_factory=StopSignals)


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
            that is more than one pass (:func:`~cityseg.engine.evaluate.score_best`); ``cityseg
            sweep``'s trials skip it.

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
    out = Path(out_dir)
    try:
        with hold_run_dir(out), StopSignals() as stop:
            prepare_run_dir(out, resume=resume, force=force, main=D.is_main_process())
            D.barrier()
            return _train(cfg, out, dev, resume, max_steps_per_epoch, on_validation, stop, final_score)
    finally:
        D.cleanup()


def _train(
    cfg: Config,
    out: Path,
    dev: torch.device,
    resume: bool,
    max_steps: int | None,
    on_validation: Callable[[int, dict], None] | None,
    stop: StopSignals,
    final_score: bool,
) -> dict[str, Any]:
    setup_torch(cfg, dev)
    seed_everything(cfg.train.seed + D.get_rank())
    run = build_training(cfg, dev)
    cfg, spec, root, generator = run.cfg, run.spec, run.root, run.generator
    train_loader, val_loader = run.train_loader, run.val_loader
    model, bare_model, criterion, optimizer = run.model, run.bare_model, run.criterion, run.optimizer
    step_settings = run.step_settings
    steps = steps_per_epoch(cfg, train_loader, step_settings, root, max_steps)
    total = min(cfg.train.epochs * steps, cfg.train.max_steps or cfg.train.epochs * steps)
    schedule = build_schedule(optimizer, cfg.sched, total_steps=total)
    saved = Resumable(bare_model, optimizer, schedule, step_settings.scaler, generator)
    state, last = RunState(), out / "checkpoints" / "last.pt"
    if resume and last.is_file():
        state = restore(last, cfg, saved)
    budget = Budget(total, cfg.train.max_minutes, elapsed=state.elapsed)
    log = RunLog(out, cfg, D.is_main_process(), resume_epoch=state.epoch if resume else None, resume_step=state.step)
    loop = Loop(state, log, budget, steps, stop)
    log.info(describe_run(cfg, root, dev, step_settings, (train_loader, val_loader), steps, state, resume))
    panel: tuple[int, list[Frame]] | None = None
    try:
        stop.defer()
        for epoch in range(state.epoch + 1, cfg.train.epochs + 1):
            started = time.perf_counter()
            if isinstance(train_loader.sampler, DistributedSampler):
                train_loader.sampler.set_epoch(epoch)
            crop = crop_at(cfg.data, D.mean_over_processes(budget.fraction(state.step)))
            if set_crop(train_loader.dataset.transform, crop):
                log.info(f"epoch {epoch}: training crops now {crop[1]}x{crop[0]} (data.crop_stages)")
            bar = log.progress(f"epoch {epoch}/{cfg.train.epochs}", steps)
            train_loss = train_one_epoch(model, criterion, optimizer, schedule, train_loader, step_settings, bar, loop)
            record: dict[str, Any] = {"epoch": epoch, "train_loss": train_loss}
            improved, done = False, D.mean_over_processes(budget.fraction(state.step)) >= 1.0
            if epoch % cfg.train.val_every == 0 or epoch == cfg.train.epochs or done:
                bar = log.progress("  val", len(val_loader))
                scores, frames = validate(model, criterion, val_loader, step_settings, cfg, spec, bar, stop)
                schedule.epoch_end(scores["val_loss"])
                improved = state.update_best(scores["val_miou"], epoch)
                panel = (epoch, frames) if improved or panel is None else panel
                record.update(scores)
            state.epoch, state.elapsed = epoch, budget.elapsed()
            record.update(step=state.step, lr=schedule.lrs()[0], time=round(time.perf_counter() - started, 3))
            log.epoch(record)  # before the checkpoint: a kill in between re-runs this epoch, cutting the line
            save_state(out, cfg, spec, saved, state, record, best=improved)
            if on_validation is not None and "val_miou" in record:
                on_validation(epoch, record)
            if cfg.train.early_stop is not None and state.stale >= cfg.train.early_stop:
                log.info(f"early stop: no better val mIoU in {state.stale} validations")
                break
            if done and epoch < cfg.train.epochs:
                log.info(f"budget used up in epoch {epoch}: {describe_budget(cfg, state)}")
                break
    except KeyboardInterrupt:
        held = f"{last} holds epoch {state.epoch}" if last.is_file() else "no epoch was finished"
        log.info(f"\ninterrupted: {held}; continue with --resume --out {out}")
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
            log.panels(panel[1], epoch=panel[0], spec=spec)
        summary = log.finish(state)
        if final_score:
            # imported here: the checkpoint scorer pulls in cityseg.inference, which training needs no sooner
            from cityseg.engine.evaluate import score_best

            summary.update(score_best(cfg, out, root, dev, log))
        return summary
    finally:
        log.close_logfile()


def train_one_epoch(
    model: nn.Module,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: LRSchedule,
    loader: DataLoader,
    step_settings: StepSettings,
    progress: Progress,
    loop: Loop,
) -> float:
    """``loop.steps`` optimiser steps of ``step_settings.accum`` micro-batches each, fewer when
    ``loop.budget`` runs out first; returns the mean loss. A stop asked for through ``loop.stop``
    is raised after a step."""
    state = loop.state
    model.train()
    set_frozen_bn_eval(model)
    total, count, seen, started = 0.0, 0, 0, time.perf_counter()
    for i, batch in enumerate(itertools.islice(loader, loop.steps * step_settings.accum)):
        images, targets = step_settings.to_device(batch["image"], batch["mask"])
        last_micro = (i + 1) % step_settings.accum == 0
        with maybe_no_sync(model, sync=last_micro), step_settings.autocast():
            loss = compute_loss(criterion, model(images), targets, step_settings.aux_weight)
        value = D.global_mean(loss.detach())  # also tells every process about a NaN on any one
        if not math.isfinite(value):
            raise NonFiniteLoss(f"loss is {value} at epoch {state.epoch + 1}, step {state.step + 1}")
        backward(loss / step_settings.accum, step_settings)
        total, count, seen = total + value, count + 1, seen + images.shape[0] * D.get_world_size()
        if last_micro:
            optimizer_step(model, optimizer, step_settings)
            state.step += 1
            fraction = D.mean_over_processes(loop.budget.fraction(state.step))
            schedule.step(fraction)
            lr = schedule.lrs()[0]
            progress.update(loss=total / count, lr=lr, speed=seen / (time.perf_counter() - started))
            loop.log.scalars(state.step, {"train/loss": value, "train/lr": lr})
            loop.stop.check()
            if fraction >= 1.0:
                break
    progress.close()
    return total / max(count, 1)


@torch.no_grad()
def validate(
    model: nn.Module,
    criterion: nn.Module,
    loader: DataLoader,
    step_settings: StepSettings,
    cfg: Config,
    spec: DatasetSpec,
    progress: Progress,
    stop: StopSignals | None = None,
) -> tuple[dict[str, Any], list[Frame]]:
    """Validation loss and scores on whole images; returns (scores, the first frames for panels).

    ``spec`` is the run's class table (``cfg``'s dataset). Logits are upsampled to the label's size
    before the loss and the argmax, so the numbers are those ``cityseg evaluate`` gives for the same
    images and labels. The loss is the mean over batches weighted by their size; the scores come
    from one confusion matrix summed over every process.
    """
    model.eval()
    evaluator = Evaluator(spec.num_classes, step_settings.device, boundary_tolerance=cfg.eval.boundary_tolerance,
                          table=metrics.table_for(spec))
    loss_sum = torch.zeros(2, dtype=torch.float64, device=step_settings.device)  # (sum of loss x batch size, images)
    frames: list[Frame] = []
    for batch in loader:
        images, targets = step_settings.to_device(batch["image"], batch["mask"])
        with step_settings.autocast():
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
    + backward at 8x19x256x256: 125 ms channels_last, 78 ms contiguous, copy included). Their
    gradient goes back to the model channels_last again (:class:`ContiguousForLoss`).
    """
    loss = criterion(ContiguousForLoss.apply(outputs["out"].float()), targets)
    if "aux" in outputs:
        loss = loss + aux_weight * criterion(ContiguousForLoss.apply(outputs["aux"].float()), targets)
    return loss


class ContiguousForLoss(torch.autograd.Function):
    """``x.contiguous()`` whose backward returns the gradient in ``x``'s own layout (channels_last).

    Plain ``contiguous()`` hands a channels_last model a contiguous gradient, and the upsampling
    at the model's end then runs its backward on mixed layouts, which is slower on the CPU: the
    backward of the seed's loss and FPN-EfficientNet-Lite0 at batch 8, 192x192, bf16, 2 cores,
    196 -> 187 ms (ad hoc, interleaved medians of 28; two shorter runs gave 4 and 15 ms less).
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.channels_last = x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
        return x.contiguous()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous(memory_format=torch.channels_last) if ctx.channels_last else grad


def backward(loss: torch.Tensor, step_settings: StepSettings) -> None:
    """Backpropagate ``loss`` (scaled first under fp16)."""
    if step_settings.scaler is not None:
        step_settings.scaler.scale(loss).backward()
    else:
        loss.backward()


def optimizer_step(model: nn.Module, optimizer: torch.optim.Optimizer, step_settings: StepSettings) -> None:
    """Unscale (fp16), clip, step, zero the gradients."""
    if step_settings.scaler is not None:
        step_settings.scaler.unscale_(optimizer)
    if step_settings.grad_clip is not None:
        nn.utils.clip_grad_norm_(model.parameters(), step_settings.grad_clip)
    if step_settings.scaler is not None:
        step_settings.scaler.step(optimizer)
        step_settings.scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def maybe_no_sync(model: nn.Module, sync: bool) -> contextlib.AbstractContextManager:
    """Skip DDP's gradient all-reduce on micro-batches before the last of an accumulation."""
    if sync or not isinstance(model, nn.parallel.DistributedDataParallel):
        return contextlib.nullcontext()
    return model.no_sync()
