"""metrics.evaluator.Evaluator: the same counts and scores as cityseg.metrics, on tensors and under DDP."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.distributed as dist

from cityseg import metrics
from cityseg.labels import ID_TO_TRAIN_ID, IGNORE_INDEX, LABELS, NUM_CLASSES, TRAIN_ID_TO_ID
from cityseg.metrics.evaluator import Evaluator

ALL_IDS = np.array([lb.id for lb in LABELS if lb.id >= 0])
INSTANCE_IDS = np.array([lb.id for lb in LABELS if lb.has_instances])


def _batch(seed: int, n: int = 2, h: int = 40, w: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pred trainIds, gt label ids, instanceIds), each (n, h, w): blobs, instances, noise."""
    rng = np.random.default_rng(seed)
    cells = rng.choice(ALL_IDS, (n, h // 4, w // 4))
    gt = cells.repeat(4, 1).repeat(4, 2).astype(np.uint8)
    index = np.arange(cells.size).reshape(cells.shape) % 1000
    inst = np.where(np.isin(cells, INSTANCE_IDS), cells * 1000 + index, cells).repeat(4, 1).repeat(4, 2)
    pred = ID_TO_TRAIN_ID[np.roll(gt, 1, axis=2)].astype(np.int64)
    noise = rng.random(pred.shape) < 0.1
    pred[noise] = rng.integers(0, NUM_CLASSES, noise.sum())
    pred[:, :3, :3] = IGNORE_INDEX  # a model never says "void", but a caller may pass the ignore value
    return pred, gt, inst.astype(np.int64)


def _numpy_counts(pred: np.ndarray, gt: np.ndarray, inst: np.ndarray, tol: int) -> metrics.Counts:
    total = metrics.Counts()
    for p, g, i in zip(TRAIN_ID_TO_ID[pred], gt, inst):
        total.add(metrics.frame_counts(p, g, i, tol))
    return total


@pytest.mark.parametrize("dense", [False, True], ids=["numpy-on-cpu", "dense-torch"])
@pytest.mark.parametrize("tol", [0, 2])
def test_evaluator_counts_equal_metrics_counts(dense, tol):
    ev = Evaluator(NUM_CLASSES, "cpu", boundary_tolerance=tol, instances=True)
    ev._use_numpy = not dense  # the dense path is what runs on a GPU
    batches = [_batch(1), _batch(2, n=1)]
    for pred, gt, inst in batches:
        ev.update(torch.from_numpy(pred), torch.from_numpy(ID_TO_TRAIN_ID[gt].astype(np.int64)), torch.from_numpy(inst))
    expected = metrics.Counts()
    for pred, gt, inst in batches:
        expected.add(_numpy_counts(pred, gt, inst, tol))
    got = ev.counts()
    # void ground-truth rows differ (trainIds cannot tell void labels apart) and are never used
    np.testing.assert_array_equal(got.conf[metrics.EVAL_IDS], expected.conf[metrics.EVAL_IDS])
    np.testing.assert_allclose(got.instances, expected.instances, rtol=1e-12)
    np.testing.assert_array_equal(got.boundary, expected.boundary)
    assert got.boundary_tolerance == expected.boundary_tolerance == tol
    a, b = ev.compute(), expected.scores()
    for key in ("miou", "iiou", "category_miou", "category_iiou", "mean_dice", "pixel_accuracy", "boundary_f1"):
        assert a[key] == pytest.approx(b[key], rel=1e-12), key
    for name, scores in a["classes"].items():
        assert scores == pytest.approx(b["classes"][name], rel=1e-12, nan_ok=True), name


def test_two_dimensional_update_and_reset():
    pred, gt, _ = _batch(3, n=1)
    ev = Evaluator(NUM_CLASSES, "cpu")
    ev.update(torch.from_numpy(pred[0]), torch.from_numpy(ID_TO_TRAIN_ID[gt[0]].astype(np.int64)))
    s = ev.compute()
    assert 0 < s["miou"] < 1 and 0 < s["boundary_f1"] < 1
    assert math.isnan(s["iiou"])  # instances=False
    ev.reset()
    assert ev.conf.sum() == 0 and math.isnan(ev.compute()["miou"])


def test_perfect_prediction_scores_one():
    _, gt, inst = _batch(4)
    target = torch.from_numpy(ID_TO_TRAIN_ID[gt].astype(np.int64))
    ev = Evaluator(NUM_CLASSES, "cpu", instances=True)
    ev.update(target.clone(), target, torch.from_numpy(inst))
    s = ev.compute()
    assert s["miou"] == 1.0 and s["mean_dice"] == 1.0 and s["pixel_accuracy"] == 1.0
    assert s["iiou"] == 1.0 and s["boundary_f1"] == 1.0


@pytest.mark.parametrize("dense", [False, True], ids=["numpy-on-cpu", "dense-torch"])
def test_accuracies_are_hand_computed(dense):
    """Pixel and mean class accuracy from the same confusion matrix as IoU (trainIds 0 road, 1 sidewalk)."""
    target = torch.tensor([[0, 0, 1, 1], [0, 0, 1, IGNORE_INDEX]])
    pred = torch.tensor([[0, 1, 1, 1], [0, 0, 0, 1]])
    # road: 3 right, 1 as sidewalk; sidewalk: 2 right, 1 as road; the ignored pixel is not counted
    ev = Evaluator(NUM_CLASSES, "cpu", boundary_tolerance=None)
    ev._use_numpy = not dense
    ev.update(pred, target)
    s = ev.compute()
    assert s["pixel_accuracy"] == pytest.approx(5 / 7)
    assert s["classes"]["road"]["accuracy"] == pytest.approx(3 / 4)
    assert s["classes"]["sidewalk"]["accuracy"] == pytest.approx(2 / 3)
    assert s["mean_class_accuracy"] == pytest.approx((3 / 4 + 2 / 3) / 2)
    assert s["classes"]["road"]["iou"] == pytest.approx(3 / 5)
    assert s["classes"]["sidewalk"]["iou"] == pytest.approx(2 / 4)
    table = metrics.confusion_json(ev.counts().conf)["counts"]
    assert table[0][:2] == [3, 1] and table[1][:2] == [1, 2] and sum(map(sum, table)) == 7


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_classes"):
        Evaluator(NUM_CLASSES + 1)
    ev = Evaluator(NUM_CLASSES, instances=True)
    pred, gt, _ = _batch(5)
    with pytest.raises(ValueError, match="instance_ids"):
        ev.update(torch.from_numpy(pred), torch.from_numpy(pred))
    with pytest.raises(ValueError, match="shape"):
        ev.update(torch.from_numpy(pred), torch.from_numpy(pred[:, :-1]))


def test_reduce_sums_over_the_process_group(tmp_path):
    """A one-process gloo group runs the all_reduce code path; the sum over one rank is the identity."""
    pred, gt, inst = _batch(6)
    ev = Evaluator(NUM_CLASSES, "cpu", instances=True)
    ev.update(torch.from_numpy(pred), torch.from_numpy(ID_TO_TRAIN_ID[gt].astype(np.int64)), torch.from_numpy(inst))
    before = ev.counts()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rdzv'}", rank=0, world_size=1)
    try:
        ev.reduce()
        ev.reduce()  # a second call must not add again
    finally:
        dist.destroy_process_group()
    after = ev.counts()
    np.testing.assert_array_equal(after.conf, before.conf)
    np.testing.assert_array_equal(after.boundary, before.boundary)
    np.testing.assert_array_equal(after.instances, before.instances)
