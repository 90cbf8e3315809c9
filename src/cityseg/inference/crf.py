"""Dense CRF refinement (Krähenbühl & Koltun 2011) of softmax output, with the photo as guide.

pydensecrf2 (the optional extra ``cityseg[crf]``; import name ``pydensecrf``) does the mean-field
inference; this module only maps cityseg's arrays and :class:`~cityseg.config.CRFConfig` onto it.

Energy: unary ``-log p`` from the network's probabilities, plus two Potts pairwise terms,
a Gaussian smoothness kernel (``gaussian_sxy``, weight ``gaussian_compat``) and a bilateral
appearance kernel (``bilateral_sxy``, ``bilateral_srgb``, weight ``bilateral_compat``) that
pulls pixels of similar colour nearby towards the same label.

Spatial widths (``*_sxy``) are in pixels of a full-resolution Cityscapes frame
(:data:`REFERENCE_WIDTH` = 2048 wide) and scale with the image width, so one setting means
the same neighbourhood on a 256x128 synthetic frame and on a 2048x1024 photo.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cityseg.config import CRFConfig
from cityseg.errors import CitysegError
from cityseg.utils import require

#: Image width at which the ``*_sxy`` parameters are given in pixels (a Cityscapes frame).
REFERENCE_WIDTH = 2048
#: Probabilities are clipped to this before ``-log`` (pydensecrf's own default).
PROB_CLIP = 1e-5


def _densecrf() -> Any:
    return require("pydensecrf.densecrf", "crf", "--crf", package="pydensecrf2")


def check_available() -> None:
    """Raise CitysegError now (before any model runs) when pydensecrf2 is missing."""
    _densecrf()


def crf_refine(probs: np.ndarray, image: np.ndarray, cfg: CRFConfig | None = None) -> np.ndarray:
    """Refine class probabilities with a dense CRF guided by the photo.

    Args:
        probs: (C, H, W) float probabilities (softmax output; each pixel sums to 1).
        image: (H, W, 3) uint8 RGB photo of the same size, the bilateral kernel's guide.
        cfg: kernel widths, weights and iterations; :class:`CRFConfig` defaults when None.

    Returns:
        (C, H, W) float32 marginals after ``cfg.iterations`` mean-field steps.

    Raises:
        CitysegError: pydensecrf2 is missing, or the arrays do not fit together.
    """
    cfg = cfg or CRFConfig()
    dcrf = _densecrf()
    if probs.ndim != 3 or image.shape != (*probs.shape[1:], 3) or image.dtype != np.uint8:
        raise CitysegError(
            f"CRF: probabilities {probs.shape} and image {image.shape} {image.dtype} do not fit; "
            "expected (C, H, W) and (H, W, 3) uint8"
        )
    c, h, w = probs.shape
    scale = w / REFERENCE_WIDTH
    crf = dcrf.DenseCRF2D(w, h, c)
    unary = -np.log(np.clip(probs, PROB_CLIP, 1.0)).reshape(c, -1)
    crf.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    if cfg.gaussian_compat > 0:
        crf.addPairwiseGaussian(sxy=max(cfg.gaussian_sxy * scale, 1e-3), compat=cfg.gaussian_compat)
    if cfg.bilateral_compat > 0:
        crf.addPairwiseBilateral(
            sxy=max(cfg.bilateral_sxy * scale, 1e-3), srgb=cfg.bilateral_srgb,
            rgbim=np.require(image, np.uint8, ['C', 'W']), compat=cfg.bilateral_compat,  # Cython wants writable
        )
    q = crf.inference(int(cfg.iterations))
    return np.asarray(q, dtype=np.float32).reshape(c, h, w)


def crf_labels(probs: np.ndarray, image: np.ndarray, cfg: CRFConfig | None = None) -> np.ndarray:
    """(H, W) uint8 trainIds: the argmax of :func:`crf_refine`."""
    return crf_refine(probs, image, cfg).argmax(0).astype(np.uint8)
