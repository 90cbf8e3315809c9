"""``cityseg benchmark``: the baseline and every inference path, timed on the same input."""

from __future__ import annotations

import argparse
import logging

from cityseg.commands.shared_options import add_dataset_argument

HELP = "time inference paths (channels_last, bf16, onnxruntime, compile, int8) against eager fp32 torch"
log = logging.getLogger("cityseg")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="deeplabv3_resnet50",
                        help="model name (cityseg.models.MODELS, random weights; or hf:REPO_OR_DIR with its own; "
                        "default deeplabv3_resnet50)")
    parser.add_argument("--checkpoint", metavar="CKPT", help="a cityseg checkpoint or hf:REPO_OR_DIR to time and "
                        "measure agreement on (its model replaces --model)")
    add_dataset_argument(parser, "cityscapes; with --checkpoint hf:..., the classes the model must predict")
    parser.add_argument("--size", default="2048x1024", metavar="WxH", help="input size (default 2048x1024)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="cpu", help="default: cpu")
    parser.add_argument("--paths", metavar="P,P,...", help="paths to time (default: every one available); "
                        "eager_fp32 is always timed as the baseline")
    parser.add_argument("--image", metavar="FILE", help="input photo, resized to --size (default: a synthetic frame)")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds after one warm-up call (default 3)")
    parser.add_argument("--threads", type=int, help="torch and onnxruntime threads (default: torch's default)")
    parser.add_argument("--precision", choices=["auto", "int8"], default="auto",
                        help="auto (default): time every path; int8: time onnxruntime static int8 against "
                        "eager fp32 (CPUs with VNNI; needs --calibration)")
    parser.add_argument("--calibration", metavar="DIR", help="--precision int8: a folder of photos like the ones to "
                        "segment; the int8 ranges are measured on up to 16 of them")
    parser.add_argument("--json", metavar="FILE", help='write {"baseline_ms", "ms", "path", "agreement", "paths": {...}}')


def run(args: argparse.Namespace) -> int:
    import json

    import torch

    from cityseg.device import resolve_device
    from cityseg.errors import CitysegError
    from cityseg.inference.benchmark import benchmark_input, format_results, run_benchmark
    from cityseg.utils import atomic_path, parse_size, writable_file

    if args.repeats < 1:
        raise CitysegError(f"--repeats {args.repeats}: must be >= 1")
    if args.threads is not None:
        if args.threads < 1:
            raise CitysegError(f"--threads {args.threads}: must be >= 1")
        torch.set_num_threads(args.threads)
    size = parse_size(args.size, "--size")
    if args.json:
        writable_file(args.json, "--json")
    device = resolve_device(args.device)
    model, name = _model(args)
    x = benchmark_input(size, args.image)
    paths = [p.strip() for p in args.paths.split(",") if p.strip()] if args.paths else None
    calibration, report = _int8(args, device, paths)
    if report:
        paths = [report]
    log.info(f"benchmark: {name} at {args.size} on {device} ({torch.get_num_threads()} threads), {args.repeats} rounds")
    result = run_benchmark(model, x, device, paths, repeats=args.repeats,
                           progress=lambda line: log.info(f"  {line}"), calibration=calibration, report=report)
    result["model"] = name
    log.info(format_results(result))
    if args.json:
        try:
            with atomic_path(args.json) as tmp:
                tmp.write_text(json.dumps(result, indent=2) + "\n")
        except OSError as exc:
            raise CitysegError(f"{args.json}: cannot write ({exc.strerror or exc})") from None
    return 0


def _int8(args: argparse.Namespace, device, paths):
    """(calibration frames or None, the path to report or None) for --precision and --calibration."""
    from cityseg.inference.int8 import calibration_frames, check_calibration
    from cityseg.inference.paths import int8_path

    int8 = args.precision == "int8" or (paths is not None and "int8" in paths)
    check_calibration("int8" if int8 else args.precision, args.calibration)
    if not int8:
        return None, None
    path = int8_path(device)
    if path != "int8":  # no VNNI: like cityseg predict, one warning, and the default path is timed and reported
        return None, path
    return calibration_frames(args.calibration), "int8" if args.precision == "int8" else None


def _model(args: argparse.Namespace):
    """(model in eval mode on the CPU, its name) from --checkpoint or --model."""
    if args.checkpoint:
        from cityseg.checkpoint import load_model

        model, cfg = load_model(args.checkpoint, "cpu", args.dataset)
        return model, cfg.model.name if cfg.model.name == args.checkpoint else f"{cfg.model.name} ({args.checkpoint})"
    import torch

    from cityseg.models import build_model

    torch.manual_seed(0)  # the same random weights in every run
    return build_model(args.model, pretrained="none", freeze=[]).eval(), args.model
