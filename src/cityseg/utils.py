"""Small helpers shared by every module: sizes, atomic writes, image files."""

from __future__ import annotations

import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import numpy as np
import yaml

from cityseg.errors import CitysegError

_SIZE_RE = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$")


#: The largest size a crop, a resize or a benchmark input may have: 8192 pixels a side and 64 M
#: pixels in all (32x a 2048x1024 Cityscapes frame). Larger ones only try to allocate tens of GB.
MAX_SIDE, MAX_PIXELS = 8192, 8192 * 8192
#: The largest test-time or benchmark scale factor.
MAX_SCALE = 8.0


class Size(NamedTuple):
    """A width x height in pixels, as :func:`parse_size` reads it from ``"WxH"`` text once (the
    config's size keys hold these); ``str()`` writes the text back."""

    width: int
    height: int

    def __str__(self) -> str:
        return f"{self.width}x{self.height}"


def parse_size(text: str, what: str = "size") -> Size:
    """Parse ``"WxH"`` (width x height, as everywhere in the CLI) -> ``Size(width, height)``.

    Raises:
        CitysegError: not ``WxH`` with positive integers, or larger than :data:`MAX_SIDE` a side
            or :data:`MAX_PIXELS` in all.
    """
    m = _SIZE_RE.match(str(text))
    if not m or int(m.group(1)) <= 0 or int(m.group(2)) <= 0:
        raise CitysegError(f"{what}: {text!r} is not a size; write WIDTHxHEIGHT, e.g. 1024x512")
    w, h = int(m.group(1)), int(m.group(2))
    if max(w, h) > MAX_SIDE or w * h > MAX_PIXELS:
        raise CitysegError(f"{what}: {text!r} is too large; valid: at most {MAX_SIDE} a side and {MAX_PIXELS:,} pixels")
    return Size(w, h)


def parse_scales(text: str) -> list[float]:
    """``"0.75,1,1.25"`` (the CLI's ``--scales``) -> ``[0.75, 1.0, 1.25]``; CitysegError unless positive numbers."""
    try:
        scales = [float(s) for s in text.split(",") if s.strip()]
    except ValueError:
        scales = []
    if not scales or any(not 0 < s <= MAX_SCALE for s in scales):
        raise CitysegError(
            f"--scales {text!r}: write numbers in (0, {MAX_SCALE:g}] separated by commas, e.g. 0.75,1,1.25"
        )
    return scales


def require(module: str, extra: str, purpose: str, package: str | None = None) -> Any:
    """Import an optional dependency, or CitysegError naming the extra to install, e.g.
    ``ONNX export needs onnx, which is not installed; pip install "cityseg[onnx]"`` (``package``:
    the distribution's name where it differs from the module's)."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise CitysegError(f'{purpose} needs {package or module.split(".")[0]}, which is not installed; '
                           f'pip install "cityseg[{extra}]"') from None


def writable_dir(path: str | os.PathLike, what: str) -> Path:
    """Check, before any work starts, that the output folder ``path`` can be made and written
    into; nothing is created (a refused command leaves no empty folder behind). Returns it as a Path.

    An existing folder is proven by writing and removing a temporary file in it; a missing one by
    its nearest existing parent being a writable folder.

    Raises:
        CitysegError: naming ``what`` (e.g. ``--out``): a file stands where the folder (or one of
            its parents) should be, or the folder is read-only or otherwise unwritable.
    """
    path = Path(path)
    for part in (path, *path.parents):
        if part.exists() and not part.is_dir():
            raise CitysegError(f"{what}: {part} is a file, not a folder; give a folder to write into")
    existing = next((p for p in (path, *path.parents) if p.exists()), Path("."))
    try:
        if existing == path:
            with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test."):
                pass
        elif not os.access(existing, os.W_OK | os.X_OK):
            raise PermissionError(13, "Permission denied")
    except OSError as exc:
        raise CitysegError(f"{what}: cannot write into {existing} ({exc.strerror or exc})") from None
    return path


def writable_file(path: str | os.PathLike, what: str) -> Path:
    """Check, before any work starts, that the output file ``path`` can be written (atomically,
    beside its final name): not a folder, its folder creatable and writable. Returns it as a Path.

    Raises:
        CitysegError: naming ``what`` and the problem.
    """
    path = Path(path)
    if path.is_dir():
        raise CitysegError(f"{what}: {path} is a folder; give a file name (e.g. {path / 'out'}{path.suffix or ''})")
    if path.exists() and not os.access(path, os.W_OK):
        raise CitysegError(f"{what}: {path} exists and is read-only")
    writable_dir(path.parent, what)
    return path


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``.

    A crash or kill mid-write leaves the old file (or no file), never a half-written one.
    The temporary name keeps the suffix so that libraries choosing a format by it still work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    # mkstemp creates 0600; give the final file the usual permissions (0666 less the umask)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_png(array: np.ndarray, path: str | os.PathLike) -> None:
    """Write a (H, W) uint8/uint16/int32 map or (H, W, 3) uint8 image as PNG, atomically."""
    from PIL import Image

    if array.ndim == 2 and array.dtype not in (np.uint8,):
        # Wider maps (instanceIds) are stored as 16-bit grey PNGs like the official ones: PNG has
        # no 32-bit grey, and Pillow >= 11 refuses to write mode "I"; values must fit 0..65535.
        if array.size and (array.min() < 0 or array.max() > np.iinfo(np.uint16).max):
            raise ValueError(f"{path}: values {array.min()}..{array.max()} do not fit a 16-bit PNG")
        img = Image.fromarray(array.astype(np.uint16))
    else:
        img = Image.fromarray(np.ascontiguousarray(array))
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")


def read_image(path: str | os.PathLike, mode: str | None = None) -> np.ndarray:
    """Read an image file into a numpy array; a missing or corrupt file raises CitysegError.

    ``mode``: PIL mode to convert to (``"RGB"``, ``"L"``); None keeps the file's own.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise CitysegError(f"{path}: file not found")
    try:
        with Image.open(path) as img:
            img.load()
            if mode is not None and img.mode != mode:
                img = img.convert(mode)
            return np.asarray(img)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise CitysegError(f"{path}: cannot read image ({exc})") from None


def read_yaml(path: Path, what: str) -> Any:
    """The YAML document in ``path`` (``safe_load``: data, never objects).

    Raises:
        CitysegError: naming ``what`` when the file cannot be read, is not UTF-8 or not valid YAML.
    """
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise CitysegError(f"{what}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    except OSError as exc:
        raise CitysegError(f"{what}: cannot read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise CitysegError(f"{what}: not valid YAML ({str(exc).splitlines()[0]})") from None
