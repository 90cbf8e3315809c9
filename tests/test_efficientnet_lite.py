"""EfficientNet-Lite backbones: the weights files users have (both key layouts, .pth and .safetensors),
exact renaming, refusals naming both variants, the model's own input normalisation carried through
checkpoints, safetensors and ONNX, and the whole command line on a Lite model."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cityseg import checkpoint as C
from cityseg.cli import main
from cityseg.errors import CitysegError
from cityseg.imaging import IMAGENET, Normalization, model_normalization, normalize
from cityseg.models import MODELS, build_model
from cityseg.models import efficientnet_lite as lite
from cityseg.pretrained import build_starting_model

timm = pytest.importorskip("timm")
pytestmark = pytest.mark.usefixtures("one_thread_torch")  # conftest: one thread, restored after

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet-weights"
SHARED_FILES = {"efficientnet_lite0": "efficientnet-lite0-57934424.pth",
                "efficientnet_lite1": "efficientnet-lite1-77cc7160.pth",
                "efficientnet_lite2": "efficientnet-lite2-9656183e.pth"}
HALF = Normalization((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def classifier_net(variant: str, seed: int = 0) -> torch.nn.Module:
    """timm's whole ImageNet classifier of ``variant`` with seeded, non-default weights and BN statistics."""
    torch.manual_seed(seed)
    net = timm.create_model(lite.timm_name(variant))
    for name, buf in net.named_buffers():
        if name.endswith("running_mean"):
            buf.normal_(0, 0.1)
        elif name.endswith("running_var"):
            buf.uniform_(0.5, 1.5)
    return net.eval()


def to_efficientnet_pytorch(state: dict[str, torch.Tensor], depths: list[int]) -> dict[str, torch.Tensor]:
    """timm's layout -> the EfficientNet-PyTorch layout of the published packages (the inverse mapping,
    written out independently of cityseg's: flat block numbers, ``_``-names)."""
    top = {"conv_stem": "_conv_stem", "bn1": "_bn0", "conv_head": "_conv_head", "bn2": "_bn1", "classifier": "_fc"}
    first = {"conv_dw": "_depthwise_conv", "bn1": "_bn1", "conv_pw": "_project_conv", "bn2": "_bn2"}
    other = {"conv_pw": "_expand_conv", "bn1": "_bn0", "conv_dw": "_depthwise_conv", "bn2": "_bn1",
             "conv_pwl": "_project_conv", "bn3": "_bn2"}
    starts = np.cumsum([0, *depths]).tolist()
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "blocks":
            stage, block, name, rest = int(parts[1]), int(parts[2]), parts[3], ".".join(parts[4:])
            names = first if stage == 0 else other
            out[f"_blocks.{starts[stage] + block}.{names[name]}.{rest}"] = value
        else:
            out[f"{top[parts[0]]}.{'.'.join(parts[1:])}"] = value
    return out


def depths(variant: str) -> list[int]:
    return [len(s) for s in timm.create_model(lite.timm_name(variant)).blocks]


@pytest.fixture(scope="module")
def lite0_files(tmp_path_factory) -> dict[str, Path]:
    """One seeded Lite0 classifier saved four ways: both layouts, .pth and .safetensors."""
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("lite0")
    net = classifier_net("efficientnet_lite0")
    timm_state = net.state_dict()
    ep_state = to_efficientnet_pytorch(timm_state, depths("efficientnet_lite0"))
    files = {"timm.pth": timm_state, "ep.pth": ep_state}
    for name, state in files.items():
        torch.save(state, root / name)
        save_file({k: v.contiguous() for k, v in state.items()}, str(root / name.replace(".pth", ".safetensors")))
    return {name: root / name for name in ("timm.pth", "ep.pth", "timm.safetensors", "ep.safetensors")}


# --- the renaming --------------------------------------------------------------------------------


def test_renaming_of_named_blocks_is_exact():
    # Lite0 has 1, 2, 2, 3, 3, 4, 1 blocks per stage: flat 0 is the depthwise-separable stage-0 block,
    # flat 1 opens stage 1, flat 15 is the one block of stage 6
    d = depths("efficientnet_lite0")
    assert d == [1, 2, 2, 3, 3, 4, 1]
    x = torch.zeros(1)
    renamed = lite.to_timm_keys({
        "_conv_stem.weight": x, "_bn0.running_var": x,
        "_blocks.0._depthwise_conv.weight": x, "_blocks.0._bn1.bias": x, "_blocks.0._project_conv.weight": x,
        "_blocks.0._bn2.running_mean": x,
        "_blocks.1._expand_conv.weight": x, "_blocks.1._bn0.weight": x, "_blocks.2._depthwise_conv.weight": x,
        "_blocks.2._bn1.weight": x, "_blocks.5._project_conv.weight": x, "_blocks.5._bn2.num_batches_tracked": x,
        "_blocks.15._project_conv.weight": x,
        "_conv_head.weight": x, "_bn1.weight": x, "_fc.bias": x,
    }, d)
    assert list(renamed) == [
        "conv_stem.weight", "bn1.running_var",
        "blocks.0.0.conv_dw.weight", "blocks.0.0.bn1.bias", "blocks.0.0.conv_pw.weight", "blocks.0.0.bn2.running_mean",
        "blocks.1.0.conv_pw.weight", "blocks.1.0.bn1.weight", "blocks.1.1.conv_dw.weight",
        "blocks.1.1.bn2.weight", "blocks.3.0.conv_pwl.weight", "blocks.3.0.bn3.num_batches_tracked",
        "blocks.6.0.conv_pwl.weight",
        "conv_head.weight", "bn2.weight", "classifier.bias",
    ]


@pytest.mark.parametrize("variant", list(lite.VARIANTS))
def test_renaming_inverts_the_published_layout_for_every_variant(variant):
    state = timm.create_model(lite.timm_name(variant)).state_dict()
    ep = to_efficientnet_pytorch(state, depths(variant))
    assert lite.to_timm_keys(ep, depths(variant)) == state


@pytest.mark.parametrize("file", ["timm.pth", "ep.pth", "timm.safetensors", "ep.safetensors"])
def test_every_backbone_tensor_loads_from_either_layout(lite0_files, file, caplog):
    net = classifier_net("efficientnet_lite0")
    with caplog.at_level(logging.INFO, logger="cityseg"):
        model = build_starting_model("fpn_efficientnet_lite0", pretrained=str(lite0_files[file]), freeze=[])
    own = model.backbone.state_dict()
    ref = net.state_dict()
    assert len(own) == 288  # 247 tensors + 41 num_batches_tracked: every one of them from the file
    for key, value in own.items():
        assert torch.equal(value, ref[key]), key
    assert "loaded 288 tensors" in caplog.text and "8 tensors of the ImageNet classifier ignored" in caplog.text
    assert "left as initialised" not in caplog.text


def test_forward_matches_timm_given_the_same_weights_and_normalisation(lite0_files):
    """Our backbone on ImageNet-normalised input (the pipeline's) equals timm's classifier trunk on the
    same photo normalised as the weights want (mean = std = 0.5); fed ImageNet's instead, it would not."""
    net = classifier_net("efficientnet_lite0")
    model = build_starting_model("fpn_efficientnet_lite0", pretrained=str(lite0_files["ep.pth"]), freeze=[],
                                   output_stride=32).eval()
    photo = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, 96, 128), dtype=np.uint8))
    trunk = []
    hook = net.blocks[-1].register_forward_hook(lambda m, i, o: trunk.append(o))
    with torch.no_grad():
        ours = model.backbone(model.input_norm(normalize(photo)[None]))[-1]
        net((photo.float()[None] / 255 - 0.5) / 0.5)
        theirs = trunk[-1]
        net(normalize(photo)[None])  # the wrong normalisation: what the model would see without its own
        wrong = trunk[-1]
    hook.remove()
    assert ours.shape == theirs.shape == (1, 320, 3, 4)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    assert (wrong - theirs).abs().mean() > 0.1 * theirs.abs().mean()


def test_another_variant_or_architecture_is_refused_naming_both(tmp_path):
    lite2 = timm.create_model(lite.timm_name("efficientnet_lite2")).state_dict()
    torch.save(to_efficientnet_pytorch(lite2, depths("efficientnet_lite2")), tmp_path / "lite2.pth")
    with pytest.raises(CitysegError) as err:
        build_starting_model("deeplabv3_efficientnet_lite0", pretrained=str(tmp_path / "lite2.pth"),
                               output_stride=32)
    msg = str(err.value)
    assert "\n" not in msg and "lite2.pth: holds the weights of efficientnet_lite2" in msg
    assert "backbone is efficientnet_lite0" in msg
    torch.save(timm.create_model("resnet18").state_dict(), tmp_path / "resnet.pth")
    with pytest.raises(CitysegError, match="resnet.pth: holds no EfficientNet-Lite backbone, but the model's "
                                           "backbone is efficientnet_lite1"):
        build_starting_model("lraspp_efficientnet_lite1", pretrained=str(tmp_path / "resnet.pth"))


@pytest.mark.parametrize("variant", list(SHARED_FILES))
def test_shared_imagenet_files_load_every_backbone_tensor(variant):
    path = SHARED / SHARED_FILES[variant]
    if not path.is_file():
        pytest.skip("../shared/data/imagenet-weights is not present")
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = build_starting_model(f"fpn_{variant}", pretrained=str(path), freeze=[])
    own = model.backbone.state_dict()
    renamed = lite.to_timm_keys(state, depths(variant))
    assert set(own) == set(renamed) - {k for k in renamed if k.startswith(("conv_head.", "bn2.", "classifier."))}
    assert all(torch.equal(v, renamed[k]) for k, v in own.items())
    assert lite.identify(state) == variant


# --- pretrained=imagenet through timm's cache ---------------------------------------------------


def test_imagenet_offline_says_which_file_goes_where(monkeypatch, tmp_path):
    import huggingface_hub.constants as hf

    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", True)
    with pytest.raises(CitysegError) as err:
        build_model("fpn_efficientnet_lite0", pretrained="imagenet")
    msg = str(err.value)
    assert "\n" not in msg and "timm/tf_efficientnet_lite0.in1k" in msg and "model.safetensors" in msg
    assert str(tmp_path / "hf") in msg and "model.pretrained" in msg


def test_imagenet_from_the_hugging_face_cache(hf_cache_with):
    net = classifier_net("efficientnet_lite1")
    asked = hf_cache_with(net.state_dict())
    model = build_model("lraspp_efficientnet_lite1", pretrained="imagenet")
    assert asked == [("timm/tf_efficientnet_lite1.in1k", "model.safetensors", True)]
    assert torch.equal(model.backbone.blocks[4][0].conv_dw.weight, net.blocks[4][0].conv_dw.weight)


# --- the model's normalisation ------------------------------------------------------------------


@pytest.mark.parametrize("name", [n for n in MODELS if "efficientnet_lite" in n])
def test_every_lite_model_takes_its_weights_normalisation(name):
    model = build_model(name, freeze=[], output_stride=32)
    assert model_normalization(model) == HALF == lite.normalization(lite.variant_of(name))
    assert not any("input_norm" in k for k in model.state_dict())  # follows from the architecture


def test_older_models_and_checkpoints_keep_imagenet():
    assert model_normalization(build_model("cityseg_tiny", freeze=[])) == IMAGENET
    assert C.checkpoint_normalization({"model": {}}) == IMAGENET  # a checkpoint written before this change


def test_wrong_normalisation_changes_the_predictions(lite0_files):
    model = build_starting_model("fpn_efficientnet_lite0", pretrained=str(lite0_files["timm.pth"]), freeze=[])
    model.eval()
    x = normalize(torch.from_numpy(np.random.default_rng(1).integers(0, 256, (1, 3, 64, 64), dtype=np.uint8)))
    with torch.no_grad():
        right = model(x)["out"].argmax(1)
        model.input_norm = torch.nn.Identity()  # ImageNet-normalised input straight into the backbone
        wrong = model(x)["out"].argmax(1)
    assert (right != wrong).float().mean() > 0.05


def lite_checkpoint(tmp_path: Path, normalization: dict | None = "own") -> Path:
    from cityseg.config import Config
    from cityseg.datasets import load_dataset

    torch.manual_seed(0)
    model = build_model("fpn_efficientnet_lite0", freeze=[])
    cfg = Config()
    cfg.model.name, cfg.model.freeze, cfg.model.output_stride = "fpn_efficientnet_lite0", [], 32
    ckpt = {"config": cfg.to_dict(), "dataset": load_dataset("cityscapes").to_dict(), **C.model_state(model)}
    if normalization != "own":
        ckpt["normalization"] = normalization
    C.save_checkpoint(tmp_path / "lite.pt", ckpt)
    return tmp_path / "lite.pt"


def test_checkpoint_safetensors_and_onnx_record_the_normalisation(tmp_path):
    from safetensors import safe_open

    path = lite_checkpoint(tmp_path)
    assert C.load_checkpoint(path)["normalization"] == HALF.to_dict()
    assert main(["export", "--checkpoint", str(path), "--safetensors", str(tmp_path / "m.safetensors"),
                 "--onnx", str(tmp_path / "m.onnx"), "--exporter", "torchscript"]) == 0
    with safe_open(str(tmp_path / "m.safetensors"), framework="pt") as f:
        assert json.loads(f.metadata()["normalization"]) == HALF.to_dict()
    from cityseg.inference.onnx import read_metadata

    meta = read_metadata(tmp_path / "m.onnx")["cityseg.input"]
    assert (meta["mean"], meta["std"]) == ([0.5] * 3, [0.5] * 3)
    model, _ = C.load_model(tmp_path / "m.safetensors")
    assert model_normalization(model) == HALF


def test_a_checkpoint_whose_normalisation_contradicts_its_model_is_refused(tmp_path, capsys):
    path = lite_checkpoint(tmp_path, normalization=IMAGENET.to_dict())
    with pytest.raises(CitysegError, match="lite.pt: the checkpoint says its model takes mean/std"):
        C.load_model(path)


def test_onnx_and_int8_files_carry_the_normalisation_in_the_graph(tmp_path):
    """The ONNX file takes uint8 pixels and normalises inside its graph as the model's weights want: it
    predicts what the checkpoint predicts; the int8 file's metadata names the same mean/std."""
    pytest.importorskip("onnxruntime")
    from cityseg.inference.int8 import quantize_model
    from cityseg.inference.onnx import read_metadata
    from cityseg.inference.predict import Predictor

    path = lite_checkpoint(tmp_path)
    assert main(["export", "--checkpoint", str(path), "--onnx", str(tmp_path / "m.onnx"),
                 "--exporter", "torchscript"]) == 0
    photo = np.random.default_rng(2).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    torch_labels = Predictor.from_checkpoint(path, device="cpu", precision="fp32").predict(photo)
    onnx_labels = Predictor.from_file(tmp_path / "m.onnx").predict(photo)
    assert (torch_labels == onnx_labels).mean() > 0.999
    model, _ = C.load_model(path)
    frames = [torch.from_numpy(photo).permute(2, 0, 1)[None].contiguous()]
    (tmp_path / "q.onnx").write_bytes(quantize_model(model, frames))
    meta = read_metadata(tmp_path / "q.onnx")["cityseg.input"]
    assert (meta["mean"], meta["std"]) == ([0.5] * 3, [0.5] * 3)


# --- the command line on a Lite model ------------------------------------------------------------


def test_train_predict_evaluate_benchmark_sweep_on_a_lite_model(synth_root, tmp_path, lite0_files, monkeypatch,
                                                                  miou_by_hand):
    out = tmp_path / "run"
    sets = ["data.crop_size=64x32", "data.workers=0", "train.epochs=1", "train.batch_size=4",
            "train.val_batch_size=2", "train.panels=1", "train.log_every=1", "model.name=fpn_efficientnet_lite0",
            f"model.pretrained={lite0_files['ep.pth']}", "model.freeze=[stem,layer1]", "model.output_stride=32",
            "loss.ce=1.0", "loss.focal=0", "loss.dice=0", "optim.lr=1e-3", "optim.head_lr_mult=4"]
    args = ["train", "--data", str(synth_root), "--out", str(out), "--device", "cpu"]
    assert main(args + [item for s in sets for item in ("--set", s)]) == 0
    best = out / "checkpoints" / "best.pt"
    ckpt = C.load_checkpoint(best)
    assert ckpt["normalization"] == HALF.to_dict()
    start = classifier_net("efficientnet_lite0").state_dict()
    weights = C.strip_prefixes(ckpt["model"])
    for key in ("conv_stem.weight", "blocks.0.0.conv_dw.weight", "blocks.1.0.conv_pw.weight"):  # frozen stages
        assert torch.equal(weights[f"backbone.{key}"], start[key]), key
    assert not torch.equal(weights["backbone.blocks.6.0.conv_pwl.weight"], start["blocks.6.0.conv_pwl.weight"])
    photos = synth_root / "leftImg8bit" / "val"
    assert main(["predict", "--checkpoint", str(best), str(photos), "--out", str(tmp_path / "pred")]) == 0
    assert any((tmp_path / "pred").rglob("*.png"))
    assert main(["evaluate", "--checkpoint", str(best), "--data", str(synth_root),
                 "--json", str(tmp_path / "s.json")]) == 0
    # the score is the one of predict's own maps, worked out from the definition of mIoU
    pairs = []
    for pred in sorted((tmp_path / "pred" / "trainIds").rglob("*.png")):
        (gt,) = synth_root.glob(f"gtFine/val/*/{pred.stem.replace('leftImg8bit', 'gtFine_labelIds')}.png")
        pairs.append((np.asarray(Image.open(pred)), np.asarray(Image.open(gt))))
    assert len(pairs) == len(list(photos.rglob("*.png")))
    # (a one-epoch model has near-tied logits: evaluate's batches of val_batch_size and predict's single
    # images flip a handful of the 7,686 scored pixels, ~0.1% of this tiny mIoU; a real disagreement is far more)
    assert json.loads((tmp_path / "s.json").read_text())["miou"] == pytest.approx(miou_by_hand(pairs), rel=0.02)

    from cityseg.inference import benchmark

    monkeypatch.setattr(benchmark, "default_path", lambda device, work=None: "channels_last")  # no compile here
    assert main(["benchmark", "--checkpoint", str(best), "--size", "64x48", "--paths", "channels_last",
                 "--repeats", "1", "--threads", "1", "--json", str(tmp_path / "b.json")]) == 0
    assert json.loads((tmp_path / "b.json").read_text())["paths"]["channels_last"]["agreement"] > 0.99

    pytest.importorskip("optuna")
    sweep = ["sweep", "--data", str(synth_root), "--out", str(tmp_path / "sweep"), "--trials", "1", "--device", "cpu"]
    assert main(sweep + [item for s in sets for item in ("--set", s)]) == 0
    assert (tmp_path / "sweep" / "best.yaml").is_file()
