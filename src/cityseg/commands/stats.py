"""``cityseg stats``: class pixel frequencies of a dataset's splits and class weights for the loss (:mod:`cityseg.stats`)."""

from __future__ import annotations

import argparse
import logging

HELP = "count class pixels per split; write class weights (a loss.class_weights snippet), stats.yaml and a chart"
log = logging.getLogger("cityseg")

METHODS = ("median", "inverse", "enet")  # cityseg.stats.METHODS; kept literal (standard library only here)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, metavar="DIR", help="data root (the dataset's patterns are relative to it)")
    parser.add_argument("--dataset", metavar="NAME|FILE",
                        help="built-in cityscapes, kitti or camvid, or a description file (default: the one "
                        "`cityseg prepare --dataset` left in --data, else cityscapes)")
    parser.add_argument("--split", nargs="+", default=["train"], metavar="S",
                        help="splits to count; the weights come from the first (default: train)")
    parser.add_argument("--limit", type=int, metavar="N", help="count at most N frames per split, evenly spread")
    parser.add_argument("--method", choices=METHODS, default="median",
                        help="weights written to the snippet: median-frequency balancing (default), "
                             "inverse frequency or ENet's 1/ln(1.02+p); all three are printed")
    parser.add_argument("--out", metavar="DIR",
                        help="output folder: class_weights.yaml, stats.yaml, class_frequencies.png "
                             "(default: runs/stats-<dataset name>)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from cityseg import layout, stats
    from cityseg.datasets import load_dataset
    from cityseg.errors import CitysegError
    from cityseg.utils import writable_dir

    spec = load_dataset(args.dataset or layout.prepared_dataset(args.data) or "cityscapes")
    stats.check_limit(args.limit)
    if not Path(args.data).is_dir():
        raise CitysegError(f"--data {args.data}: folder not found; give the data root of {spec.name}")
    splits = list(dict.fromkeys(args.split))
    out = writable_dir(args.out or Path("runs") / f"stats-{spec.name}", "--out")
    readers = {split: stats.label_readers(spec, args.data, split, args.limit) for split in splits}  # all checked first
    counts = [stats.count_split(spec, args.data, split, readers=r) for split, r in readers.items()]
    for c in counts:
        log.info(f"{c.split}: {c.frames} frames, {c.labelled:,} labelled and {c.ignored:,} ignored pixels")
        absent = [name for name, n in zip(spec.class_names, c.pixels) if n == 0]
        if absent:
            log.warning(f"{c.split}: no pixel of {', '.join(absent)}; inverse and median weights of absent classes are 0")
    paths = stats.write_outputs(spec, counts, args.method, out)
    log.info(stats.table(spec, counts, stats.class_weights(counts[0])))
    log.info(f"{args.method} weights: {paths['weights']} (add its loss section to a config, or --set loss.class_weights=[...])")
    log.info(f"counts: {paths['stats']}; chart: {paths['chart']}")
    return 0
