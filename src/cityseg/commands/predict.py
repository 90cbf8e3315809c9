"""``cityseg predict``: segment photos with a checkpoint or an exported ONNX model.

For each input ``<stem>.png`` it writes, at the input's size::

    OUT/trainIds/<stem>.png   trainIds (0-18), uint8
    OUT/labelIds/<stem>.png   official label ids: ready for the benchmark server and ``evaluate --pred-dir``
    OUT/color/<stem>.png      official palette
    OUT/overlay/<stem>.png    palette colours blended over the photo
    OUT/panel/<stem>.png      with --gt: image | ground truth | prediction | errors

A bad input (missing, unreadable, a name another input already uses) is reported in one line
and skipped; the others are still done and the exit status is 1. With --gt, a frame without
ground truth gets its four maps and a one-line note instead of a panel (not a failure); a
ground truth that cannot be read or has another size is a failure. A checkpoint that is not a
cityseg checkpoint or an output folder that cannot be written stops everything with status 2.
"""

from __future__ import annotations

import argparse
import sys

HELP = "segment images with a checkpoint (or an ONNX export): trainIds, labelIds, colour and overlay PNGs"

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm")
OUTPUT_KINDS = ("trainIds", "labelIds", "color", "overlay")
TTA_SCALES = (0.75, 1.0, 1.25)  # --tta without --scales: the usual Cityscapes multi-scale set (mmseg, DeepLab)
GT_SUFFIXES = ("_gtFine_labelIds.png", "_gtFine_labelTrainIds.png", "_gtFine_color.png")  # preference order


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", metavar="CKPT", help="cityseg checkpoint")
    source.add_argument("--onnx", metavar="FILE", help="model written by `cityseg export` (run with onnxruntime)")
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders (searched recursively) or globs")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--batch-size", type=int, default=1, metavar="N", help="images per forward pass (default 1)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="default: auto (cuda if any)")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                        help="auto: bf16 where the hardware has it natively (>= 99.5%% argmax agreement with fp32 "
                        "measured on trained checkpoints), else fp32")
    parser.add_argument("--runtime", choices=["auto", "torch", "compile", "onnxruntime"], default="auto",
                        help="execution engine for --checkpoint (default auto: the fastest measured, see BENCHMARKS.md)")
    parser.add_argument("--tta", action="store_true", help=f"flip + multi-scale test-time augmentation "
                        f"(scales {','.join(map(str, TTA_SCALES))} unless --scales)")
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

    if args.batch_size < 1:
        raise CitysegError(f"--batch-size {args.batch_size}: must be >= 1")
    out = Path(args.out)
    check_writable(out)
    files, failures = collect_inputs(args.inputs, exclude=out)
    for message in failures:
        print(f"cityseg predict: {message}", file=sys.stderr)
    if not files:
        print("cityseg predict: no input image to segment", file=sys.stderr)
        return 1
    predictor, cfg = build_predictor(args)
    print(f"cityseg predict: {len(files)} images, {predictor.describe()}", file=sys.stderr)
    if predictor.path.startswith("compile"):
        print("cityseg predict: compiling for the first image of each size (a one-off minute or two on a small CPU, "
              "cached on disk for later runs; --runtime torch skips it)", file=sys.stderr)
    gt_index = index_ground_truth(Path(args.gt)) if args.gt else None
    failed = len(failures) + predict_files(predictor, files, out, gt_index, args.batch_size)
    if failed:
        print(f"cityseg predict: {failed} input(s) failed; the rest are in {out}", file=sys.stderr)
    return 1 if failed else 0


# --- inputs -------------------------------------------------------------------------------------


def collect_inputs(inputs: list[str], exclude=None) -> tuple[list, list[str]]:
    """Expand files, folders and globs -> (image paths in order, one message per bad input).

    A path found twice is kept once; two different files with the same stem would write the same
    outputs, so the second is refused. Folders are searched recursively, skipping ``exclude``
    (the output folder, which may lie inside an input folder).
    """
    import glob
    from pathlib import Path

    skip = Path(exclude).resolve() if exclude is not None else None
    files: list[Path] = []
    problems: list[str] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(
                p for p in path.rglob("*")
                if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file() and not (skip and p.resolve().is_relative_to(skip))
            )
            if not found:
                problems.append(f"{path}: no images ({', '.join(IMAGE_EXTENSIONS)}) in this folder")
            files += found
        elif path.is_file():
            files.append(path)
        elif glob.has_magic(item):
            found = sorted(Path(p) for p in glob.glob(item, recursive=True) if Path(p).is_file())
            if not found:
                problems.append(f"{item}: no file matches this pattern")
            files += found
        else:
            problems.append(f"{path}: no such file or folder")
    unique: dict[str, Path] = {}
    for path in files:
        key = path.stem
        if key in unique and unique[key].resolve() != path.resolve():
            problems.append(f"{path}: same name as {unique[key]}; its outputs would overwrite that one's, skipped")
        else:
            unique.setdefault(key, path)
    return list(unique.values()), problems


def check_writable(out) -> None:
    """Create ``out`` and its sub-folders; CitysegError naming the folder if it cannot be written."""
    import tempfile

    from cityseg.errors import CitysegError

    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test."):
            pass
    except OSError as exc:
        raise CitysegError(f"--out {out}: cannot write there ({exc.strerror or exc})") from None


def index_ground_truth(root) -> dict[str, object]:
    """``<city>_<seq>_<frame>`` -> its best ground-truth file under ``root`` (labelIds > trainIds > color)."""
    from cityseg.errors import CitysegError

    if not root.is_dir():
        raise CitysegError(f"--gt {root}: no such folder")
    index: dict[str, object] = {}
    for suffix in reversed(GT_SUFFIXES):  # later (preferred) suffixes overwrite earlier ones
        for path in root.rglob(f"*{suffix}"):
            index[path.name[: -len(suffix)]] = path
    if not index:
        raise CitysegError(f"--gt {root}: no *{GT_SUFFIXES[0]} (or labelTrainIds/color) files in it")
    return index


def frame_key(stem: str) -> str:
    """``frankfurt_000000_002196_leftImg8bit`` -> ``frankfurt_000000_002196`` (the name without its suffix)."""
    return stem[: -len("_leftImg8bit")] if stem.endswith("_leftImg8bit") else stem


# --- model ---------------------------------------------------------------------------------------


def build_predictor(args: argparse.Namespace):
    """(Predictor, Config) from --checkpoint or --onnx and the inference flags."""
    from cityseg.config import Config, apply_overrides, config_from_dict
    from cityseg.errors import CitysegError
    from cityseg.inference.predict import Predictor

    if args.onnx:
        if args.precision == "bf16" or args.runtime not in ("auto", "onnxruntime"):
            raise CitysegError("--onnx runs with onnxruntime in fp32; drop --precision bf16 / --runtime")
        cfg = Config()
    else:
        from cityseg.engine.checkpoint import load_model

        model, cfg = load_model(args.checkpoint, "cpu")
    if args.set:
        cfg = config_from_dict(apply_overrides(cfg.to_dict(), args.set), name=cfg.name)
    options = inference_options(args, cfg)
    if args.onnx:
        device = "cuda" if args.device == "cuda" else "cpu"
        return Predictor.from_onnx(args.onnx, device=device, **options), cfg
    return Predictor.from_model(model, args.device, args.precision, args.runtime, **options), cfg


def inference_options(args: argparse.Namespace, cfg) -> dict:
    """Keyword options of Predictor from the flags, defaults from the config's eval section."""
    from cityseg.utils import parse_scales, parse_size

    scales = parse_scales(args.scales) if args.scales else (list(TTA_SCALES) if args.tta else [1.0])
    return {
        "mode": "sliding" if args.sliding else "whole",
        "crop": parse_size(args.crop or cfg.eval.crop_size, "--crop"),
        "stride": parse_size(args.stride or cfg.eval.stride, "--stride"),
        "scales": scales,
        "flip": bool(args.tta),
        "batch_size": args.batch_size,
        "crf": cfg.crf if args.crf else None,
    }


# --- the loop ------------------------------------------------------------------------------------


def predict_files(predictor, files: list, out, gt_index: dict | None, batch_size: int) -> int:
    """Predict and write every file, ``batch_size`` at a time; returns the number that failed."""
    from tqdm import tqdm

    failed = 0
    with tqdm(total=len(files), unit="img", desc="predict", file=sys.stderr, dynamic_ncols=True) as bar:
        for first in range(0, len(files), batch_size):
            batch = files[first : first + batch_size]
            images, paths = [], []
            for path in batch:
                image = _read(path, bar)
                if image is None:
                    failed += 1
                else:
                    images.append(image)
                    paths.append(path)
            preds = predictor.predict_batch(images) if images else []
            for path, image, pred in zip(paths, images, preds, strict=True):
                failed += not write_outputs(out, path.stem, image, pred, gt_index, bar)
            bar.update(len(batch))
    return failed


def _read(path, bar):
    from cityseg.errors import CitysegError
    from cityseg.utils import read_image

    try:
        return read_image(path, "RGB")
    except CitysegError as exc:
        bar.write(f"cityseg predict: {exc}", file=sys.stderr)
        return None


def write_outputs(out, stem: str, image, pred, gt_index: dict | None, bar) -> bool:
    """Write the four maps (and the panel); report a failure in one line and return False."""
    from cityseg import labels
    from cityseg.errors import CitysegError
    from cityseg.utils import save_png
    from cityseg.viz import overlay

    try:
        save_png(pred, out / "trainIds" / f"{stem}.png")
        save_png(labels.train_ids_to_label_ids(pred), out / "labelIds" / f"{stem}.png")
        save_png(labels.colorize(pred), out / "color" / f"{stem}.png")
        save_png(overlay(image, pred), out / "overlay" / f"{stem}.png")
        if gt_index is not None:
            write_panel(out, stem, image, pred, gt_index)
    except CitysegError as exc:
        bar.write(f"cityseg predict: {exc}", file=sys.stderr)
        return False
    except OSError as exc:
        bar.write(f"cityseg predict: {out}: cannot write the outputs of {stem} ({exc.strerror or exc})", file=sys.stderr)
        return False
    return True


def write_panel(out, stem: str, image, pred, gt_index: dict) -> None:
    """OUT/panel/<stem>.png: image | ground truth | prediction | errors.

    A frame with no ground truth under --gt is noted on stderr and skipped; CitysegError if its
    ground truth is unreadable or of another size.
    """
    from cityseg.data.formats import read_label
    from cityseg.errors import CitysegError
    from cityseg.viz import save_panel

    key = frame_key(stem)
    if key not in gt_index:
        from tqdm import tqdm

        tqdm.write(f"cityseg predict: note: no ground truth {key}_gtFine_*.png under --gt; no panel for {stem}",
                   file=sys.stderr)
        return
    gt = read_label(gt_index[key])
    if gt.shape != pred.shape:
        raise CitysegError(
            f"{gt_index[key]}: ground truth is {gt.shape[1]}x{gt.shape[0]}, the image {pred.shape[1]}x{pred.shape[0]} "
            "(WxH); panel not written"
        )
    save_panel(out / "panel" / f"{stem}.png", image, gt, pred, names=[key])
