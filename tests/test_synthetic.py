"""The synthetic Cityscapes: layout, label consistency, determinism, CLI and concurrent first use."""

from __future__ import annotations

import json
import multiprocessing
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cityseg import cli
from cityseg.config import DataConfig
from cityseg.data import synthetic
from cityseg.data.synthetic import (
    MARKER,
    ClassStats,
    default_data_dir,
    ensure_data,
    ensure_default_data,
    frame_paths,
    generate,
    read_marker,
    render_frame,
)
from cityseg.data.synthetic_canvas import Camera, quad_y
from cityseg.errors import CitysegError
from cityseg.labels import ID_PALETTE, ID_TO_TRAIN_ID, LABEL_BY_ID, LABEL_BY_NAME, NUM_CLASSES, VALID_LABEL_IDS

SIZE = (64, 32)  # small frames keep every test fast; the class-coverage test uses the demo's size


def read(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img)


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.png"))}


@pytest.fixture(scope="module")
def small_tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "data"
    generate(root, train=4, val=2, size=SIZE, seed=3, workers=1, progress=False)
    return root


# ----------------------------------------------------------------------------- layout


def test_official_layout_and_names(small_tree):
    images = sorted((small_tree / "leftImg8bit").rglob("*.png"))
    assert len(images) == 6
    assert len(list((small_tree / "leftImg8bit" / "train").rglob("*.png"))) == 4
    name = re.compile(r"^(?P<city>[a-z]+)_(?P<seq>\d{6})_(?P<frame>\d{6})_leftImg8bit\.png$")
    for image in images:
        m = name.match(image.name)
        assert m, image.name
        split = image.parent.parent.name
        assert image.parent.name == m["city"] and split in ("train", "val")
        stem = image.name[: -len("_leftImg8bit.png")]
        gt = small_tree / "gtFine" / split / m["city"]
        for suffix in ("labelIds", "color", "instanceIds"):
            assert (gt / f"{stem}_gtFine_{suffix}.png").is_file()
    # nothing but the four kinds of files (no temporary files left by the atomic writes)
    assert len(list(small_tree.rglob("*.png"))) == 6 * 4
    assert not [p for p in small_tree.rglob("*") if p.name.startswith(".") and p.name != MARKER]


def test_frame_paths_spread_over_cities():
    a, b = frame_paths(Path("r"), "train", 0), frame_paths(Path("r"), "train", 1)
    assert a["image"].parent != b["image"].parent  # consecutive frames go to different cities
    assert a["image"] == Path("r/leftImg8bit/train/synthburg/synthburg_000000_000019_leftImg8bit.png")
    assert a["instanceIds"] == Path("r/gtFine/train/synthburg/synthburg_000000_000019_gtFine_instanceIds.png")


def test_file_formats_and_sizes(small_tree):
    paths = frame_paths(small_tree, "val", 1)
    modes = {}
    for key, path in paths.items():
        with Image.open(path) as img:
            assert img.size == SIZE, key
            modes[key] = img.mode
    assert modes == {"image": "RGB", "labelIds": "L", "color": "RGB", "instanceIds": "I;16"}


def test_marker_written_with_parameters(small_tree):
    assert read_marker(small_tree) == {"format": "cityseg-synthetic", "generator_version": synthetic.GENERATOR_VERSION,
                                       "train": 4, "val": 2, "size": list(SIZE), "seed": 3}


def test_instance_png_like_the_official_ones(fixtures_dir, small_tree):
    official = next((fixtures_dir / "cityscapes" / "gtFine" / "train").rglob("*_gtFine_instanceIds.png"))
    with Image.open(official) as a, Image.open(frame_paths(small_tree, "train", 0)["instanceIds"]) as b:
        assert (a.mode, a.format) == (b.mode, b.format)


# ----------------------------------------------------------------------------- label consistency


@pytest.mark.parametrize("split,index", [("train", 0), ("train", 3), ("val", 0)])
def test_color_mask_is_palette_of_label_ids(small_tree, split, index):
    paths = frame_paths(small_tree, split, index)
    np.testing.assert_array_equal(read(paths["color"]), ID_PALETTE[read(paths["labelIds"])])


@pytest.mark.parametrize("split,index", [("train", 1), ("train", 2), ("val", 1)])
def test_instance_ids_agree_with_label_ids(small_tree, split, index):
    paths = frame_paths(small_tree, split, index)
    label_ids = read(paths["labelIds"]).astype(np.int64)
    inst = read(paths["instanceIds"]).astype(np.int64)
    assert set(np.unique(label_ids)) <= set(VALID_LABEL_IDS)
    is_instance = inst >= 1000
    np.testing.assert_array_equal(inst[is_instance] // 1000, label_ids[is_instance])
    np.testing.assert_array_equal(inst[~is_instance], label_ids[~is_instance])
    # instance ids only on classes with instances, and every pixel of those classes is one
    has_inst = np.array([LABEL_BY_ID[i].has_instances if i in LABEL_BY_ID else False for i in range(256)])
    assert has_inst[label_ids[is_instance]].all()
    assert is_instance[has_inst[label_ids]].all()


def test_instances_are_numbered_per_class_from_zero():
    _, label_ids, inst = render_frame(0, "train", 5, (256, 128))
    car = LABEL_BY_NAME["car"].id
    ks = np.unique(inst[label_ids == car]) - car * 1000
    assert ks.min() >= 0 and len(ks) >= 2  # several cars, each its own instance value
    assert ks.max() < 1000


def test_every_train_class_appears_in_a_few_frames():
    seen = np.zeros(NUM_CLASSES, dtype=bool)
    for i in range(12):
        _, label_ids, _ = render_frame(0, "train", i, (256, 128))
        train_ids = ID_TO_TRAIN_ID[label_ids]
        seen[train_ids[train_ids < NUM_CLASSES]] = True
    assert seen.all(), f"missing train ids: {np.flatnonzero(~seen).tolist()}"


def test_void_labels_drawn_too():
    ids = set()
    for i in range(24):
        ids |= set(np.unique(render_frame(0, "train", i, (128, 64))[1]).tolist())
    void = {LABEL_BY_NAME[n].id for n in ("ego vehicle", "static", "dynamic", "ground", "parking", "rail track")}
    assert void <= ids


def test_projection_converges_to_the_vanishing_point():
    cam = Camera(width=256, height=128, f=200.0, cx=120.0, horizon=50.0, cam_h=1.5)
    corners = np.array(quad_y(cam, 0.0, -4.0, 4.0, 5.0, 50.0)).reshape(4, 2)  # a road strip from 5 m to 50 m
    near, far = corners[[0, 1]], corners[[3, 2]]
    assert near[1, 0] - near[0, 0] == pytest.approx(10 * (far[1, 0] - far[0, 0]))  # 10x farther, 10x narrower
    assert near[0, 1] == pytest.approx(50.0 + 200.0 * 1.5 / 5.0)  # the road at 5 m lies 60 px below the horizon
    edge = np.array([cam.pt(4.0, 0.0, z) for z in (1e3, 1e6)])
    np.testing.assert_allclose(edge[-1], (120.0, 50.0), atol=0.01)  # parallel lines meet at (cx, horizon)
    a, b = cam.pt(2.0, 1.0, 10.0), cam.pt(2.0, 2.0, 10.0)
    assert a[1] - b[1] == pytest.approx(cam.scale(10.0))  # a metre at 10 m is f / 10 pixels


def test_sky_above_and_road_below_the_horizon():
    road, sky = LABEL_BY_NAME["road"].id, LABEL_BY_NAME["sky"].id
    for i in range(8):
        label_ids = render_frame(2, "train", i, (256, 128))[1]
        assert not (label_ids[:40] == road).any()  # the horizon is at 36-47% of the height
        assert not (label_ids[61:] == sky).any()


@pytest.mark.parametrize("size", [(32, 16), (100, 37), (512, 256)])
def test_any_size(size):
    image, label_ids, inst = render_frame(0, "train", 0, size)
    assert image.shape == (size[1], size[0], 3) and image.dtype == np.uint8
    assert label_ids.shape == inst.shape == (size[1], size[0])


# ----------------------------------------------------------------------------- determinism


def test_same_seed_same_arrays_other_seed_other_scene():
    a, b, c = render_frame(7, "train", 2, SIZE), render_frame(7, "train", 2, SIZE), render_frame(8, "train", 2, SIZE)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[1], c[1])
    assert not np.array_equal(a[0], render_frame(7, "train", 3, SIZE)[0])  # frames of one seed differ
    assert not np.array_equal(a[0], render_frame(7, "val", 2, SIZE)[0])  # and splits


def test_same_files_in_parallel_and_serial(tmp_path, small_tree):
    generate(tmp_path / "par", train=4, val=2, size=SIZE, seed=3, workers=2, progress=False)
    assert tree_bytes(tmp_path / "par") == tree_bytes(small_tree)
    generate(tmp_path / "other", train=4, val=2, size=SIZE, seed=4, workers=1, progress=False)
    other = tree_bytes(tmp_path / "other")
    assert other.keys() == tree_bytes(small_tree).keys()
    assert all(other[k] != v for k, v in tree_bytes(small_tree).items() if "leftImg8bit" in k)


# ----------------------------------------------------------------------------- statistics


def test_class_stats_shares():
    stats = ClassStats()
    road, car, unlabeled = (LABEL_BY_NAME[n].id for n in ("road", "car", "unlabeled"))
    frame1 = np.zeros_like(stats.pixels)
    frame1[[road, car, unlabeled]] = [30, 10, 10]
    frame2 = np.zeros_like(stats.pixels)
    frame2[road] = 50
    stats.add_counts(frame1)
    stats.add_counts(frame2)
    share, frames = stats.train_pixel_share(), stats.train_frame_share()
    road_t, car_t = ID_TO_TRAIN_ID[road], ID_TO_TRAIN_ID[car]
    assert share[road_t] == pytest.approx(0.8) and share[car_t] == pytest.approx(0.1)
    assert share.sum() == pytest.approx(0.9)  # the rest is void
    assert frames[road_t] == 1.0 and frames[car_t] == 0.5
    assert "car" in stats.table() and "(void)" in stats.table()


def test_folder_stats_match_generation(tmp_path):
    stats = generate(tmp_path, train=2, val=1, size=SIZE, seed=0, workers=1, progress=False)
    again = synthetic.folder_stats(tmp_path)
    np.testing.assert_array_equal(stats.pixels, again.pixels)
    assert again.frames == 3 and stats.pixels.sum() == 3 * SIZE[0] * SIZE[1]


# ----------------------------------------------------------------------------- CLI


def test_cli_writes_and_summarises(tmp_path, capsys):
    out = tmp_path / "synth"
    args = ["synth", str(out), "--train", "2", "--val", "1", "--size", "64x32", "--seed", "5", "--workers", "1"]
    assert cli.main(args) == 0
    text = capsys.readouterr().out
    assert "written: 2 train + 1 val frames, 64x32, seed 5" in text and str(out) in text and "road" in text
    assert len(list((out / "gtFine").rglob("*_labelIds.png"))) == 3
    assert cli.main(args) == 0  # a second run finds the folder complete
    assert "up to date" in capsys.readouterr().out


@pytest.mark.parametrize("extra,message", [
    (["--size", "64by32"], "--size"),
    (["--size", "8x4"], "out of range"),
    (["--train", "0", "--val", "0"], "--train"),
    (["--seed", "-1"], "--seed"),
])
def test_cli_bad_input_exits_2(tmp_path, capsys, extra, message):
    assert cli.main(["synth", str(tmp_path / "x"), "--train", "1", "--val", "1", *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_cli_refuses_a_foreign_folder(tmp_path, capsys):
    (tmp_path / "real.txt").write_text("not ours")
    args = ["synth", str(tmp_path), "--train", "1", "--val", "1", "--size", "64x32"]
    assert cli.main(args) == 2
    assert "no synthetic data" in capsys.readouterr().err
    assert (tmp_path / "real.txt").exists()


def test_cli_default_out_is_the_default_data_dir(capsys):
    # conftest points CITYSEG_DATA_HOME at a temporary folder
    assert cli.main(["synth", "--train", "1", "--val", "1", "--size", "64x32", "--workers", "1"]) == 0
    assert str(default_data_dir().resolve()) in capsys.readouterr().out
    assert read_marker(default_data_dir())["train"] == 1


def test_cli_defaults_are_the_demo_config():
    from cityseg.commands import synth

    cfg = DataConfig()
    defaults = (synth.DEFAULT_TRAIN, synth.DEFAULT_VAL, synth.DEFAULT_SIZE)
    assert defaults == (cfg.synth_train, cfg.synth_val, str(cfg.synth_size))


# ----------------------------------------------------------------------------- ensure_data


def test_default_data_dir_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("CITYSEG_DATA_HOME", str(tmp_path))
    assert default_data_dir() == tmp_path / "synthetic"
    monkeypatch.delenv("CITYSEG_DATA_HOME")
    assert default_data_dir() == Path.home() / ".cache" / "cityseg" / "synthetic"


def test_new_parameters_give_a_fresh_folder(tmp_path):
    out = tmp_path / "d"
    assert ensure_data(out, 2, 1, SIZE, 0, workers=1, progress=False) is not None
    assert ensure_data(out, 2, 1, SIZE, 0, workers=1, progress=False) is None  # up to date: nothing drawn
    assert ensure_data(out, 1, 1, SIZE, 0, workers=1, progress=False) is not None
    assert len(list((out / "leftImg8bit" / "train").rglob("*.png"))) == 1  # frame 1 of the old run is gone
    assert read_marker(out)["train"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [".d.lock", "d"]  # no temporary folders left


def test_interrupted_generation_leaves_nothing_that_looks_done(tmp_path, monkeypatch):
    out = tmp_path / "d"
    real = synthetic.write_frame

    def failing(root, split, index, size, seed):
        if index == 1:
            raise KeyboardInterrupt
        return real(root, split, index, size, seed)

    monkeypatch.setattr(synthetic, "write_frame", failing)
    with pytest.raises(KeyboardInterrupt):
        ensure_data(out, 3, 1, SIZE, 0, workers=1, progress=False)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == [".d.lock"]
    monkeypatch.setattr(synthetic, "write_frame", real)
    ensure_data(out, 3, 1, SIZE, 0, workers=1, progress=False)
    assert read_marker(out)["train"] == 3


def test_foreign_folder_is_not_replaced(tmp_path):
    (tmp_path / "leftImg8bit").mkdir()
    with pytest.raises(CitysegError, match="no synthetic data"):
        ensure_data(tmp_path, 1, 1, SIZE, 0, workers=1, progress=False)
    assert (tmp_path / "leftImg8bit").is_dir()


def _ensure_in_child(barrier, counter: str) -> str:
    barrier.wait()  # both processes start together
    return str(ensure_default_data(2, 1, SIZE, 0, workers=1, progress=False))


def test_concurrent_first_use_generates_once(tmp_path, monkeypatch):
    calls = tmp_path / "calls"
    real = synthetic.generate

    def counting(*args, **kwargs):
        with open(calls, "a") as fh:
            fh.write("x")
        return real(*args, **kwargs)

    # forked children inherit the patched module, so each generation is counted in `calls`
    monkeypatch.setattr(synthetic, "generate", counting)
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Manager().Barrier(2)
    with ctx.Pool(2) as pool:
        roots = pool.starmap(_ensure_in_child, [(barrier, str(calls))] * 2)
    assert roots[0] == roots[1] == str(default_data_dir())
    assert calls.read_text() == "x"  # one process drew, the other waited and found it done
    root = Path(roots[0])
    assert json.loads((root / MARKER).read_text())["train"] == 2
    assert len(list(root.rglob("*.png"))) == 3 * 4
