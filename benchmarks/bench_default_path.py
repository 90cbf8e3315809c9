"""When does ``torch.compile`` pay? The measurement behind ``COMPILE_PAYS_FROM`` (issue 15).

    PYTHONPATH=src python benchmarks/bench_default_path.py [--size 1024x512] [--repeats 2]

On DeepLabV3-ResNet50 with random weights (``torch.manual_seed(0)``), at one input size, in one
run: eager fp32 (NCHW, the baseline) and eager bf16 per-frame times, the first call of
``compile_bf16`` with an EMPTY inductor cache (``TORCHINDUCTOR_CACHE_DIR`` is pointed at a new
temporary folder before torch is imported) and its steady per-frame time, and from them the
crossover: the frames of one shape from which compile's total (first call + steady passes) is
below eager bf16's. Then the realistic small job, 2 frames with TTA (scales 0.75, 1, 1.25 + flip:
6 passes per frame over 3 shapes), timed from a cold runner on the new default path (chosen by
:func:`cityseg.inference.runtime.default_path` from the workload) and on eager fp32. Prints one
JSON summary (with the load average from ``uptime``) on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

CACHE = tempfile.mkdtemp(prefix="cityseg-inductor-")
os.environ["TORCHINDUCTOR_CACHE_DIR"] = CACHE  # before torch is imported: a cold compile

import numpy as np  # noqa: E402
import torch  # noqa: E402

from cityseg.inference.predict import Predictor, passes_per_shape, stack_rgb  # noqa: E402
from cityseg.inference.runtime import BASELINE, build_runner, default_path, runner_input  # noqa: E402
from cityseg.models import build_model  # noqa: E402
from cityseg.utils import parse_size  # noqa: E402

TTA = {"scales": (0.75, 1.0, 1.25), "flip": True}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def load() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1024x512", help="WxH (default 1024x512)")
    parser.add_argument("--repeats", type=int, default=2, help="timed steady calls per path (default 2)")
    args = parser.parse_args()
    width, height = parse_size(args.size, "--size")
    cpu = torch.device("cpu")
    torch.manual_seed(0)
    model = build_model("deeplabv3_resnet50", pretrained="none", freeze=[]).eval()
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(2)]
    x = stack_rgb(frames[:1])
    result: dict = {"size": f"{width}x{height}", "threads": torch.get_num_threads(), "torch": torch.__version__,
                    "load_before": load(), "inductor_cache": CACHE}

    per_path = {}
    for name in (BASELINE, "bf16", "compile_bf16"):
        runner = build_runner(name, model, cpu)
        xi = runner_input(runner, x)
        first = timed(lambda: runner(xi))
        steady = [timed(lambda: runner(xi)) for _ in range(args.repeats)]
        per_path[name] = {"first_s": round(first, 2), "steady_s": round(float(np.median(steady)), 3),
                          "steady_all_s": [round(t, 3) for t in steady]}
        log(f"{name}: first {first:.1f} s, steady {np.median(steady):.2f} s")
    result["paths"] = per_path

    eager, comp = per_path["bf16"], per_path["compile_bf16"]
    gain = eager["steady_s"] - comp["steady_s"]
    # n frames: eager first + (n-1) steady vs compile first + (n-1) steady
    crossover = None
    if gain > 0:
        crossover = int(np.floor((comp["first_s"] - eager["first_s"]) / gain)) + 2
    result["crossover_frames"] = crossover
    result["compile_overhead_s"] = round(comp["first_s"] - comp["steady_s"], 1)

    # the small job: 2 frames, TTA, from a cold runner
    sizes = [(width, height)] * len(frames)
    counts = passes_per_shape(sizes, **TTA)
    work = max(counts.values())
    default = default_path(cpu, "auto", work)
    tta = {"passes_per_shape": {f"{w}x{h}": n for (h, w), n in counts.items()}, "work": work, "default": default}
    for name in (default, BASELINE):
        def job():
            predictor = Predictor(build_runner(name, model, cpu), name, **TTA)
            predictor.predict_batch(frames)
        tta[f"{name}_s"] = round(timed(job), 1)
        log(f"2 frames TTA on {name}: {tta[f'{name}_s']} s")
    tta["ratio_default_to_eager_fp32"] = round(tta[f"{default}_s"] / tta[f"{BASELINE}_s"], 3)
    result["tta_2_frames"] = tta
    result["load_after"] = load()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
