"""Colour masks degraded the way people's scripts degrade them, and how well the recovery
(:mod:`cityseg.data.colour`) reads them back: the harness of ``benchmarks/bench_colour.py`` and
the tests.

A clean mask is resized with PIL's ``Image.resize`` (antialiased) and optionally saved as JPEG
(:func:`degrade_colours`; :func:`degrade_colour_mask` draws a Cityscapes labelIds map in the
official colours first); the reference is the train id map resized with NEAREST, as label maps
must be. :func:`score_recovery` counts the reference pixels recovered, over all valid pixels and
over boundary pixels; :func:`measure_recovery` does all three for one frame.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from cityseg import labels
from cityseg.data.colour import color_to_train_ids


@dataclass
class RecoveryScore:
    """Share of reference pixels recovered, over valid pixels and over boundary pixels."""

    valid: int
    valid_ok: int
    boundary: int
    boundary_ok: int

    @property
    def valid_rate(self) -> float:
        return self.valid_ok / max(self.valid, 1)

    @property
    def boundary_rate(self) -> float:
        return self.boundary_ok / max(self.boundary, 1)

    def __add__(self, other: "RecoveryScore") -> "RecoveryScore":
        return RecoveryScore(self.valid + other.valid, self.valid_ok + other.valid_ok,
                             self.boundary + other.boundary, self.boundary_ok + other.boundary_ok)


def degrade_colour_mask(label_ids: np.ndarray, size: tuple[int, int], resample: str = "bilinear",
                        jpeg_quality: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Render a Cityscapes labelIds map in the official colours, then :func:`degrade_colours` it.

    Args:
        label_ids: (H, W) uint8 official labelIds (2048x1024 for real frames).
        size, resample, jpeg_quality: as in :func:`degrade_colours`.

    Returns:
        (h, w, 3) uint8 degraded colour mask, and the (h, w) uint8 reference trainIds: the
        labelIds -> trainIds map resized with NEAREST (how label maps must be resized).
    """
    return degrade_colours(labels.ID_PALETTE[label_ids], labels.ID_TO_TRAIN_ID[label_ids], size, resample, jpeg_quality)


def degrade_colours(colours: np.ndarray, train_ids: np.ndarray, size: tuple[int, int], resample: str = "bilinear",
                    jpeg_quality: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Resize and save a colour mask of any palette the way people's scripts do.

    Args:
        colours: (H, W, 3) uint8 clean colour mask.
        train_ids: (H, W) uint8 train ids of the same pixels.
        size: (width, height) to resize to with PIL's ``Image.resize`` (antialiased).
        resample: "nearest", "bilinear", "bicubic" or "lanczos".
        jpeg_quality: save as JPEG with this quality (PIL defaults otherwise, i.e. 4:2:0
            chroma subsampling); None saves as PNG (lossless).

    Returns:
        (h, w, 3) uint8 degraded colour mask, and the (h, w) uint8 reference: ``train_ids``
        resized with NEAREST (how label maps must be resized).
    """
    from PIL import Image

    filters = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC,
               "lanczos": Image.LANCZOS}
    resized = Image.fromarray(colours).resize(size, filters[resample])
    buf = io.BytesIO()
    if jpeg_quality is None:
        resized.save(buf, format="PNG")
    else:
        resized.save(buf, format="JPEG", quality=jpeg_quality)
    buf.seek(0)
    with Image.open(buf) as img:
        degraded = np.asarray(img.convert("RGB"))
    reference = np.asarray(Image.fromarray(train_ids).resize(size, Image.NEAREST))
    return degraded, reference


def _holds_other_label(label_map: np.ndarray) -> np.ndarray:
    """(H, W) bool: the 3x3 neighbourhood holds a value other than the centre (edges replicated)."""
    h, w = label_map.shape
    padded = np.pad(label_map, 1, mode="edge")
    out = np.zeros((h, w), bool)
    for dy in range(3):
        for dx in range(3):
            out |= padded[dy:dy + h, dx:dx + w] != label_map
    return out


def score_recovery(pred: np.ndarray, reference: np.ndarray) -> RecoveryScore:
    """Compare (H, W) trainIds with the reference; ignore in ``pred`` counts as a miss.

    A boundary pixel is a valid reference pixel whose 3x3 neighbourhood holds another
    label (ignore included); the image border replicates the edge pixels.
    """
    valid = reference != labels.IGNORE_INDEX
    boundary = valid & _holds_other_label(reference)
    ok = pred == reference
    return RecoveryScore(int(valid.sum()), int((ok & valid).sum()), int(boundary.sum()), int((ok & boundary).sum()))


def measure_recovery(label_ids: np.ndarray, size: tuple[int, int], resample: str = "bilinear",
                     jpeg_quality: int | None = None, convert=None) -> RecoveryScore:
    """Degrade a real labelIds frame (:func:`degrade_colour_mask`), convert it back, score it.

    ``convert``: (H, W, 3) uint8 -> (H, W) uint8 trainIds; default the robust recovery. Cityscapes
    only (label ids are drawn in its colours); for another palette, degrade a mask with
    :func:`degrade_colours` and score with :func:`score_recovery`.
    """
    degraded, reference = degrade_colour_mask(label_ids, size, resample, jpeg_quality)
    if convert is None:
        convert = lambda rgb: color_to_train_ids(rgb)[0]  # noqa: E731
    return score_recovery(convert(degraded), reference)
