"""``cityseg prepare SRC OUT``: convert a Cityscapes source into the official layout with trainIds."""

from __future__ import annotations

import argparse
import logging

from cityseg.commands.shared_options import add_dataset_argument
from cityseg.processes import MAX_POOL_WORKERS, default_pool_workers

HELP = ("convert a Cityscapes tree, a 'pairs' copy or a described dataset (--dataset) into the official layout "
        "with labelTrainIds and labelIds")
log = logging.getLogger("cityseg")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", metavar="SRC", help="source folder (only read)")
    parser.add_argument("out", metavar="OUT", help="output folder (official layout)")
    parser.add_argument("--format", default="auto", choices=("auto", "cityscapes", "pairs"),
                        help="source format: cityscapes = leftImg8bit/ + gtFine/ tree; pairs = SRC/<split>/*.jpg|png "
                             "with the photo on the left half and the colour mask on the right (default: auto)")
    add_dataset_argument(parser, "cityscapes; kitti, camvid or a description file read SRC through its patterns")
    parser.add_argument("--split", nargs="+", metavar="NAME", help="only these splits (default: every split folder)")
    parser.add_argument("--city", metavar="NAME", help="city folder written for pairs (default: pairs)")
    parser.add_argument("--workers", type=int, default=default_pool_workers(),
                        help=f"processes (default: usable cores, at most {MAX_POOL_WORKERS})")
    parser.add_argument("--skip-bad", action="store_true", help="go on past bad files and list them at the end")
    parser.add_argument("--force", action="store_true",
                        help="make every frame again (by default a frame is skipped when its outputs exist and its "
                             "source files have not changed since)")
    links = parser.add_mutually_exclusive_group()
    links.add_argument("--link", dest="link", action="store_const", const="hard",
                       help="hard-link images instead of copying them (copies across file systems)")
    links.add_argument("--symlink", dest="link", action="store_const", const="sym",
                       help="symlink images instead of copying them")


def run(args: argparse.Namespace) -> int:
    from cityseg import logs
    from cityseg.data.prepare import prepare
    from cityseg.errors import CitysegError

    from cityseg.utils import writable_dir

    if args.workers < 1:
        raise CitysegError(f"--workers {args.workers}: must be at least 1")
    writable_dir(args.out, "OUT")
    summary = prepare(args.src, args.out, fmt=args.format, splits=args.split, city=args.city, workers=args.workers,
                      skip_bad=args.skip_bad, link=args.link, progress=not logs.quiet(), force=args.force,
                      dataset=args.dataset)
    for line in summary.lines():
        (log.warning if line.startswith(("skipped", "  ")) else log.info)(line)
    return 0
