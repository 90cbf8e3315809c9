"""Tune the dense-CRF defaults on validation data: a small grid scored by mIoU, checked on held-out frames.

    python benchmarks/tune_crf.py --checkpoint CKPT [--data DIR] [--split val] [--size WxH]
        [--names PREFIX,...] [--grid JSON] --json OUT.json
    python benchmarks/tune_crf.py --combine synthetic.json real.json

The frames are split in two (even / odd positions). Every grid point is scored on both halves;
the choice uses the first half only and the second half checks it, so the gain reported for
the held-out half is not a product of the tuning. ``--combine`` picks the one setting with the
best mean mIoU gain (over the no-CRF argmax) on the tuning halves of several runs (e.g. the
synthetic split with the demo model and real frames with a model trained on real frames) and
prints its held-out gains beside those of the current ``CRFConfig`` defaults. Kernel widths are
in pixels of a 2048-wide frame (``cityseg.inference.crf`` scales them to the image).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from crf_common import load_frames, score  # noqa: E402

from cityseg.config import CRFConfig  # noqa: E402
from cityseg.utils import parse_size  # noqa: E402

# Around the DeepLab / Krähenbühl settings (w_bilateral 3-5, theta_rgb 3-13, w_gaussian 1-3); the
# weight reaches 15 because a first grid on the synthetic data put its best at its edge (10).
GRID = {
    "bilateral_compat": [3.0, 5.0, 10.0, 15.0],
    "bilateral_sxy": [20.0, 50.0, 80.0],
    "bilateral_srgb": [3.0, 8.0, 13.0],
    "gaussian_compat": [1.0, 3.0],
}


def tune(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    root = args.data or _default_data()
    size = parse_size(args.size) if args.size else None
    frames = load_frames(root, args.split, args.checkpoint, size, args.names.split(",") if args.names else None)
    halves = {"tune": frames[0::2], "held_out": frames[1::2] or frames[0::2]}
    print(f"{len(frames)} frames from {root}/{args.split}: {len(halves['tune'])} to tune, "
          f"{len(halves['held_out'])} held out", file=sys.stderr)
    result = {"data": str(root), "split": args.split, "checkpoint": str(args.checkpoint),
              "none": {k: score(v, None) for k, v in halves.items()},
              "defaults": {k: score(v, CRFConfig()) for k, v in halves.items()}, "grid": []}
    for values in itertools.product(*args.grid.values()):
        cfg = dataclasses.replace(CRFConfig(), **dict(zip(args.grid, map(float, values))))
        row = {"config": dataclasses.asdict(cfg), **{k: score(v, cfg) for k, v in halves.items()}}
        result["grid"].append(row)
        print(f"  {_short(row['config'], args.grid)}: tune mIoU {row['tune']['miou']:.4f}, "
              f"held-out {row['held_out']['miou']:.4f}", file=sys.stderr, flush=True)
    args.json.write_text(json.dumps(result, indent=1))
    combine([args.json], list(args.grid))


def combine(paths: list[Path], keys: list[str] | None = None) -> None:
    """Pick the grid point with the best mean tuning-half mIoU gain over the runs; print held-out results."""
    runs = [json.loads(Path(p).read_text()) for p in paths]
    keys = keys or list(GRID)
    grids = [{_short(r["config"], keys): r for r in run["grid"]} for run in runs]
    common = set.intersection(*(set(g) for g in grids))
    gain = {name: np.mean([g[name]["tune"]["miou"] - run["none"]["tune"]["miou"] for g, run in zip(grids, runs)])
            for name in common}
    ranked = sorted(common, key=gain.get, reverse=True)
    print("best mean tuning-half mIoU gain: " + "; ".join(f"{n} ({gain[n]:+.4f})" for n in ranked[:3]))
    best = ranked[0]
    print(f"chosen: {best}")
    for run, g in zip(runs, grids):
        none, held = run["none"]["held_out"], {"current defaults": run["defaults"]["held_out"], "chosen": g[best]["held_out"]}
        print(f"{run['data']} ({run['split']}), held-out half: no CRF mIoU {none['miou']:.4f} boundary F1 "
              f"{none['boundary_f1']:.4f}")
        for name, s in held.items():
            print(f"  {name:16s} mIoU {s['miou']:.4f} ({s['miou'] - none['miou']:+.4f})  boundary F1 "
                  f"{s['boundary_f1']:.4f} ({s['boundary_f1'] - none['boundary_f1']:+.4f})  "
                  f"{s['crf_s_per_frame'] * 1000:.0f} ms/frame")


def _short(cfg: dict, keys) -> str:
    return ", ".join(f"{k}={cfg[k]:g}" for k in keys)


def _default_data() -> Path:
    from cityseg.data.synthetic import ensure_default_data

    return ensure_default_data()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path)
    p.add_argument("--data", type=Path, help="Cityscapes-layout folder (default: the synthetic default data)")
    p.add_argument("--split", default="val")
    p.add_argument("--size", help="resize frames to WxH first (labels nearest)")
    p.add_argument("--names", help="comma-separated frame-name prefixes to use")
    p.add_argument("--grid", type=json.loads, default=GRID, help='JSON {"CRFConfig key": [values], ...}')
    p.add_argument("--json", type=Path, help="where to write every grid point's scores")
    p.add_argument("--combine", type=Path, nargs="+", help="pick one setting from several --json files")
    args = p.parse_args()
    if args.combine:
        combine(args.combine)
    elif args.checkpoint and args.json:
        tune(args)
    else:
        p.error("give --checkpoint and --json, or --combine")


if __name__ == "__main__":
    main()
