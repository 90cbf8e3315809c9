"""The synthetic Cityscapes: procedurally drawn street scenes in the official layout.

This is the embedded default dataset of the demo and the tests. Each frame is a street seen
from a car (perspective, all 19 train classes and several void ones; see
``synthetic_scene.py`` for what is drawn, ``synthetic_draw.py`` and ``synthetic_canvas.py`` for
how), written as::

    leftImg8bit/<split>/<city>/<city>_<seq:06d>_000019_leftImg8bit.png   RGB photo
    gtFine/<split>/<city>/<stem>_gtFine_labelIds.png                      uint8 labelIds
    gtFine/<split>/<city>/<stem>_gtFine_color.png                         official colours of the labelIds
    gtFine/<split>/<city>/<stem>_gtFine_instanceIds.png                   labelId*1000+k on instances, labelId elsewhere

Frame i of a split is drawn from its own seed, derived from (seed, split, i), so frames can be
drawn in any order by any number of processes and the same seed always gives the same files.
A folder is complete when its marker file (``.cityseg-synthetic.json``, holding the generation
parameters) exists; it is written last.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from cityseg import layout, logs
from cityseg.config import DataConfig
from cityseg.data.synthetic_scene import ids_to_label_ids, render_scene
from cityseg.errors import CitysegError
from cityseg.labels import CLASS_NAMES, ID_PALETTE, ID_TO_TRAIN_ID, MAX_LABEL_ID, NUM_CLASSES
from cityseg.utils import atomic_path, parse_size, save_png

log = logging.getLogger(__name__)

#: Bumped whenever drawing changes, so that cached default data is regenerated.
GENERATOR_VERSION = 3
MARKER = ".cityseg-synthetic.json"
#: Cities per split; frame i goes to city i % len(cities), sequence i // len(cities).
SPLIT_CITIES: dict[str, tuple[str, ...]] = {"train": ("synthburg", "synthhausen", "synthstadt"), "val": ("synthfurt",)}
#: The annotated frame number of every sequence (Cityscapes annotates frame 19 of each snippet).
FRAME_NUMBER = 19
MIN_SIZE, MAX_SIZE = (32, 16), (8192, 8192)
#: Seed of the default data. One folder serves every run, whatever its ``train.seed``: training
#: and ``cityseg evaluate --checkpoint`` must find the very frames training saw.
DEFAULT_SEED = 0

_DEFAULTS = DataConfig()


def default_data_dir() -> Path:
    """Where the demo's synthetic data lives: ``$CITYSEG_DATA_HOME`` (or ``~/.cache/cityseg``) + ``/synthetic``."""
    home = os.environ.get("CITYSEG_DATA_HOME") or Path.home() / ".cache" / "cityseg"
    return Path(home).expanduser() / "synthetic"


# ----------------------------------------------------------------------------- one frame


def frame_name(split: str, index: int) -> tuple[str, str]:
    """(city, stem) of frame ``index`` of ``split``, e.g. ("synthburg", "synthburg_000000_000019")."""
    cities = SPLIT_CITIES.get(split, (f"synth{split}",))
    city = cities[index % len(cities)]
    return city, f"{city}_{index // len(cities):06d}_{FRAME_NUMBER:06d}"


def frame_paths(root: Path, split: str, index: int) -> dict[str, Path]:
    """The four files of one frame: keys "image", "labelIds", "color", "instanceIds"."""
    city, stem = frame_name(split, index)
    gt = Path(root) / layout.LABEL_DIR / split / city
    return {
        "image": Path(root) / layout.IMAGE_DIR / split / city / f"{stem}{layout.IMAGE_SUFFIX}",
        "labelIds": gt / f"{stem}{layout.LABEL_IDS_SUFFIX}",
        "color": gt / f"{stem}{layout.COLOR_SUFFIX}",
        "instanceIds": gt / f"{stem}{layout.INSTANCE_SUFFIX}",
    }


def render_frame(seed: int, split: str, index: int, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw frame ``index`` of ``split``; the same arguments always give the same arrays.

    Returns:
        image: (H, W, 3) uint8 RGB.
        label_ids: (H, W) uint8 official labelIds.
        instance_ids: (H, W) int32, labelId * 1000 + k on instances, the labelId elsewhere.
    """
    # crc32, not hash(): Python salts str hashes per process, and the seed must not depend on that
    rng = np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(split.encode()), index]))
    image, instance_ids = render_scene(rng, *size)
    return image, ids_to_label_ids(instance_ids), instance_ids


def write_frame(root: Path, split: str, index: int, size: tuple[int, int], seed: int) -> np.ndarray:
    """Draw one frame and write its four files (each atomically); returns its labelId pixel counts."""
    image, label_ids, instance_ids = render_frame(seed, split, index, size)
    paths = frame_paths(root, split, index)
    save_png(image, paths["image"])
    save_png(label_ids, paths["labelIds"])
    save_png(ID_PALETTE[label_ids], paths["color"])
    save_png(instance_ids, paths["instanceIds"])
    return np.bincount(label_ids.ravel(), minlength=MAX_LABEL_ID + 1)


def _write_task(task: tuple[Path, str, int, tuple[int, int], int]) -> np.ndarray:
    return write_frame(*task)


# ----------------------------------------------------------------------------- statistics


@dataclass
class ClassStats:
    """Pixel counts per labelId over a set of frames, and how many frames hold each labelId."""

    pixels: np.ndarray = field(default_factory=lambda: np.zeros(MAX_LABEL_ID + 1, dtype=np.int64))
    frames_with: np.ndarray = field(default_factory=lambda: np.zeros(MAX_LABEL_ID + 1, dtype=np.int64))
    frames: int = 0

    def add_counts(self, counts: np.ndarray) -> None:
        """Add one frame's labelId pixel counts ((MAX_LABEL_ID + 1,) int)."""
        self.pixels += counts
        self.frames_with += counts > 0
        self.frames += 1

    def train_pixel_share(self) -> np.ndarray:
        """(NUM_CLASSES,) float64: share of all pixels that belong to each train class."""
        return self._to_train(self.pixels) / max(int(self.pixels.sum()), 1)

    def train_frame_share(self) -> np.ndarray:
        """(NUM_CLASSES,) float64: share of frames holding at least one pixel of each train class."""
        # a train class is one labelId, so the frame counts of that id are the class's
        return self._to_train(self.frames_with) / max(self.frames, 1)

    @staticmethod
    def _to_train(per_id: np.ndarray) -> np.ndarray:
        out = np.zeros(NUM_CLASSES, dtype=np.float64)
        train_ids = ID_TO_TRAIN_ID[: len(per_id)]
        valid = train_ids < NUM_CLASSES
        np.add.at(out, train_ids[valid], per_id[valid])
        return out

    def table(self) -> str:
        """A text table: each train class's pixel share and frame presence, and the void share."""
        pix, frm = self.train_pixel_share(), self.train_frame_share()
        lines = [f"{'class':<14} {'pixels':>7} {'frames':>7}"]
        lines += [f"{name:<14} {100 * p:6.2f}% {100 * f:6.1f}%" for name, p, f in zip(CLASS_NAMES, pix, frm)]
        lines.append(f"{'(void)':<14} {100 * (1 - pix.sum()):6.2f}%")
        return "\n".join(lines)


def folder_stats(root: str | os.PathLike, splits: tuple[str, ...] = ("train", "val")) -> ClassStats:
    """Class statistics of the ``*_gtFine_labelIds.png`` files under ``root/gtFine/<split>``."""
    from cityseg.utils import read_image

    stats = ClassStats()
    for split in splits:
        for path in sorted((Path(root) / layout.LABEL_DIR / split).glob(f"*/*{layout.LABEL_IDS_SUFFIX}")):
            stats.add_counts(np.bincount(read_image(path).ravel(), minlength=MAX_LABEL_ID + 1)[: MAX_LABEL_ID + 1])
    return stats


# ----------------------------------------------------------------------------- whole folders


def check_params(train: int, val: int, size: tuple[int, int] | str, seed: int) -> tuple[int, int]:
    """Validate generation parameters (CitysegError naming the bad one); returns (width, height)."""
    w, h = parse_size(size, "--size") if isinstance(size, str) else (int(size[0]), int(size[1]))
    if not (MIN_SIZE[0] <= w <= MAX_SIZE[0] and MIN_SIZE[1] <= h <= MAX_SIZE[1]):
        raise CitysegError(f"--size: {w}x{h} is out of range; width {MIN_SIZE[0]}..{MAX_SIZE[0]}, "
                           f"height {MIN_SIZE[1]}..{MAX_SIZE[1]}")
    if train < 0 or val < 0 or train + val == 0:
        raise CitysegError(f"--train {train} --val {val}: frame counts must be >= 0, and not both 0")
    if seed < 0:
        raise CitysegError(f"--seed {seed}: the seed must be a non-negative integer")
    return w, h


def _params(train: int, val: int, size: tuple[int, int], seed: int) -> dict:
    return {"format": "cityseg-synthetic", "generator_version": GENERATOR_VERSION, "train": int(train),
            "val": int(val), "size": [int(size[0]), int(size[1])], "seed": int(seed)}


def read_marker(root: str | os.PathLike) -> dict | None:
    """The generation parameters of a complete synthetic folder, or None if it is not one."""
    try:
        return json.loads((Path(root) / MARKER).read_text())
    except (OSError, ValueError):
        return None


def default_workers(frames: int) -> int:
    """Processes worth starting: :func:`cityseg.processes.default_pool_workers`; none for a handful
    of frames, nor inside a daemonic process (a DataLoader or Pool worker), which may not have children."""
    import multiprocessing

    from cityseg.processes import default_pool_workers

    if frames < 16 or multiprocessing.current_process().daemon:
        return 1
    return default_pool_workers()


def generate(out: str | os.PathLike, train: int, val: int, size: tuple[int, int] | str = (256, 128),
             seed: int = 0, workers: int | None = None, progress: bool = True) -> ClassStats:
    """Write ``train`` + ``val`` synthetic frames into ``out`` in the official layout.

    Frames are drawn in ``workers`` processes (None: see :func:`default_workers`) with a
    progress bar. The marker file is removed first and written last, so an interrupted run
    never leaves a folder that looks complete. Existing frames are overwritten; frames beyond
    ``train``/``val`` from an earlier run are not removed (use :func:`ensure_data` for a fresh
    folder).

    Returns:
        The class statistics of the frames written.
    """
    from tqdm import tqdm

    w, h = check_params(train, val, size, seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).unlink(missing_ok=True)
    tasks = [(out, split, i, (w, h), seed) for split, n in (("train", train), ("val", val)) for i in range(n)]
    workers = default_workers(len(tasks)) if workers is None else max(1, workers)
    stats = ClassStats()
    with tqdm(total=len(tasks), desc="synth", unit="frame", disable=logs.bar_disable(progress)) as bar:
        if workers == 1:
            for counts in map(_write_task, tasks):
                stats.add_counts(counts)
                bar.update()
        else:
            from cityseg.processes import WorkerPool

            with WorkerPool(min(workers, len(tasks)), f"synthetic data {out}", [__name__]) as pool:
                for counts in pool.map(_write_task, tasks, ordered=False, chunksize=4,
                                       describe=lambda task: f"{task[1]} frame {task[2]}"):
                    stats.add_counts(counts)
                    bar.update()
    with atomic_path(out / MARKER) as tmp:  # last: the folder is complete
        tmp.write_text(json.dumps(_params(train, val, (w, h), seed), indent=1))
    return stats


@contextmanager
def _locked(lock_path: Path, what: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_path`` across processes (fcntl.flock; filelock elsewhere);
    ``what`` names the guarded folder in the message shown while waiting.

    The lock file itself is never deleted: removing it while another process waits on it
    would let a third process lock a new file and run alongside.
    """
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not POSIX (Windows): the filelock package does the same
        from filelock import FileLock

        with FileLock(str(lock_path)):
            yield
        return
    with open(lock_path, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info(f"waiting for another process writing {what} ...")
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_data(out: str | os.PathLike, train: int, val: int, size: tuple[int, int] | str = (256, 128),
                seed: int = 0, workers: int | None = None, progress: bool = True, replace_foreign: bool = False,
                force: bool = False) -> ClassStats | None:
    """Make ``out`` a complete synthetic folder with exactly these parameters.

    Safe when several processes call it at once (torchrun ranks): one generates under a file
    lock while the others wait, then find the marker and return. Frames are drawn into a fresh
    sibling folder that replaces ``out`` only when complete, so ``out`` is never half-written
    and frames of earlier parameters never linger.

    A non-empty ``out`` without a marker is not ours (it may be real data): CitysegError,
    unless ``replace_foreign``. ``force`` redraws even an up-to-date folder.

    Returns:
        The class statistics when it generated, None when ``out`` was already up to date.
    """
    w, h = check_params(train, val, size, seed)
    out = Path(out).expanduser().absolute()
    if out.exists() and not out.is_dir():
        raise CitysegError(f"{out}: exists and is not a folder")
    with _locked(out.parent / f".{out.name}.lock", out):
        if not force and read_marker(out) == _params(train, val, (w, h), seed):
            return None
        if out.is_dir() and read_marker(out) is None and any(out.iterdir()) and not replace_foreign:
            raise CitysegError(f"{out}: folder is not empty and holds no synthetic data; choose another folder "
                               "or pass --force to replace it")
        for stale in [*out.parent.glob(f".{out.name}.tmp-*"), *out.parent.glob(f".{out.name}.old-*")]:
            shutil.rmtree(stale, ignore_errors=True)  # left by a killed run; we hold the lock
        # not tempfile.mkdtemp: its 0700 mode would stick to the data folder; mkdir honours the umask
        tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            stats = generate(tmp, train, val, (w, h), seed, workers, progress)
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            if out.exists():
                os.replace(out, old)
            os.replace(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        shutil.rmtree(old, ignore_errors=True)
        return stats


def ensure_default_data(train: int = _DEFAULTS.synth_train, val: int = _DEFAULTS.synth_val,
                        size: tuple[int, int] | str = _DEFAULTS.synth_size, seed: int = DEFAULT_SEED,
                        workers: int | None = None, progress: bool = True) -> Path:
    """The demo's synthetic data in :func:`default_data_dir`, generated on first use.

    Regenerated (into a fresh folder) when the parameters or the generator version differ
    from those that made the folder. Safe when several processes start at once.
    """
    root = default_data_dir()
    if ensure_data(root, train, val, size, seed, workers, progress, replace_foreign=True) is not None and progress:
        log.info(f"synthetic Cityscapes: {train} train + {val} val frames written to {root}")
    return root


def data_root(data: DataConfig) -> Path:
    """``data.root``, or the default data (:func:`ensure_default_data` of the ``synth_*`` sizes, drawn
    with :data:`DEFAULT_SEED`): the one place that decides which frames a config trains and scores on."""
    if data.root is not None:
        return Path(data.root).expanduser()
    size = data.synth_size
    return Path(ensure_default_data(train=data.synth_train, val=data.synth_val, size=size, seed=DEFAULT_SEED))
