"""Execution paths of a model: device and precision choice, torch and onnxruntime runners.

A *runner* is a callable ``(N, 3, h, w) float32 normalised images -> (N, C, h, w) float32
logits`` that hides how the model runs: eager or ``torch.compile``d torch in fp32 or under bf16
autocast, NCHW or channels_last, or an onnxruntime session. A *path* (:data:`PATHS`) names one
such configuration; :func:`default_path` is the one ``cityseg predict`` uses, chosen by the
measurements in BENCHMARKS.md. :func:`cityseg.inference.predict.predict_logits` takes any
runner, so sliding windows and test-time augmentation work the same on every path.

Why bf16 only where the CPU has it natively: without ``avx512_bf16`` or AMX, oneDNN emulates
bf16 with fp32 arithmetic plus conversions, which is slower than fp32 and still loses precision.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cityseg.errors import CitysegError

PRECISIONS = ("auto", "fp32", "bf16")
DEVICES = ("auto", "cpu", "cuda")

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


def resolve_device(kind: str = "auto") -> torch.device:
    """``"auto"`` -> cuda when available, else cpu. Raises CitysegError for cuda without a GPU."""
    if kind not in DEVICES:
        raise CitysegError(f"device {kind!r}; valid: {', '.join(DEVICES)}")
    if kind == "cuda" and not torch.cuda.is_available():
        raise CitysegError("--device cuda: no CUDA device is available (use --device cpu or auto)")
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(kind)


def resolve_precision(precision: str, device: torch.device) -> str:
    """Map ``auto|fp32|bf16`` to the precision actually used on ``device``: ``"fp32"`` or ``"bf16"``.

    ``auto`` is bf16 where the hardware computes it natively (CPUs with AVX512-BF16/AMX, CUDA GPUs
    with bf16 support) and fp32 elsewhere. Measured on trained checkpoints, bf16 keeps >= 99.5%
    argmax agreement with fp32 (BENCHMARKS.md, "CPU inference"); ``cityseg benchmark
    --checkpoint`` measures it for any other model.

    Raises:
        CitysegError: unknown precision, or bf16 asked for where it is not native.
    """
    if precision not in PRECISIONS:
        raise CitysegError(f"precision {precision!r}; valid: {', '.join(PRECISIONS)}")
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
    by their NUM_CLASSES output channels.

    Returns:
        The qualified names of the wrapped convolutions.
    """
    from cityseg.labels import NUM_CLASSES

    wrapped = []
    for parent_name, parent in list(model.named_modules()):
        if isinstance(parent, Fp32):  # already wrapped: calling twice changes nothing
            continue
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Conv2d) and (child.in_channels == 3 or child.out_channels == NUM_CLASSES):
                setattr(parent, name, Fp32(child))
                wrapped.append(f"{parent_name}.{name}" if parent_name else name)
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


def ort_session(model: str | os.PathLike | bytes, threads: int | None = None, device: str = "cpu"):
    """An onnxruntime InferenceSession with every graph optimisation on.

    Args:
        model: an .onnx file or its bytes.
        threads: intra-op threads; None uses torch's thread count (so both paths use the same cores).
        device: ``"cpu"``, or ``"cuda"`` to prefer the CUDA execution provider where installed.

    Raises:
        CitysegError: onnxruntime is not installed, or the file is not a loadable ONNX model.
    """
    try:
        import onnxruntime as ort
    except ImportError:
        raise CitysegError("onnxruntime is not installed; pip install 'cityseg[onnx]'") from None
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: its warnings about unused initialisers are noise here
    providers = ["CPUExecutionProvider"]
    if device == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    try:
        return ort.InferenceSession(model if isinstance(model, bytes) else str(model), options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/NoSuchFile types
        name = "the exported model" if isinstance(model, bytes) else str(model)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CitysegError(f"{name}: not a loadable ONNX model ({first})") from None


class OrtRunner:
    """Run an ONNX model through onnxruntime as a runner.

    Two input kinds are accepted: the uint8 RGB ``image`` input of ``cityseg export`` (the
    normalised floats are mapped back to 0-255 and rounded: exact at scale 1, within half a
    grey level after a TTA resize), or a float input that takes normalised images as they are.
    The first output (``logits``) is returned.
    """

    def __init__(self, session, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self.session = session
        inp = session.get_inputs()[0]
        self.input_name = inp.name
        self.uint8 = "uint8" in inp.type
        self.output_name = session.get_outputs()[0].name
        self.mean = torch.tensor(mean).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(std).view(1, 3, 1, 1) * 255

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, h, w) float32 normalised -> (N, C, h, w) float32 logits (on the CPU)."""
        x = x.detach().cpu().float()
        if self.uint8:
            feed = (x * self.std + self.mean).round_().clamp_(0, 255).to(torch.uint8).numpy()
        else:
            feed = np.ascontiguousarray(x.numpy())
        (logits,) = self.session.run([self.output_name], {self.input_name: feed})
        return torch.from_numpy(logits).float()

    def describe(self) -> str:
        return f"onnxruntime {'/'.join(self.session.get_providers())}"


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
}

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
    }
    return [name for name in PATHS if usable[name]]


def build_runner(name: str, model: nn.Module, device: torch.device):
    """A runner for path ``name``, on a copy of ``model`` (the caller's model is left as it is).

    Raises:
        CitysegError: unknown path name.
    """
    if name not in PATHS:
        raise CitysegError(f"unknown inference path {name!r}; valid: {', '.join(PATHS)}")
    model = copy.deepcopy(model).eval()
    if name == "onnxruntime":
        from cityseg.inference.export import onnx_bytes
        from cityseg.models import IMAGENET_MEAN, IMAGENET_STD

        # the TorchScript exporter: seconds instead of the dynamo exporter's half minute, an equivalent graph
        data, _ = onnx_bytes(model, exporter="torchscript")
        return OrtRunner(ort_session(data, device=device.type), IMAGENET_MEAN, IMAGENET_STD)
    precision, channels_last, compiled = _TORCH_PATHS[name]
    return TorchRunner(model, device, precision, channels_last, compiled)


RUNTIMES = ("auto", "torch", "compile", "onnxruntime")


def select_path(device: torch.device, precision: str = "auto", runtime: str = "auto") -> str:
    """The inference path (a :data:`PATHS` key) for a ``--precision`` and ``--runtime`` choice.

    ``runtime="auto"`` with ``precision="auto"`` is :func:`default_path`. ``torch`` and ``compile``
    follow the resolved precision; ``onnxruntime`` runs fp32 only.

    Raises:
        CitysegError: unknown runtime or precision, bf16 where it is not native, bf16 with
            onnxruntime, or a runtime not available here.
    """
    if runtime not in RUNTIMES:
        raise CitysegError(f"runtime {runtime!r}; valid: {', '.join(RUNTIMES)}")
    resolved = resolve_precision(precision, device)
    if runtime == "auto":
        return default_path(device, precision)
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


def default_path(device: torch.device, precision: str = "auto") -> str:
    """The path ``cityseg predict`` and :class:`~cityseg.inference.predict.Predictor` use by default.

    ``torch.compile`` (inductor, frozen weights) in bf16 where the hardware has it natively, else
    in fp32: on the 2-core Zen 4 CPU here it was the fastest path at each precision, 3x eager fp32
    in bf16 with >= 99.5% argmax agreement on trained checkpoints (BENCHMARKS.md, "CPU inference").
    Without a C++ compiler (inductor needs one on the CPU): eager bf16 autocast, or onnxruntime in
    fp32 when installed, else eager channels_last.
    """
    bf16 = resolve_precision(precision, device) == "bf16"
    available = available_paths(device)
    for name in (["compile_bf16", "bf16"] if bf16 else ["compile", "onnxruntime", "channels_last"]):
        if name in available:
            return name
    return BASELINE
