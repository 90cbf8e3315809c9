"""Cost of one synthetic Cityscapes frame (``cityseg synth``), against the cost of writing it.

Usage: python benchmarks/bench_synth.py [--size 256x128] [--frames 60] [--append BENCHMARKS.md]

Per frame, interleaved so that drifts in machine load hit all of them alike, one thread:

* ``render``: drawing the scene (PIL polygons) and finishing the photo (numpy texture, light, noise);
* ``write floor``: PNG-encoding and atomically writing the frame's four files, nothing else;
* ``render + write``: ``synthetic.write_frame``, what each worker of ``cityseg synth`` does.

Timed with this thread's CPU time (``time.thread_time``), which other jobs on a shared machine do
not inflate, and with wall time. Medians over the frames (each frame is a different scene).
Target (brief of the synthetic data): well under 50 ms per 256x128 frame.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from cityseg.data.synthetic import frame_paths, render_frame, write_frame
from cityseg.labels import ID_PALETTE
from cityseg.utils import parse_size, save_png


def timed(fn) -> tuple[float, float]:
    """(CPU ms, wall ms) of one call."""
    c, w = time.thread_time(), time.perf_counter()
    fn()
    return 1000 * (time.thread_time() - c), 1000 * (time.perf_counter() - w)


def write_only(root: Path, arrays, index: int) -> None:
    image, label_ids, inst = arrays
    paths = frame_paths(root, "train", index)
    save_png(image, paths["image"])
    save_png(label_ids, paths["labelIds"])
    save_png(ID_PALETTE[label_ids], paths["color"])
    save_png(inst, paths["instanceIds"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="256x128")
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--append", type=Path, help="append the result as a markdown section to this file")
    args = ap.parse_args()
    size = parse_size(args.size)
    times: dict[str, list[tuple[float, float]]] = {"render": [], "write floor": [], "render + write": []}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        render_frame(0, "train", 10_000, size)  # warm-up: imports, first allocations
        for i in range(args.frames):
            arrays = render_frame(0, "train", i, size)
            times["render"].append(timed(lambda: render_frame(0, "train", i, size)))
            times["write floor"].append(timed(lambda: write_only(root / "floor", arrays, i)))
            times["render + write"].append(timed(lambda: write_frame(root / "full", "train", i, size, 0)))
    rows = [f"| {name} | {statistics.median(c for c, _ in v):.1f} | {statistics.median(w for _, w in v):.1f} |"
            for name, v in times.items()]
    table = "\n".join(["| per frame | CPU ms (median) | wall ms (median) |", "|---|---|---|", *rows])
    full = statistics.median(c for c, _ in times["render + write"])
    floor = statistics.median(c for c, _ in times["write floor"])
    text = (f"## Synthetic data generation ({args.size}, {args.frames} frames)\n\n"
            f"Command: `.venv/bin/python benchmarks/bench_synth.py --size {args.size} --frames {args.frames}`  \n"
            f"Machine: {os.cpu_count()}-core {platform.machine()} CPU, no GPU, Python {platform.python_version()}, "
            f"date {datetime.date.today()}, one thread; load average {os.getloadavg()[0]:.1f} "
            f"(other jobs share the machine: wall times are inflated, CPU times are not)\n\n{table}\n\n"
            f"render + write = {full:.1f} ms CPU per frame ({full / floor:.1f}x the write floor); "
            f"target: well under 50 ms.\n")
    print(text)
    if args.append:
        with open(args.append, "a") as fh:
            fh.write("\n" + text)


if __name__ == "__main__":
    sys.exit(main())
