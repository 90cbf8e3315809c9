"""The camera and the canvas the synthetic Cityscapes is drawn on (:mod:`cityseg.data.synthetic_draw`
draws the objects with them).

World axes: X to the right, Y up, Z ahead of the camera, in metres; the road is the plane Y = 0.
A pinhole camera at height ``cam_h`` above the road looks along Z, so every line parallel to Z
runs to one vanishing point ``(cx, horizon)`` and an object at depth Z is drawn ``f / Z``
pixels per metre: the road narrows to the horizon and far objects are small.

Everything is drawn with ``PIL.ImageDraw`` (polygons, ellipses, lines; C code, fast) into two
images at once (:class:`Canvas`): a 32-bit id map holding the labelId of stuff and
``labelId * 1000 + k`` for the k-th instance of a class with instances (exactly the Cityscapes
``instanceIds`` convention, so the labelIds map is derived from it), and the RGB photo. Details
that do not change the label (windows, wheels, lamps, lane markings) go to the photo only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

#: Instance values are labelId * INSTANCE_BASE + k (Cityscapes' instanceIds convention).
INSTANCE_BASE = 1000

Color = tuple[int, int, int]


def rgb(c) -> Color:
    """Any 3-sequence of numbers -> a PIL colour tuple, clipped to 0..255."""
    return (int(min(max(c[0], 0), 255)), int(min(max(c[1], 0), 255)), int(min(max(c[2], 0), 255)))


def shade(c, k: float) -> Color:
    """Colour ``c`` scaled by ``k`` (k < 1 darker)."""
    return rgb((c[0] * k, c[1] * k, c[2] * k))


def jitter(rng: np.random.Generator, c, amount: float = 12.0) -> Color:
    """Colour ``c`` with a random per-channel offset of about ``amount``."""
    return rgb(np.asarray(c, dtype=float) + rng.normal(0.0, amount, 3))


def pick(rng: np.random.Generator, palette) -> Color:
    """One colour of ``palette``, jittered so that no two objects share an exact colour."""
    return jitter(rng, palette[int(rng.integers(len(palette)))])


@dataclass(frozen=True)
class Camera:
    """Pinhole camera at X = 0, height ``cam_h`` above the road, looking along +Z."""

    width: int
    height: int
    f: float  # focal length, pixels
    cx: float  # x of the vanishing point, pixels
    horizon: float  # y of the horizon, pixels
    cam_h: float  # metres
    z_min: float = 0.3  # near clipping depth; nearer points are drawn as if this near

    def project(self, x, y, z) -> np.ndarray:
        """World points (broadcastable arrays, metres) -> (..., 2) float64 pixel coordinates."""
        z = np.maximum(z, self.z_min)
        return np.stack(np.broadcast_arrays(self.cx + self.f * x / z, self.horizon + self.f * (self.cam_h - y) / z), -1)

    def pt(self, x: float, y: float, z: float) -> tuple[float, float]:
        """One world point -> pixel (u, v); plain floats, for the many single points drawn."""
        k = self.f / max(z, self.z_min)
        return self.cx + k * x, self.horizon + k * (self.cam_h - y)

    def scale(self, z: float) -> float:
        """Pixels per metre at depth ``z``."""
        return self.f / max(z, self.z_min)

    @property
    def z_bottom(self) -> float:
        """Depth of the road at the image's bottom row (nothing nearer is seen on the road)."""
        return self.f * self.cam_h / max(self.height - self.horizon, 1.0)

    def z_resolved(self, lateral: float, spacing: float, min_px: float = 2.5) -> float:
        """Depth up to which a pattern repeating every ``spacing`` metres along Z, at distance
        ``lateral`` from the camera axis (metres), is at least ``min_px`` pixels per period.

        A pattern farther away would alias into noise, so it is drawn as one averaged colour.
        """
        return math.sqrt(self.f * max(abs(lateral), 1e-3) * spacing / min_px)


# Single quads are built with plain floats (numpy's per-call cost dominates for 4 points);
# they return PIL's flat [x0, y0, x1, y1, ...] lists. The ``quads_*`` forms take arrays.


def quad_x(cam: Camera, x: float, z0: float, z1: float, y0: float, y1: float) -> list[float]:
    """Rectangle in the plane X = x (a facade, a vehicle side) -> flat pixel polygon."""
    return [*cam.pt(x, y0, z0), *cam.pt(x, y0, z1), *cam.pt(x, y1, z1), *cam.pt(x, y1, z0)]


def quad_y(cam: Camera, y: float, x0: float, x1: float, z0: float, z1: float) -> list[float]:
    """Rectangle in the plane Y = y (the road, a roof) -> flat pixel polygon."""
    return [*cam.pt(x0, y, z0), *cam.pt(x1, y, z0), *cam.pt(x1, y, z1), *cam.pt(x0, y, z1)]


def quad_z(cam: Camera, z: float, x0: float, x1: float, y0: float, y1: float) -> list[float]:
    """Rectangle in the plane Z = z (a face towards the camera) -> flat pixel polygon."""
    k = cam.f / max(z, cam.z_min)
    u0, u1 = cam.cx + k * x0, cam.cx + k * x1
    v0, v1 = cam.horizon + k * (cam.cam_h - y0), cam.horizon + k * (cam.cam_h - y1)
    return [u0, v0, u1, v0, u1, v1, u0, v1]


def _arrays(*values) -> list[np.ndarray]:
    return np.broadcast_arrays(*(np.asarray(a, dtype=float) for a in values))


def quads_x(cam: Camera, x, z0, z1, y0, y1) -> np.ndarray:
    """Many rectangles in planes X = x (arrays broadcast) -> (..., 4, 2) pixel quads."""
    x, z0, z1, y0, y1 = _arrays(x, z0, z1, y0, y1)
    return cam.project(np.stack([x, x, x, x], -1), np.stack([y0, y0, y1, y1], -1), np.stack([z0, z1, z1, z0], -1))


def quads_y(cam: Camera, y, x0, x1, z0, z1) -> np.ndarray:
    """Many rectangles in planes Y = y -> (..., 4, 2) pixel quads."""
    y, x0, x1, z0, z1 = _arrays(y, x0, x1, z0, z1)
    return cam.project(np.stack([x0, x1, x1, x0], -1), np.stack([y, y, y, y], -1), np.stack([z0, z0, z1, z1], -1))


def quads_z(cam: Camera, z, x0, x1, y0, y1) -> np.ndarray:
    """Many rectangles in planes Z = z -> (..., 4, 2) pixel quads."""
    z, x0, x1, y0, y1 = _arrays(z, x0, x1, y0, y1)
    return cam.project(np.stack([x0, x1, x1, x0], -1), np.stack([y0, y0, y1, y1], -1), np.stack([z, z, z, z], -1))


class Canvas:
    """The id map, the photo and a ground-shadow mask, drawn together.

    ``ids``: 32-bit PIL image; labelId for stuff, labelId * 1000 + k for instances.
    ``photo``: RGB PIL image of base colours (texture and light are added later in numpy).
    ``shadow``: L image, 255 = lit; it darkens only ground pixels (see synthetic_scene.finish).
    """

    def __init__(self, sky: np.ndarray, ids: np.ndarray):
        self.ids = Image.fromarray(ids.astype(np.int32), mode="I")
        self.photo = Image.fromarray(sky, mode="RGB")
        self.shadow = Image.new("L", self.photo.size, 255)
        self._draw_ids = ImageDraw.Draw(self.ids)
        self._draw_photo = ImageDraw.Draw(self.photo)
        self._draw_shadow = ImageDraw.Draw(self.shadow)
        self._next_instance: dict[int, int] = {}

    def instance(self, label_id: int) -> int:
        """A new instance value ``label_id * 1000 + k`` (k counts from 0 per class)."""
        k = self._next_instance.get(label_id, 0)
        self._next_instance[label_id] = k + 1
        return label_id * INSTANCE_BASE + k

    def polygon(self, xy, value: int | None, color: Color) -> None:
        """Fill polygon ``xy`` (flat [x0, y0, ...] list or (N, 2) array, pixels); ``value``
        goes to the ids (None: the photo only)."""
        if not isinstance(xy, list):
            xy = np.asarray(xy, dtype=float).ravel().tolist()
        if value is not None:
            self._draw_ids.polygon(xy, fill=value)
        self._draw_photo.polygon(xy, fill=color)

    def polygons(self, quads: np.ndarray, value: int | None, color: Color) -> None:
        """Fill each polygon of ``quads`` ((K, N, 2) pixels) with one colour."""
        for q in quads.reshape(len(quads), -1).tolist() if len(quads) else ():
            self.polygon(q, value, color)

    def ellipse(self, cx: float, cy: float, rx: float, ry: float, value: int | None, color: Color) -> None:
        box = [cx - abs(rx), cy - abs(ry), cx + abs(rx), cy + abs(ry)]
        if value is not None:
            self._draw_ids.ellipse(box, fill=value)
        self._draw_photo.ellipse(box, fill=color)

    def ring(self, cx: float, cy: float, r: float, width: float, value: int | None, color: Color) -> None:
        box = [cx - r, cy - r, cx + r, cy + r]
        w = max(1, int(round(width)))
        if value is not None:
            self._draw_ids.ellipse(box, outline=value, width=w)
        self._draw_photo.ellipse(box, outline=color, width=w)

    def line(self, xy, width: float, value: int | None, color: Color) -> None:
        if not isinstance(xy, list):
            xy = np.asarray(xy, dtype=float).ravel().tolist()
        w = max(1, int(round(width)))
        if value is not None:
            self._draw_ids.line(xy, fill=value, width=w)
        self._draw_photo.line(xy, fill=color, width=w)

    def cast_shadow(self, xy: list[float], level: int) -> None:
        """Darken the ground inside polygon ``xy`` to ``level``/255 of its light."""
        self._draw_shadow.polygon(xy, fill=int(level))


def resolved(zs: np.ndarray, z_cut: float) -> np.ndarray:
    """The positions of a repeated detail near enough to be drawn (see Camera.z_resolved)."""
    return zs[zs < z_cut]
