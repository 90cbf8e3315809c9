"""Recipes side by side on the val pairs: per-class IoU in one chart, and panels of the same frames.

Usage: python benchmarks/compare_recipes.py --data data/pairs --out OUT LABEL=RUN [LABEL=RUN ...]
       [--frames 6]

Each RUN is a training run folder (its ``checkpoints/best.pt``), a checkpoint, or a JSON file that
``cityseg evaluate --json`` wrote (scores only: a recipe whose checkpoint is not at hand gets its
bars but no panel column). A checkpoint is scored on the ``--data`` val split by
:func:`cityseg.engine.evaluate.evaluate_checkpoint` with its own ``eval`` section (the recipe's
inference: exactly what ``cityseg evaluate --checkpoint`` gives), and predicts the panels through
``Predictor.from_checkpoint`` (the same inference).

Writes ``OUT/per_class_iou.png`` (grouped bars, one colour per recipe), ``OUT/panels.png``
(photo | truth | one column per recipe, the first ``--frames`` val frames in name order) and
``OUT/scores.json``, and prints a Markdown table of per-class IoU.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def scores_of(source: Path, data: str) -> dict:
    """``cityseg evaluate``'s scores of a checkpoint (its own inference) or of a saved JSON."""
    from cityseg.engine.evaluate import evaluate_checkpoint

    if source.suffix == ".json":
        return json.loads(source.read_text())
    counts, _, _ = evaluate_checkpoint(source, "cpu", data=data)
    return counts.scores()


def checkpoint_of(source: Path) -> Path:
    return source / "checkpoints" / "best.pt" if source.is_dir() else source


def val_frames(data: Path, count: int) -> list[tuple[str, Path, Path]]:
    """(name, photo, labelTrainIds) of the first ``count`` val frames in numeric name order."""
    photos = sorted((data / "leftImg8bit" / "val").rglob("*_leftImg8bit.png"),
                    key=lambda p: (len(p.name), p.name))[:count]
    out = []
    for photo in photos:
        stem = photo.name.removesuffix("_leftImg8bit.png")
        rel = photo.parent.relative_to(data / "leftImg8bit" / "val")
        out.append((stem, photo, data / "gtFine" / "val" / rel / f"{stem}_gtFine_labelTrainIds.png"))
    return out


def plot_per_class(results: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(next(iter(results.values()))["classes"])
    fig, ax = plt.subplots(figsize=(12, 4.2))
    width = 0.8 / len(results)
    x = np.arange(len(names))
    for i, (label, result) in enumerate(results.items()):
        values = [result["classes"][n]["iou"] for n in names]
        ax.bar(x + (i - (len(results) - 1) / 2) * width, values, width, label=f"{label} (mIoU {result['miou']:.3f})")
    ax.set_xticks(x, names, rotation=45, ha="right")
    ax.set_ylabel("IoU (100 val pairs)")
    ax.set_ylim(0, 1)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_panels(predictions: dict[str, list[np.ndarray]], frames: list, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cityseg.labels import IGNORE_INDEX, colorize
    from cityseg.utils import read_image

    cols = 2 + len(predictions)
    fig, axes = plt.subplots(len(frames), cols, figsize=(2.6 * cols, 2.6 * len(frames)), squeeze=False)
    for r, (stem, photo, gt) in enumerate(frames):
        truth = np.asarray(read_image(gt))
        valid = truth != IGNORE_INDEX
        images = [read_image(photo, "RGB"), colorize(truth)]
        titles = [f"val {stem}: photo", "truth"]
        for label, preds in predictions.items():
            pred = preds[r]
            images.append(colorize(pred))
            titles.append(f"{label} ({(pred[valid] == truth[valid]).mean():.1%})")
        for ax, image, title in zip(axes[r], images, titles):
            ax.imshow(image)
            ax.set_title(title, fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipes", nargs="+", metavar="LABEL=RUN", help="run folder, checkpoint or evaluate JSON")
    parser.add_argument("--data", required=True, type=Path, help="prepared pairs folder whose val split is scored")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--frames", type=int, default=6, help="val frames drawn as panels")
    args = parser.parse_args(argv)
    sources = {}
    for item in args.recipes:
        label, sep, source = item.partition("=")
        if not sep:
            parser.error(f"{item!r}: write LABEL=RUN")
        sources[label] = Path(source)
    args.out.mkdir(parents=True, exist_ok=True)
    results = {label: scores_of(checkpoint_of(s) if s.suffix != ".json" else s, str(args.data))
               for label, s in sources.items()}
    (args.out / "scores.json").write_text(json.dumps(results, indent=1, default=float))
    plot_per_class(results, args.out / "per_class_iou.png")

    from cityseg.inference.predict import Predictor
    from cityseg.utils import read_image

    frames = val_frames(args.data, args.frames)
    predictions = {}
    for label, source in sources.items():
        if source.suffix == ".json":
            continue
        predictor = Predictor.from_checkpoint(checkpoint_of(source), device="cpu", precision="fp32")
        predictions[label] = [predictor.predict(read_image(photo, "RGB")) for _, photo, _ in frames]
    plot_panels(predictions, frames, args.out / "panels.png")

    names = list(next(iter(results.values()))["classes"])
    print("| class | " + " | ".join(results) + " |")
    print("|---|" + "---|" * len(results))
    for name in names:
        print(f"| {name} | " + " | ".join(f"{r['classes'][name]['iou']:.3f}" for r in results.values()) + " |")
    for key in ("miou", "pixel_accuracy", "mean_class_accuracy", "mean_dice", "boundary_f1"):
        print(f"| **{key}** | " + " | ".join(f"{r[key]:.3f}" for r in results.values()) + " |")
    print(f"wrote {args.out / 'per_class_iou.png'}, {args.out / 'panels.png'}, {args.out / 'scores.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
