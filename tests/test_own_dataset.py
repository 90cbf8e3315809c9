"""A dataset that is not Cityscapes, from its description file through every command.

toy5 has its own five classes, colours and raw ids (none of them Cityscapes'), grey id labels in
one split layout; prepare, train (1 epoch), evaluate, predict and export must all follow its table.
The real KITTI frames are read through the built-in ``kitti`` description.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from cityseg.cli import main

TOY5 = {
    "name": "toy5",
    "classes": [
        {"name": "ground", "color": [10, 200, 30], "ids": [1], "category": "flat"},
        {"name": "wall", "color": [200, 20, 20], "ids": [2, 3], "category": "solid"},
        {"name": "sky", "color": [20, 40, 220], "ids": [4]},
        {"name": "person", "color": [240, 200, 0], "ids": [5], "category": "solid"},
        {"name": "car", "color": [120, 0, 160], "ids": [9]},
    ],
    "void": {"ids": [0], "colors": [[0, 0, 0]]},
    "images": "{split}/images/{stem}.png",
    "labels": "{split}/labels/{stem}.png",
}
PALETTE = np.array([c["color"] for c in TOY5["classes"]], np.uint8)
SIZE = (64, 48)  # width, height

TRAIN = [
    "model.name=cityseg_tiny", "model.freeze=[]", "data.crop_size=64x48", "data.scale_range=[1.0,1.0]",
    "data.workers=0", "data.val_size=null", "train.batch_size=2", "train.val_batch_size=2", "train.epochs=1",
    "train.panels=2", "sched.name=constant", "sched.warmup_iters=0", "train.amp=none", "train.compile=false",
]


def _frame(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A photo whose colour says the class (so a tiny model can learn it) and its raw-id label."""
    w, h = SIZE
    ids = np.full((h, w), 4, np.uint8)  # sky
    ids[h // 2 :] = 1  # ground
    x = int(rng.integers(0, w - 20))
    ids[8 : h // 2 + 6, x : x + 16] = rng.choice([2, 3])  # wall (either of its ids)
    ids[h // 2 - 6 : h - 4, (x + 30) % (w - 8) : (x + 30) % (w - 8) + 6] = 5  # person
    ids[h - 12 : h - 2, 2:18] = 9  # car
    ids[0:3, 0:5] = 0  # void
    lut = np.zeros((256, 3), np.uint8)
    for c in TOY5["classes"]:
        lut[c["ids"]] = c["color"]
    photo = np.clip(lut[ids].astype(int) + rng.integers(-20, 20, (h, w, 3)), 0, 255).astype(np.uint8)
    return photo, ids


@pytest.fixture(scope="module")
def toy_source(tmp_path_factory) -> tuple[Path, Path]:
    """(SRC folder in toy5's layout, its description file)."""
    root = tmp_path_factory.mktemp("toy5")
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("val", 3)):
        for i in range(n):
            photo, ids = _frame(rng)
            for sub, array in (("images", photo), ("labels", ids)):
                (root / "src" / split / sub).mkdir(parents=True, exist_ok=True)
                Image.fromarray(array).save(root / "src" / split / sub / f"f{i}.png")
    desc = root / "toy5.yaml"
    desc.write_text(yaml.safe_dump(TOY5, sort_keys=False))
    return root / "src", desc


@pytest.fixture(scope="module")
def toy_run(toy_source, tmp_path_factory) -> dict[str, Path]:
    src, desc = toy_source
    root = tmp_path_factory.mktemp("toy5run")
    prepared, run = root / "prepared", root / "run"
    assert main(["prepare", str(src), str(prepared), "--dataset", str(desc), "--workers", "1", "-q"]) == 0
    sets = [item for s in TRAIN for item in ("--set", s)]
    assert main(["train", "--data", str(prepared), "--out", str(run), "--device", "cpu", "-q", *sets]) == 0
    return {"src": src, "desc": desc, "prepared": prepared, "run": run, "ckpt": run / "checkpoints" / "best.pt"}


def test_prepare_maps_the_tables_ids_and_keeps_the_description(toy_run):
    prepared = toy_run["prepared"]
    saved = yaml.safe_load((prepared / "dataset.yaml").read_text())
    assert saved["name"] == "toy5" and [c["name"] for c in saved["classes"]] == [c["name"] for c in TOY5["classes"]]
    train_ids = sorted(prepared.glob("gtFine/train/toy5/*_gtFine_labelTrainIds.png"))
    assert len(train_ids) == 6 and len(list(prepared.glob("gtFine/val/toy5/*_gtFine_labelTrainIds.png"))) == 3
    src_ids = np.asarray(Image.open(toy_run["src"] / "train" / "labels" / "f0.png"))
    got = np.asarray(Image.open(prepared / "gtFine" / "train" / "toy5" / "f0_gtFine_labelTrainIds.png"))
    expected = np.full(256, 255, np.uint8)
    expected[[1, 2, 3, 4, 5, 9]] = [0, 1, 1, 2, 3, 4]  # ids 2 and 3 are both wall; 0 is void
    assert (got == expected[src_ids]).all()


def test_training_follows_the_description(toy_run):
    import torch

    ckpt = torch.load(toy_run["ckpt"], weights_only=True)
    assert ckpt["dataset"]["name"] == "toy5" and ckpt["config"]["dataset"]["name"] == "toy5"
    heads = [v for k, v in ckpt["model"].items() if k.endswith("weight") and v.dim() == 4]
    assert heads[-1].shape[0] == 5  # the model predicts the five classes
    assert "toy5" in (toy_run["run"] / "config.yaml").read_text()
    record = json.loads((toy_run["run"] / "metrics.jsonl").read_text().splitlines()[-1])
    assert set(record["iou"]) == {c["name"] for c in TOY5["classes"]}


def test_evaluate_scores_the_datasets_classes(toy_run, tmp_path):
    out = tmp_path / "scores.json"
    assert main(["evaluate", "--checkpoint", str(toy_run["ckpt"]), "--data", str(toy_run["prepared"]),
                 "--json", str(out), "--plots", str(tmp_path / "plots"), "-q"]) == 0
    scores = json.loads(out.read_text())
    assert list(scores["classes"]) == [c["name"] for c in TOY5["classes"]]
    assert list(scores["categories"]) == ["flat", "solid"]  # named by the description
    assert "iiou" not in scores and "iiou" not in scores["classes"]["car"]  # no instances: no iIoU
    assert scores["confusion_matrix"]["rows"] == [c["name"] for c in TOY5["classes"]]
    counts = np.array(scores["confusion_matrix"]["counts"])
    assert counts.shape == (5, 6) and counts.sum() == 3 * (SIZE[0] * SIZE[1] - 15)  # every non-void val pixel
    tp = np.diag(counts[:, :5])
    iou = tp / (counts.sum(1) + counts[:, :5].sum(0) - tp)
    assert np.allclose([scores["classes"][c["name"]]["iou"] for c in TOY5["classes"]], iou, equal_nan=True)
    assert (tmp_path / "plots" / "confusion.png").is_file() and (tmp_path / "plots" / "iou.png").is_file()


def test_predict_writes_the_datasets_palette_and_ids(toy_run, tmp_path):
    image = toy_run["src"] / "val" / "images" / "f0.png"
    out = tmp_path / "pred"
    assert main(["predict", "--checkpoint", str(toy_run["ckpt"]), str(image), "--out", str(out), "-q",
                 "--runtime", "torch", "--precision", "fp32"]) == 0
    train_ids = np.asarray(Image.open(out / "trainIds" / "f0.png"))
    colour = np.asarray(Image.open(out / "color" / "f0.png"))
    raw = np.asarray(Image.open(out / "labelIds" / "f0.png"))
    assert train_ids.max() < 5
    assert (colour == PALETTE[train_ids]).all()
    assert (raw == np.array([1, 2, 4, 5, 9], np.uint8)[train_ids]).all()  # each class's first id


def test_export_carries_the_description_and_predict_onnx_uses_it(toy_run, tmp_path):
    pytest.importorskip("onnxruntime")
    from cityseg.inference.onnx import read_metadata

    model = tmp_path / "toy5.onnx"
    assert main(["export", "--checkpoint", str(toy_run["ckpt"]), "--onnx", str(model), "--exporter", "torchscript",
                 "-q"]) == 0
    meta = read_metadata(model)
    assert meta["cityseg.dataset"]["name"] == "toy5"
    assert meta["cityseg.classes"] == [c["name"] for c in TOY5["classes"]]
    assert meta["cityseg.palette"] == PALETTE.tolist()
    image = toy_run["src"] / "val" / "images" / "f1.png"
    assert main(["predict", "--onnx", str(model), str(image), "--out", str(tmp_path / "o"), "-q"]) == 0
    train_ids = np.asarray(Image.open(tmp_path / "o" / "trainIds" / "f1.png"))
    assert (np.asarray(Image.open(tmp_path / "o" / "color" / "f1.png")) == PALETTE[train_ids]).all()


def test_a_checkpoint_refuses_a_dataset_of_other_classes(toy_run, tmp_path, capsys):
    image = toy_run["src"] / "val" / "images" / "f0.png"
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(toy_run["ckpt"]), "--dataset", "camvid", str(image),
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "5 classes of toy5" in err and "11 of dataset camvid" in err


def test_prepared_folder_of_another_dataset_is_not_mistaken(toy_run, tmp_path, capsys):
    """Training the prepared toy5 folder with --dataset camvid: one line naming both tables."""
    capsys.readouterr()
    code = main(["train", "--data", str(toy_run["prepared"]), "--dataset", "camvid", "--out", str(tmp_path / "r"),
                 "--set", "model.name=cityseg_tiny", "--set", "model.freeze=[]"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "prepared for dataset 'toy5' (5 classes)" in err and "'camvid' (11 classes)" in err


def test_kitti_frames_through_the_kitti_description(fixtures_dir, tmp_path, capsys):
    """The real KITTI frames: photos 1224x370, labels 1242x375. One line naming the frame."""
    kitti = fixtures_dir / "kitti"
    if not kitti.is_dir():
        pytest.skip("no KITTI fixtures")
    capsys.readouterr()
    assert main(["prepare", str(kitti), str(tmp_path / "k"), "--dataset", "kitti", "--workers", "1", "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "image_2/0000" in err
    assert "is 1224x370 but its label" in err and "is 1242x375" in err


def test_colour_labels_of_the_description_are_recovered_along_blended_borders(toy_source, tmp_path):
    """toy5 labels as RGB colour masks, squashed with bilinear resampling and saved as JPEG (the
    pairs copy's damage): prepare recovers the classes from toy5's own palette."""
    src, desc = toy_source
    spec = yaml.safe_load(desc.read_text())
    spec["labels"] = "{split}/colour/{stem}.jpg"
    (tmp_path / "toy5c.yaml").write_text(yaml.safe_dump(spec))
    lut = np.zeros((256, 3), np.uint8)
    for c in TOY5["classes"]:
        lut[c["ids"]] = c["color"]
    id_to_train = np.full(256, 255, np.uint8)
    id_to_train[[1, 2, 3, 4, 5, 9]] = [0, 1, 1, 2, 3, 4]
    root, expected = tmp_path / "src", {}
    rng = np.random.default_rng(1)
    for i in range(2):
        _, ids = _frame(rng)
        big = np.kron(ids, np.ones((4, 4), np.uint8))  # 256x192 label map drawn at 4x, then squashed
        small = Image.fromarray(lut[big]).resize(SIZE, Image.BILINEAR)
        (root / "train" / "colour").mkdir(parents=True, exist_ok=True)
        (root / "train" / "images").mkdir(parents=True, exist_ok=True)
        small.save(root / "train" / "colour" / f"c{i}.jpg", quality=90)
        Image.fromarray(lut[ids]).save(root / "train" / "images" / f"c{i}.png")
        expected[f"c{i}"] = id_to_train[np.asarray(Image.fromarray(big).resize(SIZE, Image.NEAREST))]
    out = tmp_path / "prepared"
    assert main(["prepare", str(root), str(out), "--dataset", str(tmp_path / "toy5c.yaml"), "--workers", "1",
                 "-q"]) == 0
    exact = 0.0
    for stem, want in expected.items():
        got = np.asarray(Image.open(out / "gtFine" / "train" / "toy5" / f"{stem}_gtFine_labelTrainIds.png"))
        valid = want != 255
        assert (got[valid] == want[valid]).mean() >= 0.97
        exact += (np.asarray(Image.open(root / "train" / "colour" / f"{stem}.jpg"))[..., None, :] ==
                  PALETTE[None, None]).all(-1).any(-1).mean() / len(expected)
    assert exact < 0.9  # the damage is real: exact colour matching alone would lose the borders


def test_stats_of_the_prepared_folder_gives_weights_for_its_classes(toy_run, tmp_path):
    out = tmp_path / "stats"
    assert main(["stats", "--data", str(toy_run["prepared"]), "--split", "train", "--out", str(out), "-q"]) == 0
    weights = yaml.safe_load((out / "class_weights.yaml").read_text())["loss"]["class_weights"]
    assert len(weights) == 5 and all(w > 0 for w in weights)  # every toy5 class is present in train
    from cityseg.config import load_config
    from cityseg.engine.build import build_criterion

    cfg = load_config(None, [f"dataset={toy_run['desc']}", f"loss.class_weights={weights}"])
    build_criterion(cfg, cfg.spec())  # five weights fit toy5's five classes ...
    cityscapes = load_config(None, [f"loss.class_weights={weights}"])
    with pytest.raises(Exception, match="give one per class \\(19\\)"):
        build_criterion(cityscapes, cityscapes.spec())  # ... not Cityscapes' 19


# --- a class described by its colour alone, end to end -------------------------------------------

COLOUR_ONLY = {
    "name": "boats",
    "classes": [
        {"name": "water", "color": [10, 200, 30], "ids": [1]},
        {"name": "sky", "color": [20, 40, 220], "ids": [2]},
        {"name": "boat", "color": [240, 200, 0]},  # its colour alone: reading the description gives it id 3
    ],
    "void": {"ids": [0], "colors": [[0, 0, 0]]},
    "images": "{split}/images/{stem}.png",
    "labels": "{split}/colour/{stem}.png",
}
BOAT_ID = 3  # the lowest id that no class or void lists


def test_a_colour_only_class_keeps_its_pixels_from_prepare_to_predict(tmp_path):
    """Colour labels of a description whose class ``boat`` has no ids: prepare writes boat's own id,
    training and evaluation read it back (the confusion matrix has boat's ground-truth pixels), stats
    counts it and predict writes it."""
    palette = np.array([c["color"] for c in COLOUR_ONLY["classes"]], np.uint8)
    src, rng, boat_pixels = tmp_path / "src", np.random.default_rng(2), 0
    w, h = SIZE
    for split, n in (("train", 4), ("val", 2)):
        for i in range(n):
            train_ids = np.full((h, w), 1, np.uint8)  # sky
            train_ids[h // 2:] = 0  # water
            x = int(rng.integers(0, w - 24))
            train_ids[h // 2 - 8: h // 2 + 6, x: x + 24] = 2  # boat
            boat_pixels += (split == "val") * int((train_ids == 2).sum())
            colour = palette[train_ids]
            photo = np.clip(colour.astype(int) + rng.integers(-20, 20, (h, w, 3)), 0, 255).astype(np.uint8)
            for sub, array in (("images", photo), ("colour", colour)):
                (src / split / sub).mkdir(parents=True, exist_ok=True)
                Image.fromarray(array).save(src / split / sub / f"f{i}.png")
    desc = tmp_path / "boats.yaml"
    desc.write_text(yaml.safe_dump(COLOUR_ONLY, sort_keys=False))
    prepared, run = tmp_path / "prepared", tmp_path / "run"
    assert main(["prepare", str(src), str(prepared), "--dataset", str(desc), "--workers", "1", "-q"]) == 0
    assert yaml.safe_load((prepared / "dataset.yaml").read_text())["classes"][2]["ids"] == [BOAT_ID]
    stem = prepared / "gtFine" / "train" / "boats" / "f0_gtFine"
    train_ids = np.asarray(Image.open(f"{stem}_labelTrainIds.png"))
    assert (train_ids == 2).any()
    assert (np.asarray(Image.open(f"{stem}_labelIds.png")) == np.array([1, 2, BOAT_ID], np.uint8)[train_ids]).all()

    sets = [item for s in TRAIN for item in ("--set", s)]
    assert main(["train", "--data", str(prepared), "--out", str(run), "--device", "cpu", "-q", *sets]) == 0
    ckpt = run / "checkpoints" / "best.pt"
    out = tmp_path / "scores.json"
    assert main(["evaluate", "--checkpoint", str(ckpt), "--data", str(prepared), "--json", str(out), "-q"]) == 0
    matrix = json.loads(out.read_text())["confusion_matrix"]
    assert matrix["rows"] == ["water", "sky", "boat"]
    assert sum(matrix["counts"][2]) == boat_pixels > 0  # every boat pixel of val is ground truth

    from cityseg.datasets import load_dataset
    from cityseg.stats import count_split

    counts = count_split(load_dataset(prepared / "dataset.yaml"), prepared, "val", progress=False)
    assert counts.pixels[2] == boat_pixels

    pred = tmp_path / "pred"
    assert main(["predict", "--checkpoint", str(ckpt), str(src / "val" / "images" / "f0.png"), "--out", str(pred),
                 "-q", "--runtime", "torch", "--precision", "fp32"]) == 0
    predicted = np.asarray(Image.open(pred / "trainIds" / "f0.png"))
    raw = np.asarray(Image.open(pred / "labelIds" / "f0.png"))
    assert (raw == np.array([1, 2, BOAT_ID], np.uint8)[predicted]).all()


def test_equal_stems_in_two_folders_stay_two_frames(tmp_path):
    """``{split}/{seq}/...`` with frame f0 in both seq folders: prepare keeps both, under the names
    ``a_f0`` and ``b_f0``, each image with its own folder's label."""
    from cityseg.data.dataset import CityscapesDataset
    from cityseg.datasets import load_dataset

    spec = dict(TOY5, images="{split}/{seq}/images/{stem}.png", labels="{split}/{seq}/labels/{stem}.png")
    src, w, h = tmp_path / "src", *SIZE
    lut = np.zeros((256, 3), np.uint8)
    for c in TOY5["classes"]:
        lut[c["ids"]] = c["color"]
    for seq, raw_id in (("a", 1), ("b", 4)):  # a: all ground, b: all sky
        ids = np.full((h, w), raw_id, np.uint8)
        ids[: h // 4, : w // 4] = 9  # car, in a corner of both
        for sub, array in (("images", lut[ids]), ("labels", ids)):
            (src / "train" / seq / sub).mkdir(parents=True)
            Image.fromarray(array).save(src / "train" / seq / sub / "f0.png")
    desc = tmp_path / "toy5seq.yaml"
    desc.write_text(yaml.safe_dump(spec, sort_keys=False))
    out = tmp_path / "prepared"
    assert main(["prepare", str(src), str(out), "--dataset", str(desc), "--workers", "1", "-q"]) == 0
    for seq, train_id in (("a", 0), ("b", 2)):
        labels = np.asarray(Image.open(out / "gtFine" / "train" / "toy5" / f"{seq}_f0_gtFine_labelTrainIds.png"))
        image = np.asarray(Image.open(out / "leftImg8bit" / "train" / "toy5" / f"{seq}_f0_leftImg8bit.png"))
        assert (labels[h // 4:] == train_id).all() and (labels[: h // 4, : w // 4] == 4).all()
        assert (image == np.asarray(Image.open(src / "train" / seq / "images" / "f0.png"))).all()
    frames = CityscapesDataset(out, "train", spec=load_dataset(out / "dataset.yaml"))
    assert sorted(frames.name(i) for i in range(len(frames))) == ["a_f0", "b_f0"]
