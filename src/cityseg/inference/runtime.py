"""How a model runs: torch and onnxruntime runners, and the paths (:data:`PATHS`) that name them.

A *runner* is a callable ``(N, 3, h, w) images -> (N, C, h, w) float32 logits`` that hides how
the model runs: eager or ``torch.compile``d torch in fp32 or under bf16 autocast, NCHW or
channels_last, or an onnxruntime session. Its ``input_space`` says which images it takes
(:func:`input_space`): torch runners and bare models take ImageNet-normalised float32, the
onnxruntime runner the RGB pixels (its graph normalises them), so an image is normalised once.
A *path* (:data:`PATHS`) names one such configuration and :func:`build_runner` builds it; which
path runs is :func:`cityseg.inference.paths.choose_path`'s choice.
:func:`cityseg.inference.passes.predict_probs` takes any runner, so sliding windows and
test-time augmentation work the same on every path.
"""

from __future__ import annotations

import contextlib
import copy
import os

import torch
from torch import nn

from cityseg.errors import CitysegError
from cityseg.imaging import NORMALIZED, PIXELS, normalize, to_pixels
from cityseg.inference.onnx import OrtRunner, onnx_bytes, ort_session
from cityseg.modelinfo import classifier_convs


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
    grey level to every pixel before the first layer, and caused most of the argmax flips measured on
    trained checkpoints (BENCHMARKS.md, "Agreement with eager fp32"). Those layers are a fraction of a
    percent of the FLOPs.
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
            shape (half a minute for DeepLabV3-ResNet50 on a 2-core CPU, BENCHMARKS.md).
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

