"""``cityseg predict``: segment photos with a checkpoint or an exported ONNX model.

Writes OUT/trainIds, labelIds, color, overlay (and with --gt, panel) PNGs of every input: see
:mod:`cityseg.inference.outputs`. A bad input is reported in one line and skipped; the others
are still done and the exit status is 1. A checkpoint that is not a cityseg checkpoint or an
output folder that cannot be written stops everything with status 2.
"""

from __future__ import annotations

import argparse
import logging

from cityseg.commands.shared_options import add_dataset_argument, add_inference_arguments, check_batch_size, inference_choices

HELP = "segment images with a checkpoint (or an ONNX export): trainIds, labelIds, colour and overlay PNGs"
log = logging.getLogger("cityseg")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", metavar="CKPT",
                        help="cityseg checkpoint, or hf:REPO_OR_DIR (a Hugging Face transformers model)")
    source.add_argument("--onnx", metavar="FILE", help="model written by `cityseg export` (run with onnxruntime)")
    add_dataset_argument(parser, "the model's; with another, it must have the model's classes")
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders (searched recursively) or globs")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    add_inference_arguments(parser)
    parser.add_argument("--crf", action="store_true", help="refine with a dense CRF (needs cityseg[crf]); "
                        "parameters from the config's crf section")
    parser.add_argument("--set", metavar="crf.KEY=VALUE", action="append", default=[],
                        help="override a config value, e.g. crf.iterations=10 (repeatable)")
    parser.add_argument("--gt", metavar="GTFINE_DIR", help="ground-truth folder (searched recursively for "
                        "<city>_<seq>_<frame>_gtFine_*.png): adds OUT/panel/<stem>.png")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from cityseg.inference import outputs
    from cityseg.utils import writable_dir

    check_batch_size(args)
    out = Path(args.out)
    writable_dir(out, "--out")
    files, failures = outputs.collect_inputs(args.inputs, exclude=out)
    for message in failures:
        log.warning(message)
    if not files:
        log.error("no input image to segment")
        return 1
    predictor = load(args, outputs.image_sizes(files))
    log.info(f"cityseg predict: {len(files)} images, {predictor.describe_inference()}; {predictor.describe()}")
    if predictor.path.startswith("compile"):
        log.info("cityseg predict: compiling for the first image of each size (a one-off minute or two on a small CPU, "
                 "cached on disk for later runs; --runtime torch skips it)")
    gt_index = outputs.index_ground_truth(Path(args.gt)) if args.gt else None
    failed = len(failures) + outputs.predict_files(predictor, files, out, gt_index, args.batch_size)
    if failed:
        log.error(f"{failed} input(s) failed; the rest are in {out}")
    return 1 if failed else 0


def load(args: argparse.Namespace, sizes):
    """The Predictor of ``--checkpoint`` or ``--onnx`` with the command line's choices; ``sizes``: the
    (width, height) of every input, the work that chooses the path."""
    from cityseg.errors import CitysegError
    from cityseg.inference.int8 import check_calibration
    from cityseg.inference.predict import Predictor

    check_calibration(args.precision, args.calibration)
    common = {"dataset": args.dataset, "overrides": args.set, "choices": inference_choices(args),
              "crf": args.crf, "batch_size": args.batch_size}
    if args.onnx is None:
        return Predictor.from_checkpoint(args.checkpoint, args.device, args.precision, args.runtime, sizes=sizes,
                                         calibration=args.calibration, **common)
    if args.precision == "int8":
        raise CitysegError("--precision int8 quantises a --checkpoint; --onnx runs its file in fp32 "
                           "(use --checkpoint CKPT --precision int8 --calibration DIR)")
    if args.precision == "bf16" or args.runtime not in ("auto", "onnxruntime"):
        raise CitysegError("--onnx runs with onnxruntime in fp32; drop --precision bf16 / --runtime")
    return Predictor.from_onnx(args.onnx, device="cuda" if args.device == "cuda" else "cpu", **common)
