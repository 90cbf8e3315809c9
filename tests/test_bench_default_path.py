"""benchmarks/bench_default_path.py: the crossover it computes, its ``--write`` of ``COMPILE_PAYS_FROM``,
and the docs quoting that constant. Nothing here measures anything (no model is built)."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import random
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "bench_default_path.py"
PATHS_PY = REPO / "src" / "cityseg" / "inference" / "paths.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("bench_default_path_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = _load_script()


def _reference_crossover(eager_s, compiled_s, compile_s, limit=100_000):
    """The definition, by counting: the first n with compile + n x compiled <= n x eager."""
    for n in range(1, limit):
        if compile_s + n * compiled_s <= n * eager_s:
            return n
    return None


def _constant_of(text: str) -> int:
    for node in ast.parse(text).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "COMPILE_PAYS_FROM" for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError("no COMPILE_PAYS_FROM assignment")


# -- the crossover ----------------------------------------------------------------------------------


def test_crossover_on_made_up_timings():
    # BENCHMARKS.md's 2026-12-03 figures: eager bf16 2.0 s, compiled 1.51 s a pass, first compiled
    # call 28.8 s -> 27.29 s of compilation -> 27.29 / 0.49 = 55.7 -> 56 passes -> 60.
    assert bench.crossover(2.0, 1.51, 28.8 - 1.51) == 56
    assert bench.rounded(56) == 60
    # exactly on the line: 10 + 10 x 1 = 10 x 2, so 10 pays and 9 does not
    assert bench.crossover(2.0, 1.0, 10.0) == 10
    assert bench.crossover(2.0, 1.0, 10.5) == 11
    assert bench.crossover(4.0, 1.0, 3.0) == 1  # pays at once
    assert bench.crossover(4.0, 1.0, 0.0) == 1  # no compile time: from the first pass
    assert bench.crossover(4.0, 1.0, -0.5) == 1  # a noisy first call faster than a steady one
    assert bench.crossover(1.0, 1.0, 5.0) is None  # no gain a pass: never pays
    assert bench.crossover(1.0, 1.5, 5.0) is None  # compiled slower: never pays


def test_crossover_equals_its_definition_on_random_timings():
    rng = random.Random(0)
    for _ in range(2000):
        compiled = rng.uniform(0.01, 5.0)
        eager = compiled * rng.uniform(1.01, 4.0)
        compile_s = rng.uniform(0.0, 60.0)
        assert bench.crossover(eager, compiled, compile_s) == _reference_crossover(eager, compiled, compile_s)


@pytest.mark.parametrize("bad", [(0.0, 1.0, 5.0), (1.0, 0.0, 5.0), (float("nan"), 1.0, 5.0), (2.0, 1.0, float("inf"))])
def test_crossover_refuses_impossible_timings(bad):
    with pytest.raises(ValueError):
        bench.crossover(*bad)


def test_rounded_up_to_a_multiple_of_ten():
    assert [bench.rounded(n) for n in (1, 3, 10, 11, 56, 60, 61)] == [10, 10, 10, 20, 60, 60, 70]
    assert bench.ROUND_TO == 10
    with pytest.raises(ValueError):
        bench.rounded(0)


# -- --write ------------------------------------------------------------------------------------------


def _changed_lines(before: str, after: str) -> list[int]:
    a, b = before.splitlines(keepends=True), after.splitlines(keepends=True)
    assert len(a) == len(b)
    return [i for i, (x, y) in enumerate(zip(a, b)) if x != y]


def test_write_constant_rewrites_only_that_line(tmp_path):
    copy = tmp_path / "paths.py"
    shutil.copyfile(PATHS_PY, copy)
    os.chmod(copy, 0o640)
    before = copy.read_bytes().decode()
    old, new = bench.write_constant(copy, 37, "2027-01-02", "2-core Test CPU # with a hash")
    after = copy.read_bytes().decode()
    changed = _changed_lines(before, after)
    assert len(changed) == 1
    line = after.splitlines()[changed[0]]
    assert line == new == ("COMPILE_PAYS_FROM = 37  # measured by benchmarks/bench_default_path.py: 2027-01-02, "
                           "2-core Test CPU with a hash, see BENCHMARKS.md")
    assert old == before.splitlines()[changed[0]] and old.startswith("COMPILE_PAYS_FROM = ")
    assert _constant_of(after) == 37
    assert stat.S_IMODE(copy.stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["paths.py"]  # no temporary file left behind


def test_write_constant_keeps_crlf_and_refuses_zero_or_two_lines(tmp_path):
    f = tmp_path / "m.py"
    f.write_bytes(b"A = 1\r\nCOMPILE_PAYS_FROM = 60\r\nB = 2\r\n")
    bench.write_constant(f, 20, "2027-01-02", "cpu")
    assert f.read_bytes() == (b"A = 1\r\nCOMPILE_PAYS_FROM = 20  # measured by benchmarks/bench_default_path.py: "
                              b"2027-01-02, cpu, see BENCHMARKS.md\r\nB = 2\r\n")
    for text in ("A = 1\n", "COMPILE_PAYS_FROM = 1\nCOMPILE_PAYS_FROM = 2\n"):
        f.write_text(text)
        with pytest.raises(ValueError, match="COMPILE_PAYS_FROM"):
            bench.write_constant(f, 20, "2027-01-02", "cpu")
        assert f.read_text() == text


def _summary(tmp_path, model="deeplabv3_resnet50", eager=2.0, compiled=1.51):
    path = tmp_path / "summary.json"
    path.write_text(json.dumps({
        "model": model, "size": "1024x512", "date": "2027-01-02", "cpu": "2-core Made-up CPU",
        "crossover": {"eager_path": "bf16", "compiled_path": "compile_bf16", "eager_s": eager,
                      "compiled_s": compiled, "compile_s": 27.29},
    }))
    return path


def _run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          timeout=120)


def test_cli_write_from_json_rewrites_only_the_constant_of_the_given_file(tmp_path):
    real_before = PATHS_PY.read_bytes()
    copy = tmp_path / "paths.py"
    shutil.copyfile(PATHS_PY, copy)
    before = copy.read_text()
    done = _run("--from-json", _summary(tmp_path), "--write", "--paths-file", copy)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["crossover"]["passes"] == 56 and summary["crossover"]["compile_pays_from"] == 60
    after = copy.read_text()
    [i] = _changed_lines(before, after)
    assert after.splitlines()[i] == ("COMPILE_PAYS_FROM = 60  # measured by benchmarks/bench_default_path.py: "
                                     "2027-01-02, 2-core Made-up CPU, see BENCHMARKS.md")
    assert PATHS_PY.read_bytes() == real_before  # the real file is untouched


def test_cli_write_refused_for_another_model_or_no_crossover(tmp_path):
    copy = tmp_path / "paths.py"
    shutil.copyfile(PATHS_PY, copy)
    before = copy.read_bytes()
    done = _run("--from-json", _summary(tmp_path, model="cityseg_tiny"), "--write", "--paths-file", copy)
    assert done.returncode == 2 and "refused" in done.stderr
    done = _run("--from-json", _summary(tmp_path, eager=1.0, compiled=1.2), "--write", "--paths-file", copy)
    assert done.returncode == 2 and "never pays" in done.stderr
    assert json.loads(done.stdout)["crossover"]["compile_pays_from"] is None
    assert copy.read_bytes() == before


def test_cli_help():
    done = _run("--help")
    assert done.returncode == 0 and "--write" in done.stdout and "--from-json" in done.stdout


# -- the constant and the docs that quote it ----------------------------------------------------------


def test_the_constant_line_is_the_one_the_script_writes():
    text = PATHS_PY.read_text()
    [line] = [x for x in text.splitlines() if x.startswith("COMPILE_PAYS_FROM")]
    value = _constant_of(text)
    assert re.fullmatch(rf"COMPILE_PAYS_FROM = {value}  # measured by benchmarks/bench_default_path\.py: "
                        r"\d{4}-\d{2}-\d{2}, [^#\n]+, see BENCHMARKS\.md", line), line
    assert value % bench.ROUND_TO == 0


def test_docs_quote_the_constant():
    """README and the docstrings quote COMPILE_PAYS_FROM's current value (rerunning the benchmark with
    --write changes it: then they must follow)."""
    value = _constant_of(PATHS_PY.read_text())
    readme = (REPO / "README.md").read_text()
    quoted = [int(n) for n in re.findall(r"pays from ~(\d+)", readme)]
    quoted += [int(n) for n in re.findall(r"Below (\d+) passes of one shape", readme)]
    quoted += [int(n) for n in re.findall(r"From (\d+) it uses `torch\.compile`", readme)]
    assert len(quoted) >= 3 and set(quoted) == {value}, quoted
    for source in sorted((REPO / "src" / "cityseg").rglob("*.py")):
        for n in re.findall(r"pays from ~(\d+)", source.read_text()):
            assert int(n) == value, f"{source.relative_to(REPO)} quotes ~{n}, COMPILE_PAYS_FROM is {value}"
