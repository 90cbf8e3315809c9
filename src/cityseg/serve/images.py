"""What ``cityseg serve`` accepts and answers, without the web framework: checking an uploaded
image before anything decodes it, decoding it as ``cityseg predict`` reads a file, and the four
answers of ``POST /v1/segment``.

Every refusal is a :class:`RequestError`: an HTTP status and one line, which the app sends as
``{"error": "..."}``. Sizes are checked from the image's header, before its pixels are decoded, so
a decompression bomb (a small file declaring a huge image) is refused without being inflated.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from cityseg import labels
from cityseg.datasets import DatasetSpec
from cityseg.errors import first_line
from cityseg.stats import pixel_shares
from cityseg.viz import overlay

#: Content types of an image body (or of the multipart field ``image``); application/octet-stream is
#: what browsers and curl send for a file of unknown type.
IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp", "image/bmp", "image/tiff", "image/x-portable-pixmap",
               "image/gif", "application/octet-stream")
#: The formats decoded (Pillow's names): what ``cityseg predict`` reads by its file extensions.
FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF", "PPM", "GIF")  # JPEG covers MPO, many phones' JPEGs
#: The answers of ``POST /v1/segment?output=``
OUTPUTS = ("json", "labels", "color", "overlay")
MULTIPART = "multipart/form-data"


class RequestError(Exception):
    """A request refused: ``status`` (4xx) and a one-line message."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


@dataclass(frozen=True)
class Limits:
    """``max_bytes``: the largest body; ``max_pixels``: the largest image (width x height)."""

    max_bytes: int = 32 * 1024 * 1024
    max_pixels: int = 50_000_000


def media_type(content_type: str | None) -> str:
    """``"image/PNG; q=1"`` -> ``"image/png"``; "" when absent."""
    return (content_type or "").split(";")[0].strip().lower()


def check_image_type(content_type: str | None, where: str = "the body") -> None:
    """415 unless ``content_type`` is one of :data:`IMAGE_TYPES`."""
    kind = media_type(content_type)
    if kind == "image/jpg":  # a common misspelling; the bytes decide anyway
        return
    if kind not in IMAGE_TYPES:
        shown = f"content type {kind!r}" if kind else "no content type"
        raise RequestError(415, f"{where} has {shown}; send an image (image/png, image/jpeg, image/webp, ...) "
                           f"as the body, or as the field 'image' of {MULTIPART}")


def check_length(content_length: str | None, limits: Limits) -> None:
    """413 when the declared body length is over ``max_bytes`` (checked again while reading)."""
    if content_length is None:
        return
    try:
        n = int(content_length)
    except ValueError:
        raise RequestError(400, f"Content-Length {content_length!r} is not a number") from None
    if n > limits.max_bytes:
        raise RequestError(413, too_many_bytes(limits))


def too_many_bytes(limits: Limits) -> str:
    return f"body over {limits.max_bytes:,} bytes (--max-bytes); send a smaller image"


def probe(data: bytes, limits: Limits) -> tuple[int, int]:
    """(width, height) of an encoded image, read from its header only: 400 when it is not an image of
    :data:`FORMATS`, 413 when it has more than ``max_pixels`` pixels (nothing is decoded)."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise RequestError(400, "empty body; send an image")
    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as img:
            width, height = img.size
    except Image.DecompressionBombError:
        raise RequestError(413, f"image over {limits.max_pixels:,} pixels (--max-pixels): refused undecoded") from None
    except UnidentifiedImageError:
        raise RequestError(400, f"not an image: the body is none of {', '.join(FORMATS)}") from None
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for broken files; all are the body's fault
        raise RequestError(400, f"not a readable image: {first_line(exc)}") from None
    if width * height > limits.max_pixels:
        raise RequestError(413, f"image of {width}x{height} = {width * height:,} pixels, over {limits.max_pixels:,} "
                           "(--max-pixels): refused undecoded")
    if width < 1 or height < 1:
        raise RequestError(400, f"image of {width}x{height} pixels: nothing to segment")
    return width, height


def decode(data: bytes) -> np.ndarray:
    """(H, W, 3) uint8 RGB of an image :func:`probe` accepted, converted as ``cityseg predict`` reads
    files (:func:`cityseg.utils.read_image`); 400 when it is truncated or damaged."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as img:
            img.load()
            rgb = img if img.mode == "RGB" else img.convert("RGB")
            return np.asarray(rgb)
    except Image.DecompressionBombError:
        raise RequestError(413, "image too large: refused undecoded") from None
    except Exception as exc:  # noqa: BLE001 - as in probe
        raise RequestError(400, f"damaged or truncated image: {first_line(exc)}") from None


def png(array: np.ndarray) -> bytes:
    """A (H, W) uint8 map or (H, W, 3) uint8 image as PNG bytes (fast compression: level 1)."""
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(out, format="PNG", compress_level=1)
    return out.getvalue()


def class_shares(train_ids: np.ndarray, spec: DatasetSpec) -> dict[str, float]:
    """Class name -> fraction of the pixels predicted as it, every class in train-id order (6 decimals)."""
    shares = pixel_shares(train_ids, spec.num_classes)
    return {name: round(float(share), 6) for name, share in zip(spec.class_names, shares, strict=True)}


def answer(output: str, image: np.ndarray, train_ids: np.ndarray, spec: DatasetSpec,
           about: dict) -> bytes | dict:
    """The answer for ``output``: PNG bytes (labels: the trainIds; color: the palette; overlay: the
    palette blended over the photo, as ``cityseg predict`` writes them) or the JSON dict (``about``:
    what it says of the model)."""
    if output == "labels":
        return png(train_ids)
    if output == "color":
        return png(spec.colorize(train_ids))
    if output == "overlay":
        return png(overlay(image, train_ids, normalized=False, spec=spec))
    height, width = train_ids.shape
    ignored = float((train_ids == labels.IGNORE_INDEX).mean()) if train_ids.size else 0.0
    return {**about, "width": width, "height": height, "classes": class_shares(train_ids, spec),
            **({"ignored": round(ignored, 6)} if ignored else {})}
