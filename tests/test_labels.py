"""The label table against the dataset authors' own package (cityscapesscripts)."""

from __future__ import annotations

import numpy as np
import pytest

from cityseg import labels as L

official = pytest.importorskip("cityscapesscripts.helpers.labels")


def test_every_official_label_matches():
    ours = {lb.name: lb for lb in L.LABELS}
    assert len(L.LABELS) == len(official.labels) == 35
    for ref in official.labels:
        lb = ours[ref.name]
        assert (lb.id, lb.train_id, lb.category, lb.category_id) == (ref.id, ref.trainId, ref.category, ref.categoryId)
        assert (lb.has_instances, lb.ignore_in_eval, lb.color) == (ref.hasInstances, ref.ignoreInEval, ref.color)


def test_derived_train_classes():
    ref_train = sorted((lb for lb in official.labels if not lb.ignoreInEval), key=lambda lb: lb.trainId)
    assert L.NUM_CLASSES == len(ref_train)
    assert L.CLASS_NAMES == tuple(lb.name for lb in ref_train)
    assert [lb.trainId for lb in ref_train] == list(range(L.NUM_CLASSES))
    assert L.CLASS_NAMES[11] == "person"  # the seed called it 'Pedestrian'


def test_id_to_train_id_lookup():
    for ref in official.labels:
        if ref.id < 0:
            continue
        expected = ref.trainId if not ref.ignoreInEval else L.IGNORE_INDEX
        assert L.ID_TO_TRAIN_ID[ref.id] == expected, ref.name
    # values outside the table never become a train class
    assert (L.ID_TO_TRAIN_ID[L.MAX_LABEL_ID + 1 :] == L.IGNORE_INDEX).all()


def test_train_id_to_id_roundtrip():
    train_ids = np.arange(L.NUM_CLASSES, dtype=np.uint8)
    ids = L.train_ids_to_label_ids(train_ids)
    assert [official.trainId2label[t].id for t in range(L.NUM_CLASSES)] == ids.tolist()
    assert (L.label_ids_to_train_ids(ids) == train_ids).all()
    assert L.train_ids_to_label_ids(np.array([L.IGNORE_INDEX], np.uint8))[0] == official.name2label["unlabeled"].id


def test_palettes():
    for ref in official.labels:
        if ref.id >= 0:
            assert tuple(L.ID_PALETTE[ref.id]) == ref.color
        if not ref.ignoreInEval:
            assert tuple(L.TRAIN_PALETTE[ref.trainId]) == ref.color
    assert tuple(L.TRAIN_PALETTE[L.IGNORE_INDEX]) == (0, 0, 0)
    rgb = L.colorize(np.array([[0, 10], [L.IGNORE_INDEX, 13]], np.uint8))
    assert rgb.shape == (2, 2, 3) and tuple(rgb[0, 1]) == (70, 130, 180)


def test_colour_collisions_go_to_the_train_class():
    assert L.COLOR_TO_TRAIN_ID[(153, 153, 153)] == official.name2label["pole"].trainId
    assert L.COLOR_TO_TRAIN_ID[(0, 0, 142)] == official.name2label["car"].trainId
    assert L.COLOR_TO_TRAIN_ID[(0, 0, 0)] == L.IGNORE_INDEX
    train_colours = {lb.color for lb in official.labels if not lb.ignoreInEval}
    assert {c for c, t in L.COLOR_TO_TRAIN_ID.items() if t != L.IGNORE_INDEX} == train_colours


def test_categories():
    ref_cats = []
    for lb in sorted(official.labels, key=lambda lb: lb.categoryId):
        if lb.categoryId > 0 and lb.category not in ref_cats:
            ref_cats.append(lb.category)
    assert list(L.CATEGORIES) == ref_cats and len(ref_cats) == 7
    for t, name in enumerate(L.CLASS_NAMES):
        assert L.CATEGORIES[L.CLASS_CATEGORY[t]] == official.name2label[name].category
