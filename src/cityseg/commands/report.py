"""``cityseg report``: one self-contained HTML page about a run or sweep folder (:mod:`cityseg.report`)."""

from __future__ import annotations

import argparse
import logging

HELP = "write RUN_DIR/report.html: one self-contained page (config, curves, per-class scores, panels, timing)"
log = logging.getLogger("cityseg")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR",
                        help="run folder (cityseg train --out) or sweep folder (cityseg sweep --out)")
    parser.add_argument("--out", metavar="FILE",
                        help="write the page here instead (default: RUN_DIR/report.html)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from cityseg.report import REPORT_NAME, folder_kind, write_report
    from cityseg.utils import writable_file

    folder = Path(args.run_dir)
    folder_kind(folder)  # a folder that is neither a run nor a sweep: one line, before anything else
    out = Path(args.out) if args.out else folder / REPORT_NAME
    writable_file(out, "--out" if args.out else "RUN_DIR (or --out FILE)")
    log.info(write_report(folder, out))
    return 0
