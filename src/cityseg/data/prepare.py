"""``cityseg prepare``: turn a Cityscapes source into the official layout with trainIds.

Writes, for each frame::

    OUT/leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png        (copied, linked, or the pair's left half)
    OUT/gtFine/<split>/<city>/<stem>_gtFine_labelIds.png         (the source's, or derived: void/unknown -> 0)
    OUT/gtFine/<split>/<city>/<stem>_gtFine_labelTrainIds.png

so that OUT serves both training and evaluation. SRC is only read. Every file is written
atomically, and last a record of what the frame was made from (name, size and mtime of each
source file) in ``OUT/.cityseg-prepare/<split>/<city>/<stem>.json``. A frame whose outputs
exist and whose record matches its source files now is finished: a second run skips it, a
killed run resumes where it stopped, and a frame whose source changed (or that has no record)
is made again; ``force`` makes every frame again.

The format is told from SRC only when it is recognised: ``cityscapes`` needs ``leftImg8bit/``
and ``gtFine/``; ``pairs`` needs split folders whose sampled images each hold a photo on the
left and mostly label colours on the right. Anything else is refused, naming the known formats.

Sources:
  * ``cityscapes``: ``SRC/leftImg8bit/<split>/<city>/*_leftImg8bit.png`` with labels found
    by :func:`cityseg.layout.find_label` (labelIds > labelTrainIds > color).
  * ``pairs``: ``SRC/<split>/*.jpg|*.png``, photo left and colour mask right; written under
    the city folder ``city`` with the file's own stem.
  * ``dataset``: any dataset with a description (:mod:`cityseg.datasets`; ``kitti``, ``camvid`` or
    a YAML file): frames found by its ``images`` and ``labels`` patterns, labels mapped by its
    table (grey files: ids; RGB files: colours, recovered along blended borders as for
    Cityscapes); written under the city folder named after the dataset, each under its frame name
    (every field the patterns capture but ``{split}``, joined by ``_``: ``<seq>_<stem>`` for
    ``{split}/{seq}/{stem}.png``), with the description (patterns pointing at OUT's layout, every
    class's ids listed) in ``OUT/dataset.yaml``, which train and evaluate adopt.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cityseg import layout, logs
from cityseg.data.colour import ColourStats, confident_lut
from cityseg.data.palette import CITYSCAPES, palette_of
from cityseg.data.prepare_frame import Job, Result, run_job
from cityseg.data.prepare_source import detect_format, discover, discover_dataset
from cityseg.datasets import DatasetSpec, load_dataset
from cityseg.errors import CitysegError
from cityseg.processes import WorkerPool, keep_freed_memory
from cityseg.utils import atomic_path

FORMATS = ("auto", "cityscapes", "pairs")
LINKS = ("hard", "sym")


@dataclass
class Summary:
    """Totals of one ``prepare`` run."""

    out: Path
    format: str
    written: int = 0
    stale: int = 0  # of the written: replaced outputs made from another version of their source
    skipped: int = 0
    stats: ColourStats = field(default_factory=ColourStats)
    bad: list[Result] = field(default_factory=list)

    def lines(self) -> list[str]:
        s = self.stats
        total = self.written + self.skipped + len(self.bad)
        remade = f" ({self.stale} of them made again: source changed or unrecorded)" if self.stale else ""
        out = [
            f"prepared {total} files ({self.format}) into {self.out}: {self.written} written{remade}, "
            f"{self.skipped} already done, {len(self.bad)} bad",
        ]
        if self.written:
            out.append(
                f"label pixels of the files written: {s.pixels:,} in all, {s.exact:,} mapped exactly, "
                f"{s.recovered:,} recovered from blended or noisy colours, {s.ignored:,} set to ignore (unrecoverable)"
            )
        if self.bad:
            out.append(f"skipped {len(self.bad)} bad files:")
            out.extend(f"  {r.message}" for r in self.bad)
        return out


def write_description(out: Path, spec: DatasetSpec) -> None:
    """``OUT/dataset.yaml``: ``spec`` with patterns of the prepared layout (raw ids in the labelIds files)."""
    import dataclasses

    import yaml

    prepared = dataclasses.replace(
        spec,
        images=f"{layout.IMAGE_DIR}/{{split}}/{{city}}/{{stem}}{layout.IMAGE_SUFFIX}",
        labels=f"{layout.LABEL_DIR}/{{split}}/{{city}}/{{stem}}{layout.LABEL_IDS_SUFFIX}",
    )
    with atomic_path(out / layout.DATASET_FILE) as tmp:
        tmp.write_text(yaml.safe_dump(prepared.to_dict(), sort_keys=False), encoding="utf-8")


def _run_job_star(args: tuple[Job, str | None, bool]) -> Result:
    return run_job(*args)


def _check_paths(src: Path, out: Path) -> None:
    if not src.is_dir():
        raise CitysegError(f"{src}: not a folder")
    s, o = src.resolve(), out.resolve()
    if o == s or s in o.parents:
        raise CitysegError(f"{out}: is inside the source {src}; prepare never writes into SRC")


def prepare(src: str | os.PathLike, out: str | os.PathLike, fmt: str = "auto", splits: list[str] | None = None,
            city: str | None = None, workers: int = 1, skip_bad: bool = False, link: str | None = None,
            progress: bool = True, force: bool = False, dataset: str | DatasetSpec | None = None) -> Summary:
    """Convert SRC into the official layout under OUT (see the module docstring).

    Args:
        fmt: "auto", "cityscapes" or "pairs".
        splits: split folder names to convert (default: all found).
        city: output city folder of pairs (default "pairs").
        workers: processes; 1 runs in this process.
        skip_bad: go on past bad files and list them in the summary; otherwise the first bad
            file raises CitysegError (files finished so far stay, a rerun resumes).
        link: None copies images, "hard" or "sym" links them (cityscapes sources only).
        force: make every frame again, even those whose outputs match their sources.
        dataset: a description (name, file or spec) other than Cityscapes': SRC is read through
            its patterns and table (format ``dataset``).
    """
    from tqdm import tqdm

    src, out = Path(src), Path(out)
    _check_paths(src, out)
    if fmt not in FORMATS:
        raise CitysegError(f"format {fmt!r}: valid formats are {', '.join(FORMATS)}")
    if link is not None and link not in LINKS:
        raise CitysegError(f"link {link!r}: valid values are {', '.join(LINKS)}")
    spec = load_dataset(dataset) if dataset is not None else None
    if spec is not None and spec != load_dataset("cityscapes"):
        if fmt != "auto" or city is not None:
            raise CitysegError(f"--dataset {spec.name}: its description gives the layout; drop --format and --city")
        fmt = "dataset"
        if link:
            raise CitysegError(f"--dataset {spec.name}: images are re-encoded as PNG and cannot be linked; "
                               "drop --link/--symlink")
    fmt = detect_format(src, splits) if fmt == "auto" else fmt
    if link and fmt == "pairs":
        raise CitysegError(f"{src}: images of pairs files are cut out of them and cannot be linked; drop --link/--symlink")
    jobs = discover_dataset(src, out, spec, splits) if fmt == "dataset" else discover(src, out, fmt, splits, city)
    if fmt == "dataset":
        write_description(out, spec)
    summary = Summary(out, fmt)
    todo = [(job, link, force) for job in jobs]
    pool = None
    if workers > 1 and len(jobs) > 1:
        # Build the colour tables once, here; each worker adopts them (_init_worker).
        lut_spec = spec if spec is not None and fmt == "dataset" else None
        luts = [confident_lut()] + ([confident_lut(palette_of(lut_spec))] if lut_spec is not None else [])
        pool = WorkerPool(min(workers, len(jobs)), f"prepare {src}", [__name__], _init_worker, (lut_spec, luts))
        results = pool.map(_run_job_star, todo, ordered=False, describe=lambda args: str(args[0].source))
    else:
        results = map(_run_job_star, todo)
    try:
        for result in tqdm(results, total=len(jobs), desc="prepare", unit="file", disable=logs.bar_disable(progress)):
            if result.status == "bad":
                if not skip_bad:
                    raise CitysegError(result.message)
                summary.bad.append(result)
            elif result.status == "skipped":
                summary.skipped += 1
            else:
                summary.written += 1
                summary.stale += result.stale
                summary.stats = summary.stats + result.stats
    finally:
        if pool is not None:
            pool.close()  # after a bad file: the frames not started are dropped, those running finish
    summary.bad.sort(key=lambda r: str(r.source))
    return summary


def _init_worker(spec: DatasetSpec | None, luts: list[np.ndarray]) -> None:
    """Initializer of prepare's worker processes: adopt the parent's colour tables (16 MB each, a
    third of a second to build) as those of the Cityscapes palette and of ``spec``'s, so that no
    worker builds them again. Workers share no memory with the parent (:mod:`cityseg.processes`)."""
    keep_freed_memory()  # every frame allocates the same large arrays again (cityseg.processes)
    palettes = [CITYSCAPES] + ([palette_of(spec)] if spec is not None else [])
    for palette, lut in zip(palettes, luts):
        vars(palette)["lut"] = lut  # where the functools.cached_property Palette.lut keeps its value
