"""``cityseg sweep`` on tiny synthetic data: a resumable study, its report, the search space's
errors, failed (NaN) and pruned trials, and the hint when optuna is missing."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest
import torch

import cityseg.engine.train as T
from cityseg.cli import main
from cityseg.config import load_config
from cityseg.errors import CitysegError

optuna = pytest.importorskip("optuna")

from cityseg.sweep import load_space, parse_space, run_sweep  # noqa: E402

#: One 64x32 epoch of 2 steps per trial, no worker processes.
TINY = [
    "model.name=cityseg_tiny",
    "model.freeze=[]",
    "data.crop_size=64x32",
    "data.scale_range=[0.75,1.25]",
    "data.workers=0",
    "train.batch_size=4",
    "train.val_batch_size=4",
    "train.epochs=1",
    "train.panels=1",
    "sched.name=constant",
    "sched.warmup_iters=0",
]


pytestmark = pytest.mark.usefixtures("one_thread_torch")


def sweep_args(root: Path, out: Path, trials: int, *extra: str) -> list[str]:
    sets = [item for s in TINY for item in ("--set", s)]
    return ["sweep", "--data", str(root), "--out", str(out), "--trials", str(trials), "--device", "cpu", *sets, *extra]


def states(out: Path, name: str = "demo") -> list[str]:
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{out / 'study.db'}")
    return [t.state.name for t in study.trials]


def test_two_trials_then_one_more_make_one_study_and_a_report(synth_root, tmp_path, capsys):
    out = tmp_path / "sweep"
    assert main(sweep_args(synth_root, out, 2)) == 0
    assert main(sweep_args(synth_root, out, 1)) == 0
    printed = capsys.readouterr()
    assert "2 trials so far, running 1 more" in printed.out and "study 'demo': 3 trials (3 complete)" in printed.out
    assert "the base config differs" not in printed.out + printed.err

    study = optuna.load_study(study_name="demo", storage=f"sqlite:///{out / 'study.db'}")
    assert [t.number for t in study.trials] == [0, 1, 2]
    assert len({tuple(sorted(t.params.items())) for t in study.trials}) == 3  # the rerun draws new values
    assert set(study.trials[0].params) == {"loss.focal", "loss.dice", "loss.focal_gamma"}
    assert sorted(p.name for p in (out / "trials").iterdir()) == ["0", "1", "2"]

    best = load_config(out / "best.yaml")
    for key, value in study.best_params.items():
        section, name = key.split(".")
        assert getattr(getattr(best, section), name) == pytest.approx(value)
    assert best.data.root == str(synth_root) and best.model.name == "cityseg_tiny"

    with (out / "trials.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["number"] for r in rows] == ["0", "1", "2"] and {r["state"] for r in rows} == {"COMPLETE"}
    assert float(rows[study.best_trial.number]["val_miou"]) == pytest.approx(study.best_value)
    for name in ("history.png", "importance.png", "loss_weights.png"):
        assert (out / name).stat().st_size > 5000, name

    # --trials 0 only rewrites the report; a changed base config is pointed out
    assert main(sweep_args(synth_root, out, 0, "--set", "train.epochs=2")) == 0
    assert ("cityseg sweep: warning: the base config differs from the one study 'demo' began with: train.epochs 1 -> 2"
            in capsys.readouterr().err)
    assert len(optuna.load_study(study_name="demo", storage=f"sqlite:///{out / 'study.db'}").trials) == 3

    # best.yaml runs as it is
    assert main(["train", "--config", str(out / "best.yaml"), "--out", str(tmp_path / "again"), "--device", "cpu"]) == 0
    assert (tmp_path / "again" / "checkpoints" / "best.pt").is_file()


@pytest.mark.parametrize(
    "space, message",
    [
        ("loss.nope: {low: 0, high: 1}", "unknown config key loss.nope; valid keys of loss: ce, focal, dice,"),
        ("lose.focal: {low: 0, high: 1}", "unknown config section 'lose'; valid sections: data, model, loss,"),
        ("model.name: {low: 0, high: 1}", "model.name is not a number; numeric keys of model: output_stride"),
        ("loss.dice: {low: 2, high: 1}", "loss.dice: low 2 must be below high 1"),
        ("optim.lr: {low: 0, high: 1, log: true}", "optim.lr: a log scale needs low > 0"),
        ("loss.dice: {low: 0, hihg: 1}", "loss.dice: unknown field(s) hihg; valid: low, high, log, type"),
        ("loss.dice: {low: -1, high: 1}", "loss.dice.low: -1.0 is out of range; valid: a finite number >= 0"),
        ("train.epochs: {low: 0, high: 3}", "train.epochs.low: 0 is out of range; valid: an integer >= 1"),
    ],
)
def test_a_bad_space_gives_one_line(tmp_path, capsys, space, message):
    (tmp_path / "space.yaml").write_text(space + "\n")
    out = tmp_path / "sweep"
    assert main(["sweep", "--out", str(out), "--trials", "1", "--space", str(tmp_path / "space.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cityseg sweep: error: --space ") and message in err and "\n" not in err
    assert not out.exists()  # refused before anything ran


def test_an_unknown_set_key_gives_one_line(tmp_path, capsys):
    assert main(["sweep", "--out", str(tmp_path / "s"), "--trials", "1", "--set", "loss.nope=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown config key loss.nope; valid keys of loss: ce, focal, dice" in err and "\n" not in err


def test_space_file_with_log_and_int_keys():
    params = {p.key: p for p in parse_space({
        "optim.lr": {"low": "1e-4", "high": 1e-2, "log": True},
        "train.epochs": {"low": 1, "high": 3},
        "loss.dice": {"low": 0, "high": 2, "type": "int"},
    })}  # fmt: skip
    assert params["optim.lr"].log and not params["optim.lr"].integer and params["optim.lr"].low == 1e-4
    assert params["train.epochs"].integer and params["loss.dice"].integer
    assert [p.key for p in load_space(None)] == ["loss.focal", "loss.dice", "loss.focal_gamma"]
    with pytest.raises(CitysegError, match="type 'float'; valid: int"):
        parse_space({"train.epochs": {"low": 1, "high": 3, "type": "float"}})


def test_the_trials_are_drawn_over_the_keys_searched(tmp_path, monkeypatch):
    """Not always the loss weights: the first two searched keys (trials.png unless both are loss
    keys), or one key against val mIoU."""
    import cityseg.sweep as S
    from cityseg.config import Config

    study = optuna.create_study(direction="maximize")
    dist = {"optim.lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True),
            "train.batch_size": optuna.distributions.IntDistribution(4, 16)}
    for lr, batch, value in ((1e-3, 4, 0.2), (5e-3, 8, 0.3)):
        study.add_trial(optuna.trial.create_trial(params={"optim.lr": lr, "train.batch_size": batch},
                                                  distributions=dist, value=value))
    path = S.plot_searched(study, tmp_path, Config(), ["optim.lr", "train.batch_size"])
    assert path == tmp_path / "trials.png" and path.stat().st_size > 5000
    drawn = []
    monkeypatch.setattr(S, "plot_trials", lambda *args: drawn.append(args))
    S.plot_searched(study, tmp_path, Config(), ["optim.lr", "train.batch_size"])
    S.plot_searched(study, tmp_path, Config(), ["optim.lr"])
    (points, axes, base, best, _, out), (points1, axes1, base1, best1, _, out1) = drawn
    assert axes == ("optim.lr", "train.batch_size") and points["complete"] == [(1e-3, 4, 0.2), (5e-3, 8, 0.3)]
    assert base == (5e-4, 8) and best == (5e-3, 8, "best (trial 1)") and out == tmp_path / "trials.png"
    assert axes1 == ("optim.lr", "val mIoU (best epoch)") and points1["complete"] == [(1e-3, 0.2, 0.2), (5e-3, 0.3, 0.3)]
    assert base1 == (5e-4,) and best1 == (5e-3, 0.3, "best (trial 1)")


def test_a_nan_trial_is_recorded_failed_and_the_study_goes_on(synth_root, tmp_path, monkeypatch):
    real, calls = T.compute_loss, {"n": 0}

    def poisoned(*args):  # one step per trial: the second trial's loss is NaN
        calls["n"] += 1
        loss = real(*args)
        return loss * float("nan") if calls["n"] == 2 else loss

    monkeypatch.setattr(T, "compute_loss", poisoned)
    cfg = load_config(None, TINY)
    cfg.data.root = str(synth_root)
    out = tmp_path / "sweep"
    summary = run_sweep(cfg, out, 3, device="cpu", max_steps_per_epoch=1)
    assert states(out) == ["COMPLETE", "FAIL", "COMPLETE"]
    assert summary["states"] == {"complete": 2, "fail": 1} and summary["best_trial"] in (0, 2)
    with (out / "trials.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert "loss is nan at epoch 1, step 1" in rows[1]["error"] and rows[1]["val_miou"] == ""
    assert (out / "loss_weights.png").is_file() and (out / "best.yaml").is_file()


def test_the_pruner_stops_a_trial_after_a_validation(synth_root, tmp_path):
    cfg = load_config(None, [*TINY, "train.epochs=3"])
    cfg.data.root = str(synth_root)
    out = tmp_path / "sweep"
    with pytest.raises(CitysegError, match="no trial of study 'demo' completed"):
        run_sweep(cfg, out, 1, device="cpu", max_steps_per_epoch=1, pruner=optuna.pruners.ThresholdPruner(lower=2.0))
    assert states(out) == ["PRUNED"]
    assert len((out / "trials" / "0" / "metrics.jsonl").read_text().splitlines()) == 1  # stopped after epoch 1
    assert (out / "trials.csv").is_file() and not (out / "best.yaml").exists()


def test_the_default_pruner_waits_for_epoch_2_and_5_finished_trials():
    """The README's promise: a trial below the median is stopped from epoch 2 on, once 5 trials have finished."""
    from cityseg.sweep import PRUNE_AFTER_TRIALS, PRUNE_FROM_EPOCH, median_pruner

    assert (PRUNE_FROM_EPOCH, PRUNE_AFTER_TRIALS) == (2, 5)

    def pruned_at(finished: int) -> list[int]:
        study = optuna.create_study(direction="maximize", pruner=median_pruner())
        dist = {"x": optuna.distributions.FloatDistribution(0, 1)}
        for _ in range(finished):
            study.add_trial(optuna.trial.create_trial(params={"x": 0.5}, distributions=dist, value=0.5,
                                                      intermediate_values={1: 0.5, 2: 0.5, 3: 0.5}))
        trial, stops = study.ask(), []
        for epoch in (1, 2, 3):  # far below the median at every epoch
            trial.report(0.1, epoch)
            if trial.should_prune():
                stops.append(epoch)
        return stops

    assert pruned_at(PRUNE_AFTER_TRIALS) == [2, 3]
    assert pruned_at(PRUNE_AFTER_TRIALS - 1) == []


def test_trials_do_not_pay_for_the_closing_tta_score(synth_root, tmp_path):
    """The objective is the one-pass val mIoU: a trial whose eval section asks for flip writes no eval_val.json,
    while a plain train run of the same config does."""
    sets = [*TINY, "eval.flip=true"]
    cfg = load_config(None, sets)
    cfg.data.root = str(synth_root)
    out = tmp_path / "sweep"
    run_sweep(cfg, out, 1, device="cpu", max_steps_per_epoch=1)
    trial = out / "trials" / "0"
    assert (trial / "metrics.jsonl").is_file() and not (trial / "eval_val.json").exists()
    T.train(cfg, tmp_path / "run", device="cpu", max_steps_per_epoch=1)
    assert (tmp_path / "run" / "eval_val.json").is_file()


def test_missing_optuna_gives_the_install_hint(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna raises ImportError
    assert main(["sweep", "--out", str(tmp_path / "s"), "--trials", "1"]) == 2
    assert capsys.readouterr().err == 'cityseg sweep: error: a sweep needs optuna, which is not installed; pip install "cityseg[sweep]"\n'
