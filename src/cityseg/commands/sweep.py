"""``cityseg sweep``: an Optuna study of the loss balance (or any numeric keys) on val mIoU."""

from __future__ import annotations

import argparse

HELP = "search the loss weights (or any numeric config keys) with Optuna; N more trials of a resumable study"


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number >= 0")
    return int(text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="NAME|FILE",
                        help="base recipe name (pairs, seed, ...) or YAML file (default: demo)")
    parser.add_argument(
        "--data", metavar="DIR", help="Cityscapes-layout folder (default: data.root, else the synthetic data)"
    )
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="sweep folder: study.db, trials/<number>/, best.yaml, trials.csv, plots")
    parser.add_argument("--trials", required=True, type=_count, metavar="N",
                        help="run N more trials (0: only rewrite best.yaml, trials.csv and the plots)")
    parser.add_argument("--storage", metavar="URL",
                        help="Optuna storage URL, e.g. postgresql://user@host/db for several machines on one "
                             "study (default: sqlite:///DIR/study.db)")
    parser.add_argument("--study", metavar="NAME", help="study name (default: the config's name)")
    parser.add_argument(
        "--set",
        metavar="SECTION.KEY=VALUE",
        action="append",
        default=[],
        help="override one value of the base config (YAML syntax), repeatable, e.g. --set train.epochs=4",
    )
    parser.add_argument("--space", metavar="FILE",
                        help="YAML search space, section.key: {low: L, high: H, log: true, type: int} per key "
                             "(default: loss.focal 0..3, loss.dice 0..3, loss.focal_gamma 0.5..4)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the TPE sampler (default 0)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="default: auto (cuda if any)")


def run(args: argparse.Namespace) -> int:
    from cityseg.config import load_config
    from cityseg.sweep import import_optuna, load_space, run_sweep

    import_optuna()  # before anything else: the one-line install hint
    from cityseg.utils import writable_dir

    cfg = load_config(args.config, args.set)
    writable_dir(args.out, "--out")
    if args.data is not None:
        cfg.data.root = str(args.data)
    run_sweep(cfg, args.out, args.trials, storage=args.storage, study_name=args.study, space=load_space(args.space),
              seed=args.seed, device=args.device)
    return 0
