"""Bad input, command by command: each case ends with a non-zero exit and one line naming the
file or the key at fault (``cityseg <command>: error: ...``), never a traceback and never a
silent success; valid but unusual inputs succeed.

Every command runs in this process through ``cityseg.cli.main``: an exception other than the
one-line errors reaches pytest as a failure with its traceback. One tiny checkpoint (random
``cityseg_tiny`` weights) and one tiny synthetic dataset serve every case.
"""

from __future__ import annotations

import collections
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cityseg.cli import main

pytestmark = pytest.mark.usefixtures("one_thread_torch")


class _Evil:
    def __reduce__(self):
        return (print, ("arbitrary code ran",))


def _save_png(path: Path, array: np.ndarray) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _pairs_folder(root: Path, mask: np.ndarray) -> Path:
    """A pairs source with one train frame: a noise photo | ``mask``."""
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 255, mask.shape, dtype=np.uint8)
    _save_png(root / "train" / "1.png", np.concatenate([photo, mask], axis=1))
    return root


@pytest.fixture(scope="module")
def w(tmp_path_factory, synth_root) -> dict[str, str]:
    """Paths of every good and bad file the cases refer to, as ``{name}`` placeholders."""
    from cityseg.config import load_config
    from cityseg.checkpoint import save_checkpoint
    from cityseg.labels import TRAIN_PALETTE
    from cityseg.models import build_model

    t = tmp_path_factory.mktemp("bad")
    cfg = load_config("demo", ["model.name=cityseg_tiny", "data.val_size=null"])
    torch.manual_seed(0)
    model = build_model("cityseg_tiny", pretrained="none", freeze=[])
    good = {"config": cfg.to_dict(), "model": model.state_dict(), "epoch": 1, "step": 1}
    save_checkpoint(t / "good.pt", good)
    nan_state = {k: v.clone() for k, v in model.state_dict().items()}
    first = next(k for k, v in nan_state.items() if v.is_floating_point())
    nan_state[first].view(-1)[0] = float("nan")
    save_checkpoint(t / "nan.pt", {**good, "model": nan_state})
    save_checkpoint(t / "inf.pt", {**good, "model": {**nan_state, first: torch.full_like(nan_state[first], float("inf"))}})
    torch.save({"format": "cityseg", "version": 1, "model": _Evil(), "config": {}}, t / "evil.pt")
    torch.save(model.state_dict(), t / "plain.pt")
    torch.save(collections.OrderedDict(a=1), t / "od.pt")
    torch.save({"format": "cityseg", "version": 1, "config": cfg.to_dict()}, t / "nomodel.pt")
    torch.save({"format": "cityseg", "version": 1, "model": model.state_dict()}, t / "noconfig.pt")
    torch.save({"format": "cityseg", "version": 99, "model": {}, "config": {}}, t / "v99.pt")
    other = {**good, "config": {**cfg.to_dict(), "model": {**cfg.to_dict()["model"], "name": "cityseg_small"}}}
    save_checkpoint(t / "othermodel.pt", other)
    data = (t / "good.pt").read_bytes()
    (t / "trunc.pt").write_bytes(data[: len(data) // 2])
    (t / "empty.pt").write_bytes(b"")
    (t / "text.pt").write_text("hello, not a checkpoint\n")
    (t / "dir.pt").mkdir()
    (t / "afile").write_text("a file where a folder should be\n")
    (t / "latin.yaml").write_bytes("name: caf\xe9\n".encode("latin-1"))
    (t / "broken.yaml").write_text("train: {epochs: 3\n")
    (t / "list.yaml").write_text("- 1\n- 2\n")
    (t / "unknown_section.yaml").write_text("trian:\n  epochs: 3\n")
    (t / "unknown_key.yaml").write_text("train:\n  epoch: 3\n")
    (t / "wrong_type.yaml").write_text("train:\n  epochs: many\n")
    (t / "space_bad.yaml").write_text("loss.ce: [0, 1]\n")
    (t / "space_list.yaml").write_text("- 1\n")
    (t / "space_unknown.yaml").write_text("loss.nope: [0, 1]\n")
    (t / "garbage.onnx").write_bytes(b"\x08\x07garbage" * 50)
    (t / "empty.onnx").write_bytes(b"")
    rng = np.random.default_rng(0)
    _save_png(t / "img.png", rng.integers(0, 255, (32, 64, 3), dtype=np.uint8))
    (t / "corrupt.png").write_bytes((t / "img.png").read_bytes()[:60])
    (t / "notimage.png").write_text("plain text\n")
    # pairs sources: a mask of palette colours (good), one far from every palette colour, a truncated JPEG
    colours = np.asarray(TRAIN_PALETTE[:19], dtype=np.uint8)
    mask = colours[rng.integers(0, 19, (32, 32))]
    _pairs_folder(t / "pairs_good", mask)
    _pairs_folder(t / "pairs_nopalette", np.full((32, 32, 3), (250, 5, 250), np.uint8))
    (t / "pairs_corrupt" / "train").mkdir(parents=True)
    (t / "pairs_corrupt" / "train" / "1.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (t / "empty_dir").mkdir()
    # a run whose last.pt holds only weights: --resume cannot continue it
    run = t / "weights_only_run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text(cfg.to_yaml())
    save_checkpoint(run / "checkpoints" / "last.pt", good)
    return {"t": str(t), "data": str(synth_root), "gt": str(synth_root / "gtFine" / "val"),
            "photos": str(synth_root / "leftImg8bit" / "val"), "kitti": str(t / "kitti"),
            **{p.stem if p.suffix in (".pt", ".yaml", ".png") else p.name: str(p) for p in t.iterdir()}}


@pytest.fixture(scope="module")
def flipped_onnx(w) -> tuple[str, str]:
    """(a good export of the tiny checkpoint, a copy with 200 bytes of its weights flipped)."""
    from cityseg.checkpoint import load_model
    from cityseg.inference.onnx import export_onnx

    model, _ = load_model(w["good"])
    good = Path(w["t"]) / "good.onnx"
    export_onnx(model, good, exporter="torchscript")
    data = bytearray(good.read_bytes())
    rng = np.random.default_rng(1)
    # flip bytes in the second half of the file, where the weight initialisers lie
    for i in rng.choice(np.arange(len(data) // 2, len(data) - 16), 200, replace=False):
        data[i] ^= 0x5A
    flipped = Path(w["t"]) / "flipped.onnx"
    flipped.write_bytes(bytes(data))
    return str(good), str(flipped)


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of ``cityseg ARGV``; argparse's exits count as a status."""
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse: usage + one error line, status 2
        rc = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return rc, out, err


# (argv with {placeholders}, what the error line must contain: the file or key at fault)
CASES = [
    # --- synth ------------------------------------------------------------------------------
    ("synth {afile}/sub", "{afile} is a file"),
    ("synth {afile}", "{afile} is a file"),
    ("synth {t}/s1 --train 0 --val 0", "--train 0 --val 0"),
    ("synth {t}/s2 --train -1", "--train -1"),
    ("synth {t}/s3 --size 0x0", "--size"),
    ("synth {t}/s4 --size 100000x100000", "--size"),
    ("synth {t}/s5 --size abc", "--size"),
    ("synth {t}/s6 --seed -3", "--seed -3"),
    ("synth {t}/s7 --train many", "--train"),
    # --- prepare ----------------------------------------------------------------------------
    ("prepare {t}/nosuch {t}/p1", "{t}/nosuch"),
    ("prepare {afile} {t}/p2", "{afile}"),
    ("prepare {empty_dir} {t}/p3", "{empty_dir}"),
    ("prepare {pairs_good} {afile}", "{afile} is a file"),
    ("prepare {pairs_good} {afile}/sub", "{afile} is a file"),
    ("prepare {pairs_good} {pairs_good}/out", "inside the source"),
    ("prepare {pairs_good} {t}/p4 --workers 0", "--workers 0"),
    ("prepare {pairs_good} {t}/p5 --split nosuch", "nosuch"),
    ("prepare {pairs_good} {t}/p6 --format pairs --city a/b", "--city"),
    ("prepare {pairs_good} {t}/p7 --format pairs --link", "--link"),
    ("prepare {pairs_good} {t}/p8 --format nope", "--format"),
    ("prepare {pairs_nopalette} {t}/p9 --format pairs", "1.png"),
    ("prepare {pairs_nopalette} {t}/p10", "{pairs_nopalette}"),
    ("prepare {pairs_corrupt} {t}/p11 --format pairs", "1.jpg"),
    ("prepare {data} {t}/p12 --format pairs", "{data}"),
    ("prepare {photos} {t}/p13 --format cityscapes", "leftImg8bit"),
    # --- train: config files and keys ---------------------------------------------------------
    ("train --config {t}/missing.yaml --out {t}/r", "missing.yaml"),
    ("train --config {latin} --out {t}/r", "latin.yaml: not UTF-8"),
    ("train --config {broken} --out {t}/r", "broken.yaml: not valid YAML"),
    ("train --config {list} --out {t}/r", "list.yaml"),
    ("train --config {unknown_section} --out {t}/r", "trian"),
    ("train --config {unknown_key} --out {t}/r", "train.epoch"),
    ("train --config {wrong_type} --out {t}/r", "train.epochs"),
    ("train --config {t} --out {t}/r", "{t}"),
    ("train --config nosuchrecipe --out {t}/r", "nosuchrecipe"),
    ("train --out {t}/r --set train.batch_size=0", "train.batch_size"),
    ("train --out {t}/r --set train.batch_size=-4", "train.batch_size"),
    ("train --out {t}/r --set train.batch_size=1e9", "train.batch_size"),
    ("train --out {t}/r --set optim.lr=-1", "optim.lr"),
    ("train --out {t}/r --set optim.lr=.nan", "optim.lr"),
    ("train --out {t}/r --set optim.lr=.inf", "optim.lr"),
    ("train --out {t}/r --set optim.lr=fast", "optim.lr"),
    ("train --out {t}/r --set optim.weight_decay=-0.1", "optim.weight_decay"),
    ("train --out {t}/r --set optim.betas=[0.9,1.5]", "optim.betas"),
    ("train --out {t}/r --set optim.name=sgdx", "optim.name"),
    ("train --out {t}/r --set sched.name=cosine2", "sched.name"),
    ("train --out {t}/r --set data.workers=-1", "data.workers"),
    ("train --out {t}/r --set data.crop_size=100000x100000", "data.crop_size"),
    ("train --out {t}/r --set data.crop_size=0x64", "data.crop_size"),
    ("train --out {t}/r --set data.crop_size=big", "data.crop_size"),
    ("train --out {t}/r --set data.scale_range=[0,1]", "data.scale_range"),
    ("train --out {t}/r --set data.color_jitter=5", "data.color_jitter"),
    ("train --out {t}/r --set train.epochs=0", "train.epochs"),
    ("train --out {t}/r --set train.epochs=-1", "train.epochs"),
    ("train --out {t}/r --set train.max_minutes=-2", "train.max_minutes"),
    ("train --out {t}/r --set train.amp=fp8", "train.amp"),
    ("train --out {t}/r --set loss.ce=-1", "loss.ce"),
    ("train --out {t}/r --set loss.class_weights=[1,2]", "loss.class_weights"),
    ("train --out {t}/r --set loss.focal_gamma=100", "loss.focal_gamma"),
    ("train --out {t}/r --set model.name=resnet9000", "model.name"),
    ("train --out {t}/r --set model.output_stride=3", "model.output_stride"),
    ("train --out {t}/r --set nosection.key=1", "nosection"),
    ("train --out {t}/r --set train.nokey=1", "train.nokey"),
    ("train --out {t}/r --set justtext", "justtext"),
    ("train --out {afile}", "{afile} is a file"),
    ("train --out {afile}/run", "{afile} is a file"),
    ("train --out {t}/r --data {t}/nodata", "{t}/nodata"),
    ("train --out {t}/r --data {afile}", "{afile}"),
    ("train --out {weights_only_run} --resume", "cannot resume from it"),
    ("train --resume {good}", "--resume {good}: a run continues from its checkpoints/last.pt"),
    ("train --resume {t}/missing.pt", "--resume {t}/missing.pt: no such file"),
    # --- evaluate -----------------------------------------------------------------------------
    ("evaluate --checkpoint {t}/missing.pt", "missing.pt"),
    ("evaluate --checkpoint {nan}", "nan.pt"),
    ("evaluate --checkpoint {inf}", "inf.pt"),
    ("evaluate --checkpoint {evil}", "cityseg never executes checkpoint code"),
    ("evaluate --checkpoint {plain}", "plain.pt: not a cityseg checkpoint"),
    ("evaluate --checkpoint {od}", "od.pt: not a cityseg checkpoint"),
    ("evaluate --checkpoint {nomodel}", "nomodel.pt: damaged cityseg checkpoint: no 'model'"),
    ("evaluate --checkpoint {noconfig}", "noconfig.pt: damaged cityseg checkpoint: no 'config'"),
    ("evaluate --checkpoint {v99}", "v99.pt: checkpoint version 99"),
    ("evaluate --checkpoint {othermodel}", "othermodel.pt"),
    ("evaluate --checkpoint {trunc}", "trunc.pt"),
    ("evaluate --checkpoint {empty}", "empty.pt"),
    ("evaluate --checkpoint {text}", "text.pt"),
    ("evaluate --checkpoint {dir}", "dir.pt"),
    ("evaluate --checkpoint {good} --data {data} --json {t}", "--json: {t} is a folder"),
    ("evaluate --checkpoint {good} --data {data} --json {afile}/s.json", "{afile} is a file"),
    ("evaluate --checkpoint {good} --data {data} --plots {afile}", "--plots: {afile} is a file"),
    ("evaluate --checkpoint {good} --data {data} --save-pred {afile}", "--save-pred: {afile} is a file"),
    ("evaluate --checkpoint {good} --data {t}/nodata", "{t}/nodata"),
    ("evaluate --checkpoint {good} --data {data} --split nosuch", "nosuch"),
    ("evaluate --checkpoint {good} --data {data} --crop 0x0 --sliding", "--crop"),
    ("evaluate --checkpoint {good} --data {data} --crop 100000x100000 --sliding", "--crop"),
    ("evaluate --checkpoint {good} --data {data} --scales 0", "--scales"),
    ("evaluate --checkpoint {good} --data {data} --scales 100", "--scales"),
    ("evaluate --checkpoint {good} --data {data} --set train.nokey=1", "train.nokey"),
    ("evaluate --checkpoint {good} --data {data} --set data.val_size=99999x99999", "data.val_size"),
    ("evaluate --checkpoint {good} --gt-dir {gt}", "--gt-dir"),
    ("evaluate --pred-dir {t}/nopred --gt-dir {gt}", "{t}/nopred"),
    ("evaluate --pred-dir {empty_dir} --gt-dir {gt}", "{empty_dir}"),
    ("evaluate --pred-dir {empty_dir}", "--gt-dir"),
    ("evaluate --pred-dir {empty_dir} --gt-dir {t}/nogt", "{t}/nogt"),
    ("evaluate --pred-dir {empty_dir} --gt-dir {gt} --boundary-tolerance 100000", "--boundary-tolerance"),
    ("evaluate --pred-dir {empty_dir} --gt-dir {gt} --boundary-tolerance -5", "--boundary-tolerance"),
    ("evaluate --pred-dir {empty_dir} --gt-dir {gt} --workers -1", "--workers"),
    ("evaluate --pred-dir {empty_dir} --gt-dir {gt} --flip", "--flip"),
    # --- predict ------------------------------------------------------------------------------
    ("predict --checkpoint {t}/missing.pt {img} --out {t}/o1", "missing.pt"),
    ("predict --checkpoint {nan} {img} --out {t}/o2", "nan.pt"),
    ("predict --checkpoint {evil} {img} --out {t}/o3", "cityseg never executes checkpoint code"),
    ("predict --checkpoint {noconfig} {img} --out {t}/o4", "noconfig.pt"),
    ("predict --onnx {t}/garbage.onnx {img} --out {t}/o5", "garbage.onnx"),
    ("predict --onnx {t}/empty.onnx {img} --out {t}/o6", "empty.onnx"),
    ("predict --onnx {t}/missing.onnx {img} --out {t}/o7", "missing.onnx"),
    ("predict --checkpoint {good} {img} --out {afile}", "--out: {afile} is a file"),
    ("predict --checkpoint {good} {img} --out {t}/o8 --batch-size 0", "--batch-size"),
    ("predict --checkpoint {good} {img} --out {t}/o9 --scales abc", "--scales"),
    ("predict --checkpoint {good} {img} --out {t}/o10 --crop 100000x100000 --sliding", "--crop"),
    ("predict --checkpoint {good} {img} --out {t}/o11 --gt {t}/nogt", "{t}/nogt"),
    ("predict --checkpoint {good} {img} --out {t}/o12 --set model.nokey=1", "model.nokey"),
    ("predict --checkpoint {good} {img} --out {t}/o13 --precision fp4", "--precision"),
    # --- export -------------------------------------------------------------------------------
    ("export --checkpoint {t}/missing.pt --onnx {t}/m.onnx", "missing.pt"),
    ("export --checkpoint {nan} --onnx {t}/m.onnx", "nan.pt"),
    ("export --checkpoint {evil} --onnx {t}/m.onnx", "cityseg never executes checkpoint code"),
    ("export --checkpoint {nomodel} --onnx {t}/m.onnx", "nomodel.pt"),
    ("export --checkpoint {good} --onnx {t}", "--onnx: {t} is a folder"),
    ("export --checkpoint {good}", "give --onnx FILE and/or --safetensors FILE"),
    ("export --checkpoint {good} --safetensors {t}", "--safetensors: {t} is a folder"),
    ("export --checkpoint {nan} --safetensors {t}/m.safetensors", "nan.pt"),
    ("export --checkpoint {good} --onnx {afile}/m.onnx", "{afile} is a file"),
    ("export --checkpoint {good} --onnx {t}/m.onnx --opset 5", "--opset 5"),
    ("export --checkpoint {good} --onnx {t}/m.onnx --exporter magic", "--exporter"),
    ("export --checkpoint {good} --onnx {t}/m.onnx --check-image {t}/missing.png", "missing.png"),
    ("export --checkpoint {good} --onnx {t}/m.onnx --check-image {corrupt}", "corrupt.png"),
    ("export --checkpoint {good} --onnx {t}/m.onnx --check-image {notimage}", "notimage.png"),
    # --- benchmark ----------------------------------------------------------------------------
    ("benchmark --size 100000x100000", "--size"),
    ("benchmark --size 0x1", "--size"),
    ("benchmark --size wide", "--size"),
    ("benchmark --size 64x32 --repeats 0", "--repeats 0"),
    ("benchmark --size 64x32 --threads 0", "--threads 0"),
    ("benchmark --size 64x32 --model resnet9000", "resnet9000"),
    ("benchmark --size 64x32 --checkpoint {nan}", "nan.pt"),
    ("benchmark --size 64x32 --checkpoint {evil}", "cityseg never executes checkpoint code"),
    ("benchmark --size 64x32 --json {afile}/b.json", "{afile} is a file"),
    ("benchmark --size 64x32 --json {t}", "--json: {t} is a folder"),
    ("benchmark --size 64x32 --image {t}/missing.png", "missing.png"),
    ("benchmark --size 64x32 --image {corrupt}", "corrupt.png"),
    ("benchmark --size 64x32 --precision int8", "needs --calibration DIR"),
    ("benchmark --size 64x32 --precision int8 --calibration {t}/nosuch", "{t}/nosuch: not a folder"),
    ("benchmark --size 64x32 --precision int8 --calibration {empty_dir}", "no images"),
    ("benchmark --size 64x32 --calibration {t}", "--calibration only applies to --precision int8"),
    # --- sweep --------------------------------------------------------------------------------
    ("sweep --out {t}/sw1 --trials -1", "--trials"),
    ("sweep --out {t}/sw2 --trials 1 --space {t}/missing.yaml", "missing.yaml"),
    ("sweep --out {t}/sw3 --trials 1 --space {latin}", "latin.yaml: not UTF-8"),
    ("sweep --out {t}/sw4 --trials 1 --space {space_list}", "space_list.yaml"),
    ("sweep --out {t}/sw5 --trials 1 --space {space_unknown}", "loss.nope"),
    ("sweep --out {afile} --trials 1", "{afile} is a file"),
    ("sweep --out {t}/sw6 --trials 1 --config {broken}", "broken.yaml"),
    ("sweep --out {t}/sw7 --trials 1 --set optim.lr=-1", "optim.lr"),
]


@pytest.mark.parametrize("argv, named", CASES, ids=[c[0].split()[0] + ":" + c[0].split(" ", 1)[1] for c in CASES])
def test_bad_input_is_one_clear_line_and_a_non_zero_exit(argv, named, w, capsys):
    args = [a.format(**w) for a in argv.split()]
    rc, out, err = run_cli(args, capsys)
    command = args[0]
    named = named.format(**w)
    assert rc != 0, f"accepted silently (exit 0): {out[-300:]}"
    assert "Traceback" not in err + out
    errors = [line for line in err.splitlines() if line.startswith((f"cityseg {command}: error:", "usage:"))]
    last = err.strip().splitlines()[-1]
    assert last.startswith((f"cityseg {command}: error:", f"cityseg {command}: ")), err
    assert named in last, f"{named!r} not named in: {last}"
    # one error line: argparse adds its usage lines before it, nothing else may
    assert sum(line.startswith(f"cityseg {command}: error:") for line in errors) == 1, err


def test_the_suite_covers_every_command_and_enough_cases():
    commands = collections.Counter(c[0].split()[0] for c in CASES)
    assert set(commands) == {"synth", "prepare", "train", "evaluate", "predict", "export", "benchmark", "sweep"}
    assert len(CASES) >= 100


def test_a_corrupt_image_among_good_ones_is_named_and_the_rest_are_written(w, capsys):
    out = Path(w["t"]) / "mixed"
    rc, _, err = run_cli(["predict", "--checkpoint", w["good"], w["img"], w["corrupt"], "--out", str(out),
                          "--runtime", "torch", "--precision", "fp32"], capsys)
    assert rc == 1 and "Traceback" not in err
    assert f"{w['corrupt']}" in err and "1 input(s) failed" in err
    assert (out / "trainIds" / "img.png").is_file() if (out / "trainIds").is_dir() else any(out.rglob("img*.png"))


def test_damaged_onnx_files_are_refused_before_use(flipped_onnx, w, capsys):
    good, flipped = flipped_onnx
    rc, _, err = run_cli(["predict", "--onnx", flipped, w["img"], "--out", str(Path(w["t"]) / "of")], capsys)
    assert rc == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(f"cityseg predict: error: {flipped}: damaged")
    rc, _, err = run_cli(["predict", "--onnx", good, w["img"], "--out", str(Path(w["t"]) / "og")], capsys)
    assert rc == 0, err


def test_an_onnx_file_without_a_checksum_is_used_with_a_warning(flipped_onnx, w, capsys):
    import onnx

    from cityseg.inference.onnx import CHECKSUM_KEY

    good, _ = flipped_onnx
    model = onnx.load(good)
    kept = [p for p in model.metadata_props if p.key != CHECKSUM_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    foreign = Path(w["t"]) / "foreign.onnx"
    onnx.save(model, str(foreign))
    rc, _, err = run_cli(["predict", "--onnx", str(foreign), w["img"], "--out", str(Path(w["t"]) / "ofo")], capsys)
    assert rc == 0, err
    assert f"cityseg predict: warning: {foreign}: carries no cityseg checksum" in err


# --- valid but unusual inputs succeed -----------------------------------------------------------


def test_odd_but_valid_inputs_succeed(w, capsys, tmp_path, miou_by_hand):
    odd = tmp_path / "dossier à espaces" / "Photo Nº1.PNG"
    odd.parent.mkdir()
    odd.write_bytes(Path(w["img"]).read_bytes())
    grey = _save_png(tmp_path / "grey.png", np.full((20, 30), 128, np.uint8))
    rgba = _save_png(tmp_path / "rgba.png", np.full((21, 31, 4), 200, np.uint8))
    runs = [
        ["predict", "--checkpoint", w["good"], str(odd), str(grey), str(rgba), "--out", str(tmp_path / "pred"),
         "--runtime", "torch", "--precision", "fp32"],
        ["synth", str(tmp_path / "tiny synth"), "--train", "1", "--val", "1", "--size", "67x35"],
        ["train", "--print-config", "--set", "data.crop_size= 64 x 32 ", "--set", "optim.lr=1e-3"],
        ["evaluate", "--checkpoint", w["good"], "--data", w["data"], "--scales", "0.5,1", "--json",
         str(tmp_path / "new folder" / "scores.json"), "--workers", "0"],
        ["prepare", w["pairs_good"], str(tmp_path / "prepared"), "--quiet"],
        ["benchmark", "--model", "cityseg_tiny", "--size", "65x33", "--repeats", "1", "--paths", "eager_fp32"],
    ]
    for argv in runs:
        rc, out, err = run_cli(argv, capsys)
        assert rc == 0, f"{argv[0]}: {err[-500:]}"
        assert "Traceback" not in err
    assert (tmp_path / "pred").is_dir() and len(list((tmp_path / "pred").rglob("*.png"))) >= 3
    # the score is that of the checkpoint's own predictions at scales 0.5 and 1, worked out by hand
    from PIL import Image

    from cityseg.inference.predict import Predictor

    predictor = Predictor.from_checkpoint(w["good"], "cpu", "fp32", "torch", scales=(0.5, 1.0))
    pairs = []
    for photo in sorted(Path(w["data"]).glob("leftImg8bit/val/*/*.png")):
        gt = Path(w["gt"]) / photo.parent.name / photo.name.replace("leftImg8bit", "gtFine_labelIds")
        pairs.append((predictor.predict(np.asarray(Image.open(photo).convert("RGB"))), np.asarray(Image.open(gt))))
    assert pairs
    miou = json.loads((tmp_path / "new folder" / "scores.json").read_text())["miou"]
    assert miou == pytest.approx(miou_by_hand(pairs), rel=0.02)  # rel: batched vs single-image near-ties


@pytest.mark.parametrize(
    "module, argv, message",
    [
        ("onnx", "export --checkpoint {good} --onnx {t}/x.onnx",
         'ONNX export needs onnx, which is not installed; pip install "cityseg[onnx]"'),
        ("onnxruntime", "export --checkpoint {good} --onnx {t}/x.onnx --exporter torchscript",
         'ONNX export needs onnxruntime, which is not installed; pip install "cityseg[onnx]"'),
        ("pydensecrf", "predict --checkpoint {good} {img} --out {t}/oc --crf --runtime torch --precision fp32",
         '--crf needs pydensecrf2, which is not installed; pip install "cityseg[crf]"'),
        ("optuna", "sweep --out {t}/swx --trials 1",
         'a sweep needs optuna, which is not installed; pip install "cityseg[sweep]"'),
    ],
)
def test_a_missing_extra_is_one_line_naming_what_to_install(module, argv, message, w, capsys, monkeypatch):
    import sys

    for name in [m for m in sys.modules if m == module or m.startswith(module + ".")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError
    args = [a.format(**w) for a in argv.split()]
    rc, _, err = run_cli(args, capsys)
    assert rc == 2 and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"cityseg {args[0]}: error: "), err
    assert last.endswith(message), last
