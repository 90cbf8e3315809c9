"""``cityseg report``: one self-contained HTML page about a run folder or a sweep folder.

The page needs nothing but itself: pictures are inlined as ``data:image/png;base64,`` URIs, the
style sheet and the one small script are inline, and a Content-Security-Policy forbids the
browser to load anything else. Every piece of text from the folder is escaped with
:func:`html.escape`.

A run folder (``cityseg train --out``) gives: a summary of the best epoch, the training curves,
the per-class IoU/Dice of the best epoch (table and bar chart), the confusion matrix when one was
saved beside the run (``cityseg evaluate --json``/``--plots`` into the folder), the prediction
panels, per-epoch metrics with timing and throughput, the checkpoints and the resolved config. A
sweep folder (``cityseg sweep --out``) gives the trials table, its plots, the best trial's curves
and ``best.yaml``. Nothing is made up: what the folder lacks is said so on the page.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from cityseg.errors import CitysegError
from cityseg.utils import atomic_path

#: The report's file name inside the folder (the default of ``cityseg report``).
REPORT_NAME = "report.html"
#: What a folder must hold to be taken for a run (any one of them) or for a sweep.
RUN_MARKERS = ("metrics.jsonl", "config.yaml")
SWEEP_MARKERS = ("trials.csv", "best.yaml", "study.db")
#: Folders of a run never searched for pictures or scores (large or binary).
SKIP_DIRS = {"checkpoints", "tb", "trials", "__pycache__"}
#: Pictures inlined at most per section (a folder of thousands of predictions stays a readable page).
MAX_PICTURES = 12
#: Keys of an epoch record read as images per second, when training logged one.
THROUGHPUT_KEYS = ("images_per_s", "img_per_s", "images_per_second", "throughput")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

WHAT_A_RUN_HOLDS = (
    "a run folder (cityseg train --out) holds config.yaml and metrics.jsonl (plus curves.png, panels.png, "
    "checkpoints/); a sweep folder (cityseg sweep --out) holds trials.csv and best.yaml"
)

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2rem auto; max-width: 1200px;
       padding: 0 1rem; color: #222; line-height: 1.4; }
h1 { font-size: 1.6rem; margin-bottom: 0.2rem; } h2 { border-bottom: 1px solid #ccc; margin-top: 2.2rem; }
.meta { color: #666; font-size: 0.9rem; }
table { border-collapse: collapse; margin: 0.8rem 0; font-size: 0.85rem; } .scroll { overflow-x: auto; }
th, td { border: 1px solid #ddd; padding: 0.2rem 0.5rem; text-align: right; }
th { background: #f3f3f3; } td.text, th.text { text-align: left; }
tr.best td { background: #fff6d5; font-weight: 600; }
.swatch { display: inline-block; width: 0.9em; height: 0.9em; border: 1px solid #555; margin-right: 0.4em;
          vertical-align: -0.1em; }
.note { background: #f5f7fa; border-left: 4px solid #8aa; padding: 0.5rem 0.8rem; }
figure { margin: 1rem 0; } figcaption { color: #555; font-size: 0.85rem; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
pre { background: #f7f7f7; padding: 0.8rem; overflow-x: auto; font-size: 0.8rem; }
"""

# Counts the pictures that decoded, for a look with a headless browser (body[data-images-loaded]).
_SCRIPT = """
window.addEventListener("load", function () {
  var images = document.images, ok = 0;
  for (var i = 0; i < images.length; i++) { if (images[i].complete && images[i].naturalWidth > 0) { ok++; } }
  document.body.setAttribute("data-images-loaded", ok + "/" + images.length);
});
"""

_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"


# --- small HTML pieces -------------------------------------------------------------------------


def esc(value: Any) -> str:
    """Any value as escaped HTML text (quotes too, so it is safe inside attributes)."""
    return html.escape(str(value), quote=True)


def fmt(value: Any, digits: int = 4) -> str:
    """A cell's text: floats to ``digits`` significant digits, None/NaN as an en dash."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "\u2013"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e5 else f"{value:,.0f}"
    return str(value)


def table(header: Sequence[str], rows: Iterable[Sequence[Any]], table_id: str, best_row: int | None = None,
          text_columns: Sequence[int] = (0,)) -> str:
    """An HTML table; cells are escaped unless given as :class:`Raw`; row ``best_row`` highlighted."""

    def cell(tag: str, j: int, value: Any) -> str:
        klass = ' class="text"' if j in text_columns else ""
        return f"<{tag}{klass}>{value.html if isinstance(value, Raw) else esc(fmt(value))}</{tag}>"

    head = "".join(cell("th", j, h) for j, h in enumerate(header))
    body = []
    for i, row in enumerate(rows):
        klass = ' class="best"' if i == best_row else ""
        body.append(f"<tr{klass}>" + "".join(cell("td", j, v) for j, v in enumerate(row)) + "</tr>")
    return (f'<div class="scroll"><table id="{esc(table_id)}"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


class Raw:
    """A table cell that is already HTML (built from escaped parts)."""

    def __init__(self, html_text: str) -> None:
        self.html = html_text


def note(text: str) -> str:
    """A grey box of escaped text: what the folder lacks, how numbers were derived."""
    return f'<p class="note">{esc(text)}</p>'


def png_bytes_ok(data: bytes) -> bool:
    """True when ``data`` is a PNG Pillow can decode (a half-written or corrupt file is not inlined)."""
    if not data.startswith(PNG_SIGNATURE):
        return False
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
        return True
    except Exception:  # Pillow raises many types for broken files
        return False


def figure(data: bytes, alt: str, caption: str) -> str:
    """An inlined PNG (``data:image/png;base64,...``) with its caption."""
    uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    return f'<figure><img src="{uri}" alt="{esc(alt)}"><figcaption>{esc(caption)}</figcaption></figure>'


def png_figure(path: Path, caption: str, root: Path) -> str:
    """:func:`figure` of a PNG file of the folder, or a note when it cannot be read or decoded."""
    name = _rel(path, root)
    try:
        data = path.read_bytes()
    except OSError as exc:
        return note(f"{name}: cannot be read ({exc.strerror or exc})")
    if not png_bytes_ok(data):
        return note(f"{name}: not a readable PNG (half-written or damaged); not shown")
    return figure(data, alt=name, caption=caption or name)


def drawn_figure(draw: Callable[[Path], Any], alt: str, caption: str) -> str:
    """A picture drawn now by ``draw(path)`` (a :mod:`cityseg.viz` function) into a temporary file, inlined."""
    with tempfile.TemporaryDirectory(prefix="cityseg-report-") as tmp:
        path = Path(tmp) / "figure.png"
        draw(path)
        return figure(path.read_bytes(), alt=alt, caption=caption)


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def files_under(root: Path, pattern: str = "*.png", exclude: Iterable[Path] = ()) -> list[Path]:
    """Files under ``root`` matching ``pattern``, sorted, outside :data:`SKIP_DIRS` and hidden folders."""
    excluded = {p.resolve() for p in exclude}
    found = []
    for path in sorted(root.rglob(pattern)):
        parts = path.relative_to(root).parts[:-1]
        if any(p in SKIP_DIRS or p.startswith(".") for p in parts) or path.name.startswith("."):
            continue
        if path.is_file() and path.resolve() not in excluded:
            found.append(path)
    return found


def picture_list(paths: list[Path], root: Path, what: str) -> str:
    """Figures of up to :data:`MAX_PICTURES` PNGs, with a note of how many more there are."""
    parts = [png_figure(p, _rel(p, root), root) for p in paths[:MAX_PICTURES]]
    if len(paths) > MAX_PICTURES:
        parts.append(note(f"{len(paths) - MAX_PICTURES} more {what} in the folder are not shown"))
    return "\n".join(parts)


def read_text(path: Path) -> str:
    """A text file of the folder (undecodable bytes replaced), or CitysegError naming it."""
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise CitysegError(f"{path}: cannot read ({exc.strerror or exc})") from None


def read_yaml_text(text: str) -> dict[str, Any]:
    """The mapping of a YAML text, or {} when it is not one (the page still shows the text)."""
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def page(title: str, subtitle: str, sections: list[tuple[str, str, str]]) -> str:
    """The whole document: ``sections`` are ``(id, heading, body html)`` (the section's element id is
    ``s-<id>``, tables keep the plain ids), with a table of contents."""
    toc = " &middot; ".join(f'<a href="#s-{esc(sid)}">{esc(heading)}</a>' for sid, heading, _ in sections)
    body = "\n".join(f'<section id="s-{esc(sid)}"><h2>{esc(heading)}</h2>\n{html_body}</section>'
                     for sid, heading, html_body in sections)  # fmt: skip
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{esc(title)}</title>\n<style>{_STYLE}</style>\n<script>{_SCRIPT}</script>\n</head>\n<body>\n"
        f"<h1>{esc(title)}</h1>\n<p class=\"meta\">{esc(subtitle)}</p>\n<nav>{toc}</nav>\n{body}\n</body>\n</html>\n"
    )


# --- which kind of folder ----------------------------------------------------------------------


def folder_kind(folder: Path) -> str:
    """``"sweep"`` or ``"run"``; CitysegError naming the folder and what a run folder holds otherwise."""
    if not folder.exists():
        raise CitysegError(f"{folder}: no such folder; {WHAT_A_RUN_HOLDS}")
    if not folder.is_dir():
        raise CitysegError(f"{folder}: not a folder; {WHAT_A_RUN_HOLDS}")
    if any((folder / name).is_file() for name in SWEEP_MARKERS):
        return "sweep"
    if any((folder / name).is_file() for name in RUN_MARKERS):
        return "run"
    what = "is empty" if not any(folder.iterdir()) else "is neither a run folder nor a sweep folder"
    raise CitysegError(f"{folder}: {what}; {WHAT_A_RUN_HOLDS}")


def build_report(folder: str | os.PathLike) -> str:
    """The HTML text of the report on ``folder`` (a run or a sweep folder)."""
    folder = Path(folder)
    kind = folder_kind(folder)
    return sweep_report(folder) if kind == "sweep" else run_report(folder)


def write_report(folder: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Write the report of ``folder`` to ``out`` (default ``folder/report.html``) atomically; return its path."""
    text = build_report(folder)
    out = Path(out) if out is not None else Path(folder) / REPORT_NAME
    with atomic_path(out) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return out


def _generated(folder: Path) -> str:
    return f"{folder.resolve()} \u2013 report written {time.strftime('%Y-%m-%d %H:%M:%S %Z')} by cityseg report"


# --- a training run ------------------------------------------------------------------------------


def best_record(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The validated epoch with the highest ``val_miou`` (the first of equals, as training picks it)."""
    best = None
    for r in records:
        v = r.get("val_miou")
        if isinstance(v, (int, float)) and math.isfinite(v) and (best is None or v > best["val_miou"]):
            best = r
    return best


def scalar_keys(records: list[dict[str, Any]]) -> list[str]:
    """The keys of numeric (or null) values in the records, in the order they first appear."""
    keys: list[str] = []
    for r in records:
        for k, v in r.items():
            if k not in keys and (v is None or isinstance(v, (int, float))):
                keys.append(k)
    return keys


def dice_of_iou(iou: float | None) -> float | None:
    """Dice of one class from its IoU over the same confusion matrix: D = 2 J / (1 + J)."""
    if iou is None or not math.isfinite(iou):
        return None
    return 2 * iou / (1 + iou)


def run_dataset(cfg: dict[str, Any]) -> Any:
    """The :class:`~cityseg.datasets.DatasetSpec` of a run's config (Cityscapes when it names none or
    an unreadable one: a report shows what it can)."""
    from cityseg.datasets import load_dataset
    from cityseg.errors import CitysegError

    try:
        return load_dataset(cfg.get("dataset") or "cityscapes")
    except CitysegError:
        return load_dataset("cityscapes")


def class_swatch(name: str, spec: Any = None) -> Raw:
    """The class name with its colour in the dataset ``spec`` (None: Cityscapes; no colour for names
    outside the table)."""
    spec = spec or run_dataset({})
    if name in spec.class_names:
        r, g, b = (int(c) for c in spec.palette[spec.class_names.index(name)])
        return Raw(f'<span class="swatch" style="background: rgb({r},{g},{b})"></span>{esc(name)}')
    return Raw(esc(name))


def summary_section(records: list[dict[str, Any]], best: dict[str, Any] | None, cfg: dict[str, Any]) -> str:
    """Key figures of the run: epochs, best epoch and its scores, last epoch."""
    if not records:
        return note("metrics.jsonl holds no epoch yet: the run has not finished its first epoch")
    last = records[-1]
    train_cfg = cfg.get("train") if isinstance(cfg.get("train"), dict) else {}
    rows: list[tuple[str, Any]] = [
        ("epochs recorded", len(records)),
        ("last epoch", last.get("epoch")),
        ("epochs planned (train.epochs)", train_cfg.get("epochs")),
        ("optimiser steps", last.get("step")),
    ]
    if best is None:
        rows.append(("best epoch", "no validated epoch yet"))
    else:
        rows.append(("best epoch (highest val mIoU)", best.get("epoch")))
        for key in ("val_miou", "val_dice", "val_pixel_accuracy", "val_mean_class_accuracy", "val_boundary_f1",
                    "val_loss", "train_loss"):  # fmt: skip
            if key in best:
                rows.append((f"{key} at the best epoch", best[key]))
    if last is not best:
        rows += [(f"{k} at the last epoch", last[k]) for k in ("val_miou", "train_loss") if k in last]
    return table(["", "value"], rows, "summary")


def curves_section(folder: Path, metrics_path: Path, records: list[dict[str, Any]]) -> str:
    """``curves.png`` inlined; drawn now from ``metrics.jsonl`` when the run has none."""
    curves = folder / "curves.png"
    if curves.is_file():
        return png_figure(curves, "curves.png: losses, validation mIoU and Dice, learning rate by epoch", folder)
    if not records:
        return note("no curves: no epoch recorded yet")
    from cityseg.viz import plot_curves

    return drawn_figure(lambda p: plot_curves(metrics_path, p), "training curves",
                        "training curves, drawn from metrics.jsonl (the run folder has no curves.png)")  # fmt: skip


def class_section(records: list[dict[str, Any]], best: dict[str, Any] | None, spec: Any = None) -> str:
    """Per-class IoU and Dice of the best epoch (table and bar chart) in the classes of ``spec``."""
    if best is None:
        return note("no validated epoch yet: no per-class scores")
    ious = best.get("iou")
    if not isinstance(ious, dict) or not ious:
        return note(f"epoch {best.get('epoch')} recorded no per-class IoU (no 'iou' key in metrics.jsonl)")
    dices = best.get("dice") if isinstance(best.get("dice"), dict) else None
    last = records[-1] if records[-1] is not best and isinstance(records[-1].get("iou"), dict) else None
    header = ["class", f"IoU (epoch {best['epoch']})", f"Dice (epoch {best['epoch']})"]
    if last is not None:
        header.append(f"IoU (last epoch, {last['epoch']})")
    rows = []
    for name, iou in ious.items():
        iou = iou if isinstance(iou, (int, float)) else None
        dice = dices.get(name) if dices is not None else dice_of_iou(iou)
        row = [class_swatch(str(name), spec), iou, dice]
        if last is not None:
            row.append(last["iou"].get(name))
        rows.append(row)
    parts = [table(header, rows, "per-class")]
    if dices is None:
        parts.append(note("Dice per class is computed from the logged IoU, D = 2 IoU / (1 + IoU), which holds "
                          "exactly for one confusion matrix; an en dash marks a class absent from the validation "
                          "data and never predicted."))  # fmt: skip
    parts.append(class_chart(ious, best["epoch"], spec))
    return "\n".join(parts)


def class_chart(ious: dict[str, Any], epoch: Any, spec: Any = None) -> str:
    """:func:`cityseg.viz.plot_class_iou` of the per-class IoU, when the names are the classes of the
    run's dataset ``spec`` (None: Cityscapes)."""
    spec = spec or run_dataset({})
    if not any(name in spec.class_names for name in ious):
        return note(f"no bar chart: the per-class names are not the classes of {spec.name}")
    import numpy as np

    from cityseg.viz import plot_class_iou

    values = np.array([_float(ious.get(name)) for name in spec.class_names])
    return drawn_figure(lambda p: plot_class_iou(values, p, spec), "per-class IoU", f"per-class IoU at epoch {epoch}")


def _float(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else float("nan")


def find_confusions(folder: Path) -> tuple[list[Path], list[Path]]:
    """JSON files holding a ``confusion_matrix`` (``cityseg evaluate --json``) and ``confusion*.png`` files."""
    jsons = []
    for path in files_under(folder, "*.json"):
        if path.stat().st_size > 50_000_000:
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and isinstance(data.get("confusion_matrix"), dict):
            jsons.append(path)
    return jsons, files_under(folder, "confusion*.png")


def confusion_section(folder: Path, jsons: list[Path], pngs: list[Path]) -> str:
    """The saved confusion matrices (drawn from the JSON counts, or the PNGs), or a note that there is none."""
    if not jsons and not pngs:
        return note(
            "This run folder holds no confusion matrix: cityseg train keeps only its per-class IoU. "
            f"To add one: cityseg evaluate --checkpoint {folder / 'checkpoints' / 'best.pt'} "
            f"--json {folder / 'eval' / 'scores.json'} --plots {folder / 'eval'}, then cityseg report {folder} again."
        )
    parts = []
    for path in jsons:
        parts.append(confusion_from_json(path, folder))
    parts.append(picture_list(pngs, folder, "confusion pictures"))
    return "\n".join(parts)


def confusion_from_json(path: Path, root: Path) -> str:
    """The row-normalised heatmap of a ``confusion_matrix`` of ``cityseg evaluate --json``."""
    import numpy as np

    from cityseg.viz import plot_confusion

    name = _rel(path, root)
    try:
        counts = np.asarray(json.loads(path.read_text(encoding="utf-8"))["confusion_matrix"]["counts"], dtype=np.int64)
    except (KeyError, TypeError, ValueError):
        return note(f"{name}: its confusion_matrix has no table of counts; not shown")
    try:
        return drawn_figure(lambda p: plot_confusion(counts, p), f"confusion matrix of {name}",
                            f"confusion matrix from {name} (rows: ground truth, % of each class)")  # fmt: skip
    except ValueError as exc:
        return note(f"{name}: {exc}; not shown")


def epochs_section(records: list[dict[str, Any]], best: dict[str, Any] | None) -> str:
    """Every epoch's scalar values, the best epoch highlighted."""
    if not records:
        return note("no epoch recorded yet")
    keys = scalar_keys(records)
    rows = [[r.get(k) for k in keys] for r in records]
    best_row = records.index(best) if best is not None else None
    return table(keys, rows, "epochs", best_row=best_row, text_columns=())


def timing_section(records: list[dict[str, Any]], cfg: dict[str, Any]) -> str:
    """Seconds per epoch, optimiser steps per second and images per second (logged, else estimated)."""
    timed = [r for r in records if isinstance(r.get("time"), (int, float))]
    if not timed:
        return note("metrics.jsonl records no epoch times ('time' key)")
    train_cfg = cfg.get("train") if isinstance(cfg.get("train"), dict) else {}
    batch = train_cfg.get("batch_size") if isinstance(train_cfg.get("batch_size"), int) else None
    logged = next((k for k in THROUGHPUT_KEYS if any(k in r for r in records)), None)
    header = ["epoch", "seconds", "steps", "steps/s", f"images/s ({logged})" if logged else "images/s (estimated)"]
    rows, previous_step = [], 0
    for r in records:
        step = r.get("step") if isinstance(r.get("step"), int) else None
        seconds = r.get("time") if isinstance(r.get("time"), (int, float)) else None
        steps = step - previous_step if step is not None else None
        previous_step = step if step is not None else previous_step
        rate = steps / seconds if steps is not None and seconds else None
        images = r.get(logged) if logged else (rate * batch if rate is not None and batch else None)
        rows.append([r.get("epoch"), seconds, steps, rate, images])
    total = sum(r["time"] for r in timed)
    parts = [
        table(["", "value"], [
            ("epochs timed", len(timed)),
            ("total seconds (sum of epochs)", total),
            ("total minutes", total / 60),
            ("mean seconds per epoch", total / len(timed)),
            ("train.batch_size (images per optimiser step)", batch),
            ("train.max_minutes (time budget)", train_cfg.get("max_minutes")),
        ], "timing-summary"),  # fmt: skip
        table(header, rows, "timing", text_columns=()),
    ]
    if not logged:
        parts.append(note("Training logs no images per second; the estimate is optimiser steps x train.batch_size "
                          "/ epoch seconds, and an epoch's seconds include its validation, so training alone is "
                          "faster than this."))  # fmt: skip
    return "\n".join(parts)


def checkpoints_section(folder: Path) -> str:
    """The checkpoint files with sizes and times (read from the file system; no checkpoint is loaded)."""
    ckpts = sorted((folder / "checkpoints").glob("*.pt")) if (folder / "checkpoints").is_dir() else []
    if not ckpts:
        return note("no checkpoints/*.pt in this folder")
    rows = []
    for p in ckpts:
        st = p.stat()
        rows.append([_rel(p, folder), f"{st.st_size / 1e6:.1f} MB",
                     time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(st.st_mtime))])  # fmt: skip
    return table(["file", "size", "modified"], rows, "checkpoints", text_columns=(0, 1, 2))


def config_section(path: Path, label: str) -> str:
    """A YAML file as a preformatted block (escaped), or a note when it is missing."""
    if not path.is_file():
        return note(f"no {label} in this folder")
    return f"<pre>{esc(read_text(path))}</pre>"


def run_report(folder: Path) -> str:
    """The HTML page of a training run folder."""
    from cityseg.viz import read_metrics

    metrics_path = folder / "metrics.jsonl"
    records = read_metrics(metrics_path) if metrics_path.is_file() else []
    config_text = read_text(folder / "config.yaml") if (folder / "config.yaml").is_file() else ""
    cfg = read_yaml_text(config_text)
    best = best_record(records)
    jsons, confusion_pngs = find_confusions(folder)
    shown = [folder / "curves.png", *confusion_pngs]
    panels = files_under(folder, "*panel*.png", exclude=shown)
    others = files_under(folder, "*.png", exclude=[*shown, *panels])
    name = cfg.get("name") or folder.name
    sections = [
        ("summary", "Summary", summary_section(records, best, cfg) if metrics_path.is_file()
         else note("no metrics.jsonl in this folder: the run has not recorded an epoch")),
        ("curves", "Training curves", curves_section(folder, metrics_path, records)),
        ("classes", "Per-class IoU and Dice (best epoch)", class_section(records, best, run_dataset(cfg))),
        ("confusion", "Confusion matrix", confusion_section(folder, jsons, confusion_pngs)),
        ("panels", "Prediction panels", picture_list(panels, folder, "panels") if panels
         else note("no prediction panels (panels.png is written when training ends)")),
        ("timing", "Timing and throughput", timing_section(records, cfg)),
        ("epochs", "Metrics by epoch", epochs_section(records, best)),
        ("checkpoints", "Checkpoints", checkpoints_section(folder)),
        ("config", "Resolved config (config.yaml)", config_section(folder / "config.yaml", "config.yaml")),
    ]  # fmt: skip
    if others:
        sections.insert(5, ("pictures", "Other pictures in the folder", picture_list(others, folder, "pictures")))
    return page(f"cityseg run: {name}", _generated(folder), sections)


# --- a sweep -------------------------------------------------------------------------------------


def read_trials(path: Path) -> tuple[list[str], list[list[str]]]:
    """Header and rows of ``trials.csv``; CitysegError when it is not a CSV with a header."""
    text = read_text(path)
    try:
        rows = list(csv.reader(io.StringIO(text)))
    except csv.Error as exc:
        raise CitysegError(f"{path}: not a CSV file ({exc})") from None
    if not rows or not rows[0]:
        raise CitysegError(f"{path}: empty; cityseg sweep writes a header line and one line per trial")
    return rows[0], rows[1:]


def _number_or_text(text: str) -> Any:
    """A CSV cell as a number when it reads as one (for formatting), else the text (empty as None)."""
    if text == "":
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def trials_section(folder: Path) -> tuple[str, dict[str, Any]]:
    """The trials table (best completed trial highlighted) and facts for the summary."""
    path = folder / "trials.csv"
    if not path.is_file():
        return note("no trials.csv in this folder (cityseg sweep writes it after its trials)"), {}
    header, rows = read_trials(path)
    cells = [[_number_or_text(c) for c in row] for row in rows]
    col = {name: i for i, name in enumerate(header)}
    if "run" in col:  # trial folders relative to the sweep folder, where they lie in it
        for r in cells:
            if len(r) > col["run"] and isinstance(r[col["run"]], str):
                r[col["run"]] = _rel_to_sweep(r[col["run"]], folder)
    best_row = None
    if "val_miou" in col and "state" in col:
        done = [(r[col["val_miou"]], i) for i, r in enumerate(cells) if len(r) > col["val_miou"]
                and r[col["state"]] == "COMPLETE" and isinstance(r[col["val_miou"]], (int, float))]  # fmt: skip
        if done:
            best_row = max(done, key=lambda t: (t[0], -t[1]))[1]
    states: dict[str, int] = {}
    for r in cells:
        state = str(r[col["state"]]) if "state" in col and len(r) > col["state"] else "?"
        states[state] = states.get(state, 0) + 1
    facts = {"trials": len(cells), "states": states}
    if best_row is not None:
        facts["best"] = dict(zip(header, cells[best_row]))
    text_cols = [i for i, h in enumerate(header) if h in ("state", "datetime_start", "run", "error")]
    return table(header, cells, "trials", best_row=best_row, text_columns=text_cols), facts


def _rel_to_sweep(run: str, folder: Path) -> str:
    """A trial's run folder as written in trials.csv, relative to the sweep folder when inside it."""
    path = Path(run)
    for base in (folder, folder.resolve()):
        try:
            return str(path.relative_to(base))
        except ValueError:
            continue
    return run


def sweep_report(folder: Path) -> str:
    """The HTML page of a sweep folder."""
    trials_html, facts = trials_section(folder)
    best_yaml = folder / "best.yaml"
    rows: list[tuple[str, Any]] = [("trials", facts.get("trials", "\u2013"))]
    rows += [(f"trials {state.lower()}", n) for state, n in sorted(facts.get("states", {}).items())]
    best = facts.get("best")
    if best:
        rows += [("best trial", best.get("number")), ("best val mIoU", best.get("val_miou"))]
        rows += [(k, v) for k, v in best.items() if "." in k]  # the searched section.key values
    header_lines = [ln[1:].strip() for ln in read_text(best_yaml).splitlines() if ln.startswith("#")] \
        if best_yaml.is_file() else []  # fmt: skip
    summary = table(["", "value"], rows, "summary") + "".join(note(ln) for ln in header_lines)
    plots = files_under(folder, "*.png")
    sections = [
        ("summary", "Summary", summary),
        ("trials", "Trials (trials.csv)", trials_html),
        ("plots", "Plots", picture_list(plots, folder, "plots") if plots else note("no plots in this folder")),
    ]
    if best and best.get("number") is not None:
        trial_dir = folder / "trials" / str(best["number"])
        curves = trial_dir / "curves.png"
        body = png_figure(curves, f"trials/{best['number']}/curves.png", folder) if curves.is_file() \
            else note(f"no {_rel(curves, folder)}")  # fmt: skip
        body += note(f"the best trial's own report: cityseg report {trial_dir}")
        sections.append(("best-trial", f"Best trial ({best['number']})", body))
    sections.append(("best-yaml", "Best config (best.yaml)", config_section(best_yaml, "best.yaml")))
    return page(f"cityseg sweep: {folder.name}", _generated(folder), sections)
