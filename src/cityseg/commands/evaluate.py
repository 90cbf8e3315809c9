"""``cityseg evaluate``: official Cityscapes scores of prediction PNGs or of a checkpoint.

Two sources, one scoring code (:mod:`cityseg.metrics`):

* ``--pred-dir P --gt-dir G``: label-id PNGs matched one to one to the ground truth
  ``<frame>_gtFine_labelIds.png`` by their frame name, ``<frame>.png`` or ``<frame>_*.png``: on
  Cityscapes names (``<city>_<seq>_<frame>``) this is the official
  ``evalPixelLevelSemanticLabeling`` matching, and it also takes other names, such as the
  numeric stems of a prepared pairs tree. iIoU needs ``*_gtFine_instanceIds.png`` beside every
  ground truth and is skipped, with a note, when there are none. Scored by a pool of processes
  (decoding the PNGs is most of the work). This path never imports torch.
* ``--checkpoint CKPT --data D``: runs the model (whole image or sliding window, multi-scale
  and flip test-time augmentation) and scores it with the torch
  :class:`~cityseg.engine.evaluator.Evaluator`, the one training validates with.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

HELP = "score predictions (label-id PNGs or a checkpoint) with the official Cityscapes metrics"

GT_SUFFIX = "_gtFine_labelIds.png"
INSTANCE_SUFFIX = "_gtFine_instanceIds.png"
PRED_SUFFIX = "_leftImg8bit.png"  # what --save-pred writes after the frame name
#: A Cityscapes frame name, ``<city>_<seq>_<frame>``: --save-pred writes it under its city folder
CITYSCAPES_NAME = re.compile(r"^(.+)_(\d{6})_(\d{6})$")
# options that only make sense with --checkpoint (argparse attribute names)
_CHECKPOINT_FLAGS = ("data", "split", "mode", "crop", "stride", "scales", "flip", "save_pred", "set", "device")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--pred-dir", metavar="DIR", help="label-id prediction PNGs (searched recursively)")
    source.add_argument("--checkpoint", metavar="CKPT", help="cityseg checkpoint to run on --data")
    parser.add_argument("--gt-dir", metavar="DIR", help="with --pred-dir: ground truth, <frame>_gtFine_labelIds.png "
                        "(searched recursively), each scored against the one prediction <frame>.png or "
                        "<frame>_*.png; iIoU when *_gtFine_instanceIds.png lie beside them")
    parser.add_argument("--json", metavar="FILE", help="write the scores and the confusion matrix as JSON "
                        "(NaN as null)")
    parser.add_argument("--plots", metavar="DIR", help="write confusion.png (row-normalised) and iou.png")
    parser.add_argument("--boundary-tolerance", metavar="PX", type=int,
                        help="boundary F1 matching distance in pixels (default 2; with --checkpoint the "
                        "checkpoint's eval.boundary_tolerance); -1 skips boundary F1")
    parser.add_argument("--workers", metavar="N", type=int,
                        help="with --pred-dir: processes (default: the usable CPU cores); "
                        "with --checkpoint: DataLoader workers (default: data.workers)")
    model = parser.add_argument_group("with --checkpoint")
    model.add_argument("--data", metavar="DIR", help="Cityscapes-layout folder (default: the checkpoint's data.root, "
                       "else the synthetic data)")
    model.add_argument("--split", default=None, help="split to score (default: the checkpoint's data.val_split)")
    model.add_argument("--mode", choices=["whole", "sliding"], help="inference mode (default: eval.mode)")
    model.add_argument("--crop", metavar="WxH", help="sliding-window size (default: eval.crop_size)")
    model.add_argument("--stride", metavar="WxH", help="sliding-window step (default: eval.stride)")
    model.add_argument("--scales", metavar="S,S,...", help="multi-scale test-time augmentation, e.g. 0.75,1,1.25")
    model.add_argument("--flip", action="store_true", default=None, help="add horizontally flipped passes")
    model.add_argument("--save-pred", metavar="DIR",
                       help="write label-id PNGs for the benchmark server as DIR/<city>/<frame>_leftImg8bit.png "
                       "(DIR/<frame>_leftImg8bit.png for names not of the form <city>_<seq>_<frame>)")
    model.add_argument("--set", metavar="SECTION.KEY=VALUE", action="append", default=[],
                       help="override a value of the checkpoint's config (e.g. data.val_size=1024x512), repeatable")
    model.add_argument("--device", choices=["auto", "cpu", "cuda"], help="default: auto (cuda if any)")


def run(args: argparse.Namespace) -> int:
    from cityseg.errors import CitysegError

    if args.workers is not None and args.workers < 0:
        raise CitysegError(f"--workers {args.workers}: must be >= 0")
    if args.pred_dir is not None:
        if args.gt_dir is None:
            raise CitysegError("--pred-dir needs --gt-dir (the folder with *_gtFine_labelIds.png)")
        model_flags = [f for f in _CHECKPOINT_FLAGS if getattr(args, f)]
        if model_flags:
            raise CitysegError(f"--{model_flags[0].replace('_', '-')} applies to --checkpoint, not --pred-dir")
        from cityseg.metrics import DEFAULT_BOUNDARY_TOLERANCE

        tolerance = _tolerance(args, DEFAULT_BOUNDARY_TOLERANCE)
        counts, elapsed, n = evaluate_pred_dir(Path(args.pred_dir), Path(args.gt_dir), tolerance, args.workers)
    else:
        if args.gt_dir is not None:
            raise CitysegError("--gt-dir applies to --pred-dir; with --checkpoint give --data")
        counts, elapsed, n = evaluate_checkpoint(args)
    report(counts, args.json, args.plots)
    print(f"scored {n} frames in {elapsed:.1f} s", file=sys.stderr)
    return 0


def _tolerance(args: argparse.Namespace, default: int) -> int | None:
    tol = default if args.boundary_tolerance is None else args.boundary_tolerance
    return None if tol < 0 else tol


# --- prediction PNGs --------------------------------------------------------------------------


def find_frames(pred_dir: Path, gt_dir: Path) -> list[tuple[Path, Path, Path | None]]:
    """(prediction, labelIds, instanceIds or None) of every ground-truth frame under ``gt_dir``.

    A ground truth ``<frame>_gtFine_labelIds.png`` is scored against the one prediction under
    ``pred_dir`` named ``<frame>.png`` or ``<frame>_*.png`` (a prediction belongs to the longest
    frame name it starts with). On Cityscapes names this is the official script's
    ``<city>_<seq>_<frame>*.png``. Predictions that match no frame are ignored. instanceIds are
    None for every frame when no frame has one (iIoU is skipped, with a note).

    Raises:
        CitysegError: a folder is missing, there is no ground truth, two ground truths share a
            frame name, no prediction matches at all, a frame has no prediction or several, or
            some frames have an instanceIds map and others not.
    """
    from cityseg.errors import CitysegError

    for folder, flag in ((pred_dir, "--pred-dir"), (gt_dir, "--gt-dir")):
        if not folder.is_dir():
            raise CitysegError(f"{flag} {folder}: folder not found")
    gts = _ground_truth_by_frame(gt_dir)
    preds = _predictions_by_frame(pred_dir, gts)
    if not preds:
        example = next(iter(gts))
        raise CitysegError(
            f"--pred-dir {pred_dir}: no prediction matches a ground-truth frame of --gt-dir {gt_dir}; a frame "
            f"<frame>{GT_SUFFIX} needs the prediction <frame>.png or <frame>_*.png (e.g. {example}{PRED_SUFFIX})"
        )
    frames, missing = [], []
    for key, gt in gts.items():
        found = preds.get(key, [])
        if len(found) > 1:
            names = ", ".join(str(p) for p in sorted(found)[:3])
            raise CitysegError(f"{gt}: several predictions under --pred-dir {pred_dir} match {key}.png or "
                               f"{key}_*.png: {names}; keep one per frame")
        if not found:
            missing.append(gt)
        else:
            frames.append((found[0], gt))
    if missing:
        key = missing[0].name[: -len(GT_SUFFIX)]
        raise CitysegError(
            f"{missing[0]}: no prediction {key}.png or {key}_*.png under {pred_dir} ({len(missing)} of {len(gts)} "
            "frames have none); every ground-truth frame needs one"
        )
    return _with_instances(frames, gt_dir)


def _ground_truth_by_frame(gt_dir: Path) -> dict[str, Path]:
    """Frame name -> its ``*_gtFine_labelIds.png`` under ``gt_dir``, in path order."""
    from cityseg.errors import CitysegError

    gts: dict[str, Path] = {}
    for gt in sorted(_walk(gt_dir, GT_SUFFIX)):
        key = gt.name[: -len(GT_SUFFIX)]
        if key in gts:
            raise CitysegError(f"{gt}: frame {key} also at {gts[key]}; frame names under --gt-dir {gt_dir} must be "
                               "unique (score one split at a time)")
        gts[key] = gt
    if not gts:
        raise CitysegError(f"--gt-dir {gt_dir}: no *{GT_SUFFIX} files found (searched recursively)")
    return gts


def _predictions_by_frame(pred_dir: Path, frames: dict[str, Path]) -> dict[str, list[Path]]:
    """Frame name -> the ``.png`` files under ``pred_dir`` that belong to it (see :func:`find_frames`)."""
    preds: dict[str, list[Path]] = {}
    for path in _walk(pred_dir, ".png"):
        key = frame_of(path.name, frames)
        if key is not None:
            preds.setdefault(key, []).append(path)
    return preds


def frame_of(file_name: str, frames: dict[str, Path] | set[str]) -> str | None:
    """The longest frame name ``k`` in ``frames`` with ``file_name`` == ``k.png`` or ``k_*.png``, else None."""
    parts = file_name[: -len(".png")].split("_")
    for n in range(len(parts), 0, -1):
        key = "_".join(parts[:n])
        if key in frames:
            return key
    return None


def _with_instances(frames: list[tuple[Path, Path]], gt_dir: Path) -> list[tuple[Path, Path, Path | None]]:
    """Add the instanceIds map beside each ground truth: all of them, or None for all when there are none."""
    from cityseg.errors import CitysegError

    instances = [gt.with_name(gt.name[: -len(GT_SUFFIX)] + INSTANCE_SUFFIX) for _, gt in frames]
    present = [path.is_file() for path in instances]
    if not any(present):
        print(f"note: no *{INSTANCE_SUFFIX} files beside the ground truth in {gt_dir}: iIoU is not computed",
              file=sys.stderr)
        return [(pred, gt, None) for pred, gt in frames]
    if not all(present):
        absent = instances[present.index(False)]
        raise CitysegError(f"{absent}: instanceIds map not found ({sum(present)} of {len(frames)} frames have one); "
                           "iIoU needs one beside every *_gtFine_labelIds.png, or none to skip it")
    return [(pred, gt, inst) for (pred, gt), inst in zip(frames, instances, strict=True)]


def _walk(root: Path, suffix: str) -> list[Path]:
    # os.walk is several times faster than Path.rglob on big trees
    return [Path(d) / f for d, _, files in os.walk(root) for f in files if f.endswith(suffix)]


def read_id_map(path: Path, limit: int | None, what: str) -> Any:
    """(H, W) map of a single-channel PNG whose values must lie in ``0..limit`` (None: unchecked).

    Raises:
        CitysegError: missing or unreadable file, several channels, or a value outside the range.
    """
    from cityseg.errors import CitysegError
    from cityseg.utils import read_image

    arr = _decode_grey_png(path)
    if arr is None:  # anything unusual (palette, colour, low bit depth, corrupt): Pillow, and its errors
        arr = read_image(path)
    if arr.ndim != 2:
        raise CitysegError(f"{path}: {what} must be a single-channel PNG, this one has {arr.shape[2]} channels")
    if limit is not None:
        high = int(arr.max())
        low = int(arr.min()) if arr.dtype.kind == "i" else 0  # unsigned PNG data cannot be negative
        if low < 0 or high > limit:
            bad = high if high > limit else low
            raise CitysegError(f"{path}: value {bad} is not a valid {what} (valid: 0..{limit})")
    return arr


def _decode_grey_png(path: Path) -> Any:
    """8/16-bit greyscale PNG, or None for anything else.

    Decoding is most of the work of ``--pred-dir``. :func:`cityseg.data.png.decode_grey`
    (libdeflate + a run-aware unfilter) takes ~0.5 ms for an official 2048x1024 labelIds map
    and ~0.9 ms for the 16-bit instanceIds map, where libspng takes ~6 and ~12.5 and Pillow ~8
    and ~23 (benchmarks/bench_evaluate.py). Where its C extension is not built, pyspng
    (libspng) decodes the same files; pyspng expands palette PNGs to RGB and returns 16-bit grey
    as grey+alpha, so only plain greyscale files go to it, and the grey channel is kept.
    """
    import numpy as np

    from cityseg.data import png

    if png.available():
        return png.read_grey(path)  # None: not a plain greyscale file, which pyspng would not take either
    try:
        import pyspng
    except ImportError:  # optional speed-up; Pillow decodes the same files
        return None
    try:
        data = path.read_bytes()
    except OSError:
        return None  # Pillow's reader raises the CitysegError
    # IHDR is the first chunk: bytes 24 and 25 are the bit depth and colour type (0: greyscale)
    if data[:8] != png.SIGNATURE or data[12:16] != b"IHDR" or data[25] != 0 or data[24] not in (8, 16):
        return None
    try:
        arr = pyspng.load(data)
    except RuntimeError:
        return None
    return np.ascontiguousarray(arr[..., 0]) if arr.ndim == 3 else arr


def score_frame(job: tuple[Path, Path, Path | None, int | None]) -> Any:
    """Counts of one frame (runs in a worker process); no iIoU counts when the instanceIds path
    is None. CitysegError names the bad file."""
    from cityseg import metrics
    from cityseg.errors import CitysegError
    from cityseg.labels import MAX_LABEL_ID

    pred_path, gt_path, inst_path, tolerance = job
    gt = read_id_map(gt_path, MAX_LABEL_ID, "Cityscapes label id")
    pred = read_id_map(pred_path, MAX_LABEL_ID, "Cityscapes label id")
    if pred.shape != gt.shape:
        raise CitysegError(
            f"{pred_path}: prediction is {pred.shape[1]}x{pred.shape[0]}, its ground truth {gt_path.name} is "
            f"{gt.shape[1]}x{gt.shape[0]} (WxH); predictions must have the ground truth's size"
        )
    inst = None
    if inst_path is not None:
        inst = read_id_map(inst_path, None, "instanceId")  # instance_counts checks the ids it uses
        if inst.shape != gt.shape:
            raise CitysegError(f"{inst_path}: instanceIds map is {inst.shape[1]}x{inst.shape[0]}, {gt_path.name} is "
                               f"{gt.shape[1]}x{gt.shape[0]}")
    try:
        return metrics.frame_counts(pred, gt, inst, tolerance)
    except ValueError as exc:  # the only one frame_counts raises: an instance id that names no label
        raise CitysegError(f"{inst_path}: {exc}") from None


def evaluate_pred_dir(
    pred_dir: Path, gt_dir: Path, tolerance: int | None, workers: int | None = None
) -> tuple[Any, float, int]:
    """Score every ground-truth frame under ``gt_dir`` against its prediction under ``pred_dir``.

    Returns:
        (summed :class:`cityseg.metrics.Counts`, seconds, number of frames).
    """
    from cityseg.metrics import Counts

    start = time.perf_counter()
    frames = find_frames(pred_dir, gt_dir)
    jobs = [(p, g, i, tolerance) for p, g, i in frames]
    workers = min(workers or _usable_cores(), len(jobs))
    keep_freed_memory()
    total = Counts()
    with _progress(len(jobs)) as bar:
        if workers <= 1:
            for job in jobs:
                total.add(score_frame(job))
                bar.update()
        else:
            import multiprocessing

            # Ordered imap, one frame per task: balanced across processes, and the sums are added
            # in frame order, so repeated runs give identical floats.
            with multiprocessing.get_context().Pool(workers, initializer=keep_freed_memory) as pool:
                for counts in pool.imap(score_frame, jobs, chunksize=1):
                    total.add(counts)
                    bar.update()
    return total, time.perf_counter() - start, len(jobs)


def keep_freed_memory() -> None:
    """Ask glibc to keep freed memory in the process instead of handing it back to the kernel.

    Every frame allocates the same multi-megabyte arrays again (decoded maps, keys, masks). By
    default glibc returns such blocks to the kernel when they are freed, and the next frame pays
    a page fault (and a page of zeros from the kernel) for every 4 KiB again: 15-25% of the run
    time went to system time that way. No-op where the C library is not glibc.
    """
    import ctypes

    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    mallopt(m_mmap_threshold, 32 << 20)  # blocks up to 32 MiB (glibc's maximum) come from the heap...
    mallopt(m_trim_threshold, 1 << 30)  # ...which is not trimmed below 1 GiB of free space


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _progress(total: int) -> Any:
    from tqdm import tqdm

    # disable=None: no bar when stderr is not a terminal (logs, benchmarks)
    return tqdm(total=total, unit="frame", desc="evaluate", disable=None, file=sys.stderr)


# --- checkpoint -------------------------------------------------------------------------------


def evaluate_checkpoint(args: argparse.Namespace) -> tuple[Any, float, int]:
    """Run the checkpoint's model on ``--data``/``--split`` and score it; returns (Counts, seconds, frames)."""
    import torch
    from torch.nn import functional as F

    from cityseg.engine.checkpoint import load_model
    from cityseg.engine.evaluator import Evaluator
    from cityseg.inference.predict import predict_logits
    from cityseg.labels import NUM_CLASSES

    device = _device(args.device)
    model, cfg = load_model(args.checkpoint, device)
    cfg = _apply_options(cfg, args)
    dataset, with_instances = _dataset(cfg)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=1, num_workers=cfg.data.workers if args.workers is None else args.workers
    )
    evaluator = Evaluator(
        NUM_CLASSES, device, boundary_tolerance=_tolerance(args, cfg.eval.boundary_tolerance),
        instances=with_instances,
    )
    infer = _inference_options(cfg)
    start = time.perf_counter()
    with torch.inference_mode(), _progress(len(dataset)) as bar:
        for index, item in enumerate(loader):
            image = item["image"].to(device, non_blocking=True).float()
            target = item["mask"].to(device)
            probs = predict_logits(model, image, **infer)
            if probs.shape[-2:] != target.shape[-2:]:  # data.val_size: scored at the label's size
                probs = F.interpolate(probs.float(), size=target.shape[-2:], mode="bilinear", align_corners=False)
            pred = probs.argmax(1)
            instance_ids = item["instance_ids"].to(device) if "instance_ids" in item else None
            evaluator.update(pred, target, instance_ids)
            if args.save_pred:
                _save_prediction(pred[0], Path(args.save_pred), dataset.name(index))
            bar.update()
    evaluator.reduce()
    return evaluator.counts(), time.perf_counter() - start, len(dataset)


def _device(kind: str | None) -> Any:
    import torch

    from cityseg.errors import CitysegError

    if kind == "cuda" and not torch.cuda.is_available():
        raise CitysegError("--device cuda: no CUDA device is available (use --device cpu or auto)")
    if kind in (None, "auto"):
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(kind)


def _apply_options(cfg: Any, args: argparse.Namespace) -> Any:
    """The checkpoint's config with ``--set`` and the inference flags applied."""
    from cityseg.config import apply_overrides, config_from_dict
    from cityseg.utils import parse_scales, parse_size

    if args.set:
        cfg = config_from_dict(apply_overrides(cfg.to_dict(), args.set), name=cfg.name)
    if args.mode:
        cfg.eval.mode = args.mode
    if args.crop:
        parse_size(args.crop, "--crop")
        cfg.eval.crop_size = args.crop
    if args.stride:
        parse_size(args.stride, "--stride")
        cfg.eval.stride = args.stride
    if args.scales:
        cfg.eval.scales = parse_scales(args.scales)
    if args.flip:
        cfg.eval.flip = True
    if args.data:
        cfg.data.root = str(args.data)
    if args.split:
        cfg.data.val_split = args.split
    return cfg


def _inference_options(cfg: Any) -> dict[str, Any]:
    from cityseg.utils import parse_size

    return {
        "mode": cfg.eval.mode,
        "crop": parse_size(cfg.eval.crop_size, "eval.crop_size"),
        "stride": parse_size(cfg.eval.stride, "eval.stride"),
        "scales": list(cfg.eval.scales),
        "flip": bool(cfg.eval.flip),
    }


def _dataset(cfg: Any) -> tuple[Any, bool]:
    """(the split as a CityscapesDataset, whether it has instanceIds): iIoU when every frame has one."""
    from cityseg.data.dataset import CityscapesDataset
    from cityseg.data.transforms import build_transforms

    root = cfg.data.root
    if root is None:
        from cityseg.data.synthetic import ensure_default_data
        from cityseg.utils import parse_size

        size = parse_size(cfg.data.synth_size, "data.synth_size")
        root = ensure_default_data(cfg.data.synth_train, cfg.data.synth_val, size, cfg.train.seed)
    # official layout: gtFine/<split>/<city>/<frame>_gtFine_instanceIds.png; CityscapesDataset
    # names any frame that lacks one when asked for instances
    with_instances = any((Path(root) / "gtFine" / cfg.data.val_split).glob(f"*/*{INSTANCE_SUFFIX}"))
    if not with_instances:
        print(f"note: no *{INSTANCE_SUFFIX} files in {root}: iIoU is not computed", file=sys.stderr)
    transform = build_transforms(cfg.data, train=False)
    dataset = CityscapesDataset(root, cfg.data.val_split, transform=transform, with_instances=with_instances)
    return dataset, with_instances


def _save_prediction(pred: Any, out_dir: Path, name: str) -> None:
    """Write trainIds (H, W) as official label ids to :func:`prediction_path`."""
    from cityseg.labels import train_ids_to_label_ids
    from cityseg.utils import save_png

    ids = train_ids_to_label_ids(pred.to("cpu").numpy().astype("uint8"))
    save_png(ids, prediction_path(out_dir, name))


def prediction_path(out_dir: Path, name: str) -> Path:
    """``out_dir/<city>/<name>_leftImg8bit.png`` for a Cityscapes name ``<city>_<seq>_<frame>``
    (the benchmark server's layout), else ``out_dir/<name>_leftImg8bit.png``."""
    match = CITYSCAPES_NAME.match(name)
    folder = out_dir / match.group(1) if match else out_dir
    return folder / f"{name}{PRED_SUFFIX}"


# --- output -----------------------------------------------------------------------------------


def report(counts: Any, json_path: str | None, plots_dir: str | None) -> dict[str, Any]:
    """Print the table; write the JSON (the scores and :func:`cityseg.metrics.confusion_json`) and
    plots when asked. Returns the scores."""
    import json

    from cityseg import metrics
    from cityseg.utils import atomic_path

    result = counts.scores()
    print(metrics.format_table(result, counts.boundary_tolerance))
    if json_path:
        data = {**metrics.json_ready(result), "confusion_matrix": metrics.confusion_json(counts.conf)}
        with atomic_path(json_path) as tmp:
            tmp.write_text(json.dumps(data, indent=2) + "\n")
    if plots_dir:
        write_plots(counts.conf, result, Path(plots_dir))
    return result


def write_plots(conf: Any, result: dict[str, Any], out_dir: Path) -> list[Path]:
    """``confusion.png``: rows normalised to 1 (last column: predicted as void); ``iou.png``: class IoU bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from cityseg import metrics
    from cityseg.labels import CLASS_NAMES
    from cityseg.utils import atomic_path

    table = metrics.train_confusion(conf).astype(np.float64)
    rows = table.sum(1, keepdims=True)
    norm = np.divide(table, rows, out=np.full_like(table, np.nan), where=rows > 0)
    fig, ax = plt.subplots(figsize=(10, 8.5), dpi=100)
    im = ax.imshow(norm, cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(len(CLASS_NAMES) + 1), [*CLASS_NAMES, "(void)"], rotation=90)
    ax.set_yticks(range(len(CLASS_NAMES)), CLASS_NAMES)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    ax.set_title("confusion matrix (each row sums to 1)")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    paths = [out_dir / "confusion.png", out_dir / "iou.png"]
    _save_figure(fig, paths[0], atomic_path)
    ious = [result["classes"][n]["iou"] for n in CLASS_NAMES]
    fig, ax = plt.subplots(figsize=(9, 6), dpi=100)
    ax.barh(range(len(CLASS_NAMES)), [0 if v != v else v for v in ious], color="tab:blue")
    ax.set_yticks(range(len(CLASS_NAMES)), CLASS_NAMES)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("IoU")
    ax.set_title(f"class IoU (mIoU {result['miou']:.3f})")
    ax.axvline(result["miou"], color="k", linestyle="--", linewidth=1)
    fig.tight_layout()
    _save_figure(fig, paths[1], atomic_path)
    return paths


def _save_figure(fig: Any, path: Path, atomic_path: Any) -> None:
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
