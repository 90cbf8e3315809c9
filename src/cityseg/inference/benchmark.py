"""Inference speed: the baseline and every cityseg path, on the same input, in one run.

The baseline is what a user of torchvision would write: the model in eval mode, eager fp32,
NCHW, under ``torch.inference_mode()``. Each path (:data:`cityseg.inference.runtime.PATHS`)
is timed on the same input; runs are interleaved round by round (baseline, path A, path B, ...,
baseline, ...) so that a machine whose load changes during the run slows every path alike, and
the speed-up of a path is the median over rounds of baseline time / path time in that round.
Agreement is the fraction of pixels whose argmax equals the baseline's.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cityseg.data.synthetic import render_frame
from cityseg.device import cpu_flags, cpuinfo_fields
from cityseg.errors import CitysegError
from cityseg.inference.paths import COMPILE_PAYS_FROM, available_paths, default_path
from cityseg.inference.runtime import BASELINE, NEEDS_CALIBRATION, PATHS, build_runner, runner_input
from cityseg.processes import usable_cores
from cityseg.utils import read_image

log = logging.getLogger(__name__)


@dataclass
class PathResult:
    """Timings of one path: median ms, speed-up over the baseline, argmax agreement with it."""

    ms: float
    speedup: float
    agreement: float
    setup_s: float  # building the path: export, compilation (on the first call) and warm-up
    times_ms: list[float] = field(default_factory=list)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], torch.Tensor], device: torch.device) -> tuple[float, torch.Tensor]:
    _sync(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    return (time.perf_counter() - start) * 1000, out


def model_gflop(model: torch.nn.Module, x: torch.Tensor) -> float:
    """Floating-point operations of one forward pass on ``x``'s shape, in GFLOP (a multiply-add is 2).

    Counted by ``torch.utils.flop_counter.FlopCounterMode`` on a copy of the model on the meta
    device, so nothing is computed; it counts matrix products and convolutions, not the
    element-wise work (BatchNorm, ReLU, interpolation), which is a few percent.
    """
    import copy

    from torch.utils.flop_counter import FlopCounterMode

    meta = copy.deepcopy(model).to("meta")
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        meta(torch.empty(x.shape, device="meta"))
    return counter.get_total_flops() / 1e9


def cpu_peak() -> dict[str, Any]:
    """Theoretical peak of this CPU: cores x clock x FLOPs per cycle, from lscpu-style facts.

    FLOPs per cycle per core: 2 FMA pipes x vector lanes x 2. AVX-512 on AMD (Zen 4) runs on
    256-bit pipes, so it counts as 8 fp32 lanes; on Intel as 16. AVX512-BF16 doubles the fp32
    rate (a VDPBF16PS does two multiply-adds per fp32 lane); AMX is not modelled. The clock is
    /proc/cpuinfo's ``cpu MHz`` (under a hypervisor the base clock: a boost clock raises the peak).
    """
    flags = cpu_flags()
    info = cpuinfo_fields()
    amd = "AuthenticAMD" in info.get("vendor_id", "")
    if "avx512f" in flags:
        lanes = 8 if amd else 16
    elif "avx2" in flags and "fma" in flags:
        lanes = 8
    else:
        lanes = 4
    fp32 = 2 * lanes * 2
    bf16 = 2 * fp32 if "avx512_bf16" in flags else fp32
    cores = usable_cores()
    ghz = float(info.get("cpu MHz", "nan")) / 1000
    return {"model": info.get("model name", "?"), "cores": cores, "ghz": ghz, "fp32_flop_per_cycle": fp32,
            "bf16_flop_per_cycle": bf16, "fp32_gflops": cores * ghz * fp32, "bf16_gflops": cores * ghz * bf16}


def floor(model: torch.nn.Module, x: torch.Tensor, device: torch.device) -> dict[str, Any]:
    """The model's arithmetic over the CPU's peak: no implementation can be faster (on the CPU)."""
    gflop = model_gflop(model, x)
    out: dict[str, Any] = {"gflop": gflop}
    if device.type == "cpu":
        peak = cpu_peak()
        out |= {"cpu": peak, "fp32_ms": gflop / peak["fp32_gflops"] * 1000, "bf16_ms": gflop / peak["bf16_gflops"] * 1000}
    return out


def benchmark_input(size: tuple[int, int], image: Path | None = None) -> torch.Tensor:
    """A (1, 3, H, W) uint8 RGB input of ``size`` (W, H): ``image`` resized, else a synthetic frame.

    A street scene rather than noise, so that agreement is measured on the kind of input the
    model is for (on noise a trained model's logits are near ties everywhere).
    """
    from PIL import Image

    w, h = size
    if image is not None:
        rgb = read_image(image, "RGB")
    else:
        rgb = render_frame(seed=0, split="val", index=0, size=(w, h))[0]
    if rgb.shape[:2] != (h, w):
        rgb = np.asarray(Image.fromarray(rgb).resize((w, h), Image.BILINEAR))
    return torch.from_numpy(np.array(rgb)).permute(2, 0, 1)[None]  # np.array: a writable copy


def run_benchmark(
    model: torch.nn.Module,
    x: torch.Tensor,
    device: torch.device,
    paths: Sequence[str] | None = None,
    repeats: int = 3,
    warmup: int = 1,
    progress: Callable[[str], None] | None = None,
    calibration: Sequence[torch.Tensor] | None = None,
    report: str | None = None,
) -> dict[str, Any]:
    """Time the baseline and ``paths`` (default: every path available on ``device``) on ``x``.

    Args:
        model: a cityseg model (eval mode, fp32, on the CPU); each path gets its own copy.
        x: (1, 3, H, W) uint8 RGB input (:func:`benchmark_input`); each path gets it in the space it
            takes (:func:`cityseg.inference.runtime.runner_input`): torch normalised, onnxruntime as pixels.
        device: ``cpu`` or ``cuda``.
        paths: names from :data:`~cityseg.inference.runtime.PATHS`; the baseline is always timed.
        repeats: timed rounds after ``warmup`` untimed calls per path.
        progress: called with a short status line after each round.
        calibration: uint8 RGB (1, 3, H, W) frames for the paths that need them (int8); without
            them those paths are left out of the default set.
        report: the path whose ``ms``/``agreement``/``speedup`` are reported at the top level
            (default: the steady-state default path, see below); it is timed.

    Returns:
        ``{"baseline_ms", "ms", "path", "agreement", "speedup", "paths": {name: PathResult as dict}, ...}``
        where ``ms``/``path``/``agreement``/``speedup`` are those of the path ``cityseg predict``
        uses by default on ``device`` for a long run of same-size frames (from
        :data:`~cityseg.inference.paths.COMPILE_PAYS_FROM` of one size; fewer run eager).

    Raises:
        CitysegError: an unknown path or one not available on ``device``.
    """
    available = available_paths(device)
    wanted = list(paths) if paths else [p for p in available if p != BASELINE
                                        and (calibration or p not in NEEDS_CALIBRATION)]
    for name in wanted:
        if name not in PATHS:
            raise CitysegError(f"unknown inference path {name!r}; valid: {', '.join(PATHS)}")
        if name not in available:
            raise CitysegError(f"path {name!r} is not available on {device.type} here; available: {', '.join(available)}")
    # the steady-state default (or the asked-for path): what is reported
    default = report or default_path(device, work=COMPILE_PAYS_FROM)
    names = [BASELINE] + [n for n in dict.fromkeys(wanted + [default]) if n != BASELINE]
    runners, inputs, setup_s, outputs = {}, {}, {}, {}
    for name in names:
        start = time.perf_counter()
        runners[name] = build_runner(name, model, device, calibration=calibration)
        inputs[name] = runner_input(runners[name], x)
        for _ in range(max(1, warmup)):  # compiled paths compile here
            outputs[name] = runners[name](inputs[name]).cpu()
        setup_s[name] = time.perf_counter() - start
        if progress:
            progress(f"{name}: ready in {setup_s[name]:.1f} s")
    times: dict[str, list[float]] = {n: [] for n in names}
    for round_ in range(repeats):
        for name in names:
            ms, _ = _timed(lambda: runners[name](inputs[name]), device)
            times[name].append(ms)
        if progress:
            progress(f"round {round_ + 1}/{repeats}: " + ", ".join(f"{n} {times[n][-1]:.0f} ms" for n in names))
    base_pred = outputs[BASELINE].argmax(1)
    results = {}
    for name in names:
        ratios = [b / t for b, t in zip(times[BASELINE], times[name], strict=True)]
        agreement = float((outputs[name].argmax(1) == base_pred).double().mean())
        results[name] = PathResult(
            ms=statistics.median(times[name]), speedup=statistics.median(ratios), agreement=agreement,
            setup_s=setup_s[name], times_ms=[round(t, 1) for t in times[name]],
        )
    return {
        "baseline_ms": results[BASELINE].ms,
        "ms": results[default].ms,
        "path": default,
        "agreement": results[default].agreement,
        "speedup": results[default].speedup,
        "paths": {name: asdict(r) for name, r in results.items()},
        "size": f"{x.shape[-1]}x{x.shape[-2]}",
        "device": str(device),
        "threads": torch.get_num_threads(),
        "repeats": repeats,
        "floor": floor(model, x, device),
    }


def format_results(result: dict[str, Any]) -> str:
    """A table: path, median ms, speed-up, agreement, setup seconds; the default path marked."""
    lines = [f"{'path':16s} {'ms':>10s} {'speed-up':>9s} {'agreement':>10s} {'setup s':>8s}"]
    for name, r in result["paths"].items():
        many = (" <- --precision int8" if name == "int8" else
                f" <- cityseg predict default from ~{COMPILE_PAYS_FROM} frames of one size")
        mark = many if name == result["path"] else ""
        lines.append(
            f"{name:16s} {r['ms']:10.0f} {r['speedup']:8.2f}x {r['agreement']:10.4%} {r['setup_s']:8.1f}{mark}"
        )
    fl = result.get("floor", {})
    if "fp32_ms" in fl:
        cpu = fl["cpu"]
        lines.append(
            f"floor: {fl['gflop']:.0f} GFLOP / peak ({cpu['cores']} cores x {cpu['ghz']:.2f} GHz x "
            f"{cpu['fp32_flop_per_cycle']} fp32 | {cpu['bf16_flop_per_cycle']} bf16 FLOP/cycle) = "
            f"{fl['fp32_ms']:.0f} ms fp32, {fl['bf16_ms']:.0f} ms bf16"
        )
    return "\n".join(lines)
