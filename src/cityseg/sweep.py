"""Hyper-parameter sweeps with Optuna (``cityseg sweep``): by default the loss balance, i.e. the
Focal and Dice weights and the focal gamma, searched for the best validation mIoU.

A study is a set of trials in an Optuna storage (``DIR/study.db``, SQLite, unless another
storage URL is given, e.g. PostgreSQL for several machines on one study). Each call runs N more
trials, so a rerun or a killed sweep continues where the study stands. A seeded TPE sampler
proposes the values; a median pruner, fed the val mIoU after every epoch through
``train(on_validation=...)``, stops trials that fall below the median of the earlier ones at
the same epoch. Every trial is an ordinary run folder, ``DIR/trials/<number>``. A trial whose
loss turns non-finite is recorded as failed and the study goes on. Afterwards DIR holds
``best.yaml`` (a full config for ``cityseg train --config``), ``trials.csv`` and plots.

Optuna is an optional dependency (``pip install "cityseg[sweep]"``), imported on use.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import math
import os
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, get_args, get_type_hints

from cityseg.config import Config, config_from_dict
from cityseg.utils import read_yaml
from cityseg.errors import CitysegError, first_line
from cityseg.utils import atomic_path, require

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    import optuna

#: What ``cityseg sweep`` searches without ``--space``: the loss balance.
DEFAULT_SPACE: dict[str, dict[str, Any]] = {
    "loss.focal": {"low": 0.0, "high": 3.0},
    "loss.dice": {"low": 0.0, "high": 3.0},
    "loss.focal_gamma": {"low": 0.5, "high": 4.0},
}

#: Seconds between a running trial's heartbeats; a trial silent for GRACE_S (its sweep was
#: killed) is marked failed when the next trial of the study starts.
HEARTBEAT_S, GRACE_S = 60, 300

PLOTS = {"history": "history.png", "importance": "importance.png", "loss_weights": "loss_weights.png"}


@dataclass(frozen=True)
class Param:
    """One searched config key: ``section.key`` drawn from [low, high] (log-uniform if ``log``)."""

    key: str
    low: float
    high: float
    log: bool = False
    integer: bool = False

    def suggest(self, trial: optuna.Trial) -> float | int:
        if self.integer:
            return trial.suggest_int(self.key, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.key, float(self.low), float(self.high), log=self.log)


def import_optuna():
    """The optuna module, or CitysegError saying how to install it."""
    return require("optuna", "sweep", "a sweep")


# --- the search space -----------------------------------------------------------------------


def numeric_keys(section: str) -> dict[str, type]:
    """``{key: int | float}`` of the numeric keys of one config section (Optional ones included)."""
    hints = get_type_hints(type(getattr(Config(), section)))
    numeric = {}
    for key, hint in hints.items():
        kinds = [a for a in get_args(hint) if a is not type(None)] or [hint]
        if len(kinds) == 1 and kinds[0] in (int, float):
            numeric[key] = kinds[0]
    return numeric


def parse_space(raw: Any, where: str = "--space") -> list[Param]:
    """Check a search space ``{section.key: {low, high, log?, type?}}`` against the config keys.

    Unknown sections or keys raise CitysegError listing the valid ones (config.py's own message);
    so do keys that are not numbers, ranges that are empty, and log scales that reach zero.
    """
    if not isinstance(raw, dict) or not raw:
        raise CitysegError(f"{where}: write a mapping of section.key to {{low: ..., high: ...}}, "
                           "e.g. loss.focal: {low: 0.0, high: 3.0}")  # fmt: skip
    params = []
    for dotted, spec in raw.items():
        dotted = str(dotted)
        if dotted.count(".") != 1:
            raise CitysegError(f"{where}: {dotted!r} is not section.key, e.g. loss.focal")
        section, key = dotted.split(".")
        if not isinstance(spec, dict):
            raise CitysegError(f"{where}: {dotted} needs {{low: ..., high: ...}}, got {spec!r}")
        unknown = set(spec) - {"low", "high", "log", "type"}
        if unknown:
            raise CitysegError(f"{where}: {dotted}: unknown field(s) {', '.join(sorted(map(str, unknown)))}; "
                               "valid: low, high, log, type")  # fmt: skip
        defaults = Config().to_dict()
        try:  # config.py's own check: an unknown section or key names the valid ones
            if not isinstance(defaults.get(section), dict):
                config_from_dict({section: {}})
                raise CitysegError(f"{section!r} is not a config section")  # "name"
            config_from_dict({section: {key: defaults[section].get(key)}})
        except CitysegError as exc:
            raise CitysegError(f"{where}: {exc}") from None
        numeric = numeric_keys(section)
        if key not in numeric:
            raise CitysegError(f"{where}: {dotted} is not a number; numeric keys of {section}: "
                               f"{', '.join(numeric) or 'none'}")  # fmt: skip
        kind = spec.get("type", numeric[key].__name__)
        if kind not in ("int", "float") or (kind == "float" and numeric[key] is int):
            valid = "int" if numeric[key] is int else "int, float"
            raise CitysegError(f"{where}: {dotted}: type {kind!r}; valid: {valid}")
        low, high = (_number(spec.get(b), f"{where}: {dotted}.{b}") for b in ("low", "high"))
        log = spec.get("log", False)
        if not isinstance(log, bool):
            raise CitysegError(f"{where}: {dotted}.log: expected true or false, got {log!r}")
        if kind == "int" and not (float(low).is_integer() and float(high).is_integer()):
            raise CitysegError(f"{where}: {dotted}: an integer key needs whole numbers, got {low}..{high}")
        if not low < high:
            raise CitysegError(f"{where}: {dotted}: low {low} must be below high {high} "
                               f"(to fix a value, use --set {dotted}={low})")  # fmt: skip
        if log and low <= 0:
            raise CitysegError(f"{where}: {dotted}: a log scale needs low > 0, got {low}")
        if kind == "int":
            low, high = int(low), int(high)
        params.append(Param(dotted, low, high, log=log, integer=kind == "int"))
    return params


def load_space(path: str | Path | None) -> list[Param]:
    """The search space of a YAML file, or :data:`DEFAULT_SPACE` when ``path`` is None."""
    if path is None:
        return parse_space(DEFAULT_SPACE, "default space")
    path = Path(path)
    if not path.is_file():
        raise CitysegError(f"--space {path}: file not found")
    raw = read_yaml(path, f"--space {path}")
    return parse_space(raw, f"--space {path}")


def _number(value: Any, what: str) -> float:
    if isinstance(value, str):  # PyYAML reads 1e-3 (no dot) as a string
        with contextlib.suppress(ValueError):
            value = float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise CitysegError(f"{what}: expected a finite number, got {value!r}")
    return value


def trial_config(base: Config, values: dict[str, Any]) -> Config:
    """``base`` with ``{section.key: value}`` applied, validated like any config."""
    raw = base.to_dict()
    for dotted, value in values.items():
        section, key = dotted.split(".")
        raw[section][key] = value
    return config_from_dict(raw, name=base.name)


# --- the study ------------------------------------------------------------------------------


@contextlib.contextmanager
def quiet_optuna() -> Iterator[None]:
    """Optuna's own log lines (a line per trial, with tracebacks of failed ones) off: we print ours."""
    optuna = import_optuna()
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(verbosity)


def default_storage(out: Path) -> str:
    return f"sqlite:///{(out / 'study.db').absolute()}"


#: The median pruner's start: trials report their val mIoU at epochs 1, 2, ..., and Optuna prunes a
#: report at step ``n_warmup_steps`` or later, so a trial is first compared at this epoch (README)...
PRUNE_FROM_EPOCH = 2
#: ... once this many trials have finished
PRUNE_AFTER_TRIALS = 5


def median_pruner() -> optuna.pruners.MedianPruner:
    """The default pruner: stop a trial whose val mIoU is below the median of the earlier trials' at
    the same epoch, from :data:`PRUNE_FROM_EPOCH` on and after :data:`PRUNE_AFTER_TRIALS` finished trials."""
    optuna = import_optuna()
    return optuna.pruners.MedianPruner(n_startup_trials=PRUNE_AFTER_TRIALS, n_warmup_steps=PRUNE_FROM_EPOCH)


def open_study(storage: str, name: str, seed: int, pruner: Any = None) -> optuna.Study:
    """Create or load the study ``name`` in ``storage`` (maximising val mIoU)."""
    optuna = import_optuna()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            store = optuna.storages.RDBStorage(storage, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S)
        study = optuna.create_study(
            storage=store,
            study_name=name,
            direction="maximize",
            sampler=optuna.samplers.TPESampler(seed=seed),
            pruner=pruner if pruner is not None else median_pruner(),
            load_if_exists=True,
        )
    except Exception as exc:  # SQLAlchemy / Optuna errors of a bad URL or an unreachable server
        text = first_line(exc)
        raise CitysegError(f"--storage {storage}: cannot open the study {name!r} ({text})") from None
    if study.direction != optuna.study.StudyDirection.MAXIMIZE:
        raise CitysegError(f"study {name!r} in {storage} minimises; cityseg sweep needs one that maximises val mIoU")
    # A TPE sampler seeded alike on every call would repeat its first random draws in each rerun;
    # offsetting the seed by the trials already there keeps reruns reproducible and distinct.
    if study.trials:
        study.sampler = optuna.samplers.TPESampler(seed=seed + len(study.trials))
    return study


def run_sweep(
    cfg: Config,
    out: str | Path,
    trials: int,
    *,
    storage: str | None = None,
    study_name: str | None = None,
    space: list[Param] | None = None,
    seed: int = 0,
    device: str = "auto",
    max_steps_per_epoch: int | None = None,
    pruner: Any = None,
) -> dict[str, Any]:
    """Run ``trials`` more trials of the study, then write ``best.yaml``, ``trials.csv`` and plots.

    Args:
        cfg: the base config; each trial changes only the keys of ``space`` (default: the loss
            balance). ``cfg.data.root`` is made absolute so that ``best.yaml`` runs from anywhere.
        out: the sweep folder (``study.db``, ``trials/<number>/``, the report).
        storage: an Optuna storage URL; None: ``sqlite:///out/study.db``.
        study_name: None: the config's name.
        max_steps_per_epoch: cut every epoch of every trial short (tests).
        pruner: an Optuna pruner instead of the median pruner (tests).

    Returns the summary printed at the end (counts, best trial, paths).

    Raises:
        CitysegError: optuna missing, a bad space or storage, a trial's bad config or data, or no
            trial of the study completed. A trial whose loss turns non-finite does not raise.
    """
    optuna = import_optuna()
    from cityseg.engine.train import NonFiniteLoss, train

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise CitysegError("run cityseg sweep without torchrun: start one sweep per GPU "
                           "(CUDA_VISIBLE_DEVICES) on a shared --storage instead")  # fmt: skip
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    space = load_space(None) if space is None else space
    if cfg.data.root is not None:
        cfg.data.root = str(Path(cfg.data.root).expanduser().absolute())
    for values in ({p.key: p.low for p in space}, {p.key: p.high for p in space}):
        trial_config(cfg, values)  # a type the config refuses fails now, not in trial 1
    storage = storage or default_storage(out)
    name = study_name or cfg.name
    with quiet_optuna():
        study = open_study(storage, name, seed, pruner)
    before = len(study.trials)
    _note_base_changes(study, cfg)
    log.info(f"cityseg sweep: study {name!r} in {storage}: {before} trials so far, running {trials} more; "
          f"searching {', '.join(p.key for p in space)}")  # fmt: skip

    def objective(trial: optuna.Trial) -> float:
        values = {p.key: p.suggest(trial) for p in space}
        trial_cfg = trial_config(cfg, values)
        run_dir = out / "trials" / str(trial.number)
        trial.set_user_attr("run", str(run_dir))
        trial.set_user_attr("config", trial_cfg.to_dict())
        log.info(f"\n--- trial {trial.number}: {_fmt(values)} -> {run_dir}")

        def report(epoch: int, record: dict) -> None:
            trial.report(record["val_miou"], epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"val mIoU {record['val_miou']:.4f} at epoch {epoch} is below the median")

        try:
            # force: a trial number is new to the study, so a folder of that name is a leftover
            summary = train(trial_cfg, run_dir, device=device, force=True,
                            max_steps_per_epoch=max_steps_per_epoch, on_validation=report,
                            final_score=False)  # the objective is the one-pass val mIoU: no closing TTA score
        except NonFiniteLoss as exc:
            trial.set_user_attr("error", str(exc))
            raise
        trial.set_user_attr("best_epoch", summary["best_epoch"])
        return float(summary["best_miou"])

    def announce(study: optuna.Study, frozen: optuna.trial.FrozenTrial) -> None:
        state = frozen.state.name.lower()
        if frozen.state == optuna.trial.TrialState.COMPLETE:
            what = f"val mIoU {frozen.value:.4f} (best so far: trial {study.best_trial.number}, {study.best_value:.4f})"
        elif frozen.state == optuna.trial.TrialState.PRUNED:
            last = max(frozen.intermediate_values, default=None)
            what = f"after epoch {last}, val mIoU {frozen.intermediate_values[last]:.4f}" if last is not None else ""
        else:
            what = frozen.user_attrs.get("error", "")
        log.info(f"--- trial {frozen.number} {state}" + (f": {what}" if what else ""))

    try:
        with quiet_optuna():
            study.optimize(objective, trials, catch=(NonFiniteLoss,), callbacks=[announce], gc_after_trial=True)
    except KeyboardInterrupt:
        log.info(f"\ncityseg sweep: the study keeps its finished trials in {storage}; "
              "the same command continues it")  # fmt: skip
        raise
    return write_report(study, out, cfg, space, storage)


# --- the report -----------------------------------------------------------------------------


def write_report(study: optuna.Study, out: Path, base: Config, space: list[Param], storage: str) -> dict[str, Any]:
    """``trials.csv``, plots and ``best.yaml`` into ``out``; print and return a summary."""
    optuna = import_optuna()
    states = optuna.trial.TrialState
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == states.COMPLETE]
    counts = dict(Counter(t.state.name.lower() for t in trials))
    summary: dict[str, Any] = {"study": study.study_name, "storage": storage, "trials": len(trials), "states": counts}
    summary["csv"] = str(write_trials_csv(trials, out / "trials.csv"))
    summary["plots"] = [str(p) for p in write_plots(study, out, base)]
    lines = [
        f"\ncityseg sweep: study {study.study_name!r}: {len(trials)} trials "
        f"({', '.join(f'{n} {s}' for s, n in counts.items())})"
    ]
    if complete:
        best = study.best_trial
        cfg = config_of(best, base)
        cfg.name = f"{study.study_name}_best"
        header = (f"# best trial {best.number} of study {study.study_name!r} ({storage}): val mIoU {best.value:.4f}\n"
                  f"# cityseg train --config {out / 'best.yaml'}\n")  # fmt: skip
        with atomic_path(out / "best.yaml") as tmp:
            tmp.write_text(header + cfg.to_yaml())
        summary.update(best_trial=best.number, best_value=best.value, best_params=dict(best.params),
                       best_yaml=str(out / "best.yaml"), best_run=best.user_attrs.get("run"))  # fmt: skip
        base_values = {p.key: _get(base, p.key) for p in space}
        lines += [
            f"best: trial {best.number}, val mIoU {best.value:.4f} with {_fmt(best.params)}",
            f"  (the base config has {_fmt(base_values)})",
            f"  best config  {out / 'best.yaml'}   (cityseg train --config {out / 'best.yaml'})",
            f"  best run     {best.user_attrs.get('run')}",
        ]
    else:
        lines.append("no trial has completed yet: no best.yaml")
    lines.append(f"  trials       {summary['csv']}")
    lines += [f"  plot         {p}" for p in summary["plots"]]
    log.info("\n".join(lines))
    if not complete and trials:
        raise CitysegError(f"no trial of study {study.study_name!r} completed (see {summary['csv']})")
    return summary


def write_trials_csv(trials: list, path: Path) -> Path:
    """One row per trial: number, state, value, each parameter, times, run folder, error."""
    keys = sorted({k for t in trials for k in t.params})
    header = ["number", "state", "val_miou", *keys, "best_epoch", "last_epoch", "datetime_start", "duration_s",
              "run", "error"]  # fmt: skip
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for t in trials:
            duration = t.duration.total_seconds() if t.duration is not None else None
            writer.writerow([
                t.number, t.state.name, t.value, *(t.params.get(k) for k in keys), t.user_attrs.get("best_epoch"),
                max(t.intermediate_values, default=None), t.datetime_start, duration, t.user_attrs.get("run"),
                t.user_attrs.get("error"),
            ])  # fmt: skip
    return path


def write_plots(study: optuna.Study, out: Path, base: Config) -> list[Path]:
    """history.png, importance.png (>= 2 complete trials) and loss_weights.png; returns those written."""
    optuna = import_optuna()
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    written = []
    if complete:
        from optuna.visualization import matplotlib as ov

        drawers = [("history", lambda: ov.plot_optimization_history(study, target_name="val mIoU"))]
        if len(complete) >= 2:
            drawers.append(("importance", lambda: ov.plot_param_importances(study, target_name="val mIoU")))
        for name, draw in drawers:
            with _pyplot_figure(f"{name} plot") as save:
                save(draw(), out / PLOTS[name])
                written.append(out / PLOTS[name])
    if study.trials:
        plot_loss_weights(study, out / PLOTS["loss_weights"], base)
        written.append(out / PLOTS["loss_weights"])
    return written


@contextlib.contextmanager
def _pyplot_figure(what: str) -> Iterator:
    """Yield ``save(axes, path)`` for an Optuna matplotlib plot; a plot that fails is skipped with a note."""
    import matplotlib
    import matplotlib.pyplot as plt
    import optuna

    figures = []

    def save(axes: Any, path: Path) -> None:
        fig = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
        figures.append(fig)
        fig.set_size_inches(8, 5)
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110)

    try:  # rc_context: Optuna's plots switch pyplot to its ggplot style for good otherwise
        with warnings.catch_warnings(), matplotlib.rc_context():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            yield save
    except (ValueError, RuntimeError, ZeroDivisionError) as exc:  # e.g. importances of constant parameters
        log.warning(f"no {what} ({exc})")
    finally:
        for fig in figures:
            plt.close(fig)


def plot_loss_weights(study: optuna.Study, path: Path, base: Config) -> None:
    """Focal weight against Dice weight of every trial, coloured by val mIoU; best and base marked."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    states = import_optuna().trial.TrialState
    points: dict[str, list[tuple[float, float, float | None]]] = {"complete": [], "pruned": [], "failed": []}
    for t in study.get_trials(deepcopy=False):
        if t.state not in (states.COMPLETE, states.PRUNED, states.FAIL):
            continue
        loss = config_of(t, base).loss
        xy = (loss.focal, loss.dice)
        if t.state == states.COMPLETE:
            points["complete"].append((*xy, t.value))
        elif t.state == states.PRUNED:
            points["pruned"].append((*xy, None))
        elif t.state == states.FAIL:
            points["failed"].append((*xy, None))
    fig = Figure(figsize=(6.5, 5), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    if points["complete"]:
        x, y, v = zip(*points["complete"])
        sc = ax.scatter(x, y, c=v, cmap="viridis", s=60, edgecolors="black", linewidths=0.5, label="complete")
        fig.colorbar(sc, ax=ax, label="val mIoU (best epoch)")
        best = config_of(study.best_trial, base).loss
        ax.scatter([best.focal], [best.dice], marker="*", s=320, facecolors="none", edgecolors="red",
                   linewidths=1.5, label=f"best (trial {study.best_trial.number})")  # fmt: skip
    if points["pruned"]:
        x, y, _ = zip(*points["pruned"])
        ax.scatter(x, y, marker="o", s=40, facecolors="none", edgecolors="grey", label="pruned")
    if points["failed"]:
        x, y, _ = zip(*points["failed"])
        ax.scatter(x, y, marker="x", s=50, color="red", label="failed (non-finite loss)")
    ax.scatter([base.loss.focal], [base.loss.dice], marker="P", s=90, color="black",
               label=f"base config ({base.loss.focal:g} / {base.loss.dice:g})")  # fmt: skip
    ax.set_xlabel("loss.focal (Focal weight)")
    ax.set_ylabel("loss.dice (Dice weight)")
    ax.set_title(f"study {study.study_name!r}: loss weights and val mIoU")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp)


def _note_base_changes(study: optuna.Study, cfg: Config) -> None:
    """Record the base config with the study; on a later call, say which of its values changed."""
    first = study.user_attrs.get("base_config")
    if first is None:
        study.set_user_attr("base_config", cfg.to_dict())
        return
    now = cfg.to_dict()
    changed = [
        f"{sec}.{key} {first[sec].get(key)!r} -> {value!r}"
        for sec, values in now.items()
        if isinstance(values, dict) and isinstance(first.get(sec), dict)
        for key, value in values.items()
        if first[sec].get(key) != value
    ]
    if changed:
        log.warning(f"the base config differs from the one study {study.study_name!r} began with: "
              f"{', '.join(changed)}; trials before and after compare less well")  # fmt: skip


def config_of(trial: optuna.trial.FrozenTrial, base: Config) -> Config:
    """The full config a trial trained with (recorded by the trial; else ``base`` with its params)."""
    if "config" in trial.user_attrs:
        return config_from_dict(trial.user_attrs["config"], name=base.name)
    return trial_config(base, trial.params)


def _get(cfg: Config, dotted: str) -> Any:
    section, key = dotted.split(".")
    return getattr(getattr(cfg, section), key)


def _fmt(values: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())
