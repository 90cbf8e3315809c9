"""The embedding API: :class:`Predictor` loads a model once and segments RGB arrays; ``cityseg
predict``, ``cityseg evaluate --checkpoint`` and training's closing score load through it.

A Predictor holds a runner (how the model runs, :mod:`cityseg.inference.runtime`, on the path
:func:`cityseg.inference.paths.choose_path` picks) and the inference options; its probabilities
come from :func:`cityseg.inference.passes.predict_probs` (sliding windows, TTA).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cityseg.checkpoint import load_model, with_dataset
from cityseg.config import Config, CRFConfig, apply_overrides, config_from_dict
from cityseg.datasets import DatasetSpec
from cityseg.device import resolve_device
from cityseg.errors import CitysegError
from cityseg.imaging import normalize
from cityseg.inference.crf import check_available, crf_labels
from cityseg.inference.onnx import OrtRunner, check_classes, ort_session, verify_onnx
from cityseg.inference.options import InferenceChoices, apply_choices, merge_options
from cityseg.inference.passes import MODES, LogitsFn, check_window, passes_per_shape, predict_probs
from cityseg.inference.paths import choose_path, int8_device
from cityseg.inference.runtime import build_runner, runner_input


class Predictor:
    """Load a model once, then segment RGB arrays: the Python API for embedding cityseg.

    Example::

        from cityseg import Predictor

        predictor = Predictor.from_file("runs/demo/checkpoints/best.pt")   # or model.safetensors, m.onnx
        train_ids = predictor.predict(rgb)   # rgb: (H, W, 3) uint8 -> (H, W) uint8 trainIds
        colour = cityseg.labels.colorize(train_ids)   # official palette, (H, W, 3) uint8

    Construct with :meth:`from_file` (which picks one of the next two by the file),
    :meth:`from_checkpoint`, :meth:`from_onnx` or :meth:`from_model`; the
    keyword options (``mode``, ``crop``, ``stride``, ``scales``, ``flip``, ``batch_size``) are those of
    :func:`~cityseg.inference.passes.predict_probs`, and ``crf`` a :class:`~cityseg.config.CRFConfig`
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
        torch | compile | onnxruntime (see :func:`cityseg.inference.paths.select_path`). ``runtime="auto"``
        chooses by ``work``, the largest number of forward passes that will share one input shape
        (:func:`~cityseg.inference.passes.passes_per_shape`; ``shapes``: how many shapes, for :meth:`describe`
        only): eager (bf16 autocast on hardware with native bf16, else fp32 channels_last) unless ``work``
        reaches :data:`~cityseg.inference.paths.COMPILE_PAYS_FROM`, then ``torch.compile``, whose
        first call for each input size compiles (about half a minute for DeepLabV3-ResNet50 on a small CPU,
        BENCHMARKS.md; cached on disk). Without ``work`` (a workload not known in advance) the default is
        eager; pass ``runtime="compile"`` to compile for a long stream of same-size frames.

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
        :func:`~cityseg.inference.passes.predict_probs` takes them); a choice or option that is None keeps
        the checkpoint's value.
        How it runs is :meth:`from_model`'s choice for ``device``, ``precision`` and ``runtime``.

        Args:
            dataset: the classes to predict (a name or description file), which must be the model's
                (None: the checkpoint's own; Cityscapes for ``hf:``).
            sizes: the (width, height) of every image to come, or a function from the resolved config to
                them: with ``runtime="auto"`` they choose eager or compiled by the forward passes per input
                shape (:func:`~cityseg.inference.passes.passes_per_shape`). ``work`` gives that count
                directly; neither: eager.
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
        return predict_probs(self.runner, x, **self.options)

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

    def predict_video(self, source: str | Path | Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """(H, W) uint8 trainIds of each frame of ``source``, lazily, in order: a video file (any container
        and codec FFmpeg reads, decoded in a thread ahead of the model) or an iterable of (H, W, 3) uint8
        RGB frames. Frames go through :meth:`predict_batch` ``batch_size`` at a time, so memory stays flat
        in the video's length. Example::

            for i, train_ids in enumerate(predictor.predict_video("drive.mp4")):
                ...

        Raises:
            CitysegError: at once, ``source`` is a file that is no video; a video damaged mid-stream
                ends after the frames before the damage, with one logged warning.
        """
        from cityseg.inference.video_io import stream_labels

        return stream_labels(self.predict_batch, source, self.options["batch_size"])

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

