"""int8 on the CPU (onnxruntime static QDQ): the runner runs, keeps shapes, agrees with fp32."""

from __future__ import annotations

import pytest
import torch

from cityseg.cli import main
from cityseg.data.synthetic import render_frame
from cityseg.imaging import normalize
from cityseg.inference.runtime import build_runner
from cityseg.labels import NUM_CLASSES
from cityseg.models import build_model

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")


def _frame(index: int, size=(96, 64)) -> torch.Tensor:
    rgb = render_frame(seed=0, split="val", index=index, size=size)[0]
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].contiguous()


def test_int8_runner_shapes_and_agreement():
    torch.manual_seed(0)
    model = build_model("cityseg_tiny", pretrained="none", freeze=[]).eval()
    calibration = [_frame(i) for i in range(1, 5)]
    runner = build_runner("int8", model, torch.device("cpu"), calibration=calibration)
    x = _frame(0)
    logits = runner(x)
    assert logits.shape == (1, NUM_CLASSES, 64, 96) and logits.dtype == torch.float32
    with torch.inference_mode():
        ref = model(normalize(x))["out"]
    agreement = float((logits.argmax(1) == ref.argmax(1)).float().mean())
    assert agreement >= 0.90, agreement  # random weights: near-tied logits, a weak bound


def test_int8_without_calibration_is_one_line(capsys):
    assert main(["benchmark", "--model", "cityseg_tiny", "--size", "64x32", "--precision", "int8"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs --calibration DIR" in err[0]


def test_benchmark_precision_int8_reports_int8(tmp_path):
    from PIL import Image

    calib = tmp_path / "calib"
    calib.mkdir()
    for i in range(3):
        Image.fromarray(render_frame(seed=0, split="train", index=i, size=(96, 64))[0]).save(calib / f"{i}.png")
    out = tmp_path / "bench.json"
    assert main(["benchmark", "--model", "cityseg_tiny", "--size", "96x64", "--precision", "int8",
                 "--calibration", str(calib), "--repeats", "1", "--threads", "1", "--json", str(out)]) == 0
    import json

    result = json.loads(out.read_text())
    from cityseg.device import cpu_has_vnni
    from cityseg.inference.paths import default_path

    assert result["path"] == ("int8" if cpu_has_vnni() else default_path(torch.device("cpu")))
    assert set(result["paths"]) == {"eager_fp32", result["path"]}
    base, chosen = result["paths"]["eager_fp32"], result["paths"][result["path"]]
    assert base["agreement"] == 1.0  # the baseline against itself
    assert (result["ms"], result["agreement"]) == (chosen["ms"], chosen["agreement"])  # the top line is the path's
    assert result["ms"] > 0
    # int8 of random weights: near-tied logits, the bound of test_int8_runner_shapes_and_agreement; an fp32
    # path (no VNNI) computes the same sums in another order
    assert result["agreement"] >= (0.90 if result["path"] == "int8" else 0.999), result
