"""``cityseg predict``: segment photos and videos with a checkpoint or an exported ONNX model.

Writes OUT/trainIds, labelIds, color, overlay (and with --gt, panel) PNGs of every image: see
:mod:`cityseg.inference.outputs`; a video's OUT/<stem>.overlay.mp4 and <stem>.classes.csv: see
:mod:`cityseg.inference.video`. Ctrl-C during a video leaves its files with the frames done: status 130.
A bad input is reported in one line and skipped; the others are still done and the exit status
is 1. A checkpoint that is not a cityseg checkpoint or an
output folder that cannot be written stops everything with status 2.
"""

from __future__ import annotations

import argparse
import logging

from cityseg.commands.shared_options import add_inference_arguments, add_model_arguments, check_batch_size, load_predictor

HELP = ("segment images and videos with a checkpoint (or an ONNX export): trainIds, labelIds, colour and overlay "
        "PNGs; overlay videos")
log = logging.getLogger("cityseg")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image or video files (any container and codec "
                        "FFmpeg reads), folders (searched recursively) or globs")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    video = parser.add_argument_group("videos (OUT/<stem>.overlay.mp4 at the input's rate, and <stem>.classes.csv: "
                                      "each class's share of each frame)")
    video.add_argument("--video-fps", metavar="N", help="write each input folder's images as one video of N frames a "
                       "second instead (in name order, named after the folder; their PNGs only with --save-frames)")
    video.add_argument("--color-video", action="store_true", help="also write OUT/<stem>.color.mp4 (palette colours)")
    video.add_argument("--save-frames", action="store_true", help="also write every frame's PNGs as for an image "
                       "(OUT/trainIds/<stem>_000000.png, ...; a folder's frames keep their names)")
    add_inference_arguments(parser)
    parser.add_argument("--crf", action="store_true", help="refine with a dense CRF (needs cityseg[crf]); "
                        "parameters from the config's crf section")
    parser.add_argument("--set", metavar="crf.KEY=VALUE", action="append", default=[],
                        help="override a config value, e.g. crf.iterations=10 (repeatable)")
    parser.add_argument("--gt", metavar="GTFINE_DIR", help="ground-truth folder (searched recursively for "
                        "<city>_<seq>_<frame>_gtFine_*.png): adds OUT/panel/<stem>.png")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from cityseg.inference import outputs, video
    from cityseg.utils import writable_dir

    check_batch_size(args)
    fps = video.parse_rate(args.video_fps) if args.video_fps else None
    out = Path(args.out)
    writable_dir(out, "--out")
    files, failures = outputs.collect_inputs(args.inputs, exclude=out)
    images, videos, refused = video.split_inputs(files, args.inputs, fps)
    for message in failures + refused:
        log.warning(message)
    if not images and not videos:
        log.error("no input image or video to segment")
        return 1
    predictor = load_predictor(args, outputs.image_sizes(files))
    what = ", ".join(filter(None, (images and f"{len(images)} images", videos and f"{len(videos)} video(s)")))
    log.info(f"cityseg predict: {what}, {predictor.describe_inference()}; {predictor.describe()}")
    if predictor.path.startswith("compile"):
        log.info("cityseg predict: compiling for the first image of each size (a one-off minute or two on a small CPU, "
                 "cached on disk for later runs; --runtime torch skips it)")
    gt_index = outputs.index_ground_truth(Path(args.gt)) if args.gt else None
    failed = len(failures) + len(refused)
    failed += outputs.predict_files(predictor, images, out, gt_index, args.batch_size) if images else 0
    done = video.predict_videos(predictor, videos, out, color=args.color_video, save_frames=args.save_frames,
                                gt_index=gt_index)
    failed += done.failed
    if failed:
        log.error(f"{failed} input(s) failed; the rest are in {out}")
    return 130 if done.interrupted else 1 if failed else 0

