"""Dense CRF refinement: a toy case it must fix, settings it must keep, and clear errors."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from cityseg.config import CRFConfig
from cityseg.errors import CitysegError
from cityseg.inference import crf


def two_regions(h: int = 32, w: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """A photo whose left half is dark red and right half light blue, and the true labels (0 | 1)."""
    image = np.zeros((h, w, 3), np.uint8)
    image[:, : w // 2] = (120, 20, 20)
    image[:, w // 2 :] = (150, 200, 240)
    truth = np.zeros((h, w), np.uint8)
    truth[:, w // 2 :] = 1
    return image, truth


def noisy_probs(truth: np.ndarray, classes: int = 3, flip_fraction: float = 0.15, seed: int = 0) -> np.ndarray:
    """Mostly-right softmax: 0.7 on the true class, but a random 15% of pixels put 0.55 on the other."""
    rng = np.random.default_rng(seed)
    probs = np.full((classes, *truth.shape), 0.05, np.float32)
    wrong = rng.random(truth.shape) < flip_fraction
    other = 1 - truth
    for c in range(2):
        probs[c][truth == c] = np.where(wrong[truth == c], 0.35, 0.85)
        probs[c][other == c] = np.where(wrong[other == c], 0.55, 0.05)
    probs[2] = 1 - probs[0] - probs[1]
    return probs


def test_crf_removes_salt_and_pepper_errors_inside_coloured_regions():
    pytest.importorskip("pydensecrf.densecrf")
    image, truth = two_regions()
    image.setflags(write=False)  # as decoded images often are
    probs = noisy_probs(truth)
    before = (probs.argmax(0) == truth).mean()
    refined = crf.crf_refine(probs, image, CRFConfig())
    after = (refined.argmax(0) == truth).mean()
    assert before < 0.9  # the 15% flipped pixels are wrong before
    assert after == 1.0  # the bilateral kernel within each colour region outvotes them
    assert refined.shape == probs.shape and refined.dtype == np.float32
    np.testing.assert_allclose(refined.sum(0), 1.0, atol=1e-4)  # marginals are distributions


def test_crf_keeps_confident_correct_labels():
    pytest.importorskip("pydensecrf.densecrf")
    image, truth = two_regions()
    probs = noisy_probs(truth, flip_fraction=0.0)
    np.testing.assert_array_equal(crf.crf_labels(probs, image), truth)


def test_crf_without_pairwise_terms_is_the_network_argmax():
    pytest.importorskip("pydensecrf.densecrf")
    image, truth = two_regions()
    probs = noisy_probs(truth)
    off = CRFConfig(gaussian_compat=0.0, bilateral_compat=0.0)
    np.testing.assert_array_equal(crf.crf_labels(probs, image, off), probs.argmax(0))


def test_crf_missing_package_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)  # makes the import raise ImportError
    with pytest.raises(CitysegError, match=r'--crf needs pydensecrf2, which is not installed; pip install "cityseg\[crf\]"'):
        crf.check_available()
    image, truth = two_regions()
    with pytest.raises(CitysegError, match="pydensecrf2"):
        crf.crf_refine(noisy_probs(truth), image)


def test_crf_shape_mismatch_is_a_clear_error():
    pytest.importorskip("pydensecrf.densecrf")
    image, truth = two_regions()
    with pytest.raises(CitysegError, match="do not fit"):
        crf.crf_refine(noisy_probs(truth)[:, :16], image)
