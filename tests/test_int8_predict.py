"""``cityseg predict --precision int8``: agreement with fp32, the int8 cache beside the checkpoint (reused,
rebuilt when damaged, moved to the user cache when the folder is read-only), one-line errors, and the
fallback on CPUs without VNNI (VNNI detection is monkeypatched, so every test runs on any CPU)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cityseg.cli import main
from cityseg.data.synthetic import render_frame
from cityseg.inference import int8, paths
from cityseg.inference.predict import Predictor
from cityseg.labels import ID_TO_TRAIN_ID, IGNORE_INDEX

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

SIZE = (96, 64)  # W, H


pytestmark = pytest.mark.usefixtures("one_thread_own_cache")


@pytest.fixture
def vnni(monkeypatch):
    """Pretend the CPU has VNNI: the int8 path runs (slower, still right) on any CPU."""
    monkeypatch.setattr(paths, "cpu_has_vnni", lambda: True)


def _frame(split: str, index: int) -> tuple[np.ndarray, np.ndarray]:
    image, label_ids, _ = render_frame(seed=0, split=split, index=index, size=SIZE)
    return image, ID_TO_TRAIN_ID[label_ids]


def _trained_tiny() -> torch.nn.Module:
    """cityseg_tiny fitted for 60 steps on 8 synthetic frames (~3 s): ~10 classes per frame, so that
    agreement with fp32 means something (a random model predicts one class everywhere)."""
    from cityseg.imaging import normalize
    from cityseg.models import build_model

    torch.manual_seed(0)
    model = build_model("cityseg_tiny", pretrained="none", freeze=[])
    frames = [_frame("train", i) for i in range(8)]
    x = normalize(torch.from_numpy(np.stack([f[0] for f in frames])).permute(0, 3, 1, 2))
    y = torch.from_numpy(np.stack([f[1] for f in frames]).astype(np.int64))
    optimizer = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(60):
        loss = F.cross_entropy(model(x)["out"], y, ignore_index=IGNORE_INDEX)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    """A trained tiny checkpoint, a calibration folder of 4 frames and an input folder of 3 (all 96x64)."""
    from cityseg.checkpoint import save_checkpoint
    from cityseg.config import Config

    root = tmp_path_factory.mktemp("int8")
    torch.set_num_threads(1)
    cfg = Config()
    cfg.model.name, cfg.model.freeze = "cityseg_tiny", []
    save_checkpoint(root / "tiny.pt", {"config": cfg.to_dict(), "model": _trained_tiny().state_dict(),
                                       "epoch": 1, "step": 1})
    for folder, split, indices in (("calib", "train", range(8, 12)), ("inputs", "val", range(3))):
        (root / folder).mkdir()
        for i in indices:
            Image.fromarray(_frame(split, i)[0]).save(root / folder / f"{split}_{i}.png")
    return {"checkpoint": root / "tiny.pt", "calib": root / "calib", "inputs": root / "inputs"}


def _checkpoint_in(folder: Path, setup: dict[str, Path]) -> Path:
    """A copy of the checkpoint in ``folder``, so each test starts without a cached int8 model."""
    folder.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(setup["checkpoint"], folder / "best.pt"))


def _predict(capsys, checkpoint: Path, inputs: Path, out: Path, *extra: str) -> tuple[int, str, str]:
    code = main(["predict", "--checkpoint", str(checkpoint), str(inputs), "--out", str(out), *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _train_ids(out: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(Image.open(p)) for p in sorted((out / "trainIds").glob("*.png"))}


def test_predict_int8_agrees_with_fp32_and_reuses_its_cache(tmp_path, setup, vnni, capsys):
    ckpt = _checkpoint_in(tmp_path / "run", setup)
    int8_args = ("--precision", "int8", "--calibration", str(setup["calib"]))
    code, out, _ = _predict(capsys, ckpt, setup["inputs"], tmp_path / "int8", *int8_args)
    assert code == 0
    (cached,) = (tmp_path / "run").glob("best.int8.*.onnx")
    assert f"cached at {cached}" in out and "--precision int8 (int8: onnxruntime" in out
    fp32_args = ("--precision", "fp32", "--runtime", "torch")
    assert _predict(capsys, ckpt, setup["inputs"], tmp_path / "fp32", *fp32_args)[0] == 0
    quantised, reference = _train_ids(tmp_path / "int8"), _train_ids(tmp_path / "fp32")
    assert list(quantised) == list(reference) and len(reference) == 3
    for name, ids in reference.items():
        assert len(np.unique(ids)) >= 5  # a model that predicts something
        assert (quantised[name] == ids).mean() >= 0.95, name

    mtime = cached.stat().st_mtime_ns
    code, out, _ = _predict(capsys, ckpt, setup["inputs"], tmp_path / "again", *int8_args)
    assert code == 0 and f"reusing the int8 model cached at {cached}" in out
    assert cached.stat().st_mtime_ns == mtime and list((tmp_path / "run").glob("*.onnx")) == [cached]
    again = _train_ids(tmp_path / "again")
    assert all(np.array_equal(again[n], quantised[n]) for n in quantised)


def test_int8_tta_sliding_batch_cli_matches_the_python_api(tmp_path, setup, vnni, capsys):
    ckpt = _checkpoint_in(tmp_path / "run", setup)
    options = ["--tta", "--scales", "0.75,1", "--sliding", "--crop", "64x48", "--stride", "32x32", "--batch-size", "2"]
    code, _, _ = _predict(capsys, ckpt, setup["inputs"], tmp_path / "out", "--precision", "int8",
                          "--calibration", str(setup["calib"]), *options)
    assert code == 0
    predictor = Predictor.from_checkpoint(ckpt, precision="int8", calibration=setup["calib"], mode="sliding",
                                          crop=(64, 48), stride=(32, 32), scales=(0.75, 1.0), flip=True, batch_size=2)
    assert predictor.path == "int8"
    assert "reusing the int8 model cached at" in capsys.readouterr().out  # the CLI's cache, same key
    images = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(setup["inputs"].glob("*.png"))]
    written = _train_ids(tmp_path / "out")
    for image, ids in zip(images, predictor.predict_batch(images), strict=True):
        assert ids.shape == image.shape[:2]
    assert all(np.array_equal(a, b) for a, b in zip(written.values(), predictor.predict_batch(images), strict=True))


def test_damaged_cache_is_rebuilt_not_trusted(tmp_path, setup, vnni, capsys):
    onnx = pytest.importorskip("onnx")
    from cityseg.inference.onnx import verify_onnx

    ckpt = _checkpoint_in(tmp_path / "run", setup)
    args = ("--precision", "int8", "--calibration", str(setup["calib"]))
    assert _predict(capsys, ckpt, setup["inputs"], tmp_path / "a", *args)[0] == 0
    (cached,) = (tmp_path / "run").glob("best.int8.*.onnx")
    model = onnx.load(str(cached))
    weight = next(t for t in model.graph.initializer if t.raw_data and len(t.raw_data) > 64)
    weight.raw_data = bytes(b ^ 0xFF for b in weight.raw_data[:16]) + weight.raw_data[16:]
    onnx.save(model, str(cached))  # parses and passes onnx.checker; only the checksum sees it
    code, out, err = _predict(capsys, ckpt, setup["inputs"], tmp_path / "b", *args)
    assert code == 0 and "damaged" in err and "rebuilding the int8 model" in err
    assert "reusing" not in out and f"cached at {cached}" in out
    verify_onnx(cached)  # the rebuilt file checks out
    assert _train_ids(tmp_path / "a").keys() == _train_ids(tmp_path / "b").keys()


def test_unwritable_checkpoint_folder_caches_in_the_user_cache(tmp_path, setup, vnni, capsys, monkeypatch):
    ckpt = _checkpoint_in(tmp_path / "readonly", setup)
    # tests may run as root, for whom chmod does not stop writes: the check itself is replaced
    monkeypatch.setattr(int8, "writable", lambda folder: folder != ckpt.parent)
    args = ("--precision", "int8", "--calibration", str(setup["calib"]))
    code, out, _ = _predict(capsys, ckpt, setup["inputs"], tmp_path / "a", *args)
    user = tmp_path / "xdg" / "cityseg" / "int8"
    assert code == 0 and f"int8 cache: {ckpt.parent} is not writable; caching in {user} instead" in out
    (cached,) = user.glob("best.int8.*.onnx")
    assert not list(ckpt.parent.glob("*.onnx"))
    code, out, _ = _predict(capsys, ckpt, setup["inputs"], tmp_path / "b", *args)
    assert code == 0 and f"reusing the int8 model cached at {cached}" in out


def test_from_model_int8_without_a_checkpoint_caches_in_the_user_cache(tmp_path, setup, vnni):
    from cityseg.checkpoint import load_model

    model, _ = load_model(setup["checkpoint"], "cpu")
    predictor = Predictor.from_model(model, precision="int8", calibration=str(setup["calib"]))
    assert predictor.path == "int8" and predictor.describe().startswith("--precision int8")
    (cached,) = (tmp_path / "xdg" / "cityseg" / "int8").glob("model.int8.*.onnx")
    image = _frame("val", 0)[0]
    assert predictor.predict(image).shape == image.shape[:2]
    # other weights, another key: a second file, not the first one reused
    with torch.no_grad():
        next(model.parameters()).add_(0.01)
    Predictor.from_model(model, precision="int8", calibration=str(setup["calib"]))
    assert len(list(cached.parent.glob("model.int8.*.onnx"))) == 2


@pytest.mark.parametrize(("extra", "named"), [
    (["--precision", "int8"], "--precision int8 needs --calibration DIR"),
    (["--calibration", "{calib}"], "--calibration only applies to --precision int8"),
    (["--precision", "fp32", "--calibration", "{calib}"], "--calibration only applies to --precision int8"),
    (["--precision", "int8", "--calibration", "{calib}", "--device", "cuda"], "int8 runs on the CPU only"),
    (["--precision", "int8", "--calibration", "{calib}", "--runtime", "compile"], "drop --runtime compile"),
    (["--precision", "int8", "--calibration", "{calib}/nosuch"], "nosuch: not a folder"),
    (["--precision", "int8", "--calibration", "{inputs}/val_0.png"], "val_0.png: not a folder"),
])
def test_int8_option_errors_are_one_line(tmp_path, setup, capsys, extra, named):
    args = [a.format(calib=setup["calib"], inputs=setup["inputs"]) for a in extra]
    code, out, err = _predict(capsys, setup["checkpoint"], setup["inputs"], tmp_path / "out", *args)
    named = named.format(calib=setup["calib"], inputs=setup["inputs"])
    assert code != 0 and "Traceback" not in out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cityseg predict: error:") and named in lines[0], err


def test_onnx_with_int8_is_refused_in_one_line(tmp_path, setup, capsys):
    code = main(["predict", "--onnx", str(tmp_path / "m.onnx"), str(setup["inputs"]), "--out", str(tmp_path / "o"),
                 "--precision", "int8", "--calibration", str(setup["calib"])])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(lines) == 1 and "--precision int8 quantises a --checkpoint" in lines[0]


def test_no_vnni_warns_once_and_runs_the_default_path(tmp_path, setup, capsys, monkeypatch):
    monkeypatch.setattr(paths, "cpu_has_vnni", lambda: False)
    ckpt = _checkpoint_in(tmp_path / "run", setup)
    code, out, err = _predict(capsys, ckpt, setup["inputs"], tmp_path / "out", "--precision", "int8",
                              "--calibration", str(setup["calib"]))
    fallback = paths.default_path(torch.device("cpu"))  # 3 frames: eager, bf16 or fp32 by the CPU
    expected = ("cityseg predict: warning: --precision int8: this CPU has no VNNI (avx512_vnni, avx_vnni or amx_int8): "
                f"int8 would be slower than fp32; running {fallback} instead")
    assert code == 0 and err.strip().splitlines() == [expected]
    assert f"({fallback}: torch" in out and not list((tmp_path / "run").glob("*.onnx"))
    assert len(_train_ids(tmp_path / "out")) == 3


def test_benchmark_without_vnni_warns_and_reports_the_default_path(tmp_path, setup, capsys, monkeypatch):
    monkeypatch.setattr(paths, "cpu_has_vnni", lambda: False)
    report = tmp_path / "bench.json"
    assert main(["benchmark", "--model", "cityseg_tiny", "--size", "96x64", "--precision", "int8", "--calibration",
                 str(setup["calib"]), "--repeats", "1", "--threads", "1", "--json", str(report)]) == 0
    fallback = paths.default_path(torch.device("cpu"))
    assert capsys.readouterr().err.strip().splitlines() == [
        f"cityseg benchmark: warning: {paths.no_vnni_message(fallback)}"]
    result = json.loads(report.read_text())
    assert result["path"] == fallback and set(result["paths"]) == {"eager_fp32", fallback}
