"""CPU training-step cost of the small models: forward + backward of a 256x128 batch of 8.

Usage: python benchmarks/bench_models.py [--threads 2] [--batch 8] [--size 256x128] [--repeats 5]

Per model: parameter count, and the median wall and CPU (process) milliseconds of one
forward + backward pass in train mode (no optimiser step) after warm-up passes (oneDNN builds
its kernels on the first call). The seed's ``deeplabv3_resnet50`` is timed in the same run as
the reference the ratios are taken against (fewer repeats: one of its passes takes seconds).
On a shared machine the wall time is inflated by other jobs; with ``--threads 1`` the CPU time
is not (with more threads it also counts OpenMP spin-waiting).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from cityseg.models import build_model, count_parameters
from cityseg.utils import parse_size

SMALL = ["cityseg_tiny", "lraspp_mobilenet_v3_large", "deeplabv3_mobilenet_v3_large"]
REFERENCE = "deeplabv3_resnet50"


def time_step(
    name: str, batch: int, size: tuple[int, int], repeats: int, warmup: int, channels_last: bool
) -> tuple[int, list[float], list[float]]:
    """Parameter count, and wall and CPU milliseconds of ``repeats`` forward+backward passes."""
    model = build_model(name, freeze=[]).train()
    w, h = size
    x = torch.randn(batch, 3, h, w)
    if channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    wall, cpu = [], []
    for i in range(repeats + warmup):
        w0, c0 = time.perf_counter(), time.process_time()
        model(x)["out"].float().mean().backward()
        if i >= warmup:
            wall.append((time.perf_counter() - w0) * 1000)
            cpu.append((time.process_time() - c0) * 1000)
        model.zero_grad(set_to_none=True)
    return count_parameters(model), wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", default="256x128", help="WIDTHxHEIGHT")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--reference-repeats", type=int, default=2, help="repeats of the slow reference model")
    parser.add_argument("--channels-last", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    size = parse_size(args.size)
    results = {}
    for name in [REFERENCE, *SMALL]:
        repeats, warmup = (args.reference_repeats, 1) if name == REFERENCE else (args.repeats, 2)
        results[name] = time_step(name, args.batch, size, repeats, warmup, args.channels_last)
    ref_wall, ref_cpu = (statistics.median(t) for t in results[REFERENCE][1:])
    print(f"threads={args.threads} batch={args.batch} size={args.size} channels_last={args.channels_last}")
    print("| model | params | wall ms (median) | CPU ms (median) | r50 / model (wall) | r50 / model (CPU) |")
    print("|---|---|---|---|---|---|")
    for name, (params, wall, cpu) in results.items():
        mw, mc = statistics.median(wall), statistics.median(cpu)
        print(f"| {name} | {params:,} | {mw:.0f} | {mc:.0f} | {ref_wall / mw:.1f}x | {ref_cpu / mc:.1f}x |")


if __name__ == "__main__":
    main()
