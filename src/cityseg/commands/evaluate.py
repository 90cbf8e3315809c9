"""``cityseg evaluate``: official Cityscapes scores of prediction PNGs or of a checkpoint, by one
scoring code (:mod:`cityseg.metrics`): ``--pred-dir P --gt-dir G`` matches label-id PNGs to the
ground truth by frame name and scores them in a pool of processes (:mod:`cityseg.metrics.pred_dir`;
without ``--plots`` it never imports torch); ``--checkpoint CKPT --data D`` runs the model and scores
it with the Evaluator training validates with (:mod:`cityseg.engine.evaluate`).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from cityseg.commands.shared_options import add_dataset_argument, add_inference_arguments, check_batch_size, inference_choices

HELP = "score predictions (label-id PNGs or a checkpoint) with the official Cityscapes metrics"
log = logging.getLogger("cityseg")

# options that only make sense with --checkpoint (argparse attribute names)
_CHECKPOINT_FLAGS = ("data", "dataset", "split", "sliding", "crop", "stride", "scales", "flip", "tta", "save_pred",
                     "set", "calibration")
# ... and those with a default, which count as given when changed
_CHOSEN_DEFAULTS = {"device": "auto", "precision": "fp32", "runtime": "torch", "batch_size": 1}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--pred-dir", metavar="DIR", help="label-id prediction PNGs (searched recursively)")
    source.add_argument("--checkpoint", metavar="CKPT", help="cityseg checkpoint (or hf:REPO_OR_DIR, a Hugging Face "
                        "transformers model) to run on --data")
    parser.add_argument("--gt-dir", metavar="DIR", help="with --pred-dir: ground truth, <frame>_gtFine_labelIds.png "
                        "(searched recursively), each scored against the one prediction <frame>.png or "
                        "<frame>_*.png; iIoU when *_gtFine_instanceIds.png lie beside them")
    parser.add_argument("--json", metavar="FILE", help="write the scores and the confusion matrix as JSON "
                        "(NaN as null)")
    parser.add_argument("--plots", metavar="DIR", help="write confusion.png (row-normalised) and iou.png")
    parser.add_argument("--boundary-tolerance", metavar="PX", type=int,
                        help="boundary F1 matching distance in pixels (default 2; with --checkpoint the "
                        "checkpoint's eval.boundary_tolerance); -1 skips boundary F1")
    parser.add_argument("--workers", metavar="N", type=int,
                        help="with --pred-dir: processes (default: the usable CPU cores); "
                        "with --checkpoint: DataLoader workers (default: data.workers)")
    model = parser.add_argument_group("with --checkpoint")
    model.add_argument("--data", metavar="DIR", help="Cityscapes-layout folder (default: the checkpoint's data.root, "
                       "else the synthetic data)")
    add_dataset_argument(model, "the checkpoint's")
    model.add_argument("--split", default=None, help="split to score (default: the checkpoint's data.val_split)")
    model.add_argument("--save-pred", metavar="DIR",
                       help="write label-id PNGs for the benchmark server as DIR/<city>/<frame>_leftImg8bit.png "
                       "(DIR/<frame>_leftImg8bit.png for names not of the form <city>_<seq>_<frame>)")
    model.add_argument("--set", metavar="SECTION.KEY=VALUE", action="append", default=[],
                       help="override a value of the checkpoint's config (e.g. data.val_size=1024x512), repeatable")
    add_inference_arguments(parser, exact_default=True)


def run(args: argparse.Namespace) -> int:
    from cityseg.config import check_value
    from cityseg.errors import CitysegError
    from cityseg.utils import writable_dir, writable_file

    check_value(args.boundary_tolerance, "eval.boundary_tolerance", "--boundary-tolerance")
    # every output is checked before scoring starts, not after the last frame
    if args.json:
        writable_file(args.json, "--json")
    if args.plots:
        writable_dir(args.plots, "--plots")
    if getattr(args, "save_pred", None):
        writable_dir(args.save_pred, "--save-pred")

    if args.workers is not None and args.workers < 0:
        raise CitysegError(f"--workers {args.workers}: must be >= 0")
    if args.pred_dir is not None:
        if args.gt_dir is None:
            raise CitysegError("--pred-dir needs --gt-dir (the folder with *_gtFine_labelIds.png)")
        model_flags = [f for f in _CHECKPOINT_FLAGS if getattr(args, f) not in (None, [])]
        model_flags += [f for f, default in _CHOSEN_DEFAULTS.items() if getattr(args, f) != default]
        if model_flags:
            raise CitysegError(f"--{model_flags[0].replace('_', '-')} applies to --checkpoint, not --pred-dir")
        from cityseg.metrics import DEFAULT_BOUNDARY_TOLERANCE
        from cityseg.metrics.pred_dir import evaluate_pred_dir

        tol = DEFAULT_BOUNDARY_TOLERANCE if args.boundary_tolerance is None else args.boundary_tolerance
        counts, elapsed, n = evaluate_pred_dir(Path(args.pred_dir), Path(args.gt_dir), None if tol < 0 else tol,
                                               args.workers)
    else:
        if args.gt_dir is not None:
            raise CitysegError("--gt-dir applies to --pred-dir; with --checkpoint give --data")
        from cityseg.engine.evaluate import evaluate_checkpoint

        check_batch_size(args)
        counts, elapsed, n = evaluate_checkpoint(
            args.checkpoint, args.device, args.set, data=args.data, split=args.split, choices=inference_choices(args),
            workers=args.workers, boundary_tolerance=args.boundary_tolerance, save_pred=args.save_pred,
            dataset=args.dataset, precision=args.precision, runtime=args.runtime, calibration=args.calibration,
            batch_size=args.batch_size)
    report(counts, args.json, args.plots)
    log.info(f"scored {n} frames in {elapsed:.1f} s")
    return 0


def report(counts: Any, json_path: str | None, plots_dir: str | None) -> dict[str, Any]:
    """Print the table, write the JSON (:func:`cityseg.metrics.write_json`) and plots if asked."""
    from cityseg import metrics

    result = counts.scores()
    log.info(metrics.format_table(result, counts.boundary_tolerance))
    if json_path:
        metrics.write_json(counts, json_path, result)
    if plots_dir:
        from cityseg import viz  # imports torch: only when plots are asked for

        viz.plot_scores(counts, plots_dir, result)
    return result
