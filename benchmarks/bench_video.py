"""Video through ``cityseg predict`` against the same frames as PNG files (issue 25): frames per second and peak memory.

    PYTHONPATH=src python benchmarks/bench_video.py [--checkpoint CKPT] [--frames 60] [--full-frames 6]
        [--repeats 3] [--memory 100,1000] [--runtime torch] [--json FILE]

Builds clips from real frames: the left (photo) halves of ``../shared/data/cityscapes-pairs`` (256x256,
``train/1.jpg`` ...), and the 2048x1024 photos of ``../shared/fixtures`` (a short full-size clip, the
photos repeated). Each clip is written with cityseg's own encoder (H.264 crf 18 where the FFmpeg
build has it, at 17 frames a second, Cityscapes' rate), decoded back, and its decoded frames written as
PNGs, so that both runs segment the very same pixels.

Then ``cityseg predict``'s two paths on the same frames, in one child process that loads the model once
(as the command does) and times, alternating which goes first, ``--repeats`` times: the video path
(decode, infer, blend and encode the overlay video, the classes CSV) and the image path (read each PNG,
infer, write its four PNG maps). Timing in one process leaves out the command's start-up (imports, model
load: 5-10 s, and as noisy as the rest on a shared machine), and each back-to-back pair gives one
video/PNG ratio; the median ratio is the issue's target (>= 0.9). The model: ``--checkpoint``, else a
freshly initialised model of the default config (``lraspp_mobilenet_v3_large``) saved to a temporary
checkpoint; ``--runtime`` (default torch: eager, no compilation in the timings) is used by both.

Peak memory: the maximum resident set size (``wait4``'s rusage) of ``cityseg predict`` on 256x256 clips
of each ``--memory`` frame count (and of the PNG path on the first count's frames), to show it does not
grow with the video's length; these runs use a fresh ``cityseg_tiny`` (memory is about the frames, not
the model, and a 1,000-frame run of the default model takes many minutes on a small CPU) unless
``--checkpoint`` is given. Prints a summary and one JSON line (machine, load average, figures).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
PAIRS = SHARED / "data" / "cityscapes-pairs" / "train"
FULL = [SHARED / "fixtures" / "cityscapes" / "leftImg8bit" / "train" / "aachen", SHARED / "fixtures" / "images_only"]
RATE = Fraction(17)


def cpu_name() -> str:
    """E.g. ``2-core Intel(R) Xeon(R) Processor`` (the model name of /proc/cpuinfo, else platform's)."""
    name = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.lower().startswith("model name")), "")
    except OSError:
        pass
    return f"{os.cpu_count()}-core {name or platform.processor() or platform.machine()}"


def load_average() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip().split("load average:")[-1].strip()


def pair_photos(count: int):
    """The first ``count`` 256x256 photos of cityscapes-pairs' train split (left halves), one at a time."""
    for i in range(1, count + 1):
        with Image.open(PAIRS / f"{i}.jpg") as img:
            yield np.asarray(img.convert("RGB"))[:, :256]


def full_photos(count: int):
    """``count`` 2048x1024 fixture photos, repeated as needed."""
    paths = [p for folder in FULL for p in sorted(folder.glob("*.png"))
             if Image.open(p).size == (2048, 1024)]
    for i in range(count):
        yield np.asarray(Image.open(paths[i % len(paths)]).convert("RGB"))


def make_inputs(frames, folder: Path, name: str) -> tuple[Path, Path, int]:
    """(clip, PNG folder of its decoded frames, frame count): the clip of ``frames``, encoded as
    ``cityseg predict`` encodes, and the same frames as the decoder gives them, as PNGs."""
    from cityseg.inference.video_io import VideoReader, VideoWriter

    clip, pngs = folder / f"{name}.mp4", folder / f"{name}_png"
    pngs.mkdir(parents=True)
    writer = None
    for frame in frames:
        writer = writer or VideoWriter(clip, frame.shape[1], frame.shape[0], RATE)
        writer.write(frame)
    writer.close()
    count = 0
    for count, frame in enumerate(VideoReader(clip), 1):
        Image.fromarray(frame).save(pngs / f"{name}_{count - 1:06d}.png", compress_level=1)
    return clip, pngs, count


def run(checkpoint: Path, source: Path, out: Path, runtime: str) -> tuple[float, float]:
    """(wall seconds, peak RSS in MiB) of ``cityseg predict`` on ``source``."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "cityseg", "predict", "-q", "--checkpoint", str(checkpoint), str(source),
           "--out", str(out), "--runtime", runtime]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)}: exit status {proc.returncode}")
    return wall, usage.ru_maxrss / 1024


def compare(checkpoint: Path, tmp: Path, name: str, frames, repeats: int, runtime: str) -> dict:
    """Frames per second of the video path and the PNG path of ``cityseg predict`` on the same frames,
    timed in one child process (:func:`child`) that loads the model once: no start-up in the figures."""
    clip, pngs, n = make_inputs(frames, tmp, name)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    cmd = [sys.executable, __file__, "--child", str(checkpoint), str(clip), str(pngs), str(repeats), runtime]
    times = json.loads(subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout)
    ratios = [p / v for v, p in zip(times["video"], times["png"])]  # each pair ran back to back
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"frames": n, "size": list(Image.open(next(pngs.iterdir())).size), "times_s": times,
            "fps": {k: n / med[k] for k in med}, "ratio": statistics.median(ratios), "pair_ratios": ratios}


def child(checkpoint: str, clip: str, pngs: str, repeats: str, runtime: str) -> None:
    """Load the model as ``cityseg predict`` does, warm it up, then time the image path
    (:func:`cityseg.inference.outputs.predict_files`: read, infer, write four PNGs a frame) and the video
    path (:func:`cityseg.inference.video.predict_videos`: decode, infer, blend and encode, CSV) on the
    same frames ``repeats`` times, alternating which goes first; print the times as JSON."""
    from cityseg import logs
    from cityseg.inference import outputs, video
    from cityseg.inference.predict import Predictor
    from cityseg.utils import read_image

    logs.setup("predict", logs.QUIET)
    files = sorted(Path(pngs).iterdir())
    predictor = Predictor.from_checkpoint(checkpoint, runtime=runtime, sizes=outputs.image_sizes([Path(clip)]))
    predictor.predict_batch([read_image(f, "RGB") for f in files[:2]])  # first-call costs
    times: dict[str, list[float]] = {"video": [], "png": []}
    with tempfile.TemporaryDirectory(prefix="bench_video_out.") as out:
        runs = {"png": lambda: outputs.predict_files(predictor, files, Path(out) / "png", None, 1),
                "video": lambda: video.predict_videos(predictor, [video.VideoFile(Path(clip))], Path(out) / "video")}
        for r in range(int(repeats)):
            for key in (("video", "png") if r % 2 == 0 else ("png", "video")):
                start = time.perf_counter()
                runs[key]()
                times[key].append(time.perf_counter() - start)
    print(json.dumps(times))


def fresh_checkpoint(folder: Path, model_name: str | None = None) -> Path:
    import torch

    from cityseg.checkpoint import save_checkpoint
    from cityseg.config import Config
    from cityseg.models import build_model

    cfg = Config()
    cfg.model.name = model_name or cfg.model.name
    torch.manual_seed(0)
    model = build_model(cfg.model.name, freeze=[]).eval()
    path = folder / f"{cfg.model.name}.pt"
    save_checkpoint(path, {"config": cfg.to_dict(), "model": model.state_dict(), "epoch": 0, "step": 0})
    return path


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        child(*argv[1:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, help="model to run (default: a fresh default-config model)")
    parser.add_argument("--frames", type=int, default=60, help="frames of the 256x256 clip timed (default 60)")
    parser.add_argument("--full-frames", type=int, default=6, help="frames of the 2048x1024 clip (default 6; 0: skip)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each input, alternating (default 3)")
    parser.add_argument("--memory", default="100,1000", help="frame counts of the peak-memory runs (default 100,1000)")
    parser.add_argument("--runtime", default="torch", help="--runtime of both commands (default torch: no compiling)")
    parser.add_argument("--json", type=Path, help="also write the summary to this file")
    args = parser.parse_args(argv)
    if not PAIRS.is_dir():
        raise SystemExit(f"{PAIRS}: not found (the real frames this benchmark is built from)")
    sys.path.insert(0, str(REPO / "src"))
    summary: dict = {"machine": cpu_name(), "date": time.strftime("%Y-%m-%d"), "runtime": args.runtime}
    summary["load_average_before"] = load_average()
    with tempfile.TemporaryDirectory(prefix="bench_video.") as name:
        tmp = Path(name)
        checkpoint = args.checkpoint or fresh_checkpoint(tmp)
        summary["checkpoint"] = str(args.checkpoint or "fresh default config (lraspp_mobilenet_v3_large)")
        summary["small"] = compare(checkpoint, tmp, "pairs", pair_photos(args.frames), args.repeats, args.runtime)
        if args.full_frames:
            summary["full"] = compare(checkpoint, tmp, "full", full_photos(args.full_frames), args.repeats,
                                      args.runtime)
        summary["memory"] = {}
        small = args.checkpoint or fresh_checkpoint(tmp, "cityseg_tiny")
        summary["memory_checkpoint"] = str(args.checkpoint or "fresh cityseg_tiny")
        for i, count in enumerate(int(c) for c in args.memory.split(",") if c.strip()):
            clip, pngs, n = make_inputs(pair_photos(count), tmp, f"mem{count}")
            video_s, video_mib = run(small, clip, tmp / "out", args.runtime)
            summary["memory"][n] = {"video_peak_rss_mib": video_mib, "video_wall_s": video_s}
            if i == 0:
                png_s, png_mib = run(small, pngs, tmp / "out", args.runtime)
                summary["memory"][n].update(png_peak_rss_mib=png_mib, png_wall_s=png_s)
            shutil.rmtree(pngs)
    summary["load_average_after"] = load_average()
    for key in ("small", "full"):
        if key in summary:
            s = summary[key]
            print(f"{s['size'][0]}x{s['size'][1]}, {s['frames']} frames: video {s['fps']['video']:.2f} frames/s, "
                  f"PNG {s['fps']['png']:.2f} frames/s (median of {args.repeats}); video/PNG {s['ratio']:.2f} "
                  f"(median of the pairs: {', '.join(f'{r:.2f}' for r in s['pair_ratios'])})")
    for n, m in summary["memory"].items():
        png = f", PNG {m['png_peak_rss_mib']:.0f} MiB ({m['png_wall_s']:.1f} s)" if "png_wall_s" in m else ""
        print(f"{n} frames 256x256 ({summary['memory_checkpoint']}): peak RSS video {m['video_peak_rss_mib']:.0f} MiB "
              f"({m['video_wall_s']:.1f} s){png}")
    print(f"{summary['machine']}; load average {summary['load_average_before']} before, "
          f"{summary['load_average_after']} after")
    print(json.dumps(summary))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
