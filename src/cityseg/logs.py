"""Where cityseg's messages go: the standard ``logging`` module, one logger tree (``cityseg.*``).

- Information (progress lines, results, summaries) is logged at INFO and written to stdout, bare.
- Warnings (things skipped or dropped) and errors go to stderr as ``cityseg <command>: warning: ...``.
- ``-q/--quiet`` shows warnings and errors only (nothing is printed on success); ``-v/--verbose``
  adds DEBUG lines. Every command accepts both after its name (``cityseg predict -q ...``).
- A training run also writes every line, with a time stamp, to ``RUN_DIR/train.log``.

Library use (``from cityseg.engine.train import train``) gets the same console output unless the
application configured the ``cityseg`` logger itself (:func:`ensure_console`).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

LOGGER = "cityseg"
QUIET, NORMAL, VERBOSE = logging.WARNING, logging.INFO, logging.DEBUG
_console_level = NORMAL
log = logging.getLogger(LOGGER)


class _Console(logging.Formatter):
    """INFO and DEBUG lines bare; warnings and errors as ``cityseg <command>: warning: <message>``."""

    def __init__(self, command: str | None) -> None:
        super().__init__()
        self.prefix = f"cityseg {command}: " if command else "cityseg: "

    def format(self, record: logging.LogRecord) -> str:
        if record.levelno < logging.WARNING:
            return record.getMessage()
        return f"{self.prefix}{record.levelname.lower()}: {record.getMessage()}"


class _StreamAtCall(logging.StreamHandler):
    """A stream handler that looks ``sys.stdout``/``sys.stderr`` up at each record, so that a
    redirected or captured stream (pytest, notebooks) receives the lines."""

    def __init__(self, name: str, below: int | None = None, at_least: int | None = None) -> None:
        super().__init__()
        self.name_ = name
        if below is not None:
            self.addFilter(lambda r: r.levelno < below)
        if at_least is not None:
            self.addFilter(lambda r: r.levelno >= at_least)

    @property  # type: ignore[override]
    def stream(self):  # noqa: D401 - the current stream
        return getattr(sys, self.name_)

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it; the property ignores that
        pass


def setup(command: str | None = None, level: int = NORMAL) -> None:
    """Route the ``cityseg`` loggers to the console in ``command``'s voice at ``level``
    (replacing what an earlier call installed)."""
    logger = logging.getLogger(LOGGER)
    for handler in [h for h in logger.handlers if getattr(h, "_cityseg_console", False)]:
        logger.removeHandler(handler)
    formatter = _Console(command)
    for handler in (_StreamAtCall("stdout", below=logging.WARNING), _StreamAtCall("stderr", at_least=logging.WARNING)):
        handler.setFormatter(formatter)
        handler.setLevel(level)
        handler._cityseg_console = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    # the logger passes everything from INFO (DEBUG with -v) on: the console handlers filter by
    # ``level``, a run's train.log keeps the information lines even under -q
    logger.setLevel(min(level, NORMAL))
    logger.propagate = False
    global _console_level
    _console_level = level


def ensure_console() -> None:
    """:func:`setup` with the defaults unless the ``cityseg`` logger already has handlers."""
    if not logging.getLogger(LOGGER).handlers:
        setup()


def level_from_flags(quiet: bool, verbose: bool) -> int:
    return QUIET if quiet else VERBOSE if verbose else NORMAL


def quiet() -> bool:
    """True when information lines are not shown on the console (``-q``): progress bars stay off too."""
    return _console_level > NORMAL


def bar_disable(enabled: bool = True) -> bool | None:
    """tqdm's ``disable=`` for a progress bar: off when not ``enabled`` or under ``-q``, else
    None (tqdm's own rule: shown on a terminal, not in a log file or a pipe)."""
    return True if not enabled or quiet() else None


class RunFile:
    """Copy every ``cityseg`` log line, time-stamped, into a run folder's log file (appending:
    a resumed run continues the same file) while the ``with`` block lasts."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.handler: logging.Handler | None = None

    def __enter__(self) -> RunFile:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.handler = logging.FileHandler(self.path, encoding="utf-8")
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        self.handler.setLevel(logging.DEBUG if _console_level <= VERBOSE else NORMAL)
        logging.getLogger(LOGGER).addHandler(self.handler)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.handler is not None:
            logging.getLogger(LOGGER).removeHandler(self.handler)
            self.handler.close()
