"""ONNX: export (uint8 RGB in, logits and trainIds out, normalisation inside the graph), the checksum
that guards an exported file, and running a file with onnxruntime (:class:`OrtRunner`).

The exported graph (:class:`ExportWrapper`):

* input ``image``: uint8 RGB, (N, 3, H, W), with N, H and W dynamic;
* output ``logits``: float32 (N, 19, H, W), the model's logits at the input size;
* output ``labels``: uint8 (N, H, W) trainIds, the argmax of ``logits`` (uint8 because trainIds
  fit in a byte and that is what the label PNGs hold; ONNX ArgMax gives int64, cast in the graph).

Exporter: torch's dynamo exporter (``torch.onnx.export(..., dynamo=True)``) with dynamic N, H, W
first; when it fails, the TorchScript exporter with ``dynamic_axes``. Either way the file is then
checked with onnxruntime at two input sizes (the dynamic-shape trap of DeepLabV3 is its ASPP
image pooling, whose upsampling must follow the input size) against the fp32 torch model.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cityseg.datasets import DatasetSpec
from cityseg.errors import CitysegError, first_line
from cityseg.imaging import IMAGENET, PIXELS, Normalization, mean_std, model_normalization, normalize
from cityseg.utils import atomic_path, read_image, require

log = logging.getLogger(__name__)

#: The default ONNX opset: 18 is the lowest the dynamo exporter writes natively (no down-conversion).
DEFAULT_OPSET = 18
#: Required argmax agreement of onnxruntime with fp32 torch (issue 6).
EXPORT_AGREEMENT = 0.999
EXPORTERS = ("auto", "dynamo", "torchscript")


class ExportWrapper(nn.Module):
    """A cityseg model behind uint8 input and ImageNet normalisation, returning logits and labels.

    Shape:
        image: (N, 3, H, W) uint8 RGB. Returns ``(logits (N, C, H, W) float32, labels (N, H, W) uint8)``.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        # scaled to 0-255 so the graph does one subtract and one divide on the uint8 input
        mean, std = mean_std(scale=255.0, ndim=4)
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = (image.float() - self.mean) / self.std
        out = self.model(x)
        logits = out["out"] if isinstance(out, dict) else out
        return logits, logits.argmax(1).to(torch.uint8)


@dataclass
class ExportReport:
    """What :func:`export_onnx` did: which exporter wrote the file and how the check went."""

    path: Path
    exporter: str
    opset: int
    agreement: float  # lowest argmax agreement with fp32 torch over the checked inputs
    checked: list[str]  # the inputs checked, e.g. "random 96x64", "frankfurt_..._leftImg8bit.png"


def wrap_for_export(model: nn.Module) -> ExportWrapper:
    """``model`` (eval mode, CPU, fp32) inside :class:`ExportWrapper` with ImageNet mean/std."""
    return ExportWrapper(model.float().cpu().eval()).eval()


def _example(height: int = 64, width: int = 96) -> torch.Tensor:
    return torch.randint(0, 256, (1, 3, height, width), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def _export_dynamo(wrapper: ExportWrapper, opset: int) -> bytes:
    """Export with torch.export (dynamo) and dynamic N, H, W; returns the serialised model."""
    from torch.export import Dim

    dims = {"image": {0: Dim.DYNAMIC, 2: Dim.DYNAMIC, 3: Dim.DYNAMIC}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            wrapper, (_example(),), dynamo=True, opset_version=opset, input_names=["image"],
            output_names=["logits", "labels"], dynamic_shapes=dims, verbose=False,
        )
    buffer = io.BytesIO()
    program.save(buffer)  # type: ignore[union-attr]
    return buffer.getvalue()


def _export_torchscript(wrapper: ExportWrapper, opset: int) -> bytes:
    """Export with the TorchScript exporter and ``dynamic_axes``; returns the serialised model."""
    buffer = io.BytesIO()
    axes = {"image": {0: "batch", 2: "height", 3: "width"}, "logits": {0: "batch", 2: "height", 3: "width"},
            "labels": {0: "batch", 1: "height", 2: "width"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper, (_example(),), buffer, dynamo=False, opset_version=opset, input_names=["image"],
            output_names=["logits", "labels"], dynamic_axes=axes,
        )
    return buffer.getvalue()


def onnx_bytes(model: nn.Module, opset: int = DEFAULT_OPSET, exporter: str = "auto") -> tuple[bytes, str]:
    """Serialise ``model`` (wrapped by :func:`wrap_for_export`) to ONNX; returns (bytes, exporter used).

    ``exporter``: ``"dynamo"``, ``"torchscript"``, or ``"auto"`` (dynamo, falling back to
    TorchScript when it raises or its graph fails the two-size check).

    Raises:
        CitysegError: unknown exporter, or every exporter tried failed (the last reason is named).
    """
    if exporter not in EXPORTERS:
        raise CitysegError(f"exporter {exporter!r}; valid: {', '.join(EXPORTERS)}")
    wrapper = wrap_for_export(model)
    tries = {"dynamo": _export_dynamo, "torchscript": _export_torchscript}
    order = ["dynamo", "torchscript"] if exporter == "auto" else [exporter]
    reason = ""
    for name in order:
        try:
            data = tries[name](wrapper, opset)
            check_dynamic(data, wrapper)
            return data, name
        except Exception as exc:  # exporter internals raise many types; any failure means "try the next"
            reason = f"{name} exporter: {first_line(exc)}"
            log.warning("ONNX export failed with the %s", reason)
    raise CitysegError(f"ONNX export failed ({reason})")


#: Metadata key of the SHA-256 of the exported graph (nodes and weights), written at export and
#: checked whenever cityseg loads the file: flipped bytes in the weights are found before use.
CHECKSUM_KEY = "cityseg.graph_sha256"


def _graph_digest(model) -> str:
    return hashlib.sha256(model.graph.SerializeToString(deterministic=True)).hexdigest()


#: Metadata keys (values are JSON) that make an export self-describing: what the classes are,
#: how to colour them, what the input is, and where the model came from.
METADATA_KEYS = ("cityseg.version", "cityseg.dataset", "cityseg.classes", "cityseg.palette", "cityseg.ignore_index",
                 "cityseg.input", "cityseg.config")


def export_metadata(config: dict[str, Any] | None = None, normalization: Normalization = IMAGENET) -> dict[str, str]:
    """The :data:`METADATA_KEYS` of an export (JSON strings): the dataset of the checkpoint's config
    (its description, :meth:`~cityseg.datasets.DatasetSpec.to_dict`), its train classes and their
    colours, the uint8 RGB NCHW input normalised inside the graph with the model's ``normalization``
    (:func:`cityseg.imaging.model_normalization`: ImageNet's, or its weights' own), the
    cityseg version and the checkpoint's config."""
    from cityseg._version import __version__
    from cityseg.datasets import IGNORE_INDEX, load_dataset

    spec = load_dataset((config or {}).get("dataset") or "cityscapes")
    values: dict[str, Any] = {
        "cityseg.version": __version__,
        "cityseg.dataset": spec.to_dict(),
        "cityseg.classes": list(spec.class_names),
        "cityseg.palette": [[int(c) for c in rgb] for rgb in spec.palette],
        "cityseg.ignore_index": IGNORE_INDEX,
        "cityseg.input": {"name": "image", "dtype": "uint8", "layout": "NCHW", "channels": "RGB", "range": [0, 255],
                          "normalization": "inside the graph: (x / 255 - mean) / std",
                          **normalization.to_dict()},
        "cityseg.config": config or {},
    }
    return {key: json.dumps(value) for key, value in values.items()}


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The decoded :data:`METADATA_KEYS` an .onnx file carries ({} for a file not written by cityseg)."""
    onnx = require("onnx", "onnx", "reading an .onnx file")
    return _decode_metadata(onnx.load(str(path), load_external_data=False), path)


def _decode_metadata(model: Any, path: str | os.PathLike) -> dict[str, Any]:
    out = {}
    for prop in model.metadata_props:
        if prop.key in METADATA_KEYS:
            try:
                out[prop.key] = json.loads(prop.value)
            except ValueError:
                raise CitysegError(f"{path}: metadata {prop.key} is not valid JSON") from None
    return out


def check_classes(meta: dict[str, Any], path: str | os.PathLike, dataset: Any = None) -> DatasetSpec:
    """The dataset an export predicts, from the metadata ``meta`` (of :func:`verify_onnx` or
    :func:`read_metadata`; Cityscapes for a file without it), checked against ``dataset`` (a name,
    file or spec; None: no check).

    Raises:
        CitysegError: naming the file and its classes when they are not the metadata's own list or
            not the classes of ``dataset``.
    """
    from cityseg.datasets import load_dataset

    spec = load_dataset(meta.get("cityseg.dataset") or "cityscapes")
    classes = list(meta.get("cityseg.classes") or spec.class_names)
    wanted = load_dataset(dataset) if dataset is not None else spec
    if classes != list(wanted.class_names):
        shown = ", ".join(map(str, classes[:6])) + (", ..." if len(classes) > 6 else "")
        raise CitysegError(f"{path}: predicts {len(classes)} classes ({shown}), not the {wanted.num_classes} "
                           f"classes of dataset {wanted.name}")
    return wanted


def stamp_checksum(data: bytes, metadata: dict[str, str] | None = None) -> bytes:
    """The serialised model ``data`` with ``metadata`` and :data:`CHECKSUM_KEY` in its metadata."""
    onnx = require("onnx", "onnx", "ONNX export")
    model = onnx.load_from_string(data)
    props = {p.key: p.value for p in model.metadata_props if p.key != CHECKSUM_KEY}
    props.update(metadata or {})
    del model.metadata_props[:]
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    model.metadata_props.add(key=CHECKSUM_KEY, value=_graph_digest(model))
    return model.SerializeToString()


def verify_onnx(path: str | os.PathLike) -> dict[str, Any]:
    """Check an .onnx file before it is used: parsable, valid (``onnx.checker``), and its graph equal
    to the checksum recorded at export (files not written by ``cityseg export`` carry none: a warning).
    Returns its decoded cityseg metadata (:data:`METADATA_KEYS`), read in the same pass.

    Raises:
        CitysegError: naming the file and what is wrong with it.
    """
    onnx = require("onnx", "onnx", "checking an .onnx file")
    path = Path(path)
    if not path.is_file():
        raise CitysegError(f"{path}: ONNX file not found")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # protobuf DecodeError, OSError, ...
        raise CitysegError(f"{path}: not an ONNX model ({first_line(exc)})") from None
    try:
        onnx.checker.check_model(model)
    except Exception as exc:  # onnx.checker.ValidationError and protobuf errors
        raise CitysegError(f"{path}: damaged or invalid ONNX model ({first_line(exc)})") from None
    recorded = {p.key: p.value for p in model.metadata_props}.get(CHECKSUM_KEY)
    if recorded is None:
        log.warning("%s: carries no cityseg checksum (not written by cityseg export); its weights cannot be verified",
                    path)
    elif _graph_digest(model) != recorded:
        raise CitysegError(f"{path}: damaged: its graph or weights differ from the checksum recorded at export; "
                           "export it again from the checkpoint")
    return _decode_metadata(model, path)


def check_dynamic(data: bytes, wrapper: ExportWrapper, sizes: tuple[tuple[int, int], ...] = ((96, 64), (80, 112))) -> None:
    """Run the serialised model at two (W, H) sizes and batch sizes 1 and 2; raise if shapes or labels are off."""
    session = ort_session(data, threads=1)
    for batch, (w, h) in enumerate(sizes, start=1):
        image = torch.randint(0, 256, (batch, 3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(w))
        logits, labels = session.run(["logits", "labels"], {"image": image.numpy()})
        with torch.inference_mode():
            ref, _ = wrapper(image)
        if logits.shape != tuple(ref.shape) or labels.shape != (batch, h, w) or labels.dtype != np.uint8:
            raise RuntimeError(f"at {w}x{h} the graph gives logits {logits.shape}, labels {labels.shape} {labels.dtype}")
        if not np.array_equal(labels, logits.argmax(1).astype(np.uint8)):
            raise RuntimeError(f"at {w}x{h} the labels output is not the argmax of the logits")


def argmax_agreement(session, wrapper: ExportWrapper, image: np.ndarray) -> float:
    """Fraction of pixels where onnxruntime's labels equal fp32 torch's argmax; ``image`` (H, W, 3) uint8."""
    x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None]
    (labels,) = session.run(["labels"], {"image": x.numpy()})
    with torch.inference_mode():
        ref, _ = wrapper(x)
    return float((torch.from_numpy(labels).long() == ref.argmax(1)).double().mean())


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    opset: int = DEFAULT_OPSET,
    exporter: str = "auto",
    check_images: list[Path] | None = None,
    min_agreement: float = EXPORT_AGREEMENT,
    config: dict[str, Any] | None = None,
) -> ExportReport:
    """Export ``model`` to ``path`` (written atomically) and check it with onnxruntime.

    The file carries :func:`export_metadata` (classes, palette, input, version, ``config``) and the
    checksum of its graph. The check runs the file on a random 320x192 image and on every ``check_images`` file (real
    frames, read as RGB) and compares its ``labels`` with the argmax of fp32 torch.

    Raises:
        CitysegError: export failed, a check image is unreadable, or agreement < ``min_agreement``
            (then no file is written).
    """
    path = Path(path)
    for module in ("onnx", "onnxruntime") + (("onnxscript",) if exporter != "torchscript" else ()):
        require(module, "onnx", "ONNX export")
    data, used = onnx_bytes(model, opset, exporter)
    data = stamp_checksum(data, export_metadata(config, model_normalization(model)))
    wrapper = wrap_for_export(model)
    session = ort_session(data)
    images = [("random 320x192", _example(192, 320)[0].permute(1, 2, 0).numpy())]
    images += [(p.name, read_image(p, "RGB")) for p in check_images or []]
    results = [(name, argmax_agreement(session, wrapper, img)) for name, img in images]
    worst_name, worst = min(results, key=lambda r: r[1])
    if worst < min_agreement:
        raise CitysegError(
            f"{worst_name}: onnxruntime agrees with fp32 torch on {worst:.4%} of pixels, below {min_agreement:.1%}; "
            f"{path} not written"
        )
    try:
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
    except OSError as exc:
        raise CitysegError(f"{path}: cannot write ({exc.strerror or exc})") from None
    return ExportReport(path, used, opset, worst, [name for name, _ in results])


# --- running an ONNX file ----------------------------------------------------------------------


def ort_session(model: str | os.PathLike | bytes, threads: int | None = None, device: str = "cpu"):
    """An onnxruntime InferenceSession with every graph optimisation on.

    Args:
        model: an .onnx file or its bytes.
        threads: intra-op threads; None uses torch's thread count (so both paths use the same cores).
        device: ``"cpu"``, or ``"cuda"`` to prefer the CUDA execution provider where installed.

    Raises:
        CitysegError: onnxruntime is not installed, or the file is not a loadable ONNX model.
    """
    ort = require("onnxruntime", "onnx", "running an .onnx model")
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
        raise CitysegError(f"{name}: not a loadable ONNX model ({first_line(exc)})") from None


class OrtRunner:
    """Run an ONNX model through onnxruntime as a runner that takes RGB pixels (``input_space`` PIXELS).

    It is handed the image as RGB values 0-255: uint8 as read, or float32 after a test-time
    resize. Two graph inputs are accepted: the uint8 RGB ``image`` input of ``cityseg export``
    (which normalises inside the graph: uint8 goes in as it is, resized floats are rounded), or a
    float input that takes ImageNet-normalised images (normalised here). The first output
    (``logits``) is returned.
    """

    input_space = PIXELS

    def __init__(self, session) -> None:
        self.session = session
        inp = session.get_inputs()[0]
        self.input_name = inp.name
        self.uint8 = "uint8" in inp.type
        self.output_name = session.get_outputs()[0].name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, h, w) RGB 0-255, uint8 or float32 -> (N, C, h, w) float32 logits (on the CPU)."""
        (logits,) = self.session.run([self.output_name], {self.input_name: self.feed(x)})
        return torch.from_numpy(logits).float()

    def feed(self, x: torch.Tensor) -> np.ndarray:
        """The graph's input array for RGB values ``x``: uint8 pixels, or normalised float32."""
        x = x.detach().cpu()
        if self.uint8:
            pixels = x if x.dtype == torch.uint8 else x.float().round_().clamp_(0, 255).to(torch.uint8)
            return np.ascontiguousarray(pixels.numpy())
        unit = x if x.dtype == torch.uint8 else x.float() / 255  # normalize() takes uint8 or 0-1 floats
        return np.ascontiguousarray(normalize(unit).numpy())

    def describe(self) -> str:
        return f"onnxruntime {'/'.join(self.session.get_providers())}"
