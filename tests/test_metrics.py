"""cityseg.metrics: hand-computed scores, the NaN rule, iIoU weights, boundary F1 against a scipy oracle."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from cityseg import metrics
from cityseg.labels import CATEGORIES, CLASS_NAMES, ID_TO_TRAIN_ID, LABEL_BY_NAME, LABELS, NUM_CLASSES

ROAD, SIDEWALK, CAR, PERSON = (LABEL_BY_NAME[n].id for n in ("road", "sidewalk", "car", "person"))
T_ROAD, T_SIDEWALK = (LABEL_BY_NAME[n].train_id for n in ("road", "sidewalk"))
VOID = 0  # "unlabeled"


def _scores(pred, gt, inst=None, tol=None):
    return metrics.frame_counts(np.array(pred, np.uint8), np.array(gt, np.uint8), inst, tol).scores()


# A 3x4 frame: road on the left, sidewalk on the right, two void gt pixels (bottom left).
GT = [[ROAD, ROAD, SIDEWALK, SIDEWALK], [ROAD, ROAD, SIDEWALK, SIDEWALK], [VOID, VOID, SIDEWALK, SIDEWALK]]
PRED = [[ROAD, SIDEWALK, SIDEWALK, SIDEWALK], [ROAD, ROAD, SIDEWALK, VOID], [SIDEWALK, SIDEWALK, ROAD, ROAD]]
# By hand: road tp 3, fn 1 (one sidewalk), fp 2 (bottom right); sidewalk tp 3, fn 3 (one void, two road),
# fp 1; predictions on void ground truth (bottom left) are not counted.


def test_hand_computed_iou_dice_accuracy():
    s = _scores(PRED, GT)
    assert s["classes"]["road"]["iou"] == pytest.approx(3 / 6)
    assert s["classes"]["sidewalk"]["iou"] == pytest.approx(3 / 7)
    assert s["classes"]["road"]["dice"] == pytest.approx(6 / 9)
    assert s["classes"]["sidewalk"]["dice"] == pytest.approx(6 / 10)
    assert s["miou"] == pytest.approx((3 / 6 + 3 / 7) / 2)
    assert s["mean_dice"] == pytest.approx((6 / 9 + 6 / 10) / 2)
    assert s["pixel_accuracy"] == pytest.approx(6 / 10)
    # flat merges road and sidewalk: 9 of the 10 scored pixels are flat in both; the void prediction misses
    assert s["categories"]["flat"]["iou"] == pytest.approx(9 / 10)
    assert s["category_miou"] == pytest.approx(9 / 10)


def test_hand_computed_class_accuracy_and_confusion_matrix():
    # rows by hand: road 3 road + 1 sidewalk; sidewalk 2 road + 3 sidewalk + 1 void prediction
    counts = metrics.frame_counts(np.array(PRED, np.uint8), np.array(GT, np.uint8), boundary_tolerance=None)
    s = counts.scores()
    assert s["classes"]["road"]["accuracy"] == pytest.approx(3 / 4)
    assert s["classes"]["sidewalk"]["accuracy"] == pytest.approx(3 / 6)
    assert math.isnan(s["classes"]["car"]["accuracy"])  # absent from the ground truth: left out of the mean
    assert s["mean_class_accuracy"] == pytest.approx((3 / 4 + 3 / 6) / 2)
    table = metrics.confusion_json(counts.conf)
    assert table["rows"] == list(CLASS_NAMES) and table["columns"] == [*CLASS_NAMES, "(void)"]
    expected = np.zeros((NUM_CLASSES, NUM_CLASSES + 1), np.int64)
    expected[T_ROAD, [T_ROAD, T_SIDEWALK]] = 3, 1
    expected[T_SIDEWALK, [T_ROAD, T_SIDEWALK, NUM_CLASSES]] = 2, 3, 1
    assert table["counts"] == expected.tolist()
    assert all(type(v) is int for row in table["counts"] for v in row)
    # a trainId confusion matrix gives the same table (with an empty void column)
    train = metrics.confusion(ID_TO_TRAIN_ID[np.array(PRED)], ID_TO_TRAIN_ID[np.array(GT)])
    assert metrics.confusion_json(train)["counts"] == np.where(np.arange(NUM_CLASSES + 1) < NUM_CLASSES,
                                                               expected, 0).tolist()


def test_scores_follow_from_the_json_confusion_matrix():
    """IoU, Dice, pixel and class accuracy recomputed from confusion_json equal those of scores()."""
    rng = np.random.default_rng(3)
    ids = np.array([lb.id for lb in LABELS if lb.id >= 0])
    gt, pred = rng.choice(ids, (2, 30, 40)).astype(np.uint8)
    right = rng.random(pred.shape) < 0.5
    pred[right] = gt[right]
    counts = metrics.frame_counts(pred, gt, boundary_tolerance=None)
    s = counts.scores()
    m = np.array(metrics.confusion_json(counts.conf)["counts"], np.float64)
    tp, rows, cols = np.diag(m), m.sum(1), m[:, :NUM_CLASSES].sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        iou, dice, acc = tp / (rows + cols - tp), 2 * tp / (rows + cols), tp / rows
    for t, name in enumerate(CLASS_NAMES):
        assert s["classes"][name]["iou"] == pytest.approx(iou[t], nan_ok=True), name
        assert s["classes"][name]["dice"] == pytest.approx(dice[t], nan_ok=True), name
        assert s["classes"][name]["accuracy"] == pytest.approx(acc[t], nan_ok=True), name
    assert s["pixel_accuracy"] == pytest.approx(tp.sum() / m.sum())
    assert s["mean_class_accuracy"] == pytest.approx(np.nanmean(acc))
    assert s["miou"] == pytest.approx(np.nanmean(iou))


def test_nan_rule_absent_classes_are_left_out_of_every_average():
    s = _scores(PRED, GT)
    absent = [n for n in CLASS_NAMES if n not in ("road", "sidewalk")]
    for name in absent:
        assert math.isnan(s["classes"][name]["iou"]) and math.isnan(s["classes"][name]["dice"])
    assert all(math.isnan(s["categories"][c]["iou"]) for c in CATEGORIES if c != "flat")
    assert math.isnan(s["iiou"]) and math.isnan(s["boundary_f1"])  # not computed


def test_a_class_only_predicted_scores_zero_and_counts_in_the_mean():
    pred = [row[:] for row in PRED]
    pred[0][0] = CAR  # a road pixel predicted as car
    s = _scores(pred, GT)
    assert s["classes"]["car"]["iou"] == 0.0
    assert s["miou"] == pytest.approx((2 / 6 + 3 / 7 + 0) / 3)


def test_trainid_confusion_and_its_lift_give_the_same_scores():
    gt_t = np.array([[T_ROAD, T_ROAD, 255], [T_SIDEWALK, T_SIDEWALK, T_SIDEWALK]])
    pred_t = np.array([[T_ROAD, T_SIDEWALK, T_ROAD], [T_SIDEWALK, T_ROAD, 255]])
    conf = metrics.confusion(pred_t, gt_t)
    assert conf.shape == (NUM_CLASSES, NUM_CLASSES)
    assert conf[T_ROAD, T_ROAD] == 1 and conf[T_ROAD, T_SIDEWALK] == 1
    assert conf[T_SIDEWALK, T_SIDEWALK] == 1 and conf[T_SIDEWALK, T_ROAD] == 1
    assert conf.sum() == 4  # ignore in gt (one pixel) or pred (one pixel) skipped
    s = metrics.scores(conf)
    assert s["classes"]["road"]["iou"] == pytest.approx(1 / 3)
    assert s["classes"]["sidewalk"]["iou"] == pytest.approx(1 / 3)


def test_id_confusion_counts_every_pixel_by_label_id():
    rng = np.random.default_rng(0)
    gt = rng.integers(0, metrics.NUM_IDS, (37, 53)).astype(np.uint8)
    pred = np.repeat(rng.integers(0, metrics.NUM_IDS, (37, 9)), 6, axis=1)[:, :53].astype(np.uint8)  # runs
    expected = np.zeros((metrics.NUM_IDS, metrics.NUM_IDS), np.int64)
    np.add.at(expected, (gt.ravel(), pred.ravel()), 1)
    np.testing.assert_array_equal(metrics.id_confusion(pred, gt), expected)


def test_iiou_weights_instances_by_official_average_size():
    a = metrics.AVG_CLASS_SIZE["person"]
    gt = np.full((2, 6), ROAD, np.uint8)
    gt[0, :4] = PERSON  # instance 1: 4 pixels
    gt[1, :2] = PERSON  # instance 2: 2 pixels
    inst = gt.astype(np.int32)
    inst[0, :4] = PERSON * 1000
    inst[1, :2] = PERSON * 1000 + 1
    pred = gt.copy()
    pred[0, 3] = ROAD  # instance 1: 3 of 4 found
    pred[1, 1] = ROAD  # instance 2: 1 of 2 found
    pred[1, 5] = PERSON  # one false positive on road
    s = _scores(pred, gt, inst)
    tpw = 3 * a / 4 + 1 * a / 2
    fnw = 1 * a / 4 + 1 * a / 2
    assert s["classes"]["person"]["iiou"] == pytest.approx(tpw / (tpw + 1 + fnw))
    assert s["categories"]["human"]["iiou"] == pytest.approx(tpw / (tpw + 1 + fnw))
    assert s["iiou"] == pytest.approx(s["classes"]["person"]["iiou"])  # the only class with instances here
    assert math.isnan(s["classes"]["road"]["iiou"])  # no instances: no iIoU
    assert s["classes"]["person"]["iou"] == pytest.approx(4 / (4 + 1 + 2))


def test_iiou_category_counts_caravan_predictions_as_vehicle():
    # The official script's vehicle category (for iIoU) includes the void caravan/trailer ids.
    gt = np.full((1, 4), CAR, np.uint8)
    inst = np.full((1, 4), CAR * 1000, np.int32)
    caravan = LABEL_BY_NAME["caravan"].id
    pred = np.array([[CAR, CAR, caravan, caravan]], np.uint8)
    s = _scores(pred, gt, inst)
    assert s["categories"]["vehicle"]["iiou"] == pytest.approx(1.0)
    assert s["classes"]["car"]["iiou"] == pytest.approx(0.5)
    assert s["categories"]["vehicle"]["iou"] == pytest.approx(0.5)  # category IoU leaves void ids out


# --- boundary F1 ------------------------------------------------------------------------------


def test_boundary_f1_hand_case_shift_by_one_column():
    gt = np.full((6, 8), ROAD, np.uint8)
    gt[:, 4:] = SIDEWALK
    pred = np.full((6, 8), ROAD, np.uint8)
    pred[:, 5:] = SIDEWALK  # the edge one column to the right
    counts0 = metrics.boundary_counts(pred, gt, 0)
    # 6 boundary pixels per class on each side: road at column 3 (gt) / 4 (pred), sidewalk at 4 / 5
    assert counts0[:, T_ROAD].tolist() == [6, 0, 6, 0]
    assert counts0[:, T_SIDEWALK].tolist() == [6, 0, 6, 0]
    assert metrics.boundary_counts(pred, gt, 1)[:, T_ROAD].tolist() == [6, 6, 6, 6]
    s0 = metrics.scores(metrics.id_confusion(pred, gt), boundary=counts0)
    s1 = metrics.scores(metrics.id_confusion(pred, gt), boundary=metrics.boundary_counts(pred, gt, 1))
    assert s0["boundary_f1"] == 0.0 and s1["boundary_f1"] == 1.0
    assert math.isnan(s1["classes"]["car"]["boundary_f1"])


def test_boundary_void_ground_truth_neither_makes_nor_hides_a_boundary():
    gt = np.full((4, 6), ROAD, np.uint8)
    gt[:, 3:] = VOID
    pred = np.full((4, 6), ROAD, np.uint8)
    pred[:, 3:] = SIDEWALK  # a change only where ground truth is void
    assert metrics.boundary_counts(pred, gt, 2).sum() == 0


def _oracle_boundary(pred: np.ndarray, gt: np.ndarray, tol: int) -> np.ndarray:
    """Dense reference: per class, boundary masks by explicit neighbour tests, matches by distance transform."""
    valid = metrics.IS_EVAL_ID[gt]

    def edges(m):
        e = np.zeros(m.shape, bool)
        for axis in (0, 1):
            a = [slice(None)] * 2
            b = [slice(None)] * 2
            a[axis], b[axis] = slice(0, -1), slice(1, None)
            d = (m[tuple(a)] != m[tuple(b)]) & valid[tuple(a)] & valid[tuple(b)]
            e[tuple(a)] |= d
            e[tuple(b)] |= d
        return e & metrics.IS_EVAL_ID[m]

    ep, eg = edges(pred), edges(gt)
    out = np.zeros((4, NUM_CLASSES), np.int64)
    for t, cid in enumerate(metrics.EVAL_IDS):
        bp, bg = ep & (pred == cid), eg & (gt == cid)
        for row, (mine, theirs) in enumerate(((bp, bg), (bg, bp))):
            out[2 * row, t] = mine.sum()
            if mine.any():
                dist = ndimage.distance_transform_edt(~theirs) if theirs.any() else np.full(mine.shape, np.inf)
                out[2 * row + 1, t] = (mine & (dist <= tol)).sum()
    return out


@pytest.mark.parametrize("tol", [0, 1, 2, 3])
def test_boundary_counts_match_a_distance_transform_oracle(tol):
    rng = np.random.default_rng(tol)
    ids = np.array([VOID, ROAD, SIDEWALK, CAR, PERSON, LABEL_BY_NAME["sky"].id, LABEL_BY_NAME["caravan"].id])
    for _ in range(3):
        gt = np.kron(rng.choice(ids, (6, 9)), np.ones((5, 5), np.int64)).astype(np.uint8)[:29, :41]
        pred = gt.copy()
        pred[rng.random(gt.shape) < 0.08] = rng.choice(ids)
        pred = np.roll(pred, rng.integers(-2, 3), axis=1)
        np.testing.assert_array_equal(metrics.boundary_counts(pred, gt, tol), _oracle_boundary(pred, gt, tol))


def test_disk_offsets_are_the_euclidean_disk_nearest_first():
    offs = metrics.disk_offsets(2)
    assert len(offs) == 13 and offs[0] == (0, 0)
    assert all(dy * dy + dx * dx <= 4 for dy, dx in offs)
    dist = [dy * dy + dx * dx for dy, dx in offs]
    assert dist == sorted(dist)


# --- output -----------------------------------------------------------------------------------


def test_json_ready_has_the_schema_and_null_for_nan():
    s = metrics.json_ready(_scores(PRED, GT, tol=2))
    assert set(s) == {"miou", "iiou", "category_miou", "category_iiou", "mean_dice", "pixel_accuracy",
                      "mean_class_accuracy", "boundary_f1", "classes", "categories"}
    assert list(s["classes"]) == list(CLASS_NAMES)
    assert set(s["classes"]["road"]) == {"iou", "iiou", "dice", "accuracy", "boundary_f1"}
    assert list(s["categories"]) == list(CATEGORIES) and len(CATEGORIES) == 7
    assert set(s["categories"]["flat"]) == {"iou", "iiou"}
    assert s["iiou"] is None and s["classes"]["car"]["iou"] is None


def test_table_lists_every_class_and_category():
    table = metrics.format_table(_scores(PRED, GT))
    for name in (*CLASS_NAMES, *CATEGORIES, "average", "pixel accuracy", "mean class accuracy", "Acc"):
        assert name in table
    assert "0.500" in table  # road IoU
    assert "pixel accuracy 0.600, mean class accuracy 0.625" in table
    road = next(line for line in table.splitlines() if line.startswith("road"))
    assert road.split()[1:] == ["0.500", "-", "0.667", "0.750", "-"]  # IoU, iIoU, Dice, Acc, BF1


def test_counts_remember_their_boundary_tolerance_and_refuse_to_mix_them():
    at1, at2 = (metrics.frame_counts(PRED, GT, boundary_tolerance=t) for t in (1, 2))
    assert (at1.boundary_tolerance, at2.boundary_tolerance) == (1, 2)
    total = metrics.Counts().add(at1).add(metrics.frame_counts(PRED, GT, boundary_tolerance=None))
    assert total.boundary_tolerance == 1
    np.testing.assert_array_equal(total.boundary, at1.boundary)
    with pytest.raises(ValueError, match="1 and 2 px"):
        total.add(at2)
    assert "within 2 px" in metrics.format_table(at2.scores(), at2.boundary_tolerance)
    assert "within" not in metrics.format_table(at2.scores())
