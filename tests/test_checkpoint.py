"""Checkpoints: atomic writes, weights_only loading, prefixes, RNG round trips, model rebuild."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from cityseg.config import Config
from cityseg import checkpoint as C
from cityseg.errors import CitysegError


def _tiny_state(cfg: Config | None = None) -> dict:
    from cityseg.models import build_model

    cfg = cfg or Config()
    cfg.model.name, cfg.model.freeze = "cityseg_tiny", []
    model = build_model("cityseg_tiny", freeze=[])
    return {"config": cfg.to_dict(), "model": model.state_dict(), "epoch": 3, "step": 30}


def test_round_trip_loads_with_weights_only(tmp_path):
    path = tmp_path / "ck" / "last.pt"
    gen = torch.Generator().manual_seed(5)
    state = {**_tiny_state(), "rng": [C.capture_rng(gen)], "best_miou": 0.5, "scaler": None}
    C.save_checkpoint(path, state)
    raw = torch.load(path, weights_only=True)  # must not need the full unpickler
    assert raw["format"] == "cityseg" and raw["version"] == 1 and raw["epoch"] == 3
    ckpt = C.load_checkpoint(path)
    for key, value in state["model"].items():
        assert torch.equal(ckpt["model"][key], value)
    assert ckpt["config"]["model"]["name"] == "cityseg_tiny"


def test_rng_capture_restore_replays_every_generator():
    gen = torch.Generator().manual_seed(1)
    torch.manual_seed(2), np.random.seed(3), random.seed(4)
    np.random.randn()  # leaves a cached gaussian in the numpy state
    saved = C.capture_rng(gen)
    first = (torch.rand(3), np.random.rand(3), random.random(), torch.rand(3, generator=gen), np.random.randn())
    torch.manual_seed(99), np.random.seed(99), random.seed(99), gen.manual_seed(99)
    C.restore_rng(saved, gen)
    again = (torch.rand(3), np.random.rand(3), random.random(), torch.rand(3, generator=gen), np.random.randn())
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    assert first[2] == again[2] and torch.equal(first[3], again[3]) and first[4] == again[4]


def test_rng_state_survives_weights_only_file(tmp_path):
    gen = torch.Generator().manual_seed(7)
    C.save_checkpoint(tmp_path / "r.pt", {"rng": [C.capture_rng(gen)]})
    expected = (torch.rand(2), np.random.rand(), random.random())
    C.restore_rng(C.load_checkpoint(tmp_path / "r.pt")["rng"][0], gen)
    assert torch.equal(torch.rand(2), expected[0])
    assert np.random.rand() == expected[1] and random.random() == expected[2]


def test_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    C.save_checkpoint(path, {"epoch": 1})
    real_save = torch.save

    def dying_save(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"half a checkpo")  # what a kill mid-write would leave
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        C.save_checkpoint(path, {"epoch": 2})
    monkeypatch.setattr(torch, "save", real_save)
    assert C.load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left behind


class _Evil:
    def __reduce__(self):
        return (print, ("arbitrary code ran",))


@pytest.mark.parametrize(
    "content, message",
    [
        (b"not a zip file at all", "not a readable cityseg checkpoint"),
        ("pickled_object", "refused: the file holds Python objects .* cityseg never executes checkpoint code"),
        ("plain_state_dict", "not a cityseg checkpoint"),
        ("no_model", "damaged cityseg checkpoint: no 'model' mapping"),
        ("no_config", "damaged cityseg checkpoint: no 'config' mapping"),
    ],
)
def test_bad_files_give_one_clear_error(tmp_path, content, message, capsys):
    path = tmp_path / "x.pt"
    if content == "pickled_object":
        torch.save({"format": "cityseg", "version": 1, "evil": _Evil()}, path)
    elif content == "plain_state_dict":
        torch.save({"weight": torch.zeros(2)}, path)
    elif content == "no_model":
        torch.save({"format": "cityseg", "version": 1, "config": {}}, path)
    elif content == "no_config":
        torch.save({"format": "cityseg", "version": 1, "model": {"w": torch.zeros(1)}}, path)
    else:
        path.write_bytes(content)
    loader = C.load_model if content in ("no_model", "no_config") else C.load_checkpoint
    with pytest.raises(CitysegError, match=message) as info:
        loader(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    assert "can still be loaded" not in str(info.value) and "weights_only=False" not in str(info.value)
    assert "arbitrary code ran" not in capsys.readouterr().out


def test_missing_file(tmp_path):
    with pytest.raises(CitysegError, match="checkpoint not found"):
        C.load_checkpoint(tmp_path / "none.pt")


def test_strip_prefixes_removes_ddp_and_compile_wrappers():
    sd = {"module._orig_mod.a.weight": 1, "_orig_mod.module.b": 2, "c.module.d": 3}
    assert C.strip_prefixes(sd) == {"a.weight": 1, "b": 2, "c.module.d": 3}


def test_load_model_rebuilds_from_the_checkpoint_config(tmp_path):
    state = _tiny_state()
    C.save_checkpoint(tmp_path / "m.pt", {**state, "model": {f"module.{k}": v for k, v in state["model"].items()}})
    model, cfg = C.load_model(tmp_path / "m.pt")
    assert cfg.model.name == "cityseg_tiny" and not model.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, state["model"][key])
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 32, 64))["out"].shape[-2:] == (32, 64)


def test_checkpoint_of_another_model_names_both(tmp_path):
    from cityseg.models import build_model

    C.save_checkpoint(tmp_path / "m.pt", _tiny_state())
    other = build_model("lraspp_mobilenet_v3_large", freeze=[])
    ckpt = C.load_checkpoint(tmp_path / "m.pt")
    with pytest.raises(CitysegError, match="holds model 'cityseg_tiny'.*builds 'lraspp_mobilenet_v3_large'"):
        C.load_model_state(other, ckpt, tmp_path / "m.pt", "lraspp_mobilenet_v3_large")


def test_weights_that_do_not_fit_are_reported(tmp_path):
    state = _tiny_state()
    state["model"] = {k: v for k, v in state["model"].items() if "classifier" not in k}
    C.save_checkpoint(tmp_path / "m.pt", state)
    with pytest.raises(CitysegError, match="weights do not fit model 'cityseg_tiny'"):
        C.load_model(tmp_path / "m.pt")


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_weights_are_refused_naming_the_file_and_the_tensor(tmp_path, value):
    state = _tiny_state()
    names = [k for k, v in state["model"].items() if v.is_floating_point()]
    first, later = names[3], names[-1]
    state["model"][first].view(-1)[0] = value
    state["model"][later].view(-1)[-1] = value
    C.save_checkpoint(tmp_path / "m.pt", state)
    with pytest.raises(CitysegError) as info:
        C.load_checkpoint(tmp_path / "m.pt")
    assert str(info.value) == (f"{tmp_path / 'm.pt'}: tensor model.{first} holds NaN or infinite values; "
                               "a usable checkpoint holds finite weights only")
    with pytest.raises(CitysegError, match=f"tensor model.{first} holds NaN"):
        C.load_model(tmp_path / "m.pt")


@pytest.mark.parametrize("command", ["export", "predict", "evaluate"])
def test_every_command_refuses_a_checkpoint_with_non_finite_weights(tmp_path, capsys, command):
    from cityseg.cli import main

    state = _tiny_state()
    name = next(k for k, v in state["model"].items() if v.is_floating_point())
    state["model"][name].fill_(float("nan"))
    ckpt = tmp_path / "nan.pt"
    C.save_checkpoint(ckpt, state)
    (tmp_path / "photos").mkdir()
    from PIL import Image

    Image.fromarray(np.zeros((32, 64, 3), np.uint8)).save(tmp_path / "photos" / "a.png")
    args = {
        "export": ["--onnx", str(tmp_path / "m.onnx")],
        "predict": [str(tmp_path / "photos"), "--out", str(tmp_path / "pred")],
        "evaluate": ["--data", str(tmp_path / "photos"), "--device", "cpu"],
    }[command]
    assert main([command, "--checkpoint", str(ckpt), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (f"cityseg {command}: error: {ckpt}: tensor model.{name} holds NaN or infinite values; "
                       "a usable checkpoint holds finite weights only")
    assert not (tmp_path / "m.onnx").exists() and not any(p.is_file() for p in tmp_path.glob("pred/**/*"))
