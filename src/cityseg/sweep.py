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
import os
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from cityseg.config import Config, check_value, config_from_dict, number_type, parse_number
from cityseg.errors import CitysegError, first_line
from cityseg.utils import atomic_path, read_yaml, require
from cityseg.viz import plot_trials, save_pyplot

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

#: Optuna's history and importances; the trials over the searched keys (loss keys: loss_weights.png).
PLOTS = {"history": "history.png", "importance": "importance.png", "loss_weights": "loss_weights.png",
         "trials": "trials.png"}


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


def parse_space(raw: Any, where: str = "--space") -> list[Param]:
    """Check a search space ``{section.key: {low, high, log?, type?}}`` against the config keys.

    config.py says which keys exist, which hold numbers and their valid ranges, with its own
    messages (an unknown section or key lists the valid ones); empty ranges and log scales that
    reach zero raise CitysegError too.
    """
    if not isinstance(raw, dict) or not raw:
        raise CitysegError(f"{where}: write a mapping of section.key to {{low: ..., high: ...}}, "
                           "e.g. loss.focal: {low: 0.0, high: 3.0}")
    return [_param(str(dotted), spec, where) for dotted, spec in raw.items()]


def _param(dotted: str, spec: Any, where: str) -> Param:
    """One key of :func:`parse_space`."""
    if dotted.count(".") != 1:
        raise CitysegError(f"{where}: {dotted!r} is not section.key, e.g. loss.focal")
    if not isinstance(spec, dict):
        raise CitysegError(f"{where}: {dotted} needs {{low: ..., high: ...}}, got {spec!r}")
    unknown = set(spec) - {"low", "high", "log", "type"}
    if unknown:
        raise CitysegError(f"{where}: {dotted}: unknown field(s) {', '.join(sorted(map(str, unknown)))}; "
                           "valid: low, high, log, type")
    try:
        number = number_type(dotted)
    except CitysegError as exc:
        raise CitysegError(f"{where}: {exc}") from None
    kind = spec.get("type", number.__name__)
    if kind not in ("int", "float") or (kind == "float" and number is int):
        valid = "int" if number is int else "int, float"
        raise CitysegError(f"{where}: {dotted}: type {kind!r}; valid: {valid}")
    low, high = (parse_number(spec.get(b), f"{where}: {dotted}.{b}") for b in ("low", "high"))
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise CitysegError(f"{where}: {dotted}.log: expected true or false, got {log!r}")
    if kind == "int" and not (float(low).is_integer() and float(high).is_integer()):
        raise CitysegError(f"{where}: {dotted}: an integer key needs whole numbers, got {low}..{high}")
    if not low < high:
        raise CitysegError(f"{where}: {dotted}: low {low} must be below high {high} "
                           f"(to fix a value, use --set {dotted}={low})")
    if log and low <= 0:
        raise CitysegError(f"{where}: {dotted}: a log scale needs low > 0, got {low}")
    for bound, value in (("low", low), ("high", high)):  # the key's own range (config.RANGES)
        check_value(number(value), dotted, f"{where}: {dotted}.{bound}")
    if kind == "int":
        low, high = int(low), int(high)
    return Param(dotted, low, high, log=log, integer=kind == "int")


def load_space(path: str | Path | None) -> list[Param]:
    """The search space of a YAML file, or :data:`DEFAULT_SPACE` when ``path`` is None."""
    if path is None:
        return parse_space(DEFAULT_SPACE, "default space")
    path = Path(path)
    if not path.is_file():
        raise CitysegError(f"--space {path}: file not found")
    raw = read_yaml(path, f"--space {path}")
    return parse_space(raw, f"--space {path}")


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
                           "(CUDA_VISIBLE_DEVICES) on a shared --storage instead")
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
             f"searching {', '.join(p.key for p in space)}")

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
                 "the same command continues it")
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
    summary["plots"] = [str(p) for p in write_plots(study, out, base, space)]
    lines = [
        f"\ncityseg sweep: study {study.study_name!r}: {len(trials)} trials "
        f"({', '.join(f'{n} {s}' for s, n in counts.items())})"
    ]
    if complete:
        best = study.best_trial
        cfg = config_of(best, base)
        cfg.name = f"{study.study_name}_best"
        header = (f"# best trial {best.number} of study {study.study_name!r} ({storage}): val mIoU {best.value:.4f}\n"
                  f"# cityseg train --config {out / 'best.yaml'}\n")
        with atomic_path(out / "best.yaml") as tmp:
            tmp.write_text(header + cfg.to_yaml())
        summary.update(best_trial=best.number, best_value=best.value, best_params=dict(best.params),
                       best_yaml=str(out / "best.yaml"), best_run=best.user_attrs.get("run"))
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
              "run", "error"]
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for t in trials:
            duration = t.duration.total_seconds() if t.duration is not None else None
            writer.writerow([
                t.number, t.state.name, t.value, *(t.params.get(k) for k in keys), t.user_attrs.get("best_epoch"),
                max(t.intermediate_values, default=None), t.datetime_start, duration, t.user_attrs.get("run"),
                t.user_attrs.get("error"),
            ])
    return path


def write_plots(study: optuna.Study, out: Path, base: Config, space: list[Param]) -> list[Path]:
    """history.png, importance.png (>= 2 complete trials) and the trials over the searched keys
    (:func:`plot_searched`); returns those written."""
    optuna = import_optuna()
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    written = []
    if complete:
        from optuna.visualization import matplotlib as ov

        quiet = (optuna.exceptions.ExperimentalWarning,)
        history = lambda: ov.plot_optimization_history(study, target_name="val mIoU")  # noqa: E731
        written.append(save_pyplot(history, out / PLOTS["history"], "history plot", quiet))
        if len(complete) >= 2:
            importance = lambda: ov.plot_param_importances(study, target_name="val mIoU")  # noqa: E731
            written.append(save_pyplot(importance, out / PLOTS["importance"], "importance plot", quiet))
    if study.trials:
        written.append(plot_searched(study, out, base, [p.key for p in space]))
    return [path for path in written if path is not None]


def plot_searched(study: optuna.Study, out: Path, base: Config, keys: list[str]) -> Path:
    """Every finished trial over the first two searched ``keys`` (one key: against val mIoU),
    coloured by val mIoU, with the best trial and the base config marked (:func:`cityseg.viz.plot_trials`).
    Written as ``loss_weights.png`` when the keys are loss keys, else ``trials.png``."""
    states = import_optuna().trial.TrialState
    keys = keys[:2]

    def point(trial: optuna.trial.FrozenTrial, score: float | None) -> tuple[float, float, float | None]:
        values = [_get(config_of(trial, base), key) for key in keys]
        return (values[0], values[1], score) if len(keys) == 2 else (values[0], score, score)

    points: dict[str, list[tuple[float, float, float | None]]] = {"complete": [], "pruned": [], "failed": []}
    for t in study.get_trials(deepcopy=False):
        if t.state == states.COMPLETE:
            points["complete"].append(point(t, t.value))
        elif t.state == states.PRUNED and (len(keys) == 2 or t.intermediate_values):
            last = t.intermediate_values[max(t.intermediate_values)] if len(keys) == 1 else None
            points["pruned"].append(point(t, last))
        elif t.state == states.FAIL and len(keys) == 2:  # one key: a failed trial has no score to place
            points["failed"].append(point(t, None))
    best = None
    if points["complete"]:
        best = (*point(study.best_trial, study.best_value)[:2], f"best (trial {study.best_trial.number})")
    axes = (keys[0], keys[1]) if len(keys) == 2 else (keys[0], "val mIoU (best epoch)")
    title = f"study {study.study_name!r}: {' and '.join(keys)} of each trial against val mIoU"
    name = PLOTS["loss_weights"] if all(key.startswith("loss.") for key in keys) else PLOTS["trials"]
    base_values = tuple(_get(base, key) for key in keys)
    return plot_trials(points, axes, base_values, best, title, out / name)


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
                    f"{', '.join(changed)}; trials before and after compare less well")


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
