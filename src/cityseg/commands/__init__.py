"""One module per subcommand (``add_arguments`` + ``run``), and the options several of them share."""

from __future__ import annotations

import argparse


def add_dataset_argument(parser: argparse.ArgumentParser, default: str) -> None:
    """``--dataset NAME|FILE``: a built-in dataset (cityscapes, kitti, camvid) or a description file."""
    parser.add_argument("--dataset", metavar="NAME|FILE",
                        help=f"dataset: cityscapes, kitti, camvid or a description YAML file (default: {default}; "
                        "see README, Your own dataset)")
