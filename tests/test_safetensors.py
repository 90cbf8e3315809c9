"""Weights-only files: ``cityseg export --safetensors``, its metadata, every ``--checkpoint`` reading it,
``Predictor.from_file``, the lazy ``from cityseg import Predictor``, and the refusals (resume, damage)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cityseg import __version__
from cityseg import checkpoint as C
from cityseg.cli import main
from cityseg.datasets import load_dataset
from cityseg.config import Config
from cityseg.errors import CitysegError
from cityseg.pretrained import build_starting_model

SRC = Path(__file__).resolve().parents[1] / "src"
DATASET = load_dataset("cityscapes").to_dict()  # the description every checkpoint carries


pytestmark = pytest.mark.usefixtures("one_thread_torch")  # conftest: one thread, restored after


def tiny_state() -> dict:
    """A cityseg_tiny checkpoint's content: seeded weights, BatchNorm statistics that are not the
    defaults (so buffers matter), DDP-prefixed keys, and a training state that must not be exported."""
    from cityseg.models import build_model

    torch.manual_seed(0)
    model = build_model("cityseg_tiny", freeze=[])
    for name, buf in model.named_buffers():
        if name.endswith("running_mean"):
            buf.normal_(0, 0.1)
        elif name.endswith("running_var"):
            buf.uniform_(0.5, 1.5)
    cfg = Config()
    cfg.model.name, cfg.model.freeze = "cityseg_tiny", []
    weights = {f"module.{k}": v for k, v in model.state_dict().items()}
    return {"config": cfg.to_dict(), "model": weights, "dataset": DATASET, "epoch": 2, "step": 20,
            "optimizer": {"state": {}, "param_groups": []}, "best_miou": 0.1}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """best.pt, its CLI exports model.safetensors and model.onnx, and a folder of two photos."""
    root = tmp_path_factory.mktemp("st")
    C.save_checkpoint(root / "best.pt", tiny_state())
    out = root / "export"
    assert main(["export", "--checkpoint", str(root / "best.pt"), "--safetensors", str(out / "model.safetensors"),
                 "--onnx", str(out / "model.onnx"), "--exporter", "torchscript"]) == 0
    photos = root / "photos"
    photos.mkdir()
    for i in range(2):
        Image.fromarray(rgb(48, 80, seed=i)).save(photos / f"p{i}.png")
    return {"pt": root / "best.pt", "st": out / "model.safetensors", "onnx": out / "model.onnx", "photos": photos}


def rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def one_error_line(capsys, command: str) -> str:
    """The CLI's one error line on stderr (asserting there is exactly one and no traceback)."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert err[0].startswith(f"cityseg {command}: error: ")
    return err[0]


def test_export_writes_weights_and_metadata_only(files):
    from safetensors import safe_open

    with safe_open(str(files["st"]), framework="pt") as f:
        meta, keys = f.metadata(), set(f.keys())
    state = tiny_state()
    assert meta == {"format": "cityseg", "version": str(C.VERSION), "cityseg_version": __version__,
                    "model_name": "cityseg_tiny", "config": meta["config"], "dataset": meta["dataset"],
                    "normalization": meta["normalization"]}
    # a checkpoint without a recorded normalisation (written before models carried theirs) is ImageNet's
    assert json.loads(meta["normalization"]) == {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    assert json.loads(meta["config"]) == state["config"] and json.loads(meta["dataset"]) == DATASET
    assert keys == {k.removeprefix("module.") for k in state["model"]}  # prefixes stripped, no training state
    assert sorted(p.name for p in files["st"].parent.iterdir()) == ["model.onnx", "model.safetensors"]


def test_load_checkpoint_gives_the_inference_part_of_the_pt(files):
    pt, st = C.load_checkpoint(files["pt"]), C.load_checkpoint(files["st"])
    assert set(st) == {"format", "version", "model", "config", "dataset", "normalization"}
    assert (st["format"], st["version"], st["config"], st["dataset"]) == ("cityseg", C.VERSION, pt["config"], DATASET)
    # the format is known by its content too, whatever the file is called
    renamed = files["st"].parent.parent / "weights.bin"
    renamed.write_bytes(files["st"].read_bytes())
    assert C.load_checkpoint(renamed)["config"] == pt["config"]


def test_load_model_gives_identical_weights_and_predictions(files):
    (m_pt, cfg_pt), (m_st, cfg_st) = C.load_model(files["pt"]), C.load_model(files["st"])
    assert cfg_pt == cfg_st and not m_st.training
    sd_pt, sd_st = m_pt.state_dict(), m_st.state_dict()
    assert sd_pt.keys() == sd_st.keys() and all(torch.equal(sd_pt[k], sd_st[k]) for k in sd_pt)
    x = torch.randn(2, 3, 32, 64)
    with torch.no_grad():
        assert torch.equal(m_pt(x)["out"], m_st(x)["out"])


def test_predict_cli_writes_the_same_train_ids_from_both_files(files, tmp_path):
    pngs = {}
    for kind in ("pt", "st"):
        out = tmp_path / kind
        assert main(["predict", "--checkpoint", str(files[kind]), str(files["photos"]), "--out", str(out),
                     "--device", "cpu", "--precision", "fp32"]) == 0
        pngs[kind] = {p.name: np.asarray(Image.open(p)) for p in sorted((out / "trainIds").glob("*.png"))}
    assert sorted(pngs["st"]) == ["p0.png", "p1.png"]
    assert all(np.array_equal(pngs["pt"][n], pngs["st"][n]) for n in pngs["pt"])
    assert len(np.unique(pngs["st"]["p0.png"])) > 1  # a real prediction, not one class everywhere


def test_predictor_from_file_reads_pt_safetensors_and_onnx(files):
    image = rgb(48, 80, seed=7)
    fp32 = {"device": "cpu", "precision": "fp32", "runtime": "torch"}
    from cityseg import Predictor

    p_pt, p_st = Predictor.from_file(files["pt"], **fp32), Predictor.from_file(str(files["st"]), **fp32)
    p_onnx = Predictor.from_file(files["onnx"])
    assert p_onnx.path == "onnxruntime" and p_st.path == p_pt.path
    pred = p_pt.predict(image)
    assert np.array_equal(pred, p_st.predict(image))
    assert (p_onnx.predict(image) == pred).mean() >= 0.999
    with pytest.raises(CitysegError, match="runs with onnxruntime in fp32"):
        Predictor.from_file(files["onnx"], precision="bf16")


def test_import_cityseg_stays_light_and_exports_predictor():
    code = ("import sys, cityseg; assert 'torch' not in sys.modules, 'torch imported'; "
            "assert 'Predictor' in cityseg.__all__ and 'Predictor' in dir(cityseg); "
            "assert not hasattr(cityseg, 'nothing_here'); "
            "from cityseg import Predictor; print(Predictor.__module__, hasattr(Predictor, 'from_file'))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["cityseg.inference.predict", "True"]


def test_resume_refuses_a_weights_only_file(files, tmp_path, capsys):
    capsys.readouterr()
    assert main(["train", "--resume", str(files["st"]), "--out", str(tmp_path / "run")]) == 2
    line = one_error_line(capsys, "train")
    assert f"--resume {files['st']}: the file holds weights only" in line and "checkpoints/last.pt" in line
    assert not (tmp_path / "run").exists()


def test_resume_file_names_the_run_folder(tmp_path):
    from cityseg.engine.resume import resume_folder

    last = tmp_path / "runs" / "demo" / "checkpoints" / "last.pt"
    C.save_checkpoint(last, tiny_state())
    assert resume_folder(last) == tmp_path / "runs" / "demo"
    with pytest.raises(CitysegError, match="belongs to the run in"):
        resume_folder(last, tmp_path / "other")
    C.save_checkpoint(tmp_path / "best.pt", tiny_state())
    with pytest.raises(CitysegError, match="continues from its checkpoints/last.pt"):
        resume_folder(tmp_path / "best.pt")


def damaged(kind: str, files: dict[str, Path], folder: Path) -> tuple[Path, str]:
    """A bad weights file of ``kind`` and the message the CLI must give for it."""
    from safetensors.torch import save_file

    path = folder / f"{kind}.safetensors"
    if kind == "truncated":
        data = files["st"].read_bytes()
        path.write_bytes(data[: len(data) // 2])
        return path, "not a readable safetensors file (damaged or truncated: "
    if kind == "garbage":
        path.write_bytes(b"these are not the weights you are looking for" * 3)
        return path, "not a readable safetensors file (damaged or truncated: "
    if kind == "foreign":  # a plain state dict, as other tools write them
        save_file({k: v.contiguous() for k, v in C.strip_prefixes(tiny_state()["model"]).items()}, str(path))
        return path, "no cityseg metadata (model name, config); "
    state = tiny_state()  # kind == "nan"
    name = next(k for k, v in state["model"].items() if v.is_floating_point())
    state["model"][name].fill_(float("nan"))
    C.save_safetensors(path, {"format": "cityseg", "version": 1, **state})
    return path, f"tensor model.{name.removeprefix('module.')} holds NaN or infinite values"


@pytest.mark.parametrize("kind", ["truncated", "garbage", "foreign", "nan"])
@pytest.mark.parametrize("command", ["predict", "evaluate", "export", "benchmark"])
def test_bad_safetensors_give_one_line_in_every_command(files, tmp_path, capsys, kind, command):
    path, message = damaged(kind, files, tmp_path)
    args = {
        "predict": [str(files["photos"]), "--out", str(tmp_path / "pred")],
        "evaluate": ["--data", str(files["photos"]), "--device", "cpu"],
        "export": ["--onnx", str(tmp_path / "m.onnx")],
        "benchmark": ["--size", "64x32", "--device", "cpu"],
    }[command]
    capsys.readouterr()
    assert main([command, "--checkpoint", str(path), *args]) == 2
    assert one_error_line(capsys, command).startswith(f"cityseg {command}: error: {path}: {message}")
    assert not (tmp_path / "m.onnx").exists() and not (tmp_path / "pred").exists()


def test_damaged_file_through_the_real_command_line(files, tmp_path):
    path, message = damaged("truncated", files, tmp_path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "cityseg", "predict", "--checkpoint", str(path),
                           str(files["photos"]), "--out", str(tmp_path / "pred")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(f"cityseg predict: error: {path}: {message}")


def test_evaluate_scores_the_safetensors_file_as_the_pt(files, synth_root, tmp_path):
    # (benchmark --checkpoint loads through the same load_model: its refusals are tested above; timing
    # it here would cost seconds of compiler start-up)
    scores = []
    for kind in ("pt", "st"):
        assert main(["evaluate", "--checkpoint", str(files[kind]), "--data", str(synth_root), "--device", "cpu",
                     "--workers", "0", "--json", str(tmp_path / f"{kind}.json")]) == 0
        scores.append(json.loads((tmp_path / f"{kind}.json").read_text()))
    assert "miou" in json.dumps(scores[0]).lower() and scores[0] == scores[1]


def test_export_needs_an_output_and_check_image_needs_onnx(files, capsys):
    capsys.readouterr()
    assert main(["export", "--checkpoint", str(files["pt"])]) == 2
    assert "give --onnx FILE and/or --safetensors FILE" in one_error_line(capsys, "export")
    assert main(["export", "--checkpoint", str(files["pt"]), "--safetensors", "x.safetensors",
                 "--check-image", "a.png"]) == 2
    assert "--check-image checks an ONNX export" in one_error_line(capsys, "export")


def test_shared_and_non_contiguous_tensors_are_saved(tmp_path):
    state = tiny_state()
    weights = C.strip_prefixes(state["model"])
    name = next(k for k, v in weights.items() if v.ndim == 4)
    weights["tied.weight"] = weights[name]  # tied weights: one storage under two names
    weights["transposed"] = torch.arange(6.0).reshape(2, 3).t()  # a non-contiguous view
    C.save_safetensors(tmp_path / "w.safetensors", {**state, "model": weights})
    loaded = C.load_checkpoint(tmp_path / "w.safetensors")["model"]
    assert loaded.keys() == weights.keys() and all(torch.equal(loaded[k], weights[k]) for k in weights)


def test_safetensors_as_starting_weights(files, tmp_path):
    from safetensors.torch import save_file

    exported = build_starting_model("cityseg_tiny", pretrained=str(files["st"]), freeze=[])
    reference, _ = C.load_model(files["pt"])
    assert all(torch.equal(v, reference.state_dict()[k]) for k, v in exported.state_dict().items())
    plain = tmp_path / "plain.safetensors"  # no cityseg metadata: fine as starting weights
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(plain))
    started = build_starting_model("cityseg_tiny", pretrained=str(plain), freeze=[])
    assert all(torch.equal(v, reference.state_dict()[k]) for k, v in started.state_dict().items())
    with pytest.raises(CitysegError, match="holds model 'cityseg_tiny', but model.name is 'cityseg_small'"):
        build_starting_model("cityseg_small", pretrained=str(files["st"]), freeze=[])
