"""Pictures: colour helpers checked pixel by pixel, figures checked as readable PNGs written atomically."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from cityseg import labels, viz
from cityseg.errors import CitysegError
from cityseg.imaging import IMAGENET_MEAN, IMAGENET_STD

IGNORE = labels.IGNORE_INDEX


def read_png(path) -> np.ndarray:
    with Image.open(path) as img:
        assert img.format == "PNG"
        return np.asarray(img.convert("RGB"))


def no_temp_files(folder) -> None:
    """No temporary file of the atomic write (``.<stem>.*.tmp.png``) stays behind."""
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")]


def test_to_rgb_uint8_undoes_normalisation_and_layout():
    rgb = np.random.default_rng(0).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    chw = torch.from_numpy(rgb).permute(2, 0, 1)
    normalised = (chw.float() / 255 - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]
    np.testing.assert_array_equal(viz.to_rgb_uint8(chw), rgb)
    np.testing.assert_array_equal(viz.to_rgb_uint8(rgb), rgb)
    assert np.abs(viz.to_rgb_uint8(normalised, normalized=True).astype(int) - rgb).max() <= 1
    unit = np.full((2, 2, 3), 0.5, np.float32)  # float in [0, 1] is taken as is
    np.testing.assert_array_equal(viz.to_rgb_uint8(unit, normalized=False), np.full((2, 2, 3), 128, np.uint8))


def test_float_images_say_whether_they_are_normalised():
    """Bug 2: the kind of a float image was guessed from its range, so a light normalised image (every
    value in [0, 1]) was drawn as if it were RGB in [0, 1]. The caller says which it is."""
    grey = torch.full((3, 4, 4), 0.6)  # a light grey photo, RGB in [0, 1]
    normalised = (grey - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]
    assert 0 <= normalised.min() and normalised.max() <= 1  # the old guess took it for unnormalised
    np.testing.assert_array_equal(viz.to_rgb_uint8(normalised, normalized=True), np.full((4, 4, 3), 153, np.uint8))
    mid = np.full((4, 4, 3), 0.45, np.float32)  # a mid-tone unnormalised photo
    np.testing.assert_array_equal(viz.to_rgb_uint8(mid, normalized=False), np.full((4, 4, 3), 115, np.uint8))
    ids = np.zeros((4, 4), np.uint8)
    np.testing.assert_array_equal(viz.overlay(normalised, ids, alpha=0.0, normalized=True), np.full((4, 4, 3), 153))
    for call in (lambda: viz.to_rgb_uint8(mid), lambda: viz.overlay(mid, ids)):
        with pytest.raises(ValueError, match="normalized=True"):
            call()  # a float image without the keyword is refused, not guessed
    with pytest.raises(ValueError, match="uint8 image cannot be normalised"):
        viz.to_rgb_uint8(np.zeros((4, 4, 3), np.uint8), normalized=True)


def test_error_map_colours():
    gt = np.array([[0, 1, IGNORE], [13, 13, IGNORE]], np.uint8)
    pred = np.array([[0, 2, 5], [13, 12, IGNORE]], np.uint8)
    out = viz.error_map(gt, pred)
    grey, red, black = viz.CORRECT_COLOR, viz.ERROR_COLOR, (0, 0, 0)
    expected = np.array([[grey, red, black], [grey, red, black]], np.uint8)
    np.testing.assert_array_equal(out, expected)


def test_overlay_blends_palette_and_leaves_ignore():
    image = np.full((2, 2, 3), 100, np.uint8)
    ids = np.array([[0, 10], [IGNORE, 13]], np.uint8)
    full = viz.overlay(image, ids, alpha=1.0)
    np.testing.assert_array_equal(full[0, 0], labels.TRAIN_PALETTE[0])  # road colour
    np.testing.assert_array_equal(full[1, 0], [100, 100, 100])  # ignore keeps the image
    half = viz.overlay(image, ids, alpha=0.5)
    np.testing.assert_array_equal(half[0, 1], ((100 + labels.TRAIN_PALETTE[10].astype(int)) / 2 + 0.5).astype(np.uint8))


def test_save_panel_rows_and_sizes(tmp_path):
    rng = np.random.default_rng(1)
    gt = rng.integers(0, labels.NUM_CLASSES, (2, 32, 64)).astype(np.uint8)
    gt[:, :4] = IGNORE
    pred = gt.copy()
    pred[:, 10:20, 10:20] = 0
    images = torch.randn(2, 3, 16, 32)  # normalised model input at half the label size
    one = viz.save_panel(tmp_path / "one.png", images[0], torch.from_numpy(gt[0]), torch.from_numpy(pred[0]),
                         normalized=True)
    two = viz.save_panel(tmp_path / "two.png", images, gt, pred, names=["a", "b"], normalized=True)
    h1, w1, _ = read_png(one).shape
    h2, w2, _ = read_png(two).shape
    assert w1 == w2 and h2 > 1.6 * h1 - 100  # a second row roughly doubles the height
    no_temp_files(tmp_path)
    with pytest.raises(ValueError, match="differ in size"):
        viz.save_panel(tmp_path / "bad.png", images[0], gt[0], pred[0][:16], normalized=True)


def test_save_panel_draws_the_error_column(tmp_path):
    # Everything wrong on the right half: the error tile must show lots of pure red.
    gt = np.zeros((40, 80), np.uint8)
    pred = gt.copy()
    pred[:, 40:] = 13
    out = read_png(viz.save_panel(tmp_path / "p.png", np.zeros((40, 80, 3), np.uint8), gt, pred))
    red = (out[..., 0] > 240) & (out[..., 1] < 15) & (out[..., 2] < 15)
    assert red[:, 3 * out.shape[1] // 4 :].sum() > 1000


def write_metrics(path, records) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_plot_curves_and_read_metrics(tmp_path):
    records = [
        {"epoch": 1, "train_loss": 2.0, "val_loss": 2.1, "val_miou": 0.1, "val_dice": 0.2, "lr": 5e-4},
        {"epoch": 2, "train_loss": 1.5, "val_loss": None, "val_miou": None, "val_dice": None, "lr": 5e-4},
        {"epoch": 2, "train_loss": 1.4, "val_loss": 1.6, "val_miou": 0.3, "val_dice": 0.4, "lr": 5e-4},  # rewritten epoch
        {"epoch": 3, "train_loss": 1.1, "lr": 2.5e-4},  # no validation this epoch
    ]
    write_metrics(tmp_path / "metrics.jsonl", records)
    got = viz.read_metrics(tmp_path / "metrics.jsonl")
    assert [r["epoch"] for r in got] == [1, 2, 3] and got[1]["train_loss"] == 1.4
    out = viz.plot_curves(tmp_path / "metrics.jsonl", tmp_path / "curves.png")
    assert read_png(out).shape[1] > 1000
    no_temp_files(tmp_path)


def test_plot_curves_bad_input(tmp_path):
    with pytest.raises(CitysegError, match="metrics file not found"):
        viz.plot_curves(tmp_path / "none.jsonl", tmp_path / "c.png")
    (tmp_path / "m.jsonl").write_text('{"epoch": 1, "train_loss": 1}\nnot json\n')
    with pytest.raises(CitysegError, match=r"m.jsonl:2: not a JSON object"):
        viz.plot_curves(tmp_path / "m.jsonl", tmp_path / "c.png")
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(CitysegError, match="no epochs"):
        viz.plot_curves(tmp_path / "empty.jsonl", tmp_path / "c.png")
    assert not (tmp_path / "c.png").exists()


def test_normalize_confusion_and_plot(tmp_path):
    n = labels.NUM_CLASSES
    conf = np.zeros((n, n), np.int64)
    conf[0, 0], conf[0, 1], conf[1, 1] = 3, 1, 5  # road: 3 right, 1 as sidewalk
    norm = viz.normalize_confusion(torch.from_numpy(conf))
    assert norm[0, 0] == 0.75 and norm[0, 1] == 0.25 and norm[1, 1] == 1.0
    assert np.isnan(norm[2]).all()  # building absent from the ground truth
    out = viz.plot_confusion(conf, tmp_path / "conf.png")
    assert read_png(out).shape[0] > 500
    with pytest.raises(ValueError, match="confusion matrix"):
        viz.plot_confusion(conf[:3, :3], tmp_path / "bad.png")


def test_plot_confusion_with_a_void_column(tmp_path):
    """``cityseg evaluate --plots`` draws metrics.train_confusion: a last column of predictions of void labels."""
    n = labels.NUM_CLASSES
    conf = np.zeros((n, n + 1), np.int64)
    conf[0, 0], conf[0, n] = 3, 1  # road: 3 right, 1 predicted as a void label
    assert viz.normalize_confusion(conf)[0, n] == 0.25
    assert read_png(viz.plot_confusion(conf, tmp_path / "conf.png")).shape[1] > 500
    no_temp_files(tmp_path)


def test_plot_class_iou(tmp_path):
    ious = np.linspace(0.1, 0.9, labels.NUM_CLASSES)
    ious[16] = np.nan  # train absent
    out = viz.plot_class_iou(torch.from_numpy(ious), tmp_path / "iou.png")
    assert read_png(out).shape[0] > 500
    no_temp_files(tmp_path)
    with pytest.raises(ValueError, match="IoUs"):
        viz.plot_class_iou(ious[:5], tmp_path / "bad.png")
