"""Test-time augmentation on trained checkpoints: val mIoU per scale set, over several seeds' runs.

Usage: python benchmarks/bench_tta.py --data data/pairs RUN [RUN ...]
       [--scales 1 0.75,1,1.25 ...] [--json FILE]

Each RUN is a training run folder (its ``checkpoints/best.pt`` is scored) or a checkpoint file.
Every checkpoint is scored on the ``--data`` val split by :func:`cityseg.engine.evaluate.evaluate_checkpoint`
(eager fp32: the exact scores ``cityseg evaluate --checkpoint`` gives) once with one pass and
no flip, then once per ``--scales`` set with flips. Prints a Markdown table (one row per
setting: each run's val mIoU, the mean and the sample standard deviation, and the mean pixel and
class accuracy) and the paired gain of every setting over one pass, per run: a gain on every
run is a property of the models, not of one seed.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from cityseg.engine.evaluate import evaluate_checkpoint
from cityseg.inference.options import InferenceChoices

DEFAULT_SCALES = ["1", "0.75,1", "1,1.25", "0.75,1,1.25", "0.875,1,1.125", "0.75,1,1.25,1.5"]


def score(checkpoint: Path, data: str, scales: str, flip: bool) -> dict:
    """val mIoU, pixel and mean class accuracy of ``checkpoint`` with those inference options."""
    counts, _, _ = evaluate_checkpoint(checkpoint, "cpu", data=data, choices=InferenceChoices(scales=scales, flip=flip))
    result = counts.scores()
    return {k: result[k] for k in ("miou", "pixel_accuracy", "mean_class_accuracy")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (their checkpoints/best.pt) or checkpoints")
    parser.add_argument("--data", required=True, help="prepared dataset folder whose val split is scored")
    parser.add_argument("--scales", nargs="+", default=DEFAULT_SCALES, help="scale sets scored with flips")
    parser.add_argument("--json", help="also write every score as JSON")
    args = parser.parse_args(argv)
    checkpoints = [r / "checkpoints" / "best.pt" if r.is_dir() else r for r in args.runs]
    settings = [("1 (one pass, no flip)", "1", False)] + [(f"{s} + flip", s, True) for s in args.scales]
    table = {name: [score(c, args.data, s, flip) for c in checkpoints] for name, s, flip in settings}

    def spread(xs: list[float]) -> str:
        return f"{statistics.mean(xs):.3f} +- {statistics.stdev(xs):.3f}" if len(xs) > 1 else f"{xs[0]:.3f}"

    print("| scales | " + " | ".join(str(r) for r in args.runs) + " | mean +- sd | pixel acc | class acc |")
    print("|---" * (len(checkpoints) + 4) + "|")
    base = [s["miou"] for s in table[settings[0][0]]]
    for name, scores in table.items():
        mious = [s["miou"] for s in scores]
        cells = " | ".join(f"{m:.3f}" for m in mious)
        pa = statistics.mean(s["pixel_accuracy"] for s in scores)
        ca = statistics.mean(s["mean_class_accuracy"] for s in scores)
        print(f"| {name} | {cells} | {spread(mious)} | {pa:.3f} | {ca:.3f} |")
    print()
    for name, scores in list(table.items())[1:]:
        gains = [s["miou"] - b for s, b in zip(scores, base)]
        print(f"{name}: gain over one pass {', '.join(f'{g:+.3f}' for g in gains)}"
              f" ({'every run gains' if min(gains) > 0 else 'not every run gains'})")
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": [str(r) for r in args.runs], "scores": table}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
