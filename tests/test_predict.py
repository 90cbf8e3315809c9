"""Inference: sliding windows, test-time augmentation, the Predictor API and ``cityseg predict``."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from cityseg import device, labels
from cityseg.cli import main
from cityseg.errors import CitysegError
from model_files import write_checkpoint
from cityseg.inference import paths, runtime
from cityseg.inference.passes import passes_per_shape, predict_probs, window_starts
from cityseg.inference.predict import Predictor, to_input

C = labels.NUM_CLASSES


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread: on a shared 2-core machine OpenMP spinning makes tiny models slower, not faster."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class PixelModel(nn.Module):
    """A 1x1 convolution: every pixel's logits depend on that pixel alone, so windows cannot change them."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, C, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.conv(x)}


def tiny_model() -> nn.Module:
    from cityseg.models import build_model

    torch.manual_seed(0)
    return build_model("cityseg_tiny", freeze=[]).eval()


def rgb(h: int = 64, w: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# --- predict_probs --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "crop", "stride", "expected"),
    [(10, 4, 3, [0, 3, 6]), (10, 4, 4, [0, 4, 6]), (8, 4, 4, [0, 4]), (3, 4, 2, [0]), (64, 64, 32, [0])],
)
def test_window_starts_cover_the_axis(size, crop, stride, expected):
    starts = window_starts(size, crop, stride)
    assert starts == expected
    covered = np.zeros(size, bool)
    for s in starts:
        covered[s : s + min(crop, size)] = True
    assert covered.all()


@pytest.mark.parametrize("crop", [(64, 48), (100, 80)])  # exactly the image; larger than it
def test_sliding_equals_whole_when_one_window_covers_the_image(crop):
    model, x = tiny_model(), to_input([rgb(48, 64)])
    whole = predict_probs(model, x)
    sliding = predict_probs(model, x, mode="sliding", crop=crop, stride=crop)
    torch.testing.assert_close(sliding, whole)


def test_overlapping_windows_average_to_whole_for_a_pixelwise_model():
    # 3x3 windows of 32x24 over 64x48 with overlaps: each pixel's probability is the same in
    # every window, so the average must equal the whole-image pass if the count map is right.
    model, x = PixelModel().eval(), to_input([rgb(48, 64), rgb(48, 64, seed=1)])
    whole = predict_probs(model, x)
    sliding = predict_probs(model, x, mode="sliding", crop=(32, 24), stride=(16, 12), batch_size=4)
    torch.testing.assert_close(sliding, whole)
    torch.testing.assert_close(sliding.sum(1), torch.ones(2, 48, 64))


def test_flip_tta_is_flip_symmetric():
    model, x = tiny_model(), to_input([rgb(32, 64)])
    probs = predict_probs(model, x, flip=True)
    mirrored = predict_probs(model, x.flip(-1), flip=True).flip(-1)
    torch.testing.assert_close(probs, mirrored)
    # and it is the mean of the plain and the flipped-back pass
    plain = predict_probs(model, x)
    flipped = predict_probs(model, x.flip(-1)).flip(-1)
    torch.testing.assert_close(probs, (plain + flipped) / 2)


def test_multi_scale_averages_resized_passes():
    model, x = tiny_model(), to_input([rgb(32, 64)])
    half = torch.nn.functional.interpolate(x, size=(16, 32), mode="bilinear", align_corners=False)
    p_half = torch.nn.functional.interpolate(
        model(half)["out"].softmax(1), size=(32, 64), mode="bilinear", align_corners=False
    )
    expected = (p_half + model(x)["out"].softmax(1)) / 2
    torch.testing.assert_close(predict_probs(model, x, scales=[0.5, 1.0]), expected.detach())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"mode": "tiles"}, "valid: whole, sliding"), ({"mode": "sliding", "crop": (32, 32), "stride": (48, 16)}, "stride 48"),
     ({"scales": []}, "scale"), ({"scales": [0.0]}, "scale")],
)
def test_bad_options_raise(kwargs, match):
    with pytest.raises(CitysegError, match=match):
        predict_probs(PixelModel(), to_input([rgb(32, 32)]), **kwargs)


# --- precision and paths -------------------------------------------------------------------------


def test_bf16_refused_without_native_support(monkeypatch):
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: False)
    cpu = torch.device("cpu")
    assert paths.resolve_precision("auto", cpu) == "fp32"
    with pytest.raises(CitysegError, match="no AVX512-BF16 or AMX"):
        paths.resolve_precision("bf16", cpu)
    assert "bf16" not in paths.available_paths(cpu)
    assert paths.select_path(cpu, "fp32", "torch") == "channels_last"


def test_native_bf16_read_from_cpu_flags(monkeypatch):
    monkeypatch.setattr(device, "cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))
    assert device.cpu_has_native_bf16()
    cpu = torch.device("cpu")
    assert paths.resolve_precision("auto", cpu) == "bf16"
    assert paths.select_path(cpu, "bf16", "compile") == "compile_bf16"
    with pytest.raises(CitysegError, match="fp32 only"):
        paths.select_path(cpu, "bf16", "onnxruntime")


@pytest.mark.parametrize("native", [True, False])
def test_default_path_is_eager_for_little_work_and_compiled_for_much(monkeypatch, native):
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: native)
    monkeypatch.setattr(paths, "_has_compiler", lambda: True)
    cpu, pays = torch.device("cpu"), paths.COMPILE_PAYS_FROM
    eager, compiled = ("bf16", "compile_bf16") if native else ("channels_last", "compile")
    for work in (None, 1, 12, pays - 1):  # unknown or a handful of passes per shape: never compile
        assert paths.default_path(cpu, "auto", work) == eager
        assert paths.select_path(cpu, "auto", "auto", work) == eager
    for work in (pays, 10 * pays):
        assert paths.default_path(cpu, "auto", work) == compiled
    assert paths.default_path(cpu, "fp32", 10 * pays) == "compile"  # --precision alone keeps the choice by work
    assert paths.default_path(cpu, "fp32", 2) == "channels_last"
    monkeypatch.setattr(paths, "_has_compiler", lambda: False)  # no C++ compiler: eager (or onnxruntime) anyway
    assert paths.default_path(cpu, "auto", 10 * pays) in (eager, "onnxruntime")
    assert "not available" in paths.path_reason(paths.default_path(cpu, "auto", 10 * pays), 10 * pays)


@pytest.mark.parametrize("native", [True, False])
def test_forced_runtime_ignores_the_work(monkeypatch, native):
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: native)
    monkeypatch.setattr(paths, "_has_compiler", lambda: True)
    cpu, pays = torch.device("cpu"), paths.COMPILE_PAYS_FROM
    for work in (None, 1, 10 * pays):
        assert paths.select_path(cpu, "auto", "compile", work) == ("compile_bf16" if native else "compile")
        assert paths.select_path(cpu, "auto", "torch", work) == ("bf16" if native else "channels_last")
        assert paths.select_path(cpu, "fp32", "compile", work) == "compile"
        assert paths.select_path(cpu, "fp32", "torch", work) == "channels_last"
    assert paths.path_reason("compile", 1, "compile") == "--runtime compile"


def test_passes_per_shape_counts_scales_flips_and_windows():
    assert passes_per_shape([(64, 32), (64, 32), (40, 48)]) == {(32, 64): 2, (48, 40): 1}
    tta = passes_per_shape([(100, 40)] * 2, scales=(0.5, 1.0), flip=True)
    assert tta == {(20, 50): 4, (40, 100): 4}
    # 3 x 2 windows of 48x32 on an 80x48 image, each pass a 32x48 (h, w) input
    assert passes_per_shape([(80, 48)], mode="sliding", crop=(48, 32), stride=(16, 16)) == {(32, 48): 3 * 2}
    assert passes_per_shape([(20, 10)], mode="sliding", crop=(48, 32), stride=(16, 16)) == {(10, 20): 1}


def test_low_precision_keeps_image_and_logit_convolutions_fp32():
    model = tiny_model()
    wrapped = runtime.keep_fp32_ends(model)
    assert sorted(wrapped) == ["backbone.stem.0", "classifier"]  # reads RGB; writes NUM_CLASSES logits
    assert runtime.keep_fp32_ends(model) == []  # idempotent
    x = to_input([rgb(32, 32)])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(x)["out"].dtype == torch.float32  # the last layer ran outside autocast


@pytest.mark.parametrize("path", ["channels_last", "bf16"])
def test_runner_paths_agree_with_fp32(path):
    if path not in paths.available_paths(torch.device("cpu")):
        pytest.skip(f"{path} not available on this CPU")
    model, x = tiny_model(), to_input([rgb(64, 64)])
    base = model(x)["out"].argmax(1)
    runner = runtime.build_runner(path, model, torch.device("cpu"))
    agreement = (runner(x).argmax(1) == base).double().mean().item()
    assert agreement >= (0.999 if path == "channels_last" else 0.95)
    weight = next(model.parameters())  # the runner works on a copy: the caller's model stays NCHW
    assert weight.ndim == 4 and weight.is_contiguous()


# --- Predictor -----------------------------------------------------------------------------------


def test_predictor_returns_train_ids_of_the_model():
    model = tiny_model()
    predictor = Predictor.from_model(model, device="cpu", precision="fp32", runtime="torch")
    images = [rgb(32, 64), rgb(48, 40, seed=1), rgb(32, 64, seed=2)]  # two sizes in one batch
    preds = predictor.predict_batch(images)
    for image, pred in zip(images, preds, strict=True):
        assert pred.dtype == np.uint8 and pred.shape == image.shape[:2]
        expected = model(to_input([image]))["out"].argmax(1)[0].numpy()
        np.testing.assert_array_equal(pred, expected)
    np.testing.assert_array_equal(predictor.predict(images[1]), preds[1])


@pytest.mark.parametrize("bad", [np.zeros((8, 8), np.uint8), np.zeros((8, 8, 3), np.float32), [[1, 2, 3]]])
def test_predictor_rejects_non_rgb_arrays(bad):
    predictor = Predictor.from_model(PixelModel(), device="cpu", precision="fp32", runtime="torch")
    with pytest.raises(CitysegError, match=r"\(H, W, 3\) uint8"):
        predictor.predict(bad)


# --- cityseg predict -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", tiny_model())


def _write(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def test_predict_cli_writes_four_maps_at_input_size(tmp_path, checkpoint):
    a = _write(tmp_path / "in" / "aachen_000000_000019_leftImg8bit.png", rgb(40, 72))
    b = _write(tmp_path / "in" / "sub" / "other.jpg", rgb(64, 48, seed=3))
    out = tmp_path / "in" / "out"  # inside the input folder: a second run must not read its own outputs
    for _ in range(2):
        code = main(["predict", "--checkpoint", str(checkpoint), str(tmp_path / "in"), "--out", str(out),
                     "--precision", "fp32", "--runtime", "torch", "--batch-size", "2"])
        assert code == 0
    model = tiny_model()
    for src in (a, b):
        image = np.asarray(Image.open(src).convert("RGB"))
        train_ids = np.asarray(Image.open(out / "trainIds" / f"{src.stem}.png"))
        assert train_ids.shape == image.shape[:2]
        np.testing.assert_array_equal(train_ids, model(to_input([image]))["out"].argmax(1)[0].numpy())
        label_ids = np.asarray(Image.open(out / "labelIds" / f"{src.stem}.png"))
        np.testing.assert_array_equal(label_ids, labels.TRAIN_ID_TO_ID[train_ids])
        assert set(np.unique(label_ids)) <= set(labels.VALID_LABEL_IDS)
        color = np.asarray(Image.open(out / "color" / f"{src.stem}.png"))
        np.testing.assert_array_equal(color, labels.TRAIN_PALETTE[train_ids])
        assert np.asarray(Image.open(out / "overlay" / f"{src.stem}.png")).shape == image.shape


def test_predict_cli_panel_with_ground_truth(tmp_path, checkpoint):
    pytest.importorskip("cityseg.data.formats")
    img = _write(tmp_path / "img" / "aachen_000000_000019_leftImg8bit.png", rgb(32, 64))
    gt = np.full((32, 64), labels.LABEL_BY_NAME["road"].id, np.uint8)
    _write(tmp_path / "gtFine" / "val" / "aachen" / "aachen_000000_000019_gtFine_labelIds.png", gt)
    out = tmp_path / "out"
    assert main(["predict", "--checkpoint", str(checkpoint), str(img), "--out", str(out), "--precision", "fp32",
                 "--runtime", "torch", "--gt", str(tmp_path / "gtFine")]) == 0
    panel = Image.open(out / "panel" / f"{img.stem}.png")
    assert panel.width > panel.height  # four tiles side by side
    # a frame without ground truth still gets its maps; the missing panel is a note, not a failure
    other = _write(tmp_path / "img" / "bonn_000001_000019_leftImg8bit.png", rgb(32, 64, seed=1))
    assert main(["predict", "--checkpoint", str(checkpoint), str(other), "--out", str(out), "--precision", "fp32",
                 "--runtime", "torch", "--gt", str(tmp_path / "gtFine")]) == 0
    assert (out / "trainIds" / f"{other.stem}.png").is_file() and not (out / "panel" / f"{other.stem}.png").exists()


def test_predict_cli_bad_input_is_reported_and_the_rest_done(tmp_path, checkpoint, capsys):
    good = _write(tmp_path / "good.png", rgb(32, 32))
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    out = tmp_path / "out"
    code = main(["predict", "--checkpoint", str(checkpoint), str(bad), str(good), str(tmp_path / "missing.png"),
                 "--out", str(out), "--precision", "fp32", "--runtime", "torch"])
    assert code == 1
    err = capsys.readouterr().err
    assert "broken.png: cannot read image" in err and "missing.png: no such file" in err
    assert (out / "trainIds" / "good.png").is_file() and not (out / "trainIds" / "broken.png").exists()


def test_predict_cli_refuses_foreign_checkpoint_and_unwritable_out(tmp_path, checkpoint, capsys):
    img = _write(tmp_path / "a.png", rgb(32, 32))
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    assert main(["predict", "--checkpoint", str(foreign), str(img), "--out", str(tmp_path / "o")]) == 2
    assert "not a cityseg checkpoint" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["predict", "--checkpoint", str(checkpoint), str(img), "--out", str(blocker / "out")]) == 2
    assert f"--out: {blocker} is a file, not a folder" in capsys.readouterr().err


def test_predict_cli_sliding_tta_matches_api(tmp_path, checkpoint):
    img = _write(tmp_path / "a.png", rgb(48, 80))
    out = tmp_path / "out"
    assert main(["predict", "--checkpoint", str(checkpoint), str(img), "--out", str(out), "--precision", "fp32",
                 "--runtime", "torch", "--sliding", "--crop", "48x32", "--stride", "32x16", "--tta",
                 "--scales", "0.5,1"]) == 0
    probs = predict_probs(tiny_model(), to_input([rgb(48, 80)]), mode="sliding", crop=(48, 32), stride=(32, 16),
                           scales=[0.5, 1.0], flip=True)
    np.testing.assert_array_equal(np.asarray(Image.open(out / "trainIds" / "a.png")), probs.argmax(1)[0].numpy())


def test_predict_follows_the_checkpoints_eval_section_unless_told(tmp_path, checkpoint, capsys):
    from cityseg.checkpoint import load_checkpoint, save_checkpoint

    saved = load_checkpoint(checkpoint)
    saved["config"]["eval"].update(scales=[0.5, 1.0], flip=True)
    tta = tmp_path / "tta.pt"
    save_checkpoint(tta, saved)
    img = _write(tmp_path / "a.png", rgb(48, 80))
    x = to_input([rgb(48, 80)])
    expected = {
        (): predict_probs(tiny_model(), x, scales=[0.5, 1.0], flip=True),  # the recipe's own TTA
        ("--no-tta",): predict_probs(tiny_model(), x),
        ("--tta",): predict_probs(tiny_model(), x, scales=[0.75, 1.0, 1.25], flip=True),
    }
    for flags, probs in expected.items():
        out = tmp_path / ("out" + "".join(flags))
        assert main(["predict", "--checkpoint", str(tta), str(img), "--out", str(out), "--precision", "fp32",
                     "--runtime", "torch", *flags]) == 0
        np.testing.assert_array_equal(np.asarray(Image.open(out / "trainIds" / "a.png")), probs.argmax(1)[0].numpy())
    assert "whole image, scales 0.5,1 + flip;" in capsys.readouterr().out
    predictor = Predictor.from_checkpoint(tta, device="cpu", precision="fp32", runtime="torch")
    assert predictor.options["scales"] == (0.5, 1.0) and predictor.options["flip"]
    assert not Predictor.from_checkpoint(tta, device="cpu", flip=False).options["flip"]  # an option given wins


def test_predict_cli_two_images_run_eager_by_default(tmp_path, checkpoint, capsys, monkeypatch):
    monkeypatch.setattr(paths, "_has_compiler", lambda: True)  # compile would be available: still not chosen
    for i in range(2):
        _write(tmp_path / "in" / f"f{i}.png", rgb(32, 48, seed=i))
    chosen = []
    build_runner = runtime.build_runner
    monkeypatch.setattr("cityseg.inference.predict.build_runner",
                        lambda name, *a: chosen.append(name) or build_runner(name, *a))
    assert main(["predict", "--checkpoint", str(checkpoint), str(tmp_path / "in"), "--out", str(tmp_path / "out"),
                 "--tta"]) == 0
    assert chosen in (["bf16"], ["channels_last"])  # eager, by the CPU's bf16 support
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("cityseg predict: 2 images"))
    assert "eager" in line and "at most 4 forward passes per input shape (3 input shapes)" in line
    assert f"compiling pays from ~{paths.COMPILE_PAYS_FROM}" in line
    assert "compiling for the first image" not in line


def test_predictor_without_a_workload_is_eager(monkeypatch):
    monkeypatch.setattr(paths, "_has_compiler", lambda: True)
    predictor = Predictor.from_model(PixelModel(), device="cpu")
    assert predictor.path in ("bf16", "channels_last")
    assert "workload not known" in predictor.describe()


def test_flip_and_every_inference_choice_mean_one_thing_everywhere(tmp_path, checkpoint):
    """None keeps the checkpoint's eval section, False turns off, True turns on: in the Python API's options,
    in InferenceChoices (the command line's), and an explicit --scales/--flip wins over --tta/--no-tta."""
    from cityseg.checkpoint import load_checkpoint, save_checkpoint
    from cityseg.inference.options import TTA_SCALES, InferenceChoices

    saved = load_checkpoint(checkpoint)
    saved["config"]["eval"].update(scales=[0.5, 1.0], flip=True)
    tta = tmp_path / "tta.pt"
    save_checkpoint(tta, saved)

    def options(**kw):
        o = Predictor.from_checkpoint(tta, device="cpu", precision="fp32", runtime="torch", **kw).options
        return o["mode"], o["scales"], o["flip"]

    assert options() == options(flip=None) == options(choices=InferenceChoices()) == ("whole", (0.5, 1.0), True)
    assert options(flip=False) == options(choices=InferenceChoices(flip=False)) == ("whole", (0.5, 1.0), False)
    assert options(choices=InferenceChoices(tta=False)) == ("whole", (1.0,), False)
    assert options(choices=InferenceChoices(tta=False, flip=True)) == ("whole", (1.0,), True)
    assert options(choices=InferenceChoices(tta=True, scales="1")) == ("whole", (1.0,), True)
    assert options(choices=InferenceChoices(tta=True)) == ("whole", TTA_SCALES, True)
    assert options(choices=InferenceChoices(sliding=True))[0] == "sliding"
    # the plain checkpoint (flip off) is turned on by the same words
    plain = Predictor.from_checkpoint(checkpoint, device="cpu", choices=InferenceChoices(flip=True))
    assert plain.options["flip"] and plain.config.eval.flip


def test_predict_no_flip_keeps_the_checkpoints_scales(tmp_path, checkpoint):
    from cityseg.checkpoint import load_checkpoint, save_checkpoint

    saved = load_checkpoint(checkpoint)
    saved["config"]["eval"].update(scales=[0.5, 1.0], flip=True)
    tta = tmp_path / "tta.pt"
    save_checkpoint(tta, saved)
    img = _write(tmp_path / "a.png", rgb(48, 80))
    out = tmp_path / "out"
    assert main(["predict", "--checkpoint", str(tta), str(img), "--out", str(out), "--precision", "fp32",
                 "--runtime", "torch", "--no-flip"]) == 0
    probs = predict_probs(tiny_model(), to_input([rgb(48, 80)]), scales=[0.5, 1.0], flip=False)
    np.testing.assert_array_equal(np.asarray(Image.open(out / "trainIds" / "a.png")), probs.argmax(1)[0].numpy())


def test_predict_and_evaluate_take_the_same_inference_flags(capsys):
    """One add_inference_arguments() for both commands: the same flags, spelled the same way."""
    flags = {}
    for command in ("predict", "evaluate"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = capsys.readouterr().out
        section = text[text.index("inference (default: the checkpoint's eval section)"):]
        flags[command] = set(re.findall(r"(--[a-z][a-z0-9-]+)", section.split("\n\n")[0]))
    assert flags["predict"] == flags["evaluate"]
    assert {"--flip", "--no-flip", "--tta", "--no-tta", "--sliding", "--no-sliding", "--scales", "--crop", "--stride",
            "--precision", "--runtime", "--calibration", "--batch-size", "--device"} <= flags["predict"]
