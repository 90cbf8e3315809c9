"""The options several subcommands share: the model (``--checkpoint``, ``--onnx``, ``--dataset``) and
its loading, and the inference flags of ``predict``, ``serve`` and ``evaluate``."""

from __future__ import annotations

import argparse


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--checkpoint`` or ``--onnx`` (one required) and ``--dataset``: the model of ``predict`` and ``serve``,
    loaded by :func:`load_predictor`."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", metavar="CKPT",
                        help="cityseg checkpoint, or hf:REPO_OR_DIR (a Hugging Face transformers model)")
    source.add_argument("--onnx", metavar="FILE", help="model written by `cityseg export` (run with onnxruntime)")
    add_dataset_argument(parser, "the model's; with another, it must have the model's classes")


def add_dataset_argument(parser: argparse.ArgumentParser, default: str) -> None:
    """``--dataset NAME|FILE``: a built-in dataset (cityscapes, kitti, camvid) or a description file."""
    parser.add_argument("--dataset", metavar="NAME|FILE",
                        help=f"dataset: cityscapes, kitti, camvid or a description YAML file (default: {default}; "
                        "see README, Your own dataset)")


def add_inference_arguments(parser: argparse.ArgumentParser, exact_default: bool = False) -> None:
    """The flags of what a checkpoint's inference runs and how, the same for ``predict`` and ``evaluate``.

    Every inference flag left out means "as the checkpoint says" (its ``eval`` section,
    :mod:`cityseg.inference.options`). ``exact_default``: ``--precision fp32 --runtime torch`` by default
    (``evaluate``: the scores training logs) instead of ``auto`` (``predict``: the fastest path for the work).
    """
    from cityseg.inference.options import PRECISIONS, RUNTIMES, TTA_SCALES

    group = parser.add_argument_group("inference (default: the checkpoint's eval section)")
    group.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                       help=f"flip + multi-scale test-time augmentation (scales {','.join(map(str, TTA_SCALES))} unless "
                       "--scales); --no-tta: one pass at scale 1 without flip (--scales/--flip given win)")
    group.add_argument("--scales", metavar="S,S,...", help="multi-scale inference, e.g. 0.75,1,1.25")
    group.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                       help="add horizontally flipped passes (--no-flip: none)")
    group.add_argument("--sliding", action=argparse.BooleanOptionalAction, default=None,
                       help="sliding-window inference (--no-sliding: whole images)")
    group.add_argument("--crop", metavar="WxH", help="sliding-window size (default: eval.crop_size)")
    group.add_argument("--stride", metavar="WxH", help="sliding-window step (default: eval.stride)")
    group.add_argument("--batch-size", type=int, default=1, metavar="N",
                       help="images (whole) or windows (sliding) per forward pass (default 1)")
    precision, runtime = ("fp32", "torch") if exact_default else ("auto", "auto")
    group.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="default: auto (cuda if any)")
    group.add_argument("--precision", choices=PRECISIONS, default=precision,
                       help=f"default {precision}. auto: bf16 where the hardware has it natively (>= 99.5%% argmax "
                       "agreement with fp32 measured on trained checkpoints), else fp32; int8: onnxruntime static "
                       "int8 on the CPU (needs --calibration; cached beside the checkpoint; without VNNI the "
                       "default path runs)")
    group.add_argument("--calibration", metavar="DIR", help="--precision int8: a folder of photos like the ones to "
                       "segment; the int8 ranges are measured on up to 16 of them")
    group.add_argument("--runtime", choices=RUNTIMES, default=runtime,
                       help=f"default {runtime}. auto: eager torch for a few frames, torch.compile when enough "
                       "forward passes share one input shape for compiling to pay (BENCHMARKS.md)")


def inference_choices(args: argparse.Namespace):
    """The :class:`~cityseg.inference.options.InferenceChoices` of :func:`add_inference_arguments`'s flags."""
    from cityseg.inference.options import InferenceChoices

    return InferenceChoices(sliding=args.sliding, crop=args.crop, stride=args.stride, scales=args.scales,
                            flip=args.flip, tta=args.tta)


def check_batch_size(args: argparse.Namespace) -> None:
    """CitysegError unless ``--batch-size`` is at least 1."""
    from cityseg.errors import CitysegError

    if args.batch_size < 1:
        raise CitysegError(f"--batch-size {args.batch_size}: must be >= 1")


def load_predictor(args: argparse.Namespace, sizes):
    """The Predictor of :func:`add_model_arguments` with the command line's choices; ``sizes``: the
    (width, height) of every input, the work that chooses the path (None: unknown, eager unless
    ``--runtime compile``)."""
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
