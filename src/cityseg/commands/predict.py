"""``cityseg predict``: segment photos with a checkpoint or an exported ONNX model.

Writes OUT/trainIds, labelIds, color, overlay (and with --gt, panel) PNGs of every input: see
:mod:`cityseg.inference.outputs`. A bad input is reported in one line and skipped; the others
are still done and the exit status is 1. A checkpoint that is not a cityseg checkpoint or an
output folder that cannot be written stops everything with status 2.
"""

from __future__ import annotations

import argparse
import logging

from cityseg.commands import add_dataset_argument

HELP = "segment images with a checkpoint (or an ONNX export): trainIds, labelIds, colour and overlay PNGs"
log = logging.getLogger("cityseg")

TTA_SCALES = (0.75, 1.0, 1.25)  # --tta without --scales: the usual Cityscapes multi-scale set (mmseg, DeepLab)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", metavar="CKPT",
                        help="cityseg checkpoint, or hf:REPO_OR_DIR (a Hugging Face transformers model)")
    source.add_argument("--onnx", metavar="FILE", help="model written by `cityseg export` (run with onnxruntime)")
    add_dataset_argument(parser, "the model's; with another, it must have the model's classes")
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders (searched recursively) or globs")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--batch-size", type=int, default=1, metavar="N", help="images per forward pass (default 1)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="default: auto (cuda if any)")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16", "int8"], default="auto",
                        help="auto: bf16 where the hardware has it natively (>= 99.5%% argmax agreement with fp32 "
                        "measured on trained checkpoints), else fp32; int8: onnxruntime static int8 on the CPU "
                        "(needs --calibration; cached beside the checkpoint; without VNNI the default path runs)")
    parser.add_argument("--calibration", metavar="DIR", help="--precision int8: a folder of photos like the ones to "
                        "segment; the int8 ranges are measured on up to 16 of them")
    parser.add_argument("--runtime", choices=["auto", "torch", "compile", "onnxruntime"], default="auto",
                        help="execution engine for --checkpoint (default auto: eager torch for a few frames, "
                        "torch.compile when enough forward passes share one input shape for compiling to pay, "
                        "see BENCHMARKS.md)")
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                        help=f"flip + multi-scale test-time augmentation (scales {','.join(map(str, TTA_SCALES))} "
                        "unless --scales); --no-tta: one pass at scale 1, no flip. Default: the checkpoint's eval "
                        "section (eval.scales, eval.flip), as `cityseg evaluate --checkpoint` scores it")
    parser.add_argument("--scales", metavar="S,S,...", help="multi-scale inference, e.g. 0.75,1,1.25")
    parser.add_argument("--sliding", action="store_true", help="sliding-window inference")
    parser.add_argument("--crop", metavar="WxH", help="sliding-window size (default: the checkpoint's eval.crop_size)")
    parser.add_argument("--stride", metavar="WxH", help="sliding-window step (default: the checkpoint's eval.stride)")
    parser.add_argument("--crf", action="store_true", help="refine with a dense CRF (needs cityseg[crf]); "
                        "parameters from the config's crf section")
    parser.add_argument("--set", metavar="crf.KEY=VALUE", action="append", default=[],
                        help="override a config value, e.g. crf.iterations=10 (repeatable)")
    parser.add_argument("--gt", metavar="GTFINE_DIR", help="ground-truth folder (searched recursively for "
                        "<city>_<seq>_<frame>_gtFine_*.png): adds OUT/panel/<stem>.png")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from cityseg.errors import CitysegError
    from cityseg.inference import outputs
    from cityseg.inference.predict import load_predictor
    from cityseg.utils import writable_dir

    if args.batch_size < 1:
        raise CitysegError(f"--batch-size {args.batch_size}: must be >= 1")
    out = Path(args.out)
    writable_dir(out, "--out")
    files, failures = outputs.collect_inputs(args.inputs, exclude=out)
    for message in failures:
        log.warning(message)
    if not files:
        log.error("no input image to segment")
        return 1
    # --tta / --no-tta / neither: the standard set / one pass / the checkpoint's eval section
    default_scales = {True: TTA_SCALES, False: (1.0,), None: None}[args.tta]
    predictor, _ = load_predictor(
        args.checkpoint, args.onnx, args.device, args.precision, args.runtime, args.set, sliding=args.sliding,
        crop=args.crop, stride=args.stride, scales=args.scales, default_scales=default_scales, flip=args.tta,
        batch_size=args.batch_size, crf=args.crf, sizes=outputs.image_sizes(files),
        calibration=args.calibration, dataset=args.dataset)
    log.info(f"cityseg predict: {len(files)} images, {predictor.describe_inference()}; {predictor.describe()}")
    if predictor.path.startswith("compile"):
        log.info("cityseg predict: compiling for the first image of each size (a one-off minute or two on a small CPU, "
                 "cached on disk for later runs; --runtime torch skips it)")
    gt_index = outputs.index_ground_truth(Path(args.gt)) if args.gt else None
    failed = len(failures) + outputs.predict_files(predictor, files, out, gt_index, args.batch_size)
    if failed:
        log.error(f"{failed} input(s) failed; the rest are in {out}")
    return 1 if failed else 0
