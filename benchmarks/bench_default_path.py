"""When does ``torch.compile`` pay? The measurement that produces ``COMPILE_PAYS_FROM`` (issue 15).

    PYTHONPATH=src python benchmarks/bench_default_path.py [--size 1024x512] [--repeats 5] [--write]

On DeepLabV3-ResNet50 with random weights (``torch.manual_seed(0)``), at one input size, in one
run: eager fp32 (NCHW, the baseline), then the two paths ``cityseg predict`` chooses between on
this machine (:func:`cityseg.inference.paths.default_path`): the eager one it takes for a few
passes (bf16 autocast where the CPU has bf16 natively, else fp32 channels_last) and the compiled
one it takes for many (``compile_bf16``, else ``compile``). Each path: one first call, then
``--repeats`` timed steady calls (their median is the path's time a pass). The compiled path's
first call runs with an EMPTY inductor cache (``TORCHINDUCTOR_CACHE_DIR`` is pointed at a new
temporary folder before torch is imported), so it holds the cold compilation a first
``cityseg predict`` pays; the compile time is that first call minus one steady compiled pass.

From those three figures the crossover (:func:`crossover`): the smallest number of passes ``n``
of one shape with ``compile_s + n * compiled_s <= n * eager_s``, then rounded UP to a multiple of
:data:`ROUND_TO` (:func:`rounded`): a wrong eager choice costs at most the eager/compiled pass
ratio, a wrong compile a fixed half minute per shape, so the rounding errs towards eager. That
rounded value is ``COMPILE_PAYS_FROM``; ``--write`` rewrites its one line in
``src/cityseg/inference/paths.py`` (atomically: a temporary file beside it, then a rename) with
the date and CPU of the run. Only a DeepLabV3-ResNet50 measurement may be written (the constant is
documented as that model's); ``--model cityseg_tiny --size 64x32 --repeats 1 --skip-tta`` is a
quick smoke run of the script itself, whose crossover means nothing.

Then (unless ``--skip-tta``) the realistic small job, 2 frames with TTA (scales 0.75, 1, 1.25 +
flip: 6 passes per frame over 3 shapes), timed from a cold runner on the default path for that
workload and on eager fp32. Prints one JSON summary (with the load average from ``uptime``) on
stdout. ``--from-json FILE`` recomputes the crossover (and ``--write``) from a summary printed by
an earlier run, without measuring anything.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: The file whose ``COMPILE_PAYS_FROM = ...`` line ``--write`` rewrites.
PATHS_PY = REPO / "src" / "cityseg" / "inference" / "paths.py"
#: The crossover is rounded up to a multiple of this many passes.
ROUND_TO = 10
#: The only model whose measurement may become ``COMPILE_PAYS_FROM``.
MODEL = "deeplabv3_resnet50"
TTA = {"scales": (0.75, 1.0, 1.25), "flip": True}
_CONSTANT = re.compile(r"COMPILE_PAYS_FROM\s*[:=]")


def crossover(eager_s: float, compiled_s: float, compile_s: float) -> int | None:
    """The smallest number of passes ``n >= 1`` of one input shape from which compiling pays:
    ``compile_s + n * compiled_s <= n * eager_s``.

    ``eager_s``/``compiled_s``: seconds a steady pass takes eager and compiled; ``compile_s``: the
    one-off compilation (compiled first call minus a steady compiled pass). None when compiling
    never pays (the compiled pass is not faster than the eager one).
    """
    if min(eager_s, compiled_s) <= 0 or not all(map(math.isfinite, (eager_s, compiled_s, compile_s))):
        raise ValueError(f"timings must be finite and positive: eager {eager_s}, compiled {compiled_s}, "
                         f"compile {compile_s}")
    gain = eager_s - compiled_s
    if gain <= 0:
        return None
    n = max(1, math.ceil(max(compile_s, 0.0) / gain))

    def pays(k: int) -> bool:
        return compile_s + k * compiled_s <= k * eager_s

    while n > 1 and pays(n - 1):  # floating-point rounding of the division, either way
        n -= 1
    while not pays(n):
        n += 1
    return n


def rounded(passes: int, step: int = ROUND_TO) -> int:
    """``passes`` rounded up to a multiple of ``step`` (56 -> 60, 60 -> 60, 3 -> 10)."""
    if passes < 1 or step < 1:
        raise ValueError(f"passes ({passes}) and step ({step}) must be >= 1")
    return -(-passes // step) * step


def constant_line(value: int, date: str, cpu: str) -> str:
    """The ``COMPILE_PAYS_FROM`` line of paths.py, without its line ending."""
    cpu = " ".join(cpu.replace("#", " ").split())
    return f"COMPILE_PAYS_FROM = {int(value)}  # measured by benchmarks/bench_default_path.py: {date}, {cpu}, see BENCHMARKS.md"


def write_constant(path: str | os.PathLike, value: int, date: str, cpu: str) -> tuple[str, str]:
    """Rewrite the one ``COMPILE_PAYS_FROM = ...`` line of ``path`` (every other byte unchanged),
    atomically: the new text goes to a temporary file in the same folder, which then replaces it.

    Returns (old line, new line). Raises ValueError unless exactly one such line exists.
    """
    path = Path(path)
    with open(path, encoding="utf-8", newline="") as f:
        lines = f.read().splitlines(keepends=True)
    hits = [i for i, line in enumerate(lines) if _CONSTANT.match(line)]
    if len(hits) != 1:
        raise ValueError(f"{path}: expected one line starting 'COMPILE_PAYS_FROM =', found {len(hits)}")
    i = hits[0]
    old = lines[i]
    ending = old[len(old.rstrip("\r\n")):]
    new = constant_line(value, date, cpu)
    lines[i] = new + ending
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write("".join(lines))
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, stat.S_IMODE(path.stat().st_mode))
        os.replace(tmp, path)
    except BaseException:  # the original file stays as it was; drop the partial copy
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return old.rstrip("\r\n"), new


def cpu_name() -> str:
    """E.g. ``2-core Intel(R) Xeon(R) Processor`` (the model name of /proc/cpuinfo, else platform's)."""
    name = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    name = name or platform.processor() or platform.machine() or "unknown CPU"
    return f"{os.cpu_count()}-core {name}"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def load() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return ""


def crossover_summary(eager_path: str, compiled_path: str, eager_s: float, compiled_s: float,
                      compile_s: float) -> dict:
    """The ``crossover`` block of the JSON summary: the inputs, the crossover and the rounded value."""
    passes = crossover(eager_s, compiled_s, compile_s)
    return {"eager_path": eager_path, "compiled_path": compiled_path, "eager_s": round(eager_s, 4),
            "compiled_s": round(compiled_s, 4), "compile_s": round(compile_s, 3), "passes": passes,
            "round_to": ROUND_TO, "compile_pays_from": None if passes is None else rounded(passes)}


def measure(args) -> dict:
    """Time the paths and the small TTA job (see the module docstring); the JSON summary."""
    cache = tempfile.mkdtemp(prefix="cityseg-inductor-")
    if "torch" in sys.modules:
        log("warning: torch was imported before the inductor cache was set: the compile may be warm")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache  # before torch is imported: a cold compile

    import numpy as np
    import torch

    from cityseg.inference.passes import passes_per_shape
    from cityseg.inference.paths import default_path
    from cityseg.inference.predict import Predictor, stack_rgb
    from cityseg.inference.runtime import BASELINE, build_runner, runner_input
    from cityseg.models import build_model
    from cityseg.utils import parse_size

    width, height = parse_size(args.size, "--size")
    cpu = torch.device("cpu")
    eager_name = default_path(cpu, "auto", work=1)
    compiled_name = default_path(cpu, "auto", work=sys.maxsize)
    if not compiled_name.startswith("compile"):
        raise SystemExit(f"bench_default_path: torch.compile is not available here (the many-pass default is "
                         f"{compiled_name}); nothing to measure")
    torch.manual_seed(0)
    model = build_model(args.model, pretrained="none", freeze=[]).eval()
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(2)]
    x = stack_rgb(frames[:1])
    result: dict = {"model": args.model, "size": f"{width}x{height}", "date": time.strftime("%Y-%m-%d"),
                    "cpu": cpu_name(), "threads": torch.get_num_threads(), "torch": torch.__version__,
                    "repeats": args.repeats, "load_before": load(), "inductor_cache": cache}

    per_path = {}
    for name in dict.fromkeys((BASELINE, eager_name, compiled_name)):
        runner = build_runner(name, model, cpu)
        xi = runner_input(runner, x)
        first = timed(lambda: runner(xi))
        steady = [timed(lambda: runner(xi)) for _ in range(args.repeats)]
        median = float(np.median(steady))
        per_path[name] = {"first_s": round(first, 3), "steady_s": round(median, 4),
                          "steady_all_s": [round(t, 4) for t in steady]}
        log(f"{name}: first {first:.2f} s, steady {median:.3f} s (median of {args.repeats})")
    result["paths"] = per_path

    eager, comp = per_path[eager_name], per_path[compiled_name]
    result["crossover"] = crossover_summary(eager_name, compiled_name, eager["steady_s"], comp["steady_s"],
                                            comp["first_s"] - comp["steady_s"])

    if not args.skip_tta:  # the small job: 2 frames, TTA, from a cold runner
        sizes = [(width, height)] * len(frames)
        counts = passes_per_shape(sizes, **TTA)
        work = max(counts.values())
        default = default_path(cpu, "auto", work)
        tta = {"passes_per_shape": {f"{w}x{h}": n for (h, w), n in counts.items()}, "work": work,
               "default": default}
        for name in dict.fromkeys((default, BASELINE)):
            def job():
                predictor = Predictor(build_runner(name, model, cpu), name, **TTA)
                predictor.predict_batch(frames)
            tta[f"{name}_s"] = round(timed(job), 1)
            log(f"2 frames TTA on {name}: {tta[f'{name}_s']} s")
        tta["ratio_default_to_eager_fp32"] = round(tta[f"{default}_s"] / tta[f"{BASELINE}_s"], 3)
        result["tta_2_frames"] = tta
    result["load_after"] = load()
    shutil.rmtree(cache, ignore_errors=True)  # the cold cache has served; later runs make their own
    return result


def from_json(path: str) -> dict:
    """A summary printed by an earlier run, its crossover recomputed from its own timings."""
    with open(path, encoding="utf-8") as f:
        result = json.load(f)
    try:
        c = result["crossover"]
        result["crossover"] = crossover_summary(c["eager_path"], c["compiled_path"], float(c["eager_s"]),
                                                float(c["compiled_s"]), float(c["compile_s"]))
        missing = [key for key in ("model", "date", "cpu") if key not in result]
        if missing:
            raise KeyError(missing[0])
    except (KeyError, TypeError) as e:
        raise SystemExit(f"bench_default_path: {path} is not a summary of this script (missing {e})") from None
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1024x512", help="WxH (default 1024x512)")
    parser.add_argument("--repeats", type=int, default=5,
                        help="timed steady calls per path; their median is the time a pass (default 5)")
    parser.add_argument("--model", default=MODEL, help=f"model to time (default {MODEL}; only it may be --written)")
    parser.add_argument("--skip-tta", action="store_true", help="skip the 2-frame TTA job (not needed for the crossover)")
    parser.add_argument("--from-json", metavar="FILE",
                        help="recompute the crossover from an earlier run's JSON summary instead of measuring")
    parser.add_argument("--write", action="store_true",
                        help="rewrite the COMPILE_PAYS_FROM line of paths.py with the measured value")
    parser.add_argument("--paths-file", default=str(PATHS_PY), help=argparse.SUPPRESS)  # tests: a copy
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")

    result = from_json(args.from_json) if args.from_json else measure(args)
    c = result["crossover"]
    print(json.dumps(result, indent=2))
    if c["passes"] is None:
        log(f"{c['compiled_path']} is not faster a pass than {c['eager_path']}: compiling never pays here")
    else:
        log(f"crossover: {c['compile_s']:.1f} s + n x {c['compiled_s']:.3f} s <= n x {c['eager_s']:.3f} s "
            f"from n = {c['passes']} passes of one shape; COMPILE_PAYS_FROM = {c['compile_pays_from']} "
            f"(rounded up to a multiple of {ROUND_TO})")
    if args.write:
        if result["model"] != MODEL:
            log(f"--write refused: COMPILE_PAYS_FROM is measured on {MODEL}, this run timed {result['model']}")
            return 2
        if c["passes"] is None:
            log("--write refused: no crossover to write")
            return 2
        old, new = write_constant(args.paths_file, c["compile_pays_from"], result["date"], result["cpu"])
        log(f"{args.paths_file}:\n  - {old}\n  + {new}")
        log("now put this run's figures in BENCHMARKS.md ('Default inference path by workload') and the value "
            "in README.md (tests/test_bench_default_path.py checks that they quote it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
