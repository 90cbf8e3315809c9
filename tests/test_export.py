"""ONNX export: the graph's interface, dynamic shapes, agreement with torch, atomic writes, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cityseg import labels
from cityseg.cli import main
from cityseg.errors import CitysegError
from model_files import write_checkpoint

ort = pytest.importorskip("onnxruntime")

from cityseg.inference.onnx import export_onnx, onnx_bytes, wrap_for_export  # noqa: E402
from cityseg.inference.predict import Predictor, to_input  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_thread_torch")  # conftest: one thread, restored after


def tiny_model() -> torch.nn.Module:
    from cityseg.models import build_model

    torch.manual_seed(0)
    return build_model("cityseg_tiny", freeze=[]).eval()


class PoolingHead(torch.nn.Module):
    """The dynamic-shape trap of DeepLabV3 in miniature: a stride-4 trunk, an image-pooling branch
    upsampled back to the feature size (ASPP's), and logits upsampled to the input size."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.trunk = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, 4, 1), torch.nn.BatchNorm2d(16), torch.nn.ReLU())
        self.pool = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Conv2d(16, 16, 1))
        self.classifier = torch.nn.Conv2d(32, labels.NUM_CLASSES, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.trunk(x)
        pooled = torch.nn.functional.interpolate(self.pool(f), size=f.shape[-2:], mode="bilinear", align_corners=False)
        logits = self.classifier(torch.cat([f, pooled], 1))
        return {"out": torch.nn.functional.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", tiny_model())


def rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def run_onnx(session, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return tuple(session.run(["logits", "labels"], {"image": images}))


@pytest.mark.parametrize(("exporter", "make"), [("dynamo", PoolingHead), ("torchscript", tiny_model)])
def test_exported_graph_has_dynamic_uint8_input_and_matches_torch(exporter, make):
    model = make().eval()
    data, used = onnx_bytes(model, exporter=exporter)
    assert used == exporter
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    assert inp.name == "image" and inp.type == "tensor(uint8)"
    assert [o.name for o in session.get_outputs()] == ["logits", "labels"]
    assert not any(isinstance(d, int) for i, d in enumerate(inp.shape) if i != 1)  # N, H, W symbolic
    wrapper = wrap_for_export(model)
    for n, h, w in [(1, 64, 64), (2, 48, 80)]:  # two sizes, two batch sizes, one exported graph
        images = np.stack([rgb(h, w, seed=i) for i in range(n)]).transpose(0, 3, 1, 2).copy()
        logits, labels_out = run_onnx(session, images)
        assert logits.shape == (n, labels.NUM_CLASSES, h, w) and logits.dtype == np.float32
        assert labels_out.shape == (n, h, w) and labels_out.dtype == np.uint8
        ref_logits, _ = wrapper(torch.from_numpy(images))
        np.testing.assert_allclose(logits, ref_logits.detach().numpy(), rtol=1e-3, atol=1e-4)
        # normalisation is in the graph: the torch model on normalised input gives the same argmax
        ref = model(to_input(list(images.transpose(0, 2, 3, 1))))["out"].argmax(1).numpy()
        assert (labels_out == ref).mean() >= 0.999


def test_export_cli_writes_checked_file_and_predict_runs_it(tmp_path, checkpoint, capsys):
    onnx_path = tmp_path / "model.onnx"
    image_path = tmp_path / "photo.png"
    from PIL import Image

    Image.fromarray(rgb(64, 96, seed=5)).save(image_path)
    assert main(["export", "--checkpoint", str(checkpoint), "--onnx", str(onnx_path), "--exporter", "torchscript",
                 "--check-image", str(image_path)]) == 0
    assert "photo.png" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "photo.png"]  # no temporary left
    out = tmp_path / "pred"
    assert main(["predict", "--onnx", str(onnx_path), str(image_path), "--out", str(out)]) == 0
    got = np.asarray(Image.open(out / "trainIds" / "photo.png"))
    expected = tiny_model()(to_input([rgb(64, 96, seed=5)]))["out"].argmax(1)[0].numpy()
    assert (got == expected).mean() >= 0.999
    # self-describing: classes, palette, input and the checkpoint's config travel in the metadata
    from cityseg import __version__
    from cityseg.inference.onnx import read_metadata

    meta = read_metadata(onnx_path)
    assert meta["cityseg.classes"] == list(labels.CLASS_NAMES) and meta["cityseg.dataset"]["name"] == "cityscapes"
    assert meta["cityseg.palette"][0] == [128, 64, 128] and len(meta["cityseg.palette"]) == labels.NUM_CLASSES
    assert meta["cityseg.input"]["dtype"] == "uint8" and meta["cityseg.input"]["mean"] == [0.485, 0.456, 0.406]
    assert meta["cityseg.config"]["model"]["name"] == "cityseg_tiny" and meta["cityseg.version"] == __version__


def test_predict_refuses_an_onnx_file_of_other_classes(tmp_path, checkpoint, capsys):
    import onnx

    from cityseg.inference.onnx import CHECKSUM_KEY, _graph_digest

    path = tmp_path / "model.onnx"
    assert main(["export", "--checkpoint", str(checkpoint), "--onnx", str(path), "--exporter", "torchscript"]) == 0
    model = onnx.load(str(path))
    for prop in model.metadata_props:
        if prop.key == "cityseg.classes":
            prop.value = json.dumps([f"class{i}" for i in range(labels.NUM_CLASSES)])
        if prop.key == CHECKSUM_KEY:
            prop.value = _graph_digest(model)  # the metadata is not part of the checksum
    onnx.save(model, str(path))
    image = tmp_path / "a.png"
    from PIL import Image

    Image.fromarray(rgb(32, 32)).save(image)
    capsys.readouterr()
    assert main(["predict", "--onnx", str(path), str(image), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"cityseg predict: error: {path}: predicts 19 classes (class0, class1, class2, class3, class4, "
                   "class5, ...), not the 19 classes of dataset cityscapes")


def test_export_refuses_low_agreement_and_writes_nothing(tmp_path):
    path = tmp_path / "m.onnx"
    with pytest.raises(CitysegError, match="not written"):
        export_onnx(tiny_model(), path, exporter="torchscript", min_agreement=1.01)
    assert list(tmp_path.iterdir()) == []


def test_export_unwritable_path_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(CitysegError, match="cannot write"):
        export_onnx(tiny_model(), blocker / "m.onnx", exporter="torchscript")


def test_from_onnx_on_a_real_frame_agrees_with_fp32_torch(tmp_path, fixtures_dir):
    from cityseg.utils import read_image

    frame = read_image(fixtures_dir / "images_only" / "frankfurt_demo_leftImg8bit.png", "RGB")  # 1024x512
    model = tiny_model()
    path = tmp_path / "m.onnx"
    export_onnx(model, path, exporter="torchscript")
    onnx_pred = Predictor.from_onnx(path).predict(frame)
    torch_pred = Predictor.from_model(model, device="cpu", precision="fp32", runtime="torch").predict(frame)
    assert (onnx_pred == torch_pred).mean() >= 0.999
