"""Models of other class counts than Cityscapes' 19 get the same treatment (issue 23, item 2).

The bf16 runner keeps the convolutions that read the image and write the logits in fp32, and the int8
quantiser leaves them out, whatever the class count: the classifier is found from the model (the heads
it names, :func:`cityseg.modelinfo.classifier_convs`) and, in the ONNX graph, from its structure (the Conv
that writes the ``logits`` output, :func:`cityseg.inference.int8.logit_convs`), never by 19 channels.
An int8 file made from a checkpoint of another dataset names that dataset in its metadata.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cityseg.checkpoint import load_model, save_checkpoint
from cityseg.config import Config
from cityseg.inference import paths
from cityseg.inference.predict import Predictor
from cityseg.inference.runtime import Fp32, TorchRunner, keep_fp32_ends
from cityseg.modelinfo import classifier_convs, model_config
from cityseg.models import build_model

#: A dataset of five classes described in a file (as ``--dataset toy5.yaml`` reads it): none of Cityscapes'.
TOY5 = {
    "name": "toy5",
    "classes": [{"name": name, "color": color, "ids": [raw]} for name, color, raw in (
        ("ground", [10, 200, 30], 1), ("wall", [200, 20, 20], 2), ("sky", [20, 40, 220], 4),
        ("person", [240, 200, 0], 5), ("car", [120, 0, 160], 9))],
    "void": {"ids": [0], "colors": [[0, 0, 0]]},
    "images": "{split}/images/{stem}.png",
    "labels": "{split}/labels/{stem}.png",
}


pytestmark = pytest.mark.usefixtures("one_thread_own_cache")


# --- bf16: the model names its classifier --------------------------------------------------------

#: (model, classes, aux head) -> the convolutions that must stay fp32: image readers, then logit writers.
CASES = [
    ("cityseg_tiny", 11, True, ["backbone.stem.0", "classifier", "aux_classifier.1"]),
    ("cityseg_tiny", 5, False, ["backbone.stem.0", "classifier"]),
    # 32 classes: as many channels as the decoder's layers; only the classifier is the classifier
    ("cityseg_tiny", 32, False, ["backbone.stem.0", "classifier"]),
    ("cityseg_small", 5, True, ["backbone.stem.0.0", "classifier", "aux_classifier.1"]),
    ("lraspp_mobilenet_v3_large", 11, False,
     ["backbone.0.0", "classifier.low_classifier", "classifier.high_classifier"]),
    ("deeplabv3_mobilenet_v3_large", 5, True, ["backbone.0.0", "classifier.4", "aux_classifier.4"]),
]


@pytest.mark.parametrize(("name", "classes", "aux", "expected"), CASES)
def test_bf16_keeps_the_image_and_logit_convolutions_of_any_class_count_fp32(name, classes, aux, expected):
    model = build_model(name, num_classes=classes, aux_head=aux, freeze=[]).eval()
    modules = dict(model.named_modules())
    logit_writers = classifier_convs(model)
    assert set(logit_writers) == set(expected[1:])
    assert all(modules[n].out_channels == classes for n in logit_writers)
    runner = TorchRunner(model, torch.device("cpu"), precision="bf16", channels_last=False)
    wrapped = {n for n, m in runner.model.named_modules() if isinstance(m, Fp32)}
    assert wrapped == set(expected)
    assert keep_fp32_ends(runner.model) == []  # idempotent
    logits = runner(torch.randn(1, 3, 32, 48))
    assert logits.shape == (1, classes, 32, 48) and logits.dtype == torch.float32


def test_an_hf_model_names_its_classifier(tmp_path):
    transformers = pytest.importorskip("transformers")
    names = [c["name"] for c in TOY5["classes"]]
    config = transformers.SegformerConfig(
        num_encoder_blocks=4, depths=[1, 1, 1, 1], hidden_sizes=[8, 16, 24, 32], num_attention_heads=[1, 1, 1, 1],
        decoder_hidden_size=16, num_labels=5, id2label=dict(enumerate(names)))
    transformers.SegformerForSemanticSegmentation(config).save_pretrained(tmp_path / "seg5")
    model = build_model(f"hf:{tmp_path / 'seg5'}", num_classes=5, freeze=[], class_names=names).eval()
    assert classifier_convs(model) == ["model.decode_head.classifier"]
    modules = dict(model.named_modules())
    wrapped = keep_fp32_ends(model)
    image = [n for n in wrapped if n != "model.decode_head.classifier"]
    assert "model.decode_head.classifier" in wrapped
    assert len(image) == 1 and modules[image[0]].in_channels == 3  # the first patch embedding


# --- int8: the Conv that writes the logits, found in the graph -----------------------------------


def _frames(n: int, size=(48, 32)) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randint(0, 256, (1, 3, size[1], size[0]), dtype=torch.uint8, generator=gen) for _ in range(n)]


def _float_convs(graph) -> set[str]:
    """The Conv nodes of a QDQ graph whose weights are not quantised (no DequantizeLinear feeds them)."""
    producer = {out: node for node in graph.node for out in node.output}
    return {node.name for node in graph.node if node.op_type == "Conv"
            and not (node.input[1] in producer and producer[node.input[1]].op_type == "DequantizeLinear")}


@pytest.mark.parametrize(("name", "classes", "logit_nodes"), [
    ("cityseg_tiny", 11, {"/model/classifier/Conv"}),
    ("cityseg_tiny", 5, {"/model/classifier/Conv"}),
    ("cityseg_tiny", 32, {"/model/classifier/Conv"}),
    ("lraspp_mobilenet_v3_large", 5,
     {"/model/classifier/low_classifier/Conv", "/model/classifier/high_classifier/Conv"}),
])
def test_int8_leaves_out_the_image_and_logit_convolutions_of_any_class_count(name, classes, logit_nodes):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from cityseg.inference.int8 import quantize_model

    torch.manual_seed(0)
    model = build_model(name, num_classes=classes, freeze=[]).eval()
    graph = onnx.load_from_string(quantize_model(model, _frames(2))).graph
    convs = [node for node in graph.node if node.op_type == "Conv"]
    kept = _float_convs(graph)
    image = {"/model/backbone/stem/stem.0/Conv", "/model/backbone/backbone.0/backbone.0.0/Conv"} & {
        n.name for n in convs}
    assert len(image) == 1  # the one convolution that reads the image
    assert kept == logit_nodes | image
    assert len(convs) > len(kept) + 3  # everything else is quantised


def test_logit_convs_follow_the_graph_not_the_channel_count():
    onnx = pytest.importorskip("onnx")
    from cityseg.inference.int8 import logit_convs
    from cityseg.inference.onnx import onnx_bytes

    model = build_model("cityseg_tiny", num_classes=32, freeze=[]).eval()  # 32: the decoder's width too
    graph = onnx.load_from_string(onnx_bytes(model, exporter="torchscript")[0]).graph
    initializers = {i.name: tuple(i.dims) for i in graph.initializer}
    thirty_two = [n.name for n in graph.node if n.op_type == "Conv" and initializers.get(n.input[1], (0,))[0] == 32]
    assert len(thirty_two) > 3  # a channel count would take all of these
    assert logit_convs(graph) == ["/model/classifier/Conv"]


# --- int8 metadata: the checkpoint's own dataset -------------------------------------------------


@pytest.fixture
def toy5_checkpoint(tmp_path) -> Path:
    cfg = Config(dataset=TOY5)
    cfg.model.name, cfg.model.freeze = "cityseg_tiny", []
    torch.manual_seed(0)
    model = build_model("cityseg_tiny", num_classes=5, freeze=[])
    path = tmp_path / "run" / "best.pt"
    path.parent.mkdir()
    save_checkpoint(path, {"config": cfg.to_dict(), "model": model.state_dict(), "epoch": 1, "step": 1})
    calib = tmp_path / "calib"
    calib.mkdir()
    for i, frame in enumerate(_frames(3)):
        Image.fromarray(frame[0].permute(1, 2, 0).numpy()).save(calib / f"{i}.png")
    return path


def test_int8_file_of_a_described_dataset_names_that_dataset(toy5_checkpoint, monkeypatch, capsys):
    pytest.importorskip("onnxruntime")
    from cityseg.cli import main
    from cityseg.inference.onnx import read_metadata

    monkeypatch.setattr(paths, "cpu_has_vnni", lambda: True)  # int8 runs (slower, still right) on any CPU
    model, _ = load_model(toy5_checkpoint)
    assert model_config(model)["dataset"]["name"] == "toy5"
    calib = toy5_checkpoint.parent.parent / "calib"
    predictor = Predictor.from_checkpoint(toy5_checkpoint, precision="int8", calibration=calib)
    assert predictor.path == "int8"
    (cached,) = toy5_checkpoint.parent.glob("best.int8.*.onnx")
    meta = read_metadata(cached)
    assert meta["cityseg.dataset"]["name"] == "toy5"
    assert meta["cityseg.classes"] == ["ground", "wall", "sky", "person", "car"]
    assert meta["cityseg.palette"] == [c["color"] for c in TOY5["classes"]]
    # the int8 file is a self-describing model of its own: predict reads toy5's table from it
    photo = Image.open(next(calib.glob("*.png")))
    inputs = toy5_checkpoint.parent.parent / "inputs"
    inputs.mkdir()
    photo.save(inputs / "a.png")
    out = toy5_checkpoint.parent.parent / "pred"
    assert main(["predict", "--onnx", str(cached), str(inputs), "--out", str(out)]) == 0
    capsys.readouterr()
    ids = np.asarray(Image.open(out / "trainIds" / "a.png"))
    assert ids.max() < 5
    assert np.array_equal(ids, predictor.predict(np.asarray(photo.convert("RGB"))))
    palette = np.array([c["color"] for c in TOY5["classes"]], np.uint8)
    assert np.array_equal(np.asarray(Image.open(out / "color" / "a.png").convert("RGB")), palette[ids])  # toy5's
    raw_ids = np.array([c["ids"][0] for c in TOY5["classes"]], np.uint8)
    assert np.array_equal(np.asarray(Image.open(out / "labelIds" / "a.png")), raw_ids[ids])


def test_pixel_shares_of_a_prediction_count_every_pixel():
    from cityseg.stats import pixel_shares

    train_ids = np.array([[0, 0, 2, 255], [2, 2, 1, 0]], dtype=np.uint8)  # 255: ignored, still a pixel
    np.testing.assert_allclose(pixel_shares(train_ids, 3), [3 / 8, 1 / 8, 3 / 8])
    np.testing.assert_array_equal(pixel_shares(np.zeros((0, 4), np.uint8), 3), [0, 0, 0])
