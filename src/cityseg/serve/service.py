"""The model behind ``cityseg serve``: a loaded :class:`~cityseg.inference.predict.Predictor`, what it
says about itself (``GET /v1/model``), its warm-up and its bounded pool of workers.

Framework-free: :func:`cityseg.serve.app.create_app` puts the HTTP routes on a :class:`Service`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cityseg._version import __version__
from cityseg.datasets import IGNORE_INDEX, DatasetSpec, load_dataset
from cityseg.imaging import IMAGENET, Normalization, model_normalization
from cityseg.inference.predict import Predictor
from cityseg.processes import usable_cores
from cityseg.serve import images
from cityseg.serve.pool import InferencePool

log = logging.getLogger(__name__)

#: The size of the warm-up inference (a Cityscapes frame, the typical request).
WARMUP_SIZE = (2048, 1024)


def default_workers(n_cores: int | None = None) -> int:
    """Inference threads: one per core, at most 2 (each with cores / workers torch threads). On the shared
    2-core machine (BENCHMARKS.md, "Serving") 2 workers x 1 thread and 1 x 2 served within the noise of
    each other; two single-threaded workers are the default as one's decoding and PNG encoding overlap
    the other's inference, and a worker of one thread cannot stall on a core another process holds."""
    return max(1, min(2, n_cores or usable_cores()))


@dataclass(frozen=True)
class Settings:
    """How the service runs: the request limits, the bearer token (None: none needed), the pool."""

    limits: images.Limits = images.Limits()
    token: str | None = None
    workers: int = 1
    queue: int = 16
    max_batch: int = 1
    threads: int | None = None  # torch threads per worker (None: cores // workers)


class Service:
    """A Predictor served: ``ready`` once warmed up; :meth:`segment` runs a job in the pool.

    Args:
        predictor: the loaded model.
        settings: limits, token, pool sizes.
        name: the model's name for the answers (default: the config's ``model.name``, an ONNX
            export's recorded one).
        source: what the model was loaded from (a file name, shown; never a path the client gives).
    """

    def __init__(self, predictor: Predictor, settings: Settings = Settings(), name: str | None = None,
                 source: str | None = None) -> None:
        self.predictor = predictor
        self.settings = settings
        self.spec: DatasetSpec = predictor.spec or load_dataset("cityscapes")
        recorded = _onnx_metadata(predictor)
        self.name = name or _model_name(predictor, recorded)
        self.source = Path(source).name if source and not str(source).startswith("hf:") else source
        self.normalization = _normalization(predictor, recorded)
        self.ready = False
        threads = settings.threads or max(1, usable_cores() // settings.workers)
        self.threads = threads
        self.pool = InferencePool(predictor.predict_batch, settings.workers, settings.queue, settings.max_batch,
                                  thread_setup=lambda: _set_threads(threads),
                                  pixel_budget=settings.limits.max_pixels)  # memory: one largest image at a time

    def warm_up(self, size: tuple[int, int] = WARMUP_SIZE) -> None:
        """One inference of a ``size`` (width, height) frame in every worker, then ``ready``: the first
        requests do not pay the first call's setup (allocator, oneDNN kernels)."""
        width, height = size
        frame = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
        futures = [self.pool.submit(lambda: frame, lambda image, ids: None) for _ in range(self.pool.workers)]
        for future in futures:
            future.result()
        self.ready = True

    def segment(self, data: bytes, output: str) -> tuple[Callable[[], np.ndarray], Callable[..., Any]]:
        """The pool job of one upload (already :func:`~cityseg.serve.images.probe`-d): returns
        ``(prepare, finish)`` for :meth:`InferencePool.run`."""
        about = self.about()

        def finish(image: np.ndarray, train_ids: np.ndarray) -> bytes | dict:
            return images.answer(output, image, train_ids, self.spec, about)

        return (lambda: images.decode(data)), finish

    def about(self) -> dict[str, Any]:
        """The model in the JSON answer of ``/v1/segment``."""
        return {"model": self.name, "dataset": self.spec.name, "runtime": self.predictor.path}

    def model_info(self) -> dict[str, Any]:
        """``GET /v1/model``: classes, palette, input, runtime, limits, version."""
        p, s = self.predictor, self.settings
        return {
            "model": self.name,
            "source": self.source,
            "dataset": self.spec.name,
            "classes": [{"train_id": i, "name": c.name, "color": list(c.color)} for i, c in enumerate(self.spec.classes)],
            "palette": [[int(v) for v in rgb] for rgb in self.spec.palette],
            "ignore_index": IGNORE_INDEX,
            "input": {"content_types": list(images.IMAGE_TYPES), "channels": "RGB", "range": [0, 255],
                      "normalization": {**self.normalization.to_dict(),
                                        "applied": "by the server: send the photo as it is"},
                      "max_pixels": s.limits.max_pixels, "max_bytes": s.limits.max_bytes},
            "inference": p.describe_inference(),
            "runtime": {"path": p.path, "device": str(p.device), "describe": p.describe(),
                        "workers": s.workers, "threads_per_worker": self.threads, "queue": s.queue,
                        "max_batch": s.max_batch},
            "outputs": list(images.OUTPUTS),
            "version": __version__,
        }

    def close(self) -> None:
        self.pool.close()


def _set_threads(n: int) -> None:
    import torch

    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


def _onnx_metadata(predictor: Predictor) -> dict[str, str]:
    """The custom metadata of an onnxruntime runner's model ({} for torch runners)."""
    session = getattr(predictor.runner, "session", None)
    try:
        return dict(session.get_modelmeta().custom_metadata_map) if session is not None else {}
    except Exception:  # noqa: BLE001 - metadata is informative only
        return {}


def _model_name(predictor: Predictor, recorded: dict[str, str]) -> str:
    if "cityseg.config" in recorded:
        try:
            return str(json.loads(recorded["cityseg.config"])["model"]["name"])
        except (ValueError, KeyError, TypeError):
            pass
    if predictor.config is not None and not recorded:
        return predictor.config.model.name
    return "onnx model"


def _normalization(predictor: Predictor, recorded: dict[str, str]) -> Normalization:
    model = getattr(predictor.runner, "model", None)
    if model is not None:
        return model_normalization(model)
    try:
        return Normalization.from_dict(json.loads(recorded["cityseg.input"]))
    except (KeyError, ValueError, TypeError):
        return IMAGENET
