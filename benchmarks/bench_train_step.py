"""CPU cost of one training step of the models a CPU recipe can choose, as the recipes run them.

Usage: python benchmarks/bench_train_step.py [--size 192] [--batch 8] [--threads 2] [--repeats 5]
       [--models fpn_efficientnet_lite0 ...]

One step = forward under bf16 autocast (the pairs recipes' ``train.amp``), the cross-entropy, the
backward and an AdamW step, channels_last, with the stages the recipe freezes frozen
(``stem``, ``layer1`` for ImageNet backbones; nothing for the from-scratch ``cityseg_small``) and
their BatchNorm in eval mode. Each model runs ``--repeats`` timed steps after two warm-up steps
(oneDNN builds its kernels on the first calls); the median wall time is printed with images per
second and the ratio to ``cityseg_small`` (the from-scratch recipe's model), timed in the same run.
Output strides are the ones each head is built with in the recipes: 32 for the FPN decoder
(it restores resolution itself), 16 for the ASPP and LR-ASPP heads (as torchvision's mobile models).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F

from cityseg.models import build_model, count_parameters, set_frozen_bn_eval

REFERENCE = "cityseg_small"
DEFAULT = ["fpn_efficientnet_lite0", "lraspp_efficientnet_lite0", "deeplabv3_efficientnet_lite0",
           "fpn_efficientnet_lite1", "fpn_efficientnet_lite2"]


def output_stride(name: str) -> int:
    return 32 if name.startswith(("fpn_", "cityseg_")) else 16


def time_steps(name: str, size: int, batch: int, repeats: int) -> tuple[int, list[float]]:
    """Parameter count and the wall seconds of ``repeats`` training steps."""
    freeze = [] if name == REFERENCE else ["stem", "layer1"]
    model = build_model(name, freeze=freeze, output_stride=output_stride(name)).train()
    set_frozen_bn_eval(model)
    model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], 1e-3)
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 19, (batch, size, size))
    times = []
    for i in range(repeats + 2):
        start = time.perf_counter()
        with torch.autocast("cpu", torch.bfloat16):
            out = model(x)["out"]
        loss = F.cross_entropy(out.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if i >= 2:
            times.append(time.perf_counter() - start)
    return count_parameters(model), times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=192, help="square crop side (the recipes: 192)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--models", nargs="+", default=DEFAULT)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"{args.batch}x3x{args.size}x{args.size}, bf16 autocast, {args.threads} threads, "
          f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print("| model | parameters | ms / step (median) | images/s | x cityseg_small's time |")
    print("|---|---|---|---|---|")
    ref = None
    for name in [REFERENCE, *args.models]:
        params, times = time_steps(name, args.size, args.batch, args.repeats)
        median = statistics.median(times)
        ref = ref or median
        print(f"| {name} | {params / 1e6:.2f}M | {median * 1000:.0f} | {args.batch / median:.1f} | {median / ref:.2f} |",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
