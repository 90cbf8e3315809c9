"""Where a training step of a recipe goes: data, forward, loss, backward, optimiser, as ``cityseg train`` runs it.

Usage: python benchmarks/bench_train_phases.py --data data/pairs [--config pairs_imagenet]
       [--set SECTION.KEY=VALUE ...] [--steps 60] [--rounds 3] [--warmup 5]
       (offline, pairs_imagenet: --set model.pretrained=../shared/data/imagenet-weights/efficientnet-lite0-57934424.pth)

Builds the loaders, model, loss, optimiser and precision policy with the same ``cityseg.engine``
functions ``cityseg train`` calls (``setup_torch``: the config's threads and deterministic mode;
frames cached, autocast, channels_last, frozen stages), then times ``--steps`` optimiser steps
after ``--warmup`` (each of ``train.batch_size`` images, in micro-batches where the config
accumulates), each split into:

* ``data``: the next batch from the training loader (augmentation; in this process when
  ``data.workers`` is 0, as the CPU recipes run it) and its move to the device's layout;
* ``forward``: the model under the step's autocast;
* ``loss``: forward and backward of the loop's ``compute_loss`` alone, down to the gradient of the
  model's outputs (``torch.autograd.grad``);
* ``backward``: the model's backward from the outputs' gradient;
* ``optimizer``: the optimiser step and zeroing the gradients.

The split backward computes the same gradients as the loop's single ``loss.backward()``. The same
steps are timed a second time with torch's NaN fill of new tensors on (its default under
deterministic algorithms, which ``setup_torch`` turns off), in alternating blocks of
``--steps / --rounds`` steps so that drifts in the host's speed hit both columns alike. Medians per
phase, their share of the step, and the load average are printed.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import time

import torch

from cityseg.config import load_config
from cityseg.engine.build import build_training, seed_everything, setup_torch
from cityseg.engine.train import compute_loss, optimizer_step
from cityseg.models import set_frozen_bn_eval

PHASES = ("data", "forward", "loss", "backward", "optimizer")


def timed_step(model, criterion, optimizer, settings, batches) -> dict[str, float]:
    """One optimiser step as ``train_one_epoch`` takes it (``settings.accum`` micro-batches, then
    ``optimizer_step``: clipping, the fp16 scaler); the wall seconds of each of its ``PHASES``."""
    spent = dict.fromkeys(PHASES, 0.0)
    for _ in range(settings.accum):
        t0 = time.perf_counter()
        batch = next(batches)
        images, targets = settings.to_device(batch["image"], batch["mask"])
        t1 = time.perf_counter()
        with settings.autocast():
            outputs = model(images)
            t2 = time.perf_counter()
            loss = compute_loss(criterion, outputs, targets, settings.aux_weight) / settings.accum
        if settings.scaler is not None:
            loss = settings.scaler.scale(loss)
        heads = list(outputs.values())
        # the loss's backward alone, down to the model's outputs (in whatever layout it makes them);
        # it frees only the loss's part of the graph, the model's part is run next
        grads = torch.autograd.grad(loss, heads)
        t3 = time.perf_counter()
        torch.autograd.backward(heads, grads)
        t4 = time.perf_counter()
        for phase, dt in zip(PHASES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            spent[phase] += dt
    t5 = time.perf_counter()
    optimizer_step(model, optimizer, settings)
    spent["optimizer"] = time.perf_counter() - t5
    return spent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a prepared folder (the recipe's --data)")
    parser.add_argument("--config", default="pairs_imagenet")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3, help="blocks of steps of each column, alternated")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, [f"data.root={args.data}", *args.set])
    dev = torch.device("cpu")
    setup_torch(cfg, dev)
    seed_everything(cfg.train.seed)
    run = build_training(cfg, dev)
    cfg, model, criterion, optimizer, settings = run.cfg, run.model, run.criterion, run.optimizer, run.step_settings
    switched = run.float32_layers
    model.train()
    set_frozen_bn_eval(model)
    batches = itertools.chain.from_iterable(itertools.repeat(run.train_loader))  # epoch after epoch
    for _ in range(args.warmup):
        timed_step(model, criterion, optimizer, settings, batches)
    # blocks of steps, alternating torch's NaN fill of new tensors (its default under deterministic
    # algorithms) with cityseg's setting (off), so that drifts in the host's speed hit both alike
    ours = torch.utils.deterministic.fill_uninitialized_memory
    times: dict[bool, dict[str, list[float]]] = {fill: {p: [] for p in PHASES} for fill in (True, ours)}
    per_block = max(1, args.steps // args.rounds)
    try:
        for block in range(2 * args.rounds):
            fill = (True, ours)[block % 2]
            torch.utils.deterministic.fill_uninitialized_memory = fill
            for _ in range(per_block):
                for phase, dt in timed_step(model, criterion, optimizer, settings, batches).items():
                    times[fill][phase].append(dt)
    finally:
        torch.utils.deterministic.fill_uninitialized_memory = ours
    medians = {fill: {p: statistics.median(v) for p, v in t.items()} for fill, t in times.items()}
    batch = cfg.train.batch_size
    print(f"{cfg.model.name}, batch {batch}, crops {cfg.data.crop_size}, amp {settings.amp_name} (train.amp {cfg.train.amp}), "
          f"{torch.get_num_threads()} threads, deterministic {cfg.train.deterministic}, "
          f"{switched} depthwise convolutions in float32, loss {criterion.extra_repr()}, "
          f"{per_block * args.rounds} steps a column; load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    if not cfg.train.deterministic:
        print("(train.deterministic is false: the NaN fill acts only under deterministic algorithms, so both columns "
              "time the same thing)")
    print("| phase | ms (median), as cityseg train runs it | share | ms with torch's NaN fill of new tensors |")
    print("|---|---|---|---|")
    total = {fill: sum(m.values()) for fill, m in medians.items()}
    for phase in PHASES:
        ms, filled = medians[ours][phase], medians[True][phase]
        print(f"| {phase} | {ms * 1000:.1f} | {ms / total[ours]:.0%} | {filled * 1000:.1f} |")
    print(f"| **step** (sum of medians) | **{total[ours] * 1000:.1f}** ({batch / total[ours]:.1f} images/s) | "
          f"| {total[True] * 1000:.1f} ({batch / total[True]:.1f} images/s): x{total[True] / total[ours]:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
