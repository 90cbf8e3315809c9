"""Execution paths of a model: precision choice, torch and onnxruntime runners.

A *runner* is a callable ``(N, 3, h, w) images -> (N, C, h, w) float32 logits`` that hides how
the model runs: eager or ``torch.compile``d torch in fp32 or under bf16 autocast, NCHW or
channels_last, or an onnxruntime session. Its ``input_space`` says which images it takes
(:func:`input_space`): torch runners and bare models take ImageNet-normalised float32, the
onnxruntime runner the RGB pixels (its graph normalises them), so an image is normalised once.
A *path* (:data:`PATHS`) names one such configuration; :func:`default_path` is the one
``cityseg predict`` uses, chosen by the work in front of it (eager for a few frames, compiled from
:data:`COMPILE_PAYS_FROM` forward passes of one input shape) and the measurements in BENCHMARKS.md.
:func:`cityseg.inference.predict.predict_logits` takes any runner, so sliding windows and
test-time augmentation work the same on every path.

Why bf16 only where the CPU has it natively: without ``avx512_bf16`` or AMX, oneDNN emulates
bf16 with fp32 arithmetic plus conversions, which is slower than fp32 and still loses precision.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import os
import shutil
from pathlib import Path

import torch
from torch import nn

from cityseg.errors import CitysegError
from cityseg.imaging import NORMALIZED, PIXELS, normalize, to_pixels
from cityseg.inference.onnx import OrtRunner, onnx_bytes, ort_session
from cityseg.inference.options import PRECISIONS, RUNTIMES
from cityseg.modelinfo import classifier_convs
from cityseg.utils import require

log = logging.getLogger(__name__)

#: the precisions torch computes in (int8 runs through onnxruntime: :func:`int8_path`)
TORCH_PRECISIONS = tuple(p for p in PRECISIONS if p != "int8")

#: /proc/cpuinfo flags that mean native bf16 dot products (Zen 4+, Cooper Lake, Sapphire Rapids+).
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags from /proc/cpuinfo (empty where there is none, e.g. macOS)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 dot products in hardware (AVX512-BF16 or AMX-BF16).

    ``torch.backends.cpu.get_cpu_capability()`` says only "AVX512" on both kinds of AVX-512
    CPU (and ``torch.ops.mkldnn._is_mkldnn_bf16_supported()`` is true on any AVX-512 CPU, where
    oneDNN emulates bf16), so the flags are read from /proc/cpuinfo. Elsewhere (no /proc/cpuinfo)
    only torch's "AMX" capability counts.
    """
    if any(flag in cpu_flags() for flag in NATIVE_BF16_FLAGS):
        return True
    return "AMX" in torch.backends.cpu.get_cpu_capability()


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
        where = "this CPU has no AVX512-BF16 or AMX" if device.type == "cpu" else "this GPU has no bf16"
        raise CitysegError(f"--precision bf16: {where}; use --precision fp32 or auto")
    if precision == "auto":
        return "bf16" if native else "fp32"
    return precision


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 natively."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_native_bf16()


class Fp32(nn.Module):
    """Run the wrapped module in fp32 inside a low-precision autocast region."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return self.module(x.float())


def keep_fp32_ends(model: nn.Module) -> list[str]:
    """Wrap the convolutions that read the image or write the logits in :class:`Fp32`, in place.

    Why: rounding the normalised image to bf16 (8 significant bits) adds noise of up to half a
    grey level to every pixel before the first layer; measured on a trained checkpoint this one
    rounding causes most of the argmax flips (agreement with fp32 99.53% -> 99.89% with the first
    convolution in fp32, BENCHMARKS.md). Those layers are a fraction of a percent of the FLOPs.
    The image-reading convolutions are found by their 3 input channels, the logit-writing ones
    from the model itself (:func:`cityseg.modelinfo.classifier_convs`: the convolutions of the heads
    it names), so a model of any class count (CamVid's 11, a description's 5) is treated alike.

    Returns:
        The qualified names of the wrapped convolutions.
    """
    logits = set(classifier_convs(model))
    wrapped = []
    for parent_name, parent in list(model.named_modules()):
        if isinstance(parent, Fp32):  # already wrapped: calling twice changes nothing
            continue
        for name, child in list(parent.named_children()):
            qualified = f"{parent_name}.{name}" if parent_name else name
            if isinstance(child, nn.Conv2d) and (child.in_channels == 3 or qualified in logits):
                setattr(parent, name, Fp32(child))
                wrapped.append(qualified)
    return wrapped


#: runner precision -> autocast dtype (None: plain fp32)
_AUTOCAST: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class TorchRunner:
    """Run a torch model in eval mode: fp32 or bf16 autocast, channels_last, optionally compiled.

    The runner owns ``model``: it is moved, converted to channels_last and (bf16/fp16) has its
    first and last convolutions wrapped in place; :func:`build_runner` hands it a copy.

    Args:
        model: a cityseg model (forward returns ``{"out": logits}``); moved to ``device``.
        device: where the model runs; inputs are moved there.
        precision: ``"fp32"``, ``"bf16"`` or (CUDA) ``"fp16"``: autocast runs convolutions in
            the low precision and keeps reductions in fp32; the convolutions that read the image
            and write the logits stay fp32 (:func:`keep_fp32_ends`).
        channels_last: NHWC memory format, which oneDNN and cuDNN convolutions run faster in.
        compile: ``torch.compile`` with inductor and weight freezing (BatchNorm folded into the
            convolutions, weights pre-packed for oneDNN). Compiles on the first call of each input
            shape, which takes minutes on a small CPU.
    """

    input_space = NORMALIZED  # ImageNet-normalised float32 (cityseg.imaging.normalize)

    def __init__(
        self,
        model: nn.Module,
        device: torch.device,
        precision: str = "fp32",
        channels_last: bool = True,
        compile: bool = False,
    ) -> None:
        if precision not in _AUTOCAST:
            raise CitysegError(f"runner precision {precision!r}; valid: {', '.join(_AUTOCAST)}")
        self.device = device
        self.precision = precision
        self.channels_last = channels_last
        self.compiled = compile
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.eval().to(device=device, memory_format=memory_format)
        if precision != "fp32":
            keep_fp32_ends(self.model)
        self._forward = torch.compile(self.model, dynamic=False) if compile else self.model

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, h, w) float32 normalised -> (N, C, h, w) float32 logits."""
        x = x.to(self.device)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        dtype = _AUTOCAST[self.precision]
        with torch.inference_mode(), self._compile_options(), torch.autocast(
            self.device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None
        ):
            out = self._forward(x)
        logits = out["out"] if isinstance(out, dict) else out
        return logits.float().contiguous()

    def _compile_options(self) -> contextlib.AbstractContextManager:
        if not self.compiled:
            return contextlib.nullcontext()
        import torch._inductor.config as inductor_config

        # freezing treats the weights as constants: conv+BN folding and oneDNN weight pre-packing
        return inductor_config.patch(freezing=True)

    def describe(self) -> str:
        layout = "channels_last" if self.channels_last else "NCHW"
        return f"torch{' compiled' if self.compiled else ''} {self.precision} {layout} on {self.device}"


def input_space(runner) -> str:
    """The images ``runner`` takes: :data:`~cityseg.imaging.PIXELS` (RGB 0-255, uint8 or float32) or
    :data:`~cityseg.imaging.NORMALIZED` (float32; any callable without an ``input_space``, e.g. a model)."""
    return getattr(runner, "input_space", NORMALIZED)


def runner_input(runner, batch: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) uint8 RGB, or float32 normalised (a validation transform's output) -> the input
    ``runner`` takes: pixels (floats rounded back to them, :func:`~cityseg.imaging.to_pixels`) or
    normalised float32 (floats as they are, so scoring runs on the very tensors training validated on)."""
    pixels = input_space(runner) == PIXELS
    if batch.dtype == torch.uint8:
        return batch if pixels else normalize(batch).contiguous()
    return to_pixels(batch) if pixels else batch


# --- inference paths -----------------------------------------------------------------------------

#: The plain torchvision way: eager fp32, NCHW. Every speed-up is measured against it.
BASELINE = "eager_fp32"

#: path name -> what it does. ``cityseg benchmark`` times each available one.
PATHS: dict[str, str] = {
    BASELINE: "eager torch, fp32, NCHW (torchvision as a user runs it)",
    "channels_last": "eager torch, fp32, channels_last",
    "bf16": "eager torch, bf16 autocast, channels_last (native bf16 CPUs, CUDA)",
    "fp16": "eager torch, fp16 autocast, channels_last (CUDA)",
    "onnxruntime": "onnxruntime, fp32, all graph optimisations",
    "compile": "torch.compile (inductor, frozen weights), fp32, channels_last",
    "compile_bf16": "torch.compile (inductor, frozen weights), bf16 autocast, channels_last",
    "int8": "onnxruntime, static int8 (QDQ), calibrated on real frames (CPUs with VNNI)",
}

#: Paths that need calibration frames (:func:`build_runner`'s ``calibration``): timed only when given.
NEEDS_CALIBRATION = ("int8",)

_TORCH_PATHS: dict[str, tuple[str, bool, bool]] = {  # name -> (precision, channels_last, compile)
    BASELINE: ("fp32", False, False),
    "channels_last": ("fp32", True, False),
    "bf16": ("bf16", True, False),
    "fp16": ("fp16", True, False),
    "compile": ("fp32", True, True),
    "compile_bf16": ("bf16", True, True),
}


def _has_onnxruntime(device: torch.device) -> bool:
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    return device.type == "cpu" or "CUDAExecutionProvider" in ort.get_available_providers()


def _has_compiler() -> bool:
    # inductor's CPU backend builds C++ at run time; CUDA uses Triton
    return shutil.which(os.environ.get("CXX", "g++")) is not None or shutil.which("clang++") is not None


#: /proc/cpuinfo flags of 8-bit integer dot-product instructions (VNNI): without them int8 is not faster.
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def cpu_has_vnni() -> bool:
    """True when the CPU has 8-bit integer dot products (AVX512-VNNI, AVX-VNNI or AMX-INT8)."""
    return any(flag in cpu_flags() for flag in VNNI_FLAGS)


def no_vnni_message(fallback: str) -> str:
    """The one line that says int8 is not used on this CPU and which path runs instead."""
    return (f"--precision int8: this CPU has no VNNI ({', '.join(VNNI_FLAGS[:-1])} or {VNNI_FLAGS[-1]}): "
            f"int8 would be slower than fp32; running {fallback} instead")


def _has_vnni() -> bool:
    return cpu_has_vnni()


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
        "int8": device.type == "cpu" and _has_onnxruntime(device) and _has_vnni(),
    }
    return [name for name in PATHS if usable[name]]


def build_runner(name: str, model: nn.Module, device: torch.device, calibration=None, cache_beside=None):
    """A runner for path ``name``, on a copy of ``model`` (the caller's model is left as it is).

    Args:
        calibration: for the paths in :data:`NEEDS_CALIBRATION` (int8): uint8 RGB (1, 3, H, W)
            frames (quantised afresh, as ``cityseg benchmark`` does), or a folder of photos
            (quantised once and cached: :func:`cityseg.inference.int8.cached_int8`).
        cache_beside: with a calibration folder, the checkpoint beside which the int8 model is cached
            (None: the user's cache folder).

    Raises:
        CitysegError: unknown path name, or int8 without calibration.
    """
    if name not in PATHS:
        raise CitysegError(f"unknown inference path {name!r}; valid: {', '.join(PATHS)}")
    model = copy.deepcopy(model).eval()
    if name == "int8":
        return _int8_runner(model, calibration, cache_beside)
    if name == "onnxruntime":
        # the TorchScript exporter: seconds instead of the dynamo exporter's half minute, an equivalent graph
        data, _ = onnx_bytes(model, exporter="torchscript")
        return OrtRunner(ort_session(data, device=device.type))
    precision, channels_last, compiled = _TORCH_PATHS[name]
    return TorchRunner(model, device, precision, channels_last, compiled)


def _int8_runner(model: nn.Module, calibration, cache_beside) -> OrtRunner:
    """The onnxruntime int8 runner of ``model`` on the CPU (see :func:`build_runner`)."""
    from cityseg.inference.int8 import CALIBRATION_HELP, cached_int8, quantize_model

    if not calibration:
        raise CitysegError(CALIBRATION_HELP)
    if isinstance(calibration, str | os.PathLike):
        source = cached_int8(model, calibration, cache_beside)
    else:
        source = quantize_model(model, calibration)
    return OrtRunner(ort_session(source, device="cpu"))


#: Forward passes of one input shape from which ``torch.compile`` is chosen by default.
#: Compiling costs one slow first call per input shape and then saves a fraction of every pass:
#: it pays from the smallest n with compile time + n x compiled pass <= n x eager pass, rounded up
#: to a multiple of 10 (a wrong eager choice costs at most the eager/compiled pass ratio, a wrong
#: compile a fixed half minute per shape). The line below is written by
#: ``benchmarks/bench_default_path.py --write`` from its own measurements (DeepLabV3-ResNet50 at
#: 1024x512, empty inductor cache); its figures are in BENCHMARKS.md, "Default inference path by
#: workload". Measured at 1024x512 only: compile time hardly depends on the size while the pass
#: time grows with the pixels, so at 2048x1024 the crossover is smaller and the value errs towards
#: eager there; on much smaller images it is larger.
COMPILE_PAYS_FROM = 60  # measured by benchmarks/bench_default_path.py: 2026-12-03, 2-core AMD EPYC (Zen 4), see BENCHMARKS.md


def select_path(device: torch.device, precision: str = "auto", runtime: str = "auto", work: int | None = None) -> str:
    """The inference path (a :data:`PATHS` key) for a ``--precision`` and ``--runtime`` choice.

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
    :data:`PATHS` key :func:`select_path` gives for ``precision``, ``runtime`` and ``work`` (the
    largest number of forward passes sharing one input shape, None: unknown), and the few words of
    :func:`path_reason` that say why (``shapes``: how many input shapes the work has)."""
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
    steady paths measured (3x eager fp32 in bf16 on the 2-core Zen 4, with >= 99.5% argmax
    agreement on trained checkpoints; BENCHMARKS.md, "CPU inference"). Without a C++ compiler
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
