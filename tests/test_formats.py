"""cityseg.data.formats and cityseg.data.colour: every label format, colour recovery, degradation scores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cityseg import labels
from cityseg.data import colour, colour_sim, formats, palette
from cityseg.errors import CitysegError

ID = {name: lb.id for name, lb in labels.LABEL_BY_NAME.items()}
TRAIN = {name: lb.train_id for name, lb in labels.LABEL_BY_NAME.items()}


def _png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)  # uint8 -> L/RGB/RGBA, uint16 -> I;16
    return path


def _every_id_map() -> np.ndarray:
    """(8, 34) uint8: every label id of the table in its own column."""
    return np.tile(np.array(labels.VALID_LABEL_IDS, np.uint8), (8, 1))


def _nearest_palette(rgb: np.ndarray) -> np.ndarray:
    """The plain baseline: each pixel takes the trainId of its nearest palette colour (RGB)."""
    d = ((rgb[..., None, :3].astype(np.int32) - palette.PALETTE.astype(np.int32)) ** 2).sum(-1)
    return palette.PALETTE_TRAIN_IDS[d.argmin(-1)]


# ---------------------------------------------------------------------------- labelIds / trainIds


def test_label_ids_map_through_the_table(tmp_path):
    ids = _every_id_map()
    path = _png(tmp_path / "x_gtFine_labelIds.png", ids)
    train = formats.read_label(path)
    assert train.dtype == np.uint8 and train.shape == ids.shape
    assert (train == labels.ID_TO_TRAIN_ID[ids]).all()
    row = dict(zip(ids[0].tolist(), train[0].tolist()))
    assert row[ID["road"]] == 0 and row[ID["car"]] == 13 and row[ID["bicycle"]] == 18
    assert row[ID["polegroup"]] == labels.IGNORE_INDEX and row[ID["unlabeled"]] == labels.IGNORE_INDEX
    assert (formats.read_label_ids(path) == ids).all()


def test_label_ids_in_16_bit_png_are_read(tmp_path):
    ids = _every_id_map().astype(np.uint16)
    path = _png(tmp_path / "x_gtFine_labelIds.png", ids)
    assert Image.open(path).mode == "I;16"
    assert (formats.read_label_ids(path) == ids).all()


@pytest.mark.parametrize("bad", [34, 200])
def test_label_ids_outside_the_table_name_file_and_values(tmp_path, bad):
    ids = _every_id_map()
    ids[3, 5] = bad
    path = _png(tmp_path / "x_gtFine_labelIds.png", ids)
    with pytest.raises(CitysegError, match=rf"x_gtFine_labelIds.png: values outside the label table: {bad} \(valid: 0-33\)"):
        formats.read_label(path)


def test_label_ids_must_have_one_channel(tmp_path):
    path = _png(tmp_path / "x_gtFine_labelIds.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(CitysegError, match="x_gtFine_labelIds.png: has 3 channels"):
        formats.read_label(path)


def test_train_ids_read_as_is_and_checked(tmp_path):
    train = np.array([[0, 5, labels.NUM_CLASSES - 1, labels.IGNORE_INDEX]], np.uint8)
    path = _png(tmp_path / "x_gtFine_labelTrainIds.png", train)
    assert (formats.read_label(path) == train).all()
    maps = formats.load_label(path)
    assert maps.label_ids.tolist() == [[ID["road"], ID["pole"], ID["bicycle"], 0]]
    assert maps.stats.exact == maps.stats.pixels == 4
    for bad in (labels.NUM_CLASSES, labels.IGNORE_INDEX - 1):
        path = _png(tmp_path / "y_gtFine_labelTrainIds.png", np.array([[0, bad]], np.uint8))
        with pytest.raises(CitysegError, match=f"y_gtFine_labelTrainIds.png: values outside the label table: {bad}"):
            formats.read_label(path)


def test_unknown_suffix_is_an_error(tmp_path):
    path = _png(tmp_path / "x_gtFine_instanceIds.png", np.zeros((2, 2), np.uint8))
    with pytest.raises(CitysegError, match="x_gtFine_instanceIds.png: not a label file"):
        formats.read_label(path)


def test_truncated_png_is_a_clear_error(tmp_path):
    path = _png(tmp_path / "x_gtFine_labelIds.png", np.random.default_rng(0).integers(0, 34, (64, 64), np.uint8))
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CitysegError, match="x_gtFine_labelIds.png: cannot read image"):
        formats.read_label(path)


def test_derive_label_ids_inverts_to_the_same_train_ids():
    train = np.array([list(range(labels.NUM_CLASSES)) + [labels.IGNORE_INDEX]], np.uint8)
    ids = formats.derive_label_ids(train)
    assert ids[0, 0] == ID["road"] and ids[0, 11] == ID["person"] and ids[0, -1] == 0
    assert (labels.ID_TO_TRAIN_ID[ids] == train).all()


# ---------------------------------------------------------------------------- colour masks


def test_exact_colour_masks_rgb_and_rgba(tmp_path):
    ids = _every_id_map()
    rgb = labels.ID_PALETTE[ids]
    expected = np.array([[labels.COLOR_TO_TRAIN_ID[tuple(c)] for c in row] for row in rgb.tolist()], np.uint8)
    for name, mask in (("rgb", rgb), ("rgba", np.dstack([rgb, np.full(ids.shape, 255, np.uint8)]))):
        path = _png(tmp_path / f"{name}_gtFine_color.png", mask)
        maps = formats.load_label(path)
        assert (maps.train_ids == expected).all(), name
        assert maps.stats.pixels == maps.stats.exact == ids.size and maps.stats.ignored == 0


def test_shared_colours_map_to_the_train_class():
    # pole/polegroup share a grey, car/license plate a blue; black stands for five void labels
    rgb = np.array([[labels.LABEL_BY_NAME[n].color for n in ("polegroup", "license plate", "static", "parking")]], np.uint8)
    train, ids, _ = colour.color_to_label_ids(rgb)
    assert train.tolist() == [[TRAIN["pole"], TRAIN["car"], labels.IGNORE_INDEX, labels.IGNORE_INDEX]]
    assert ids.tolist() == [[ID["pole"], ID["car"], ID["unlabeled"], ID["parking"]]]


def test_transparent_and_unexplainable_pixels_become_ignore():
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., :3] = labels.LABEL_BY_NAME["road"].color
    rgba[..., 3] = 255
    rgba[2, 2, 3] = 0  # transparent
    rgba[5, 5, :3] = (255, 255, 255)  # brighter than any palette colour: no mixture explains it
    train, stats = colour.color_to_train_ids(rgba)
    assert train[2, 2] == train[5, 5] == labels.IGNORE_INDEX
    assert (np.delete(train.reshape(-1), [2 * 8 + 2, 5 * 8 + 5]) == TRAIN["road"]).all()
    assert (stats.pixels, stats.exact, stats.recovered, stats.ignored) == (64, 62, 0, 2)


@pytest.mark.parametrize("far, accepted", [(0.45, True), (0.55, False)])
def test_a_colour_mask_must_be_mostly_label_colours(tmp_path, far, accepted):
    """Pixels far from every palette colour: up to half is a (badly) degraded mask, more is no mask."""
    rgb = labels.ID_PALETTE[np.full((20, 20), ID["road"], np.uint8)]
    rgb.reshape(-1, 3)[: int(far * 400)] = (250, 230, 20)  # a saturated yellow no palette colour is near
    rgba = np.dstack([rgb, np.full((20, 20), 255, np.uint8)])
    rgba[10:, :, 3] = 0  # transparent pixels do not count: half of what is left is far
    assert colour.palette_share(rgb) == pytest.approx(1 - int(far * 400) / 400)
    assert colour.palette_share(rgba) == pytest.approx(1 - min(int(far * 400), 200) / 200)
    path = _png(tmp_path / "x_gtFine_color.png", rgb)
    pair = _png(tmp_path / "pair.png", np.concatenate([np.zeros_like(rgb) + 90, rgb], 1))
    if accepted:
        formats.load_label(path)
        formats.load_pair(pair)
        return
    with pytest.raises(CitysegError) as info:
        formats.load_label(path)
    assert str(info.value) == (f"{path}: not a Cityscapes colour mask: 55.0% of its pixels are far from every label "
                               "colour; a colour mask has at least 50% of its pixels near one")
    with pytest.raises(CitysegError, match="pair.png: its right half is not a Cityscapes colour mask: 55.0%"):
        formats.load_pair(pair)


def test_blended_border_recovered_where_nearest_palette_picks_a_third_class():
    # car next to black, downscaled 8x with antialiasing: the border blends to ~(0, 0, 71),
    # the colour of truck. Recovery keeps car/black and matches the NEAREST-resized reference.
    ids = np.zeros((64, 256), np.uint8)
    ids[:, :100] = ID["car"]  # the border falls mid-pixel: a 50/50 blend at column 12
    ids[16:40, 176:] = ID["road"]
    rgb, reference = colour_sim.degrade_colour_mask(ids, (32, 8), "bilinear")
    assert (_nearest_palette(rgb) == TRAIN["truck"]).any()
    train, stats = colour.color_to_train_ids(rgb, source_size=(256, 64))
    valid = reference != labels.IGNORE_INDEX
    assert (train[valid] == reference[valid]).all()
    assert not (train == TRAIN["truck"]).any()
    assert stats.recovered > 0


def test_recovery_is_exact_on_nearest_resized_masks():
    ids = np.random.default_rng(1).choice(labels.VALID_LABEL_IDS, (16, 32)).astype(np.uint8)
    ids = np.kron(ids, np.ones((4, 4), np.uint8))
    score = colour_sim.measure_recovery(ids, (32, 16), "nearest")
    assert score.valid_ok == score.valid and score.boundary_ok == score.boundary > 0


# ---------------------------------------------------------------------------- scoring


def test_score_recovery_counts_valid_and_boundary_pixels_by_hand():
    ref = np.array(
        [[0, 0, 1, 1],
         [0, 0, 1, 1],
         [0, 0, 1, 1],
         [labels.IGNORE_INDEX] * 4],
        np.uint8,
    )
    pred = ref.copy()
    pred[0, 1] = 1  # a boundary pixel wrong
    pred[0, 0] = labels.IGNORE_INDEX  # ignore counts as a miss (row 0 col 0 is not boundary)
    score = colour_sim.score_recovery(pred, ref)
    # valid: 12; boundary: columns 1-2 of rows 0-2 (6) plus row 2 cols 0 and 3 (next to ignore)
    assert (score.valid, score.valid_ok) == (12, 10)
    assert (score.boundary, score.boundary_ok) == (8, 7)


def test_boundary_matches_scipy_filters():
    ndimage = pytest.importorskip("scipy.ndimage")
    ref = np.random.default_rng(2).integers(0, 4, (20, 30)).astype(np.uint8)
    ref = np.kron(ref, np.ones((2, 3), np.uint8))
    oracle = ndimage.maximum_filter(ref, 3, mode="nearest") != ndimage.minimum_filter(ref, 3, mode="nearest")
    assert (colour_sim._holds_other_label(ref) == oracle).all()


# ---------------------------------------------------------------------------- pairs


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_read_pair_splits_photo_and_mask(tmp_path, suffix):
    photo = np.random.default_rng(3).integers(0, 256, (16, 24, 3), np.uint8)
    mask = labels.ID_PALETTE[np.repeat([[ID["road"]] * 12 + [ID["sky"]] * 12], 16, 0).astype(np.uint8)]
    path = _png(tmp_path / f"p{suffix}", np.concatenate([photo, mask], 1))
    left, right = formats.read_pair(path)
    assert left.shape == right.shape == (16, 24, 3)
    if suffix == ".png":
        assert (left == photo).all() and (right == mask).all()
    _, maps = formats.load_pair(path)
    assert (maps.train_ids[:, :10] == TRAIN["road"]).all() and (maps.train_ids[:, 14:] == TRAIN["sky"]).all()


def test_read_pair_with_odd_width_names_the_file(tmp_path):
    path = _png(tmp_path / "odd.png", np.zeros((4, 7, 3), np.uint8))
    with pytest.raises(CitysegError, match="odd.png: width 7 is odd"):
        formats.read_pair(path)


# ---------------------------------------------------------------------------- real frames


def test_real_colour_masks_match_their_label_ids(fixtures_dir):
    folder = fixtures_dir / "cityscapes/gtFine/val/frankfurt"
    for stem in ("frankfurt_000000_000576", "frankfurt_000000_001236"):
        maps = formats.load_label(folder / f"{stem}_gtFine_color.png")  # RGBA, 2048x1024
        expected = formats.read_label(folder / f"{stem}_gtFine_labelIds.png")
        assert maps.train_ids.shape == (1024, 2048)
        assert (maps.train_ids == expected).all(), stem
        assert maps.stats.exact == maps.stats.pixels


def _real_label_ids(fixtures_dir: Path) -> np.ndarray:
    return formats.read_label_ids(fixtures_dir / "cityscapes/gtFine/val/frankfurt/frankfurt_000000_000576_gtFine_labelIds.png")


def test_real_frame_recovery_meets_the_lossless_target(fixtures_dir):
    ids = _real_label_ids(fixtures_dir)
    ours = colour_sim.measure_recovery(ids, (512, 256), "bilinear", None)
    baseline = colour_sim.measure_recovery(ids, (512, 256), "bilinear", None, convert=_nearest_palette)
    assert ours.valid_rate >= 0.995 and ours.boundary_rate >= 0.95, ours
    assert baseline.boundary_rate < 0.9  # the plain nearest colour misses many border pixels


def test_real_frame_recovery_beats_nearest_palette_under_jpeg(fixtures_dir):
    ids = _real_label_ids(fixtures_dir)
    ours = colour_sim.measure_recovery(ids, (256, 256), "bilinear", 75)
    baseline = colour_sim.measure_recovery(ids, (256, 256), "bilinear", 75, convert=_nearest_palette)
    assert ours.valid_rate >= 0.97
    assert ours.boundary_rate >= baseline.boundary_rate + 0.15, (ours, baseline)
