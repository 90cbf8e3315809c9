"""cityseg.data.colour on palettes other than Cityscapes': the tables, a toy dataset's degraded masks,
reading them through cityseg.data.formats, and the limit on the number of colours."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from cityseg import labels
from cityseg.data import colour, colour_sim, formats, palette
from cityseg.data.palette import CITYSCAPES, Palette
from cityseg.datasets import IGNORE_INDEX, DatasetSpec, load_dataset
from cityseg.errors import CitysegError

TOY = {
    "name": "toy5",
    "classes": [
        {"name": "ground", "color": [10, 200, 30], "ids": [1]},
        {"name": "wall", "color": [200, 20, 20], "ids": [2, 3]},
        {"name": "sky", "color": [20, 40, 220], "ids": [4]},
        {"name": "person", "color": [240, 200, 0], "ids": [5]},
        {"name": "car", "color": [120, 0, 160]},  # no ids: its own, 6 (the lowest that no class or void lists)
    ],
    "void": {"ids": [9, 0], "colors": [[0, 0, 0]]},
    "images": "{split}/images/{stem}.png",
    "labels": "{split}/labels/{stem}.png",
}


def _toy(extra_classes: list[dict] | None = None, name: str = "toy5") -> DatasetSpec:
    raw = {**TOY, "name": name, "classes": TOY["classes"] + (extra_classes or [])}
    return DatasetSpec.from_dict(raw, "test")


def _colours_of(spec: DatasetSpec, train_ids: np.ndarray) -> np.ndarray:
    """(H, W) uint8 train ids (IGNORE_INDEX = void) -> (H, W, 3) uint8 clean colour mask (void black)."""
    lut = np.zeros((256, 3), np.uint8)
    lut[: spec.num_classes] = spec.palette
    return lut[train_ids]


def _random_scene(num_classes: int, size: tuple[int, int], seed: int) -> np.ndarray:
    """(H, W) uint8 piecewise-constant train ids: class 0 everywhere, then random rectangles and
    discs of every class and of void (IGNORE_INDEX), drawn without antialiasing."""
    rng = np.random.default_rng(seed)
    w, h = size
    img = Image.new("L", size, 0)
    draw = ImageDraw.Draw(img)
    values = list(range(num_classes)) + [IGNORE_INDEX]
    for _ in range(40):
        value = int(rng.choice(values))
        x0, y0 = int(rng.integers(0, w - 8)), int(rng.integers(0, h - 8))
        x1, y1 = x0 + int(rng.integers(8, w // 3)), y0 + int(rng.integers(8, h // 3))
        (draw.rectangle if rng.random() < 0.5 else draw.ellipse)((x0, y0, x1, y1), fill=value)
    return np.asarray(img)


def _exact(pal: Palette, rgb: np.ndarray) -> np.ndarray:
    """The plain baseline: exact colour matching; any other colour -> ignore."""
    out = np.full(rgb.shape[:2], IGNORE_INDEX, np.uint8)
    for k, c in enumerate(pal.colours):
        out[(rgb == c).all(-1)] = pal.train_ids[k]
    return out


def _nearest(pal: Palette, rgb: np.ndarray) -> np.ndarray:
    """The plain baseline: the train id of the nearest palette colour (RGB)."""
    d = ((rgb[..., None, :].astype(np.int32) - pal.colours.astype(np.int32)) ** 2).sum(-1)
    return pal.train_ids[d.argmin(-1)]


# ---------------------------------------------------------------------------- Cityscapes


def test_cityscapes_palette_is_the_official_table():
    # rebuilt from cityseg.labels by hand: every distinct colour once, sorted
    colours = sorted({lb.color for lb in labels.LABELS})
    assert CITYSCAPES.colours.tolist() == [list(c) for c in colours]
    assert CITYSCAPES.name == "Cityscapes" and CITYSCAPES.frame_size == palette.CITYSCAPES_SIZE
    assert CITYSCAPES.bit_dtype == np.uint32
    for k, c in enumerate(colours):
        trained = [lb for lb in labels.LABELS if lb.color == c and not lb.ignore_in_eval]
        owner = trained[0].train_id if trained else labels.IGNORE_INDEX
        assert CITYSCAPES.train_ids[k] == owner, c
        assert CITYSCAPES.label_ids[k] == min(lb.id for lb in labels.LABELS
                                              if lb.color == c and lb.id >= 0 and labels.ID_TO_TRAIN_ID[lb.id] == owner)
        assert CITYSCAPES.rare_void[k] == (owner == labels.IGNORE_INDEX and c != (0, 0, 0)), c
    assert (CITYSCAPES.train_ids[len(colours):] == labels.IGNORE_INDEX).all()
    assert (CITYSCAPES.label_ids[len(colours):] == 0).all()
    # the shared colours: pole's grey is also polegroup's, car's blue license plate's, black five voids'
    by_colour = {tuple(c): k for k, c in enumerate(CITYSCAPES.colours.tolist())}
    for name, train_name, label_id in (("polegroup", "pole", 17), ("license plate", "car", 26), ("static", None, 0)):
        k = by_colour[labels.LABEL_BY_NAME[name].color]
        train_id = labels.LABEL_BY_NAME[train_name].train_id if train_name else labels.IGNORE_INDEX
        assert (CITYSCAPES.train_ids[k], CITYSCAPES.label_ids[k]) == (train_id, label_id), name
    # the former module tables are the same arrays, and read-only (the cached tables derive from them)
    assert palette.PALETTE is CITYSCAPES.colours and palette.PALETTE_TRAIN_IDS is CITYSCAPES.train_ids
    assert palette.PALETTE_LABEL_IDS is CITYSCAPES.label_ids
    with pytest.raises(ValueError):
        CITYSCAPES.colours[0] = 1


def test_cityscapes_spec_palette_recovers_the_same_train_ids():
    # from_spec orders colours the same way, so the fit breaks ties alike; only void label ids differ
    # (a description gives its void colours one shared void id)
    pal = Palette.from_spec(load_dataset("cityscapes"))
    assert np.array_equal(pal.colours, CITYSCAPES.colours) and np.array_equal(pal.train_ids, CITYSCAPES.train_ids)
    assert set(pal.label_ids[: pal.n][pal.train_ids[: pal.n] == IGNORE_INDEX].tolist()) == {0}
    ids = np.random.default_rng(4).choice(labels.VALID_LABEL_IDS, (16, 32)).astype(np.uint8)
    rgb, _ = colour_sim.degrade_colour_mask(np.kron(ids, np.ones((8, 8), np.uint8)), (96, 48), "bilinear", 80)
    ours = colour.color_to_train_ids(rgb, palette.CITYSCAPES_SIZE, palette=pal)[0]
    assert np.array_equal(ours, colour.color_to_train_ids(rgb)[0])


# ---------------------------------------------------------------------------- a toy palette


def test_spec_palette_maps_colours_to_train_and_label_ids():
    pal = Palette.from_spec(_toy())
    assert pal.name == "toy5" and pal.n == 6 and pal.frame_size is None
    table = {tuple(c): (int(pal.train_ids[k]), int(pal.label_ids[k])) for k, c in enumerate(pal.colours.tolist())}
    assert table == {(10, 200, 30): (0, 1), (200, 20, 20): (1, 2), (20, 40, 220): (2, 4), (240, 200, 0): (3, 5),
                     (120, 0, 160): (4, 6), (0, 0, 0): (IGNORE_INDEX, 9)}
    assert not pal.rare_void.any()  # black is the common void
    assert (pal.train_ids[palette.NO_COLOUR], pal.label_ids[palette.NO_COLOUR]) == (IGNORE_INDEX, 0)
    # the lookup table is built once per palette, and is not Cityscapes'
    assert colour.confident_lut(pal) is pal.lut is colour.confident_lut(pal)
    assert colour.confident_lut(pal) is not colour.confident_lut()


@pytest.mark.parametrize("seed", [0, 1])
def test_toy_masks_resized_and_jpeg_are_recovered(seed):
    spec = _toy()
    pal = Palette.from_spec(spec)
    truth = _random_scene(spec.num_classes, (512, 256), seed)
    rgb, reference = colour_sim.degrade_colours(_colours_of(spec, truth), truth, (256, 128), "bilinear", 75)
    train, stats = colour.color_to_train_ids(rgb, (512, 256), palette=pal)
    ours = colour_sim.score_recovery(train, reference)
    exact = colour_sim.score_recovery(_exact(pal, rgb), reference)
    nearest = colour_sim.score_recovery(_nearest(pal, rgb), reference)
    assert ours.valid_rate >= 0.99, ours  # seeds 0-5: 0.993-0.997
    assert ours.boundary_rate >= 0.9 and ours.boundary_rate >= nearest.boundary_rate + 0.05, (ours, nearest)
    assert exact.valid_rate < ours.valid_rate - 0.2 and exact.boundary_rate < 0.1, exact  # JPEG moves most colours
    assert stats.recovered > stats.exact
    assert set(np.unique(train).tolist()) <= set(range(spec.num_classes)) | {IGNORE_INDEX}


def test_toy_blend_that_looks_like_a_third_colour_keeps_its_two_components():
    # "violet" lies next to the 50/50 blend of wall (200, 20, 20) and sky (20, 40, 220), (110, 30, 120):
    # a wall | sky border downscaled 8x with antialiasing looks violet to the nearest colour.
    spec = _toy([{"name": "violet", "color": [112, 31, 118], "ids": [6]}])
    pal = Palette.from_spec(spec)
    truth = np.full((64, 256), 2, np.uint8)  # sky
    truth[:, :100] = 1  # wall; the border falls mid-pixel: a 50/50 blend at column 12
    truth[16:40, 176:] = 3  # person
    rgb, reference = colour_sim.degrade_colours(_colours_of(spec, truth), truth, (32, 8), "bilinear")
    violet = spec.class_names.index("violet")
    assert (_nearest(pal, rgb) == violet).any()
    train, stats = colour.color_to_train_ids(rgb, (256, 64), palette=pal)
    assert (train == reference).all()
    assert not (train == violet).any() and stats.recovered > 0


def test_toy_masks_are_read_through_formats_with_their_palette(tmp_path):
    spec = _toy()
    pal = Palette.from_spec(spec)
    truth = _random_scene(spec.num_classes, (128, 64), 5)
    path = tmp_path / "frame.png"  # any name: load_colour does not need Cityscapes' suffixes
    Image.fromarray(_colours_of(spec, truth)).save(path)
    maps = formats.load_colour(path, palette=pal)
    assert (maps.train_ids == truth).all() and maps.stats.exact == maps.stats.pixels
    assert (maps.label_ids == np.array([1, 2, 4, 5, 6] + [0] * 250 + [9], np.uint8)[truth]).all()  # car: its own id
    named = tmp_path / "frame_gtFine_color.png"
    path.rename(named)
    assert (formats.read_label(named, palette=pal) == truth).all()
    # the Cityscapes palette refuses it (the share check uses the given palette), naming the dataset
    with pytest.raises(CitysegError, match="frame_gtFine_color.png: not a Cityscapes colour mask"):
        formats.read_label(named)
    photo = np.random.default_rng(6).integers(0, 256, (64, 128, 3), np.uint8)
    pair = tmp_path / "pair.png"
    Image.fromarray(np.concatenate([photo, _colours_of(spec, truth)], 1)).save(pair)
    assert (formats.load_pair(pair, palette=pal)[1].train_ids == truth).all()
    Image.fromarray(photo).save(path)
    with pytest.raises(CitysegError, match=r"frame.png: not a toy5 colour mask: \d+\.\d% of its pixels are far"):
        formats.load_colour(path, palette=pal)


def test_without_a_frame_size_a_mask_is_taken_at_its_own_size():
    spec = _toy()
    pal = Palette.from_spec(spec)
    truth = _random_scene(spec.num_classes, (128, 64), 7)
    rgb, _ = colour_sim.degrade_colours(_colours_of(spec, truth), truth, (128, 64), "bilinear", 70)
    assert np.array_equal(colour.recover_palette_index(rgb, palette=pal)[0],
                          colour.recover_palette_index(rgb, (128, 64), palette=pal)[0])


# ---------------------------------------------------------------------------- many colours


def _grid_classes(n: int) -> list[dict]:
    """``n`` classes with well separated colours (a 4x4x4 RGB grid)."""
    levels = (0, 85, 170, 255)
    grid = [(r, g, b) for r in levels for g in levels for b in levels if (r, g, b) != (0, 0, 0)]
    return [{"name": f"c{i}", "color": list(grid[i]), "ids": [i + 100]} for i in range(n)]


def test_palettes_of_more_than_32_colours_use_64_bits():
    spec = DatasetSpec.from_dict({**TOY, "name": "grid40", "classes": _grid_classes(40)}, "test")
    pal = Palette.from_spec(spec)
    assert pal.n == 41 and pal.bit_dtype == np.uint64
    truth = np.kron(np.random.default_rng(8).integers(32, 40, (8, 16)), np.ones((16, 16), int)).astype(np.uint8)
    rgb, reference = colour_sim.degrade_colours(_colours_of(spec, truth), truth, (128, 64), "bilinear")
    score = colour_sim.score_recovery(colour.color_to_train_ids(rgb, (256, 128), palette=pal)[0], reference)
    assert score.valid_rate >= 0.99 and score.boundary_rate >= 0.95, score


def test_more_than_64_colours_is_one_line_naming_the_dataset():
    spec = DatasetSpec.from_dict({**TOY, "name": "grid", "classes": _grid_classes(63) + [
        {"name": "extra", "color": [1, 2, 3]}, {"name": "extra2", "color": [4, 5, 6]}]}, "test")
    with pytest.raises(CitysegError) as info:
        Palette.from_spec(spec)
    assert str(info.value) == ("grid: 66 distinct label colours; colour recovery handles at most 64 "
                               "(give its labels as grey id files instead)")
