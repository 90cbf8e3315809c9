"""cityseg: semantic segmentation of street scenes on Cityscapes.

``from cityseg import Predictor`` gives the embedding API (:class:`cityseg.inference.predict.Predictor`).
It is imported on first use (PEP 562), so that ``import cityseg`` (and ``cityseg --help``) does not load torch.
"""

from __future__ import annotations

from typing import Any

from cityseg._version import __version__
__all__ = ["Predictor", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "Predictor":
        from cityseg.inference.predict import Predictor

        return Predictor
    raise AttributeError(f"module 'cityseg' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
