"""``cityseg train``: train a segmentation model from one recipe (``configs/demo.yaml`` by default)."""

from __future__ import annotations

import argparse

from cityseg.commands.shared_options import add_dataset_argument

HELP = "train a model from a recipe (configs/demo.yaml on the synthetic data by default); DDP via torchrun"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="NAME|FILE",
                        help="recipe name (demo, seed, seed_ce, pairs, ...) or YAML file (default: demo)")
    parser.add_argument(
        "--data", metavar="DIR", help="Cityscapes-layout folder (default: data.root, else the synthetic data)"
    )
    add_dataset_argument(parser, "the config's dataset, or the one --data was prepared for, else cityscapes")
    parser.add_argument("--out", metavar="DIR", help="run folder (default: runs/<config name>)")
    parser.add_argument(
        "--set",
        metavar="SECTION.KEY=VALUE",
        action="append",
        default=[],
        help="override one config value (YAML syntax), repeatable, e.g. --set train.epochs=20",
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--resume", nargs="?", const=True, default=False, metavar="LAST_PT",
                       help="continue the run in --out from checkpoints/last.pt (or the run whose "
                       "checkpoints/last.pt is given; a weights-only .safetensors cannot be resumed)")
    group.add_argument("--force", action="store_true", help="start afresh even if --out already holds a run")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="default: auto (cuda if any)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from cityseg.config import load_config

    overrides = [*args.set, *([f"dataset={args.dataset}"] if args.dataset else [])]
    cfg = load_config(args.config, overrides)
    out = Path(args.out) if args.out else Path("runs") / cfg.name
    if isinstance(args.resume, str):  # --resume LAST_PT names the run folder
        from cityseg.engine.resume import resume_folder

        out = resume_folder(args.resume, args.out)
    saved = out / "config.yaml"
    if args.resume and saved.is_file():
        # a resumed run keeps the recipe it started with; --set still applies (e.g. more epochs)
        cfg = load_config(saved, overrides)
    if args.data is not None:
        cfg.data.root = str(args.data)
    if args.print_config:
        print(cfg.to_yaml(), end="")
        return 0

    from cityseg.engine.train import train
    from cityseg.utils import writable_dir

    writable_dir(out, "--out")

    train(cfg, out, device=args.device, resume=bool(args.resume), force=args.force)
    return 0
