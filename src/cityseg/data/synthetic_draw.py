"""The objects of the synthetic Cityscapes, drawn on a :class:`~cityseg.data.synthetic_canvas.Canvas`
through a :class:`~cityseg.data.synthetic_canvas.Camera` (world axes, projection and the id map |
photo pair are described there).

Objects are axis-aligned boxes (buildings, walls, vehicles; the faces that face the camera are
drawn) or flat sprites facing the camera (people, two-wheelers, poles, signs, trees) whose
parts are given in metres around their foot point. Details that do not change the label
(windows, wheels, lamps) go to the photo only.
"""

from __future__ import annotations

import math

import numpy as np

from cityseg.data.synthetic_canvas import (
    Camera,
    Canvas,
    Color,
    jitter,
    pick,
    quad_x,
    quad_y,
    quad_z,
    quads_x,
    quads_z,
    resolved,
    rgb,
    shade,
)
from cityseg.labels import LABEL_BY_NAME


def _label_id(name: str) -> int:
    return LABEL_BY_NAME[name].id


EGO = _label_id("ego vehicle")
STATIC = _label_id("static")
DYNAMIC = _label_id("dynamic")
GROUND = _label_id("ground")
ROAD = _label_id("road")
SIDEWALK = _label_id("sidewalk")
PARKING = _label_id("parking")
RAIL_TRACK = _label_id("rail track")
BUILDING = _label_id("building")
WALL = _label_id("wall")
FENCE = _label_id("fence")
GUARD_RAIL = _label_id("guard rail")
POLE = _label_id("pole")
TRAFFIC_LIGHT = _label_id("traffic light")
TRAFFIC_SIGN = _label_id("traffic sign")
VEGETATION = _label_id("vegetation")
TERRAIN = _label_id("terrain")
SKY = _label_id("sky")
PERSON = _label_id("person")
RIDER = _label_id("rider")
CAR = _label_id("car")
TRUCK = _label_id("truck")
BUS = _label_id("bus")
TRAIN = _label_id("train")
MOTORCYCLE = _label_id("motorcycle")
BICYCLE = _label_id("bicycle")


# Palettes overlap across classes on purpose (grey cars, grey walls, grey road; white buses,
# white buildings; green fences, green trees) so that colour alone never gives the class.
CAR_COLORS = ((200, 200, 205), (40, 40, 45), (120, 125, 130), (160, 30, 30), (30, 50, 120),
              (230, 230, 225), (70, 90, 60), (190, 160, 40), (90, 60, 40), (20, 90, 150))
BUS_COLORS = ((230, 200, 40), (200, 40, 35), (235, 235, 230), (40, 90, 170), (60, 140, 80))
TRAIN_COLORS = ((235, 235, 235), (200, 40, 40), (240, 200, 40), (50, 90, 160), (170, 175, 180))
TRUCK_COLORS = ((235, 235, 235), (180, 180, 185), (200, 60, 40), (40, 80, 150), (230, 180, 40), (60, 60, 65))
FACADE_COLORS = ((190, 180, 165), (215, 205, 185), (160, 155, 150), (170, 100, 80), (120, 110, 105),
                 (225, 220, 210), (200, 170, 130), (150, 165, 175), (235, 215, 170))
WALL_COLORS = ((150, 150, 150), (175, 170, 160), (120, 115, 110), (160, 110, 90), (190, 185, 175))
FENCE_COLORS = ((110, 110, 115), (60, 90, 60), (140, 100, 70), (200, 200, 200), (70, 70, 75))
FOLIAGE_COLORS = ((60, 95, 40), (45, 80, 35), (85, 115, 50), (70, 90, 45), (100, 120, 60))
GRASS_COLORS = ((110, 140, 70), (130, 150, 80), (150, 140, 90), (100, 125, 65))
POLE_COLORS = ((120, 120, 120), (80, 85, 80), (60, 60, 65), (150, 150, 145), (50, 70, 55))
CLOTHES = ((30, 30, 35), (40, 50, 90), (150, 30, 40), (200, 200, 200), (90, 90, 95), (120, 90, 60),
           (60, 110, 60), (210, 170, 60), (30, 80, 140), (170, 80, 120))
SKIN = ((230, 190, 160), (200, 150, 110), (150, 100, 70), (100, 70, 50))
GLASS = (40, 50, 60)


# ----------------------------------------------------------------------------- boxes


def draw_box(cv: Canvas, cam: Camera, x0: float, x1: float, y0: float, y1: float, z0: float, z1: float,
             value: int | None, color: Color, side_k: float = 0.8, top_k: float = 1.1) -> float:
    """Draw the faces of an axis-aligned box that face the camera.

    The near face (Z = z0) gets ``color``, the side face towards the camera (X = x0 when the
    box is right of the camera, X = x1 when left) ``side_k`` times it, the top (when below the
    camera) ``top_k`` times it. Returns the X of the visible side face, or nan when none is.
    """
    side_x = x0 if x0 > 0 else (x1 if x1 < 0 else math.nan)
    if not math.isnan(side_x):
        cv.polygon(quad_x(cam, side_x, z0, z1, y0, y1), value, shade(color, side_k))
    if y1 < cam.cam_h:
        cv.polygon(quad_y(cam, y1, x0, x1, z0, z1), value, shade(color, top_k))
    cv.polygon(quad_z(cam, z0, x0, x1, y0, y1), value, color)
    return side_x


def _wheels(cv: Canvas, cam: Camera, side_x: float, axles, radius: float, x0: float, x1: float, z_end: float,
            value: int) -> None:
    """Tyres: on the visible side at each axle (with a grey hub), and the two below the near end."""
    if not math.isnan(side_x):
        for az in axles:
            cv.polygon(quad_x(cam, side_x, az - radius, az + radius, 0.0, 1.8 * radius), value, (22, 22, 24))
            cv.polygon(quad_x(cam, side_x, az - radius * 0.45, az + radius * 0.45, radius * 0.55, radius * 1.25),
                       value, (95, 95, 100))
    tyre = min(0.35, (x1 - x0) / 6)
    cv.polygon(quad_z(cam, z_end, x0 + 0.05, x0 + 0.05 + tyre, 0.0, radius * 1.6), value, (20, 20, 22))
    cv.polygon(quad_z(cam, z_end, x1 - 0.05 - tyre, x1 - 0.05, 0.0, radius * 1.6), value, (20, 20, 22))


def _end_lamps(cv: Canvas, cam: Camera, z: float, x0: float, x1: float, y0: float, y1: float, rear: bool) -> None:
    lamp = (200, 20, 20) if rear else (235, 235, 210)
    cv.polygon(quad_z(cam, z, x0 + 0.05, x0 + 0.35, y0, y1), None, lamp)
    cv.polygon(quad_z(cam, z, x1 - 0.35, x1 - 0.05, y0, y1), None, lamp)


def _vehicle_shadow(cv: Canvas, cam: Camera, x0: float, x1: float, z0: float, z1: float) -> None:
    cv.cast_shadow(quad_y(cam, 0.0, x0 - 0.15, x1 + 0.15, z0 - 0.2, z1 + 0.3), 95)


def draw_car(cv: Canvas, cam: Camera, rng: np.random.Generator, xc: float, z0: float, facing_away: bool) -> None:
    """A car centred at X = xc whose near end is at depth z0 (its rear if facing away)."""
    value = cv.instance(CAR)
    width, length = rng.uniform(1.7, 1.95), rng.uniform(3.9, 4.9)
    body_h, roof_h = rng.uniform(0.85, 1.05), rng.uniform(1.4, 1.65)
    x0, x1, z1 = xc - width / 2, xc + width / 2, z0 + length
    color = pick(rng, CAR_COLORS)
    _vehicle_shadow(cv, cam, x0, x1, z0, z1)
    side = draw_box(cv, cam, x0, x1, 0.3, body_h, z0, z1, value, color)
    _wheels(cv, cam, side, (z0 + 0.8, z1 - 0.8), 0.33, x0, x1, z0 + 0.4, value)
    # cabin: a narrower box of glass, with pillars and a roof in the body colour
    c0, c1 = (z0 + 0.9, z1 - 1.0) if facing_away else (z0 + 1.2, z1 - 0.7)
    glass = jitter(rng, GLASS, 10)
    cab_side = draw_box(cv, cam, x0 + 0.12, x1 - 0.12, body_h, roof_h, c0, c1, value, glass, side_k=1.1)
    if roof_h < cam.cam_h:
        cv.polygon(quad_y(cam, roof_h, x0 + 0.15, x1 - 0.15, c0 + 0.1, c1 - 0.1), value, shade(color, 1.05))
    cv.polygon(quad_z(cam, c0, x0 + 0.12, x0 + 0.25, body_h, roof_h), None, color)
    cv.polygon(quad_z(cam, c0, x1 - 0.25, x1 - 0.12, body_h, roof_h), None, color)
    if not math.isnan(cab_side):
        mid = (c0 + c1) / 2
        cv.polygon(quad_x(cam, cab_side, mid - 0.08, mid + 0.08, body_h, roof_h), None, shade(color, 0.8))
    _end_lamps(cv, cam, z0, x0, x1, body_h - 0.25, body_h - 0.08, facing_away)
    cv.polygon(quad_z(cam, z0, xc - 0.26, xc + 0.26, 0.42, 0.55), None, (225, 225, 220))  # number plate


def draw_bus(cv: Canvas, cam: Camera, rng: np.random.Generator, xc: float, z0: float, facing_away: bool) -> None:
    """A city bus: a long tall box with a band of windows along its side and big wheels."""
    value = cv.instance(BUS)
    width, length, height = 2.5, rng.uniform(11.0, 14.0), rng.uniform(2.9, 3.3)
    x0, x1, z1 = xc - width / 2, xc + width / 2, z0 + length
    color = pick(rng, BUS_COLORS)
    glass = jitter(rng, GLASS, 8)
    _vehicle_shadow(cv, cam, x0, x1, z0, z1)
    side = draw_box(cv, cam, x0, x1, 0.3, height, z0, z1, value, color)
    if not math.isnan(side):
        edges = np.linspace(z0 + 0.4, z1 - 0.4, max(int(length / 1.6), 2) + 1)
        cv.polygons(quads_x(cam, side, edges[:-1] + 0.1, edges[1:] - 0.1, 1.25, height - 0.35), None, glass)
        cv.polygon(quad_x(cam, side, z0 + 0.2, z1 - 0.2, 0.75, 0.95), None, shade(color, 0.6))
    _wheels(cv, cam, side, (z0 + 2.5, z1 - 2.8), 0.5, x0, x1, z0 + 0.5, value)
    top = height - 0.3
    cv.polygon(quad_z(cam, z0, x0 + 0.15, x1 - 0.15, 1.9 if facing_away else 1.3, top), None, glass)
    cv.polygon(quad_z(cam, z0, x0 + 0.6, x1 - 0.6, top + 0.02, height - 0.05), None, (240, 150, 30))  # destination
    _end_lamps(cv, cam, z0, x0, x1, 0.5, 0.75, facing_away)


def draw_truck(cv: Canvas, cam: Camera, rng: np.random.Generator, xc: float, z0: float, facing_away: bool) -> None:
    """A lorry: a tall plain cargo box on a dark chassis, with a cab at the front."""
    value = cv.instance(TRUCK)
    width, length, box_h, cab_len = 2.45, rng.uniform(7.0, 10.0), rng.uniform(3.3, 3.9), 2.2
    x0, x1, z1 = xc - width / 2, xc + width / 2, z0 + length
    color, cab_color = pick(rng, TRUCK_COLORS), pick(rng, CAR_COLORS)
    _vehicle_shadow(cv, cam, x0, x1, z0, z1)
    if facing_away:  # the cab is at the far end, mostly hidden by the cargo box
        draw_box(cv, cam, x0 + 0.1, x1 - 0.1, 0.5, 2.9, z1 - cab_len, z1, value, cab_color)
        draw_box(cv, cam, x0 + 0.3, x1 - 0.3, 0.45, 1.1, z0 + 0.3, z1 - cab_len, value, (35, 35, 38))
        box_z = (z0, z1 - cab_len - 0.2)
        side = draw_box(cv, cam, x0, x1, 1.1, box_h, *box_z, value, color)
        cv.polygon(quad_z(cam, z0, xc - 0.03, xc + 0.03, 1.2, box_h - 0.1), None, shade(color, 0.55))  # doors
        cv.polygon(quad_z(cam, z0, x0 + 0.1, x1 - 0.1, 1.1, 1.25), None, shade(color, 0.7))
        _end_lamps(cv, cam, z0, x0, x1, 0.7, 0.9, rear=True)
    else:  # oncoming: the cab with its windscreen faces the camera
        box_z = (z0 + cab_len + 0.2, z1)
        side = draw_box(cv, cam, x0, x1, 1.1, box_h, *box_z, value, color)
        draw_box(cv, cam, x0 + 0.3, x1 - 0.3, 0.45, 1.1, z0 + cab_len, z1 - 0.3, value, (35, 35, 38))
        draw_box(cv, cam, x0 + 0.05, x1 - 0.05, 0.5, 2.9, z0, z0 + cab_len, value, cab_color)
        cv.polygon(quad_z(cam, z0, x0 + 0.2, x1 - 0.2, 1.75, 2.7), None, jitter(rng, GLASS, 8))
        cv.polygon(quad_z(cam, z0, x0 + 0.5, x1 - 0.5, 0.7, 1.3), None, (40, 40, 45))  # grille
        _end_lamps(cv, cam, z0, x0, x1, 0.7, 0.9, rear=False)
    if not math.isnan(side):  # a company stripe along the cargo box
        cv.polygon(quad_x(cam, side, box_z[0] + 0.3, box_z[1] - 0.3, 2.0, 2.5), None, pick(rng, TRUCK_COLORS))
    _wheels(cv, cam, side, (z0 + 1.3, z1 - 1.5, z1 - 2.6), 0.5, x0, x1, z0 + 0.6, value)


def draw_train(cv: Canvas, cam: Camera, rng: np.random.Generator, xc: float, z0: float, length: float) -> None:
    """A tram on rails: a very long box with a dark skirt, window band, doors and a pantograph."""
    value = cv.instance(TRAIN)
    width, height = 2.6, rng.uniform(3.3, 3.6)
    x0, x1, z1 = xc - width / 2, xc + width / 2, z0 + length
    color, stripe = pick(rng, TRAIN_COLORS), pick(rng, TRAIN_COLORS)
    glass = jitter(rng, GLASS, 8)
    side = draw_box(cv, cam, x0, x1, 0.15, height, z0, z1, value, color)
    if not math.isnan(side):
        cv.polygon(quad_x(cam, side, z0, z1, 0.15, 0.55), None, (45, 45, 50))  # skirt hides the wheels
        cv.polygon(quad_x(cam, side, z0, z1, 0.95, 1.2), None, stripe)
        z_cut = cam.z_resolved(side, 1.3)
        edges = resolved(np.arange(z0 + 1.0, z1 - 1.0, 1.3), z_cut)
        cv.polygons(quads_x(cam, side, edges[:-1] + 0.12, edges[1:] - 0.12, 1.45, height - 0.5), None, glass)
        if z_cut < z1 - 1.0:  # the far windows merge into one dark band
            cv.polygon(quad_x(cam, side, max(z_cut, z0 + 1.0), z1 - 1.0, 1.45, height - 0.5), None, shade(glass, 1.3))
        doors = resolved(np.arange(z0 + 3.0, z1 - 2.0, rng.uniform(6.0, 9.0)), z_cut)
        cv.polygons(quads_x(cam, side, doors, doors + 1.3, 0.3, height - 0.45), None, shade(stripe, 0.8))
    cv.polygon(quad_z(cam, z0, x0 + 0.15, x1 - 0.15, 1.5, height - 0.2), None, glass)
    cv.polygon(quad_z(cam, z0, x0, x1, 0.15, 0.55), None, (45, 45, 50))
    _end_lamps(cv, cam, z0, x0 + 0.15, x1 - 0.15, 0.75, 0.95, rear=False)
    zp = z0 + length * 0.4  # pantograph: a flat diamond on the roof
    cv.polygon([*cam.pt(xc - 0.6, height, zp), *cam.pt(xc + 0.6, height, zp), *cam.pt(xc + 0.2, height + 0.9, zp),
                *cam.pt(xc - 0.2, height + 0.9, zp)], value, (50, 50, 55))


def draw_building(cv: Canvas, cam: Camera, rng: np.random.Generator, x_face: float, depth: float,
                  z0: float, z1: float, height: float, sun: float) -> None:
    """A building block whose facade is the plane X = x_face, with a grid of windows.

    ``depth``: its extent away from the street (signed like x_face). ``sun``: facade brightness.
    """
    color = pick(rng, FACADE_COLORS)
    xa, xb = sorted((x_face, x_face + depth))
    draw_box(cv, cam, xa, xb, 0.0, height, z0, z1, BUILDING, shade(color, sun), side_k=1.0)
    cv.polygon(quad_x(cam, x_face, z0, z1, height - 0.5, height), None, shade(color, sun * 0.7))  # cornice
    floor_h, col_w = rng.uniform(2.9, 3.6), rng.uniform(2.2, 3.8)
    win_w, win_h = col_w * rng.uniform(0.35, 0.6), floor_h * rng.uniform(0.4, 0.6)
    first = rng.uniform(3.2, 4.5)
    zc = resolved(np.arange(z0 + col_w / 2 + 0.3, z1 - col_w / 2, col_w), cam.z_resolved(x_face, col_w, 3.0))
    yb = np.arange(first, height - floor_h * 0.7, floor_h)
    if len(zc) and len(yb):
        zz, yy = np.meshgrid(zc, yb)
        quads = quads_x(cam, x_face, zz - win_w / 2, zz + win_w / 2, yy, yy + win_h).reshape(-1, 4, 2)
        centre = quads.mean(1, keepdims=True)
        glass = jitter(rng, (70, 80, 95) if rng.random() < 0.7 else (150, 160, 170), 15)
        cv.polygons(quads, None, shade(color, sun * (0.6 if rng.random() < 0.5 else 1.25)))  # frames
        cv.polygons(centre + (quads - centre) * 0.78, None, shade(glass, sun))
    if rng.random() < 0.6:  # a shop front on the ground floor
        shop_glass = shade(jitter(rng, GLASS, 15), sun * 1.4)
        cv.polygon(quad_x(cam, x_face, z0 + 0.5, z1 - 0.5, 0.3, first - 0.8), None, shop_glass)
        cv.polygon(quad_x(cam, x_face, z0 + 0.3, z1 - 0.3, first - 0.8, first - 0.3), None, pick(rng, CLOTHES))


def draw_cross_building(cv: Canvas, cam: Camera, rng: np.random.Generator, z: float, x0: float, x1: float,
                        height: float) -> None:
    """A building across the far end of the street, facing the camera, with windows."""
    color = pick(rng, FACADE_COLORS)
    cv.polygon(quad_z(cam, z, x0, x1, 0.0, height), BUILDING, color)
    col_w, floor_h = rng.uniform(2.5, 3.5), rng.uniform(3.0, 3.5)
    if cam.scale(z) * col_w < 3.0:  # windows too small to see
        return
    xx, yy = np.meshgrid(np.arange(x0 + 1.0, x1 - 1.0, col_w), np.arange(3.5, height - 1.5, floor_h))
    cv.polygons(quads_z(cam, z, xx, xx + col_w * 0.5, yy, yy + floor_h * 0.5).reshape(-1, 4, 2), None,
                shade(GLASS, rng.uniform(1.0, 1.8)))


# ----------------------------------------------------------------------------- barriers


def draw_wall(cv: Canvas, cam: Camera, rng: np.random.Generator, x: float, z0: float, z1: float, height: float) -> None:
    """A solid wall along the street (plane X = x) with panel joints and a coping."""
    color = pick(rng, WALL_COLORS)
    xa, xb = sorted((x, x + math.copysign(0.3, x)))
    draw_box(cv, cam, xa, xb, 0.0, height, z0, z1, WALL, shade(color, 1.05), side_k=0.95)
    spacing = rng.uniform(2.0, 3.5)
    joints = resolved(np.arange(z0 + spacing, z1, spacing), cam.z_resolved(x, spacing))
    cv.polygons(quads_x(cam, x, joints, joints + 0.08, 0.0, height), None, shade(color, 0.75))
    cv.polygon(quad_x(cam, x, z0, z1, height - 0.15, height), None, shade(color, 1.3))


def draw_fence(cv: Canvas, cam: Camera, rng: np.random.Generator, x: float, z0: float, z1: float,
               height: float) -> None:
    """A railing: vertical bars between two rails; the gaps show a dark background.

    Cityscapes annotators label a fence's whole extent, so the gaps carry the fence label too.
    """
    color, behind = pick(rng, FENCE_COLORS), jitter(rng, (70, 80, 65), 15)
    gap = rng.uniform(0.15, 0.35)
    z_cut = min(cam.z_resolved(x, gap), z1)
    cv.polygon(quad_x(cam, x, z0, z1, 0.0, height), FENCE, behind)
    if z_cut < z1:  # bars too fine to draw: their average colour
        mix = np.add(np.multiply(color, 0.45), np.multiply(behind, 0.55))
        cv.polygon(quad_x(cam, x, max(z_cut, z0), z1, 0.0, height), None, rgb(mix))
    bars = np.arange(z0, z_cut, gap)
    cv.polygons(quads_x(cam, x, bars, bars + gap * 0.45, 0.0, height), None, color)
    cv.polygon(quad_x(cam, x, z0, z1, height - 0.12, height), None, shade(color, 1.1))
    cv.polygon(quad_x(cam, x, z0, z1, 0.15, 0.25), None, shade(color, 1.1))
    posts = resolved(np.arange(z0, z1, 2.5), cam.z_resolved(x, 2.5))
    cv.polygons(quads_x(cam, x, posts, posts + 0.12, 0.0, height + 0.1), FENCE, shade(color, 0.8))


def draw_hedge(cv: Canvas, cam: Camera, rng: np.random.Generator, x: float, z0: float, z1: float,
               height: float) -> None:
    """A hedge: a box of foliage along the street."""
    xa, xb = sorted((x, x + math.copysign(0.8, x)))
    draw_box(cv, cam, xa, xb, 0.0, height, z0, z1, VEGETATION, pick(rng, FOLIAGE_COLORS), side_k=0.85, top_k=1.2)


def draw_guard_rail(cv: Canvas, cam: Camera, rng: np.random.Generator, x: float, z0: float, z1: float) -> None:
    """A steel crash barrier at the road edge: a beam on posts."""
    color = jitter(rng, (170, 175, 180), 10)
    posts = resolved(np.arange(z0, z1, 2.0), cam.z_resolved(x, 2.0))
    cv.polygons(quads_z(cam, posts, x - 0.06, x + 0.06, 0.0, 0.75), GUARD_RAIL, shade(color, 0.7))
    cv.polygon(quad_x(cam, x, z0, z1, 0.45, 0.8), GUARD_RAIL, color)
    cv.polygon(quad_x(cam, x, z0, z1, 0.6, 0.65), None, shade(color, 0.7))


# ----------------------------------------------------------------------------- sprites


class Sprite:
    """Maps metres around a foot point to pixels: x to the right (mirrored if ``d`` = -1), y up."""

    def __init__(self, cam: Camera, x: float, z: float, d: int = 1):
        self.s = cam.scale(z)
        self.u, self.v = cam.pt(x, 0.0, z)
        self.d = d

    def pt(self, x: float, y: float) -> tuple[float, float]:
        return self.u + self.d * self.s * x, self.v - self.s * y

    def poly(self, xy) -> list[float]:
        """Points in metres -> flat pixel polygon."""
        out: list[float] = []
        for x, y in xy:
            out += self.pt(x, y)
        return out

    def px(self, metres: float, minimum: float = 1.0) -> float:
        """A length in metres -> pixels, at least ``minimum`` so that far parts do not vanish."""
        return max(minimum, metres * self.s)

    def limb(self, p0, p1, w0: float, w1: float, min_px: float = 1.6) -> list[float]:
        """A quad around the segment p0 -> p1 (metres), ``w0`` wide at p0 and ``w1`` at p1,
        never thinner than ``min_px`` pixels."""
        (a0, b0), (a1, b1) = self.pt(*p0), self.pt(*p1)
        n = math.hypot(a1 - a0, b1 - b0) or 1e-9
        nx, ny = (b0 - b1) / n, (a1 - a0) / n
        h0, h1 = max(w0 * self.s, min_px) / 2, max(w1 * self.s, min_px) / 2
        return [a0 + nx * h0, b0 + ny * h0, a1 + nx * h1, b1 + ny * h1,
                a1 - nx * h1, b1 - ny * h1, a0 - nx * h0, b0 - ny * h0]


def _body(cv: Canvas, sp: Sprite, rng: np.random.Generator, value: int, hip, knee, feet, shoulder, hand,
          k: float = 1.0, helmet: bool = False) -> None:
    """Legs, torso, arm and head of a person or rider; points in metres, scaled by ``k``."""
    pants, shirt, skin = pick(rng, CLOTHES), pick(rng, CLOTHES), pick(rng, SKIN)
    hair = pick(rng, ((30, 25, 20), (90, 60, 35), (200, 170, 110), (130, 130, 130)))

    def m(p):
        return p[0] * k, p[1] * k

    for foot in feet:
        kn = knee if knee is not None else ((hip[0] + foot[0]) / 2, (hip[1] + foot[1]) / 2)
        cv.polygon(sp.limb(m(hip), m(kn), 0.17 * k, 0.13 * k), value, pants)
        cv.polygon(sp.limb(m(kn), m(foot), 0.13 * k, 0.11 * k), value, pants)
        cv.polygon(sp.limb(m(foot), m((foot[0] + 0.13, foot[1])), 0.08 * k, 0.08 * k, 1.0), value, (30, 30, 30))
    cv.polygon(sp.limb(m(hip), m(shoulder), 0.34 * k, 0.42 * k, 2.0), value, shirt)
    if not helmet and rng.random() < 0.3:  # a coat or dress over the legs
        cv.polygon(sp.limb(m(shoulder), m((hip[0], hip[1] - 0.35)), 0.42 * k, 0.52 * k, 2.0), value, shade(shirt, 0.8))
    cv.polygon(sp.limb(m((shoulder[0], shoulder[1] - 0.03)), m(hand), 0.1 * k, 0.08 * k), value, shade(shirt, 0.9))
    hx, hy = sp.pt(*m((shoulder[0] + 0.03, shoulder[1] + 0.18)))
    r = sp.px(0.11 * k, 0.9)
    cv.ellipse(hx, hy, r, r * 1.15, value, skin)
    if helmet:
        cv.ellipse(hx, hy - r * 0.3, r * 1.25, r * 1.05, value, pick(rng, CLOTHES))
    else:
        cv.ellipse(hx, hy - r * 0.5, r * 1.02, r * 0.6, value, hair)


def draw_person(cv: Canvas, cam: Camera, rng: np.random.Generator, x: float, z: float) -> None:
    """A pedestrian, standing or walking."""
    value = cv.instance(PERSON)
    sp = Sprite(cam, x, z, d=1 if rng.random() < 0.5 else -1)
    k, stride = rng.uniform(0.88, 1.1), rng.uniform(-0.22, 0.22)
    _body(cv, sp, rng, value, hip=(0.0, 0.92), knee=None, feet=((-0.08 + stride, 0.0), (0.08 - stride, 0.0)),
          shoulder=(0.0, 1.45), hand=(0.1 - stride * 0.6, 0.85), k=k)
    if rng.random() < 0.3:  # a bag (annotated as part of the person)
        cv.polygon(sp.poly(((0.15 * k, 0.75 * k), (0.4 * k, 0.75 * k), (0.4 * k, 1.05 * k), (0.15 * k, 1.05 * k))),
                   value, pick(rng, CLOTHES))


def draw_bicycle(cv: Canvas, cam: Camera, rng: np.random.Generator, x: float, z: float, d: int, value: int) -> Sprite:
    """A bicycle in side view (two spoked wheels and a thin frame); returns its sprite."""
    sp = Sprite(cam, x, z, d)
    frame = pick(rng, CLOTHES)
    r = 0.34
    for wx in (-0.52, 0.52):
        cx, cy = sp.pt(wx, r)
        radius = sp.px(r)
        cv.ellipse(cx, cy, radius, radius, value, (105, 105, 110))  # the spokes blur into grey
        cv.ring(cx, cy, radius, sp.px(0.06), value, (20, 20, 20))
        cv.ellipse(cx, cy, radius * 0.15, radius * 0.15, None, (60, 60, 60))
    bb, seat, head = (-0.02, 0.32), (-0.2, 0.88), (0.38, 0.92)
    width = sp.px(0.055)
    for a, b in ((bb, seat), (seat, head), (bb, head), (bb, (-0.52, r)), (seat, (-0.52, r)), (head, (0.52, r)),
                 (head, (0.44, 1.05))):
        cv.line([*sp.pt(*a), *sp.pt(*b)], width, value, frame)
    cv.line([*sp.pt(-0.3, 0.9), *sp.pt(-0.1, 0.9)], sp.px(0.07), value, (25, 25, 25))  # saddle
    return sp


def draw_motorcycle(cv: Canvas, cam: Camera, rng: np.random.Generator, x: float, z: float, d: int,
                    value: int) -> Sprite:
    """A motorcycle in side view: solid dark wheels, engine block, tank and seat; returns its sprite."""
    sp = Sprite(cam, x, z, d)
    color = pick(rng, CAR_COLORS)
    r = 0.32
    for wx in (-0.7, 0.7):
        cx, cy = sp.pt(wx, r)
        radius = sp.px(r)
        cv.ellipse(cx, cy, radius, radius, value, (25, 25, 28))
        cv.ellipse(cx, cy, radius * 0.55, radius * 0.55, value, (150, 150, 155))
    cv.polygon(sp.poly(((-0.3, 0.22), (0.3, 0.22), (0.38, 0.6), (-0.35, 0.62))), value, (60, 60, 65))  # engine
    tank_and_seat = ((-0.85, 0.62), (-0.75, 0.85), (-0.1, 0.86), (0.35, 1.0), (0.5, 0.85), (0.3, 0.6))
    cv.polygon(sp.poly(tank_and_seat), value, color)
    cv.line([*sp.pt(0.45, 0.95), *sp.pt(0.7, r)], sp.px(0.07), value, (170, 170, 175))  # fork
    cv.line([*sp.pt(0.4, 1.05), *sp.pt(0.55, 1.12)], sp.px(0.05), value, (30, 30, 30))  # handlebar
    cv.line([*sp.pt(-0.4, 0.3), *sp.pt(-0.95, 0.38)], sp.px(0.08), value, (190, 190, 195))  # exhaust
    hx, hy = sp.pt(0.6, 0.95)
    cv.ellipse(hx, hy, sp.px(0.07), sp.px(0.07), None, (240, 240, 210))
    return sp


def draw_rider(cv: Canvas, sp: Sprite, rng: np.random.Generator, motor: bool) -> None:
    """A rider sitting on the two-wheeler drawn with sprite ``sp``, leaning to the handlebar."""
    value = cv.instance(RIDER)
    if motor:
        _body(cv, sp, rng, value, hip=(-0.2, 0.92), knee=(0.18, 0.85), feet=((0.1, 0.42), (0.12, 0.42)),
              shoulder=(0.05, 1.45), hand=(0.45, 1.08), helmet=True)
    else:
        pedal = rng.uniform(-0.15, 0.15)
        _body(cv, sp, rng, value, hip=(-0.2, 0.98), knee=(0.08, 0.72),
              feet=((-0.02 + pedal, 0.2), (-0.02 - pedal, 0.42)),
              shoulder=(0.12, 1.48), hand=(0.44, 1.06), helmet=rng.random() < 0.4)


def draw_tree(cv: Canvas, cam: Camera, rng: np.random.Generator, x: float, z: float, big: bool = False) -> None:
    """A street tree: trunk and a lumpy crown (both vegetation, as annotated in Cityscapes)."""
    sp = Sprite(cam, x, z)
    trunk_h = rng.uniform(2.0, 3.5) * (1.5 if big else 1.0)
    radius = rng.uniform(1.5, 2.8) * (1.6 if big else 1.0)
    foliage = pick(rng, FOLIAGE_COLORS)
    cv.cast_shadow(quad_y(cam, 0.0, x - radius, x + radius, z - radius * 0.5, z + radius * 0.5), 130)
    bark = jitter(rng, (85, 70, 55), 10)
    cv.polygon(sp.limb((0.0, 0.0), (0.0, trunk_h + radius * 0.5), 0.35, 0.25, 2.0), VEGETATION, bark)
    n = 18
    ang = np.linspace(0, 2 * np.pi, n, endpoint=False)
    rad = radius * (1 + 0.22 * rng.standard_normal(n)).clip(0.6, 1.4)
    cy = trunk_h + radius * 0.8
    crown = np.column_stack([np.cos(ang) * rad, cy + np.sin(ang) * rad * rng.uniform(0.75, 1.0)])
    cv.polygon(sp.poly(crown.tolist()), VEGETATION, foliage)
    for _ in range(4):  # darker clumps give the crown its structure
        px, py = sp.pt(rng.uniform(-0.5, 0.5) * radius, cy + rng.uniform(-0.5, 0.3) * radius)
        rr = sp.px(radius * rng.uniform(0.25, 0.45))
        cv.ellipse(px, py, rr, rr * 0.8, None, shade(foliage, rng.uniform(0.6, 0.8)))


def draw_pole(cv: Canvas, cam: Camera, rng: np.random.Generator, x: float, z: float, kind: str,
              toward_road: int) -> None:
    """A pole carrying a street lamp (``kind`` "lamp"), traffic signs ("sign") or lights ("light").

    ``toward_road``: +1 if the road is to the right of the pole, -1 if to the left.
    """
    sp = Sprite(cam, x, z, d=toward_road)
    color = pick(rng, POLE_COLORS)
    height = {"lamp": rng.uniform(6.5, 9.0), "sign": rng.uniform(2.6, 3.6), "light": rng.uniform(3.6, 4.8)}[kind]
    cv.polygon(sp.limb((0.0, 0.0), (0.0, height), 0.26, 0.2, 2.0), POLE, color)
    if kind == "lamp":
        arm = rng.uniform(1.2, 2.2)
        cv.polygon(sp.limb((0.0, height - 0.1), (arm, height), 0.14, 0.12, 1.5), POLE, color)
        cv.polygon(sp.poly(((arm - 0.5, height + 0.05), (arm + 0.2, height + 0.05), (arm + 0.1, height - 0.25),
                            (arm - 0.4, height - 0.25))), POLE, shade(color, 0.8))
    elif kind == "sign":
        y = height - 0.1
        for _ in range(1 + int(rng.random() < 0.4)):
            y = _draw_sign(cv, sp, rng, y)
    else:
        _draw_light(cv, sp, rng, 0.0, height + 0.05)
        if rng.random() < 0.5:  # an arm over the road with a second light
            arm = rng.uniform(2.5, 4.5)
            cv.polygon(sp.limb((0.0, height - 0.3), (arm, height + 0.6), 0.14, 0.12, 1.5), POLE, color)
            _draw_light(cv, sp, rng, arm, height + 0.55, hanging=True)


def _draw_sign(cv: Canvas, sp: Sprite, rng: np.random.Generator, top: float) -> float:
    """One traffic sign hanging from ``top`` (metres) on the pole; returns the height below it."""
    size = rng.uniform(0.9, 1.2)
    c = top - size / 2
    s = size / 2
    red, white, blue = (200, 30, 30), (235, 235, 235), (30, 70, 170)
    kind = int(rng.integers(4))
    if kind == 0:  # round: prohibition (red ring) or mandatory (blue disc)
        u, v = sp.pt(0.0, c)
        radius = sp.px(s)
        outer, inner = (red, white) if rng.random() < 0.6 else (blue, blue)
        cv.ellipse(u, v, radius, radius, TRAFFIC_SIGN, outer)
        cv.ellipse(u, v, radius * 0.75, radius * 0.75, None, inner)
        cv.polygon(sp.poly(((-s * 0.4, c - 0.05), (s * 0.4, c - 0.05), (s * 0.4, c + 0.05), (-s * 0.4, c + 0.05))),
                   None, (30, 30, 30) if inner == white else white)
    elif kind == 1:  # warning triangle
        cv.polygon(sp.poly(((-s, c - s * 0.8), (s, c - s * 0.8), (0.0, c + s * 0.9))), TRAFFIC_SIGN, red)
        cv.polygon(sp.poly(((-s * 0.6, c - s * 0.55), (s * 0.6, c - s * 0.55), (0.0, c + s * 0.5))), None, white)
    elif kind == 2:  # information panel
        col = (blue, (30, 120, 60), (240, 200, 40), white)[int(rng.integers(4))]
        w, h = s * rng.uniform(0.8, 1.4), s * 0.75
        cv.polygon(sp.poly(((-w, c - h), (w, c - h), (w, c + h), (-w, c + h))), TRAFFIC_SIGN, col)
        cv.polygon(sp.poly(((-w * 0.6, c - 0.05), (w * 0.6, c - 0.05), (w * 0.6, c + 0.08), (-w * 0.6, c + 0.08))),
                   None, white if col != white else (20, 20, 20))
    else:  # priority road diamond
        cv.polygon(sp.poly(((0.0, c + s), (s, c), (0.0, c - s), (-s, c))), TRAFFIC_SIGN, white)
        cv.polygon(sp.poly(((0.0, c + s * 0.6), (s * 0.6, c), (0.0, c - s * 0.6), (-s * 0.6, c))), None, (240, 200, 40))
    return top - size - 0.1


def _draw_light(cv: Canvas, sp: Sprite, rng: np.random.Generator, x: float, bottom: float,
                hanging: bool = False) -> None:
    """A traffic light housing with three lamps, one of them lit."""
    w, h = 0.55, 1.45
    y0 = bottom - h if hanging else bottom
    housing = jitter(rng, (40, 40, 42) if rng.random() < 0.7 else (200, 170, 40), 8)
    box = ((x - w / 2, y0), (x + w / 2, y0), (x + w / 2, y0 + h), (x - w / 2, y0 + h))
    cv.polygon(sp.poly(box), TRAFFIC_LIGHT, housing)
    lit = int(rng.integers(3))
    for i, on in enumerate(((255, 40, 30), (255, 190, 30), (40, 230, 90))):
        u, v = sp.pt(x, y0 + h * (0.82 - 0.32 * i))
        radius = sp.px(0.13, 0.6)
        cv.ellipse(u, v, radius, radius, None, on if i == lit else shade(on, 0.25))


def draw_static(cv: Canvas, cam: Camera, rng: np.random.Generator, x: float, z: float) -> None:
    """Street furniture annotated as 'static': a bin, a bench or a bollard."""
    w, h, depth = ((0.6, 1.0, 0.6), (1.6, 0.8, 0.6), (0.25, 0.9, 0.25))[int(rng.integers(3))]
    color = pick(rng, ((60, 80, 60), (120, 120, 125), (150, 100, 60), (200, 200, 200)))
    draw_box(cv, cam, x - w / 2, x + w / 2, 0.0, h, z, z + depth, STATIC, color)


def draw_dynamic(cv: Canvas, cam: Camera, rng: np.random.Generator, x: float, z: float) -> None:
    """A movable thing annotated as 'dynamic' (a pram or a wheelie bin)."""
    sp = Sprite(cam, x, z, d=1 if rng.random() < 0.5 else -1)
    cv.polygon(sp.poly(((-0.35, 0.3), (0.35, 0.3), (0.4, 0.9), (-0.35, 0.95))), DYNAMIC, pick(rng, CLOTHES))
    for wx in (-0.25, 0.25):
        u, v = sp.pt(wx, 0.13)
        radius = sp.px(0.13)
        cv.ellipse(u, v, radius, radius, DYNAMIC, (30, 30, 30))


def draw_ego_vehicle(cv: Canvas, cam: Camera, rng: np.random.Generator) -> None:
    """The recording car's bonnet at the bottom of the frame (label 'ego vehicle')."""
    w, h = cam.width, cam.height
    top = h * rng.uniform(0.06, 0.14)
    xs = np.linspace(-0.05 * w, 1.05 * w, 24)
    ys = h - top * (1 - ((xs - w / 2) / (0.75 * w)) ** 2)
    hood = np.vstack([np.column_stack([xs, ys]), [[1.05 * w, h + 1], [-0.05 * w, h + 1]]])
    color = pick(rng, ((30, 30, 35), (200, 200, 205), (60, 70, 90)))
    cv.polygon(hood, EGO, color)
    glare = np.column_stack([xs, ys + top * 0.35])[4:-4]  # the sky reflected on the bonnet
    cv.line(glare, max(1.0, top * 0.15), None, shade(color, 1.5) if sum(color) > 200 else (110, 120, 135))
