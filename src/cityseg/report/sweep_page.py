"""The report's page of a sweep folder (``cityseg sweep --out``): the trials table, its plots, the
best trial's curves and ``best.yaml``. Nothing is made up: what the folder lacks is said so on the page.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from cityseg.errors import CitysegError
from cityseg.report.html_kit import (config_section, files_under, generated, note, page, picture_list, png_figure,
                                     read_text, rel, table)


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
                and r[col["state"]] == "COMPLETE" and isinstance(r[col["val_miou"]], (int, float))]
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
    best_text = read_text(best_yaml) if best_yaml.is_file() else ""
    header_lines = [ln[1:].strip() for ln in best_text.splitlines() if ln.startswith("#")]
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
        if curves.is_file():
            body = png_figure(curves, f"trials/{best['number']}/curves.png", folder)
        else:
            body = note(f"no {rel(curves, folder)}")
        body += note(f"the best trial's own report: cityseg report {trial_dir}")
        sections.append(("best-trial", f"Best trial ({best['number']})", body))
    sections.append(("best-yaml", "Best config (best.yaml)", config_section(best_yaml, "best.yaml")))
    return page(f"cityseg sweep: {folder.name}", generated(folder), sections)
