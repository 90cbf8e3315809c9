"""Cityscapes names on disk: frame names, where labels and predictions lie."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cityseg import layout
from cityseg.errors import CitysegError
from cityseg.layout import frame_of_image, frame_of_prediction, frame_of_stem


def _png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def test_frame_names_of_images_and_stems():
    assert frame_of_image("x/leftImg8bit/val/bonn/bonn_000001_000019_leftImg8bit.png") == "bonn_000001_000019"
    with pytest.raises(CitysegError, match="photo.png: not a Cityscapes image"):
        frame_of_image("photo.png")
    assert frame_of_stem("frankfurt_000000_002196_leftImg8bit") == "frankfurt_000000_002196"
    assert frame_of_stem("my_photo") == "my_photo"


def test_a_prediction_belongs_to_the_longest_frame_name_it_starts_with():
    frames = {"101", "101_2", "aachen_000000_000019"}
    assert frame_of_prediction("101_leftImg8bit.png", frames) == frame_of_prediction("101.png", frames) == "101"
    assert frame_of_prediction("101_2_pred.png", frames) == "101_2"
    assert frame_of_prediction("1010_leftImg8bit.png", frames) is None
    assert frame_of_prediction("aachen_000000_000019_leftImg8bit.png", frames) == "aachen_000000_000019"
    assert frame_of_prediction("aachen_000000_000019.png", frames) == "aachen_000000_000019"
    assert frame_of_prediction("aachen_000000.png", frames) is None


def test_find_label_prefers_label_ids_then_train_ids_then_colour(tmp_path):
    image = _png(tmp_path / "leftImg8bit/val/bonn/bonn_000001_000019_leftImg8bit.png", np.zeros((2, 2, 3), np.uint8))
    gt = tmp_path / "gtFine/val/bonn"
    made = {}
    for kind, suffix in layout.LABEL_SUFFIXES.items():
        made[kind] = _png(gt / f"bonn_000001_000019{suffix}", np.zeros((2, 2), np.uint8))
    for kind in layout.LABEL_SUFFIXES:
        assert layout.find_label(image) == made[kind]
        made[kind].unlink()
    with pytest.raises(CitysegError, match=r"bonn_000001_000019_leftImg8bit.png: no label found; looked for "
                                           r"bonn_000001_000019_gtFine_\{labelIds,labelTrainIds,color\}.png in .*gtFine/val/bonn"):
        layout.find_label(image)


def test_find_label_beside_the_image_and_bad_image_name(tmp_path):
    image = _png(tmp_path / "a_leftImg8bit.png", np.zeros((2, 2, 3), np.uint8))
    label = _png(tmp_path / "a_gtFine_color.png", np.zeros((2, 2, 3), np.uint8))
    assert layout.find_label(image) == label
    with pytest.raises(CitysegError, match="photo.png: not a Cityscapes image"):
        layout.find_label(tmp_path / "photo.png")


def test_label_path_mirrors_the_image_folder_under_gtfine():
    image = Path("/d/leftImg8bit/val/bonn/bonn_000001_000019_leftImg8bit.png")
    assert layout.label_path(image, layout.INSTANCE_SUFFIX) == Path(
        "/d/gtFine/val/bonn/bonn_000001_000019_gtFine_instanceIds.png")


def test_prediction_path_has_city_folders_for_cityscapes_names_only(tmp_path):
    assert layout.prediction_path(tmp_path, "lindau_000001_000019") == (
        tmp_path / "lindau" / "lindau_000001_000019_leftImg8bit.png")
    assert layout.prediction_path(tmp_path, "101") == tmp_path / "101_leftImg8bit.png"
