"""``cityseg benchmark``: the JSON schema, the baseline's own ratio, agreement of fp32 paths."""

from __future__ import annotations

import json

import pytest
import torch

from cityseg.cli import main
from cityseg.inference import benchmark
from cityseg.inference.benchmark import run_benchmark
from cityseg.inference.paths import default_path
from cityseg.inference.runtime import BASELINE, PATHS


pytestmark = pytest.mark.usefixtures("one_thread_torch")  # conftest: one thread, restored after


def test_benchmark_cli_json_schema(tmp_path, monkeypatch):
    # the real default compiles (a minute on a small CPU); any path stands in for it here
    assert default_path(torch.device("cpu")) in PATHS
    monkeypatch.setattr(benchmark, "default_path", lambda device, work=None: "onnxruntime")
    out = tmp_path / "bench.json"
    assert main(["benchmark", "--model", "cityseg_tiny", "--size", "64x48", "--paths", "channels_last",
                 "--repeats", "2", "--threads", "1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert {"baseline_ms", "ms", "path", "agreement", "paths"} <= set(result)
    default = "onnxruntime"
    assert result["path"] == default
    assert set(result["paths"]) == {BASELINE, "channels_last", default}  # the default is always timed
    for entry in result["paths"].values():
        assert {"ms", "speedup", "agreement", "setup_s", "times_ms"} <= set(entry)
        assert len(entry["times_ms"]) == 2 and entry["ms"] > 0
    base = result["paths"][BASELINE]
    assert base["speedup"] == 1.0 and base["agreement"] == 1.0  # the baseline against itself
    assert result["baseline_ms"] == base["ms"]
    assert result["ms"] == result["paths"][default]["ms"]
    for name in ("channels_last", "onnxruntime"):  # same fp32 arithmetic, another layout or engine
        assert result["paths"][name]["agreement"] >= 0.999
    floor = result["floor"]  # arithmetic / peak: a positive GFLOP count and a time below any measured one
    assert floor["gflop"] > 0 and 0 < floor["bf16_ms"] <= floor["fp32_ms"] < base["ms"]


def test_flop_count_of_a_single_convolution():
    from cityseg.inference.benchmark import model_gflop

    conv = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False)  # 2 x (3*3*3) x 8 x 32 x 32 FLOPs
    assert model_gflop(conv, torch.zeros(1, 3, 32, 32)) == pytest.approx(2 * 27 * 8 * 32 * 32 / 1e9)


def test_benchmark_rejects_unknown_path():
    from cityseg.errors import CitysegError
    from cityseg.models import build_model

    model = build_model("cityseg_tiny", freeze=[]).eval()
    with pytest.raises(CitysegError, match="valid: eager_fp32"):
        run_benchmark(model, torch.zeros(1, 3, 32, 32), torch.device("cpu"), paths=["tensorrt"], repeats=1)
