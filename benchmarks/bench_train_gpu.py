"""Training throughput of the seed's model on one GPU: plain fp32 vs this engine's defaults.

The seed's model (DeepLabV3-ResNet50, output stride 8, stem + layer1 frozen, Focal x1.5 + Dice
x1.0) on 1024x512 (WxH) crops, batch ``--batch`` per step, AdamW. Three settings, each through
the engine's own step functions (``cityseg.engine.train``):

* ``fp32``: float32, contiguous tensors, no compile -- how torchvision's segmentation
  reference script trains (its ``--amp`` flag off, PyTorch's default TF32 settings).
* ``engine``: the engine's defaults for a GPU -- autocast bf16 (fp16 + GradScaler where bf16
  is missing), channels_last, TF32 matmuls, cudnn.benchmark.
* ``engine+compile`` (with ``--compile``): the same plus ``torch.compile``.

Inputs are random tensors already on the GPU, so the figure is the model step alone (the data
pipeline has its own benchmark). Each setting runs ``--warmup`` steps, then ``--repeats`` timed
runs of ``--steps`` steps; the median images/s is reported with the ratio to ``fp32``.

    python benchmarks/bench_train_gpu.py [--batch 8] [--steps 20] [--repeats 5] [--compile] [--record]

Without a GPU it says so and exits with status 1.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import torch

from cityseg.config import load_config
from cityseg.engine.build import StepSettings, build_criterion, build_optimizer
from cityseg.engine.train import backward, compute_loss, optimizer_step
from cityseg.labels import NUM_CLASSES
from cityseg.models import build_model, set_frozen_bn_eval

CROP_W, CROP_H = 1024, 512


def make_step_settings(setting: str, device: torch.device) -> StepSettings:
    amp = None
    if setting != "fp32":
        amp = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda") if amp is torch.float16 else None
    return StepSettings(device, amp, scaler, accum=1, grad_clip=None, channels_last=setting != "fp32", aux_weight=0.4)


def run_setting(setting: str, args: argparse.Namespace, device: torch.device) -> list[float]:
    """Images/s of each timed repeat for one setting."""
    torch.cuda.empty_cache()  # the previous setting's model is gone; hand its cached blocks back
    fast = setting != "fp32"
    torch.backends.cudnn.benchmark = fast
    torch.backends.cuda.matmul.allow_tf32 = fast
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "seed.yaml")
    torch.manual_seed(0)
    model = build_model("deeplabv3_resnet50", pretrained="none", freeze=cfg.model.freeze, output_stride=8)
    model = model.to(device, memory_format=torch.channels_last if fast else torch.contiguous_format)
    criterion = build_criterion(cfg, cfg.spec())
    optimizer = build_optimizer(cfg, model)
    step_settings = make_step_settings(setting, device)
    step_model = torch.compile(model) if setting == "engine+compile" else model
    images = torch.randn(args.batch, 3, CROP_H, CROP_W, device=device)
    targets = torch.randint(0, NUM_CLASSES, (args.batch, CROP_H, CROP_W), device=device)
    images, targets = step_settings.to_device(images, targets)
    model.train()
    set_frozen_bn_eval(model)

    def one_step() -> None:
        with step_settings.autocast():
            loss = compute_loss(criterion, step_model(images), targets, step_settings.aux_weight)
        backward(loss, step_settings)
        optimizer_step(model, optimizer, step_settings)

    for _ in range(args.warmup):
        one_step()
    torch.cuda.synchronize(device)
    speeds = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        for _ in range(args.steps):
            one_step()
        torch.cuda.synchronize(device)
        speeds.append(args.steps * args.batch / (time.perf_counter() - start))
    return speeds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--compile", action="store_true", help="also time the engine with torch.compile")
    parser.add_argument("--record", action="store_true", help="append the results to BENCHMARKS.md")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("bench_train_gpu: no CUDA GPU is available here; run it on a machine with one", file=sys.stderr)
        return 1
    device = torch.device("cuda", 0)
    settings = ["fp32", "engine"] + (["engine+compile"] if args.compile else [])
    results = {s: statistics.median(run_setting(s, args, device)) for s in settings}
    gpu = torch.cuda.get_device_name(device)
    lines = [
        f"## Training throughput, seed model, 1024x512 crops ({date.today().isoformat()})",
        "",
        f"`python benchmarks/bench_train_gpu.py --batch {args.batch} --steps {args.steps} --repeats {args.repeats}"
        f"{' --compile' if args.compile else ''}` on {gpu} ({platform.machine()}, torch {torch.__version__}); "
        "DeepLabV3-ResNet50 OS8, Focal+Dice, AdamW, model step only (inputs on the GPU), median of repeats.",
        "",
        "| setting | images/s | vs fp32 |",
        "| --- | ---: | ---: |",
    ]
    lines += [f"| {s} | {v:.1f} | {v / results['fp32']:.2f}x |" for s, v in results.items()]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.record:
        path = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"
        with path.open("a") as f:
            f.write("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
