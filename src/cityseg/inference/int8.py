"""int8 inference on the CPU: onnxruntime static quantisation (QDQ) of the ONNX export.

Why onnxruntime: it is the maintained post-training static quantisation toolchain available with
torch 2.14 (``torch.ao.quantization.quantize_pt2e`` is gone from torch; PT2E lives in torchao).
The model is exported (TorchScript exporter: uint8 RGB ``image`` input, normalisation in the
graph), calibrated on a few real frames (MinMax ranges of every activation), and rewritten with
QuantizeLinear/DequantizeLinear pairs: int8 per-output-channel weights, uint8 per-tensor
activations. onnxruntime fuses the pairs into integer convolutions, which use AVX512-VNNI
(``vpdpbusd``: four uint8 x int8 products per 32-bit lane) where the CPU has it.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from cityseg.errors import CitysegError
from cityseg.utils import require

#: Frames read from a --calibration folder (more add little to MinMax ranges and cost time).
CALIBRATION_FRAMES = 16

#: ONNX operators quantised (None: onnxruntime's default set, which adds Add, Resize, pooling, ...).
OP_TYPES: list[str] | None = ["Conv", "MatMul", "Gemm"]

#: Image suffixes read from a --calibration folder.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

CALIBRATION_HELP = (f"--precision int8 needs --calibration DIR: a folder of {CALIBRATION_FRAMES} or so photos like the "
                    "ones to segment, from which the int8 ranges of the activations are measured")


def calibration_frames(folder: str | Path, limit: int = CALIBRATION_FRAMES) -> list[torch.Tensor]:
    """Up to ``limit`` images of ``folder`` (and its subfolders, in name order) as uint8 RGB (1, 3, H, W).

    Raises:
        CitysegError: not a folder, or no images in it.
    """
    from cityseg.utils import read_image

    root = Path(folder)
    if not root.is_dir():
        raise CitysegError(f"--calibration {folder}: not a folder; {CALIBRATION_HELP}")
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())[:limit]
    if not paths:
        raise CitysegError(f"--calibration {folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in it")
    return [torch.from_numpy(np.array(read_image(p, "RGB"))).permute(2, 0, 1)[None].contiguous() for p in paths]


class _Reader:
    """An onnxruntime ``CalibrationDataReader`` over uint8 (1, 3, H, W) frames."""

    def __init__(self, name: str, frames: Iterable[torch.Tensor]) -> None:
        self.name = name
        self.frames = iter(frames)

    def get_next(self) -> dict[str, np.ndarray] | None:
        frame = next(self.frames, None)
        if frame is None:
            return None
        return {self.name: np.ascontiguousarray(frame.to(torch.uint8).numpy())}

    def rewind(self) -> None:  # part of the interface; calibration reads once
        pass


def fp32_ends(path: Path) -> list[str]:
    """The Conv nodes of the ONNX model at ``path`` that read the image (3 input channels) or write
    the logits (NUM_CLASSES output channels): kept in fp32 (a fraction of a percent of the work).

    Why: quantising the logits to 256 levels makes near-ties of classes exact ties and flips their
    argmax; the first convolution sees the image rounded once more.
    """
    onnx = require("onnx", "onnx", "int8 inference")
    from cityseg.labels import NUM_CLASSES

    model = onnx.load(str(path))
    shapes = {init.name: tuple(init.dims) for init in model.graph.initializer}
    names = []
    for node in model.graph.node:
        if node.op_type == "Conv" and len(node.input) > 1 and node.input[1] in shapes:
            out_ch, in_ch = shapes[node.input[1]][:2]
            if in_ch == 3 or out_ch == NUM_CLASSES:
                names.append(node.name)
    return names


def quantize_onnx(data: bytes, frames: Sequence[torch.Tensor], work_dir: Path | None = None,
                  keep_ends: bool = True) -> bytes:
    """Statically quantise the ONNX model ``data`` (uint8 ``image`` input) calibrated on ``frames``.

    Args:
        data: a serialised cityseg ONNX export (:func:`cityseg.inference.onnx.onnx_bytes`).
        frames: uint8 RGB (1, 3, H, W) tensors, any sizes.
        work_dir: where the intermediate files go (default: a temporary folder).
        keep_ends: keep the convolutions that read the image and write the logits in fp32 (:func:`fp32_ends`).

    Returns:
        The QDQ model, serialised.
    """
    if not frames:
        raise CitysegError("int8 quantisation needs calibration frames")
    require("onnxruntime", "onnxruntime", "int8 inference")
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        raw, src, dst = Path(tmp) / "raw.onnx", Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        raw.write_bytes(data)
        # constant folding turns the exporter's Constant-node biases (BatchNorm folded into the
        # convolutions) into initializers, which the quantiser needs to quantise them
        quant_pre_process(str(raw), str(src), skip_symbolic_shape=True)
        exclude = fp32_ends(src) if keep_ends else []
        quantize_static(
            str(src), str(dst), _Reader("image", frames),
            quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            op_types_to_quantize=OP_TYPES,
            nodes_to_exclude=exclude,
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
        )
        return dst.read_bytes()
