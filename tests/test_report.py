"""``cityseg report`` (one self-contained HTML page of a run or sweep folder) and ``cityseg completion``."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from headless_browser import REQUIRE_BROWSER, browser_or_skip
from PIL import Image

from cityseg.cli import main
from cityseg.labels import CLASS_NAMES, NUM_CLASSES
from cityseg.report import build_report, write_report


class Page(HTMLParser):
    """What a test needs of a page: the tags with their attributes, the text, the tables by id."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def all(self, tag: str) -> list[dict[str, str | None]]:
        return [attrs for t, attrs in self.tags if t == tag]

    def table_ids(self) -> set[str]:
        return {a.get("id") for a in self.all("table")}


def png(path: Path, size: tuple[int, int] = (16, 8), colour: tuple[int, int, int] = (200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, format="PNG")
    return path


def record(epoch: int, miou: float | None, time_s: float = 10.0) -> dict:
    """An epoch line as training writes it; ``miou`` None: an epoch without validation."""
    r = {"epoch": epoch, "train_loss": 1.0 / epoch}
    if miou is not None:
        ious = {name: (miou if i % 3 else None if i == 3 else 0.0) for i, name in enumerate(CLASS_NAMES)}
        ious["road"] = 0.9
        r.update(val_loss=1.2 / epoch, val_miou=miou, val_dice=miou + 0.05, val_pixel_accuracy=0.8, iou=ious)
    r.update(step=25 * epoch, lr=0.01 / epoch, time=time_s)
    return r


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A tiny run folder: config, 3 epochs (the 2nd the best, the 3rd unvalidated), curves, panels, a checkpoint."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("train:\n  epochs: 3\n  batch_size: 4\n  max_minutes: null\n"
                                     "name: demo <script>alert(1)</script>\n")  # fmt: skip
    lines = [record(1, 0.20), record(2, 0.35, time_s=12.5), record(3, None)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    png(run / "curves.png", (40, 20))
    png(run / "panels.png", (60, 30), (10, 120, 200))
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "best.pt").write_bytes(b"\0" * 1000)
    return run


def check_self_contained(text: str) -> Page:
    """Every picture an inline PNG that decodes; no script, style sheet, font or frame from elsewhere."""
    page = Page(text)
    images = page.all("img")
    assert images, "the page shows no picture"
    for attrs in images:
        src = attrs.get("src") or ""
        assert src.startswith("data:image/png;base64,"), src[:80]
        data = base64.b64decode(src.split(",", 1)[1], validate=True)
        with Image.open(io.BytesIO(data)) as img:
            img.verify()
            assert img.format == "PNG"
    for attrs in page.all("script"):
        assert "src" not in attrs, "external script"
    assert not page.all("link") and not page.all("iframe") and "@import" not in text and "url(" not in text
    assert not re.search(r"(src|href)\s*=\s*[\"']?\s*(https?:)?//", text, re.I)
    assert not re.search(r"<script[^>]*>[^<]*(fetch\(|XMLHttpRequest|https?://)", text, re.I)
    return page


def test_run_report_is_self_contained_and_complete(run_dir):
    out = write_report(run_dir)
    assert out == run_dir / "report.html"
    text = out.read_text(encoding="utf-8")
    page = check_self_contained(text)
    # curves and panels inlined, plus the per-class bar chart drawn now
    assert len(page.all("img")) == 3
    assert {"summary", "per-class", "epochs", "timing", "checkpoints"} <= page.table_ids()
    words = " ".join(page.text)
    for name in ("road", "traffic light", "bicycle"):
        assert name in words
    assert "0.9474" in words  # road's Dice from its IoU 0.9: 2 * 0.9 / 1.9
    assert "IoU (epoch 2)" in words and "IoU (epoch 3)" not in words  # the best epoch, not the last
    assert "holds no confusion matrix" in words  # said, not invented
    assert "images/s (estimated)" in words and "10" in words  # 25 steps x 4 images / 10 s
    # the config is shown as text, escaped
    assert "<script>alert(1)</script>" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "batch_size: 4" in words


def test_best_epoch_is_the_one_training_keeps():
    from cityseg.engine.resume import RunState
    from cityseg.report import best_record

    records = [record(1, 0.4), record(2, 0.6), record(3, None), record(4, 0.6), record(5, 0.5)]
    state = RunState()
    kept = [r["epoch"] for r in records if "val_miou" in r and state.update_best(r["val_miou"], r["epoch"])]
    assert best_record(records)["epoch"] == kept[-1] == state.best_epoch == 2  # the first of equals


def test_run_report_draws_a_saved_confusion_matrix(run_dir):
    counts = [[100 if i == j else 3 for j in range(NUM_CLASSES)] + [1] for i in range(NUM_CLASSES)]
    (run_dir / "eval").mkdir()
    (run_dir / "eval" / "scores.json").write_text(json.dumps({"miou": 0.5, "confusion_matrix": {
        "rows": list(CLASS_NAMES), "columns": [*CLASS_NAMES, "(void)"], "counts": counts}}))  # fmt: skip
    page = check_self_contained(build_report(run_dir))
    assert any("confusion matrix of eval/scores.json" == a.get("alt") for a in page.all("img"))
    assert "holds no confusion matrix" not in " ".join(page.text)


def test_run_report_of_a_fresh_run_and_a_broken_picture(tmp_path):
    run = tmp_path / "fresh"
    run.mkdir()
    (run / "config.yaml").write_text("name: fresh\n")
    (run / "metrics.jsonl").write_text("")
    (run / "curves.png").write_bytes(b"\x89PNG\r\n\x1a\nhalf-written")
    text = build_report(run)
    words = " ".join(Page(text).text)
    assert "no epoch yet" in words and "not a readable PNG" in words
    assert "<img" not in text


def test_sweep_report(tmp_path):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "trials.csv").write_text(
        "number,state,val_miou,loss.dice,loss.focal,best_epoch,last_epoch,datetime_start,duration_s,run,error\n"
        f"0,COMPLETE,0.31,1.5,0.5,2,2,2026-01-01 10:00:00,60.0,{sweep}/trials/0,\n"
        f"1,PRUNED,,2.5,0.1,,1,2026-01-01 10:01:00,30.0,{sweep}/trials/1,\n"
        f"2,COMPLETE,0.42,0.7,2.2,2,2,2026-01-01 10:02:00,61.0,{sweep}/trials/2,\n"
        f"3,FAIL,,0.1,2.9,,,2026-01-01 10:03:00,5.0,{sweep}/trials/3,loss is nan <at> step 3\n"
    )
    (sweep / "best.yaml").write_text("# best trial 2 of study 'demo' (sqlite:///x): val mIoU 0.4200\nname: demo_best\n")
    for name in ("history.png", "importance.png", "loss_weights.png"):
        png(sweep / name)
    png(sweep / "trials" / "2" / "curves.png")
    out = tmp_path / "elsewhere" / "sweep.html"
    assert main(["report", str(sweep), "--out", str(out)]) == 0
    text = out.read_text(encoding="utf-8")
    page = check_self_contained(text)
    assert len(page.all("img")) == 4  # three plots and the best trial's curves
    assert {"summary", "trials"} <= page.table_ids()
    words = " ".join(page.text)
    assert "loss.focal" in words and "PRUNED" in words and "best trial 2 of study" in words
    assert "loss is nan &lt;at&gt; step 3" in text
    best_rows = re.findall(r'<tr class="best">(.*?)</tr>', text)
    assert len(best_rows) == 1 and ">2<" in best_rows[0] and "0.42" in best_rows[0]


@pytest.mark.parametrize("make", ["empty", "unknown", "missing", "file"])
def test_bad_folder_is_one_line(tmp_path, capsys, make):
    folder = tmp_path / "x"
    if make == "empty":
        folder.mkdir()
    elif make == "unknown":
        folder.mkdir()
        (folder / "notes.txt").write_text("hello")
    elif make == "file":
        folder.write_text("a file")
    assert main(["report", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("cityseg report: error: ")
    assert str(folder) in err and "config.yaml" in err and "metrics.jsonl" in err
    assert not (tmp_path / "x" / "report.html").exists()


def test_report_command_writes_into_the_run(run_dir, capsys):
    assert main(["report", str(run_dir)]) == 0
    assert capsys.readouterr().out.strip() == str(run_dir / "report.html")
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".report")]  # no temporary left


# --- in a real browser ---------------------------------------------------------------------------


# browser_or_skip, REQUIRE_BROWSER: tests/headless_browser.py (test_serve.py uses them too)


@pytest.mark.parametrize("require, outcome", [(None, pytest.skip.Exception), ("0", pytest.skip.Exception),
                                              ("1", pytest.fail.Exception)])
def test_missing_browser_skips_unless_required(monkeypatch, require, outcome):
    monkeypatch.setattr(shutil, "which", lambda name: None)  # no browser on PATH
    if require is None:
        monkeypatch.delenv(REQUIRE_BROWSER, raising=False)
    else:
        monkeypatch.setenv(REQUIRE_BROWSER, require)
    with pytest.raises(outcome) as info:
        browser_or_skip()
    assert "no headless browser on PATH (looked for chromium, " in str(info.value)
    assert (REQUIRE_BROWSER in str(info.value)) == (require == "1")


def test_found_browser_is_used_whatever_the_requirement(monkeypatch):
    found = {"google-chrome": "/opt/google/chrome"}
    monkeypatch.setattr(shutil, "which", found.get)
    monkeypatch.setenv(REQUIRE_BROWSER, "1")
    assert browser_or_skip() == "/opt/google/chrome"  # the first of BROWSERS that is on PATH


@pytest.mark.slow
def test_report_renders_in_a_headless_browser(run_dir, tmp_path):
    browser = browser_or_skip()
    report = write_report(run_dir)
    common = [browser, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run", "--disable-extensions",
              f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,2000", "--virtual-time-budget=3000"]
    url = report.resolve().as_uri()
    shot = tmp_path / "shot.png"
    dom = subprocess.run([*common, "--dump-dom", url], capture_output=True, text=True, timeout=90)
    assert dom.returncode == 0, dom.stderr[-2000:]
    page = Page(dom.stdout)
    body = page.all("body")[0]
    n = len(page.all("img"))
    assert n == 3 and body.get("data-images-loaded") == f"{n}/{n}", body
    assert {"summary", "per-class", "epochs", "timing"} <= page.table_ids()
    assert "traffic light" in " ".join(page.text)
    run = subprocess.run([*common, f"--screenshot={shot}", url], capture_output=True, text=True, timeout=90)
    assert run.returncode == 0 and shot.is_file(), run.stderr[-2000:]
    with Image.open(shot) as img:
        assert img.size == (1200, 2000)
        low, high = img.convert("L").getextrema()
        assert high - low > 100  # not a blank page


# --- shell completion ------------------------------------------------------------------------------


def test_bash_completion_script(capsys, tmp_path):
    pytest.importorskip("shtab")
    assert main(["completion", "bash"]) == 0
    script = capsys.readouterr().out
    for word in ("train", "evaluate", "report", "completion", "--checkpoint", "--out", "--set"):
        assert word in script
    assert "complete" in script and "_shtab_cityseg" in script
    if shutil.which("bash"):
        path = tmp_path / "cityseg.bash"
        path.write_text(script)
        check = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr


def test_zsh_completion_script(capsys, tmp_path):
    pytest.importorskip("shtab")
    assert main(["completion", "zsh"]) == 0
    script = capsys.readouterr().out
    assert script.startswith("#compdef cityseg") and "--checkpoint" in script
    if shutil.which("zsh"):
        path = tmp_path / "_cityseg"
        path.write_text(script)
        check = subprocess.run(["zsh", "-n", str(path)], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
