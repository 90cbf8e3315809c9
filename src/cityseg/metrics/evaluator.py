"""The one metric accumulator of training and ``cityseg evaluate --checkpoint``, on the device.

:class:`Evaluator` keeps the counts of :mod:`cityseg.metrics` (label-id confusion matrix,
weighted instance counts for iIoU, boundary counts for boundary F1) as tensors on the model's
device, sums them across DDP processes in :meth:`Evaluator.reduce`, and hands them to
:func:`cityseg.metrics.formulas.scores` in :meth:`Evaluator.compute`: one code turns counts into
numbers, so training's validation, ``evaluate --checkpoint`` and ``evaluate --pred-dir`` agree.

The counting here mirrors :func:`cityseg.metrics.counts.frame_counts` with dense torch operations
(the numpy one works on sparse pixel lists, which suits a CPU but not a GPU); the tests check
that both give the same counts. The only torch module of :mod:`cityseg.metrics`, so the package
does not import it: import it as ``from cityseg.metrics.evaluator import Evaluator``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn import functional as F

from cityseg.labels import CATEGORIES, IGNORE_INDEX, NUM_CLASSES, TRAIN_ID_TO_ID
from cityseg.metrics.boundary import DEFAULT_BOUNDARY_TOLERANCE, disk_offsets
from cityseg.metrics.counts import Counts, frame_counts
from cityseg.metrics.tables import (
    AVG_SIZE_OF_ID,
    CITYSCAPES,
    GT_INSTANCE_CATEGORY,
    INSTANCE_OFFSET,
    NUM_IDS,
    PRED_INSTANCE_CATEGORY,
    ScoreTable,
)

_L = NUM_IDS
_OFFSET = INSTANCE_OFFSET


class Evaluator:
    """Accumulates the counts of a dataset's scores over batches of trainId predictions.

    Args:
        num_classes: number of train classes; must be the class count of ``table``.
        device: where the counts live (the model's device).
        boundary_tolerance: boundary F1 matching distance in pixels; None skips boundary F1.
        instances: expect ``instance_ids`` in every :meth:`update` and report iIoU (Cityscapes only).
        table: what is scored (:func:`cityseg.metrics.tables.table_for` of the dataset); default the
            official Cityscapes table, whose confusion axes are label ids.

    Example::

        ev = Evaluator(NUM_CLASSES, device)
        for images, targets in loader:
            ev.update(model(images)["out"].argmax(1), targets)
        ev.reduce()
        scores = ev.compute()   # the dict of cityseg.metrics.formulas.scores
    """

    def __init__(
        self,
        num_classes: int = NUM_CLASSES,
        device: str | torch.device = "cpu",
        boundary_tolerance: int | None = DEFAULT_BOUNDARY_TOLERANCE,
        instances: bool = False,
        table: ScoreTable | None = None,
    ) -> None:
        self.table = table or CITYSCAPES
        if num_classes != self.table.num_classes:
            raise ValueError(f"Evaluator scores {self.table.num_classes} classes, got num_classes={num_classes}")
        if boundary_tolerance is not None and boundary_tolerance < 0:
            raise ValueError(f"boundary_tolerance must be >= 0 or None, got {boundary_tolerance}")
        if instances and not self.table.instance_classes:
            raise ValueError("instance scores (iIoU) are defined for the Cityscapes table only")
        self.device = torch.device(device)
        self.boundary_tolerance = boundary_tolerance
        self.instances = instances
        self.num_classes = num_classes
        dev = self.device
        # the lookup tables of the score table, as tensors on the device
        self._n = self.table.num_ids  # size of the confusion axes
        ids = torch.from_numpy(np.asarray(self.table.eval_ids, dtype=np.int64))
        self._train_to_id = ids.to(dev)
        self._is_eval = torch.zeros(self._n, dtype=torch.bool).index_fill_(0, ids, True).to(dev)
        self._train_of_id = torch.full((self._n,), -1, dtype=torch.int64).index_copy_(
            0, ids, torch.arange(num_classes)).to(dev)
        self._avg_size = torch.from_numpy(AVG_SIZE_OF_ID.copy()).to(dev)
        self._pred_cat = torch.from_numpy(PRED_INSTANCE_CATEGORY[:_L].astype(np.int64)).to(dev)
        self._gt_cat = torch.from_numpy(GT_INSTANCE_CATEGORY.astype(np.int64)).to(dev)
        self._offsets = disk_offsets(boundary_tolerance) if boundary_tolerance is not None else []
        # On the CPU the numpy counting of cityseg.metrics (sparse pixel lists) is ~50x faster than
        # these dense tensor operations; both follow one definition and are tested equal.
        # (the numpy kernels are built on the lookup tables of the Cityscapes table)
        self._use_numpy = self.device.type == "cpu" and self.table is CITYSCAPES
        self.reset()

    def reset(self) -> None:
        """Zero every count (start of a new evaluation)."""
        dev = self.device
        n, k = self._n, self.num_classes
        self.conf = torch.zeros(n, n, dtype=torch.int64, device=dev)
        self.instance_counts = torch.zeros(2, k + len(self.table.categories), dtype=torch.float64, device=dev)
        self.boundary = torch.zeros(4, k, dtype=torch.int64, device=dev)
        self._reduced = False

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor, instance_ids: torch.Tensor | None = None) -> None:
        """Add a batch.

        Args:
            pred: (N, H, W) integer predicted trainIds (values outside ``0..num_classes-1`` count
                as a void prediction).
            target: (N, H, W) integer trainIds, ``IGNORE_INDEX`` where not evaluated.
            instance_ids: (N, H, W) integer official instanceIds; required when ``instances``.
        """
        if pred.shape != target.shape:
            raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
        if pred.dim() == 2:
            pred, target = pred[None], target[None]
            instance_ids = instance_ids[None] if instance_ids is not None else None
        if self.instances and instance_ids is None:
            raise ValueError("Evaluator(instances=True) needs instance_ids in every update")
        if self._use_numpy:
            self._update_numpy(pred, target, instance_ids)
            return
        pred_ids = self._to_label_ids(pred.to(self.device))
        gt_ids = self._to_label_ids(target.to(self.device))
        n = self._n
        self.conf += torch.bincount((gt_ids * n + pred_ids).flatten(), minlength=n * n).view(n, n)
        if self.instances:
            self.instance_counts += self._instance_counts(pred_ids, instance_ids.to(self.device).long())
        if self.boundary_tolerance is not None:
            self.boundary += self._boundary_counts(pred_ids, gt_ids)

    def _update_numpy(self, pred: torch.Tensor, target: torch.Tensor, instance_ids: torch.Tensor | None) -> None:
        pred_np, gt_np = (_label_ids_numpy(t) for t in (pred, target))
        inst_np = instance_ids.cpu().numpy() if self.instances else None
        for j in range(pred_np.shape[0]):
            inst = inst_np[j] if inst_np is not None else None
            c = frame_counts(pred_np[j], gt_np[j], inst, self.boundary_tolerance)
            self.conf += torch.from_numpy(c.conf)
            if c.instances is not None:
                self.instance_counts += torch.from_numpy(c.instances)
            if c.boundary is not None:
                self.boundary += torch.from_numpy(c.boundary)

    def _to_label_ids(self, train_ids: torch.Tensor) -> torch.Tensor:
        """trainIds -> ids of the confusion axes (int64; Cityscapes: label ids); anything that is not
        a train class -> the table's void id (Cityscapes: 0, unlabeled)."""
        train_ids = train_ids.long()
        valid = (train_ids >= 0) & (train_ids < self.num_classes)
        return torch.where(valid, self._train_to_id[train_ids.clamp(0, self.num_classes - 1)], self.table.void_id)

    def _instance_counts(self, pred_ids: torch.Tensor, inst: torch.Tensor) -> torch.Tensor:
        """(2, NUM_CLASSES + K) weighted instance tp/fn, as :func:`cityseg.metrics.counts.instance_counts`."""
        out = torch.zeros_like(self.instance_counts)
        span = _L * _OFFSET  # instance ids of one frame lie in [0, span): keys stay apart per frame
        frame = torch.arange(inst.shape[0], device=self.device).view(-1, 1, 1).expand_as(inst)
        sel = inst > _OFFSET
        if not bool(sel.any()):
            return out
        ids = inst[sel]
        if int(ids.max()) >= span:
            raise ValueError(f"instance id {int(ids.max())} is not label_id * {_OFFSET} + index with label_id < {_L}")
        key = frame[sel] * span + ids
        label = ids // _OFFSET
        pred = pred_ids[sel]
        bins = inst.shape[0] * span
        size = torch.bincount(key, minlength=bins)
        hit = torch.bincount(key[pred == label], minlength=bins)
        cat_hit = torch.bincount(key[self._pred_cat[pred] == self._gt_cat[label]], minlength=bins)
        found = torch.nonzero(size).squeeze(1)
        inst_label = (found % span) // _OFFSET
        weight = self._avg_size[inst_label] / size[found].double()
        scored = ~torch.isnan(weight)
        found, inst_label, weight = found[scored], inst_label[scored], weight[scored]
        n, tp, cat_tp = size[found].double(), hit[found].double(), cat_hit[found].double()
        cls = self._train_of_id[inst_label]
        out[0, :NUM_CLASSES] = torch.bincount(cls, weights=tp * weight, minlength=NUM_CLASSES)
        out[1, :NUM_CLASSES] = torch.bincount(cls, weights=(n - tp) * weight, minlength=NUM_CLASSES)
        cat = self._gt_cat[inst_label]
        in_cat = cat >= 0
        k = len(CATEGORIES)
        out[0, NUM_CLASSES:] = torch.bincount(cat[in_cat], weights=(cat_tp * weight)[in_cat], minlength=k)
        out[1, NUM_CLASSES:] = torch.bincount(cat[in_cat], weights=((n - cat_tp) * weight)[in_cat], minlength=k)
        return out

    def _boundary_counts(self, pred_ids: torch.Tensor, gt_ids: torch.Tensor) -> torch.Tensor:
        """(4, NUM_CLASSES) boundary counts, the definition of :func:`cityseg.metrics.boundary.boundary_counts`."""
        valid = self._is_eval[gt_ids]
        edges = [self._boundary_labels(m, valid) for m in (pred_ids, gt_ids)]
        out = torch.zeros(4, self.num_classes, dtype=torch.int64, device=self.device)
        r = int(self.boundary_tolerance)
        h, w = gt_ids.shape[-2:]
        for row, (mine, theirs) in enumerate(((edges[0], edges[1]), (edges[1], edges[0]))):
            padded = F.pad(theirs, (r, r, r, r), value=-1)
            hit = torch.zeros_like(valid)
            for dy, dx in self._offsets:
                hit |= padded[:, r + dy : r + dy + h, r + dx : r + dx + w] == mine
            on = mine >= 0
            out[2 * row] = self._count_by_class(mine[on])
            out[2 * row + 1] = self._count_by_class(mine[hit & on])
        return out

    def _boundary_labels(self, ids: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Label id at boundary pixels of ``ids`` (a scored class with a differing scored 4-neighbour), else -1."""
        edge = torch.zeros_like(valid)
        for dim in (-1, -2):
            n = ids.shape[dim]
            a, b = ids.narrow(dim, 0, n - 1), ids.narrow(dim, 1, n - 1)
            differ = (a != b) & valid.narrow(dim, 0, n - 1) & valid.narrow(dim, 1, n - 1)
            edge.narrow(dim, 0, n - 1).logical_or_(differ)
            edge.narrow(dim, 1, n - 1).logical_or_(differ)
        edge &= self._is_eval[ids]
        return torch.where(edge, ids, -1)

    def _count_by_class(self, label_ids: torch.Tensor) -> torch.Tensor:
        return torch.bincount(self._train_of_id[label_ids], minlength=self.num_classes)

    def reduce(self) -> None:
        """Sum the counts over all DDP processes (no-op without torch.distributed). Call once."""
        if self._reduced or not (dist.is_available() and dist.is_initialized()):
            return
        for tensor in (self.conf, self.instance_counts, self.boundary):
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        self._reduced = True

    def counts(self) -> Counts:
        """The counts as numpy :class:`cityseg.metrics.counts.Counts` (iIoU/boundary parts None when off)."""
        return Counts(
            conf=self.conf.cpu().numpy(),
            instances=self.instance_counts.cpu().numpy() if self.instances else None,
            boundary=self.boundary.cpu().numpy() if self.boundary_tolerance is not None else None,
            boundary_tolerance=self.boundary_tolerance,
            table=self.table,
        )

    def compute(self) -> dict[str, Any]:
        """The scores dict of :func:`cityseg.metrics.formulas.scores` (NaN where undefined)."""
        return self.counts().scores()


def _label_ids_numpy(train_ids: torch.Tensor) -> np.ndarray:
    """trainIds tensor -> uint8 numpy label ids, anything not a train class -> 0 (void)."""
    arr = train_ids.detach().cpu().numpy()
    if arr.dtype != np.uint8:
        # IGNORE_INDEX is no train class; TRAIN_ID_TO_ID maps it (and every other non-class) to 0
        arr = np.where((arr >= 0) & (arr < NUM_CLASSES), arr, IGNORE_INDEX).astype(np.uint8)
    return TRAIN_ID_TO_ID[arr]
