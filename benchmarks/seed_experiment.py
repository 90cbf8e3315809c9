"""The seed's loss experiment on real data: cross-entropy against Focal 1.5 + Dice 1.0, several seeds.

Usage: python benchmarks/seed_experiment.py --data data/pairs --out runs/seed_experiment
       [--seeds 0 1 2] [--steps 500] [--parallel 2] [--config configs/pairs.yaml]
       [--arms ce focal_dice unfrozen] [--set SECTION.KEY=VALUE ...]

The seed's setting (an ImageNet backbone with its early stages frozen) is ``--config
pairs_imagenet --set model.pretrained=FILE``; the arm ``unfrozen`` is cross-entropy with
``model.freeze=[]`` (frozen early stages against none). ``--set`` applies to every arm.

Both recipes are ``--config`` with only the loss changed (no class weights: the seed's
baseline is plain cross-entropy), trained from scratch for the same number of optimiser steps
(a step budget, not a time budget, so that the slower loss gets the same training). Runs go
``--parallel`` at a time with one thread each (on 2 cores: two runs side by side), each a
``cityseg train`` process in ``OUT/<recipe>_seed<k>``. Afterwards OUT holds ``results.json``
(final val mIoU, Dice, pixel and mean class accuracy of every run), ``summary.md`` (mean and
sample standard deviation per recipe, and whether the difference in Dice exceeds the spread)
and ``seed_experiment.png`` (every run's val mIoU and Dice by recipe).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

RECIPES = {
    "ce": ["loss.ce=1.0", "loss.focal=0.0", "loss.dice=0.0", "loss.class_weights=null"],
    "focal_dice": ["loss.ce=0.0", "loss.focal=1.5", "loss.dice=1.0", "loss.focal_gamma=2.0", "loss.class_weights=null"],
    "unfrozen": ["loss.ce=1.0", "loss.focal=0.0", "loss.dice=0.0", "loss.class_weights=null", "model.freeze=[]"],
}
MEASURES = ("val_miou", "val_dice", "val_boundary_f1", "val_pixel_accuracy", "val_mean_class_accuracy")


def command(args: argparse.Namespace, recipe: str, seed: int) -> list[str]:
    sets = [*args.set, *RECIPES[recipe], f"train.seed={seed}", f"train.max_steps={args.steps}", "train.max_minutes=null",
            "train.threads=1", "train.epochs=1000"]
    return [sys.executable, "-m", "cityseg", "train", "--config", args.config, "--data", args.data,
            "--out", str(Path(args.out) / f"{recipe}_seed{seed}"), "--force",
            *[item for s in sets for item in ("--set", s)]]


def run_all(args: argparse.Namespace) -> None:
    """Every (recipe, seed) run, ``args.parallel`` at a time; logs in OUT/<run>.log."""
    queue = [(r, s) for s in args.seeds for r in args.arms]
    running: list[tuple[subprocess.Popen, str]] = []
    while queue or running:
        while queue and len(running) < args.parallel:
            recipe, seed = queue.pop(0)
            name = f"{recipe}_seed{seed}"
            log = open(Path(args.out) / f"{name}.log", "w")
            running.append((subprocess.Popen(command(args, recipe, seed), stdout=log, stderr=subprocess.STDOUT), name))
            print(f"started {name}", flush=True)
        time.sleep(2)
        for proc, name in list(running):
            if proc.poll() is not None:
                running.remove((proc, name))
                print(f"finished {name} (exit {proc.returncode})", flush=True)


def collect(out: Path, seeds: list[int], arms: list[str]) -> dict[str, list[dict]]:
    """The last metrics.jsonl line of every run, by recipe."""
    results: dict[str, list[dict]] = {}
    for recipe in arms:
        for seed in seeds:
            lines = (out / f"{recipe}_seed{seed}" / "metrics.jsonl").read_text().splitlines()
            last = json.loads(lines[-1])
            results.setdefault(recipe, []).append({"seed": seed, "step": last["step"],
                                                   **{m: last.get(m, float("nan")) for m in MEASURES}})
    return results


def summarise(results: dict[str, list[dict]], steps: int) -> str:
    rows = ["| recipe | runs | " + " | ".join(MEASURES) + " |", "|---|---|" + "---|" * len(MEASURES)]
    stats = {}
    for recipe, runs in results.items():
        cells = []
        for m in MEASURES:
            values = [r[m] for r in runs]
            mean, sd = statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0
            stats[(recipe, m)] = (mean, sd)
            cells.append(f"{mean:.4f} ± {sd:.4f}")
        rows.append(f"| {recipe} | {len(runs)} | " + " | ".join(cells) + " |")
    lines = [f"{steps} optimiser steps per run; mean ± sample standard deviation over seeds.", "", *rows, ""]
    for arm in [a for a in results if a != "ce"]:
        if "ce" not in results:
            break
        for m in ("val_miou", "val_dice", "val_boundary_f1"):
            (a, sa), (b, sb) = stats[(arm, m)], stats[("ce", m)]
            # paired by seed: the same seed gives both runs the same data order and head initialisation
            diffs = [x[m] - y[m] for x, y in zip(results[arm], results["ce"], strict=True)]
            sd = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
            verdict = "larger than" if abs(a - b) > 2 * max(sa, sb) else "within"
            lines.append(f"{m}: {arm} - ce = {a - b:+.4f} (paired by seed: {', '.join(f'{d:+.4f}' for d in diffs)}; "
                         f"sd {sd:.4f}), {verdict} twice the larger spread ({2 * max(sa, sb):.4f})")
    return "\n".join(lines) + "\n"


def plot(results: dict[str, list[dict]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measures = ("val_miou", "val_dice", "val_boundary_f1")
    fig, axes = plt.subplots(1, len(measures), figsize=(4 * len(measures), 3.5))
    arms = list(results)
    for ax, m in zip(axes, measures):
        for i, (recipe, runs) in enumerate(results.items()):
            values = [r[m] for r in runs]
            ax.scatter([i] * len(values), values, label=recipe)
            ax.errorbar([i + 0.15], [statistics.mean(values)],
                        yerr=[statistics.stdev(values) if len(values) > 1 else 0], fmt="k_", capsize=4)
        for k in range(len(results[arms[0]])):  # one grey line per seed: the paired comparison
            ax.plot(range(len(arms)), [results[a][k][m] for a in arms], color="0.7", lw=0.8, zorder=0)
        ax.set_xticks(range(len(results)), arms)
        ax.set_title(m)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", default="runs/seed_experiment")
    parser.add_argument("--config", default="configs/pairs.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--arms", nargs="+", choices=list(RECIPES), default=["ce", "focal_dice"])
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override for every arm (repeatable), e.g. model.pretrained=FILE")
    parser.add_argument("--title", default="Cross-entropy vs Focal 1.5 + Dice 1.0 on the pairs (one dot per seed)")
    parser.add_argument("--report-only", action="store_true", help="only collect the finished runs")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        run_all(args)
    results = collect(out, args.seeds, args.arms)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    summary = summarise(results, args.steps)
    (out / "summary.md").write_text(summary)
    plot(results, out / "seed_experiment.png", args.title)
    print(summary)


if __name__ == "__main__":
    main()
