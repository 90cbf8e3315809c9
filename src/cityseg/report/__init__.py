"""``cityseg report``: one self-contained HTML page about a run folder or a sweep folder.

* :mod:`~cityseg.report.folder`: which kind of folder it is, and the page written into it
  (:func:`write_report`);
* :mod:`~cityseg.report.run_page`: a run folder's page (``cityseg train --out``), whose best epoch is
  the one training kept as ``checkpoints/best.pt``;
* :mod:`~cityseg.report.sweep_page`: a sweep folder's page (``cityseg sweep --out``);
* :mod:`~cityseg.report.html_kit`: escaping, tables, notes, inlined pictures and the page itself,
  which needs nothing but itself.
"""

from cityseg.report.folder import (REPORT_NAME, RUN_MARKERS, SWEEP_MARKERS, WHAT_A_RUN_HOLDS, build_report,
                                   folder_kind, write_report)
from cityseg.report.html_kit import (MAX_PICTURES, PNG_SIGNATURE, SKIP_DIRS, Raw, config_section, drawn_figure, esc,
                                     figure, files_under, fmt, note, page, picture_list, png_bytes_ok, png_figure,
                                     read_text, read_yaml_text, table)
from cityseg.report.run_page import (THROUGHPUT_KEYS, best_record, checkpoints_section, class_chart, class_section,
                                     class_swatch, confusion_from_json, confusion_section, curves_section,
                                     dice_of_iou, epochs_section, find_confusions, run_dataset, run_report,
                                     scalar_keys, summary_section, timing_section)
from cityseg.report.sweep_page import read_trials, sweep_report, trials_section

__all__ = [
    "MAX_PICTURES", "PNG_SIGNATURE", "REPORT_NAME", "RUN_MARKERS", "SKIP_DIRS", "SWEEP_MARKERS", "THROUGHPUT_KEYS",
    "WHAT_A_RUN_HOLDS", "Raw", "best_record", "build_report", "checkpoints_section", "class_chart", "class_section",
    "class_swatch", "config_section", "confusion_from_json", "confusion_section", "curves_section", "dice_of_iou",
    "drawn_figure", "epochs_section", "esc", "figure", "files_under", "find_confusions", "fmt", "folder_kind",
    "note", "page", "picture_list", "png_bytes_ok", "png_figure", "read_text", "read_trials", "read_yaml_text",
    "run_dataset", "run_report", "scalar_keys", "summary_section", "sweep_report", "table", "timing_section",
    "trials_section", "write_report",
]
