"""Argmax agreement of every inference path with eager fp32 torch, on trained checkpoints and many frames.

    python benchmarks/bench_agreement.py --checkpoint CKPT [--checkpoint CKPT ...] --images DIR_OR_FILE ...
        [--size WxH] [--paths bf16,compile_bf16,...] [--threads N]

``cityseg benchmark`` measures agreement on one input; the precision choice of ``cityseg predict``
needs it over many frames, on trained models (a random-weight model's logits are near ties
everywhere, so its agreement says little). Prints, per checkpoint and path, the agreement
over all pixels and the worst frame's.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cityseg.checkpoint import load_model
from cityseg.inference.paths import available_paths
from cityseg.inference.predict import stack_rgb
from cityseg.inference.runtime import BASELINE, build_runner, runner_input
from cityseg.utils import parse_size, read_image

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


def frames(items: list[str], size: tuple[int, int] | None) -> list[tuple[str, np.ndarray]]:
    paths = []
    for item in items:
        p = Path(item)
        paths += sorted(q for q in p.rglob("*") if q.suffix.lower() in IMAGE_EXTENSIONS) if p.is_dir() else [p]
    out = []
    for p in paths:
        image = read_image(p, "RGB")
        if size is not None and image.shape[1::-1] != size:
            image = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
        out.append((p.stem, image))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", action="append", required=True)
    ap.add_argument("--images", nargs="+", required=True)
    ap.add_argument("--size", help="resize every image to WxH first")
    ap.add_argument("--paths", help="comma-separated paths (default: every available one)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    paths = args.paths.split(",") if args.paths else [p for p in available_paths(cpu) if p != BASELINE]
    images = frames(args.images, parse_size(args.size) if args.size else None)
    print(f"{len(images)} frames; paths {', '.join(paths)}", file=sys.stderr)
    for ckpt in args.checkpoint:
        model, cfg = load_model(ckpt, "cpu")
        runners = {name: build_runner(name, model, cpu) for name in [BASELINE, *paths]}
        same = {name: [] for name in paths}
        for stem, image in images:
            batch = stack_rgb([image])
            base = runners[BASELINE](runner_input(runners[BASELINE], batch)).argmax(1)
            for name in paths:
                pred = runners[name](runner_input(runners[name], batch)).argmax(1)
                same[name].append(float((pred == base).double().mean()))
            print(f"  {stem}: " + ", ".join(f"{n} {same[n][-1]:.4%}" for n in paths), file=sys.stderr, flush=True)
        h, w = images[0][1].shape[:2]
        print(f"{cfg.model.name} ({ckpt}), {len(images)} frames at {w}x{h}:")
        for name in paths:
            print(f"  {name:14s} mean {np.mean(same[name]):.4%}  worst frame {np.min(same[name]):.4%}")


if __name__ == "__main__":
    main()
