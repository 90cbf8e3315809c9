"""What the dense CRF does: mIoU and boundary F1 with and without ``--crf`` at the config defaults.

    python benchmarks/bench_crf.py --checkpoint CKPT [--data DIR] [--split val] [--size WxH] [--names P,...]

Runs the checkpoint in fp32 on every frame of the split that has a photo and labelIds, then
scores the plain argmax and the CRF-refined labels (cityseg.config.CRFConfig defaults) with
the same metrics as ``cityseg evaluate``. Prints one line each and the difference.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from crf_common import load_frames, score  # noqa: E402

from cityseg.config import CRFConfig  # noqa: E402
from cityseg.utils import parse_size  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, type=Path)
    p.add_argument("--data", type=Path, help="Cityscapes-layout folder (default: the synthetic default data)")
    p.add_argument("--split", default="val")
    p.add_argument("--size", help="resize frames to WxH first (labels nearest)")
    p.add_argument("--names", help="comma-separated frame-name prefixes to use")
    args = p.parse_args()
    torch.set_num_threads(1)
    if args.data is None:
        from cityseg.data.synthetic import ensure_default_data

        args.data = ensure_default_data()
    size = parse_size(args.size) if args.size else None
    frames = load_frames(args.data, args.split, args.checkpoint, size, args.names.split(",") if args.names else None)
    cfg = CRFConfig()
    plain, refined = score(frames, None), score(frames, cfg)
    print(f"{len(frames)} frames of {args.data}/{args.split}, {frames[0].image.shape[1]}x{frames[0].image.shape[0]}; CRF {cfg}")
    for name, s in (("no CRF", plain), ("CRF", refined)):
        print(f"  {name:7s} mIoU {s['miou']:.4f}  boundary F1 {s['boundary_f1']:.4f}  pixel acc {s['pixel_accuracy']:.4f}"
              f"  CRF {s['crf_s_per_frame'] * 1000:.0f} ms/frame")
    print(f"  change  mIoU {refined['miou'] - plain['miou']:+.4f}  boundary F1 {refined['boundary_f1'] - plain['boundary_f1']:+.4f}")


if __name__ == "__main__":
    main()
