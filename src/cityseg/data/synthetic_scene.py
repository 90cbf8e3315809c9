"""One procedural street scene: layout, drawing order, texture, light and noise.

:func:`render_scene` samples a camera and a street (lanes, sidewalks, parking, grass, barriers,
facades, a tram track in some frames), then draws in the painter's order:

1. sky and the ground planes (road with markings, rail track, parking, sidewalks, terrain);
2. the backdrop: buildings along both sides and across the far end, trees in their gaps;
3. barriers (walls, fences, hedges, guard rails), outside in;
4. every standing object (trees, poles with lamps/signs/lights, people, riders on bicycles and
   motorcycles, cars, trucks, buses, trams, street furniture) sorted far to near, so nearer
   objects occlude farther ones;
5. the ego vehicle's bonnet in some frames.

:func:`finish` then makes the photo hard to read pixel by pixel, as a real one is: per-class
texture (grain, blotches, foliage), cast shadows on the ground, a scene-wide brightness, colour
cast and light gradient, gamma, sensor noise and sometimes a slight blur. Classes stay
learnable from shape and context (windows on facades, bars on fences, wheels under vehicles,
lamps in traffic lights), which is what a segmentation network has to use on real data too.

The presence rates below (``P_*``) are tuned so that every train class appears in most frames
with enough pixels for a small network to learn it from a few hundred frames.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from cityseg.data import synthetic_draw as d
from cityseg.data.synthetic_canvas import (
    INSTANCE_BASE,
    Camera,
    Canvas,
    jitter,
    pick,
    quad_y,
    quads_y,
    resolved,
    shade,
)

# Chance that a frame holds at least one of these (each frame draws them independently).
P_TRAM = 0.55
P_BUS = 0.65
P_TRUCK = 0.65
P_MOTORCYCLE = 0.65
P_BICYCLE = 0.7
P_EGO = 0.3
P_CROSSWALK = 0.35


@dataclass
class Side:
    """One side of the street, from the road edge outwards (distances in metres, > 0)."""

    sign: int  # +1 right of the camera, -1 left
    curb: float  # distance of the road edge from the camera
    parking: float  # width of a parking strip beside the road (0: none)
    walk: float  # sidewalk width
    grass: float  # terrain strip beyond the sidewalk (0: none)
    setback: float  # from the barrier line to the facades
    guard_rail: bool

    @property
    def walk_in(self) -> float:
        return self.curb + self.parking

    @property
    def walk_out(self) -> float:
        return self.walk_in + self.walk

    @property
    def barrier(self) -> float:
        return self.walk_out + self.grass

    @property
    def facade(self) -> float:
        return self.barrier + self.setback

    def x(self, dist: float) -> float:
        """Signed X of a point ``dist`` metres from the camera on this side."""
        return self.sign * dist


@dataclass
class Street:
    sides: tuple[Side, Side]  # left, right
    lane_width: float
    lanes: list[float]  # X of each lane centre; the camera drives in lane X = 0
    rail_lane: float | None  # X of the lane that is a tram track, if any
    z_end: float  # where the street ends
    cross_building: bool  # a building closes the street at z_end
    crosswalk: float | None  # Z of a zebra crossing
    sun: float  # +1 light from the right, -1 from the left


def sample_camera(rng: np.random.Generator, width: int, height: int) -> Camera:
    return Camera(width=width, height=height, f=width * rng.uniform(0.8, 1.05), cx=width * rng.uniform(0.4, 0.6),
                  horizon=height * rng.uniform(0.36, 0.47), cam_h=rng.uniform(1.3, 1.7))


def sample_street(rng: np.random.Generator) -> Street:
    lane_w = rng.uniform(3.0, 3.6)
    n_left, n_right = int(rng.integers(0, 3)), int(rng.integers(0, 3))
    if n_left + n_right == 0:
        n_right = 1
    lanes = [k * lane_w for k in range(-n_left, n_right + 1)]
    sides = []
    for sign, n in ((-1, n_left), (1, n_right)):
        guard = rng.random() < 0.12
        sides.append(Side(sign=sign, curb=lane_w / 2 + n * lane_w + rng.uniform(0.0, 0.6),
                          parking=rng.uniform(2.0, 2.6) if (rng.random() < 0.3 and not guard) else 0.0,
                          walk=rng.uniform(2.0, 4.5), grass=rng.uniform(1.0, 4.0) if rng.random() < 0.6 else 0.0,
                          setback=rng.uniform(0.3, 3.0), guard_rail=guard))
    rail = None
    if rng.random() < P_TRAM:
        others = [x for x in lanes if x != 0.0]
        rail = others[int(rng.integers(len(others)))]
    return Street(sides=(sides[0], sides[1]), lane_width=lane_w, lanes=lanes, rail_lane=rail,
                  z_end=rng.uniform(60.0, 140.0), cross_building=rng.random() < 0.6,
                  crosswalk=rng.uniform(8.0, 25.0) if rng.random() < P_CROSSWALK else None,
                  sun=1.0 if rng.random() < 0.5 else -1.0)


# ----------------------------------------------------------------------------- sky and ground


def smooth_noise(rng: np.random.Generator, height: int, width: int, cell: int) -> np.ndarray:
    """(H, W) float32 noise, about unit variance, smooth over ``cell`` pixels (bilinear upsampling)."""
    small = rng.standard_normal((height // cell + 2, width // cell + 2)).astype(np.float32)
    return np.asarray(Image.fromarray(small, mode="F").resize((width, height), Image.BILINEAR)) * 1.6


def sky_image(rng: np.random.Generator, cam: Camera) -> np.ndarray:
    """(H, W, 3) uint8: a vertical gradient (blue, overcast grey or hazy) with soft clouds."""
    h, w = cam.height, cam.width
    styles = (((60, 110, 190), (175, 200, 225)), ((150, 155, 165), (205, 205, 210)), ((110, 150, 200), (230, 215, 190)))
    top, low = (np.array(c, dtype=np.float32) for c in styles[int(rng.integers(len(styles)))])
    t = np.clip(np.arange(h, dtype=np.float32) / max(cam.horizon, 1.0), 0, 1)[:, None, None]
    sky = top * (1 - t) + low * t + rng.normal(0, 8, 3).astype(np.float32)
    clouds = np.clip(smooth_noise(rng, h, w, max(w // 12, 2)) - rng.uniform(0.0, 1.0), 0, 1)[..., None]
    sky = sky * (1 - 0.7 * clouds) + 235.0 * 0.7 * clouds
    return np.broadcast_to(sky, (h, w, 3)).clip(0, 255).astype(np.uint8)


def initial_ids(cam: Camera) -> np.ndarray:
    """Sky above the horizon, terrain below (far ground that nothing covers)."""
    rows = np.arange(cam.height)[:, None] < cam.horizon
    return np.where(np.broadcast_to(rows, (cam.height, cam.width)), d.SKY, d.TERRAIN).astype(np.int32)


def draw_ground(cv: Canvas, cam: Camera, st: Street, rng: np.random.Generator) -> None:
    """Ground planes outside in, then markings and the building shadow."""
    zn, zf = cam.z_bottom * 0.7, 2000.0
    grass = pick(rng, d.GRASS_COLORS)
    paving = pick(rng, ((150, 145, 140), (175, 165, 150), (140, 110, 100), (120, 120, 125)))
    asphalt = jitter(rng, (85, 85, 90), 10)
    for sd in st.sides:
        far_label = d.GROUND if rng.random() < 0.25 else d.TERRAIN
        cv.polygon(quad_y(cam, 0.0, sd.x(sd.barrier), sd.x(200.0), zn, zf), far_label,
                   shade(grass, 0.9) if far_label == d.TERRAIN else jitter(rng, (120, 105, 85)))
        if sd.grass:
            cv.polygon(quad_y(cam, 0.0, sd.x(sd.walk_out), sd.x(sd.barrier), zn, zf), d.TERRAIN, grass)
            if rng.random() < 0.3:  # a patch of bare ground in the grass
                z0 = rng.uniform(8.0, 30.0)
                cv.polygon(quad_y(cam, 0.0, sd.x(sd.walk_out), sd.x(sd.barrier), z0, z0 + rng.uniform(3, 10)), d.GROUND,
                           jitter(rng, (125, 105, 80)))
        cv.polygon(quad_y(cam, 0.0, sd.x(sd.walk_in), sd.x(sd.walk_out), zn, zf), d.SIDEWALK, paving)
        joints = resolved(np.arange(zn, 40.0, 1.5), cam.z_resolved(cam.cam_h, 1.5))
        cv.polygons(quads_y(cam, 0.0, sd.x(sd.walk_in), sd.x(sd.walk_out), joints, joints + 0.06), None,
                    shade(paving, 0.8))
        kerb = quad_y(cam, 0.0, sd.x(sd.walk_in), sd.x(sd.walk_in + 0.2), zn, zf)
        cv.polygon(kerb, None, shade(paving, 1.2))
        if sd.parking:
            cv.polygon(quad_y(cam, 0.0, sd.x(sd.curb), sd.x(sd.walk_in), zn, zf), d.PARKING,
                       jitter(rng, (115, 105, 110)))
            bays = resolved(np.arange(zn, 60.0, 5.5), cam.z_resolved(cam.cam_h, 5.5))
            cv.polygons(quads_y(cam, 0.0, sd.x(sd.curb), sd.x(sd.walk_in), bays, bays + 0.12), None, (215, 215, 210))
    left, right = st.sides
    cv.polygon(quad_y(cam, 0.0, -left.curb, right.curb, zn, zf), d.ROAD, asphalt)
    if st.rail_lane is not None:
        draw_rail_track(cv, cam, st.rail_lane, st.lane_width, zn, zf, rng)
    draw_markings(cv, cam, st, zn)
    if rng.random() < 0.5:  # the buildings on the side the sun comes from shade part of the street
        sd, across = (left, right) if st.sun < 0 else (right, left)
        reach = rng.uniform(2.0, sd.facade + across.curb)
        cv.cast_shadow(quad_y(cam, 0.0, sd.x(sd.facade), sd.x(sd.facade - reach), zn, zf), int(rng.uniform(120, 170)))


def draw_rail_track(cv: Canvas, cam: Camera, xc: float, lane_w: float, zn: float, zf: float,
                    rng: np.random.Generator) -> None:
    """A tram track: gravel bed, sleepers and two steel rails."""
    half = lane_w / 2
    cv.polygon(quad_y(cam, 0.0, xc - half, xc + half, zn, zf), d.RAIL_TRACK, jitter(rng, (120, 110, 95), 10))
    sleepers = resolved(np.arange(zn, 80.0, 0.7), cam.z_resolved(cam.cam_h, 0.7))
    cv.polygons(quads_y(cam, 0.0, xc - 1.2, xc + 1.2, sleepers, sleepers + 0.25), None, jitter(rng, (80, 65, 50), 8))
    for rail_x in (xc - 0.75, xc + 0.75):
        cv.polygon(quad_y(cam, 0.0, rail_x - 0.07, rail_x + 0.07, zn, zf), None, (185, 185, 190))


def draw_markings(cv: Canvas, cam: Camera, st: Street, zn: float) -> None:
    """Dashed lane lines, solid edge lines and an optional zebra crossing (paint on the road)."""
    paint = (225, 225, 220)
    left, right = st.sides
    bounds = [x + st.lane_width / 2 for x in st.lanes[:-1]]
    dashes = np.arange(zn, 150.0, 9.0)
    for x in bounds:
        if st.rail_lane is not None and abs(abs(x - st.rail_lane) - st.lane_width / 2) < 1e-6:
            continue
        cv.polygons(quads_y(cam, 0.0, x - 0.07, x + 0.07, dashes, dashes + 3.0), None, paint)
    for sd in st.sides:
        cv.polygon(quad_y(cam, 0.0, sd.x(sd.curb - 0.4), sd.x(sd.curb - 0.25), zn, 2000.0), None, paint)
    if st.crosswalk is not None:
        stripes = np.arange(-left.curb + 0.3, right.curb - 0.3, 1.0)
        cv.polygons(quads_y(cam, 0.0, stripes, stripes + 0.5, st.crosswalk, st.crosswalk + 4.0), None, paint)


# ----------------------------------------------------------------------------- backdrop and barriers


def draw_backdrop(cv: Canvas, cam: Camera, st: Street, rng: np.random.Generator) -> None:
    """Distant tree line, the building across the end, then each side's buildings far to near."""
    draw_tree_line(cv, cam, rng)
    if st.cross_building:
        d.draw_cross_building(cv, cam, rng, st.z_end + 10.0, -80.0, 80.0, rng.uniform(8.0, 30.0))
    blocks = []  # (z0, callable)
    for sd in st.sides:
        tall = rng.uniform(8.0, 26.0)
        sun = 0.75 if sd.sign == st.sun else 1.05  # facades on the sun's side face away from it
        z = rng.uniform(-5.0, 3.0)
        while z < st.z_end:
            length = rng.uniform(8.0, 28.0)
            if rng.random() < 0.15:  # a gap with a big tree behind the barrier line
                tx = sd.x(sd.facade + rng.uniform(2.0, 5.0))
                blocks.append((z, functools.partial(d.draw_tree, cv, cam, rng, tx, max(z + length / 2, 4.0), big=True)))
            else:
                x_face = sd.x(sd.facade + rng.uniform(0.0, 1.5))
                height = tall * rng.uniform(0.7, 1.3)
                blocks.append((z, functools.partial(d.draw_building, cv, cam, rng, x_face, sd.x(15.0), z, z + length,
                                                    height, sun)))
            z += length
    for _, draw in sorted(blocks, key=lambda b: -b[0]):
        draw()


def draw_tree_line(cv: Canvas, cam: Camera, rng: np.random.Generator) -> None:
    """A band of distant trees along the horizon (seen where nothing nearer hides it)."""
    xs = np.linspace(-2, cam.width + 2, 40)
    tops = cam.horizon - cam.height * 0.04 * (1 + np.abs(rng.standard_normal(40)))
    band = np.vstack([np.column_stack([xs, tops]), [[cam.width + 2, cam.horizon + 2], [-2, cam.horizon + 2]]])
    cv.polygon(band, d.VEGETATION, pick(rng, d.FOLIAGE_COLORS))


def draw_barriers(cv: Canvas, cam: Camera, st: Street, rng: np.random.Generator) -> None:
    """Walls, fences and hedges on each side's barrier line; guard rails at the road edge."""
    for sd in st.sides:
        z = rng.uniform(-5.0, 5.0)
        while z < st.z_end:
            length = rng.uniform(6.0, 25.0)
            kind = rng.choice(["none", "wall", "fence", "hedge"], p=[0.25, 0.3, 0.3, 0.15])
            x = sd.x(sd.barrier)
            if kind == "wall":
                d.draw_wall(cv, cam, rng, x, max(z, 0.5), z + length, rng.uniform(0.8, 2.6))
            elif kind == "fence":
                d.draw_fence(cv, cam, rng, x, max(z, 0.5), z + length, rng.uniform(1.0, 2.2))
            elif kind == "hedge":
                d.draw_hedge(cv, cam, rng, x, max(z, 0.5), z + length, rng.uniform(0.8, 1.8))
            z += length
        if sd.guard_rail:
            d.draw_guard_rail(cv, cam, rng, sd.x(sd.curb + 0.15), 0.5, st.z_end)


# ----------------------------------------------------------------------------- objects


def place_objects(cv: Canvas, cam: Camera, st: Street, rng: np.random.Generator) -> list[tuple[float, object]]:
    """Every standing object as (depth, draw callable); the caller draws them far to near."""
    objs: list[tuple[float, object]] = []

    def add(z: float, fn, *args) -> None:  # fn(cv, cam, rng, *args) draws the object at depth z
        objs.append((z, functools.partial(fn, cv, cam, rng, *args)))

    z_min = cam.z_bottom + 1.0
    for sd in st.sides:
        toward_road = -sd.sign
        # trees on the sidewalk's outer edge or in the grass strip
        if rng.random() < 0.75:
            x_tree = sd.walk_out - 0.7 if not sd.grass else sd.walk_out + sd.grass / 2
            for z in np.arange(rng.uniform(z_min, z_min + 10), st.z_end, rng.uniform(8.0, 16.0)):
                if rng.random() < 0.8:
                    add(z, d.draw_tree, sd.x(x_tree), z)
        # poles near the kerb
        for z in np.arange(rng.uniform(z_min + 2, z_min + 12), min(st.z_end, 90.0), rng.uniform(9.0, 20.0)):
            kind = rng.choice(["lamp", "sign", "light"], p=[0.25, 0.4, 0.35])
            add(z, d.draw_pole, sd.x(sd.walk_in + 0.45), z, kind, toward_road)
        for _ in range(int(rng.integers(1, 5))):  # pedestrians, alone or in small groups
            z = rng.uniform(z_min + 1, 35.0)
            for _ in range(1 if rng.random() < 0.6 else int(rng.integers(2, 4))):
                zp = z + rng.uniform(-0.8, 0.8)
                add(zp, d.draw_person, sd.x(rng.uniform(sd.walk_in + 0.6, sd.walk_out - 0.3)), zp)
        for _ in range(int(rng.integers(0, 3))):
            z = rng.uniform(z_min + 2, 40.0)
            add(z, d.draw_static, sd.x(sd.walk_out - 0.5), z)
        if rng.random() < 0.3:
            z = rng.uniform(z_min + 2, 30.0)
            add(z, d.draw_dynamic, sd.x(rng.uniform(sd.walk_in + 0.5, sd.walk_out - 0.5)), z)
        if sd.parking:  # parked cars
            for z in np.arange(rng.uniform(z_min - 2, z_min + 4), 70.0, rng.uniform(5.5, 9.0)):
                if rng.random() < 0.7:
                    add(z, d.draw_car, sd.x(sd.curb + sd.parking / 2), z, rng.random() < 0.5)
        if rng.random() < 0.4:  # a parked bicycle or motorcycle on the sidewalk
            z = rng.uniform(z_min + 1, 25.0)
            add(z, _parked_two_wheeler, sd.x(sd.walk_out - 0.6), z, rng.random() < 0.3)
    if st.crosswalk is not None:
        for _ in range(int(rng.integers(1, 4))):
            z = st.crosswalk + rng.uniform(0.5, 3.5)
            add(z, d.draw_person, rng.uniform(-st.sides[0].curb, st.sides[1].curb), z)
    objs += place_traffic(cv, cam, st, rng, z_min)
    return objs


def _parked_two_wheeler(cv: Canvas, cam: Camera, rng: np.random.Generator, x: float, z: float, motor: bool) -> None:
    draw = d.draw_motorcycle if motor else d.draw_bicycle
    draw(cv, cam, rng, x, z, 1 if rng.random() < 0.5 else -1, cv.instance(d.MOTORCYCLE if motor else d.BICYCLE))


def _ridden_two_wheeler(cv: Canvas, cam: Camera, rng: np.random.Generator, x: float, z: float, motor: bool) -> None:
    direction = 1 if rng.random() < 0.5 else -1
    draw = d.draw_motorcycle if motor else d.draw_bicycle
    sp = draw(cv, cam, rng, x, z, direction, cv.instance(d.MOTORCYCLE if motor else d.BICYCLE))
    d.draw_rider(cv, sp, rng, motor)


def place_traffic(cv: Canvas, cam: Camera, st: Street, rng: np.random.Generator,
                  z_min: float) -> list[tuple[float, object]]:
    """Vehicles in the lanes (oncoming left of the camera), a tram on the track, two-wheelers."""
    objs: list[tuple[float, object]] = []
    road_lanes = [x for x in st.lanes if x != st.rail_lane]
    busy: dict[float, list[tuple[float, float]]] = {x: [] for x in st.lanes}

    def put(lane: float, z0: float, length: float, fn, *args) -> bool:
        if any(z0 < b and a < z0 + length + 1.5 for a, b in busy[lane]):
            return False
        busy[lane].append((z0 - 1.5, z0 + length))
        objs.append((z0, functools.partial(fn, cv, cam, rng, *args)))
        return True

    def lane_start(lane: float) -> float:
        return z_min + (6.0 if lane == 0.0 else 1.0)

    def put_in_some_lane(length: float, z_far: float, fn, *args, near: float = 0.0) -> None:
        """Draw fn(x, z0, *args) in a free stretch of a random lane; vehicles (``length`` > 3 m)
        also get ``facing_away``: traffic drives on the right, so left lanes come towards us."""
        for _ in range(6):  # a few tries
            lane = road_lanes[int(rng.integers(len(road_lanes)))]
            z0 = rng.uniform(lane_start(lane) + near, z_far)
            if length < 3:
                fn_args = (lane + rng.uniform(-0.8, 0.8), z0, *args)
            else:
                fn_args = (lane, z0, lane >= 0)
            if put(lane, z0, length, fn, *fn_args):
                return

    if st.rail_lane is not None:
        z0 = rng.uniform(lane_start(st.rail_lane), 30.0)
        put(st.rail_lane, z0, 40.0, d.draw_train, st.rail_lane, z0, rng.uniform(20.0, 40.0))
    for fn, p, length in ((d.draw_bus, P_BUS, 14.0), (d.draw_truck, P_TRUCK, 10.0)):
        if rng.random() < p:
            put_in_some_lane(length, 35.0, fn)
    for motor, p in ((True, P_MOTORCYCLE), (False, P_BICYCLE)):
        if rng.random() < p:
            for _ in range(int(rng.integers(1, 3))):
                put_in_some_lane(2.0, 25.0, _ridden_two_wheeler, motor, near=-2.0)
    for lane in road_lanes:  # fill with cars
        z = lane_start(lane) + rng.uniform(0.0, 8.0)
        while z < 100.0:
            put(lane, z, 5.0, d.draw_car, lane + rng.uniform(-0.3, 0.3), z, lane >= 0)  # oncoming left
            z += rng.uniform(6.0, 22.0)
    return objs


# ----------------------------------------------------------------------------- finishing


def _texture_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-labelId texture: amplitudes of fine/medium/coarse multiplicative noise, colour tint."""
    amp = np.tile(np.array([0.03, 0.04, 0.03], dtype=np.float32), (256, 1))
    tint = np.zeros((256, 3), dtype=np.float32)
    for lid, a in {d.ROAD: (0.06, 0.07, 0.08), d.SIDEWALK: (0.05, 0.05, 0.06), d.PARKING: (0.06, 0.06, 0.08),
                   d.RAIL_TRACK: (0.16, 0.06, 0.05), d.GROUND: (0.1, 0.1, 0.1), d.BUILDING: (0.03, 0.05, 0.07),
                   d.WALL: (0.06, 0.07, 0.09), d.VEGETATION: (0.14, 0.28, 0.12), d.TERRAIN: (0.12, 0.1, 0.1),
                   d.SKY: (0.01, 0.0, 0.0), d.FENCE: (0.04, 0.04, 0.04)}.items():
        amp[lid] = a
    tint[d.VEGETATION] = (10.0, 14.0, -4.0)
    tint[d.TERRAIN] = (12.0, 8.0, -6.0)
    return amp, tint


TEXTURE_AMP, TEXTURE_TINT = _texture_tables()
#: Labels that receive cast shadows (the ground planes).
SHADOW_RECEIVERS = np.zeros(256, dtype=bool)
SHADOW_RECEIVERS[[d.ROAD, d.SIDEWALK, d.PARKING, d.RAIL_TRACK, d.GROUND, d.TERRAIN]] = True


def finish(photo: np.ndarray, label_ids: np.ndarray, shadow: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Texture, shadows, light, colour cast, gamma and sensor noise on the drawn photo.

    Args:
        photo: (H, W, 3) uint8 base colours.
        label_ids: (H, W) uint8 labelIds (selects each pixel's texture).
        shadow: (H, W) uint8, 255 = lit; applied to ground pixels only.

    Returns:
        (H, W, 3) uint8 photo.
    """
    h, w = label_ids.shape
    img = photo.astype(np.float32)
    fine = rng.standard_normal((h, w)).astype(np.float32)
    mid = smooth_noise(rng, h, w, 3)
    coarse = smooth_noise(rng, h, w, max(w // 16, 4))
    amp = TEXTURE_AMP[label_ids]
    img *= (1.0 + amp[..., 0] * fine + amp[..., 1] * mid + amp[..., 2] * coarse)[..., None]
    img += TEXTURE_TINT[label_ids] * mid[..., None]
    light = np.where(SHADOW_RECEIVERS[label_ids], shadow.astype(np.float32) / 255.0, 1.0)
    gx, gy = rng.uniform(-0.35, 0.35), rng.uniform(-0.2, 0.2)
    xs, ys = np.linspace(-0.5, 0.5, w, dtype=np.float32), np.linspace(-0.5, 0.5, h, dtype=np.float32)
    light *= (1 + gx * xs)[None, :] * (1 + gy * ys)[:, None]
    gain = rng.uniform(0.6, 1.25) * np.clip(1 + rng.normal(0, 0.07, 3), 0.8, 1.2).astype(np.float32)
    img = img * light[..., None] * gain
    img = 255.0 * (np.clip(img, 0, 255) / 255.0) ** rng.uniform(0.8, 1.25)
    img += rng.normal(0.0, rng.uniform(2.0, 7.0), img.shape).astype(np.float32)
    out = np.clip(img + 0.5, 0, 255).astype(np.uint8)
    if rng.random() < 0.3:
        out = np.asarray(Image.fromarray(out).filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.7))))
    return out


def ids_to_label_ids(ids: np.ndarray) -> np.ndarray:
    """instanceIds-style map (labelId or labelId*1000+k) -> (H, W) uint8 labelIds."""
    return np.where(ids >= INSTANCE_BASE, ids // INSTANCE_BASE, ids).astype(np.uint8)


def render_scene(rng: np.random.Generator, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw one street scene.

    Returns:
        photo: (H, W, 3) uint8 RGB.
        ids: (H, W) int32 instanceIds: labelId * 1000 + k on instances of classes with
            instances, the labelId elsewhere.
    """
    cam = sample_camera(rng, width, height)
    st = sample_street(rng)
    cv = Canvas(sky_image(rng, cam), initial_ids(cam))
    draw_ground(cv, cam, st, rng)
    draw_backdrop(cv, cam, st, rng)
    draw_barriers(cv, cam, st, rng)
    for _, draw in sorted(place_objects(cv, cam, st, rng), key=lambda o: -o[0]):
        draw()
    if rng.random() < P_EGO:
        d.draw_ego_vehicle(cv, cam, rng)
    ids = np.asarray(cv.ids, dtype=np.int32)
    photo = finish(np.asarray(cv.photo), ids_to_label_ids(ids), np.asarray(cv.shadow), rng)
    return photo, ids

