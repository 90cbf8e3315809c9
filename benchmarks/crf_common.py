"""Shared by tune_crf.py and bench_crf.py: frames of a split, the model's probabilities, CRF scores."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cityseg import labels, metrics
from cityseg.config import CRFConfig
from cityseg.inference.crf import crf_refine
from cityseg.utils import read_image

IMAGE_SUFFIX = "_leftImg8bit.png"
GT_SUFFIX = "_gtFine_labelIds.png"


@dataclass
class Frame:
    name: str
    image: np.ndarray  # (H, W, 3) uint8
    gt_ids: np.ndarray  # (H, W) uint8 labelIds
    probs: np.ndarray  # (C, H, W) float32 softmax of the model


def load_frames(root: Path, split: str, checkpoint: Path, size: tuple[int, int] | None = None,
                names: list[str] | None = None) -> list[Frame]:
    """Every ``<split>`` frame with a photo and labelIds under ``root``, with fp32 probabilities.

    ``size`` (W, H): resize photo (bilinear) and labels (nearest) first, e.g. 2048x1024 -> 1024x512.
    ``names``: keep only frames whose name starts with one of these.
    """
    from PIL import Image

    from cityseg.inference.predict import Predictor

    predictor = Predictor.from_checkpoint(checkpoint, device="cpu", precision="fp32", runtime="torch")
    frames = []
    for photo in sorted((root / "leftImg8bit" / split).rglob(f"*{IMAGE_SUFFIX}")):
        name = photo.name[: -len(IMAGE_SUFFIX)]
        gt_path = root / "gtFine" / split / photo.parent.name / f"{name}{GT_SUFFIX}"
        if not gt_path.is_file() or (names and not any(name.startswith(n) for n in names)):
            continue
        image, gt = read_image(photo, "RGB"), read_image(gt_path)
        if size is not None and image.shape[1::-1] != size:
            image = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
            gt = np.asarray(Image.fromarray(gt).resize(size, Image.NEAREST))
        probs = predictor.probabilities([image])[0].numpy()
        frames.append(Frame(name, image, gt, probs))
    if not frames:
        raise SystemExit(f"no {split} frames with {GT_SUFFIX} under {root}")
    return frames


def score(frames: list[Frame], cfg: CRFConfig | None, tolerance: int = metrics.DEFAULT_BOUNDARY_TOLERANCE) -> dict:
    """mIoU, boundary F1, pixel accuracy and seconds per frame, with the CRF ``cfg`` (None: without CRF)."""
    counts = metrics.Counts()
    seconds = 0.0
    for f in frames:
        start = time.perf_counter()
        probs = f.probs if cfg is None else crf_refine(f.probs, f.image, cfg)
        seconds += time.perf_counter() - start
        pred_ids = labels.TRAIN_ID_TO_ID[probs.argmax(0).astype(np.uint8)]
        counts.add(metrics.frame_counts(pred_ids, f.gt_ids, boundary_tolerance=tolerance))
    s = counts.scores()
    return {"miou": s["miou"], "boundary_f1": s["boundary_f1"], "pixel_accuracy": s["pixel_accuracy"],
            "crf_s_per_frame": seconds / len(frames) if cfg is not None else 0.0}
