"""What a checkpoint's inference runs: the config's ``eval`` section, changed by the caller's choices.

One owner for the inference options (whole image or sliding windows, multi-scale, flip) of every
entry point: ``cityseg predict``, ``cityseg evaluate --checkpoint``, training's closing score and
:meth:`cityseg.inference.predict.Predictor.from_checkpoint`. A choice that is None means "as the
checkpoint says" (its ``eval`` section) everywhere; a choice given replaces that value in the
config's ``eval`` section, which is then parsed once into :func:`eval_options`.
How the chosen passes run (runner, precision, runtime) is :func:`cityseg.inference.paths.choose_path`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from cityseg.config import Config
from cityseg.utils import parse_scales, parse_size

#: ``--precision`` values: how the model computes (:func:`cityseg.inference.paths.select_path`)
PRECISIONS = ("auto", "fp32", "bf16", "int8")
#: ``--runtime`` values: what runs the model
RUNTIMES = ("auto", "torch", "compile", "onnxruntime")

#: ``--tta`` without ``--scales``: the usual Cityscapes multi-scale set (mmsegmentation, DeepLab).
TTA_SCALES = (0.75, 1.0, 1.25)


@dataclasses.dataclass(frozen=True)
class InferenceChoices:
    """Changes to a checkpoint's ``eval`` section; None keeps the checkpoint's value.

    ``crop``, ``stride`` (``"WxH"``) and ``scales`` (``"0.75,1"`` or a sequence of numbers) are
    spelled as the command line spells them. ``tta=True`` is flip plus :data:`TTA_SCALES`,
    ``tta=False`` one pass at scale 1 without flip; an explicit ``scales`` or ``flip`` wins over it.
    """

    sliding: bool | None = None
    crop: str | None = None
    stride: str | None = None
    scales: str | Sequence[float] | None = None
    flip: bool | None = None
    tta: bool | None = None


def apply_choices(cfg: Config, choices: InferenceChoices | None) -> Config:
    """``cfg`` with its ``eval`` section changed by ``choices`` (a copy; ``cfg`` is left as it is).

    Raises:
        CitysegError: a size or scale list that does not parse (naming the option).
    """
    if choices is None:
        return cfg
    ev = dataclasses.replace(cfg.eval, scales=list(cfg.eval.scales))
    if choices.tta is not None:
        ev.scales = list(TTA_SCALES) if choices.tta else [1.0]
        ev.flip = choices.tta
    if choices.scales is not None:
        given = choices.scales
        ev.scales = parse_scales(given) if isinstance(given, str) else parse_scales(",".join(map(str, given)))
    if choices.flip is not None:
        ev.flip = bool(choices.flip)
    if choices.sliding is not None:
        ev.mode = "sliding" if choices.sliding else "whole"
    if choices.crop is not None:
        ev.crop_size = parse_size(choices.crop, "--crop")
    if choices.stride is not None:
        ev.stride = parse_size(choices.stride, "--stride")
    return dataclasses.replace(cfg, eval=ev)


def eval_options(cfg: Config) -> dict[str, Any]:
    """The inference options (``mode``, ``crop``, ``stride``, ``scales``, ``flip``) of a config's
    ``eval`` section, parsed as :func:`~cityseg.inference.passes.predict_probs` takes them."""
    return {
        "mode": cfg.eval.mode,
        "crop": tuple(cfg.eval.crop_size),
        "stride": tuple(cfg.eval.stride),
        "scales": tuple(float(s) for s in cfg.eval.scales),
        "flip": bool(cfg.eval.flip),
    }



def merge_options(cfg: Config, given: dict[str, Any]) -> dict[str, Any]:
    """:func:`eval_options` of ``cfg`` with the Python API's options (``mode="sliding"``, ``flip=False``,
    ``scales=(1.0,)``, ...) that are not None in ``given`` put over it."""
    return {**eval_options(cfg), **{k: v for k, v in given.items() if v is not None}}
