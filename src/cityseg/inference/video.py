"""Videos through ``cityseg predict``: what it writes for a video file, or for a folder of frames given
with ``--video-fps``, streaming frames through decode, inference and encode.

For an input ``drive.mp4`` (any container and codec FFmpeg reads)::

    OUT/drive.overlay.mp4     the photo with the palette colours blended, at the input's size, frame rate
                              and frame count (H.264 where the FFmpeg build has it, else MPEG-4)
    OUT/drive.color.mp4       with ``color=True`` (``--color-video``): the palette colours alone
    OUT/drive.classes.csv     one row a frame: ``frame,time_s,<class names>``, each class's share of the
                              frame's pixels (fractions rounded to 6 decimals, summing to 1)
    OUT/trainIds/drive_000000.png ...  with ``save_frames`` (``--save-frames``): every frame's four maps,
                              as :func:`cityseg.inference.outputs.write_outputs` writes a photo's

A folder of frames given with ``--video-fps N`` is such a video of its images in name order, named
after the folder (each folder holding images is one video); with ``save_frames`` its frames' maps
are named after the images, as ``cityseg predict`` without ``--video-fps`` names them.

Frames are decoded in one thread and encoded in another, each behind a bounded queue, while the
caller's thread runs the model ``batch_size`` frames at a time: memory holds a few frames whatever
the video's length. Each file is written under a temporary name in OUT and renamed when complete.
Ctrl-C stops between frames: the files are finalised with the frames done, renamed, and the count is
said. A file damaged mid-stream gives the frames before the damage and one warning; a file that is
no video is one error line and a failure, and the other inputs are still done.
"""

from __future__ import annotations

import csv
import logging
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cityseg import logs
from cityseg.datasets import DatasetSpec, load_dataset
from cityseg.errors import CitysegError
from cityseg.inference.outputs import write_outputs
from cityseg.inference.predict import Predictor
from cityseg.inference.video_io import VideoInfo, VideoReader, VideoWriter, Sink, frame_batches, is_video, prefetch
from cityseg.stats import pixel_shares
from cityseg.utils import atomic_path, read_image
from cityseg.viz import overlay

log = logging.getLogger("cityseg")


def parse_rate(text: str) -> Fraction:
    """``--video-fps``: ``25``, ``12.5`` or ``30000/1001`` -> a positive Fraction (CitysegError otherwise)."""
    try:
        rate = Fraction(text.strip())
    except (ValueError, ZeroDivisionError):
        rate = Fraction(0)
    if not 0 < rate <= 1000:
        raise CitysegError(f"--video-fps {text!r}: give frames per second, e.g. 17, 12.5 or 30000/1001")
    return rate.limit_denominator(65535)


# --- sources ------------------------------------------------------------------------------------


class VideoFile:
    """A video file: frames named ``<stem>_000000``, ``<stem>_000001``, ..."""

    def __init__(self, path: Path) -> None:
        self.path, self.stem = path, path.stem
        self.reader: VideoReader | None = None
        self.failed = 0

    def open(self) -> VideoInfo:
        self.reader = VideoReader(self.path)
        return self.reader.info

    def frames(self) -> Iterator[tuple[str, np.ndarray]]:
        for i, frame in enumerate(self.reader):
            yield f"{self.stem}_{i:06d}", frame

    @property
    def damage(self) -> str | None:
        return self.reader.damage if self.reader else None


class FrameFolder:
    """The images of one folder, in name order, as a video at ``rate``: frames named after the images.
    An image that cannot be read, or has another size than the first, is reported and left out."""

    def __init__(self, folder: Path, images: Sequence[Path], rate: Fraction) -> None:
        self.path, self.stem, self.images, self.rate = folder, folder.resolve().name, list(images), rate
        self.size: tuple[int, int] | None = None
        self.failed, self.damage = 0, None

    def open(self) -> VideoInfo:
        from PIL import Image

        for path in self.images:
            try:
                with Image.open(path) as img:
                    self.size = img.size
                    return VideoInfo(img.width, img.height, self.rate, len(self.images), True)
            except (OSError, ValueError, Image.DecompressionBombError):
                continue
        raise CitysegError(f"{self.path}: none of its {len(self.images)} images can be read")

    def frames(self) -> Iterator[tuple[str, np.ndarray]]:
        for path in self.images:
            try:
                image = read_image(path, "RGB")
                if (image.shape[1], image.shape[0]) != self.size:
                    raise CitysegError(f"{path}: {image.shape[1]}x{image.shape[0]}, not the {self.size[0]}x"
                                       f"{self.size[1]} of the first frame of {self.path}; left out of its video")
            except CitysegError as exc:
                tqdm.write(f"cityseg predict: {exc}", file=sys.stderr)
                self.failed += 1
                continue
            yield path.stem, image


def split_inputs(files: Sequence[Path], inputs: Sequence[str], video_fps: Fraction | None
                 ) -> tuple[list[Path], list[VideoFile | FrameFolder], list[str]]:
    """``files`` (from :func:`~cityseg.inference.outputs.collect_inputs`) -> (images, videos, one message
    per refused input). With ``video_fps`` the images found in the folders among ``inputs`` become one
    :class:`FrameFolder` per folder that holds them; images named one by one stay images."""
    images = [f for f in files if not is_video(f)]
    videos: list[VideoFile | FrameFolder] = [VideoFile(f) for f in files if is_video(f)]
    problems: list[str] = []
    if video_fps:
        folders = [Path(i).resolve() for i in inputs if Path(i).is_dir()]
        grouped: dict[Path, list[Path]] = {}
        for image in images:
            if any(image.resolve().is_relative_to(f) for f in folders):
                grouped.setdefault(image.parent, []).append(image)
        images = [f for f in images if not any(f in group for group in grouped.values())]
        names = {f.stem: f for f in files}
        for folder, frames in grouped.items():
            sequence = FrameFolder(folder, frames, video_fps)
            if sequence.stem in names and names[sequence.stem].parent != folder:
                problems.append(f"{folder}: same name as {names[sequence.stem]}; its video would overwrite that "
                                "one's outputs, skipped")
                continue
            names[sequence.stem] = folder / "."
            videos.append(sequence)
    return images, videos, problems


# --- the loop -----------------------------------------------------------------------------------


@dataclass
class Result:
    failed: int = 0  #: inputs (or frames of a folder) that failed
    interrupted: bool = False  #: Ctrl-C: the files hold the frames done, and nothing after was started


def predict_videos(
    predictor: Predictor, videos: Sequence[VideoFile | FrameFolder], out: Path, *, color: bool = False,
    save_frames: bool = False, gt_index: dict[str, Path] | None = None,
) -> Result:
    """Segment and write every video (see the module's notes); stops at Ctrl-C after finalising the files."""
    result = Result()
    for source in videos:
        try:
            info = source.open()
        except CitysegError as exc:
            log.error(str(exc))
            result.failed += 1
            continue
        start = time.perf_counter()
        try:
            done, interrupted = _predict_one(predictor, source, info, out, color, save_frames,
                                             gt_index if isinstance(source, FrameFolder) else None)
        except CitysegError as exc:
            log.error(str(exc))
            result.failed += 1
            continue
        except OSError as exc:
            log.error(f"{out}: cannot write the outputs of {source.path} ({exc.strerror or exc})")
            result.failed += 1
            continue
        result.failed += source.failed + done.failed
        if source.damage:
            log.warning(source.damage)
        if interrupted:
            of = f" of the {info.frames}" if info.frames else ""
            where = out / f"{source.stem}.overlay.mp4"
            log.warning(f"interrupted: {done.count}{of} frames of {source.path} done, in {where} and the files beside "
                        "it; nothing after them was started")
            result.interrupted = True
            break
        seconds = time.perf_counter() - start
        log.info(f"cityseg predict: {source.path}: {done.count} frames in {seconds:.1f} s ({done.count / seconds:.2f} "
                 f"frames/s) -> {out / (source.stem + '.overlay.mp4')}")
    return result


def _predict_one(predictor: Predictor, source: VideoFile | FrameFolder, info: VideoInfo, out: Path, color: bool,
                 save_frames: bool, gt_index: dict[str, Path] | None) -> tuple[_Outputs, bool]:
    batch_size = predictor.options["batch_size"]
    names = {"overlay": f"{source.stem}.overlay.mp4", "classes": f"{source.stem}.classes.csv"}
    if color:
        names["color"] = f"{source.stem}.color.mp4"
    interrupted = False
    with ExitStack() as stack, tqdm(total=info.frames, unit="frame", desc=source.stem, file=sys.stderr,
                                    dynamic_ncols=True, disable=logs.bar_disable()) as bar:
        tmp = {key: stack.enter_context(atomic_path(out / name)) for key, name in names.items()}
        outputs = _Outputs(tmp, info, predictor.spec, out if save_frames else None, gt_index, bar)
        stack.callback(outputs.close)  # finalised before the renames (the stack unwinds last in, first out)
        sink = Sink(outputs.write, maxsize=2 * batch_size + 2)
        frames = prefetch(source.frames(), maxsize=2 * batch_size + 2)
        try:
            try:
                for batch in frame_batches(frames, batch_size):
                    preds = predictor.predict_batch([frame for _, frame in batch])
                    for (name, frame), pred in zip(batch, preds, strict=True):
                        sink.put((name, frame, pred))
            except KeyboardInterrupt:
                interrupted = True
            finally:
                frames.close()
        finally:
            sink.close()
        if interrupted and not outputs.count:
            raise KeyboardInterrupt  # before the first frame: no files (the command says "interrupted")
    return outputs, interrupted


class _Outputs:
    """Writes each predicted frame (in the encoder thread): the videos, the CSV row, the frame's maps."""

    def __init__(self, tmp: dict[str, Path], info: VideoInfo, spec: DatasetSpec | None, frames_out: Path | None,
                 gt_index: dict[str, Path] | None, bar: tqdm) -> None:
        self.spec = spec or load_dataset("cityscapes")
        self.rate, self.frames_out, self.gt_index, self.bar = info.rate, frames_out, gt_index, bar
        self.count = self.failed = 0
        self.closing: list = []
        try:
            self.overlay = self._writer(tmp["overlay"], info)
            self.color = self._writer(tmp["color"], info) if "color" in tmp else None
            self.csv_file = open(tmp["classes"], "w", newline="", encoding="utf-8")  # noqa: SIM115 - see close()
            self.closing.append(self.csv_file)
        except BaseException:
            self.close()
            raise
        self.rows = csv.writer(self.csv_file)
        self.rows.writerow(["frame", "time_s", *self.spec.class_names])

    def _writer(self, path: Path, info: VideoInfo) -> VideoWriter:
        writer = VideoWriter(path, info.width, info.height, info.rate)
        self.closing.append(writer)
        return writer

    def write(self, item: tuple[str, np.ndarray, np.ndarray]) -> None:
        name, frame, pred = item
        self.overlay.write(overlay(frame, pred, normalized=False, spec=self.spec))
        if self.color is not None:
            self.color.write(self.spec.colorize(pred))
        shares = pixel_shares(pred, self.spec.num_classes)
        self.rows.writerow([self.count, f"{float(self.count / self.rate):.6f}", *(f"{s:.6f}" for s in shares)])
        if self.frames_out is not None:
            self.failed += not write_outputs(self.frames_out, name, frame, pred, self.gt_index, self.bar, self.spec)
        self.count += 1
        self.bar.update(1)

    def close(self) -> None:
        """Finalise every file (flush the encoders, close the containers and the CSV)."""
        error = None
        for item in self.closing:
            try:
                item.close()
            except Exception as exc:  # noqa: BLE001 - close the others, then raise the first
                error = error or exc
        self.closing = []
        if error is not None:
            raise error
