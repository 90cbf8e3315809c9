"""Dataset descriptions (cityseg.datasets) and ``cityseg stats`` (cityseg.stats): the built-ins, the
YAML format and its checks, pixel counting and the three class weightings on hand-counted data."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from cityseg import labels
from cityseg.cli import main
from cityseg.config import load_config
from cityseg.datasets import BUILTINS, DatasetSpec, check_patterns, find_files, load_dataset
from cityseg.errors import CitysegError
from cityseg.stats import SplitCounts, class_weights, count_split, read_train_ids

TOY5 = """\
name: toy5
classes:                         # train ids in this order: 0, 1, 2, ...
  - {name: ground, color: [10, 200, 30], ids: [1]}
  - {name: wall, color: [200, 20, 20], ids: [2, 3]}
void: {ids: [0], colors: [[0, 0, 0]]}
images: "{split}/images/{stem}.png"
labels: "{split}/labels/{stem}.png"   # raw ids (8-bit grey) or colours (RGB), told apart by the file
"""


# --- built-ins --------------------------------------------------------------------------------


def test_cityscapes_is_the_labels_table():
    spec = load_dataset("cityscapes")
    assert spec.num_classes == labels.NUM_CLASSES
    assert spec.class_names == labels.CLASS_NAMES
    assert (spec.palette == labels.TRAIN_PALETTE[: labels.NUM_CLASSES]).all()
    assert spec.categories == labels.CATEGORIES
    assert [spec.categories.index(c.category) for c in spec.classes] == list(labels.CLASS_CATEGORY)
    assert (spec.id_to_train_id == labels.ID_TO_TRAIN_ID).all()  # every one of the 256 ids
    for colour, train_id in spec.color_to_train_id().items():
        assert labels.COLOR_TO_TRAIN_ID[colour] == train_id
    assert set(spec.color_to_train_id()) == set(labels.COLOR_TO_TRAIN_ID)


def test_kitti_and_camvid():
    kitti, city = load_dataset("kitti"), load_dataset("cityscapes")
    assert kitti.classes == city.classes and (kitti.id_to_train_id == city.id_to_train_id).all()
    camvid = load_dataset("camvid")
    assert camvid.num_classes == 11
    assert camvid.class_names[:4] == ("Sky", "Building", "Pole", "Road")
    assert camvid.classes[10].color == (0, 128, 192) and camvid.classes[4].color == (0, 0, 192)
    assert list(camvid.id_to_train_id[:12]) == [*range(11), 255]


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_dict_round_trip(name):
    spec = load_dataset(name)
    assert DatasetSpec.from_dict(yaml.safe_load(yaml.safe_dump(spec.to_dict()))) == spec


def test_toy5_loads(tmp_path):
    path = tmp_path / "toy5.yaml"
    path.write_text(TOY5, encoding="utf-8")
    spec = load_dataset(path)
    assert spec.name == "toy5" and spec.class_names == ("ground", "wall")
    assert spec.palette.tolist() == [[10, 200, 30], [200, 20, 20]] and spec.palette.dtype == np.uint8
    assert list(spec.id_to_train_id[:5]) == [255, 0, 1, 1, 255]
    assert spec.void_ids == (0,) and spec.void_colors == ((0, 0, 0),)
    assert load_dataset(str(path)) == spec


# --- validation -------------------------------------------------------------------------------


def _edit(raw: dict, change) -> dict:
    change(raw)
    return raw


BAD = {
    "unknown top-level key": (lambda r: r.update(colour_space="rgb"), "colour_space: unknown key"),
    "unknown class key": (lambda r: r["classes"][0].update(colour=[1, 2, 3]), "classes[0].colour: unknown key"),
    "duplicate class name": (lambda r: r["classes"][1].update(name="ground"), "classes[1].name:"),
    "duplicate colour": (lambda r: r["classes"][1].update(color=[10, 200, 30]), "classes[1].color:"),
    "class colour is void's": (lambda r: r["void"].update(colors=[[200, 20, 20]]), "void.colors[0]:"),
    "duplicate id": (lambda r: r["classes"][1].update(ids=[1]), "classes[1].ids:"),
    "id of a class and void": (lambda r: r["void"].update(ids=[2]), "void.ids:"),
    "class without colour": (lambda r: r["classes"][0].pop("color"), "classes[0].color:"),
    "colour of 2 values": (lambda r: r["classes"][0].update(color=[1, 2]), "classes[0].color:"),
    "colour above 255": (lambda r: r["classes"][0].update(color=[1, 2, 256]), "classes[0].color:"),
    "colour not integers": (lambda r: r["classes"][0].update(color=["a", 2, 3]), "classes[0].color:"),
    "id above 255": (lambda r: r["classes"][0].update(ids=[300]), "classes[0].ids:"),
    "negative id": (lambda r: r["void"].update(ids=[-1]), "void.ids:"),
    "one class": (lambda r: r["classes"].pop(), "classes:"),
    "pattern without stem": (lambda r: r.update(labels="{split}/labels/x.png"), "labels:"),
    "absolute pattern": (lambda r: r.update(images="/data/{split}/{stem}.png"), "images:"),
    "pattern above the root": (lambda r: r.update(labels="../{split}/{stem}.png"), "labels:"),
    "missing pattern": (lambda r: r.pop("images"), "images:"),
    "unnamed field": (lambda r: r.update(labels="{split}/{}/{stem}.png"), "labels:"),
    "fields of images and labels differ": (lambda r: r.update(images="{split}/{seq}/{stem}.png"), "images:"),
    "no id left for a colour-only class": (
        lambda r: r["classes"][1].pop("ids") and r["void"].update(ids=[v for v in range(255) if v != 1]),
        "classes[1].ids:"),  # every id 0-254 is ground's or void's; 255 is never given
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_descriptions(tmp_path, case):
    change, expected = BAD[case]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(_edit(yaml.safe_load(TOY5), change)), encoding="utf-8")
    with pytest.raises(CitysegError) as info:
        load_dataset(path)
    message = str(info.value)
    assert message.startswith(f"{path}: {expected}"), message
    assert "\n" not in message and ";" in message  # one line: the problem; what is valid


def test_a_colour_only_class_gets_an_id_of_its_own(tmp_path):
    raw = yaml.safe_load(TOY5)
    raw["classes"] += [{"name": "sky", "color": [20, 40, 220]}, {"name": "boat", "color": [240, 200, 0]}]
    spec = DatasetSpec.from_dict(raw)
    assert [c.ids for c in spec.classes] == [(1,), (2, 3), (4,), (5,)] and spec.own_ids == (4, 5)  # lowest free
    assert spec.train_ids_to_ids(np.array([0, 1, 2, 3, 255], np.uint8)).tolist() == [1, 2, 4, 5, 0]
    assert spec.id_to_train_id[[4, 5]].tolist() == [2, 3]  # ... and they read back as the class
    saved = DatasetSpec.from_dict(yaml.safe_load(yaml.safe_dump(spec.to_dict())))
    assert saved == spec and saved.to_dict()["classes"][3]["ids"] == [5] and saved.own_ids == ()
    raw["void"] = {"colors": [[0, 0, 0]]}  # no void id: 0 is void's in the maps cityseg writes
    assert [c.ids for c in DatasetSpec.from_dict(raw).classes][2:] == [(4,), (5,)]
    del raw["classes"][0]["ids"]
    assert DatasetSpec.from_dict(raw).classes[0].ids == (1,) and DatasetSpec.from_dict(raw).own_ids == (1, 4, 5)


def test_a_grey_label_holding_an_id_given_to_a_colour_only_class_is_refused(tmp_path):
    raw = yaml.safe_load(TOY5)
    raw["classes"].append({"name": "sky", "color": [20, 40, 220]})  # gets id 4
    spec = DatasetSpec.from_dict(raw, "toy5")
    (tmp_path / "train" / "labels").mkdir(parents=True)
    path = tmp_path / "train" / "labels" / "a.png"
    Image.fromarray(np.array([[1, 2], [4, 0]], np.uint8), "L").save(path)
    with pytest.raises(CitysegError) as info:
        read_train_ids(spec, path)
    message = str(info.value)
    assert message.startswith(f"{path}: label id 4 ") and "'sky'" in message and "\n" not in message


def test_frames_are_named_by_every_field(tmp_path):
    raw = yaml.safe_load(TOY5)
    raw.update(images="{split}/{seq}/images/{stem}.png", labels="{split}/{seq}/labels/{stem}.png")
    spec = DatasetSpec.from_dict(raw)
    for seq in ("a", "b_c", "b"):
        for sub in ("images", "labels"):
            (tmp_path / "train" / seq / sub).mkdir(parents=True)
            Image.fromarray(np.zeros((2, 2), np.uint8)).save(tmp_path / "train" / seq / sub / "f0.png")
    assert find_files(spec, tmp_path, "train") == {
        f"{seq}_f0": tmp_path / "train" / seq / "labels" / "f0.png" for seq in ("a", "b", "b_c")}
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(tmp_path / "train" / "b" / "labels" / "c_f0.png")
    with pytest.raises(CitysegError) as info:  # b/c_f0 and b_c/f0 would both be b_c_f0
        find_files(spec, tmp_path, "train")
    assert "frame 'b_c_f0'" in str(info.value) and "\n" not in str(info.value)


def test_bad_files(tmp_path):
    with pytest.raises(CitysegError, match="not a built-in dataset"):
        load_dataset(tmp_path / "nothing.yaml")
    (tmp_path / "a.yaml").write_text("classes: [", encoding="utf-8")
    with pytest.raises(CitysegError, match="not valid YAML"):
        load_dataset(tmp_path / "a.yaml")
    (tmp_path / "b.yaml").write_bytes(b"name: \xff\xfe")
    with pytest.raises(CitysegError, match="not UTF-8"):
        load_dataset(tmp_path / "b.yaml")


def test_check_patterns_names_the_glob(tmp_path):
    spec = load_dataset("camvid")
    with pytest.raises(CitysegError) as info:
        check_patterns(spec, tmp_path, "train")
    assert str(info.value).startswith("images: ") and str(tmp_path / "train" / "*.png") in str(info.value)


# --- a tiny 5-class dataset, counted by hand ----------------------------------------------------

COLOURS = [(10, 200, 30), (200, 20, 20), (20, 20, 200), (200, 200, 20), (20, 200, 200)]
TOY = {
    "name": "toy",
    "classes": [{"name": f"c{i}", "color": list(c), "ids": ids}
                for i, (c, ids) in enumerate(zip(COLOURS, [[1], [2], [3, 4], [5], [6]]))],
    "void": {"ids": [0], "colors": [[0, 0, 0]]},
    "images": "{split}/images/{stem}.png",
    "labels": "{split}/labels/{stem}.png",
}


@pytest.fixture
def toy(tmp_path) -> tuple[Path, Path]:
    """tmp_path/data: frame a (grey ids) and frame b (colours), 16 pixels each; the description file."""
    root = tmp_path / "data"
    for sub in ("images", "labels"):
        (root / "train" / sub).mkdir(parents=True)
    # a: ids 1 x8, 2 x4, 3, 4 (class 2), 0 (void), 9 (no one's) -> c0 8, c1 4, c2 2; 2 ignored
    a = np.array([1] * 8 + [2] * 4 + [3, 4, 0, 9], dtype=np.uint8).reshape(4, 4)
    Image.fromarray(a, "L").save(root / "train" / "labels" / "a.png")
    # b: c0 x2, c3 x6, c4 x4, void black x2, an unknown colour x2 -> c0 2, c3 6, c4 4; 4 ignored
    b = [COLOURS[0]] * 2 + [COLOURS[3]] * 6 + [COLOURS[4]] * 4 + [(0, 0, 0)] * 2 + [(1, 2, 3)] * 2
    Image.fromarray(np.array(b, dtype=np.uint8).reshape(4, 4, 3), "RGB").save(root / "train" / "labels" / "b.png")
    for stem in "ab":
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(root / "train" / "images" / f"{stem}.png")
    desc = tmp_path / "toy.yaml"
    desc.write_text(yaml.safe_dump(TOY), encoding="utf-8")
    return root, desc


PIXELS = [10, 4, 2, 6, 4]  # 26 labelled pixels, 6 ignored
INVERSE = [26 / (5 * n) for n in PIXELS]
# f_c = pixels of c / labelled pixels of the frames holding c (a: 14, b: 12); median f = 4/12
FREQ = [10 / 26, 4 / 14, 2 / 14, 6 / 12, 4 / 12]
MEDIAN = [(4 / 12) / f for f in FREQ]
ENET = [1 / math.log(1.02 + n / 26) for n in PIXELS]


def test_reading_and_counting(toy):
    root, desc = toy
    spec = load_dataset(desc)
    assert list(find_files(spec, root, "train")) == ["a", "b"]
    assert read_train_ids(spec, root / "train" / "labels" / "a.png").ravel().tolist() == \
        [0] * 8 + [1] * 4 + [2, 2, 255, 255]
    counts = count_split(spec, root, "train", progress=False)
    assert counts.frames == 2 and counts.pixels.tolist() == PIXELS and counts.ignored == 6
    assert counts.frame_pixels.tolist() == [26, 14, 14, 12, 12]
    weights = class_weights(counts)
    assert weights["inverse"] == pytest.approx(INVERSE, rel=1e-12)
    assert weights["median"] == pytest.approx(MEDIAN, rel=1e-12)
    assert weights["median"].tolist()[4] == 1.0 and weights["median"][0] == pytest.approx(26 / 30)
    assert weights["enet"] == pytest.approx(ENET, rel=1e-12)


def test_absent_class_weighs_zero():
    counts = SplitCounts("train", 3)
    counts.add(np.array([[0, 0, 1, 255]], np.uint8))
    w = class_weights(counts)
    assert w["inverse"].tolist() == [0.5, 1.0, 0.0] and w["median"][2] == 0 and w["enet"][2] == pytest.approx(1 / math.log(1.02))


@pytest.mark.parametrize("method, expected", [("median", MEDIAN), ("inverse", INVERSE), ("enet", ENET)])
def test_stats_command_on_toy(toy, tmp_path, capsys, method, expected):
    root, desc = toy
    out = tmp_path / "out"
    assert main(["stats", "--data", str(root), "--dataset", str(desc), "--method", method, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "c3" in printed and "ignored" in printed
    snippet = yaml.safe_load((out / "class_weights.yaml").read_text(encoding="utf-8"))
    weights = snippet["loss"]["class_weights"]
    assert weights == pytest.approx(expected, rel=1e-5)
    text = "[" + ", ".join(str(w) for w in weights) + "]"
    cfg = load_config(None, [f"loss.class_weights={text}"])
    assert cfg.loss.class_weights == pytest.approx(expected, rel=1e-5)
    stats = yaml.safe_load((out / "stats.yaml").read_text(encoding="utf-8"))
    assert stats["splits"]["train"]["pixels"] == {f"c{i}": n for i, n in enumerate(PIXELS)}
    assert DatasetSpec.from_dict(stats["dataset"]) == load_dataset(desc)
    assert Image.open(out / "class_frequencies.png").size[0] > 100


def test_stats_limit_spreads(toy):
    root, desc = toy
    counts = count_split(load_dataset(desc), root, "train", limit=1, progress=False)
    assert counts.frames == 1 and counts.labelled == 14  # the first frame of an evenly spread 1


def test_stats_command_errors(toy, tmp_path, capsys):
    root, desc = toy
    assert main(["stats", "--data", str(root), "--dataset", str(desc), "--split", "val", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "matches no file of split 'val'" in err and str(root / "val" / "images" / "*.png") in err
    assert not (tmp_path / "o").exists()
    (tmp_path / "file").write_text("x")
    assert main(["stats", "--data", str(root), "--dataset", str(desc), "--out", str(tmp_path / "file")]) == 2
    assert "--out" in capsys.readouterr().err
    assert main(["stats", "--data", str(root), "--dataset", "nope", "--out", str(tmp_path / "o")]) == 2
    assert main(["stats", "--data", str(tmp_path / "absent"), "--dataset", str(desc), "--out", str(tmp_path / "o")]) == 2
    assert main(["stats", "--data", str(root), "--dataset", str(desc), "--limit", "0", "--out", str(tmp_path / "o")]) == 2


# --- Cityscapes layout ------------------------------------------------------------------------


def test_stats_on_cityscapes_layout(synth_root, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["stats", "--data", str(synth_root), "--split", "train", "val", "--out", str(out)]) == 0
    stats = yaml.safe_load((out / "stats.yaml").read_text(encoding="utf-8"))
    for split, frames in (("train", 8), ("val", 4)):
        s = stats["splits"][split]
        assert s["frames"] == frames
        assert s["labelled_pixels"] + s["ignored_pixels"] == frames * 64 * 32
        assert sum(s["pixels"].values()) == s["labelled_pixels"]
    weights = yaml.safe_load((out / "class_weights.yaml").read_text(encoding="utf-8"))["loss"]["class_weights"]
    assert len(weights) == labels.NUM_CLASSES and all(w >= 0 for w in weights)
    assert load_config(None, [f"loss.class_weights={weights}"]).loss.class_weights == weights
    assert "road" in capsys.readouterr().out


def test_kitti_frames(fixtures_dir, tmp_path):
    """The KITTI description reads real KITTI semantic maps (Cityscapes label ids) as the Cityscapes reader does."""
    spec = load_dataset("kitti")  # --data is data_semantics.zip's training/ folder, as the fixture is
    counts = count_split(spec, fixtures_dir / "kitti", "train", progress=False)
    assert counts.frames == 5
    ids = np.asarray(Image.open(fixtures_dir / "kitti" / "semantic" / "000000_10.png"))
    assert (read_train_ids(spec, fixtures_dir / "kitti" / "semantic" / "000000_10.png")
            == labels.label_ids_to_train_ids(ids)).all()


def test_the_id_table_is_the_descriptions_own():
    from cityseg import labels
    from cityseg.metrics import CITYSCAPES, table_for

    city = load_dataset("cityscapes").id_table
    assert city.official and city.eval_ids == tuple(lb.id for lb in labels.TRAIN_LABELS)
    assert (city.num_ids, city.void_id, city.max_label_id) == (labels.MAX_LABEL_ID + 1, 0, labels.MAX_LABEL_ID)
    # the same table under another name, or read back from a checkpoint's mapping, is the official one
    assert load_dataset("kitti").id_table == city
    assert DatasetSpec.from_dict({**load_dataset("cityscapes").to_dict(), "name": "mine"}).id_table == city
    assert table_for(load_dataset("kitti")) is CITYSCAPES and CITYSCAPES.instance_classes
    toy = DatasetSpec.from_dict({"name": "toy", "classes": [{"name": "a", "color": [1, 2, 3], "ids": [7]},
                                                           {"name": "b", "color": [4, 5, 6], "ids": [9]}],
                                 "void": {"ids": [0]}, "images": "{split}/i/{stem}.png", "labels": "{split}/l/{stem}.png"})
    own = toy.id_table
    assert not own.official and (own.eval_ids, own.num_ids, own.void_id, own.max_label_id) == ((0, 1), 3, 2, None)
    table = table_for(toy)
    assert table.instance_classes == () and list(table.eval_ids) == [0, 1] and table.names == ("a", "b")
