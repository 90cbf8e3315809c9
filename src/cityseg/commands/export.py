"""``cityseg export``: a checkpoint as ONNX (uint8 RGB in; logits and trainIds out), checked with onnxruntime,
and/or as a weights-only ``.safetensors`` file that every ``--checkpoint`` takes."""

from __future__ import annotations

import argparse
import logging

from cityseg.commands.shared_options import add_dataset_argument

HELP = ("export a checkpoint to ONNX (uint8 image in, logits + labels out; dynamic N, H, W; checked) "
        "and/or to weights-only safetensors")
log = logging.getLogger("cityseg")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, metavar="CKPT",
                        help="cityseg checkpoint (.pt or .safetensors), or hf:REPO_OR_DIR (a Hugging Face "
                        "transformers model)")
    parser.add_argument("--onnx", metavar="FILE", help="output .onnx file (written atomically)")
    parser.add_argument("--safetensors", metavar="FILE",
                        help="output .safetensors file: the weights, with the model name, config and dataset (and "
                        "an hf: model's transformers config) in its metadata (written atomically); every "
                        "--checkpoint takes it, offline, --resume does not")
    add_dataset_argument(parser, "the checkpoint's; another must have the same classes")
    parser.add_argument("--opset", type=int, metavar="N", help="ONNX opset (default 18)")
    parser.add_argument("--exporter", choices=["auto", "dynamo", "torchscript"], default="auto",
                        help="auto: torch.onnx dynamo exporter, falling back to TorchScript if it fails")
    parser.add_argument("--check-image", metavar="FILE", action="append", default=[],
                        help="also check argmax agreement (>= 99.9%%) with fp32 torch on this photo (repeatable)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from cityseg.checkpoint import (FORMAT, VERSION, load_checkpoint, load_model, model_state, save_safetensors,
                                    with_dataset)
    from cityseg.errors import CitysegError
    from cityseg.hf import is_hf
    from cityseg.inference.onnx import DEFAULT_OPSET, export_onnx
    from cityseg.utils import writable_file

    if not (args.onnx or args.safetensors):
        raise CitysegError("give --onnx FILE and/or --safetensors FILE: the files to export the checkpoint to")
    if args.check_image and not args.onnx:
        raise CitysegError("--check-image checks an ONNX export; give --onnx FILE too")
    opset = args.opset if args.opset is not None else DEFAULT_OPSET
    if not 13 <= opset <= 23:
        raise CitysegError(f"--opset {opset}: valid 13-23 (18 or newer for the dynamo exporter)")
    for flag, path in (("--onnx", args.onnx), ("--safetensors", args.safetensors)):
        if path:
            writable_file(path, flag)
    hf = is_hf(args.checkpoint)
    ckpt = None if hf else load_checkpoint(args.checkpoint)
    model, cfg = load_model(args.checkpoint, "cpu", args.dataset, ckpt=ckpt)  # also proves the weights fit
    cfg = with_dataset(cfg, args.dataset, args.checkpoint)
    source = "" if cfg.model.name == args.checkpoint else f" from {args.checkpoint}"  # hf:REPO names itself
    log.info(f"cityseg export: {cfg.model.name}{source}")
    if args.safetensors:
        if hf:  # its weights, input map and transformers config, as a fine-tuned checkpoint of it holds them
            ckpt = {"format": FORMAT, "version": VERSION, **model_state(model)}
        save_safetensors(args.safetensors, {**ckpt, "config": cfg.to_dict(), "dataset": cfg.spec().to_dict()})
        log.info(f"wrote {args.safetensors} ({Path(args.safetensors).stat().st_size / 1e6:.1f} MB, weights only)")
    if args.onnx:
        report = export_onnx(model, Path(args.onnx), opset, args.exporter, [Path(p) for p in args.check_image],
                             config=cfg.to_dict())
        log.info(f"wrote {report.path} ({report.path.stat().st_size / 1e6:.1f} MB, {report.exporter} exporter, opset "
              f"{report.opset}); onnxruntime vs fp32 torch argmax agreement {report.agreement:.4%} "
              f"on {', '.join(report.checked)}")
    return 0
