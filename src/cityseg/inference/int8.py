"""int8 inference on the CPU: onnxruntime static quantisation (QDQ) of the ONNX export.

Why onnxruntime: it is the maintained post-training static quantisation toolchain available with
torch 2.14 (``torch.ao.quantization.quantize_pt2e`` is gone from torch; PT2E lives in torchao).
The model is exported (TorchScript exporter: uint8 RGB ``image`` input, normalisation in the
graph), calibrated on a few real frames (MinMax ranges of every activation), and rewritten with
QuantizeLinear/DequantizeLinear pairs: int8 per-output-channel weights, uint8 per-tensor
activations. onnxruntime fuses the pairs into integer convolutions, which use AVX512-VNNI
(``vpdpbusd``: four uint8 x int8 products per 32-bit lane) where the CPU has it.

``cityseg predict --precision int8 --calibration DIR`` quantises once and caches the result beside
the checkpoint (:func:`cached_int8`): ``<stem>.int8.<key>.onnx``, where the key covers the model's
weights, the calibration files (names, sizes, modification times), the ONNX opset and exporter,
the quantisation settings (:data:`QUANTISATION`), the onnxruntime version and the checkpoint's
dataset, which the file's metadata names (:func:`int8_metadata`: the checkpoint's own classes, as
``cityseg export`` writes them). Where that folder is not writable the cache goes to
``$XDG_CACHE_HOME/cityseg/int8`` (``~/.cache/cityseg/int8``). A cached file is checked like any
ONNX file before use (:func:`~cityseg.inference.onnx.verify_onnx`: its graph's checksum), and
rebuilt when damaged.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cityseg.errors import CitysegError
from cityseg.imaging import model_normalization
from cityseg.inference.onnx import (DEFAULT_OPSET, check_classes, export_metadata, onnx_bytes, stamp_checksum,
                                    verify_onnx)
from cityseg.modelinfo import classifier_convs, model_config
from cityseg.utils import atomic_path, read_image, require

log = logging.getLogger(__name__)

#: Frames read from a --calibration folder (more add little to MinMax ranges and cost time).
CALIBRATION_FRAMES = 16

#: ONNX operators quantised (None: onnxruntime's default set, which adds Add, Resize, pooling, ...).
OP_TYPES: list[str] | None = ["Conv", "MatMul", "Gemm"]

#: How :func:`quantize_onnx` quantises (names of onnxruntime.quantization enums); part of the cache key.
QUANTISATION = {
    "format": "QDQ", "per_channel": True, "activation_type": "QUInt8", "weight_type": "QInt8",
    "calibrate_method": "MinMax", "op_types": OP_TYPES, "activation_symmetric": False, "weight_symmetric": True,
    "keep_ends": True, "frames": CALIBRATION_FRAMES,
}

#: The exporter of the graph that is quantised: seconds instead of the dynamo exporter's half minute.
EXPORTER = "torchscript"

#: Image suffixes read from a --calibration folder.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

CALIBRATION_HELP = (f"--precision int8 needs --calibration DIR: a folder of {CALIBRATION_FRAMES} or so photos like the "
                    "ones to segment, from which the int8 ranges of the activations are measured")
CALIBRATION_ONLY = "--calibration only applies to --precision int8"


def check_calibration(precision: str, calibration: str | Path | None) -> None:
    """Raise CitysegError unless ``calibration`` is given exactly when ``precision`` is ``"int8"``, and
    then is a folder with images (checked even where int8 falls back, so a typo shows on every CPU)."""
    if precision == "int8" and not calibration:
        raise CitysegError(CALIBRATION_HELP)
    if precision != "int8" and calibration:
        raise CitysegError(CALIBRATION_ONLY)
    if calibration:
        calibration_files(calibration)


def calibration_files(folder: str | Path, limit: int = CALIBRATION_FRAMES) -> list[Path]:
    """The first ``limit`` images of ``folder`` and its subfolders, in name order.

    Raises:
        CitysegError: not a folder, or no images in it.
    """
    root = Path(folder)
    if not root.is_dir():
        raise CitysegError(f"--calibration {folder}: not a folder; {CALIBRATION_HELP}")
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())[:limit]
    if not paths:
        raise CitysegError(f"--calibration {folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in it")
    return paths


def calibration_frames(folder: str | Path, limit: int = CALIBRATION_FRAMES) -> list[torch.Tensor]:
    """Up to ``limit`` images of ``folder`` (and its subfolders, in name order) as uint8 RGB (1, 3, H, W).

    Raises:
        CitysegError: not a folder, or no images in it.
    """
    return read_frames(calibration_files(folder, limit))


def read_frames(paths: Sequence[Path]) -> list[torch.Tensor]:
    """The images ``paths`` as uint8 RGB (1, 3, H, W) tensors (CitysegError naming one that cannot be read)."""
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


#: ONNX operators that carry only shapes, never a tensor's values: :func:`logit_convs` does not look through them.
SHAPE_OPS = ("Shape", "Size")


def logit_convs(graph, output: str = "logits") -> list[str]:
    """The Conv nodes of the ONNX ``graph`` that write the model's ``output`` (the first graph output
    when there is none of that name), found by the graph's structure: walking back from the output
    through the operators between (Resize, Add, Cast, ...) to the first Conv on every path. Their
    output channels (the class count) play no part, so every dataset's model is treated alike.
    LR-ASPP's two branch classifiers, whose sum is the logits, are both found. Shape-only inputs
    (a Resize's target size, :data:`SHAPE_OPS`) are not followed: they carry no logits.
    """
    producer = {out: node for node in graph.node for out in node.output}
    names = {o.name for o in graph.output}
    start = output if output in names else graph.output[0].name
    found: list[str] = []
    seen: set[str] = set()
    todo = [start]
    while todo:
        tensor = todo.pop()
        node = producer.get(tensor)
        if node is None or tensor in seen:  # a graph input or an initializer, or already walked
            continue
        seen.add(tensor)
        if node.op_type == "Conv":
            if node.name not in found:
                found.append(node.name)
            continue
        if node.op_type in SHAPE_OPS:
            continue
        inputs = node.input[:1] if node.op_type == "Resize" else node.input  # X; not roi, scales, sizes
        todo.extend(i for i in inputs if i)
    return found


def fp32_ends(path: Path) -> list[str]:
    """The Conv nodes of the ONNX model at ``path`` that read the image (3 input channels) or write
    the logits (:func:`logit_convs`): kept in fp32 (a fraction of a percent of the work).

    Why: quantising the logits to 256 levels makes near-ties of classes exact ties and flips their
    argmax; the first convolution sees the image rounded once more.
    """
    onnx = require("onnx", "onnx", "int8 inference")

    model = onnx.load(str(path))
    shapes = {init.name: tuple(init.dims) for init in model.graph.initializer}
    last = set(logit_convs(model.graph))
    names = []
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        reads_image = len(node.input) > 1 and node.input[1] in shapes and shapes[node.input[1]][1] == 3
        if reads_image or node.name in last:
            names.append(node.name)
    return names


def quantize_onnx(data: bytes, frames: Sequence[torch.Tensor], work_dir: Path | None = None,
                  keep_ends: bool = QUANTISATION["keep_ends"],
                  op_types: Sequence[str] | None = QUANTISATION["op_types"]) -> bytes:
    """Statically quantise the ONNX model ``data`` (uint8 ``image`` input) calibrated on ``frames``.

    Args:
        data: a serialised cityseg ONNX export (:func:`cityseg.inference.onnx.onnx_bytes`).
        frames: uint8 RGB (1, 3, H, W) tensors, any sizes.
        work_dir: where the intermediate files go (default: a temporary folder).
        keep_ends: keep the convolutions that read the image and write the logits in fp32 (:func:`fp32_ends`).
        op_types: the ONNX operators quantised (default :data:`OP_TYPES`); None: onnxruntime's default set.

    Returns:
        The QDQ model, serialised.
    """
    if not frames:
        raise CitysegError("int8 quantisation needs calibration frames")
    require("onnxruntime", "onnxruntime", "int8 inference")
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    q = QUANTISATION
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
            quant_format=QuantFormat[q["format"]], per_channel=q["per_channel"],
            activation_type=QuantType[q["activation_type"]], weight_type=QuantType[q["weight_type"]],
            calibrate_method=CalibrationMethod[q["calibrate_method"]],
            op_types_to_quantize=None if op_types is None else list(op_types),
            nodes_to_exclude=exclude,
            extra_options={"ActivationSymmetric": q["activation_symmetric"], "WeightSymmetric": q["weight_symmetric"]},
        )
        return dst.read_bytes()


def int8_metadata(model: nn.Module, config: dict[str, Any] | None = None) -> dict[str, str]:
    """The metadata of ``model``'s int8 file (:func:`~cityseg.inference.onnx.export_metadata`): the dataset
    and config of ``config`` (None: the ones ``model`` was loaded with, :func:`cityseg.modelinfo.model_config`),
    so a model of the checkpoint's own classes says so; Cityscapes only for a model that records none
    (then a class count other than Cityscapes' is warned about: the file's class names are a guess)."""
    config = config if config is not None else model_config(model)
    metadata = export_metadata(config, normalization=model_normalization(model))
    if config is None:
        classes = json.loads(metadata["cityseg.classes"])
        count = _class_count(model)
        if count is not None and count != len(classes):
            log.warning("int8: the model predicts %d classes and records no dataset; its int8 file names "
                        "Cityscapes' %d (load it from a checkpoint to carry its own)", count, len(classes))
    return metadata


def _class_count(model: nn.Module) -> int | None:
    """Output channels of ``model``'s first logit-writing convolution (None when it has none)."""
    modules = dict(model.named_modules())
    for name in classifier_convs(model):
        conv = modules.get(name)
        if isinstance(conv, nn.Conv2d):
            return conv.out_channels
    return None


def quantize_model(model: nn.Module, frames: Sequence[torch.Tensor], config: dict[str, Any] | None = None) -> bytes:
    """``model`` exported (uint8 ``image`` in) and quantised on ``frames``, with cityseg's metadata
    (:func:`int8_metadata`: the dataset of ``config``, None: of the checkpoint ``model`` was loaded from)
    and the checksum :func:`~cityseg.inference.onnx.verify_onnx` checks; serialised."""
    data, _ = onnx_bytes(model, DEFAULT_OPSET, exporter=EXPORTER)
    return stamp_checksum(quantize_onnx(data, frames), int8_metadata(model, config))


# --- the cache -----------------------------------------------------------------------------------


def weights_digest(model: nn.Module) -> str:
    """SHA-256 of ``model``'s class, parameter and buffer names, dtypes, shapes and bytes."""
    digest = hashlib.sha256(type(model).__name__.encode())
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy())  # the buffer itself, not a copy
    return digest.hexdigest()


def cache_key(model: nn.Module, files: Sequence[Path], root: Path) -> str:
    """16 hex digits naming the int8 model of ``model`` calibrated on ``files`` (found under ``root``):
    a hash of the weights, every file's name, size and modification time, the opset, the exporter,
    :data:`QUANTISATION`, the onnxruntime version (its quantiser decides the output) and the dataset
    the model was loaded with (the file's metadata names it)."""
    import onnxruntime

    stats = [(p.relative_to(root).as_posix(), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    config = model_config(model) or {}
    facts = {"weights": weights_digest(model), "calibration": stats, "opset": DEFAULT_OPSET, "exporter": EXPORTER,
             "quantisation": QUANTISATION, "onnxruntime": onnxruntime.__version__,
             "dataset": config.get("dataset")}
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:16]


def user_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/cityseg/int8``, or ``~/.cache/cityseg/int8``: where int8 models go when
    the checkpoint's folder is not writable (or there is no checkpoint)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cityseg" / "int8"


def writable(folder: Path) -> bool:
    """Whether files can be created in ``folder``."""
    return folder.is_dir() and os.access(folder, os.W_OK | os.X_OK)


def cache_candidates(name: str, beside: Path | None) -> list[Path]:
    """Where the cached file ``name`` may be: beside the checkpoint ``beside`` first, then the user cache."""
    folders = ([beside.parent] if beside is not None else []) + [user_cache_dir()]
    return [folder / name for folder in folders]


def load_cached(path: Path) -> bool:
    """True when ``path`` is an int8 model that passes :func:`~cityseg.inference.onnx.verify_onnx`;
    a damaged one is removed (with a warning) so that it is rebuilt, never trusted."""
    if not path.is_file():
        return False
    try:
        check_classes(verify_onnx(path), path)
    except CitysegError as exc:
        # verify_onnx's advice ("export it again") is for exports: the cache is rebuilt here instead
        reason = str(exc).removeprefix(f"{path}: ").split(";")[0]
        log.warning("int8 cache %s: %s; rebuilding the int8 model", path, reason)
        with contextlib.suppress(OSError):  # an unwritable folder: the rebuilt model goes to the user cache
            path.unlink()
        return False
    return True


def write_cache(data: bytes, candidates: Sequence[Path]) -> Path | None:
    """Write ``data`` atomically to the first candidate whose folder can be written; None when none can
    (the model then runs from memory). Falling back past the checkpoint's folder is said in one line."""
    for i, path in enumerate(candidates):
        if i == 0 and len(candidates) > 1 and not writable(path.parent):
            log.info("int8 cache: %s is not writable; caching in %s instead", path.parent, candidates[1].parent)
            continue
        try:
            with atomic_path(path) as tmp:
                tmp.write_bytes(data)
            return path
        except OSError as exc:
            log.info("int8 cache: cannot write %s (%s)", path, exc.strerror or exc)
    log.warning("int8 cache: nowhere to write the int8 model; it is quantised again on the next run")
    return None


def cached_int8(model: nn.Module, calibration: str | Path, beside: str | Path | None = None) -> Path | bytes:
    """The int8 model of ``model`` calibrated on the folder ``calibration``: reused from the cache when
    its key (:func:`cache_key`) matches and the file checks out, else quantised and cached.

    Args:
        model: a cityseg model (eval mode, fp32, on the CPU).
        calibration: a folder of photos like the ones to segment (:func:`calibration_files`).
        beside: the checkpoint the model came from: the cache goes into its folder as
            ``<stem>.int8.<key>.onnx``; None (or an unwritable folder): :func:`user_cache_dir`.

    Returns:
        The cached file, or the serialised model when no cache folder can be written.

    Raises:
        CitysegError: the calibration folder is missing or has no images; onnx/onnxruntime missing.
    """
    require("onnxruntime", "onnx", "int8 inference")
    files = calibration_files(calibration)
    beside = Path(beside) if beside is not None else None
    name = f"{beside.stem if beside is not None else 'model'}.int8.{cache_key(model, files, Path(calibration))}.onnx"
    candidates = cache_candidates(name, beside)
    for path in candidates:
        if load_cached(path):
            log.info("reusing the int8 model cached at %s", path)
            return path
    frames = read_frames(files)
    data = quantize_model(model, frames)
    path = write_cache(data, candidates)
    if path is None:
        return data
    log.info("int8: quantised on %d calibration frame(s) of %s; cached at %s", len(frames), calibration, path)
    return path
