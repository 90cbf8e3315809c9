"""Which inference path runs a model: the choice every entry point asks :func:`choose_path` for.

A path (:data:`cityseg.inference.runtime.PATHS`) names one way to run a model; :func:`default_path`
is the one ``cityseg predict`` uses, chosen by the work in front of it (eager for a few frames,
compiled from :data:`COMPILE_PAYS_FROM` forward passes of one input shape), by what the hardware
computes natively (:func:`cityseg.device.native_bf16`, :func:`cityseg.device.cpu_has_vnni`) and by
the measurements in BENCHMARKS.md ("CPU inference"). ``--precision`` and ``--runtime``
(:data:`~cityseg.inference.options.PRECISIONS`, :data:`~cityseg.inference.options.RUNTIMES`) narrow
the choice (:func:`select_path`); :func:`path_reason` says in a few words why a path was chosen.
"""

from __future__ import annotations

import logging
import os
import shutil

import torch

from cityseg.device import VNNI_FLAGS, cpu_has_vnni, native_bf16, no_bf16_reason
from cityseg.errors import CitysegError
from cityseg.inference.options import PRECISIONS, RUNTIMES
from cityseg.inference.runtime import BASELINE, PATHS
from cityseg.utils import require

log = logging.getLogger(__name__)

#: the precisions torch computes in (int8 runs through onnxruntime: :func:`int8_path`)
TORCH_PRECISIONS = tuple(p for p in PRECISIONS if p != "int8")


def resolve_precision(precision: str, device: torch.device) -> str:
    """Map ``auto|fp32|bf16`` to the precision actually used on ``device``: ``"fp32"`` or ``"bf16"``.

    ``auto`` is bf16 where the hardware computes it natively (CPUs with AVX512-BF16/AMX, CUDA GPUs
    with bf16 support) and fp32 elsewhere. Measured on trained checkpoints, bf16 keeps >= 99.5%
    argmax agreement with fp32 (BENCHMARKS.md, "CPU inference"); ``cityseg benchmark
    --checkpoint`` measures it for any other model.

    Raises:
        CitysegError: unknown precision, or bf16 asked for where it is not native.
    """
    if precision not in TORCH_PRECISIONS:
        raise CitysegError(f"precision {precision!r}; valid: {', '.join(TORCH_PRECISIONS)}")
    native = native_bf16(device)
    if precision == "bf16" and not native:
        raise CitysegError(f"--precision bf16: {no_bf16_reason(device)}; use --precision fp32 or auto")
    if precision == "auto":
        return "bf16" if native else "fp32"
    return precision


def _has_onnxruntime(device: torch.device) -> bool:
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    return device.type == "cpu" or "CUDAExecutionProvider" in ort.get_available_providers()


def _has_compiler() -> bool:
    # inductor's CPU backend builds C++ at run time; CUDA uses Triton
    return shutil.which(os.environ.get("CXX", "g++")) is not None or shutil.which("clang++") is not None


def no_vnni_message(fallback: str) -> str:
    """The one line that says int8 is not used on this CPU and which path runs instead."""
    return (f"--precision int8: this CPU has no VNNI ({', '.join(VNNI_FLAGS[:-1])} or {VNNI_FLAGS[-1]}): "
            f"int8 would be slower than fp32; running {fallback} instead")


def available_paths(device: torch.device) -> list[str]:
    """The paths that can run on ``device`` on this machine, baseline first."""
    bf16 = native_bf16(device)
    usable = {
        BASELINE: True,
        "channels_last": True,
        "bf16": bf16,
        "fp16": device.type == "cuda",
        "onnxruntime": _has_onnxruntime(device),
        "compile": device.type == "cuda" or _has_compiler(),
        "compile_bf16": bf16 and (device.type == "cuda" or _has_compiler()),
        "int8": device.type == "cpu" and _has_onnxruntime(device) and cpu_has_vnni(),
    }
    return [name for name in PATHS if usable[name]]


#: Forward passes of one input shape from which ``torch.compile`` is chosen by default: the smallest
#: n with compile time + n x compiled pass <= n x eager pass, rounded up to a multiple of 10. The line
#: below is written by ``benchmarks/bench_default_path.py --write``; its measurement, the rounding and
#: where the value errs: BENCHMARKS.md, "Default inference path by workload".
COMPILE_PAYS_FROM = 60  # measured by benchmarks/bench_default_path.py: 2026-12-07, 2-core Intel(R) Xeon(R) Processor, see BENCHMARKS.md


def select_path(device: torch.device, precision: str = "auto", runtime: str = "auto", work: int | None = None) -> str:
    """The inference path (a :data:`~cityseg.inference.runtime.PATHS` key) for a ``--precision`` and
    ``--runtime`` choice.

    ``runtime="auto"`` is :func:`default_path` for the resolved precision and ``work``. ``torch``
    and ``compile`` follow the resolved precision; ``onnxruntime`` runs fp32 only. ``precision="int8"``
    is :func:`int8_path`.

    Raises:
        CitysegError: unknown runtime or precision, bf16 where it is not native, bf16 with
            onnxruntime, or a runtime not available here.
    """
    if runtime not in RUNTIMES:
        raise CitysegError(f"runtime {runtime!r}; valid: {', '.join(RUNTIMES)}")
    if precision == "int8":
        return int8_path(device, runtime, work)
    resolved = resolve_precision(precision, device)
    if runtime == "auto":
        return default_path(device, precision, work)
    if runtime == "onnxruntime":
        if precision == "bf16":
            raise CitysegError("--runtime onnxruntime runs fp32 only; drop --precision bf16 or use --runtime torch")
        name = "onnxruntime"
    elif runtime == "compile":
        name = "compile_bf16" if resolved == "bf16" else "compile"
    else:
        name = "bf16" if resolved == "bf16" else "channels_last"
    if name not in available_paths(device):
        raise CitysegError(f"--runtime {runtime}: not available on {device.type} here (onnxruntime or a C++ compiler missing)")
    return name


def choose_path(
    device: torch.device, precision: str = "auto", runtime: str = "auto", work: int | None = None,
    shapes: int | None = None,
) -> tuple[str, str]:
    """How a model runs, the one answer every entry point asks for: ``(path, why)``, the
    :data:`~cityseg.inference.runtime.PATHS` key :func:`select_path` gives for ``precision``, ``runtime``
    and ``work`` (the largest number of forward passes sharing one input shape, None: unknown), and the
    few words of :func:`path_reason` that say why (``shapes``: how many input shapes the work has)."""
    path = select_path(device, precision, runtime, work)
    return path, path_reason(path, work, runtime, shapes)


def int8_device(device: str | torch.device) -> torch.device:
    """The CPU, for ``--precision int8`` with ``--device auto`` or ``cpu``; CitysegError for any other device."""
    name = device.type if isinstance(device, torch.device) else device
    if name not in ("auto", "cpu"):
        raise CitysegError(f"--precision int8 runs on the CPU only; use --device cpu, not {name}")
    return torch.device("cpu")


def int8_path(device: torch.device, runtime: str = "auto", work: int | None = None) -> str:
    """``"int8"`` (onnxruntime static int8 on the CPU) where the CPU has VNNI; elsewhere one warning
    (:func:`no_vnni_message`) and the path ``runtime`` gives in fp32/bf16 (:func:`select_path`).

    Raises:
        CitysegError: a device other than the CPU, a torch runtime, or onnxruntime/onnx missing.
    """
    int8_device(device)
    if runtime not in ("auto", "onnxruntime"):
        raise CitysegError(f"--precision int8 runs with onnxruntime; drop --runtime {runtime}")
    for module in ("onnxruntime", "onnx"):
        require(module, "onnx", "--precision int8")
    if not cpu_has_vnni():
        fallback = select_path(device, "auto", runtime, work)
        log.warning(no_vnni_message(fallback))
        return fallback
    return "int8"


def compile_pays(work: int | None) -> bool:
    """Whether ``work`` forward passes of one input shape are enough for ``torch.compile`` to pay
    (:data:`COMPILE_PAYS_FROM`); an unknown workload (None) is not."""
    return work is not None and work >= COMPILE_PAYS_FROM


def default_path(device: torch.device, precision: str = "auto", work: int | None = None) -> str:
    """The path ``cityseg predict`` and :class:`~cityseg.inference.predict.Predictor` use by default.

    Args:
        device: where the model runs.
        precision: ``auto|fp32|bf16`` (:func:`resolve_precision`).
        work: the largest number of forward passes that share one input shape (frames of one size
            times the passes per frame: scales x flips, or sliding windows); None when unknown.

    Chosen by the work in front of it (:data:`COMPILE_PAYS_FROM`, BENCHMARKS.md): compilation is
    paid once per input shape and pays back only over many passes of that shape, so a handful of
    frames (or an unknown workload) runs eager: bf16 autocast where the hardware has bf16
    natively, else fp32 channels_last. From :data:`COMPILE_PAYS_FROM` passes of one shape:
    ``torch.compile`` (inductor, frozen weights) in bf16 where native, else fp32, the fastest
    steady paths measured (BENCHMARKS.md, "CPU inference"). Without a C++ compiler
    (inductor needs one on the CPU) the large-work choice is eager bf16, or onnxruntime in fp32
    when installed, else eager channels_last.
    """
    bf16 = resolve_precision(precision, device) == "bf16"
    available = available_paths(device)
    if compile_pays(work):
        order = ["compile_bf16", "bf16"] if bf16 else ["compile", "onnxruntime", "channels_last"]
    else:
        order = ["bf16"] if bf16 else ["channels_last"]
    for name in order:
        if name in available:
            return name
    return BASELINE


def path_reason(name: str, work: int | None, runtime: str = "auto", shapes: int | None = None) -> str:
    """Why ``name`` was chosen, in a few words, for the ``cityseg predict`` status line.

    ``work``: as for :func:`default_path`; ``shapes``: how many input shapes the work has (None: unknown).
    E.g. ``"eager bf16: at most 2 forward passes per input shape, compiling pays from ~60"`` (the
    figure is :data:`COMPILE_PAYS_FROM`).
    """
    if name == "int8":
        return "--precision int8"
    if runtime != "auto":
        return f"--runtime {runtime}"
    kind = {"compile_bf16": "compiled bf16", "compile": "compiled fp32", "bf16": "eager bf16",
            "channels_last": "eager fp32", "onnxruntime": "onnxruntime fp32"}.get(name, name)
    pays = f"compiling pays from ~{COMPILE_PAYS_FROM}"
    if work is None:
        return f"{kind}: workload not known in advance, {pays} forward passes per input shape"
    of_shapes = "" if shapes is None else f" ({shapes} input shape{'' if shapes == 1 else 's'})"
    passes = f"{work} forward pass{'' if work == 1 else 'es'} per input shape"
    if name.startswith("compile"):
        return f"{kind}: up to {passes}{of_shapes}, {pays}"
    if compile_pays(work):
        return f"{kind}: up to {passes}{of_shapes}, {pays} but torch.compile is not available here"
    return f"{kind}: at most {passes}{of_shapes}, {pays}"
