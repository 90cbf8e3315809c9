"""``cityseg prepare`` on a pairs copy: N worker processes against one process, in one run.

Usage: python benchmarks/bench_prepare.py --src ../shared/data/cityscapes-pairs [--split train]
       [--frames 600] [--workers 2]

The first ``--frames`` files of the split (all with 0) are linked into a temporary source
folder and converted twice into fresh temporary outputs, once in this process and once with
``--workers`` processes, alternating which runs first over ``--rounds`` rounds. Prints frames
per second of each, their ratio, and the load average (a busy machine slows both).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from cityseg.data.prepare import prepare


def link_subset(src: Path, split: str, frames: int, into: Path) -> int:
    """Symlink the first ``frames`` pair files of ``src/split`` (numeric order) into ``into/split``."""
    files = sorted((src / split).glob("*.jpg"), key=lambda p: (len(p.stem), p.stem))
    files = files[:frames] if frames else files
    (into / split).mkdir(parents=True)
    for f in files:
        (into / split / f.name).symlink_to(f.resolve())
    return len(files)


def timed(src: Path, workers: int) -> float:
    """Seconds to prepare ``src`` into a fresh folder with ``workers`` processes."""
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        prepare(src, out, fmt="pairs", workers=workers, progress=False)
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", required=True)
    parser.add_argument("--split", default="train")
    parser.add_argument("--frames", type=int, default=600, help="0: the whole split")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        n = link_subset(Path(args.src), args.split, args.frames, Path(tmp))
        rates: dict[int, list[float]] = {1: [], args.workers: []}
        for r in range(args.rounds):
            order = (1, args.workers) if r % 2 == 0 else (args.workers, 1)
            for workers in order:
                rates[workers].append(n / timed(Path(tmp), workers))
                print(f"round {r + 1}: {workers} process(es) {rates[workers][-1]:.1f} frames/s", flush=True)
    one, many = statistics.median(rates[1]), statistics.median(rates[args.workers])
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"{n} frames of {args.split}: 1 process {one:.1f} frames/s, {args.workers} processes {many:.1f} frames/s, "
          f"ratio {many / one:.2f}x (load average {load})")


if __name__ == "__main__":
    main()
