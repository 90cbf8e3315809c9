"""Wall-clock of ``cityseg evaluate --pred-dir`` vs the official Cityscapes evaluator, whole process.

Builds a few hundred frames from the 15 real frankfurt val label maps of ../shared/fixtures
(replicated under new names, hard links) with perturbed predictions (shift, blob swaps, class
swaps), then times, interleaved, each repeat:

* ``official``: cityscapesscripts' evalPixelLevelSemanticLabeling.main() in a fresh ``python -c``
  (np.in1d patched back for NumPy >= 2.4), its own ground-truth glob and prediction search;
* ``cityseg``: ``python -m cityseg evaluate --pred-dir P --gt-dir G --json F`` (defaults: all
  usable cores, boundary F1 at 2 px), and the same with ``--boundary-tolerance -1``;
* ``decode floor``: a fresh process that only decodes the three PNGs of every frame, with PIL in
  one process and in a pool of N, with pyspng (libspng) in a pool of N, and with cityseg's own
  label-map decoder (cityseg.data.png: libdeflate + a run-aware unfilter) in a pool of N.

Prints medians, CPU seconds (children's user+sys: less sensitive to other jobs on the machine),
the speed-up, and the largest difference between the two evaluators' numbers; ``--append FILE``
adds the result as a markdown section.

    .venv/bin/python benchmarks/bench_evaluate.py --frames 300 --repeats 3 --append BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO.parent / "shared" / "fixtures" / "cityscapes" / "gtFine" / "val" / "frankfurt"
GT_SUFFIX, INST_SUFFIX = "_gtFine_labelIds.png", "_gtFine_instanceIds.png"

OFFICIAL = """
import sys, numpy as np
if not hasattr(np, "in1d"):
    np.in1d = np.isin
from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as ev
ev.args.groundTruthSearch = sys.argv[1] + "/*/*_gtFine_labelIds.png"
ev.args.predictionPath = sys.argv[2]
ev.args.exportFile = sys.argv[3]
ev.args.quiet = True
sys.argv = sys.argv[:1]
ev.main()
"""

FLOOR = """
import sys, glob, numpy as np
from concurrent.futures import ProcessPoolExecutor
from PIL import Image
def pil(path):
    with Image.open(path) as img:
        return np.asarray(img)
def spng(path):
    import pyspng
    with open(path, "rb") as f:
        return pyspng.load(f.read())
def cityseg(path):
    from cityseg.data.png import decode_grey
    with open(path, "rb") as f:
        out = decode_grey(f.read())
    return pil(path) if out is None else out  # cityseg's own fallback for files its fast path leaves to Pillow
DECODE = {"pil": pil, "spng": spng, "cityseg": cityseg}[sys.argv[4]]
def decode(gt):
    for path in (gt, gt.replace("_gtFine_labelIds", "_gtFine_instanceIds"), PRED[gt]):
        if DECODE(path) is None:
            raise RuntimeError(f"{path}: not decoded")  # an exception reaches the parent; sys.exit hung Pool
gts = sorted(glob.glob(sys.argv[1] + "/*/*_gtFine_labelIds.png"))
PRED = {g: sys.argv[2] + "/" + g.rsplit("/", 1)[1].replace("_gtFine_labelIds", "_leftImg8bit") for g in gts}
n = int(sys.argv[3])
if n == 1:
    for g in gts:
        decode(g)
else:
    with ProcessPoolExecutor(n) as pool:  # a worker that dies is an error here, not a hang
        list(pool.map(decode, gts, chunksize=1))
"""


def perturb(gt: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """A plausible model output: edges a few pixels off, a few wrong blobs, some class swaps."""
    pred = np.roll(gt, (1 + k % 2, 2 - k % 3), axis=(0, 1)).copy()
    h, w = gt.shape
    blobs = np.kron(rng.random((h // 32, w // 32)) < 0.03, np.ones((32, 32), bool))
    pred[blobs] = rng.choice([7, 8, 11, 21, 23, 26])
    if k % 3 == 0:
        pred[gt == 26] = 27  # car -> truck
    if k % 3 == 1:
        pred[gt == 24] = 25  # person -> rider
    return pred


def build_tree(root: Path, frames: int, variants: int = 3) -> tuple[Path, Path]:
    """gtFine/val/frankfurt with ``frames`` frames (hard links to the fixtures) and predictions."""
    gts = sorted(FIXTURES.glob(f"*{GT_SUFFIX}"))
    if not gts:
        sys.exit(f"{FIXTURES}: no real val frames (../shared/fixtures is needed)")
    gt_dir, pred_dir = root / "gtFine" / "val", root / "pred"
    (gt_dir / "frankfurt").mkdir(parents=True)
    pred_dir.mkdir()
    rng = np.random.default_rng(0)
    made: dict[tuple[int, int], Path] = {}
    for k in range(frames):
        src = gts[k % len(gts)]
        name = f"frankfurt_{k:06d}_{src.name.split('_')[2]}"
        for suffix in (GT_SUFFIX, INST_SUFFIX):
            _link(src.with_name(src.name.replace(GT_SUFFIX, suffix)), gt_dir / "frankfurt" / f"{name}{suffix}")
        key = (k % len(gts), k // len(gts) % variants)  # a few distinct predictions per real frame
        if key not in made:
            made[key] = pred_dir / f"{name}_leftImg8bit.png"
            Image.fromarray(perturb(np.asarray(Image.open(src)), k, rng)).save(made[key])
        else:
            _link(made[key], pred_dir / f"{name}_leftImg8bit.png")
    return gt_dir, pred_dir


def _link(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy(src, dst)


def timed(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the process and its children) of one command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def max_difference(ours: dict, official: dict) -> float:
    pairs = [(ours["miou"], official["averageScoreClasses"]), (ours["iiou"], official["averageScoreInstClasses"]),
             (ours["category_miou"], official["averageScoreCategories"]),
             (ours["category_iiou"], official["averageScoreInstCategories"])]
    pairs += [(s["iou"], official["classScores"][n]) for n, s in ours["classes"].items()]
    pairs += [(s["iiou"], official["classInstScores"][n]) for n, s in ours["classes"].items()]
    pairs += [(s["iou"], official["categoryScores"][n]) for n, s in ours["categories"].items()]
    pairs += [(s["iiou"], official["categoryInstScores"][n]) for n, s in ours["categories"].items()]
    worst = 0.0
    for a, b in pairs:
        a = math.nan if a is None else a
        if math.isnan(a) != math.isnan(b):
            return math.inf
        if not math.isnan(a):
            worst = max(worst, abs(a - b))
    return worst


def decoder_comparison(gt_dir: Path, pred_dir: Path, frames: int = 15) -> dict[str, float]:
    """Single-process ms per frame to decode the three PNGs, with each decoder that is installed."""
    gts = sorted(gt_dir.rglob(f"*{GT_SUFFIX}"))[:frames]
    paths = [(g, g.with_name(g.name.replace(GT_SUFFIX, INST_SUFFIX)),
              pred_dir / g.name.replace(GT_SUFFIX, "_leftImg8bit.png")) for g in gts]

    def pil(p):
        with Image.open(p) as img:
            return np.asarray(img)

    decoders = {"PIL": pil}
    try:
        import cv2

        cv2.setNumThreads(1)
        decoders["cv2"] = lambda p: cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
    except ImportError:
        pass
    try:
        import pyspng

        decoders["pyspng"] = lambda p: pyspng.load(Path(p).read_bytes())
    except ImportError:
        pass
    from cityseg.data import png

    if png.available():
        decoders["cityseg.data.png"] = lambda p: png.decode_grey(Path(p).read_bytes())
    out = {}
    for name, fn in decoders.items():
        times = []
        for _ in range(3):
            start = time.process_time()
            for triple in paths:
                for p in triple:
                    fn(p)
            times.append((time.process_time() - start) / len(paths) * 1000)
        out[name] = min(times)
    return out


def per_frame_cpu(gt_dir: Path, pred_dir: Path, frames: int = 15, rounds: int = 3) -> dict[str, float]:
    """CPU ms per frame in this process, the three scorers interleaved frame by frame (so that other
    jobs on the machine hit them alike): the official evaluatePair, cityseg with and without boundary F1."""
    if not hasattr(np, "in1d"):
        np.in1d = np.isin
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as ev

    from cityseg.metrics.pred_dir import score_frame
    from cityseg.processes import keep_freed_memory

    keep_freed_memory()
    gts = sorted(gt_dir.rglob(f"*{GT_SUFFIX}"))[:frames]
    jobs = [(pred_dir / g.name.replace(GT_SUFFIX, "_leftImg8bit.png"), g,
             g.with_name(g.name.replace(GT_SUFFIX, INST_SUFFIX))) for g in gts]
    ev.args.quiet = True
    conf, inst = ev.generateMatrix(ev.args), ev.generateInstanceStats(ev.args)
    runs = {
        "official evaluatePair": lambda p, g, i: ev.evaluatePair(str(p), str(g), conf, inst, {}, ev.args),
        "cityseg, boundary F1 at 2 px": lambda p, g, i: score_frame((p, g, i, 2)),
        "cityseg, no boundary F1": lambda p, g, i: score_frame((p, g, i, None)),
    }
    total = dict.fromkeys(runs, 0.0)
    for _ in range(rounds):
        for job in jobs:
            for name, fn in runs.items():
                start = time.process_time()
                fn(*job)
                total[name] += time.process_time() - start
    return {name: t / (rounds * len(jobs)) * 1000 for name, t in total.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--append", metavar="FILE", help="append the result as a markdown section")
    args = parser.parse_args()
    py = sys.executable
    with tempfile.TemporaryDirectory(prefix="bench_eval_") as tmp:
        root = Path(tmp)
        gt_dir, pred_dir = build_tree(root, args.frames)
        n = str(args.workers)
        ours = [py, "-m", "cityseg", "evaluate", "--pred-dir", str(pred_dir), "--gt-dir", str(gt_dir)]
        runs = {
            "official (cityscapesscripts, 1 process)":
                [py, "-c", OFFICIAL, str(gt_dir), str(pred_dir), str(root / "official.json")],
            f"cityseg evaluate --pred-dir (default: {args.workers} workers, boundary F1 on)":
                [*ours, "--json", str(root / "ours.json")],
            "cityseg evaluate --pred-dir --boundary-tolerance -1 (no boundary F1)":
                [*ours, "--boundary-tolerance", "-1"],
            "decode floor: PIL, 3 PNGs per frame, 1 process": [py, "-c", FLOOR, str(gt_dir), str(pred_dir), "1", "pil"],
            f"decode floor: PIL, {args.workers} processes": [py, "-c", FLOOR, str(gt_dir), str(pred_dir), n, "pil"],
            f"decode floor: pyspng, {args.workers} processes": [py, "-c", FLOOR, str(gt_dir), str(pred_dir), n, "spng"],
            f"decode floor: cityseg.data.png, {args.workers} processes":
                [py, "-c", FLOOR, str(gt_dir), str(pred_dir), n, "cityseg"],
        }
        results: dict[str, list[tuple[float, float]]] = {k: [] for k in runs}
        for r in range(args.repeats):  # interleaved, so that other jobs on the machine hit every command alike
            for name, cmd in runs.items():
                results[name].append(timed(cmd))
                print(f"repeat {r + 1}: {name}: {results[name][-1][0]:.2f} s", file=sys.stderr)
        ours_json, official_json = (json.loads((root / f).read_text()) for f in ("ours.json", "official.json"))
        diff = max_difference(ours_json, official_json)
        decoders = decoder_comparison(gt_dir, pred_dir)
        per_frame = per_frame_cpu(gt_dir, pred_dir)
    report = format_report(args, results, diff, decoders, per_frame)
    print(report)
    if args.append:
        path = Path(args.append)
        if not path.exists():
            path.write_text("# Benchmarks\n")
        with path.open("a") as f:
            f.write("\n" + report)


def format_report(
    args: argparse.Namespace, results: dict, diff: float, decoders: dict[str, float], per_frame: dict[str, float]
) -> str:
    names = list(results)
    official = statistics.median(w for w, _ in results[names[0]])
    official_cpu = statistics.median(c for _, c in results[names[0]])
    command = f".venv/bin/python benchmarks/bench_evaluate.py --frames {args.frames} --repeats {args.repeats}"
    versions = f"CPython {platform.python_version()}, NumPy {np.__version__}, Pillow {Image.__version__}"
    lines = [
        "## Evaluation speed (issue 5)",
        "",
        f"Command: `{command}" + (f" --append {args.append}" if args.append else "") + "`",
        "",
        f"Machine: 2-core x86_64 CPU, no GPU ({versions}); other jobs may have run concurrently on the same "
        f"cores. Date: {time.strftime('%Y-%m-%d')}.",
        "",
        f"{args.frames} frames of 2048x1024: the 15 real frankfurt val labelIds + instanceIds maps of "
        "../shared/fixtures under new names, predictions shifted by 1-2 px with wrong blobs and class swaps. "
        "Whole process (interpreter start, imports, file search, scoring, JSON), median of "
        f"{args.repeats} interleaved repeats; CPU = user+sys seconds of the process and its children. "
        "'cores busy' well below 1 (one process) or 2 (two) means other jobs were taking the cores.",
        "",
        "| run | wall median (s) | wall min (s) | wall ms/frame | official / this, wall | CPU median (s) | "
        "official / this, CPU | cores busy (CPU / wall) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in names:
        walls = [w for w, _ in results[name]]
        med = statistics.median(walls)
        cpu = statistics.median(c for _, c in results[name])
        lines.append(f"| {name} | {med:.2f} | {min(walls):.2f} | {med / args.frames * 1000:.1f} | "
                     f"{official / med:.2f}x | {cpu:.2f} | {official_cpu / cpu:.2f}x | {cpu / med:.2f} |")
    lines += ["", "Largest difference between the two evaluators over every class and category IoU and iIoU "
              f"and the four averages: {diff:.1e}.", ""]
    parts = ", ".join(f"{k} {v:.1f} ms" for k, v in per_frame.items())
    lines += ["CPU ms per frame in one process, the scorers interleaved frame by frame (first 15 frames, 3 rounds; "
              f"decoding included): {parts}.", ""]
    if decoders:
        parts = ", ".join(f"{k} {v:.1f} ms" for k, v in decoders.items())
        lines += ["Decoders, CPU ms to decode the three PNGs of one frame in one process (first 15 frames): "
                  f"{parts}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
