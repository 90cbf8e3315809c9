"""Which kind of folder ``cityseg report`` was given (a run or a sweep), and its page written into it."""

from __future__ import annotations

import os
from pathlib import Path

from cityseg.errors import CitysegError
from cityseg.report.run_page import run_report
from cityseg.report.sweep_page import sweep_report
from cityseg.utils import atomic_path

#: The report's file name inside the folder (the default of ``cityseg report``).
REPORT_NAME = "report.html"
#: What a folder must hold to be taken for a run (any one of them) or for a sweep.
RUN_MARKERS = ("metrics.jsonl", "config.yaml")
SWEEP_MARKERS = ("trials.csv", "best.yaml", "study.db")

WHAT_A_RUN_HOLDS = (
    "a run folder (cityseg train --out) holds config.yaml and metrics.jsonl (plus curves.png, panels.png, "
    "checkpoints/); a sweep folder (cityseg sweep --out) holds trials.csv and best.yaml"
)


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
