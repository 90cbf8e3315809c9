"""``cityseg evaluate``: parity with the official cityscapesscripts evaluator, bad input, plots, checkpoints."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cityseg import metrics
from cityseg.cli import main
from cityseg.metrics.pred_dir import evaluate_pred_dir
from cityseg.labels import CATEGORIES, CLASS_NAMES, ID_PALETTE, LABEL_BY_NAME, LABELS

GT_SUFFIX = "_gtFine_labelIds.png"
INST_SUFFIX = "_gtFine_instanceIds.png"
ALL_IDS = np.array([lb.id for lb in LABELS if lb.id >= 0])
INSTANCE_IDS = np.array([lb.id for lb in LABELS if lb.has_instances])  # caravan/trailer (void) included


# --- synthetic frames ---------------------------------------------------------------------------


def make_frame(rng: np.random.Generator, h: int = 48, w: int = 96, cell: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Random blobs: (labelIds uint8, instanceIds uint16) in the official encoding.

    Cells of ``cell`` pixels get a random label id (void ones included); an instance-class cell
    is one instance, sometimes merged with its right neighbour; some instance-class pixels
    carry no instance id (as crowds do in Cityscapes).
    """
    cells = rng.choice(ALL_IDS, (h // cell, w // cell))
    more = rng.random(cells.shape) < 0.4  # plenty of instance classes
    cells[more] = rng.choice(INSTANCE_IDS, more.sum())
    gt = np.kron(cells, np.ones((cell, cell), np.int64)).astype(np.uint8)
    index = np.arange(cells.size).reshape(cells.shape)
    merge = rng.random(cells.shape) < 0.3
    index[:, 1:] = np.where(merge[:, 1:] & (cells[:, 1:] == cells[:, :-1]), index[:, :-1], index[:, 1:])
    inst_cells = np.where(np.isin(cells, INSTANCE_IDS), cells * 1000 + index % 1000, cells)
    crowd = rng.random(cells.shape) < 0.1
    inst_cells[crowd] = cells[crowd]
    inst = np.kron(inst_cells, np.ones((cell, cell), np.int64)).astype(np.uint16)
    return gt, inst


def perturb(rng: np.random.Generator, gt: np.ndarray) -> np.ndarray:
    """A prediction: shifted, blob swaps to any label id (void, caravan ... too), salt noise."""
    pred = np.roll(gt, (int(rng.integers(-2, 3)), int(rng.integers(-3, 4))), axis=(0, 1)).copy()
    h, w = gt.shape
    for _ in range(3):
        y, x = rng.integers(0, h - 8), rng.integers(0, w - 8)
        pred[y : y + rng.integers(2, 9), x : x + rng.integers(2, 9)] = rng.choice(ALL_IDS)
    noise = rng.random(gt.shape) < 0.02
    pred[noise] = rng.choice(ALL_IDS, noise.sum())
    return pred.astype(np.uint8)


def write_tree(root: Path, frames: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]) -> tuple[Path, Path]:
    """Official layout: root/gtFine/val/<city>/..., predictions in root/pred/<name>_leftImg8bit.png."""
    gt_dir, pred_dir = root / "gtFine" / "val", root / "pred"
    pred_dir.mkdir(parents=True, exist_ok=True)
    for name, gt, inst, pred in frames:
        city = gt_dir / name.split("_")[0]
        city.mkdir(parents=True, exist_ok=True)
        Image.fromarray(gt).save(city / f"{name}{GT_SUFFIX}")
        Image.fromarray(inst).save(city / f"{name}{INST_SUFFIX}")
        Image.fromarray(pred).save(pred_dir / f"{name}_leftImg8bit.png")
    return gt_dir, pred_dir


@pytest.fixture
def synthetic_tree(tmp_path: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(5)
    frames = []
    for k in range(6):
        gt, inst = make_frame(rng)
        frames.append((f"{['aachen', 'bremen'][k % 2]}_{k:06d}_000019", gt, inst, perturb(rng, gt)))
    return write_tree(tmp_path, frames)


# --- the official evaluator, in process ---------------------------------------------------------


def official_scores(gt_dir: Path, pred_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict:
    """Run cityscapesscripts' evalPixelLevelSemanticLabeling.main() the way its docs say: ground truth
    found by its glob, predictions by its own getPrediction() search of the results folder."""
    if not hasattr(np, "in1d"):  # the official script still calls np.in1d, gone in NumPy 2.4
        monkeypatch.setattr(np, "in1d", np.isin, raising=False)
    ev = pytest.importorskip("cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling")
    args = ev.args
    monkeypatch.setattr(args, "groundTruthSearch", str(gt_dir / "*" / f"*{GT_SUFFIX}"))
    monkeypatch.setattr(args, "predictionPath", str(pred_dir))
    monkeypatch.setattr(args, "predictionWalk", None)
    monkeypatch.setattr(args, "exportFile", str(tmp_path / "official.json"))
    monkeypatch.setattr(args, "quiet", True)
    monkeypatch.setattr(args, "JSONOutput", True)
    monkeypatch.setattr(sys, "argv", ["evalPixelLevelSemanticLabeling"])
    ev.main()
    return json.loads((tmp_path / "official.json").read_text())


def assert_same_as_official(ours: dict, official: dict, tol: float = 1e-6) -> None:
    def same(a, b, what):
        b = float(b)
        if a is None:
            assert math.isnan(b), f"{what}: ours null, official {b}"
        else:
            assert abs(a - b) <= tol, f"{what}: ours {a}, official {b}"

    for name in CLASS_NAMES:
        same(ours["classes"][name]["iou"], official["classScores"][name], f"{name} IoU")
        same(ours["classes"][name]["iiou"], official["classInstScores"][name], f"{name} iIoU")
    for name in CATEGORIES:
        same(ours["categories"][name]["iou"], official["categoryScores"][name], f"{name} category IoU")
        same(ours["categories"][name]["iiou"], official["categoryInstScores"][name], f"{name} category iIoU")
    same(ours["miou"], official["averageScoreClasses"], "mIoU")
    same(ours["iiou"], official["averageScoreInstClasses"], "iIoU")
    same(ours["category_miou"], official["averageScoreCategories"], "category mIoU")
    same(ours["category_iiou"], official["averageScoreInstCategories"], "category iIoU")


def run_cli(*argv: str) -> int:
    return main(["evaluate", *argv])


# --- parity -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("workers", ["1", "2"])
def test_synthetic_frames_match_the_official_script(synthetic_tree, tmp_path, monkeypatch, workers):
    gt_dir, pred_dir = synthetic_tree
    out = tmp_path / "scores.json"
    assert run_cli("--pred-dir", str(pred_dir), "--gt-dir", str(gt_dir), "--json", str(out), "--workers", workers) == 0
    ours = json.loads(out.read_text())
    official = official_scores(gt_dir, pred_dir, monkeypatch, tmp_path)
    assert_same_as_official(ours, official)
    assert ours["iiou"] is not None and ours["category_iiou"] is not None  # instances were scored
    # the whole confusion matrix, not just the scores
    counts, _, _ = evaluate_pred_dir(pred_dir, gt_dir, None, 1)
    np.testing.assert_array_equal(counts.conf, np.array(official["confMatrix"], dtype=np.int64))


def test_real_val_frames_with_perturbed_predictions_match_the_official_script(fixtures_dir, tmp_path, monkeypatch):
    src = fixtures_dir / "cityscapes" / "gtFine" / "val" / "frankfurt"
    gts = sorted(src.glob(f"*{GT_SUFFIX}"))
    assert len(gts) == 15
    gt_dir = tmp_path / "gtFine" / "val"
    (gt_dir / "frankfurt").mkdir(parents=True)
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    rng = np.random.default_rng(0)
    car, bus, person, rider = 26, 28, 24, 25
    for k, gt_path in enumerate(gts):
        name = gt_path.name[: -len(GT_SUFFIX)]
        for suffix in (GT_SUFFIX, INST_SUFFIX):
            shutil.copy(src / f"{name}{suffix}", gt_dir / "frankfurt")
        gt = np.asarray(Image.open(gt_path))
        kind = k % 3
        if kind == 0:  # shifted by a few pixels
            pred = np.roll(gt, (2 + k % 2, -3), axis=(0, 1))
        elif kind == 1:  # salt noise with any label id
            pred = gt.copy()
            noise = rng.random(gt.shape) < 0.05
            pred[noise] = rng.choice(ALL_IDS, noise.sum())
        else:  # class swaps: car <-> bus, person -> rider, plus a void block
            pred = gt.copy()
            pred[gt == car], pred[gt == bus], pred[gt == person] = bus, car, rider
            pred[400:500, 800:1000] = 0
        Image.fromarray(pred.astype(np.uint8)).save(pred_dir / f"{name}_leftImg8bit.png", compress_level=1)
    out = tmp_path / "scores.json"
    assert run_cli("--pred-dir", str(pred_dir), "--gt-dir", str(gt_dir), "--json", str(out), "--workers", "2") == 0
    official = official_scores(gt_dir, pred_dir, monkeypatch, tmp_path)
    assert_same_as_official(json.loads(out.read_text()), official)


def test_pred_dir_path_does_not_import_torch(synthetic_tree):
    gt_dir, pred_dir = synthetic_tree
    code = (
        "import sys, cityseg.metrics.pred_dir, cityseg.commands.evaluate\n"
        "from cityseg.cli import main\n"
        f"argv = ['evaluate', '--pred-dir', {str(pred_dir)!r}, '--gt-dir', {str(gt_dir)!r}, '--workers', '1']\n"
        "assert main(argv) == 0\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)


# --- output ---------------------------------------------------------------------------------------


def test_table_json_and_plots(synthetic_tree, tmp_path, capsys):
    gt_dir, pred_dir = synthetic_tree
    out, plots = tmp_path / "s.json", tmp_path / "plots"
    assert run_cli("--pred-dir", str(pred_dir), "--gt-dir", str(gt_dir), "--json", str(out), "--plots", str(plots),
                   "--boundary-tolerance", "1") == 0
    table = capsys.readouterr().out
    assert "BF1" in table and "bicycle" in table and "vehicle" in table
    assert "matched within 1 px" in table
    assert "mean class accuracy" in table
    data = json.loads(out.read_text())
    assert set(data) == {"miou", "iiou", "category_miou", "category_iiou", "mean_dice", "pixel_accuracy",
                         "mean_class_accuracy", "boundary_f1", "classes", "categories", "confusion_matrix"}
    assert 0 < data["boundary_f1"] < 1
    assert 0 < data["pixel_accuracy"] < 1 and 0 < data["mean_class_accuracy"] < 1
    # the JSON's confusion matrix is the one every score came from
    counts, _, _ = evaluate_pred_dir(pred_dir, gt_dir, None, 1)
    assert data["confusion_matrix"] == metrics.confusion_json(counts.conf)
    matrix = np.array(data["confusion_matrix"]["counts"])
    assert matrix.shape == (len(CLASS_NAMES), len(CLASS_NAMES) + 1)
    assert matrix.sum() == counts.conf[metrics.EVAL_IDS].sum()  # every pixel of scored ground truth
    assert data["pixel_accuracy"] == pytest.approx(np.trace(matrix) / matrix.sum())
    for name in ("confusion.png", "iou.png"):
        with Image.open(plots / name) as img:
            assert img.format == "PNG" and img.size[0] > 400


def test_boundary_f1_can_be_skipped(synthetic_tree, tmp_path):
    gt_dir, pred_dir = synthetic_tree
    out = tmp_path / "s.json"
    argv = ["--pred-dir", str(pred_dir), "--gt-dir", str(gt_dir), "--json", str(out), "--boundary-tolerance", "-1"]
    assert run_cli(*argv) == 0
    data = json.loads(out.read_text())
    assert data["boundary_f1"] is None
    # skipping boundary F1 changes nothing else: every other score is the one of a run that computes it
    assert run_cli("--pred-dir", str(pred_dir), "--gt-dir", str(gt_dir), "--json", str(tmp_path / "full.json")) == 0
    full = json.loads((tmp_path / "full.json").read_text())
    assert full["boundary_f1"] is not None
    assert {k: v for k, v in data.items() if k not in ("boundary_f1", "classes")} == {
        k: v for k, v in full.items() if k not in ("boundary_f1", "classes")}
    assert data["miou"] == pytest.approx(float(np.nanmean([c["iou"] for c in full["classes"].values()
                                                           if c["iou"] is not None])))
    for name, entry in data["classes"].items():
        assert {k: v for k, v in entry.items() if k != "boundary_f1"} == {
            k: v for k, v in full["classes"][name].items() if k != "boundary_f1"}, name


# --- bad input ------------------------------------------------------------------------------------


def _frame_paths(gt_dir: Path, pred_dir: Path) -> tuple[Path, Path]:
    gt = sorted(gt_dir.rglob(f"*{GT_SUFFIX}"))[0]
    name = gt.name[: -len(GT_SUFFIX)]
    return gt, pred_dir / f"{name}_leftImg8bit.png"


def _error(capsys, *argv: str) -> str:
    assert run_cli(*argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_missing_prediction_is_named(synthetic_tree, capsys):
    gt_dir, pred_dir = synthetic_tree
    gt, pred = _frame_paths(gt_dir, pred_dir)
    pred.unlink()
    err = _error(capsys, "--pred-dir", str(pred_dir), "--gt-dir", str(gt_dir), "--workers", "1")
    assert str(gt) in err and "no prediction" in err and "1 of 6" in err


def test_duplicate_predictions_are_named(synthetic_tree, capsys):
    gt_dir, pred_dir = synthetic_tree
    _, pred = _frame_paths(gt_dir, pred_dir)
    shutil.copy(pred, pred_dir / pred.name.replace("_leftImg8bit", "_other"))
    err = _error(capsys, "--pred-dir", str(pred_dir), "--gt-dir", str(gt_dir), "--workers", "1")
    assert "several predictions" in err and pred.name in err


def test_wrong_size_is_named(synthetic_tree, capsys):
    gt_dir, pred_dir = synthetic_tree
    _, pred = _frame_paths(gt_dir, pred_dir)
    Image.fromarray(np.zeros((10, 20), np.uint8)).save(pred)
    err = _error(capsys, "--pred-dir", str(pred_dir), "--gt-dir", str(gt_dir), "--workers", "2")
    assert str(pred) in err and "20x10" in err and "96x48" in err


def test_unknown_prediction_id_is_named(synthetic_tree, capsys):
    gt_dir, pred_dir = synthetic_tree
    _, pred = _frame_paths(gt_dir, pred_dir)
    Image.fromarray(np.full((48, 96), 40, np.uint8)).save(pred)
    err = _error(capsys, "--pred-dir", str(pred_dir), "--gt-dir", str(gt_dir), "--workers", "1")
    assert str(pred) in err and "value 40" in err and "0..33" in err


def test_unknown_ground_truth_id_is_named(synthetic_tree, capsys):
    gt_dir, pred_dir = synthetic_tree
    gt, _ = _frame_paths(gt_dir, pred_dir)
    Image.fromarray(np.full((48, 96), 200, np.uint8)).save(gt)
    err = _error(capsys, "--pred-dir", str(pred_dir), "--gt-dir", str(gt_dir), "--workers", "1")
    assert str(gt) in err and "value 200" in err


def test_unknown_instance_id_is_named(synthetic_tree, capsys):
    gt_dir, pred_dir = synthetic_tree
    gt, _ = _frame_paths(gt_dir, pred_dir)
    inst = gt.with_name(gt.name.replace(GT_SUFFIX, INST_SUFFIX))
    Image.fromarray(np.full((48, 96), 50000, np.uint16)).save(inst)  # label id 50 does not exist
    err = _error(capsys, "--pred-dir", str(pred_dir), "--gt-dir", str(gt_dir), "--workers", "1")
    assert str(inst) in err and "50000" in err


def test_colour_prediction_is_rejected(synthetic_tree, capsys):
    gt_dir, pred_dir = synthetic_tree
    _, pred = _frame_paths(gt_dir, pred_dir)
    Image.fromarray(np.zeros((48, 96, 3), np.uint8)).save(pred)
    err = _error(capsys, "--pred-dir", str(pred_dir), "--gt-dir", str(gt_dir), "--workers", "1")
    assert str(pred) in err and "single-channel" in err


def test_missing_instance_map_and_folders_are_named(synthetic_tree, tmp_path, capsys):
    gt_dir, pred_dir = synthetic_tree
    gt, _ = _frame_paths(gt_dir, pred_dir)
    inst = gt.with_name(gt.name.replace(GT_SUFFIX, INST_SUFFIX))
    inst.unlink()
    assert str(inst) in _error(capsys, "--pred-dir", str(pred_dir), "--gt-dir", str(gt_dir))
    assert "folder not found" in _error(capsys, "--pred-dir", str(tmp_path / "nope"), "--gt-dir", str(gt_dir))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no *_gtFine_labelIds.png" in _error(capsys, "--pred-dir", str(pred_dir), "--gt-dir", str(empty))
    assert "--gt-dir" in _error(capsys, "--pred-dir", str(pred_dir))


# --- other frame names: a prepared pairs tree -------------------------------------------------------

PAIR_IDS = np.array([LABEL_BY_NAME[n].id for n in ("road", "sidewalk", "building", "vegetation", "sky", "car")])


def _pairs_tree(tmp_path: Path) -> tuple[Path, Path]:
    """(gt_dir, pred_dir): ``cityseg prepare --format pairs`` of two pairs files 101.png and 102.png (numeric
    stems, no instanceIds), and shifted copies of their labelIds as predictions ``<stem>_leftImg8bit.png``."""
    rng = np.random.default_rng(7)
    src = tmp_path / "pairs-src" / "val"
    src.mkdir(parents=True)
    for name in ("101", "102"):
        ids = rng.choice(PAIR_IDS, (4, 8)).repeat(8, 0).repeat(8, 1)
        photo = rng.integers(0, 256, (*ids.shape, 3), np.uint8)
        Image.fromarray(np.concatenate([photo, ID_PALETTE[ids]], axis=1)).save(src / f"{name}.png")
    out = tmp_path / "prepared"
    assert main(["prepare", str(src.parent), str(out), "--format", "pairs", "--quiet", "--workers", "1"]) == 0
    gt_dir, pred_dir = out / "gtFine" / "val", tmp_path / "pred"
    pred_dir.mkdir()
    for gt in gt_dir.rglob(f"*{GT_SUFFIX}"):
        pred = np.roll(np.asarray(Image.open(gt)), 3, axis=1)
        Image.fromarray(pred).save(pred_dir / gt.name.replace(GT_SUFFIX, "_leftImg8bit.png"))
    return gt_dir, pred_dir


def test_prepared_pairs_tree_is_scored_without_iiou(tmp_path, capsys):
    gt_dir, pred_dir = _pairs_tree(tmp_path)
    assert sorted(p.name for p in gt_dir.rglob("*")) == [
        "101_gtFine_labelIds.png", "101_gtFine_labelTrainIds.png", "102_gtFine_labelIds.png",
        "102_gtFine_labelTrainIds.png", "pairs"]
    (pred_dir / "102_leftImg8bit.png").rename(pred_dir / "102.png")  # <frame>.png is taken too
    capsys.readouterr()
    out = tmp_path / "s.json"
    assert run_cli("--pred-dir", str(pred_dir), "--gt-dir", str(gt_dir), "--json", str(out), "--workers", "1") == 0
    assert "iIoU is not computed" in capsys.readouterr().err
    expected = metrics.Counts()
    for name, pred in (("101", "101_leftImg8bit.png"), ("102", "102.png")):
        gt_ids = np.asarray(Image.open(gt_dir / "pairs" / f"{name}{GT_SUFFIX}"))
        expected.add(metrics.frame_counts(np.asarray(Image.open(pred_dir / pred)), gt_ids))
    data, want = json.loads(out.read_text()), metrics.json_ready(expected.scores())
    assert 0 < data["miou"] < 1 and data["iiou"] is None and data["category_iiou"] is None
    for key in ("miou", "mean_dice", "pixel_accuracy", "mean_class_accuracy", "boundary_f1", "category_miou"):
        assert data[key] == pytest.approx(want[key], abs=1e-12), key
    assert data["confusion_matrix"] == metrics.confusion_json(expected.conf)


def test_pairs_tree_ambiguous_or_unmatched_names_are_one_line(tmp_path, capsys):
    gt_dir, pred_dir = _pairs_tree(tmp_path)
    capsys.readouterr()
    args = ("--pred-dir", str(pred_dir), "--gt-dir", str(gt_dir), "--workers", "1")
    shutil.copy(pred_dir / "101_leftImg8bit.png", pred_dir / "101.png")
    err = _error(capsys, *args)
    assert err.startswith("cityseg evaluate: error: ") and str(gt_dir / "pairs" / f"101{GT_SUFFIX}") in err
    assert "several predictions" in err and str(pred_dir) in err and "101.png" in err
    (pred_dir / "101.png").rename(pred_dir / "1010.png")  # another frame's name, ignored
    assert run_cli(*args) == 0
    capsys.readouterr()
    other = tmp_path / "other"
    other.mkdir()
    Image.fromarray(np.zeros((32, 64), np.uint8)).save(other / "1010.png")
    err = _error(capsys, "--pred-dir", str(other), "--gt-dir", str(gt_dir))
    assert "no prediction matches" in err and str(other) in err and str(gt_dir) in err
    shutil.copytree(gt_dir, gt_dir.parent / "train")  # both splits under --gt-dir: every frame name twice
    err = _error(capsys, "--pred-dir", str(pred_dir), "--gt-dir", str(gt_dir.parent))
    assert "frame 101 also at" in err and "unique" in err


def test_save_pred_makes_city_folders_for_cityscapes_names_only(tmp_path):
    torch = pytest.importorskip("torch")
    from cityseg.engine.evaluate import save_prediction

    for name in ("101", "lindau_000001_000019", "my_photo", "a_b_000001_000019"):
        save_prediction(torch.zeros(4, 6, dtype=torch.uint8), tmp_path, name)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.png")) == [
        "101_leftImg8bit.png", "a_b/a_b_000001_000019_leftImg8bit.png",
        "lindau/lindau_000001_000019_leftImg8bit.png", "my_photo_leftImg8bit.png"]


# --- checkpoint -----------------------------------------------------------------------------------


def _tiny_checkpoint(tmp_path: Path) -> tuple[Path, Path]:
    """(a random cityseg_tiny checkpoint, a Cityscapes-layout folder of 3 val frames of 128x64)."""
    for module in ("cityseg.inference.predict", "cityseg.data.formats", "cityseg.models"):
        pytest.importorskip(module, reason=f"{module} (another area) not written yet")
    torch = pytest.importorskip("torch")
    from cityseg.config import Config
    from cityseg.checkpoint import save_checkpoint
    from cityseg.models import build_model

    torch.manual_seed(0)
    rng = np.random.default_rng(1)
    root = tmp_path / "data"
    for k in range(3):
        name = f"lindau_{k:06d}_000019"
        gt, inst = make_frame(rng, 64, 128)
        (root / "leftImg8bit" / "val" / "lindau").mkdir(parents=True, exist_ok=True)
        (root / "gtFine" / "val" / "lindau").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (64, 128, 3), dtype=np.uint8)).save(
            root / "leftImg8bit" / "val" / "lindau" / f"{name}_leftImg8bit.png")
        Image.fromarray(gt).save(root / "gtFine" / "val" / "lindau" / f"{name}{GT_SUFFIX}")
        Image.fromarray(inst).save(root / "gtFine" / "val" / "lindau" / f"{name}{INST_SUFFIX}")
    cfg = Config()
    cfg.data.workers = 0
    cfg.model.name, cfg.model.freeze = "cityseg_tiny", []  # the small CPU model
    model = build_model(cfg.model.name, pretrained="none", aux_head=cfg.model.aux_head, freeze=list(cfg.model.freeze),
                        output_stride=cfg.model.output_stride)
    ckpt = tmp_path / "model.pt"
    save_checkpoint(ckpt, {"config": cfg.to_dict(), "model": model.state_dict(), "epoch": 1, "step": 1})
    return ckpt, root


def test_checkpoint_scores_equal_pred_dir_scores_of_its_saved_predictions(tmp_path):
    """--checkpoint runs the model and scores with the Evaluator; --save-pred writes label-id PNGs; scoring
    those with --pred-dir must give the same numbers (one scoring code for both)."""
    ckpt, root = _tiny_checkpoint(tmp_path)
    saved, a, b = tmp_path / "pred", tmp_path / "a.json", tmp_path / "b.json"
    assert run_cli("--checkpoint", str(ckpt), "--data", str(root), "--device", "cpu", "--save-pred", str(saved),
                   "--json", str(a), "--workers", "0") == 0
    assert len(list(saved.rglob("*_leftImg8bit.png"))) == 3
    assert run_cli("--pred-dir", str(saved), "--gt-dir", str(root / "gtFine" / "val"), "--json", str(b),
                   "--workers", "1") == 0
    ja, jb = json.loads(a.read_text()), json.loads(b.read_text())
    for key in ("miou", "iiou", "category_miou", "category_iiou", "mean_dice", "pixel_accuracy", "boundary_f1"):
        assert (ja[key] is None and jb[key] is None) or ja[key] == pytest.approx(jb[key], abs=1e-12), key


def test_checkpoint_precision_and_runtime_choose_the_path(tmp_path, caplog, monkeypatch):
    """evaluate --checkpoint scores through a Predictor whose path paths.choose_path picks: eager fp32
    channels_last by default (training's maths), bf16 where the hardware has it with --precision auto."""
    import logging

    monkeypatch.setattr(logging.getLogger("cityseg"), "propagate", True)  # a CLI test may have set it off
    caplog.set_level("INFO")
    ckpt, root = _tiny_checkpoint(tmp_path)
    import torch
    from cityseg.engine import evaluate as ev
    from cityseg.inference import paths, runtime
    from cityseg.inference import predict as pr

    chosen = []

    def spy(path, model, device, **kw):
        chosen.append(path)
        return runtime.build_runner(path, model, device, **kw)

    monkeypatch.setattr(pr, "build_runner", spy)
    outs = {}
    for precision, runtime_ in (("fp32", "torch"), ("fp32", "auto"), ("auto", "auto")):
        counts, _, n = ev.evaluate_checkpoint(ckpt, "cpu", data=str(root), workers=0, precision=precision,
                                              runtime=runtime_)
        outs[precision, runtime_] = counts.scores()["pixel_accuracy"]
        assert n == 3
    # 3 frames of one size: far below COMPILE_PAYS_FROM, so eager in every case
    bf16 = "bf16" in paths.available_paths(torch.device("cpu"))
    assert chosen == ["channels_last", "channels_last", "bf16" if bf16 else "channels_last"]
    assert outs["fp32", "auto"] == outs["fp32", "torch"]  # the same path: the same scores
    assert "evaluate: whole image" in caplog.text and "3 forward passes per input shape" in caplog.text


def test_checkpoint_precision_int8_needs_calibration_and_pred_dir_refuses_it(tmp_path, capsys):
    ckpt, root = _tiny_checkpoint(tmp_path)
    err = _error(capsys, "--checkpoint", str(ckpt), "--data", str(root), "--precision", "int8")
    assert "--calibration" in err and "int8" in err
    with pytest.raises(SystemExit):  # argparse's own choices check: usage, then the error line
        main(["evaluate", "--checkpoint", str(ckpt), "--data", str(root), "--precision", "fp16"])
    assert "invalid choice: 'fp16'" in capsys.readouterr().err
    assert "--precision applies to --checkpoint" in _error(
        capsys, "--pred-dir", str(root), "--gt-dir", str(root), "--precision", "bf16")


def test_checkpoint_flip_flags_turn_the_eval_sections_flip_on_and_off(tmp_path, capsys):
    """evaluate --checkpoint: no flag keeps the checkpoint's eval section, --no-flip turns its flip off,
    --flip on, and --tta / --sliding change it as predict's flags do."""
    import torch

    ckpt, root = _tiny_checkpoint(tmp_path)
    saved = torch.load(ckpt, weights_only=True)
    saved["config"]["eval"].update(scales=[0.5, 1.0], flip=True)
    from cityseg.checkpoint import save_checkpoint

    save_checkpoint(ckpt, saved)
    said = {}
    for flags in ((), ("--no-flip",), ("--no-tta",), ("--no-tta", "--flip"), ("--sliding", "--crop", "64x64",
                                                                              "--stride", "32x32")):
        assert run_cli("--checkpoint", str(ckpt), "--data", str(root), "--device", "cpu",
                       "--workers", "0", *flags) == 0
        said[flags] = next(line.split("evaluate: ")[1].split(";")[0] for line in capsys.readouterr().out.splitlines()
                           if "evaluate: " in line)
    assert said[()] == "whole image, scales 0.5,1 + flip"
    assert said[("--no-flip",)] == "whole image, scales 0.5,1"
    assert said[("--no-tta",)] == "whole image"
    assert said[("--no-tta", "--flip")] == "whole image + flip"
    assert said[("--sliding", "--crop", "64x64", "--stride", "32x32")] == "sliding 64x64 windows, scales 0.5,1 + flip"


def test_checkpoint_scored_through_onnxruntime_agrees_with_torch(tmp_path):
    """--runtime onnxruntime scores the same frames through the Predictor's pixel input (the normalised
    validation tensors rounded back to pixels): the scores of fp32 torch, to float rounding."""
    pytest.importorskip("onnxruntime")
    from cityseg.engine.evaluate import evaluate_checkpoint

    ckpt, root = _tiny_checkpoint(tmp_path)
    scores = {}
    for runtime_ in ("torch", "onnxruntime"):
        counts, _, n = evaluate_checkpoint(ckpt, "cpu", data=str(root), workers=0, runtime=runtime_)
        scores[runtime_] = counts.scores()
        assert n == 3
    assert scores["onnxruntime"]["pixel_accuracy"] == pytest.approx(scores["torch"]["pixel_accuracy"], abs=2e-3)
    assert scores["onnxruntime"]["miou"] == pytest.approx(scores["torch"]["miou"], abs=1e-2)


def test_checkpoint_and_pred_dir_flags_do_not_mix(synthetic_tree, capsys):
    gt_dir, pred_dir = synthetic_tree
    assert "applies to --checkpoint" in _error(capsys, "--pred-dir", str(pred_dir), "--gt-dir", str(gt_dir), "--flip")
