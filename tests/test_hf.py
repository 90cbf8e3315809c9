"""Hugging Face transformers models through ``hf:REPO_OR_DIR`` (:mod:`cityseg.hf`): cityseg's prediction
equals transformers' own forward pass, the class table is checked, every command takes ``hf:DIR``,
training fine-tunes one into a checkpoint that reloads without the folder.

Nothing is downloaded: the models are tiny randomly initialised SegFormers written with
``save_pretrained`` into the test's temporary folders.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")

from cityseg import hf, labels  # noqa: E402
from cityseg.checkpoint import load_checkpoint, load_model  # noqa: E402
from cityseg.cli import main  # noqa: E402
from cityseg.errors import CitysegError  # noqa: E402
from cityseg.inference.predict import Predictor, to_input  # noqa: E402
from cityseg.models import build_model  # noqa: E402

#: Not ImageNet's: proves the processor's statistics are the ones applied.
PROCESSOR_MEAN, PROCESSOR_STD = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]


def save_segformer(folder: Path, names: list[str], processor: bool = False, seed: int = 0) -> Path:
    """A tiny random SegFormer predicting ``names`` (+ its image processor) saved in ``folder``."""
    config = transformers.SegformerConfig(
        num_encoder_blocks=4, depths=[1, 1, 1, 1], hidden_sizes=[8, 16, 24, 32], num_attention_heads=[1, 1, 1, 1],
        decoder_hidden_size=16, num_labels=len(names), id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)})
    torch.manual_seed(seed)
    model = transformers.SegformerForSemanticSegmentation(config).eval()
    with torch.no_grad():  # random init gives logits of ~1e-3: scale them to ~1 so 1e-5 is a real tolerance
        model.decode_head.classifier.weight.mul_(300)
    model.save_pretrained(folder)
    if processor:
        transformers.SegformerImageProcessor(image_mean=PROCESSOR_MEAN, image_std=PROCESSOR_STD).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def segformer(tmp_path_factory) -> Path:
    """A Cityscapes SegFormer (the 19 train names) with a non-ImageNet image processor."""
    return save_segformer(tmp_path_factory.mktemp("segformer"), list(labels.CLASS_NAMES), processor=True)


@pytest.fixture(scope="module")
def plain_segformer(tmp_path_factory) -> Path:
    """A Cityscapes SegFormer without preprocessor_config.json (ImageNet's statistics apply)."""
    return save_segformer(tmp_path_factory.mktemp("plain"), list(labels.CLASS_NAMES), seed=1)


def rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def transformers_logits(folder: Path, image: np.ndarray) -> torch.Tensor:
    """transformers' own pass: processor normalisation without its resize, logits upsampled as its post-processing."""
    model = transformers.AutoModelForSemanticSegmentation.from_pretrained(folder).eval()
    processor = transformers.SegformerImageProcessor.from_pretrained(folder) if (
        folder / hf.PROCESSOR_FILE).is_file() else transformers.SegformerImageProcessor()
    pixels = processor(images=image, do_resize=False, return_tensors="pt").pixel_values
    assert pixels.shape[-2:] == image.shape[:2]
    with torch.no_grad():
        logits = model(pixel_values=pixels).logits
    return F.interpolate(logits, size=image.shape[:2], mode="bilinear", align_corners=False)


# --- the same numbers as transformers ---------------------------------------------------------------


@pytest.mark.parametrize("which", ["segformer", "plain_segformer"])
def test_prediction_equals_transformers_forward_pass(which, request):
    folder = request.getfixturevalue(which)
    image = rgb(45, 67)  # odd, non-square: no resize, no padding anywhere
    predictor = Predictor.from_checkpoint(f"hf:{folder}", device="cpu", precision="fp32", runtime="torch")
    ours = predictor.runner(to_input([image]))
    theirs = transformers_logits(folder, image)
    assert ours.shape == theirs.shape == (1, labels.NUM_CLASSES, 45, 67)
    assert theirs.abs().max() > 0.1  # logits of a usable size, so that the tolerance means something
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    assert torch.equal(ours.argmax(1), theirs.argmax(1))
    assert np.array_equal(predictor.predict(image), theirs.argmax(1)[0].numpy().astype(np.uint8))
    assert predictor.spec.name == "cityscapes"


def test_sliding_window_and_tta_equal_a_hand_built_average_of_transformers_passes(segformer):
    """The expected probabilities are built here from transformers' own forward pass: per scale and flip,
    the softmax of each 32x32 window (windows written out by hand), averaged where windows overlap, flipped
    back, resized to the image; then the mean of the 4 passes."""
    image = rgb(40, 72, seed=3)
    predictor = Predictor.from_checkpoint(f"hf:{segformer}", device="cpu", precision="fp32", runtime="torch",
                                          mode="sliding", crop=(32, 32), stride=(24, 24), scales=(0.75, 1.0), flip=True)
    model = transformers.AutoModelForSemanticSegmentation.from_pretrained(segformer).eval()
    processor = transformers.SegformerImageProcessor.from_pretrained(segformer)
    pixels = processor(images=image, do_resize=False, return_tensors="pt").pixel_values
    # (size, row starts, column starts, most windows on a pixel): at 0.75 the 30 rows take one window of
    # 30x32; the last window is shifted back to end at the border (40 - 32 = 8, 54 - 32 = 22, 72 - 32 = 40)
    grids = [((30, 54), [0], [0, 22], 2), ((40, 72), [0, 8], [0, 24, 40], 4)]
    total = torch.zeros(1, labels.NUM_CLASSES, 40, 72)
    with torch.no_grad():
        for size, rows, cols, overlap in grids:
            x = F.interpolate(pixels, size=size, mode="bilinear", align_corners=False) if size != (40, 72) else pixels
            for flipped in (False, True):
                xi = x.flip(-1) if flipped else x
                probs, count = torch.zeros(1, labels.NUM_CLASSES, *size), torch.zeros(1, 1, *size)
                for y in rows:
                    for c in cols:
                        crop = xi[..., y : y + 32, c : c + 32]
                        logits = F.interpolate(model(pixel_values=crop).logits, size=crop.shape[-2:], mode="bilinear",
                                               align_corners=False)
                        probs[..., y : y + 32, c : c + 32] += logits.softmax(1)
                        count[..., y : y + 32, c : c + 32] += 1
                assert count.min() == 1 and count.max() == overlap  # every pixel covered, windows overlap
                probs = (probs / count).flip(-1) if flipped else probs / count
                total += F.interpolate(probs, size=(40, 72), mode="bilinear", align_corners=False)
    expected = total / 4
    torch.testing.assert_close(predictor.probabilities([image]), expected, rtol=0, atol=1e-5)
    assert np.array_equal(predictor.predict(image), expected.argmax(1)[0].numpy().astype(np.uint8))


def test_input_affine_is_the_identity_for_imagenet_statistics():
    from cityseg.imaging import IMAGENET_MEAN, IMAGENET_STD

    scale, shift = hf.input_affine(IMAGENET_MEAN, IMAGENET_STD)
    assert torch.equal(scale, torch.ones(3)) and shift.abs().max() < 1e-7


# --- the class table --------------------------------------------------------------------------------


def test_a_model_of_other_classes_is_one_line(tmp_path, capsys):
    folder = save_segformer(tmp_path / "ade", ["wall", "building", "sky", "floor"] + [f"thing_{i}" for i in range(146)])
    with pytest.raises(CitysegError) as err:
        load_model(f"hf:{folder}")
    assert str(err.value) == (f"hf:{folder}: the model predicts 150 classes (wall, building, sky, floor, ...), not "
                              "cityscapes' 19 (road, sidewalk, building, wall, ...); "
                              "pass --dataset with its class table")
    image = tmp_path / "a.png"
    from PIL import Image

    Image.fromarray(rgb(32, 32)).save(image)
    capsys.readouterr()
    assert main(["predict", "--checkpoint", f"hf:{folder}", str(image), "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip() == f"cityseg predict: error: {err.value}"


def test_dataset_names_the_table_and_names_compare_loosely(tmp_path):
    camvid = ["sky", "building", "pole", "road", "sidewalk", "tree", "sign-symbol", "fence", "car", "pedestrian",
              "bicyclist"]  # CamVid's own names in another spelling: SignSymbol
    folder = save_segformer(tmp_path / "camvid", camvid)
    model, cfg = load_model(f"hf:{folder}", dataset="camvid")
    assert cfg.spec().name == "camvid" and cfg.model.name == f"hf:{folder}"
    assert model(torch.zeros(1, 3, 32, 48))["out"].shape == (1, 11, 32, 48)


def test_mask_classification_models_are_refused_in_one_line(tmp_path):
    transformers.Mask2FormerConfig().save_pretrained(tmp_path / "m2f")
    with pytest.raises(CitysegError, match=r"model type 'mask2former' is a mask-classification model .*supported "
                                           r"\(transformers' AutoModelForSemanticSegmentation\): .*segformer"):
        load_model(f"hf:{tmp_path / 'm2f'}")


def test_bad_references_are_one_line(tmp_path):
    with pytest.raises(CitysegError, match="no such folder"):
        load_model(f"hf:{tmp_path / 'missing'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CitysegError, match="holds no config.json"):
        load_model(f"hf:{tmp_path / 'empty'}")
    with pytest.raises(CitysegError, match="name a transformers model after hf:"):
        load_model("hf:")


def test_an_uncached_hub_model_offline_says_how_to_get_it(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # no request, no retries
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    name = "hf:nvidia/segformer-b0-finetuned-cityscapes-1024-1024"
    with pytest.raises(CitysegError) as err:
        load_model(name)
    assert str(err.value).startswith(f"{name}: cannot download (offline?); download it on a machine with internet "
                                     "with `hf download nvidia/segformer-b0-finetuned-cityscapes-1024-1024 "
                                     "--local-dir DIR`")
    assert "pass hf:DIR" in str(err.value) and "\n" not in str(err.value)


def test_without_transformers_the_extra_is_named(monkeypatch, segformer):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers -> ImportError
    with pytest.raises(CitysegError) as err:
        load_model(f"hf:{segformer}")
    assert str(err.value) == ('hf: models (Hugging Face) needs transformers, which is not installed; '
                              'pip install "cityseg[hf]"')


# --- every command ----------------------------------------------------------------------------------


def test_predict_cli_writes_the_models_labels(segformer, tmp_path):
    from PIL import Image

    image = rgb(45, 67, seed=7)
    Image.fromarray(image).save(tmp_path / "photo.png")
    out = tmp_path / "pred"
    assert main(["predict", "--checkpoint", f"hf:{segformer}", str(tmp_path / "photo.png"), "--out", str(out),
                 "--precision", "fp32", "--runtime", "torch"]) == 0
    got = np.asarray(Image.open(out / "trainIds" / "photo.png"))
    assert np.array_equal(got, transformers_logits(segformer, image).argmax(1)[0].numpy())


def test_evaluate_cli_scores_an_hf_model(segformer, synth_root, tmp_path):
    out = tmp_path / "scores.json"
    assert main(["evaluate", "--checkpoint", f"hf:{segformer}", "--data", str(synth_root), "--workers", "0",
                 "--boundary-tolerance", "-1", "--json", str(out)]) == 0
    scores = json.loads(out.read_text())
    assert 0 <= scores["miou"] <= 1 and len(scores["classes"]) == labels.NUM_CLASSES


def test_export_cli_writes_an_onnx_file_that_predicts_like_torch(segformer, tmp_path):
    onnx_path = tmp_path / "segformer.onnx"
    assert main(["export", "--checkpoint", f"hf:{segformer}", "--onnx", str(onnx_path), "--exporter",
                 "torchscript"]) == 0
    from cityseg.inference.onnx import read_metadata

    meta = read_metadata(onnx_path)
    assert meta["cityseg.config"]["model"]["name"] == f"hf:{segformer}"
    assert meta["cityseg.classes"] == list(labels.CLASS_NAMES)
    image = rgb(45, 67, seed=2)  # another size than the export's example: dynamic H, W
    ours = Predictor.from_onnx(onnx_path).predict(image)
    assert (ours == transformers_logits(segformer, image).argmax(1)[0].numpy()).mean() >= 0.999


def test_benchmark_cli_times_an_hf_model(segformer, tmp_path, monkeypatch):
    from cityseg.inference import benchmark

    monkeypatch.setattr(benchmark, "default_path", lambda device, work=None: "channels_last")  # no compiling
    out = tmp_path / "bench.json"
    assert main(["benchmark", "--checkpoint", f"hf:{segformer}", "--size", "64x48", "--paths", "channels_last",
                 "--repeats", "1", "--threads", "1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["model"] == f"hf:{segformer}" and result["paths"]["channels_last"]["agreement"] >= 0.999


# --- training ---------------------------------------------------------------------------------------


def test_train_fine_tunes_an_hf_model_into_a_checkpoint_that_reloads_without_the_folder(
        segformer, synth_root, tmp_path, one_thread_torch):
    folder = shutil.copytree(segformer, tmp_path / "start")
    out = tmp_path / "run"
    sets = ["model.name=hf:" + str(folder), "model.freeze=[stem,layer1]", "data.crop_size=64x32", "data.workers=0",
            "train.batch_size=4", "train.val_batch_size=2", "train.epochs=1", "train.max_steps=2", "train.panels=0",
            "sched.name=constant", "optim.head_lr_mult=10"]
    assert main(["train", "--data", str(synth_root), "--out", str(out), "--device", "cpu",
                 *[item for s in sets for item in ("--set", s)]]) == 0
    ckpt = load_checkpoint(out / "checkpoints" / "last.pt")
    assert ckpt["hf_config"]["model_type"] == "segformer" and ckpt["step"] == 2
    lrs = [group["lr"] for group in ckpt["optimizer"]["param_groups"]]  # encoder, then head (x head_lr_mult)
    assert len(lrs) == 2 and lrs[1] == pytest.approx(10 * lrs[0])
    start = load_model(f"hf:{folder}")[0]
    frozen = hf.stage_map(start.model)["stem"] + hf.stage_map(start.model)["layer1"]
    assert len(frozen) == 3  # stem, then stage 1's blocks and layer norm
    changed = {k for k, v in start.state_dict().items() if not torch.equal(v, ckpt["model"][k])}
    assert changed and not any(k.startswith(frozen) for k in changed)  # the frozen stages kept their weights
    head = "model.decode_head.classifier.weight"
    assert head in changed and any(k.startswith("model.segformer.") for k in changed)  # head and backbone learnt
    shutil.rmtree(folder)
    model, cfg = load_model(out / "checkpoints" / "last.pt")
    assert cfg.model.name == f"hf:{folder}"
    assert torch.equal(model.scale, hf.input_affine(PROCESSOR_MEAN, PROCESSOR_STD)[0].view(1, 3, 1, 1))
    assert torch.equal(model.state_dict()[head], ckpt["model"][head])
    assert model(torch.zeros(1, 3, 32, 64))["out"].shape == (1, labels.NUM_CLASSES, 32, 64)


def test_another_class_count_gets_a_new_classifier_with_a_warning(segformer, caplog):
    names = ["road", "car", "sky"]
    model = build_model(f"hf:{segformer}", num_classes=3, freeze=[], class_names=names)
    assert model(torch.zeros(1, 3, 32, 32))["out"].shape == (1, 3, 32, 32)
    assert model.model.config.id2label == {0: "road", 1: "car", 2: "sky"}
    assert "randomly initialised" in caplog.text
    with pytest.raises(CitysegError, match="set model.pretrained=none"):
        build_model(f"hf:{segformer}", pretrained="imagenet")


def test_train_refuses_a_missing_model_folder_before_drawing_any_data(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--set", f"model.name=hf:{tmp_path / 'nowhere'}"]) == 2
    assert capsys.readouterr().err.strip() == (f"cityseg train: error: hf:{tmp_path / 'nowhere'}: no such folder "
                                               "(a Hub model is hf:OWNER/NAME)")
    assert not out.exists()


# --- safetensors exports and missing processors (issue 23, item 3) ----------------------------------


@pytest.mark.parametrize("source", ["hf", "checkpoint"])
def test_a_safetensors_export_of_an_hf_model_loads_offline_without_its_folder(segformer, tmp_path, monkeypatch,
                                                                              capsys, source):
    """Exported from ``hf:DIR`` directly or from a cityseg checkpoint of it (as training writes one), the
    file carries the transformers config: it loads with the folder gone and the Hub unreachable."""
    from cityseg.checkpoint import model_state, save_checkpoint
    from cityseg.config import Config

    folder = shutil.copytree(segformer, tmp_path / "model")
    image = rgb(40, 56, seed=5)
    options = dict(device="cpu", precision="fp32", runtime="torch")
    expected = Predictor.from_checkpoint(f"hf:{folder}", **options).probabilities([image])
    checkpoint = f"hf:{folder}"
    if source == "checkpoint":
        model, _ = load_model(f"hf:{folder}")
        cfg = Config()
        cfg.model.name, cfg.model.freeze = f"hf:{folder}", []
        checkpoint = str(tmp_path / "best.pt")
        save_checkpoint(checkpoint, {"config": cfg.to_dict(), **model_state(model), "epoch": 1, "step": 1})
    out = tmp_path / "model.safetensors"
    assert main(["export", "--checkpoint", checkpoint, "--safetensors", str(out)]) == 0
    from safetensors import safe_open

    with safe_open(str(out), framework="pt") as f:
        assert json.loads(f.metadata()["hf_config"])["model_type"] == "segformer"
    shutil.rmtree(folder)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    predictor = Predictor.from_checkpoint(out, **options)
    torch.testing.assert_close(predictor.probabilities([image]), expected, rtol=0, atol=1e-6)
    (tmp_path / "in").mkdir()
    from PIL import Image

    Image.fromarray(image).save(tmp_path / "in" / "a.png")
    assert main(["predict", "--checkpoint", str(out), str(tmp_path / "in"), "--out", str(tmp_path / "pred"),
                 "--precision", "fp32", "--runtime", "torch"]) == 0
    capsys.readouterr()
    written = np.asarray(Image.open(tmp_path / "pred" / "trainIds" / "a.png"))
    assert np.array_equal(written, expected.argmax(1)[0].numpy().astype(np.uint8))


def test_a_folder_without_a_processor_warns_naming_the_assumed_statistics(plain_segformer, caplog, monkeypatch):
    import logging

    monkeypatch.setattr(logging.getLogger("cityseg"), "propagate", True)  # a CLI test may have turned it off
    caplog.set_level(logging.INFO, logger="cityseg")
    model, _ = load_model(f"hf:{plain_segformer}")
    assert torch.equal(model.scale, hf.input_affine([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])[0].view(1, 3, 1, 1))
    records = [r for r in caplog.records if hf.PROCESSOR_FILE in r.getMessage()]
    assert records and all(r.levelno == logging.WARNING and r.name == "cityseg.hf" for r in records)
    assert len({r.getMessage() for r in records}) == 1  # one line (a handler left by a CLI test may repeat it)
    assert "ImageNet's mean [0.485, 0.456, 0.406] and std [0.229, 0.224, 0.225]" in records[0].getMessage()


def test_a_folder_without_a_processor_takes_the_configs_statistics(tmp_path, caplog, monkeypatch):
    import logging

    folder = save_segformer(tmp_path / "own", list(labels.CLASS_NAMES), seed=2)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "image_mean": PROCESSOR_MEAN,
                                                    "image_std": PROCESSOR_STD}))
    monkeypatch.setattr(logging.getLogger("cityseg"), "propagate", True)
    caplog.set_level(logging.INFO, logger="cityseg")
    model, _ = load_model(f"hf:{folder}")
    assert torch.equal(model.scale, hf.input_affine(PROCESSOR_MEAN, PROCESSOR_STD)[0].view(1, 3, 1, 1))
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert "normalising with the model config's mean [0.5, 0.4, 0.3] and std [0.2, 0.25, 0.3]" in caplog.text
