"""``cityseg synth [OUT]``: write the synthetic Cityscapes (procedural street scenes, official layout)."""

from __future__ import annotations

import argparse
import logging

HELP = "draw synthetic street scenes in the official Cityscapes layout (the demo's default data)"
log = logging.getLogger("cityseg")

# The demo's defaults (config.DataConfig.synth_*); kept literal here because command modules
# import only the standard library at top level. tests/test_synthetic.py checks they agree.
DEFAULT_TRAIN, DEFAULT_VAL, DEFAULT_SIZE = 200, 40, "256x128"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", nargs="?", default=None,
                        help="output folder (default: the demo's data folder, $CITYSEG_DATA_HOME/synthetic "
                             "or ~/.cache/cityseg/synthetic)")
    parser.add_argument("--train", type=int, default=DEFAULT_TRAIN, help="training frames (default: %(default)s)")
    parser.add_argument("--val", type=int, default=DEFAULT_VAL, help="validation frames (default: %(default)s)")
    parser.add_argument("--size", default=DEFAULT_SIZE, help="WIDTHxHEIGHT of the frames (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="scene seed; the same seed gives the same files")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: one per core, at most 8)")
    parser.add_argument("--force", action="store_true",
                        help="regenerate even if OUT is up to date; replace a non-empty OUT that holds "
                             "no synthetic data")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from cityseg.data.synthetic import check_params, default_data_dir, ensure_data, folder_stats

    from cityseg.utils import writable_dir

    out = Path(args.out) if args.out is not None else default_data_dir()
    w, h = check_params(args.train, args.val, args.size, args.seed)
    writable_dir(out, "OUT" if args.out is not None else "the synthetic data folder")
    stats = ensure_data(out, args.train, args.val, (w, h), args.seed, args.workers,
                        replace_foreign=args.force or args.out is None, force=args.force)
    state = "up to date" if stats is None else "written"
    log.info(f"synthetic Cityscapes {state}: {args.train} train + {args.val} val frames, {w}x{h}, seed {args.seed}")
    log.info(f"  {out.resolve()}")
    log.info((stats if stats is not None else folder_stats(out)).table())
    return 0
