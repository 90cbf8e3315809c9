"""CPU cost of one training step of the models a CPU recipe can choose, as the recipes run them.

Usage: python benchmarks/bench_train_step.py [--size 192] [--batch 8] [--threads 2] [--repeats 5]
       [--models fpn_efficientnet_lite0 ...]

One step = forward under bf16 autocast (the pairs recipes' ``train.amp``), the cross-entropy, the
backward and an AdamW step, channels_last, with the stages the recipe freezes frozen
(``stem``, ``layer1`` for ImageNet backbones; nothing for the from-scratch ``cityseg_small``) and
their BatchNorm in eval mode, and the depthwise convolutions in float32 as ``cityseg train`` runs them
under bf16 autocast on the CPU (``engine.build.apply_precision_policy``); models that have depthwise
convolutions are timed a second time with them in bf16 too (the column "bf16 depthwise"), so the
policy's gain is measured in the same run. Each model runs ``--repeats`` timed steps after two warm-up steps
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
from cityseg.models.parts import float32_depthwise

REFERENCE = "cityseg_small"
DEFAULT = ["fpn_efficientnet_lite0", "lraspp_efficientnet_lite0", "deeplabv3_efficientnet_lite0",
           "fpn_efficientnet_lite1", "fpn_efficientnet_lite2"]


def output_stride(name: str) -> int:
    return 32 if name.startswith(("fpn_", "cityseg_")) else 16


def time_steps(name: str, size: int, batch: int, repeats: int, depthwise_fp32: bool) -> tuple[int, int, list[float]]:
    """Parameter count, depthwise convolutions switched to float32, and the wall seconds of
    ``repeats`` training steps."""
    freeze = [] if name == REFERENCE else ["stem", "layer1"]
    torch.manual_seed(0)
    model = build_model(name, freeze=freeze, output_stride=output_stride(name)).train()
    set_frozen_bn_eval(model)
    switched = float32_depthwise(model) if depthwise_fp32 else 0
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
    return count_parameters(model), switched, times


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
    print("| model | parameters | ms / step (median) | images/s | x cityseg_small's time "
          "| bf16 depthwise: ms / step | speed-up of float32 depthwise |")
    print("|---|---|---|---|---|---|---|")
    ref = None
    for name in [REFERENCE, *args.models]:
        params, switched, times = time_steps(name, args.size, args.batch, args.repeats, depthwise_fp32=True)
        median = statistics.median(times)
        ref = ref or median
        row = f"| {name} | {params / 1e6:.2f}M | {median * 1000:.0f} | {args.batch / median:.1f} | {median / ref:.2f} |"
        if switched:
            bf16 = statistics.median(time_steps(name, args.size, args.batch, args.repeats, depthwise_fp32=False)[2])
            row += f" {bf16 * 1000:.0f} | {bf16 / median:.2f}x |"
        else:
            row += " (none) | |"
        print(row, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
