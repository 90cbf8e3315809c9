"""Fast decoding of greyscale label PNGs (label ids, train ids, 16-bit instance ids).

NumPy only (no torch): ``cityseg evaluate --pred-dir`` decodes three of these per frame, and
decoding was most of its time. A label map is long runs of one value, which general decoders
do not exploit: inflating such a file with zlib and unfiltering it byte by byte cost libspng
25 ms per Cityscapes frame. Here libdeflate (the ``deflate`` package) inflates and a small C
unfilter (``_unfilter.c``) fills whole runs at once: about 1.5 ms for the same three files
(``benchmarks/bench_evaluate.py``).

Only the files label maps are saved as take this path: non-interlaced greyscale at 8 or 16 bits,
the way the official tools, Pillow, OpenCV and torchvision write them. :func:`decode_grey`
returns None for any other PNG (palette, colour, alpha, 1-4 bits, interlaced, over Pillow's
pixel limit), for any file Pillow might read differently or refuse (a bad CRC or Adler-32,
truncated data, a second IHDR, IDAT chunks that are not consecutive, any chunk other than IHDR,
IDAT and IEND), and when the extension could not be built; callers then use a general decoder, whose own errors name what is wrong
with the file.

:func:`read_map` is that whole chain for NumPy callers: this decoder, else pyspng (libspng) for
plain greyscale files where the extension is not built, else Pillow.
"""

from __future__ import annotations

import os
import struct
import sys

import numpy as np

from cityseg.utils import read_image

try:  # built by setup.py where a C compiler is available (optional there)
    from cityseg.data._unfilter import unfilter as _unfilter
except ImportError:  # pragma: no cover - depends on the install
    _unfilter = None
try:
    import deflate as _deflate
except ImportError:  # pragma: no cover - a dependency; guarded so that decoding still works
    _deflate = None

SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Larger images are left to Pillow, which warns above this many pixels and refuses twice as many
# (PIL.Image.MAX_IMAGE_PIXELS, its decompression-bomb guard); Cityscapes frames have 2.1 M.
MAX_PIXELS = 89_478_485
_CHUNK_HEAD = struct.Struct(">I4s")
_IHDR = struct.Struct(">IIBBBBB")


def available() -> bool:
    """True when the fast path can run (the C extension is built and libdeflate imports)."""
    return _unfilter is not None and _deflate is not None


def read_grey(path: str | os.PathLike) -> np.ndarray | None:
    """:func:`decode_grey` of a file; None also when it cannot be read (the general decoder the
    caller falls back to then names the missing or unreadable file)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return None
    return decode_grey(data)


def read_map(path: str | os.PathLike) -> np.ndarray:
    """Samples of a label PNG as stored: (H, W) uint8 or uint16 for greyscale files; other files
    as Pillow reads them ((H, W, C) for colour, palette indices for palette PNGs).

    Decoding is most of the work of ``cityseg evaluate --pred-dir``: this chain takes ~0.5 ms
    for an official 2048x1024 labelIds map and ~0.9 ms for the 16-bit instanceIds map, where
    libspng takes ~6 and ~12.5 and Pillow ~8 and ~23 (benchmarks/bench_evaluate.py).

    Raises:
        CitysegError: the file is missing or unreadable (Pillow's reader names it).
    """
    arr = read_grey(path) if available() else _read_grey_pyspng(path)
    return arr if arr is not None else read_image(path)


def _read_grey_pyspng(path: str | os.PathLike) -> np.ndarray | None:
    """pyspng's decode of a plain 8/16-bit greyscale PNG, else None (left to Pillow).

    pyspng expands palette PNGs to RGB and returns 16-bit grey as grey+alpha, so only plain
    greyscale files go to it, and the grey channel is kept.
    """
    try:
        import pyspng  # a dependency, but only needed where the extension is not built
    except ImportError:
        return None
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return None  # Pillow's reader raises the CitysegError
    # IHDR is the first chunk: bytes 24 and 25 are the bit depth and colour type (0: greyscale)
    if len(data) < 26 or data[:8] != SIGNATURE or data[12:16] != b"IHDR" or data[25] != 0 or data[24] not in (8, 16):
        return None
    try:
        arr = pyspng.load(data)
    except RuntimeError:
        return None
    return np.ascontiguousarray(arr[..., 0]) if arr.ndim == 3 else arr


def decode_grey(data: bytes) -> np.ndarray | None:
    """(H, W) uint8 or native-order uint16 samples of a greyscale PNG, or None (see module doc).

    The samples are the stored values, as Pillow returns them for modes "L" and "I;16". A file
    with any ancillary chunk (gAMA, tRNS, iCCP, tEXt, ...) is left to Pillow, which validates
    some of them and refuses malformed ones (a differential fuzz found 45 in 35,000 mutated files
    that this decoder accepted and Pillow refused). Label maps carry none: no grey PNG among the
    fixtures or the prepared pairs has one, so the fast path still takes every real label file.
    """
    if not available() or data[:8] != SIGNATURE:
        return None
    header = _header(data)
    if header is None:
        return None
    width, height, depth = header
    if width * height > MAX_PIXELS:
        return None
    bpp = depth // 8
    row_bytes = width * bpp
    size = height * (row_bytes + 1)
    stream = _idat(data)
    if stream is None:
        return None
    try:
        raw = _deflate.zlib_decompress(stream, size)  # checks the stream's Adler-32
        out = np.empty((height, width), dtype=np.uint8 if depth == 8 else np.uint16)
    except (_deflate.DeflateError, MemoryError):
        return None
    if len(raw) != size:
        return None
    try:
        _unfilter(raw, out, height, row_bytes, bpp, depth == 16 and sys.byteorder == "little")
    except ValueError:  # a filter type outside 0-4
        return None
    return out


def _header(data: bytes) -> tuple[int, int, int] | None:
    """(width, height, bit depth) of a non-interlaced 8/16-bit greyscale IHDR, else None."""
    if len(data) < 33:
        return None
    length, kind = _CHUNK_HEAD.unpack_from(data, 8)
    if kind != b"IHDR" or length != 13 or not _crc_ok(data, 8, length):
        return None
    width, height, depth, colour, compression, filtering, interlace = _IHDR.unpack_from(data, 16)
    if colour != 0 or depth not in (8, 16) or compression or filtering or interlace or not width or not height:
        return None
    return width, height, depth


def _idat(data: bytes) -> bytes | None:
    """The concatenated IDAT payloads (a zlib stream), or None for a file Pillow might read
    differently or refuse: a truncated chunk or a bad CRC before IEND, any chunk but IDAT
    (a second IHDR, PLTE, ancillary chunks), IDAT chunks that are not consecutive, no IDAT, or
    no IEND."""
    view = memoryview(data)
    parts = []
    pos = 33  # after the signature and IHDR
    while pos + 12 <= len(data):
        length, kind = _CHUNK_HEAD.unpack_from(data, pos)
        end = pos + 12 + length
        if end > len(data):
            return None
        if kind == b"IEND":
            return b"".join(parts) if parts else None
        if kind != b"IDAT" or not _crc_ok(data, pos, length):
            return None
        parts.append(view[pos + 8 : end - 4])
        pos = end
    return None


def _crc_ok(data: bytes, pos: int, length: int) -> bool:
    """Whether the chunk at ``pos`` (``length`` payload bytes) carries the right CRC-32."""
    view = memoryview(data)
    crc = _deflate.crc32(view[pos + 4 : pos + 8 + length])
    return crc == int.from_bytes(view[pos + 8 + length : pos + 12 + length], "big")
