"""Inference: whole-image and sliding-window prediction with test-time augmentation, and the
:class:`Predictor` API that ``cityseg predict`` and embedding code use.

:func:`predict_logits` is the one inference routine: ``cityseg evaluate --checkpoint``,
``cityseg predict`` and :class:`Predictor` all call it. It takes any callable that maps
``(N, 3, h, w)`` images to logits (a cityseg model, whose forward returns ``{"out": ...}``, or one
of the runners of :mod:`cityseg.inference.runtime`) and returns averaged softmax probabilities at
the input size. The images are in the space the callable takes (:func:`~cityseg.inference.runtime.input_space`):
ImageNet-normalised floats for torch, the RGB pixels for onnxruntime, whose graph normalises them.

Sliding windows follow mmsegmentation's ``slide_inference``: windows of ``crop`` every
``stride``, the last row and column shifted back to end at the image border, so every window has
the same size and the windows can be batched; overlapping pixels average their probabilities.
A ``(C, H, W)`` probability buffer and an ``(H, W)`` count map per image are all that is held at
full resolution, so 2048x1024 frames fit in a few hundred MB whatever the model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cityseg.checkpoint import load_model, with_dataset
from cityseg.config import Config, CRFConfig, apply_overrides, config_from_dict
from cityseg.datasets import DatasetSpec
from cityseg.device import resolve_device
from cityseg.errors import CitysegError
from cityseg.imaging import normalize
from cityseg.inference.crf import check_available, crf_labels
from cityseg.inference.onnx import OrtRunner, check_classes, ort_session, verify_onnx
from cityseg.inference.options import InferenceChoices, apply_choices, eval_options, merge_options
from cityseg.inference.runtime import build_runner, choose_path, int8_device, runner_input

#: Anything that maps (N, 3, h, w) float images to (N, C, h, w) logits or ``{"out": logits}``.
LogitsFn = Callable[[torch.Tensor], "torch.Tensor | dict[str, torch.Tensor]"]

MODES = ("whole", "sliding")


def model_logits(model: LogitsFn, x: torch.Tensor) -> torch.Tensor:
    """Run ``model`` on ``x`` (N, 3, h, w) -> (N, C, h, w) float32 logits at ``x``'s size.

    Accepts models returning torchvision's ``{"out": ...}`` dict or a bare tensor; outputs
    at another size (a model without a final upsampling) are resized bilinearly.
    """
    out = model(x)
    logits = out["out"] if isinstance(out, dict) else out
    logits = logits.float()
    if logits.shape[-2:] != x.shape[-2:]:
        logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
    return logits


def window_starts(size: int, crop: int, stride: int) -> list[int]:
    """Start offsets of sliding windows along one axis (mmsegmentation's grid).

    The windows ``[s, s + min(crop, size))`` cover ``[0, size)``; the last one is shifted back to
    end at the border, so all have the same length. E.g. ``window_starts(10, 4, 3) == [0, 3, 6]``.
    """
    crop = min(crop, size)
    count = max(size - crop + stride - 1, 0) // stride + 1
    return sorted({min(i * stride, size - crop) for i in range(count)})


def check_window(crop: tuple[int, int], stride: tuple[int, int]) -> None:
    """Raise CitysegError unless ``0 < stride <= crop`` on both axes (else pixels go unseen)."""
    for axis, c, s in zip("wh", crop, stride, strict=True):
        if c <= 0 or s <= 0:
            raise CitysegError(f"sliding window: crop {crop} and stride {stride} (WxH) must be positive")
        if s > c:
            raise CitysegError(
                f"sliding window: stride {s} > crop {c} along {'width' if axis == 'w' else 'height'} leaves pixels "
                "unpredicted; use a stride <= the crop size"
            )


def _whole_probs(model: LogitsFn, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Softmax of the model on whole images, ``batch_size`` at a time -> (N, C, h, w) float32."""
    return torch.cat([model_logits(model, chunk).softmax(1) for chunk in x.split(batch_size)])


def _sliding_probs(
    model: LogitsFn, x: torch.Tensor, crop: tuple[int, int], stride: tuple[int, int], batch_size: int
) -> torch.Tensor:
    """Average softmax over sliding windows -> (N, C, h, w) float32 at ``x``'s size.

    ``crop`` and ``stride`` are (width, height). Windows of one image are run ``batch_size``
    at a time and accumulated into a probability buffer and a count map.
    """
    n, _, h, w = x.shape
    (cw, ch), (sw, sh) = crop, stride
    ch, cw = min(ch, h), min(cw, w)
    boxes = [(y, xx) for y in window_starts(h, ch, sh) for xx in window_starts(w, cw, sw)]
    outputs = []
    for image in x:
        probs: torch.Tensor | None = None
        count = torch.zeros((1, h, w), dtype=torch.float32, device=x.device)
        for first in range(0, len(boxes), batch_size):
            chunk = boxes[first : first + batch_size]
            crops = torch.stack([image[:, y : y + ch, xx : xx + cw] for y, xx in chunk])
            window_probs = model_logits(model, crops).softmax(1)
            if probs is None:  # the class count is known only after the first forward pass
                probs = window_probs.new_zeros((window_probs.shape[1], h, w))
            for (y, xx), p in zip(chunk, window_probs, strict=True):
                probs[:, y : y + ch, xx : xx + cw] += p
                count[:, y : y + ch, xx : xx + cw] += 1
        outputs.append(probs / count)
    return torch.stack(outputs)


def _scaled(images: torch.Tensor, scale: float) -> torch.Tensor:
    """``images`` resized bilinearly by ``scale`` (uint8 pixels become float32 0-255 to be resized)."""
    if scale == 1.0:
        return images
    h, w = images.shape[-2:]
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    return F.interpolate(images.float(), size=size, mode="bilinear", align_corners=False)


def predict_logits(
    model: LogitsFn,
    images: torch.Tensor,
    mode: str = "whole",
    crop: tuple[int, int] = (1024, 512),
    stride: tuple[int, int] = (683, 341),
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    batch_size: int = 4,
) -> torch.Tensor:
    """Class probabilities of ``images``, averaged over scales, flips and sliding windows.

    Args:
        model: a cityseg model in eval mode, or any callable from images to logits (a runner).
        images: (N, 3, H, W) on the model's device, in the space ``model`` takes: float32 normalised
            with ImageNet mean/std, or RGB pixels (uint8 or float32 0-255) for a PIXELS runner.
        mode: ``"whole"`` (one pass per image) or ``"sliding"`` (windows of ``crop``).
        crop: sliding-window size (width, height); clipped to the (scaled) image.
        stride: sliding-window step (width, height); at most ``crop``.
        scales: multi-scale test-time augmentation; each scale resizes the image bilinearly
            and its probabilities are resized back to (H, W).
        flip: add a horizontally flipped pass per scale (its output is flipped back).
        batch_size: images (whole) or windows (sliding) per forward pass.

    Returns:
        (N, C, H, W) float32 probabilities: the mean over passes of the per-pass softmax.
        Despite the name (kept for the evaluation interface) these are probabilities, not logits.

    Raises:
        CitysegError: unknown mode, bad window, no or non-positive scales.
    """
    if mode not in MODES:
        raise CitysegError(f"inference mode {mode!r}; valid: {', '.join(MODES)}")
    if not scales or any(s <= 0 for s in scales):
        raise CitysegError(f"scales {list(scales)}: need at least one positive scale")
    if mode == "sliding":
        check_window(tuple(crop), tuple(stride))
    if images.ndim != 4 or images.shape[1] != 3:
        raise CitysegError(f"images must be (N, 3, H, W); got {tuple(images.shape)}")
    size = images.shape[-2:]
    total: torch.Tensor | None = None
    passes = 0
    with torch.inference_mode():
        for scale in scales:
            x = _scaled(images, float(scale))
            for flipped in (False, True) if flip else (False,):
                xi = x.flip(-1) if flipped else x
                if mode == "whole":
                    probs = _whole_probs(model, xi, batch_size)
                else:
                    probs = _sliding_probs(model, xi, tuple(crop), tuple(stride), batch_size)
                if flipped:
                    probs = probs.flip(-1)
                if probs.shape[-2:] != size:
                    probs = F.interpolate(probs, size=size, mode="bilinear", align_corners=False)
                total = probs if total is None else total.add_(probs)
                passes += 1
    assert total is not None
    return total / passes


def passes_per_shape(
    sizes: Sequence[tuple[int, int]],
    mode: str = "whole",
    crop: tuple[int, int] = (1024, 512),
    stride: tuple[int, int] = (683, 341),
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
) -> dict[tuple[int, int], int]:
    """Forward passes (per image) that :func:`predict_logits` makes for each input shape ``(h, w)``.

    ``sizes`` are the images' (width, height), as PIL's ``Image.size`` gives them (which reads only
    a file's header); the other options are those of :func:`predict_logits`. Each scale is its own
    shape, a flip doubles the passes of its shape, and sliding windows count once per window (all
    windows of an image have one shape). The largest count is the ``work`` of
    :func:`cityseg.inference.runtime.default_path`.
    """
    counts: dict[tuple[int, int], int] = {}
    (cw, ch), (sw, sh) = crop, stride
    for width, height in sizes:
        for scale in scales:
            h, w = max(1, round(height * scale)), max(1, round(width * scale))
            if mode == "sliding":
                shape = (min(ch, h), min(cw, w))
                passes = len(window_starts(h, shape[0], sh)) * len(window_starts(w, shape[1], sw))
            else:
                shape, passes = (h, w), 1
            counts[shape] = counts.get(shape, 0) + passes * (2 if flip else 1)
    return counts


# --- the embedding API ---------------------------------------------------------------------------


class Predictor:
    """Load a model once, then segment RGB arrays: the Python API for embedding cityseg.

    Example::

        from cityseg import Predictor

        predictor = Predictor.from_file("runs/demo/checkpoints/best.pt")   # or model.safetensors, m.onnx
        train_ids = predictor.predict(rgb)   # rgb: (H, W, 3) uint8 -> (H, W) uint8 trainIds
        colour = cityseg.labels.colorize(train_ids)   # official palette, (H, W, 3) uint8

    Construct with :meth:`from_file` (which picks one of the next two by the file),
    :meth:`from_checkpoint`, :meth:`from_onnx` or :meth:`from_model`; the
    keyword options (``mode``, ``crop``, ``stride``, ``scales``, ``flip``, ``batch_size``,
    ``crf``) are those of :func:`predict_logits`, plus a :class:`~cityseg.config.CRFConfig`
    to refine every prediction with a dense CRF.

    Used from Python the workload is not known in advance, so the default path is eager torch
    (bf16 autocast where the hardware has native bf16, else fp32 channels_last), which has no
    per-shape compilation to pay; for a long stream of same-size frames pass ``runtime="compile"``
    (or ``work=``, see :meth:`from_model`). ``cityseg predict`` counts its frames per size and
    chooses for itself.
    """

    def __init__(
        self,
        runner: LogitsFn,
        path: str,
        mode: str = "whole",
        crop: tuple[int, int] = (1024, 512),
        stride: tuple[int, int] = (683, 341),
        scales: Sequence[float] = (1.0,),
        flip: bool = False,
        batch_size: int = 1,
        crf: CRFConfig | None = None,
    ) -> None:
        if mode not in MODES:
            raise CitysegError(f"inference mode {mode!r}; valid: {', '.join(MODES)}")
        if mode == "sliding":
            check_window(tuple(crop), tuple(stride))
        if batch_size < 1:
            raise CitysegError(f"batch size {batch_size}: must be >= 1")
        if crf is not None:
            check_available()
        self.runner = runner
        self.path = path  #: the inference path (see cityseg.inference.runtime.PATHS)
        self.reason: str | None = None  #: why the path was chosen (set by from_model), for describe()
        self.options = {"mode": mode, "crop": tuple(crop), "stride": tuple(stride), "scales": tuple(scales),
                        "flip": flip, "batch_size": batch_size}
        self.crf = crf
        #: the dataset whose classes the model predicts (names, colours, raw ids); None: Cityscapes
        self.spec: DatasetSpec | None = None
        #: the config the options came from (:meth:`from_checkpoint`, :meth:`from_onnx`); None: given by hand
        self.config: Config | None = None
        # runners take inputs anywhere and move them; the input tensor is built on the model's device
        self.device = getattr(runner, "device", torch.device("cpu"))

    @classmethod
    def from_model(
        cls,
        model: torch.nn.Module,
        device: str = "auto",
        precision: str = "auto",
        runtime: str = "auto",
        *,
        work: int | None = None,
        shapes: int | None = None,
        calibration: str | Path | None = None,
        checkpoint: str | Path | None = None,
        **options,
    ) -> Predictor:
        """Wrap a cityseg model (its forward returns ``{"out": logits}``) on the chosen path.

        ``device``: auto | cpu | cuda; ``precision``: auto | fp32 | bf16 | int8; ``runtime``: auto |
        torch | compile | onnxruntime (see :func:`cityseg.inference.runtime.select_path`). ``runtime="auto"``
        chooses by ``work``, the largest number of forward passes that will share one input shape
        (:func:`passes_per_shape`; ``shapes``: how many shapes, for :meth:`describe` only): eager
        (bf16 autocast on hardware with native bf16, else fp32 channels_last) unless ``work``
        reaches :data:`~cityseg.inference.runtime.COMPILE_PAYS_FROM`, then ``torch.compile``, whose
        first call for each input size compiles (~30 s for DeepLabV3-ResNet50 on 2 cores, cached on
        disk). Without ``work`` (a workload not known in advance) the default is eager; pass
        ``runtime="compile"`` to compile for a long stream of same-size frames.

        ``precision="int8"`` (CPU only; ``device="auto"`` means the CPU) needs ``calibration``, a
        folder of a few dozen photos like the ones to segment: the model is quantised statically with
        onnxruntime (:mod:`cityseg.inference.int8`) and run on the uint8 pixels, with sliding windows,
        TTA and batches as on any path. The int8 model is cached beside ``checkpoint`` (the file the
        model came from; None: in ``~/.cache/cityseg/int8``) and reused while the weights, the
        calibration files and the quantisation settings are the same. Where the CPU has no VNNI
        the default path runs instead, with one warning. Example::

            Predictor.from_model(model, precision="int8", calibration="photos/calib")

        Raises:
            CitysegError: a bad device, precision or runtime; ``calibration`` missing with int8 or
                given without it; int8 on a GPU.
        """
        from cityseg.inference.int8 import check_calibration

        check_calibration(precision, calibration)
        dev = int8_device(device) if precision == "int8" else resolve_device(device)
        path, reason = choose_path(dev, precision, runtime, work, shapes)
        extra = {"calibration": calibration, "cache_beside": checkpoint} if path == "int8" else {}
        predictor = cls(build_runner(path, model, dev, **extra), path, **options)
        predictor.reason = reason
        return predictor

    @classmethod
    def from_file(
        cls, path: str | Path, device: str = "auto", precision: str = "auto", runtime: str = "auto", **options
    ) -> Predictor:
        """Load any model file cityseg writes -> Predictor: an ``.onnx`` export with :meth:`from_onnx`, anything
        else (a ``.pt`` checkpoint, a ``.safetensors`` export) with :meth:`from_checkpoint`.

        ``device``, ``precision`` and ``runtime`` are those of :meth:`from_model`; an ONNX model runs with
        onnxruntime in fp32, on the CPU unless ``device="cuda"``. ``options``: those of the chosen constructor.

        Raises:
            CitysegError: not a file cityseg reads, or a bf16/torch setting for an ONNX model.
        """
        if Path(path).suffix.lower() != ".onnx":
            return cls.from_checkpoint(path, device, precision, runtime, **options)
        if precision not in ("auto", "fp32") or runtime not in ("auto", "onnxruntime"):
            raise CitysegError(f"{path}: an ONNX model runs with onnxruntime in fp32; valid: precision auto or fp32, "
                               "runtime auto or onnxruntime")
        return cls.from_onnx(path, device="cuda" if device == "cuda" else "cpu", **options)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        device: str = "auto",
        precision: str = "auto",
        runtime: str = "auto",
        *,
        overrides: Sequence[str] = (),
        dataset: Any = None,
        choices: InferenceChoices | None = None,
        sizes: Sequence[tuple[int, int]] | Callable[[Config], Sequence[tuple[int, int]]] | None = None,
        work: int | None = None,
        calibration: str | Path | None = None,
        crf: bool | CRFConfig | None = None,
        batch_size: int = 1,
        **options,
    ) -> Predictor:
        """Load a cityseg checkpoint, ``.pt`` or ``.safetensors`` (CitysegError if it is not one), or an
        ``hf:REPO_OR_DIR`` model -> Predictor: the one loader of ``cityseg predict``, ``cityseg evaluate
        --checkpoint``, training's closing score and embedding code.

        What runs is the checkpoint's ``eval`` section (:mod:`cityseg.inference.options`), changed by
        ``overrides`` (``section.key=value``, as ``--set``), then ``choices`` (the command line's
        inference flags), then ``options`` (``mode``, ``crop``, ``stride``, ``scales``, ``flip`` as
        :func:`predict_logits` takes them); a choice or option that is None keeps the checkpoint's value.
        How it runs is :meth:`from_model`'s choice for ``device``, ``precision`` and ``runtime``.

        Args:
            dataset: the classes to predict (a name or description file), which must be the model's
                (None: the checkpoint's own; Cityscapes for ``hf:``).
            sizes: the (width, height) of every image to come, or a function from the resolved config to
                them: with ``runtime="auto"`` they choose eager or compiled by the forward passes per input
                shape (:func:`passes_per_shape`). ``work`` gives that count directly; neither: eager.
            calibration: the photo folder of ``precision="int8"``; the int8 model is cached beside ``path``.
            crf: True refines every prediction with a dense CRF of the config's ``crf`` section (or
                the :class:`~cityseg.config.CRFConfig` given).

        The resolved config is :attr:`config`.
        """
        model, cfg = load_model(path, "cpu", dataset)
        cfg = _configured(with_dataset(cfg, dataset, path), overrides, choices)
        options = merge_options(cfg, options)
        shapes = None
        if sizes is not None:
            counts = passes_per_shape(list(sizes(cfg) if callable(sizes) else sizes), **options)
            work, shapes = max(counts.values(), default=0), len(counts)
        predictor = cls.from_model(model, device, precision, runtime, work=work, shapes=shapes,
                                   calibration=calibration, checkpoint=path, batch_size=batch_size,
                                   crf=cfg.crf if crf is True else crf or None, **options)
        predictor.spec, predictor.config = cfg.spec(), cfg
        return predictor

    @classmethod
    def from_onnx(
        cls,
        path: str | Path,
        threads: int | None = None,
        device: str = "cpu",
        dataset: Any = None,
        *,
        overrides: Sequence[str] = (),
        choices: InferenceChoices | None = None,
        crf: bool | CRFConfig | None = None,
        batch_size: int = 1,
        **options,
    ) -> Predictor:
        """Load a model written by ``cityseg export`` (checked by :func:`~cityseg.inference.onnx.verify_onnx`)
        and run it with onnxruntime (fp32) on the uint8 pixels. Its classes come from its metadata
        (``dataset``: a name or description file they must match; None: no check). The inference options
        are those of a default config's ``eval`` section changed as :meth:`from_checkpoint` changes them."""
        spec = check_classes(verify_onnx(path), path, dataset)
        cfg = _configured(Config(dataset=spec.to_dict()), overrides, choices)
        predictor = cls(OrtRunner(ort_session(path, threads, device)), "onnxruntime", batch_size=batch_size,
                        crf=cfg.crf if crf is True else crf or None, **merge_options(cfg, options))
        predictor.spec, predictor.config = spec, cfg
        return predictor

    def probabilities(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """(N, C, H, W) float32 probabilities of N same-size (H, W, 3) uint8 RGB images (on the CPU)."""
        return self.probabilities_of(stack_rgb(images, self.device)).cpu()

    def probabilities_of(self, batch: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) float32 probabilities, on the predictor's device, of an (N, 3, H, W) batch: uint8 RGB
        pixels, or float32 ImageNet-normalised images as the datasets' validation transform gives them
        (what ``cityseg evaluate --checkpoint`` scores, as training validates)."""
        x = runner_input(self.runner, batch.to(self.device))
        return predict_logits(self.runner, x, **self.options)

    def predict(self, image: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 RGB -> (H, W) uint8 trainIds (CRF-refined when the predictor has a CRF config)."""
        return self.predict_batch([image])[0]

    def predict_batch(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Segment several images (any sizes; same-size ones share forward passes) -> list of (H, W) uint8."""
        results: list[np.ndarray | None] = [None] * len(images)
        by_size: dict[tuple[int, ...], list[int]] = {}
        for i, image in enumerate(images):
            check_rgb(image, f"image {i}")
            by_size.setdefault(image.shape, []).append(i)
        step = self.options["batch_size"]
        for indices in by_size.values():
            for first in range(0, len(indices), step):
                chunk = indices[first : first + step]
                probs = self.probabilities([images[i] for i in chunk]).numpy()
                for i, p in zip(chunk, probs, strict=True):
                    results[i] = self._labels(p, images[i])
        return results  # type: ignore[return-value]

    def _labels(self, probs: np.ndarray, image: np.ndarray) -> np.ndarray:
        if self.crf is not None:
            return crf_labels(probs, image, self.crf)
        return probs.argmax(0).astype(np.uint8)

    def describe_inference(self) -> str:
        """What every image gets, e.g. ``whole image, scales 0.75,1,1.25 + flip``."""
        o = self.options
        mode = "whole image" if o["mode"] == "whole" else f"sliding {o['crop'][0]}x{o['crop'][1]} windows"
        scales = f", scales {','.join(f'{s:g}' for s in o['scales'])}" if list(o["scales"]) != [1.0] else ""
        return mode + scales + (" + flip" if o["flip"] else "")

    def describe(self) -> str:
        """One line: why the path, the path and the runner (e.g. ``eager bf16: at most 2 passes of one
        shape, compiling pays from ~60 (bf16: torch bf16 channels_last on cpu)``)."""
        describe = getattr(self.runner, "describe", None)
        path = f"{self.path}: {describe() if describe else type(self.runner).__name__}"
        return f"{self.reason} ({path})" if self.reason else path


def check_rgb(image: np.ndarray, what: str = "image") -> None:
    """Raise CitysegError unless ``image`` is a (H, W, 3) uint8 array."""
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        shape = getattr(image, "shape", None)
        raise CitysegError(f"{what}: expected a (H, W, 3) uint8 RGB array, got {type(image).__name__} "
                           f"{shape} {getattr(image, 'dtype', '')}")


def stack_rgb(images: Sequence[np.ndarray], device: torch.device | str = "cpu") -> torch.Tensor:
    """N same-size (H, W, 3) uint8 RGB arrays -> one (N, 3, H, W) uint8 tensor on ``device`` (a channels-last view)."""
    batch = torch.from_numpy(np.stack([np.ascontiguousarray(im) for im in images])).to(device)
    return batch.permute(0, 3, 1, 2)


def to_input(images: Sequence[np.ndarray], device: torch.device | str = "cpu") -> torch.Tensor:
    """N same-size (H, W, 3) uint8 RGB arrays -> (N, 3, H, W) float32 normalised with ImageNet mean/std."""
    return normalize(stack_rgb(images, device)).contiguous()


def _configured(cfg: Config, overrides: Sequence[str], choices: InferenceChoices | None) -> Config:
    """``cfg`` changed by ``--set`` strings, then by the inference ``choices``."""
    if overrides:
        cfg = config_from_dict(apply_overrides(cfg.to_dict(), list(overrides)), name=cfg.name)
    return apply_choices(cfg, choices)

