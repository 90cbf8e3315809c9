"""Configuration: the recipes load, overrides apply, bad keys and values give one clear line."""

from __future__ import annotations

import yaml
import pytest

from cityseg.cli import main
from cityseg.config import CONFIG_DIR, Config, config_from_dict, load_config
from cityseg.errors import CitysegError

RECIPES = ["demo", "seed", "seed_ce", "published_r50", "r101", "convnext", "pairs"]


@pytest.mark.parametrize("name", RECIPES)
def test_every_recipe_loads_and_round_trips(name):
    cfg = load_config(CONFIG_DIR / f"{name}.yaml")
    assert cfg.name == name
    again = config_from_dict(yaml.safe_load(cfg.to_yaml()))
    assert again == cfg  # the saved config.yaml rebuilds the same Config


def test_seed_recipe_is_the_seeds():
    cfg = load_config(CONFIG_DIR / "seed.yaml")
    assert (cfg.model.name, cfg.model.pretrained) == ("deeplabv3_resnet50", "imagenet")
    assert cfg.model.freeze == ["stem", "layer1"]
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay) == ("adamw", 5e-4, 1e-3)
    assert (cfg.sched.name, cfg.sched.factor, cfg.sched.patience) == ("plateau", 0.5, 3) and cfg.sched.warmup_iters > 0
    assert cfg.train.batch_size == 32 and (cfg.loss.focal, cfg.loss.dice, cfg.loss.ce) == (1.5, 1.0, 0.0)
    ce = load_config(CONFIG_DIR / "seed_ce.yaml")
    assert (ce.loss.ce, ce.loss.focal, ce.loss.dice) == (1.0, 0.0, 0.0)
    assert ce.optim == cfg.optim and ce.sched == cfg.sched and ce.model == cfg.model and ce.train == cfg.train


def test_published_recipe_is_80k_iterations_of_8():
    cfg = load_config(CONFIG_DIR / "published_r50.yaml")
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay) == ("sgd", 0.01, 0.9, 1e-4)
    assert (cfg.sched.name, cfg.sched.power) == ("poly", 0.9) and cfg.data.crop_size == (1024, 512)
    assert cfg.model.aux_head and cfg.loss.aux_weight == 0.4
    assert abs(cfg.train.epochs * 2975 / cfg.train.batch_size - 80_000) < 2975 / cfg.train.batch_size


def test_no_config_means_demo():
    assert load_config(None).name == "demo"


def test_overrides_are_yaml_typed_and_ordered():
    cfg = load_config(None, ["train.epochs=3", "optim.lr=1e-3", "data.scale_range=[1, 1.5]", "train.epochs=4"])
    assert cfg.train.epochs == 4 and cfg.optim.lr == 1e-3 and cfg.data.scale_range == [1.0, 1.5]
    assert load_config(None, ["train.grad_clip=null"]).train.grad_clip is None


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["train.epoch=3"], r"unknown config key train\.epoch; valid keys of train: epochs, max_steps, max_minutes"),
        (["trian.epochs=3"], r"unknown config section 'trian'; valid sections: data, model"),
        (["train.epochs=three"], r"config key train\.epochs: expected an integer, got 'three'"),
        (["train.epochs"], r"--set 'train.epochs': write section\.key=value"),
        (["train.channels_last=2"], r"train\.channels_last: expected true or false"),
        (["train.amp=off"], r"train\.amp: expected a string, got False \(YAML reads unquoted yes/no/on/off"),
    ],
)
def test_bad_overrides(overrides, message):
    with pytest.raises(CitysegError, match=message):
        load_config(None, overrides)


def test_unknown_key_in_a_file_names_it(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("optim:\n  lr: 0.1\n  nesterov: true\n")
    with pytest.raises(CitysegError, match=r"unknown config key optim\.nesterov; valid keys of optim: name, lr"):
        load_config(path)


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(CitysegError, match="config file not found"):
        load_config(tmp_path / "none.yaml")
    (tmp_path / "b.yaml").write_text("train: [unclosed\n")
    with pytest.raises(CitysegError, match="not valid YAML"):
        load_config(tmp_path / "b.yaml")


def test_cli_print_config_prints_resolved_yaml(capsys, tmp_path):
    code = main(["train", "--print-config", "--set", "train.epochs=7", "--data", str(tmp_path)])
    assert code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["train"]["epochs"] == 7 and printed["data"]["root"] == str(tmp_path) and printed["name"] == "demo"
    assert config_from_dict(printed) == load_config(None, ["train.epochs=7", f"data.root={tmp_path}"])


def test_cli_bad_key_exits_2_with_one_line(capsys):
    assert main(["train", "--print-config", "--set", "model.nmae=x"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cityseg train: error: unknown config key model.nmae") and "\n" not in err


def test_cli_resume_and_force_are_exclusive(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--resume", "--force"])
    assert "not allowed with" in capsys.readouterr().err


def test_resume_reads_the_runs_own_config(tmp_path, capsys):
    cfg = Config(name="mine")
    cfg.train.epochs = 9
    (tmp_path / "config.yaml").write_text(cfg.to_yaml())
    assert main(["train", "--resume", "--out", str(tmp_path), "--set", "train.epochs=12", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["name"] == "mine" and printed["train"]["epochs"] == 12


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.epochs=0", "config key train.epochs: 0 is out of range; valid: an integer >= 1"),
        ("train.epochs=-1", "config key train.epochs: -1 is out of range; valid: an integer >= 1"),
        ("train.max_steps=0", "config key train.max_steps: 0 is out of range; valid: an integer >= 1"),
        ("train.max_minutes=0", "config key train.max_minutes: 0.0 is out of range; valid: a finite number > 0"),
        ("train.max_minutes=-5", "config key train.max_minutes: -5.0 is out of range; valid: a finite number > 0"),
        ("train.max_minutes=.nan", "config key train.max_minutes: nan is out of range; valid: a finite number > 0"),
        ("train.batch_size=0", "config key train.batch_size: 0 is out of range; valid: an integer >= 1 and <= 65536"),
        ("optim.lr=-1", "config key optim.lr: -1.0 is out of range; valid: a finite number > 0 and <= 10"),
        ("optim.lr=.nan", "config key optim.lr: nan is out of range; valid: a finite number > 0 and <= 10"),
        ("optim.lr=.inf", "config key optim.lr: inf is out of range; valid: a finite number > 0 and <= 10"),
        ("data.workers=-1", "config key data.workers: -1 is out of range; valid: an integer >= 0 and <= 256"),
        ("optim.betas=[0.9, 1.0]", "config key optim.betas: 1.0 in [0.9, 1.0] is out of range; valid: a finite number >= 0 and <= 0.9999"),
        ("loss.class_weights=[1, -2]", "config key loss.class_weights: -2.0 in [1.0, -2.0] is out of range; valid: a finite number >= 0"),
        ("eval.boundary_tolerance=100000", "config key eval.boundary_tolerance: 100000 is out of range; valid: an integer >= -1 and <= 256"),
        ("data.crop_size=100000x100000", "config key data.crop_size: '100000x100000' is too large; valid: at most 8192 a side and 67,108,864 pixels"),
        ("data.crop_size=0x5", "config key data.crop_size: '0x5' is not a size; write WIDTHxHEIGHT, e.g. 1024x512"),
        ("eval.scales=[1, 100]", "config key eval.scales: 100.0 in [1.0, 100.0] is out of range; valid: a finite number > 0 and <= 8"),
    ],
)
def test_out_of_range_values_name_the_key_and_the_valid_range(override, message):
    with pytest.raises(CitysegError) as info:
        load_config(None, [override])
    assert str(info.value) == message


def test_range_edges_and_null_limits_are_valid():
    cfg = load_config(None, ["train.epochs=1", "train.max_steps=1", "train.max_minutes=0.001"])
    assert (cfg.train.epochs, cfg.train.max_steps, cfg.train.max_minutes) == (1, 1, 0.001)
    assert load_config(None, ["train.max_steps=null", "train.max_minutes=null"]).train.max_steps is None


def test_sizes_and_scales_outside_the_limits_are_refused_before_any_allocation():
    from cityseg.utils import MAX_SIDE, parse_scales, parse_size

    assert parse_size(f"{MAX_SIDE}x{MAX_SIDE}") == (MAX_SIDE, MAX_SIDE)
    for bad in (f"{MAX_SIDE + 1}x1", "100000x100000", "9000x9000"):
        with pytest.raises(CitysegError, match="too large; valid: at most 8192 a side"):
            parse_size(bad, "--size")
    assert parse_scales("0.5,8") == [0.5, 8.0]
    for bad in ("0", "-1", "8.5", "nan", "1,x"):
        with pytest.raises(CitysegError, match=r"--scales .*: write numbers in \(0, 8\]"):
            parse_scales(bad)


def test_a_config_that_is_not_utf8_or_not_yaml_is_one_line(tmp_path):
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(CitysegError, match=r"latin.yaml: not UTF-8 text \(byte 9\); save it as UTF-8"):
        load_config(latin)
    folder = tmp_path / "folder.yaml"
    folder.mkdir()
    with pytest.raises(CitysegError, match="folder.yaml"):
        load_config(folder)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["benchmark", "--size", "100000x100000"], "--size: '100000x100000' is too large"),
        (["evaluate", "--pred-dir", "p", "--gt-dir", "g", "--boundary-tolerance", "100000"], "--boundary-tolerance: 100000 is out of range"),
        (["train", "--set", "data.workers=-1"], "config key data.workers: -1 is out of range"),
    ],
)
def test_cli_absurd_values_are_one_line_before_any_work(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


def test_cli_zero_epochs_is_one_line_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--set", "train.epochs=0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "cityseg train: error: config key train.epochs: 0 is out of range; valid: an integer >= 1"
    assert not out.exists()


def test_a_recipe_is_found_by_name_from_any_folder(tmp_path, monkeypatch):
    from cityseg.config import recipe_names

    monkeypatch.chdir(tmp_path)
    assert load_config("pairs").model.name == "cityseg_small"
    assert load_config("seed").name == "seed"
    assert {"demo", "seed", "seed_ce", "pairs"} <= set(recipe_names())
    (tmp_path / "pairs").mkdir()  # a folder of that name is not a config file: the recipe still wins
    assert load_config("pairs").name == "pairs"
    with pytest.raises(CitysegError, match=r"nope: config file not found; .*recipe name: .*demo.*pairs"):
        load_config("nope")


@pytest.mark.slow
def test_a_plain_install_finds_its_recipes_from_an_unrelated_folder(tmp_path):
    """``pip install .`` (not editable) into a separate folder, run from another: the recipes are package data."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    target, elsewhere = tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(repo)], check=True, capture_output=True)
    env = {k: v for k, v in __import__("os").environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(target)}
    code = ("import cityseg, sys; from cityseg.cli import main; assert cityseg.__file__.startswith(sys.argv[1]), "
            "cityseg.__file__; sys.exit(main(['train', '--print-config', '--config', 'seed']))")
    done = subprocess.run([sys.executable, "-c", code, str(target)], cwd=elsewhere, env=env, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    assert "deeplabv3_resnet50" in done.stdout
    done = subprocess.run([sys.executable, "-c", code.replace("'--config', 'seed'", ""), str(target)], cwd=elsewhere,
                          env=env, capture_output=True, text=True)
    assert done.returncode == 0 and "cityseg_tiny" in done.stdout, done.stderr


def test_sizes_are_parsed_once_when_the_config_is_read():
    from cityseg.config import DataConfig, EvalConfig
    from cityseg.utils import Size

    cfg = load_config("demo", ["data.crop_size=64x32", "data.crop_stages=[32x16, 48x24]", "eval.stride=24x12"])
    assert cfg.data.crop_size == Size(64, 32) and cfg.data.crop_stages == [Size(32, 16), Size(48, 24)]
    assert isinstance(cfg.eval.stride, Size) and (cfg.eval.stride.width, cfg.eval.stride.height) == (24, 12)
    raw = cfg.to_dict()  # written back as text: the YAML of a run folder, a checkpoint's config
    assert (raw["data"]["crop_size"], raw["data"]["crop_stages"], raw["eval"]["stride"]) == ("64x32", ["32x16", "48x24"], "24x12")
    assert config_from_dict(raw, name=cfg.name) == cfg
    assert yaml.safe_load(cfg.to_yaml())["data"]["crop_size"] == "64x32"
    assert DataConfig(crop_size="48x32").crop_size == (48, 32) and EvalConfig(crop_size=(64, 48)).crop_size == (64, 48)
    with pytest.raises(CitysegError, match=r"config key data.crop_stages: '32x0' is not a size"):
        load_config("demo", ["data.crop_stages=[32x16, 32x0]"])  # refused at reading, not when training reaches it
    with pytest.raises(CitysegError, match="config key data.val_size: 'big' is not a size"):
        DataConfig(val_size="big")
