"""Video files in and out, through PyAV (FFmpeg's bindings, as torchvision uses them), and the threads
that let decoding and encoding overlap inference.

- :class:`VideoReader` decodes any container and codec FFmpeg reads into (H, W, 3) uint8 RGB frames,
  one at a time; a file damaged or cut short mid-stream gives the frames before the damage and says
  where decoding stopped (:attr:`VideoReader.damage`).
- :class:`VideoWriter` encodes RGB frames at a constant rate: H.264 (libx264, yuv420p) where the
  FFmpeg build has it, else MPEG-4 part 2. yuv420p needs an even width and height: an odd-sized
  frame is padded by repeating its last column / row (the file is then one pixel wider / taller).
- :func:`prefetch` runs an iterator in a thread behind a bounded queue; :class:`Sink` consumes items
  in a thread behind one. Both pass a thread's exception on to the caller's thread and never hang on
  one; memory holds at most the queues' few frames, whatever the video's length.
- :func:`stream_labels` is :meth:`cityseg.inference.predict.Predictor.predict_video`: label maps,
  frame by frame, of a video file or of any iterable of frames.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from cityseg.errors import CitysegError, first_line

log = logging.getLogger(__name__)
T = TypeVar("T")

#: File endings read as videos (anything else FFmpeg reads can be renamed to one of them).
VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".mts", ".m2ts",
                    ".wmv", ".flv", ".3gp", ".ogv")
#: Encoder settings: libx264 constant quality 18 (visually lossless) at the ``veryfast`` preset, which
#: encodes a 2048x1024 frame in ~80 ms on a 2-core CPU (about 2x faster than ``medium`` at the same size).
X264_OPTIONS = {"crf": "18", "preset": "veryfast"}


def is_video(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


@dataclass(frozen=True)
class VideoInfo:
    """What a video's header says: frame size, frame rate, and frame count (None: unknown; ``exact``:
    counted in the header, not estimated from the duration)."""

    width: int
    height: int
    rate: Fraction
    frames: int | None
    exact: bool


def _av():
    import av

    return av


def _open(path: Path):
    """The container of ``path`` with a video stream, or CitysegError in one line."""
    av = _av()
    try:
        container = av.open(str(path), metadata_errors="ignore")
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as exc:
        reason = "file not found" if not path.is_file() else _mp4_without_index(path) or (
            f"not a video FFmpeg can read ({_reason(exc)})")
        raise CitysegError(f"{path}: {reason}") from None
    if not container.streams.video:
        container.close()
        raise CitysegError(f"{path}: no video stream in it")
    return container


def _reason(exc: BaseException) -> str:
    """FFmpeg's words for an error, without the errno and file name PyAV adds around them."""
    return getattr(exc, "strerror", None) or first_line(exc)


def _mp4_without_index(path: Path) -> str | None:
    """The reason an MP4/MOV cannot be opened when its top-level boxes hold media data (mdat) but no
    index (moov): the file was cut short before the writer finalised it, and nothing can be read."""
    boxes, offset, size = set(), 0, path.stat().st_size
    with open(path, "rb") as f:
        while offset + 8 <= size and len(boxes) < 64:
            f.seek(offset)
            header = f.read(16)
            length, kind = int.from_bytes(header[:4], "big"), header[4:8]
            if length == 1 and len(header) == 16:
                length = int.from_bytes(header[8:16], "big")
            boxes.add(kind)
            if length < 8:
                break
            offset += length
    if b"ftyp" in boxes and b"mdat" in boxes and b"moov" not in boxes:
        return ("an MP4/MOV without its index (moov box), cut short before it was finalised: no frame can be "
                "read (write videos with -movflags +faststart, or as .mkv, to keep a cut file readable)")
    return None


def _info(container, stream) -> VideoInfo:
    rate = Fraction(stream.average_rate or stream.guessed_rate or stream.base_rate or 25).limit_denominator(65535)
    if stream.frames > 0:
        return VideoInfo(stream.width, stream.height, rate, int(stream.frames), True)
    seconds = None
    if stream.duration and stream.time_base:
        seconds = float(stream.duration * stream.time_base)
    elif "DURATION" in stream.metadata:  # Matroska / WebM keep a duration per stream
        try:
            h, m, s = stream.metadata["DURATION"].split(":")
            seconds = int(h) * 3600 + int(m) * 60 + float(s)
        except ValueError:
            pass
    if seconds is None and container.duration:
        seconds = container.duration / 1_000_000
    frames = round(seconds * rate) if seconds else None
    return VideoInfo(stream.width, stream.height, rate, frames, False)


def probe(path: str | os.PathLike) -> VideoInfo:
    """Read a video's header (cheap: nothing is decoded). CitysegError in one line if it is no video."""
    container = _open(Path(path))
    with container:
        return _info(container, container.streams.video[0])


class VideoReader:
    """Iterate the frames of a video file as (H, W, 3) uint8 RGB arrays, decoded one at a time.

    Constructing it reads the header (:attr:`info`; CitysegError if the file is no video). A frame that
    cannot be decoded ends the iteration: after it, :attr:`done` is the number of frames given and
    :attr:`damage` one line naming the file and the frame where decoding stopped (None for a whole
    file). A file whose header promises more frames than could be decoded (a streamable file cut
    short) is damaged too. CitysegError when not even the first frame decodes.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.info = probe(self.path)
        self.done = 0
        self.damage: str | None = None

    def __iter__(self) -> Iterator[np.ndarray]:
        av = _av()
        self.done, self.damage = 0, None
        container = _open(self.path)
        try:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"  # FFmpeg's frame threads: decoding keeps up with 2048x1024 H.264
            try:
                for frame in container.decode(stream):
                    yield frame.to_ndarray(format="rgb24")
                    self.done += 1
            except (av.error.FFmpegError, EOFError, OSError) as exc:
                self._stopped(f"decoding stopped at frame {self.done} ({_reason(exc)})")
            else:
                expected = self.info.frames
                # an estimate from the duration may be one frame off; a count in the header is exact
                if expected and self.done < expected - (0 if self.info.exact else 1):
                    self._stopped(f"decoding stopped at frame {self.done}: the file ends there but its header "
                                  f"says {expected} frames")
                elif not self.done:
                    raise CitysegError(f"{self.path}: no frame in it could be decoded")
        finally:
            container.close()

    def _stopped(self, what: str) -> None:
        if not self.done:
            raise CitysegError(f"{self.path}: not a video FFmpeg can decode: {what}")
        self.damage = f"{self.path}: damaged or truncated: {what}; the {self.done} frames before it are done"


def encoder() -> str:
    """The video encoder written: ``libx264`` where this FFmpeg build has it, else ``mpeg4`` (every build's)."""
    return "libx264" if "libx264" in _av().codecs_available else "mpeg4"


class VideoWriter:
    """Encode (H, W, 3) uint8 RGB frames into ``path`` (its suffix picks the container) at ``rate``
    frames per second, frame i at time i / rate: H.264 (libx264, yuv420p, :data:`X264_OPTIONS`) where
    the FFmpeg build has it, else MPEG-4 part 2. Every frame written is in the file after :meth:`close`,
    which flushes the encoder and finalises the container. Frames are padded to an even size (see the
    module's notes); a frame of another size than the first is scaled to it."""

    def __init__(self, path: str | os.PathLike, width: int, height: int, rate: Fraction) -> None:
        av = _av()
        self.path, self.count = Path(path), 0
        self.width, self.height = width + width % 2, height + height % 2
        options = {"movflags": "+faststart"} if self.path.suffix.lower() in (".mp4", ".m4v", ".mov") else {}
        self.container = av.open(str(self.path), "w", options=options)
        try:
            self.codec = encoder()
            self.stream = self.container.add_stream(self.codec, rate=rate)
            self.stream.width, self.stream.height, self.stream.pix_fmt = self.width, self.height, "yuv420p"
            if self.codec == "libx264":
                self.stream.options = dict(X264_OPTIONS)
            else:  # about one bit a pixel
                self.stream.bit_rate = int(self.width * self.height * max(1.0, float(rate)))
        except BaseException:
            self.container.close()
            raise

    def write(self, rgb: np.ndarray) -> None:
        av = _av()
        height, width = rgb.shape[:2]
        if (width % 2 or height % 2) and (width + width % 2, height + height % 2) == (self.width, self.height):
            rgb = np.pad(rgb, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        if (width, height) == (self.width, self.height):
            # chroma averaged over each 2x2 block: swscale's default (bilinear) blurs it across class borders,
            # 3-4x the colour error of the overlays' sharp edges
            frame = frame.reformat(format="yuv420p", interpolation="AREA")
        frame.pts = self.count
        self.container.mux(self.stream.encode(frame))
        self.count += 1

    def close(self) -> None:
        """Flush the encoder and finalise the file (safe to call twice)."""
        if self.container is None:
            return
        try:
            self.container.mux(self.stream.encode(None))
        finally:
            self.container.close()
            self.container = None


# --- threads ------------------------------------------------------------------------------------


def _put(q: queue.Queue, item: Any, stop: threading.Event) -> bool:
    """Put ``item`` unless ``stop`` is set first; False when stopped."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.05)
            return True
        except queue.Full:
            continue
    return False


def prefetch(items: Iterable[T], maxsize: int, name: str = "cityseg-decode") -> Iterator[T]:
    """Iterate ``items`` in a thread, at most ``maxsize`` ahead of the consumer. An exception raised by
    ``items`` is raised here, in the consumer's thread; closing this generator (or leaving a loop over
    it) stops the thread and closes ``items``."""
    q: queue.Queue = queue.Queue(maxsize)
    stop = threading.Event()

    def produce() -> None:
        it = iter(items)
        try:
            for item in it:
                if not _put(q, (True, item), stop):
                    return
            _put(q, (False, None), stop)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            _put(q, (False, exc), stop)
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, name=name, daemon=True)
    thread.start()
    try:
        while True:
            ok, item = q.get()
            if ok:
                yield item
            elif item is None:
                return
            else:
                raise item
    finally:
        stop.set()
        while thread.is_alive():  # empty the queue so that a blocked put returns
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(0.05)


class Sink:
    """Hand items to ``consume`` in a thread, behind a queue of ``maxsize``: :meth:`put` blocks while
    it is full; :meth:`close` waits until every item put is consumed. An exception in ``consume``
    stops the thread and is raised by the next :meth:`put` or by :meth:`close`."""

    _END = object()

    def __init__(self, consume: Callable[[Any], None], maxsize: int, name: str = "cityseg-encode") -> None:
        self.consume = consume
        self.queue: queue.Queue = queue.Queue(maxsize)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            if item is self._END:
                return
            try:
                self.consume(item)
            except BaseException as exc:  # noqa: BLE001 - raised in the caller's thread
                self.error = exc
                return

    def put(self, item: Any) -> None:
        while True:
            self._raise()
            try:
                self.queue.put(item, timeout=0.05)
                return
            except queue.Full:
                continue

    def close(self) -> None:
        """Wait until everything put is consumed (or the thread failed); raise its exception."""
        while self.thread.is_alive():
            try:
                self.queue.put(self._END, timeout=0.05)
                break
            except queue.Full:
                continue
        self.thread.join()
        self._raise()

    def _raise(self) -> None:
        if self.error is not None:
            error, self.error = self.error, None
            raise error


def frame_batches(frames: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of ``size`` items (the last may be shorter), never holding more than one list."""
    batch: list[T] = []
    for frame in frames:
        batch.append(frame)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def stream_labels(
    predict_batch: Callable[[Sequence[np.ndarray]], list[np.ndarray]],
    source: str | os.PathLike | Iterable[np.ndarray],
    batch_size: int = 1,
) -> Iterator[np.ndarray]:
    """(H, W) uint8 label maps of ``source``'s frames, in order, computed ``batch_size`` frames at a time:
    ``source`` is a video file (decoded in a thread ahead of inference; CitysegError at once if it is no
    video, one logged warning if it is damaged mid-stream) or an iterable of (H, W, 3) uint8 RGB frames."""
    reader = VideoReader(source) if isinstance(source, (str, os.PathLike)) else None

    def labels() -> Iterator[np.ndarray]:
        frames = prefetch(reader, 2 * batch_size + 2) if reader is not None else iter(source)
        try:
            for batch in frame_batches(frames, batch_size):
                yield from predict_batch(batch)
        finally:
            close = getattr(frames, "close", None)
            if close is not None:
                close()
        if reader is not None and reader.damage:
            log.warning(reader.damage)

    return labels()
